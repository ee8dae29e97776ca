//! `red generate|train|infer` and `bench red`: thin shells over `rustworthy::red`.

use clap::Args;
use rustworthy::core::Result;
use rustworthy::red::bench;
use rustworthy::red::generate::Split;
use rustworthy::red::workflow::{self, Inference, Tool};
use rustworthy::tch::{self, Device};
use std::path::PathBuf;

/// Flags every RED command shares.
#[derive(Args, Debug)]
pub struct Common {
    /// The preset whose settings to use (fmnist-red-mini, fmnist-red).
    #[arg(long, default_value = "fmnist-red-mini")]
    pub preset: String,
    /// Folder holding Fashion-MNIST's IDX files (default: the usual places).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

impl Common {
    fn apply(&self) -> Result<(Device, bench::RedBenchConfig)> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        Ok((Device::cuda_if_available(), bench::preset(&self.preset)?))
    }
}

/// Flags of `rustworthy red generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Dataset folder (an interrupted run resumes; finished shards are kept).
    #[arg(long, default_value = "runs/red-data")]
    pub out: PathBuf,
    /// Examples per training shard (default: the preset's).
    #[arg(long)]
    pub train_per_shard: Option<usize>,
    /// Examples per test shard (default: the preset's).
    #[arg(long)]
    pub test_per_shard: Option<usize>,
    /// Victim architectures, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    pub archs: Vec<String>,
    /// Victim activations, comma-separated: relu, tanh, elu (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    pub activations: Vec<String>,
    /// Victim weight sparsities in percent, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    pub sparsities: Vec<u32>,
    /// Training images per victim (default: the preset's).
    #[arg(long)]
    pub victim_images: Option<usize>,
    /// Training epochs per victim (default: the preset's).
    #[arg(long)]
    pub victim_epochs: Option<usize>,
}

/// Runs `red generate`.
pub fn generate(a: GenerateArgs) -> Result<()> {
    let (dev, mut cfg) = a.common.apply()?;
    if let Some(n) = a.train_per_shard {
        cfg.data.train_per_shard = n;
    }
    if let Some(n) = a.test_per_shard {
        cfg.data.test_per_shard = n;
    }
    let fam = &mut cfg.data.family;
    if !a.archs.is_empty() {
        fam.archs = a.archs.iter().map(|s| s.parse()).collect::<Result<_>>()?;
    }
    if !a.activations.is_empty() {
        fam.activations = a
            .activations
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?;
    }
    if !a.sparsities.is_empty() {
        fam.sparsities = a.sparsities.clone();
    }
    if let Some(n) = a.victim_images {
        cfg.data.recipe.train_images = n;
    }
    if let Some(n) = a.victim_epochs {
        cfg.data.recipe.epochs = n;
    }
    let s = workflow::generate_dataset(&cfg, &a.out, a.common.data_dir.as_deref(), dev, |m| {
        tracing::info!("{m}")
    })?;
    for (split, n) in &s.written {
        println!(
            "{split}: {n} shards written, {} kept",
            s.kept.get(split).copied().unwrap_or(0)
        );
    }
    println!("dataset {}", a.out.display());
    Ok(())
}

/// Flags of `rustworthy red train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// What to train: denoise-pixel, denoise-cdd, attribution, parsing.
    #[arg(long)]
    pub tool: String,
    /// The dataset folder of `red generate`.
    #[arg(long, default_value = "runs/red-data")]
    pub data: PathBuf,
    /// Output folder of the trained tool.
    #[arg(long)]
    pub out: PathBuf,
    /// A denoiser folder (attribution from estimated perturbations).
    #[arg(long)]
    pub denoiser: Option<PathBuf>,
    /// Epochs (default: the preset's).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// What the attribution classifier reads (adv, true, estimated, adv-estimated; default:
    /// the preset's).
    #[arg(long)]
    pub input: Option<String>,
    /// Attribution: add the counts of values off the 8-bit grid to the level statistics (for
    /// examples kept in float precision; an 8-bit image has none).
    #[arg(long)]
    pub off_grid: bool,
}

/// Runs `red train`.
pub fn train(a: TrainArgs) -> Result<()> {
    let (dev, mut cfg) = a.common.apply()?;
    let tool: Tool = a.tool.parse()?;
    if let Some(i) = &a.input {
        cfg.attribution_input = i.parse()?;
    }
    if a.off_grid {
        cfg.attribution.off_grid = true;
        cfg.attribution.validate()?;
    }
    if let Some(e) = a.epochs {
        cfg.denoise.epochs = e;
        cfg.attribution.epochs = e;
        cfg.parsing.epochs = e;
    }
    workflow::train_tool(
        &cfg,
        tool,
        &a.data,
        &a.out,
        a.denoiser.as_deref(),
        a.common.data_dir.as_deref(),
        dev,
        |m| tracing::info!("{m}"),
    )?;
    println!("{} -> {}", a.tool, a.out.display());
    Ok(())
}

/// Flags of `rustworthy red infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    #[command(flatten)]
    pub common: Common,
    /// A tool folder written by `red train`.
    #[arg(long)]
    pub tool: PathBuf,
    /// The dataset folder.
    #[arg(long, default_value = "runs/red-data")]
    pub data: PathBuf,
    /// The split to score: train, test, ood-strength, transfer.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// A denoiser folder (for a classifier of estimated perturbations, or for the attribution
    /// classifier of --shrink).
    #[arg(long)]
    pub denoiser: Option<PathBuf>,
    /// Shrink a denoiser's estimates with this factors file (`shrinkage.json` or
    /// `shrinkage-grid.json`, written beside each denoiser by `bench red`); needs --attribution.
    #[arg(long, requires = "attribution")]
    pub shrink: Option<PathBuf>,
    /// The attribution folder whose predicted family and norm pick each factor of --shrink
    /// (the `attribution` folder of the same `bench red` run).
    #[arg(long, requires = "shrink")]
    pub attribution: Option<PathBuf>,
    /// Folder of the scores and the report (default: `<tool>/infer-<split>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `red infer`.
pub fn infer(a: InferArgs) -> Result<()> {
    let (dev, cfg) = a.common.apply()?;
    let split: Split = a.split.parse()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.tool.join(format!("infer-{}", split.name())));
    let r = workflow::infer_with_report(
        &cfg,
        &a.tool,
        &a.data,
        split,
        a.denoiser.as_deref(),
        a.shrink
            .as_deref()
            .zip(a.attribution.as_deref())
            .map(|(factors, attribution)| workflow::ShrinkWith {
                factors,
                attribution,
            }),
        dev,
        &out,
    )?;
    match r {
        Inference::Denoiser(s) => {
            println!("| family | n | PSNR dB | cosine | restored % |\n|---|---|---|---|---|");
            for (k, v) in s {
                println!(
                    "| {k} | {} | {:.2} | {:.3} | {:.1} |",
                    v.n, v.psnr, v.cosine, v.restored
                );
            }
        }
        Inference::Classifier(s) => {
            println!("| head | n | accuracy % | chance % |\n|---|---|---|---|");
            for (k, v) in &s {
                println!("| {k} | {} | {:.2} | {:.2} |", v.n, v.accuracy, v.majority);
            }
            for (k, v) in &s {
                println!("\n{k} confusion (rows: true class index, columns: predicted):");
                for (i, row) in v.confusion.iter().enumerate() {
                    let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
                    println!("  {i}: {}", cells.join(" "));
                }
            }
        }
    }
    println!("\nreport {}", out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy bench red`.
#[derive(Args, Debug)]
pub struct BenchRedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Output folder (a rerun reuses every finished stage).
    #[arg(long, default_value = "runs/bench-red")]
    pub out: PathBuf,
}

/// Runs `bench red`.
pub fn bench_red(a: BenchRedArgs) -> Result<()> {
    let (dev, cfg) = a.common.apply()?;
    let r = bench::run_bench(&cfg, &a.out, a.common.data_dir.as_deref(), dev, |m| {
        tracing::info!("{m}")
    })?;
    println!("{}", bench::markdown(&r));
    println!("report {}", a.out.join("report.json").display());
    Ok(())
}
