//! `rustworthy`: trustworthy and scalable machine learning from the command line. Each command
//! parses its flags, calls the `rustworthy` library and prints.

#![warn(missing_docs)]

mod args;
mod cmd_diffusion;
mod cmd_dist;
mod cmd_llm;
mod cmd_prune;
mod cmd_red;
mod cmd_robust;
mod cmd_train;
mod cmd_unlearn;
mod cmd_zo;
mod print;

use clap::{CommandFactory, Parser, Subcommand};
use rustworthy::core::Error;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rustworthy",
    version,
    about = "Trustworthy and scalable machine learning on libtorch"
)]
/// The command line: global verbosity flags and one command.
struct Cli {
    /// More messages (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Subcommand)]
enum Command {
    /// Train a model from a preset or a TOML config (data-parallel under `launch`, torchrun,
    /// mpirun or srun).
    Train(cmd_train::TrainArgs),
    /// Run a command as N data-parallel ranks on this machine: `launch -n 2 -- rustworthy train
    /// ...` (torchrun's variables; a failed rank stops the others).
    Launch(cmd_dist::LaunchArgs),
    /// Evaluate a saved model on a dataset's test split.
    Eval(cmd_train::EvalArgs),
    /// Summarise datasets, models and presets.
    Info(cmd_train::InfoArgs),
    /// Unlearn a forget set from a trained model and measure how well it was forgotten.
    Unlearn(cmd_unlearn::UnlearnArgs),
    /// Attack a saved model on test samples (white-box and score-based black-box attacks).
    Attack(cmd_robust::AttackArgs),
    /// Robust evaluation: clean, FGSM, PGD with restarts, an AutoAttack-style ensemble, the
    /// worst case per sample, an accuracy-vs-eps curve and gradient-masking checks.
    RobustEval(cmd_robust::RobustEvalArgs),
    /// Prune a model to a sparsity.
    Prune(Box<cmd_prune::PruneArgs>),
    /// Zeroth-order estimators, optimizers and min-max on problems with known answers: estimator
    /// variance against closed forms, convergence to known optima, and an exact duality gap.
    ZoCheck(cmd_zo::ZoCheckArgs),
    /// Language models: generate, score, evaluate, unlearn, fine-tune, relearning attack.
    #[command(subcommand)]
    Llm(LlmCommand),
    /// Class-conditional diffusion: train, sample, erase a class, evaluate, attack the erasure.
    #[command(subcommand)]
    Diffusion(DiffusionCommand),
    /// Reverse engineering of deceptions: generate attacked data, train denoisers, attack
    /// attribution and model parsing, score them.
    #[command(subcommand)]
    Red(RedCommand),
    /// Datasets that are generated: the TOFU-style `tofu-synth` benchmark.
    #[command(subcommand)]
    Data(DataCommand),
    /// Benchmarks: every method against the reference, in one run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The commands under `rustworthy llm`.
#[derive(Subcommand)]
enum LlmCommand {
    /// Continue a prompt (greedy or sampled), in the model's chat template unless --raw.
    Generate(cmd_llm::GenerateArgs),
    /// Per-token log-probabilities and NLL of answers given their questions.
    Score(cmd_llm::ScoreArgs),
    /// Merge a PEFT LoRA adapter into a model's weights; writes the model folder.
    MergeAdapter(cmd_llm::MergeAdapterArgs),
    /// The TOFU metrics of a model (forget quality and PrivLeak against an oracle's report).
    Eval(cmd_llm::EvalArgs),
    /// Unlearn a forget split from a model with one method; writes the model folder.
    Unlearn(cmd_llm::UnlearnArgs),
    /// Fine-tune a model on benchmark splits (all weights or LoRA); writes the model folder.
    Finetune(cmd_llm::FinetuneArgs),
    /// The relearning attack: train on a small slice, measure the held-out forget answers.
    Relearn(cmd_llm::RelearnArgs),
}

/// The commands under `rustworthy red`.
#[derive(Subcommand, Debug)]
enum RedCommand {
    /// Train the victims and write the adversarial examples as safetensors shards (resumable).
    Generate(cmd_red::GenerateArgs),
    /// Train a denoiser, the attribution classifier or the model parser on a dataset.
    Train(cmd_red::TrainArgs),
    /// Score a trained tool on a split of a dataset.
    Infer(cmd_red::InferArgs),
}

/// The commands under `rustworthy diffusion`.
#[derive(Subcommand)]
enum DiffusionCommand {
    /// Train the class-conditional DDPM on Fashion-MNIST (or Retrain without a class).
    Train(cmd_diffusion::TrainArgs),
    /// Generate images per class with classifier-free guidance (DDIM or DDPM).
    Sample(cmd_diffusion::SampleArgs),
    /// Erase a class with SalUn-RL/GA, RL, GA or ESD.
    Unlearn(cmd_diffusion::UnlearnArgs),
    /// UA, per-class accuracy, FD-fmnist and KID-fmnist of a model.
    Eval(cmd_diffusion::EvalArgs),
    /// The UnlearnDiffAtk-style attack on an erased class.
    Attack(cmd_diffusion::AttackArgs),
}

/// The commands under `rustworthy data`.
#[derive(Subcommand)]
enum DataCommand {
    /// Write the tofu-synth benchmark (fictitious authors, TOFU's splits and fields) as JSON.
    TofuSynth(cmd_llm::TofuSynthArgs),
}

/// The benchmarks under `rustworthy bench`.
#[derive(Subcommand)]
enum BenchCommand {
    /// Train (or reuse) the original model, run Retrain and every unlearning method, and write a
    /// paper-style table (Markdown, CSV, JSON) and a gap-vs-time plot.
    Unlearn(cmd_unlearn::BenchUnlearnArgs),
    /// Every pruning method at several sparsities from one dense model: accuracy, time and
    /// per-layer sparsity, with an accuracy-vs-sparsity plot.
    Prune(Box<cmd_prune::BenchPruneArgs>),
    /// CGE throughput of zeroth-order training (queries per second and seconds per step) on a
    /// stratified sample of the coordinate set; `scripts/bench-zo.sh` runs it beside the PyTorch
    /// reference loop.
    Zo(cmd_zo::BenchZoArgs),
    /// Training steps of a TorchScript module against the same architecture from the zoo,
    /// alternating in one run (`scripts/bench-torchscript.sh` exports the modules).
    Torchscript(cmd_zo::BenchScriptArgs),
    /// TOFU-style LLM unlearning: target, oracle and every method on a preset's forget split,
    /// with forget quality, model utility, forget ROUGE-L and PrivLeak (Markdown, CSV, JSON).
    Llm(cmd_llm::BenchLlmArgs),
    /// Zeroth-order fine-tuning (MeZO and variants) of SmolLM2 on a yes/no task: zero-shot and
    /// tuned accuracy within a time budget, and peak memory against inference.
    Mezo(cmd_llm::BenchMezoArgs),
    /// Seconds per LLM unlearning step (NPO by default) on SmolLM2; `scripts/bench-llm-step.sh`
    /// runs it beside the PyTorch/transformers reference on the same batches.
    LlmStep(cmd_llm::BenchLlmStepArgs),
    /// Class erasure in a conditional DDPM: original, Retrain and every method, with UA,
    /// FD-fmnist, KID-fmnist, the attack's success rate and sample grids.
    Diffusion(cmd_diffusion::BenchDiffusionArgs),
    /// Seconds per DDPM training step; `scripts/bench-ddpm-step.sh` runs it beside the same
    /// steps in PyTorch.
    DdpmStep(cmd_diffusion::BenchDdpmStepArgs),
    /// Seconds per training step of a zoo model (ResNet-18 by default) under a precision,
    /// layout and optimizer implementation; `scripts/bench-train-step.sh` runs it beside eager
    /// PyTorch and torch.compile on the same weights and batches.
    TrainStep(cmd_train::BenchTrainStepArgs),
    /// Reverse engineering of deceptions end to end: perturbation estimation (PSNR, cosine,
    /// restored predictions), attack attribution and model parsing, in and out of distribution.
    Red(cmd_red::BenchRedArgs),
    /// All-reduce of a gradient-sized buffer across processes: rustworthy's c10d Gloo bridge
    /// against torch.distributed on the same backend, in one run.
    Allreduce(cmd_dist::BenchAllReduceArgs),
}

/// Messages go to stderr: plain for information, prefixed for warnings and errors.
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(print::Plain)
        .try_init();
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
    init_logging(cli.verbose, cli.quiet);
    if let Err(e) = rustworthy::core::device::check_libtorch() {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    let r = match cli.command {
        Command::Train(a) => cmd_train::train(a),
        Command::Launch(a) => cmd_dist::launch(a),
        Command::Eval(a) => cmd_train::eval(a),
        Command::Info(a) => cmd_train::info(a),
        Command::Unlearn(a) => cmd_unlearn::unlearn(a),
        Command::Attack(a) => cmd_robust::attack(a),
        Command::RobustEval(a) => cmd_robust::robust_eval(a),
        Command::Prune(a) => cmd_prune::prune(*a),
        Command::ZoCheck(a) => cmd_zo::zo_check(a),
        Command::Bench(BenchCommand::Unlearn(a)) => cmd_unlearn::bench_unlearn(a),
        Command::Bench(BenchCommand::Prune(a)) => cmd_prune::bench_prune(*a),
        Command::Bench(BenchCommand::Zo(a)) => cmd_zo::bench_zo(a),
        Command::Bench(BenchCommand::Torchscript(a)) => cmd_zo::bench_script(a),
        Command::Bench(BenchCommand::Llm(a)) => cmd_llm::bench_llm(a),
        Command::Bench(BenchCommand::Mezo(a)) => cmd_llm::bench_mezo(a),
        Command::Bench(BenchCommand::LlmStep(a)) => cmd_llm::bench_llm_step(a),
        Command::Bench(BenchCommand::Diffusion(a)) => cmd_diffusion::bench_diffusion(a),
        Command::Bench(BenchCommand::DdpmStep(a)) => cmd_diffusion::bench_ddpm_step(a),
        Command::Bench(BenchCommand::TrainStep(a)) => cmd_train::bench_train_step(a),
        Command::Bench(BenchCommand::Red(a)) => cmd_red::bench_red(a),
        Command::Bench(BenchCommand::Allreduce(a)) => cmd_dist::bench_all_reduce(a),
        Command::Red(RedCommand::Generate(a)) => cmd_red::generate(a),
        Command::Red(RedCommand::Train(a)) => cmd_red::train(a),
        Command::Red(RedCommand::Infer(a)) => cmd_red::infer(a),
        Command::Diffusion(DiffusionCommand::Train(a)) => cmd_diffusion::train(a),
        Command::Diffusion(DiffusionCommand::Sample(a)) => cmd_diffusion::sample(a),
        Command::Diffusion(DiffusionCommand::Unlearn(a)) => cmd_diffusion::unlearn(a),
        Command::Diffusion(DiffusionCommand::Eval(a)) => cmd_diffusion::eval(a),
        Command::Diffusion(DiffusionCommand::Attack(a)) => cmd_diffusion::attack(a),
        Command::Llm(LlmCommand::Generate(a)) => cmd_llm::llm_generate(a),
        Command::Llm(LlmCommand::Score(a)) => cmd_llm::llm_score(a),
        Command::Llm(LlmCommand::MergeAdapter(a)) => cmd_llm::llm_merge_adapter(a),
        Command::Llm(LlmCommand::Eval(a)) => cmd_llm::llm_eval(a),
        Command::Llm(LlmCommand::Unlearn(a)) => cmd_llm::llm_unlearn(a),
        Command::Llm(LlmCommand::Finetune(a)) => cmd_llm::llm_finetune(a),
        Command::Llm(LlmCommand::Relearn(a)) => cmd_llm::llm_relearn(a),
        Command::Data(DataCommand::TofuSynth(a)) => cmd_llm::tofu_synth(a),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rustworthy",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            // 2: the request itself is wrong (a config field, a flag's value); 1: it failed.
            match e {
                Error::Config { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
