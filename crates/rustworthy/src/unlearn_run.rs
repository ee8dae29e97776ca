//! Unlearning runs: a trained run and a forgetting scenario ready for unlearning, a method run
//! and evaluated (optionally with a learning-rate search, optionally after pruning), and the
//! run folder written with the unlearned model and its report.

use crate::config::RunConfig;
use crate::model_source::{has_sidecar, model_file, open_model, ModelSource};
use crate::table::render;
use crate::train_run::set_threads;
use crate::trained::TrainedRun;
use rustworthy_core::device::device_name;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::{utc_now, RunReport};
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_prune::methods::one_shot_masks;
use rustworthy_prune::{PruneMethod, Scope};
use rustworthy_train::checkpoint::{save_model, CheckpointMeta};
use rustworthy_train::mask::Masks;
use rustworthy_train::{fit_with, MaskedStep, TrainConfig};
use rustworthy_unlearn::metrics::{avg_gap, UnlearnMetrics};
use rustworthy_unlearn::pipeline::build_data;
use rustworthy_unlearn::pipeline::{evaluate, lr_search, run_method, MethodResult, Selection};
use rustworthy_unlearn::svm::SvcConfig;
use rustworthy_unlearn::{ForgetSpec, MethodConfig, Profile, Scenario, UnlearnCtx, UnlearnData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The original model and the data of a scenario, ready for unlearning.
pub struct UnlearnSetup {
    /// The model to unlearn from.
    pub original: Model,
    /// Its training recipe (methods such as Retrain reuse it).
    pub train_config: TrainConfig,
    /// Its whole training config.
    pub run_config: RunConfig,
    /// Forget, retain and test sets of the scenario.
    pub data: UnlearnData,
    /// The original model's training split (forget and retain), on the device.
    pub train: Dataset,
}

impl UnlearnSetup {
    /// Opens a trained run (see [`TrainedRun::open`]) and resolves the scenario on its split.
    pub fn open(
        model_path: &Path,
        forget: &ForgetSpec,
        forget_seed: u64,
        data_dir: Option<&Path>,
        device: tch::Device,
    ) -> Result<UnlearnSetup> {
        let run = TrainedRun::open(model_path, data_dir, device)?;
        let data = run.scenario(forget, forget_seed)?;
        Ok(UnlearnSetup {
            train: run.splits.train.to_device(device),
            original: run.model,
            train_config: run.config.train.clone(),
            run_config: run.config,
            data,
        })
    }
}

impl UnlearnSetup {
    /// A model without a training run of ours (a TorchScript module, a foreign state dict, or
    /// any `Model`) and the data it was trained on: every sample of `train` counts as its
    /// training set, and `run_config` supplies the recipe (Retrain, and the methods that reuse
    /// the original recipe) and names the data.
    pub fn from_parts(
        original: Model,
        train: &Dataset,
        test: &Dataset,
        run_config: RunConfig,
        forget: &ForgetSpec,
        forget_seed: u64,
        device: tch::Device,
    ) -> Result<UnlearnSetup> {
        let (c, h, w) = train.image_shape();
        original.check_input(&tch::Tensor::zeros(
            [1, c as i64, h as i64, w as i64],
            (tch::Kind::Float, original.device()),
        ))?;
        if train.num_classes as i64 != original.spec.num_classes {
            return Err(Error::invalid(format!(
                "the model has {} outputs but the training data has {} classes",
                original.spec.num_classes, train.num_classes
            )));
        }
        let all: Vec<usize> = (0..train.len()).collect();
        let scenario = Scenario::resolve(
            forget,
            &all,
            &train.labels_vec(),
            train.num_classes,
            forget_seed,
        )?;
        let data = build_data(train, test, scenario, device)?;
        Ok(UnlearnSetup {
            original,
            train_config: run_config.train.clone(),
            run_config,
            data,
            train: train.to_device(device),
        })
    }

    /// The setup of a request: a trained run of ours (through its sidecar), or a model
    /// without one, with `req.dataset` (default Fashion-MNIST) as its training and test data
    /// and the training preset `req.recipe` (default `fmnist-lenet`) as its recipe.
    pub fn for_request(req: &UnlearnRequest, device: tch::Device) -> Result<UnlearnSetup> {
        let path = model_file(&req.model.path);
        let plain =
            req.model.arch.is_none() && req.model.mean.is_none() && req.model.map.is_empty();
        if has_sidecar(&path) && plain && !crate::model_source::is_torchscript(&path)? {
            if req.dataset.is_some() || req.recipe.is_some() {
                return Err(Error::config(
                    "dataset",
                    "a model with its training sidecar is unlearned on the data and recipe it was trained with; leave out --dataset and --recipe",
                ));
            }
            return UnlearnSetup::open(
                &path,
                &req.forget,
                req.forget_seed,
                req.data_dir.as_deref(),
                device,
            );
        }
        let dataset = req
            .dataset
            .clone()
            .unwrap_or_else(|| "fashion-mnist".into());
        let mut rc = crate::config::preset(req.recipe.as_deref().unwrap_or("fmnist-lenet"))?;
        rc.data.dataset = dataset.clone();
        rc.data.data_dir = req.data_dir.clone();
        rc.data.val_fraction = 0.0;
        let (train, test) = crate::datasets::load_pair(
            &dataset,
            req.data_dir.as_deref(),
            None,
            rc.data.split_seed,
        )?;
        let (c, h, w) = train.image_shape();
        let opened = open_model(&req.model, (c as i64, (h as i64, w as i64)), device)?;
        opened
            .model
            .check_finite(&req.model.path.display().to_string())?;
        for n in &opened.notes {
            tracing::info!("{n}");
        }
        rc.model.arch = opened.model.spec.arch;
        UnlearnSetup::from_parts(
            opened.model,
            &train,
            &test,
            rc,
            &req.forget,
            req.forget_seed,
            device,
        )
    }
}

/// A method's config from its name, an optional TOML file of its settings and the common
/// `lr`/`epochs` overrides, over the `reference` profile's defaults.
pub fn method_config(
    name: &str,
    file: Option<&Path>,
    lr: Option<f64>,
    epochs: Option<usize>,
) -> Result<MethodConfig> {
    method_config_for(name, Profile::Reference, file, lr, epochs)
}

/// [`method_config`] over the defaults of `profile`.
pub fn method_config_for(
    name: &str,
    profile: Profile,
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
        // The file's settings must be valid on their own; errors name the file.
        MethodConfig::with_overrides_for(name, profile, &o).map_err(|e| e.in_file(f))?;
    }
    if let Some(v) = lr {
        o.insert("lr".into(), serde_json::json!(v));
    }
    if let Some(v) = epochs {
        o.insert("epochs".into(), serde_json::json!(v));
    }
    MethodConfig::with_overrides_for(name, profile, &o)
}

/// `METHOD:SPARSITY` of prune-then-unlearn (e.g. `omp:0.95`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneSpec {
    /// A one-shot pruning method.
    pub method: PruneMethod,
    /// Share of the prunable weights removed.
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
pub fn prune_original(s: &UnlearnSetup, p: PruneSpec, seed: u64) -> Result<(Model, Masks, f64)> {
    let t0 = Instant::now();
    let mut model = s.original.try_clone()?;
    rustworthy_core::seed::seed_torch(rustworthy_core::seed::derive(seed, "prune", 0));
    let masks = one_shot_masks(
        p.method,
        &model,
        Some(&s.train),
        p.sparsity,
        Scope::Global,
        seed,
    )?;
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

/// The unlearned metrics of a Retrain run's `report.json` (the reference of Avg. Gap).
pub fn read_retrain_metrics(p: &Path) -> Result<UnlearnMetrics> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::corrupt(p, e.to_string()))?;
    serde_json::from_value(v["metrics"]["unlearned"].clone())
        .map_err(|e| Error::corrupt(p, format!("no unlearned metrics in this report: {e}")))
}

/// A plain-text table of UA, RA, TA, MIA and RTE for named models.
pub fn metrics_table(rows: &[(&str, &UnlearnMetrics)]) -> String {
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

/// A learning-rate search: multiples of the method's lr and the selection rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSearch {
    /// Multipliers of the configured lr.
    pub grid: Vec<f64>,
    /// How the best run is chosen.
    pub select: Selection,
}

/// One unlearning run on a trained model.
#[derive(Clone, Debug)]
pub struct UnlearnRequest {
    /// The original model: a training run's `model.safetensors` (or its folder), or a model
    /// without our sidecar (TorchScript, a state dict with its architecture).
    pub model: ModelSource,
    /// For a model without our sidecar: the dataset it was trained on (named, `file:` or
    /// `folder:`; default Fashion-MNIST); all of its training split is the training set.
    pub dataset: Option<String>,
    /// For a model without our sidecar: the training preset whose recipe Retrain and the
    /// methods that reuse the original recipe follow (default `fmnist-lenet`).
    pub recipe: Option<String>,
    /// The method and its settings.
    pub method: MethodConfig,
    /// The profile whose defaults `method` was built on (recorded in the report; build the
    /// method with [`method_config_for`] or [`MethodConfig::for_profile`]).
    pub profile: Profile,
    /// What to forget.
    pub forget: ForgetSpec,
    /// Seed of a random forget set.
    pub forget_seed: u64,
    /// Seed of the method's own randomness.
    pub seed: u64,
    /// Search the learning rate (absent: the configured one).
    pub lr_search: Option<LrSearch>,
    /// Retrain's metrics on the same scenario, for Avg. Gap and gap-based selection.
    pub retrain: Option<UnlearnMetrics>,
    /// Prune the original first and unlearn with the mask fixed.
    pub prune: Option<PruneSpec>,
    /// Where the dataset is read from (default: as the original model was trained).
    pub data_dir: Option<PathBuf>,
    /// Device.
    pub device: DeviceSpec,
    /// Output folder.
    pub out: PathBuf,
    /// libtorch threads (0: default).
    pub threads: usize,
    /// Progress display (library default: quiet).
    pub progress: ProgressMode,
    /// Data-parallel run (every rank makes the same request; rank 0 alone writes the folder).
    pub dist: Option<rustworthy_train::DistOptions>,
    /// Precision and layout of every forward pass (the methods', Retrain's and the
    /// evaluations'); default float32.
    pub exec: rustworthy_models::Exec,
}

impl UnlearnRequest {
    /// A request with the defaults of `rustworthy unlearn`: forget seed 1, method seed 0, no
    /// search, no pruning, `runs/unlearn-<method>`.
    pub fn new(model: impl Into<PathBuf>, method: MethodConfig, forget: ForgetSpec) -> Self {
        let out = PathBuf::from(format!("runs/unlearn-{}", method.name()));
        UnlearnRequest {
            model: ModelSource::new(model),
            dataset: None,
            recipe: None,
            method,
            profile: Profile::Reference,
            forget,
            forget_seed: 1,
            seed: 0,
            lr_search: None,
            retrain: None,
            prune: None,
            data_dir: None,
            device: DeviceSpec::default(),
            out,
            threads: 0,
            progress: ProgressMode::Quiet,
            dist: None,
            exec: Default::default(),
        }
    }
}

/// What an unlearning run produced.
pub struct UnlearnOutcome {
    /// Metrics of the original (or pruned original) model on the scenario.
    pub before: UnlearnMetrics,
    /// The method's result (metrics, gap, report, lr grid).
    pub result: MethodResult,
    /// Retrain's metrics, when given.
    pub retrain: Option<UnlearnMetrics>,
    /// The unlearned model.
    pub model: Model,
    /// Where it was written.
    pub model_path: PathBuf,
    /// The report written to `report.json`.
    pub report: RunReport,
}

/// The batch size of every unlearning evaluation.
pub(crate) const EVAL_BATCH: usize = 1000;

/// Runs `cfg` once from `original` and evaluates the result (UA, RA, TA, MIA-Efficacy, RTE and,
/// given Retrain's metrics, the Avg. Gap): what `unlearn` does without a learning-rate search.
pub fn unlearn_once(
    original: &Model,
    cfg: &MethodConfig,
    ctx: &UnlearnCtx,
    retrain: Option<&UnlearnMetrics>,
) -> Result<(MethodResult, Model)> {
    let (m, rep, rte) = run_method(original, cfg, ctx)?;
    let met = evaluate(&m, ctx.data, &SvcConfig::default(), EVAL_BATCH, rte)?;
    let gap = retrain.map(|r| avg_gap(&met, r));
    Ok((
        MethodResult {
            method: cfg.name().to_string(),
            config: cfg.clone(),
            metrics: met,
            gap,
            report: rep,
            lr_grid: Vec::new(),
        },
        m,
    ))
}

/// Runs one unlearning method on a trained model, evaluates it, and writes the run folder
/// (`scenario.json`, `model.safetensors` + sidecar, `report.json`).
pub fn unlearn(req: &UnlearnRequest) -> Result<UnlearnOutcome> {
    let t_total = Instant::now();
    set_threads(req.threads);
    let device = req.device.resolve()?;
    let cfg = &req.method;
    let out = &req.out;
    let main = req.dist.as_ref().is_none_or(|d| d.group.is_main());
    let _lock = if main {
        Some(crate::train_run::lock_out(out)?)
    } else {
        None
    };

    let t0 = Instant::now();
    let mut s = UnlearnSetup::for_request(req, device)?;
    if !req.exec.is_default() {
        s.original.set_exec(req.exec)?;
        s.train_config.precision = req.exec.precision;
        s.train_config.channels_last = req.exec.channels_last;
    }
    if main {
        s.data.scenario.save(&out.join("scenario.json"))?;
    }
    let load_s = t0.elapsed().as_secs_f64();
    let svc = SvcConfig::default();
    let eval_batch = EVAL_BATCH;
    let mut masks: Option<Masks> = None;
    let mut prune_s = 0.0;
    if let Some(p) = req.prune {
        let (m, mk, secs) = prune_original(&s, p, req.seed)?;
        tracing::info!(
            "pruned the original model ({p}), fine-tuned {PRUNE_FINETUNE_EPOCHS} epochs in {secs:.1}s"
        );
        s.original = m;
        masks = Some(mk);
        prune_s = secs;
    }
    let before = evaluate(&s.original, &s.data, &svc, eval_batch, 0.0)?;
    let ctx = UnlearnCtx {
        data: &s.data,
        seed: req.seed,
        progress: req.progress,
        original: &s.train_config,
        masks: masks.as_ref(),
        dist: req.dist.clone(),
    };
    let retrain = req.retrain.as_ref();
    let (result, model) = match &req.lr_search {
        Some(search) => {
            let base = cfg.lr().ok_or_else(|| {
                Error::config("lr_search", format!("{} has no learning rate", cfg.name()))
            })?;
            let lrs: Vec<f64> = search.grid.iter().map(|m| m * base).collect();
            let reference_ta = retrain.map(|r| r.ta).unwrap_or(before.ta);
            lr_search(
                &s.original,
                cfg,
                &lrs,
                &ctx,
                &svc,
                eval_batch,
                &search.select,
                retrain,
                reference_ta,
            )?
        }
        None => unlearn_once(&s.original, cfg, &ctx, retrain)?,
    };
    if !main {
        // The other ranks hold the same model and metrics; rank 0 writes them.
        return Ok(UnlearnOutcome {
            before,
            result,
            retrain: req.retrain.clone(),
            model,
            model_path: out.join("model.safetensors"),
            report: RunReport::new("unlearn", serde_json::to_value(cfg)?, &device_name(device)),
        });
    }

    let model_path = out.join("model.safetensors");
    let mut seeds = BTreeMap::new();
    seeds.insert("method".to_string(), req.seed);
    seeds.insert("forget".to_string(), req.forget_seed);
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
                "from": req.model.path, "method": &result.config, "forget": req.forget.to_string(),
                "metrics": &result.metrics,
            }}),
            history: Vec::new(),
            model_file: String::new(),
            optim_file: None,
            checksums: Default::default(),
        },
    )?;
    let (lr_grid, select) = match &req.lr_search {
        Some(l) => (l.grid.clone(), Some(l.select.clone())),
        None => (Vec::new(), None),
    };
    let mut report = RunReport::new(
        "unlearn",
        serde_json::json!({
            "model": req.model, "dataset": req.dataset, "recipe": req.recipe,
            "profile": req.profile, "method": &result.config, "forget": req.forget,
            "forget_seed": req.forget_seed, "seed": req.seed, "lr_search": req.lr_search.is_some(),
            "lr_grid": lr_grid, "select": select, "svm": svc,
            "original_training": &s.run_config,
            "prune": req.prune.map(|p| p.to_string()),
            "prune_finetune_epochs": req.prune.map(|_| PRUNE_FINETUNE_EPOCHS),
            "exec": req.exec,
        }),
        &device_name(device),
    );
    report.seeds = seeds;
    report.timings_s.insert("load".into(), load_s);
    if req.prune.is_some() {
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
    if model.is_torchscript() {
        // The module itself, with the unlearned weights, for PyTorch (`torch.jit.load`).
        model.save_torchscript(out.join("model.pt"))?;
        report.artifacts.push("model.pt".into());
    }
    report.finished_utc = Some(utc_now());
    report.write(&out.join("report.json"))?;
    Ok(UnlearnOutcome {
        before,
        result,
        retrain: req.retrain.clone(),
        model,
        model_path,
        report,
    })
}
