//! `rustworthy`: trustworthy and scalable machine learning from the command line.

mod commands;
mod config;
mod table;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rustworthy",
    version,
    about = "Trustworthy and scalable machine learning on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a preset or a TOML config.
    Train(commands::TrainArgs),
    /// Evaluate a saved model on a dataset's test split.
    Eval(commands::EvalArgs),
    /// Summarise datasets, models and presets.
    Info(commands::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Train(a) => commands::train(a),
        Command::Eval(a) => commands::eval(a),
        Command::Info(a) => commands::info(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
