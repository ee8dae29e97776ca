//! `rustworthy`: trustworthy and scalable machine learning from the command line.

mod commands;
mod config;
mod prune_cmd;
mod robust_cmd;
mod table;
mod unlearn_cmd;
mod zo_cmd;

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
    /// Unlearn a forget set from a trained model and measure how well it was forgotten.
    Unlearn(unlearn_cmd::UnlearnArgs),
    /// Attack a saved model on test samples (fgsm, pgd, apgd, apgd-t, cw, square, and the
    /// zeroth-order black-box attacks zoo, zo-signsgd, nes).
    Attack(robust_cmd::AttackArgs),
    /// Robust evaluation: clean, FGSM, PGD with restarts, an AutoAttack-style ensemble, the
    /// worst case per sample, an accuracy-vs-eps curve and gradient-masking checks.
    RobustEval(robust_cmd::RobustEvalArgs),
    /// Prune a model (omp, imp, snip, grasp, synflow, random, hydra, bip) to a sparsity.
    Prune(prune_cmd::PruneArgs),
    /// Zeroth-order estimators, optimizers and min-max on problems with known answers: estimator
    /// variance against closed forms, convergence to known optima, and an exact duality gap.
    ZoCheck(zo_cmd::ZoCheckArgs),
    /// Benchmarks: every method against the reference, in one run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Train (or reuse) the original model, run Retrain and every unlearning method, and write a
    /// paper-style table (Markdown, CSV, JSON) and a gap-vs-time plot.
    Unlearn(unlearn_cmd::BenchUnlearnArgs),
    /// Every pruning method at several sparsities from one dense model: accuracy, time and
    /// per-layer sparsity, with an accuracy-vs-sparsity plot.
    Prune(prune_cmd::BenchPruneArgs),
    /// CGE throughput of zeroth-order training (queries per second and seconds per step) on a
    /// stratified sample of the coordinate set; `scripts/bench-zo.sh` runs it beside the PyTorch
    /// reference loop.
    Zo(zo_cmd::BenchZoArgs),
}

fn main() -> ExitCode {
    // Exit quietly when stdout is closed early (`rustworthy info | head`) instead of panicking
    // on the failed write: restore the default action for SIGPIPE.
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Train(a) => commands::train(a),
        Command::Eval(a) => commands::eval(a),
        Command::Info(a) => commands::info(a),
        Command::Unlearn(a) => unlearn_cmd::unlearn(a),
        Command::Attack(a) => robust_cmd::attack(a),
        Command::RobustEval(a) => robust_cmd::robust_eval_cmd(a),
        Command::Bench(BenchCommand::Unlearn(a)) => unlearn_cmd::bench_unlearn(a),
        Command::Bench(BenchCommand::Prune(a)) => prune_cmd::bench_prune(a),
        Command::Prune(a) => prune_cmd::prune_cmd(a),
        Command::ZoCheck(a) => zo_cmd::zo_check(a),
        Command::Bench(BenchCommand::Zo(a)) => zo_cmd::bench_zo(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
