//! `prune` and `bench prune`.

use crate::args::{choice, ModelHints, RunOpts, PRUNE_METHODS};
use crate::print::print_pairs;
use clap::{Args, ValueEnum};
use rustworthy::core::Result;
use rustworthy::prune::{PruneMethod, Scope};
use rustworthy::prune_run::{bench_prune as bench_run, prune_run, PruneCommon};
use std::path::PathBuf;

/// Where the sparsity budget applies.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScopeArg {
    /// One threshold over all prunable layers.
    Global,
    /// The same sparsity in every layer.
    Layerwise,
}

/// Options shared by `prune` and `bench prune`.
#[derive(Args, Debug)]
pub struct PruneCommonArgs {
    /// Training preset of the dense model and of every retraining.
    #[arg(long, default_value = "fmnist-lenet")]
    pub preset: String,
    /// Epochs of the recipe (dense training, IMP rounds, pruning at initialization).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train on this many training samples only.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the sparsity budget applies.
    #[arg(long, value_enum, default_value_t = ScopeArg::Global)]
    pub scope: ScopeArg,
    /// Structured pruning (omp, bip): remove whole output channels; the sparsity is the share
    /// of channels removed per layer (use --scope layerwise).
    #[arg(long)]
    pub structured: bool,
    /// IMP: rewind to the weights after this many dense epochs (0 = initialization).
    #[arg(long, default_value_t = 0)]
    pub rewind_epoch: usize,
    /// IMP: share of the remaining weights pruned per round.
    #[arg(long)]
    pub imp_rate: Option<f64>,
    /// HYDRA and BiP: epochs of the score loop.
    #[arg(long)]
    pub score_epochs: Option<usize>,
    /// HYDRA and BiP: learning rate of the scores.
    #[arg(long)]
    pub score_lr: Option<f64>,
    /// BiP: gamma of the lower-level problem.
    #[arg(long)]
    pub bip_gamma: Option<f64>,
    /// BiP: learning rate of the weights.
    #[arg(long)]
    pub bip_weight_lr: Option<f64>,
    /// OMP and HYDRA: fine-tuning epochs.
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    /// Prune this trained model instead of training a dense one from the preset: a run folder
    /// or `model.safetensors` of ours (its data and recipe come with it), a TorchScript
    /// module, or a state dict with --arch (trained on the preset's data or --dataset).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// How to read a model file without our sidecar.
    #[command(flatten)]
    pub hints: ModelHints,
    /// With --model (not a run of ours): the data it was trained on.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

impl PruneCommonArgs {
    /// The library's form of these options (seed 0 and all threads unless given).
    fn to_lib(&self) -> PruneCommon {
        PruneCommon {
            preset: self.preset.clone(),
            epochs: self.epochs,
            train_subset: self.train_subset,
            data_dir: self.data_dir.clone(),
            scope: match self.scope {
                ScopeArg::Global => Scope::Global,
                ScopeArg::Layerwise => Scope::Layerwise,
            },
            structured: self.structured,
            rewind_epoch: self.rewind_epoch,
            imp_rate: self.imp_rate,
            score_epochs: self.score_epochs,
            score_lr: self.score_lr,
            bip_gamma: self.bip_gamma,
            bip_weight_lr: self.bip_weight_lr,
            finetune_epochs: self.finetune_epochs,
            seed: self.run.seed.unwrap_or(0),
            device: self.run.device,
            threads: self.run.threads.unwrap_or(0),
            out: self.run.out.clone(),
            model: self.model.as_deref().map(|m| self.hints.source(m)),
            dataset: self.dataset.clone(),
        }
    }
}

/// Flags of `rustworthy prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The pruning method.
    #[arg(long, value_parser = choice::<PruneMethod>(PRUNE_METHODS))]
    pub method: PruneMethod,
    /// Fraction of the prunable weights removed, in [0, 1).
    #[arg(long)]
    pub sparsity: f64,
    /// The options `prune` shares with `bench prune`.
    #[command(flatten)]
    pub common: PruneCommonArgs,
}

/// Runs `prune` and prints the method's accuracy, sparsity, timings and per-layer sparsity.
pub fn prune(a: PruneArgs) -> Result<()> {
    let o = prune_run(a.method, a.sparsity, &a.common.to_lib())?;
    let row = &o.row;
    let mut rows = vec![
        ("method".into(), row.method.clone()),
        ("sparsity".into(), format!("{:.4}", row.sparsity)),
        ("test accuracy".into(), format!("{:.2}%", row.test_accuracy)),
        (
            "dense test accuracy".into(),
            format!("{:.2}%", o.dense_test_accuracy),
        ),
        ("method time".into(), format!("{:.1} s", row.seconds)),
        ("dense training".into(), format!("{:.1} s", o.dense_seconds)),
    ];
    for (k, v) in &row.layers {
        rows.push((format!("  {k}"), format!("{v:.4}")));
    }
    rows.push((
        "report".into(),
        o.out.join("report.json").display().to_string(),
    ));
    print_pairs(&rows);
    Ok(())
}

/// Flags of `rustworthy bench prune`.
#[derive(Args, Debug)]
pub struct BenchPruneArgs {
    /// Methods to compare (default: all).
    #[arg(long, value_delimiter = ',', value_parser = choice::<PruneMethod>(PRUNE_METHODS))]
    pub methods: Vec<PruneMethod>,
    /// Sparsities of the comparison.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.8,0.9,0.95")]
    pub sparsities: Vec<f64>,
    /// The options `bench prune` shares with `prune`.
    #[command(flatten)]
    pub common: PruneCommonArgs,
}

/// Runs `bench prune` and prints its Markdown table.
pub fn bench_prune(a: BenchPruneArgs) -> Result<()> {
    let o = bench_run(&a.methods, &a.sparsities, &a.common.to_lib())?;
    println!("{}", o.markdown);
    Ok(())
}
