//! `unlearn` and `bench unlearn`.

use crate::args::{ModelHints, RunOpts};
use crate::print::emit_summary;
use clap::Args;
use rustworthy::bench_unlearn::{
    bench_preset, bench_unlearn as bench_run, BenchConfig, BenchOptions,
};
use rustworthy::config::{apply_sets, to_toml};
use rustworthy::core::Result;
use rustworthy::unlearn::pipeline::Selection;
use rustworthy::unlearn::{ForgetSpec, MethodConfig, Profile};
use rustworthy::unlearn_run::{
    method_config_for, metrics_table, read_retrain_metrics, unlearn as unlearn_run, LrSearch,
    PruneSpec, UnlearnRequest,
};
use std::path::PathBuf;

/// The method profiles, as `--profile` spells them.
const PROFILES: [&str; 2] = ["reference", "paper"];

/// Flags of `rustworthy unlearn`.
#[derive(Args, Debug)]
pub struct UnlearnArgs {
    /// The original model: a run folder or `model.safetensors` written by `rustworthy train`
    /// (its data and split come from its sidecar), or a TorchScript module or state dict
    /// (with --arch) trained on --dataset.
    #[arg(long)]
    pub model: PathBuf,
    /// How to read a model file without our sidecar.
    #[command(flatten)]
    pub hints: ModelHints,
    /// For a model without our sidecar: the data it was trained on (a dataset name, or
    /// `file:TRAIN[,TEST]`, `folder:ROOT`; default fashion-mnist). Its whole training split is
    /// the model's training set.
    #[arg(long)]
    pub dataset: Option<String>,
    /// For a model without our sidecar: the training preset whose recipe Retrain follows
    /// (default fmnist-lenet).
    #[arg(long)]
    pub recipe: Option<String>,
    /// Unlearning method.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MethodConfig::NAMES))]
    pub method: String,
    /// What to forget: class:K[,K..] | random:FRACTION | indices:FILE (training-file indices).
    #[arg(long)]
    pub forget: ForgetSpec,
    /// Prune the original model first (`METHOD:SPARSITY`, one-shot: omp, snip, grasp, synflow,
    /// random), fine-tune it briefly with the mask, then unlearn with the mask fixed.
    #[arg(long)]
    pub prune: Option<PruneSpec>,
    /// Seed of the random forget set.
    #[arg(long, default_value_t = 1)]
    pub forget_seed: u64,
    /// Whose defaults the method follows: `reference` (the official code's main path) or
    /// `paper` (the paper's formulation where it differs); see docs/unlearning.md.
    #[arg(long, default_value = "reference", value_parser = PROFILES)]
    pub profile: String,
    /// A TOML file of method settings (keys of the method's config).
    #[arg(long)]
    pub method_config: Option<PathBuf>,
    /// The method's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// The method's epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Search the learning rate over a grid (multiples of the configured lr, see --lr-grid).
    #[arg(long)]
    pub lr_search: bool,
    /// Multipliers of the lr for --lr-search.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1,2,4")]
    pub lr_grid: Vec<f64>,
    /// Selection criterion of --lr-search: `gap` (needs --retrain-report) or `ua:ta-drop=POINTS`.
    #[arg(long, default_value = "ua:ta-drop=2")]
    pub select: Selection,
    /// A report.json of a Retrain run on the same scenario (for Avg. Gap and `--select gap`).
    #[arg(long)]
    pub retrain_report: Option<PathBuf>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Precision and layout of every forward pass.
    #[command(flatten)]
    pub exec: crate::args::ExecArgs,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Runs `unlearn` and prints the metrics of the original and the unlearned model (and of a given
/// Retrain, with the gap).
pub fn unlearn(a: UnlearnArgs) -> Result<()> {
    let profile: Profile = a.profile.parse()?;
    let cfg = method_config_for(
        &a.method,
        profile,
        a.method_config.as_deref(),
        a.lr,
        a.epochs,
    )?;
    let retrain = a
        .retrain_report
        .as_deref()
        .map(read_retrain_metrics)
        .transpose()?;
    let mut req = UnlearnRequest::new(a.model.clone(), cfg, a.forget.clone());
    req.model = a.hints.source(&a.model);
    req.dataset = a.dataset.clone();
    req.recipe = a.recipe.clone();
    req.profile = profile;
    req.forget_seed = a.forget_seed;
    req.seed = a.run.seed.unwrap_or(0);
    req.lr_search = a.lr_search.then(|| LrSearch {
        grid: a.lr_grid.clone(),
        select: a.select.clone(),
    });
    req.retrain = retrain;
    req.prune = a.prune;
    req.data_dir = a.data_dir.clone();
    req.device = a.run.device();
    if let Some(o) = &a.run.out {
        req.out = o.clone();
    }
    req.threads = a.run.threads.unwrap_or(0);
    req.progress = a.run.mode();
    // Under a launcher: Retrain and the gradient methods run data-parallel.
    req.dist = crate::cmd_dist::dist_options(false, "none")?;
    req.exec = a.exec.exec();
    let main = req.dist.as_ref().is_none_or(|d| d.group.is_main());
    if !main {
        req.progress = rustworthy::core::progress::ProgressMode::Quiet;
    }
    let o = unlearn_run(&req)?;
    if !main {
        return Ok(());
    }
    if emit_summary(req.progress, &o.report.metrics) {
        return Ok(());
    }
    let mut rows = vec![
        ("original", &o.before),
        (o.result.method.as_str(), &o.result.metrics),
    ];
    if let Some(r) = &o.retrain {
        rows.push(("retrain (given)", r));
    }
    println!("{}", metrics_table(&rows));
    if let Some(g) = o.result.gap {
        println!("Avg. Gap to Retrain: {g:.2}");
    }
    println!(
        "report: {}\nmodel: {}",
        req.out.join("report.json").display(),
        o.model_path.display()
    );
    Ok(())
}

/// Flags of `rustworthy bench unlearn`.
#[derive(Args, Debug)]
pub struct BenchUnlearnArgs {
    /// A benchmark preset (see `rustworthy info --presets`; default fmnist-lenet-random10).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML file shaped like presets/bench/*.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any benchmark field: `--set forget_seed=2 --set method.ft.epochs=5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Whose defaults the methods follow (default: the preset's, `reference`); another
    /// profile than the preset's writes to `<out>-<profile>`.
    #[arg(long, value_parser = PROFILES)]
    pub profile: Option<String>,
    /// Only these methods (comma-separated; Retrain is always run first for the gap).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Search each method's learning rate (grid and criterion from the preset).
    #[arg(long)]
    pub lr_search: bool,
    /// Selection criterion of the search: `gap` or `ua:ta-drop=POINTS`.
    #[arg(long)]
    pub select: Option<String>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Ignore method results already in the output folder (default: reuse those whose config
    /// and scenario match, so an interrupted benchmark continues where it stopped).
    #[arg(long)]
    pub fresh: bool,
    /// Add rows for the methods on the pruned original (`METHOD:SPARSITY`, e.g. omp:0.95).
    #[arg(long)]
    pub prune: Option<PruneSpec>,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

impl BenchUnlearnArgs {
    /// The benchmark config: the file or preset, then `--set`, then the flags.
    fn resolve(&self) -> Result<BenchConfig> {
        let base = match (&self.config, &self.preset) {
            (Some(p), _) => BenchConfig::from_file(p)?,
            (None, Some(n)) => bench_preset(n)?,
            (None, None) => bench_preset("fmnist-lenet-random10")?,
        };
        let mut c = apply_sets(&base, &self.sets)?;
        if let Some(p) = &self.profile {
            c = c.with_profile(p.parse()?);
        }
        if let Some(m) = &self.methods {
            c.methods = m.clone();
        }
        c.lr_search.enabled |= self.lr_search;
        if let Some(s) = &self.select {
            c.lr_search.select = s.clone();
        }
        if let Some(d) = self.run.device {
            c.device = d;
        }
        if let Some(o) = &self.run.out {
            c.out = o.clone();
            c.original_out = None;
        }
        if let Some(t) = self.run.threads {
            c.threads = t;
        }
        if let Some(s) = self.run.seed {
            c.seed = s;
        }
        if let Some(p) = self.prune {
            c.prune = Some(p.to_string());
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs `bench unlearn` (or prints the resolved config) and prints the results table.
pub fn bench_unlearn(a: BenchUnlearnArgs) -> Result<()> {
    let c = a.resolve()?;
    if a.print_config {
        print!("{}", to_toml(&c)?);
        return Ok(());
    }
    let opts = BenchOptions {
        data_dir: a.data_dir.clone(),
        fresh: a.fresh,
        progress: a.run.mode(),
    };
    let o = bench_run(&c, &opts)?;
    println!("{}", o.markdown);
    println!("written: {}", o.out.join("results.md").display());
    Ok(())
}
