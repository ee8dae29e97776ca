//! `rustworthy unlearn` and `rustworthy bench unlearn`.

use crate::commands::{load_splits, progress_mode, set_threads, train_run};
use crate::config::{preset, RunConfig};
use crate::table::render;
use clap::Args;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::{atomic_write, write_json_atomic};
use rustworthy_core::plot::{Chart, Point};
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::{utc_now, RunReport};
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_prune::methods::one_shot_masks;
use rustworthy_prune::{PruneMethod, Scope};
use rustworthy_train::checkpoint::{load_model, read_meta, save_model, sidecar_of, CheckpointMeta};
use rustworthy_train::mask::Masks;
use rustworthy_train::{fit_with, MaskedStep, TrainConfig};
use rustworthy_unlearn::metrics::{avg_gap, UnlearnMetrics};
use rustworthy_unlearn::pipeline::{
    build_data, clone_model, csv_table, evaluate, lr_search, markdown_table, run_method,
    MethodResult, Selection,
};
use rustworthy_unlearn::svm::SvcConfig;
use rustworthy_unlearn::{ForgetSpec, MethodConfig, Scenario, UnlearnCtx, UnlearnData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct UnlearnArgs {
    /// The original model (`model.safetensors` written by `rustworthy train`, with its sidecar).
    #[arg(long)]
    pub model: PathBuf,
    /// Prune the original model first (`METHOD:SPARSITY`, one-shot: omp, snip, grasp, synflow,
    /// random), fine-tune it briefly with the mask, then unlearn with the mask fixed.
    #[arg(long)]
    pub prune: Option<String>,
    /// Method: retrain, ft, ga, rl, ff, iu, be, bs, l1-sparse, salun, scrub, neggrad-plus.
    #[arg(long)]
    pub method: String,
    /// What to forget: class:K[,K..] | random:FRACTION | indices:FILE (training-file indices).
    #[arg(long)]
    pub forget: String,
    /// Seed of the random forget set.
    #[arg(long, default_value_t = 1)]
    pub forget_seed: u64,
    /// Seed of the method's own randomness.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A TOML file of method settings (keys of the method's config).
    #[arg(long)]
    pub method_config: Option<PathBuf>,
    #[arg(long)]
    pub lr: Option<f64>,
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
    pub select: String,
    /// A report.json of a Retrain run on the same scenario (for Avg. Gap and `--select gap`).
    #[arg(long)]
    pub retrain_report: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value = "bar")]
    pub progress: String,
}

/// The original model and the data of a scenario, ready for unlearning.
pub struct Setup {
    pub original: Model,
    pub train_config: TrainConfig,
    pub run_config: RunConfig,
    pub data: UnlearnData,
    /// The original model's training split (forget and retain), on the device.
    pub train: Dataset,
}

/// Loads the original model and reproduces its training split, then resolves the scenario.
pub fn setup(
    model_path: &Path,
    forget: &ForgetSpec,
    forget_seed: u64,
    data_dir: Option<&Path>,
    device: tch::Device,
) -> Result<Setup> {
    let (original, meta) = load_model(model_path, None, device)?;
    let meta = meta.ok_or_else(|| {
        Error::checkpoint(
            model_path,
            "no sidecar with the training config: cannot reproduce the training split",
        )
    })?;
    let mut rc: RunConfig = serde_json::from_value(meta.config.clone()).map_err(|e| {
        Error::checkpoint(
            sidecar_of(model_path),
            format!("not a `rustworthy train` model sidecar ({e})"),
        )
    })?;
    if let Some(d) = data_dir {
        rc.data.data_dir = Some(d.to_path_buf());
    }
    let splits = load_splits(&rc)?;
    // The split is reproduced from its seed; check it against the one saved with the model.
    let saved = model_path.parent().map(|p| p.join("split.json"));
    if let Some(p) = saved.filter(|p| p.is_file()) {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?)?;
        let train: Vec<usize> = serde_json::from_value(v["train"].clone())
            .map_err(|e| Error::corrupt(&p, e.to_string()))?;
        if train != splits.train_idx {
            return Err(Error::corrupt(
                &p,
                "the saved training split differs from the one reproduced from the config (different dataset files?)",
            ));
        }
    }
    let labels = splits.full_train.labels_vec();
    let scenario = Scenario::resolve(
        forget,
        &splits.train_idx,
        &labels,
        splits.full_train.num_classes,
        forget_seed,
    )?;
    let data = build_data(&splits.full_train, &splits.test, scenario, device)?;
    Ok(Setup {
        original,
        train_config: rc.train.clone(),
        run_config: rc,
        data,
        train: splits.train.to_device(device),
    })
}

fn method_config(
    name: &str,
    file: Option<&Path>,
    lr: Option<f64>,
    epochs: Option<usize>,
) -> Result<MethodConfig> {
    let mut o = serde_json::Map::new();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let t: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::config(f.display().to_string(), e.to_string()))?;
        if let serde_json::Value::Object(m) = serde_json::to_value(t)? {
            o = m;
        }
    }
    if let Some(v) = lr {
        o.insert("lr".into(), serde_json::json!(v));
    }
    if let Some(v) = epochs {
        o.insert("epochs".into(), serde_json::json!(v));
    }
    MethodConfig::with_overrides(name, &o)
}

/// `METHOD:SPARSITY` of prune-then-unlearn (e.g. `omp:0.95`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneSpec {
    pub method: PruneMethod,
    pub sparsity: f64,
}

impl std::str::FromStr for PruneSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<PruneSpec> {
        let (m, sp) = s.split_once(':').ok_or_else(|| {
            Error::config(
                "prune",
                format!("`{s}` is not METHOD:SPARSITY (e.g. omp:0.95)"),
            )
        })?;
        let method: PruneMethod = m.parse()?;
        if !method.is_one_shot() {
            return Err(Error::config(
                "prune",
                format!(
                    "{} is not a one-shot method; use omp, snip, grasp, synflow or random",
                    method.name()
                ),
            ));
        }
        let sparsity: f64 = sp
            .parse()
            .map_err(|_| Error::config("prune", format!("`{sp}` is not a number")))?;
        rustworthy_prune::check_sparsity(sparsity).map_err(|e| match e {
            Error::Config { msg, .. } => Error::config("prune", msg),
            o => o,
        })?;
        Ok(PruneSpec { method, sparsity })
    }
}

impl std::fmt::Display for PruneSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.method.name(), self.sparsity)
    }
}

/// Fine-tuning epochs after pruning the original model (the reference's short fine-tune).
pub const PRUNE_FINETUNE_EPOCHS: usize = 3;

/// Prunes the original model one-shot and fine-tunes it with the mask fixed on its own training
/// split (forget and retain: the data the original model was trained on), cosine from lr 0.01.
/// Returns the pruned model (the new original), its masks and the seconds spent.
pub fn prune_original(s: &Setup, p: PruneSpec, seed: u64) -> Result<(Model, Masks, f64)> {
    let t0 = Instant::now();
    let mut model = clone_model(&s.original)?;
    rustworthy_core::seed::seed_torch(rustworthy_core::seed::derive(seed, "prune", 0));
    let masks = one_shot_masks(p.method, &model, &s.train, p.sparsity, Scope::Global, seed)?;
    let mut recipe = s.train_config.clone();
    recipe.epochs = PRUNE_FINETUNE_EPOCHS;
    recipe.lr.lr = 0.01;
    recipe.lr.schedule = rustworthy_train::schedule::LrSchedule::Cosine { min_lr: 0.0 };
    recipe.lr.warmup_epochs = 0.0;
    let opts = rustworthy_train::trainer::FitOptions {
        progress: ProgressMode::Quiet,
        ..Default::default()
    };
    fit_with(
        &mut model,
        &s.train,
        None,
        &recipe,
        &opts,
        &mut MaskedStep(&masks),
    )?;
    Ok((model, masks, t0.elapsed().as_secs_f64()))
}

fn read_retrain_metrics(p: &Path) -> Result<UnlearnMetrics> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?)?;
    serde_json::from_value(v["metrics"]["unlearned"].clone())
        .map_err(|e| Error::corrupt(p, format!("no unlearned metrics in this report: {e}")))
}

fn metrics_rows(rows: &[(&str, &UnlearnMetrics)]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(n, m)| {
            vec![
                n.to_string(),
                format!("{:.2}", m.ua),
                format!("{:.2}", m.ra),
                format!("{:.2}", m.ta),
                format!("{:.2}", m.mia_efficacy),
                format!("{:.2}", m.mia_auc_forget_vs_test),
                format!("{:.1}", m.rte_s),
            ]
        })
        .collect();
    render(
        &["model", "UA", "RA", "TA", "MIA-Eff", "MIA-AUC f/t", "RTE s"],
        &body,
    )
}

pub fn unlearn(a: UnlearnArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.progress)?;
    set_threads(a.threads);
    let device = a.device.parse::<DeviceSpec>()?.resolve()?;
    let spec: ForgetSpec = a.forget.parse()?;
    let cfg = method_config(&a.method, a.method_config.as_deref(), a.lr, a.epochs)?;
    let select: Selection = a.select.parse()?;
    let prune_spec = a
        .prune
        .as_deref()
        .map(str::parse::<PruneSpec>)
        .transpose()?;
    let retrain = a
        .retrain_report
        .as_deref()
        .map(read_retrain_metrics)
        .transpose()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/unlearn-{}", cfg.name())));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;

    let t0 = Instant::now();
    let s = setup(
        &a.model,
        &spec,
        a.forget_seed,
        a.data_dir.as_deref(),
        device,
    )?;
    s.data.scenario.save(&out.join("scenario.json"))?;
    let load_s = t0.elapsed().as_secs_f64();
    let svc = SvcConfig::default();
    let eval_batch = 1000;
    let mut s = s;
    let mut masks: Option<Masks> = None;
    let mut prune_s = 0.0;
    if let Some(p) = prune_spec {
        let (m, mk, secs) = prune_original(&s, p, a.seed)?;
        eprintln!(
            "pruned the original model ({p}), fine-tuned {PRUNE_FINETUNE_EPOCHS} epochs in {secs:.1}s"
        );
        s.original = m;
        masks = Some(mk);
        prune_s = secs;
    }
    let before = evaluate(&s.original, &s.data, &svc, eval_batch, 0.0)?;
    let ctx = UnlearnCtx {
        data: &s.data,
        seed: a.seed,
        progress: mode,
        original: &s.train_config,
        masks: masks.as_ref(),
    };
    let (result, model) = if a.lr_search {
        let base = cfg.lr().ok_or_else(|| {
            Error::config("lr_search", format!("{} has no learning rate", cfg.name()))
        })?;
        let lrs: Vec<f64> = a.lr_grid.iter().map(|m| m * base).collect();
        let reference_ta = retrain.as_ref().map(|r| r.ta).unwrap_or(before.ta);
        lr_search(
            &s.original,
            &cfg,
            &lrs,
            &ctx,
            &svc,
            eval_batch,
            &select,
            retrain.as_ref(),
            reference_ta,
        )?
    } else {
        let (m, rep, rte) = run_method(&s.original, &cfg, &ctx)?;
        let met = evaluate(&m, &s.data, &svc, eval_batch, rte)?;
        let gap = retrain.as_ref().map(|r| avg_gap(&met, r));
        (
            MethodResult {
                method: cfg.name().to_string(),
                config: cfg.clone(),
                metrics: met,
                gap,
                report: rep,
                lr_grid: Vec::new(),
            },
            m,
        )
    };

    let model_path = out.join("model.safetensors");
    let mut seeds = BTreeMap::new();
    seeds.insert("method".to_string(), a.seed);
    seeds.insert("forget".to_string(), a.forget_seed);
    save_model(
        &model_path,
        &model,
        CheckpointMeta {
            format: rustworthy_train::checkpoint::FORMAT,
            model_spec: model.spec.clone(),
            config: serde_json::to_value(&s.run_config)?,
            epoch: 0,
            optimizer_steps: 0,
            seeds: seeds.clone(),
            metrics: serde_json::json!({"unlearning": {
                "from": a.model, "method": &result.config, "forget": spec.to_string(),
                "metrics": &result.metrics,
            }}),
            history: Vec::new(),
            model_file: String::new(),
            optim_file: None,
        },
    )?;
    let mut report = RunReport::new(
        "unlearn",
        serde_json::json!({
            "model": a.model, "method": &result.config, "forget": spec,
            "forget_seed": a.forget_seed, "seed": a.seed, "lr_search": a.lr_search,
            "lr_grid": a.lr_grid, "select": select, "svm": svc,
            "original_training": &s.run_config,
            "prune": prune_spec.map(|p| p.to_string()),
            "prune_finetune_epochs": prune_spec.map(|_| PRUNE_FINETUNE_EPOCHS),
        }),
        &device_name(device),
    );
    report.seeds = seeds;
    report.timings_s.insert("load".into(), load_s);
    if prune_spec.is_some() {
        report.timings_s.insert("prune".into(), prune_s);
    }
    report.timings_s.insert("rte".into(), result.metrics.rte_s);
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.metrics = serde_json::json!({
        "original": before, "unlearned": &result.metrics, "avg_gap_to_retrain": result.gap,
        "forget_size": s.data.forget.len(), "retain_size": s.data.retain.len(),
        "test_size": s.data.test.len(), "method_report": &result.report, "lr_grid": &result.lr_grid,
        "sparsity": masks.as_ref().map(|m| rustworthy_train::mask::mask_stats(m).1),
        "zero_fraction_after": masks.as_ref().map(|m| rustworthy_train::mask::weight_sparsity(&model, m)),
    });
    report.artifacts = vec![
        "scenario.json".into(),
        "model.safetensors".into(),
        "model.json".into(),
    ];
    report.finished_utc = Some(utc_now());
    report.write(&out.join("report.json"))?;
    if mode == ProgressMode::JsonLines {
        rustworthy_core::progress::emit_json("summary", report.metrics.clone());
    } else {
        let mut rows = vec![
            ("original", &before),
            (result.method.as_str(), &result.metrics),
        ];
        if let Some(r) = &retrain {
            rows.push(("retrain (given)", r));
        }
        println!("{}", metrics_rows(&rows));
        if let Some(g) = result.gap {
            println!("Avg. Gap to Retrain: {g:.2}");
        }
        println!(
            "report: {}\nmodel: {}",
            out.join("report.json").display(),
            model_path.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bench unlearn

/// A benchmark preset: the original model's training preset, the scenario and the methods.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Training preset of the original model.
    pub original: String,
    /// Epochs of the original model (default: the training preset's).
    #[serde(default)]
    pub original_epochs: Option<usize>,
    /// Where the original model lives (default: `<out>/original`); presets that share an
    /// original model point here so it is trained once.
    #[serde(default)]
    pub original_out: Option<PathBuf>,
    pub forget: String,
    #[serde(default = "one")]
    pub forget_seed: u64,
    #[serde(default)]
    pub seed: u64,
    pub methods: Vec<String>,
    /// Per-method settings, e.g. `[method.ft] epochs = 5`.
    #[serde(default)]
    pub method: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub lr_search: LrSearchConfig,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    pub device: DeviceSpec,
    pub out: PathBuf,
    #[serde(default)]
    pub threads: usize,
    /// Also run every method on the original model pruned one-shot (`METHOD:SPARSITY`, e.g.
    /// `omp:0.95`), with the mask fixed; those rows are named `method@METHOD:SPARSITY` and their
    /// gaps are to the masked Retrain.
    #[serde(default)]
    pub prune: Option<String>,
}

fn one() -> u64 {
    1
}
fn default_eval_batch() -> usize {
    1000
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSearchConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_grid")]
    pub multipliers: Vec<f64>,
    #[serde(default = "default_select")]
    pub select: String,
}

impl Default for LrSearchConfig {
    fn default() -> Self {
        LrSearchConfig {
            enabled: false,
            multipliers: default_grid(),
            select: default_select(),
        }
    }
}

fn default_grid() -> Vec<f64> {
    vec![0.25, 0.5, 1.0, 2.0, 4.0]
}
fn default_select() -> String {
    "gap".into()
}

/// Benchmark presets shipped with the binary.
pub const BENCH_PRESETS: &[(&str, &str, &str)] = &[
    (
        "fmnist-lenet-random10",
        "LeNet-5 / Fashion-MNIST, forget a random 10% of the training set",
        include_str!("../../../presets/bench/fmnist-lenet-random10.toml"),
    ),
    (
        "fmnist-lenet-random50",
        "LeNet-5 / Fashion-MNIST, forget a random 50% of the training set",
        include_str!("../../../presets/bench/fmnist-lenet-random50.toml"),
    ),
    (
        "fmnist-lenet-class",
        "LeNet-5 / Fashion-MNIST, forget class 0 (T-shirt/top) entirely",
        include_str!("../../../presets/bench/fmnist-lenet-class.toml"),
    ),
    (
        "fmnist-resnet18-random10",
        "ResNet-18 / Fashion-MNIST, random 10% (for a GPU)",
        include_str!("../../../presets/bench/fmnist-resnet18-random10.toml"),
    ),
];

pub fn bench_preset(name: &str) -> Result<BenchConfig> {
    match BENCH_PRESETS.iter().find(|p| p.0 == name) {
        Some((n, _, text)) => toml::from_str(text)
            .map_err(|e| Error::config(format!("bench preset {n}"), e.to_string())),
        None => Err(Error::config(
            "preset",
            format!(
                "unknown bench preset `{name}`; known: {}",
                BENCH_PRESETS
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[derive(Args, Debug)]
pub struct BenchUnlearnArgs {
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML file shaped like presets/bench/*.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Only these methods (comma-separated; Retrain is always run first for the gap).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Search each method's learning rate (grid and criterion from the preset).
    #[arg(long)]
    pub lr_search: bool,
    #[arg(long)]
    pub select: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Ignore method results already in the output folder (default: reuse those whose config
    /// and scenario match, so an interrupted benchmark continues where it stopped).
    #[arg(long)]
    pub fresh: bool,
    /// Add rows for the methods on the pruned original (`METHOD:SPARSITY`, e.g. omp:0.95).
    #[arg(long)]
    pub prune: Option<String>,
    #[arg(long, default_value = "bar")]
    pub progress: String,
}

/// Resolves the benchmark configuration (preset or file, then flags) and validates it.
pub fn resolve_bench(a: &BenchUnlearnArgs) -> Result<BenchConfig> {
    let mut c = match (&a.config, &a.preset) {
        (Some(p), _) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            toml::from_str(&text)
                .map_err(|e| Error::config(p.display().to_string(), e.to_string()))?
        }
        (None, Some(n)) => bench_preset(n)?,
        (None, None) => bench_preset("fmnist-lenet-random10")?,
    };
    if let Some(m) = &a.methods {
        c.methods = m.clone();
    }
    if a.lr_search {
        c.lr_search.enabled = true;
    }
    if let Some(s) = &a.select {
        c.lr_search.select = s.clone();
    }
    if let Some(d) = &a.device {
        c.device = d.parse()?;
    }
    if let Some(o) = &a.out {
        c.out = o.clone();
        c.original_out = None;
    }
    if let Some(t) = a.threads {
        c.threads = t;
    }
    if let Some(p) = &a.prune {
        c.prune = Some(p.clone());
    }
    if let Some(p) = &c.prune {
        p.parse::<PruneSpec>()?;
    }
    c.forget.parse::<ForgetSpec>()?;
    c.lr_search.select.parse::<Selection>()?;
    if c.methods.is_empty() {
        return Err(Error::config("methods", "no method to run"));
    }
    for (name, _) in c.method.iter() {
        MethodConfig::default_for(name)?;
    }
    for m in &c.methods {
        method_from_bench(&c, m)?;
    }
    Ok(c)
}

fn method_from_bench(c: &BenchConfig, name: &str) -> Result<MethodConfig> {
    let o = match c.method.get(name) {
        Some(t) => match serde_json::to_value(t)? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };
    MethodConfig::with_overrides(name, &o)
}

/// What is saved per method so an interrupted benchmark can continue.
#[derive(Serialize, Deserialize)]
struct SavedResult {
    key: serde_json::Value,
    result: MethodResult,
}

pub fn bench_unlearn(a: BenchUnlearnArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.progress)?;
    let c = resolve_bench(&a)?;
    set_threads(c.threads);
    let device = c.device.resolve()?;
    let out = c.out.clone();
    std::fs::create_dir_all(out.join("methods")).map_err(|e| Error::io(&out, e))?;
    let mut timings = BTreeMap::new();

    // 1. The original model: reuse it if it was trained with the same config.
    let mut orig_cfg = preset(&c.original)?;
    if let Some(e) = c.original_epochs {
        orig_cfg.train.epochs = e;
    }
    orig_cfg.run.out = c
        .original_out
        .clone()
        .unwrap_or_else(|| out.join("original"));
    orig_cfg.run.device = c.device;
    orig_cfg.run.threads = c.threads;
    if let Some(d) = &a.data_dir {
        orig_cfg.data.data_dir = Some(d.clone());
    }
    orig_cfg.validate()?;
    let orig_path = orig_cfg.run.out.join("model.safetensors");
    // Reuse an original model trained on the same data, model and recipe (where it was
    // written and how many threads it used do not change it).
    let want = serde_json::to_value(&orig_cfg)?;
    let same = |m: &CheckpointMeta| {
        ["data", "model", "train"]
            .iter()
            .all(|k| m.config.get(k) == want.get(k))
    };
    let reuse = sidecar_of(&orig_path).is_file()
        && read_meta(&sidecar_of(&orig_path))
            .map(|m| same(&m))
            .unwrap_or(false);
    let t0 = Instant::now();
    if reuse {
        eprintln!("reusing the original model {}", orig_path.display());
    } else {
        eprintln!("training the original model ({})", c.original);
        train_run(&orig_cfg, mode, true, None)?;
    }
    timings.insert("original_train".to_string(), t0.elapsed().as_secs_f64());

    // 2. Scenario and data.
    let spec: ForgetSpec = c.forget.parse()?;
    let s = setup(
        &orig_path,
        &spec,
        c.forget_seed,
        a.data_dir.as_deref(),
        device,
    )?;
    s.data.scenario.save(&out.join("scenario.json"))?;
    let svc = SvcConfig::default();
    let original_metrics = evaluate(&s.original, &s.data, &svc, c.eval_batch_size, 0.0)?;
    let prune_spec = c
        .prune
        .as_deref()
        .map(str::parse::<PruneSpec>)
        .transpose()?;
    let mut results: Vec<MethodResult> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut sparse_original = None;
    let variants: Vec<Option<PruneSpec>> =
        std::iter::once(None).chain(prune_spec.map(Some)).collect();
    for variant in variants {
        let (pruned, masks, suffix) = match variant {
            None => (None, None, String::new()),
            Some(p) => {
                let (m, mk, secs) = prune_original(&s, p, c.seed)?;
                timings.insert(format!("prune_{p}"), secs);
                let met = evaluate(&m, &s.data, &svc, c.eval_batch_size, 0.0)?;
                eprintln!(
                "pruned original ({p}, fine-tuned {PRUNE_FINETUNE_EPOCHS} epochs, {secs:.1}s): UA {:.2} RA {:.2} TA {:.2} MIA {:.2}",
                met.ua, met.ra, met.ta, met.mia_efficacy
            );
                sparse_original = Some((p.to_string(), met));
                (Some(m), Some(mk), format!("@{p}"))
            }
        };
        let base_model = pruned.as_ref().unwrap_or(&s.original);
        let ctx = UnlearnCtx {
            data: &s.data,
            seed: c.seed,
            progress: mode,
            original: &s.train_config,
            masks: masks.as_ref(),
        };
        let select: Selection = c.lr_search.select.parse()?;

        // 3. Retrain first (the reference of every gap), then the other methods.
        let mut order: Vec<String> = vec!["retrain".to_string()];
        order.extend(c.methods.iter().filter(|m| *m != "retrain").cloned());
        let mut retrain_metrics: Option<UnlearnMetrics> = None;
        for name in &order {
            let cfg = method_from_bench(&c, name)?;
            let search = c.lr_search.enabled && name != "retrain" && cfg.lr().is_some();
            let key = serde_json::json!({
                "config": &cfg, "scenario": &s.data.scenario.spec, "forget_seed": c.forget_seed,
                "seed": c.seed, "original": serde_json::to_value(&orig_cfg)?,
                "lr_search": if search { serde_json::to_value(&c.lr_search)? } else { serde_json::Value::Null },
                "device": device_name(device),
                "prune": variant.map(|p| p.to_string()),
            });
            let row = format!("{name}{suffix}");
            let saved_path = out.join("methods").join(format!("{row}.json"));
            let saved: Option<SavedResult> = if a.fresh {
                None
            } else {
                std::fs::read_to_string(&saved_path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<SavedResult>(&t).ok())
                    .filter(|s| s.key == key)
            };
            let mut r = match saved {
                Some(sr) => {
                    eprintln!("{row}: reusing the result in {}", saved_path.display());
                    sr.result
                }
                None => {
                    eprintln!("{row}: running");
                    let r = if search {
                        let base = cfg.lr().expect("checked");
                        let lrs: Vec<f64> =
                            c.lr_search.multipliers.iter().map(|m| m * base).collect();
                        let reference_ta = retrain_metrics
                            .as_ref()
                            .map(|m| m.ta)
                            .unwrap_or(original_metrics.ta);
                        lr_search(
                            base_model,
                            &cfg,
                            &lrs,
                            &ctx,
                            &svc,
                            c.eval_batch_size,
                            &select,
                            retrain_metrics.as_ref(),
                            reference_ta,
                        )?
                        .0
                    } else {
                        match run_method(base_model, &cfg, &ctx) {
                            Ok((m, rep, rte)) => {
                                let met = evaluate(&m, &s.data, &svc, c.eval_batch_size, rte)?;
                                MethodResult {
                                    method: row.clone(),
                                    config: cfg.clone(),
                                    metrics: met,
                                    gap: None,
                                    report: rep,
                                    lr_grid: Vec::new(),
                                }
                            }
                            // A diverged method is a result too: record it and go on.
                            Err(e @ Error::Numerical(_)) if name != "retrain" => {
                                eprintln!("{row}: FAILED: {e}");
                                failures.push((row.clone(), e.to_string()));
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    write_json_atomic(
                        &saved_path,
                        &SavedResult {
                            key: key.clone(),
                            result: r.clone(),
                        },
                    )?;
                    r
                }
            };
            if name == "retrain" {
                retrain_metrics = Some(r.metrics.clone());
            } else if let Some(rm) = &retrain_metrics {
                r.gap = Some(avg_gap(&r.metrics, rm));
            }
            r.method = row.clone();
            eprintln!(
                "{row}: UA {:.2} RA {:.2} TA {:.2} MIA {:.2} RTE {:.1}s{}",
                r.metrics.ua,
                r.metrics.ra,
                r.metrics.ta,
                r.metrics.mia_efficacy,
                r.metrics.rte_s,
                r.gap.map(|g| format!(" gap {g:.2}")).unwrap_or_default()
            );
            results.push(r);
        }
    }

    // 4. Tables, plot, report.
    let md = format!(
        "Scenario: {} (seed {}), original: {} on {}; {} forget / {} retain / {} test samples; device {}.\n\nOriginal model: UA {:.2} RA {:.2} TA {:.2} MIA-Efficacy {:.2}\n\n{}",
        spec,
        c.forget_seed,
        c.original,
        s.run_config.data.dataset,
        s.data.forget.len(),
        s.data.retain.len(),
        s.data.test.len(),
        device_name(device),
        original_metrics.ua,
        original_metrics.ra,
        original_metrics.ta,
        original_metrics.mia_efficacy,
        sparse_original
            .as_ref()
            .map(|(p, m)| format!(
                "Pruned original ({p}, {PRUNE_FINETUNE_EPOCHS}-epoch masked fine-tune): UA {:.2} RA {:.2} TA {:.2} MIA-Efficacy {:.2}; rows `method@{p}` unlearn it with the mask fixed, gaps to the masked Retrain.\n\n",
                m.ua, m.ra, m.ta, m.mia_efficacy
            ))
            .unwrap_or_default()
            + &markdown_table(&results)
    ) + &failures
        .iter()
        .map(|(n, e)| format!("\n{n} did not finish: {e}\n"))
        .collect::<String>();
    atomic_write(&out.join("results.md"), md.as_bytes())?;
    atomic_write(&out.join("results.csv"), csv_table(&results).as_bytes())?;
    write_json_atomic(
        &out.join("results.json"),
        &serde_json::json!({"original": &original_metrics, "results": &results, "failed": &failures}),
    )?;
    let chart = Chart {
        title: format!("avg gap to retrain vs run time ({})", spec),
        x_label: "run time (s, log scale)".into(),
        y_label: "avg gap (points)".into(),
        log_x: true,
        points: results
            .iter()
            .map(|r| Point {
                x: r.metrics.rte_s.max(1e-3),
                y: r.gap.unwrap_or(0.0),
                label: r.method.clone(),
            })
            .collect(),
        lines: Vec::new(),
    };
    chart.write_png(&out.join("gap_vs_time.png"), 800, 500)?;
    timings.insert("total".to_string(), t_total.elapsed().as_secs_f64());
    let mut report = RunReport::new(
        "bench-unlearn",
        serde_json::to_value(&c)?,
        &device_name(device),
    );
    report.seeds.insert("forget".into(), c.forget_seed);
    report.seeds.insert("method".into(), c.seed);
    report
        .seeds
        .insert("original_train".into(), orig_cfg.train.seed);
    report.timings_s = timings;
    report.metrics = serde_json::json!({"original": &original_metrics, "pruned_original": &sparse_original, "results": &results, "failed": &failures});
    report.artifacts = [
        "results.md",
        "results.csv",
        "results.json",
        "gap_vs_time.png",
        "scenario.json",
        "original/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    report.finished_utc = Some(utc_now());
    report.write(&out.join("report.json"))?;
    println!("{md}");
    println!("written: {}", out.join("results.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_preset_resolves() {
        for (name, _, _) in BENCH_PRESETS {
            let c = bench_preset(name).unwrap();
            preset(&c.original).unwrap().validate().unwrap();
            c.forget.parse::<ForgetSpec>().unwrap();
            assert_eq!(c.methods[0], "retrain", "{name}");
            for m in &c.methods {
                method_from_bench(&c, m).unwrap_or_else(|e| panic!("{name}/{m}: {e}"));
            }
            for m in c.method.keys() {
                assert!(
                    c.methods.contains(m),
                    "{name}: settings for unused method {m}"
                );
            }
        }
    }

    #[test]
    fn selection_parses() {
        assert_eq!("gap".parse::<Selection>().unwrap(), Selection::Gap);
        assert_eq!(
            "ua:ta-drop=2".parse::<Selection>().unwrap(),
            Selection::UaWithTaFloor { max_ta_drop: 2.0 }
        );
        assert!("ua:ta-drop=-1".parse::<Selection>().is_err());
        assert!("best".parse::<Selection>().is_err());
    }
}
