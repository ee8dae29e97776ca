//! The subcommands. They parse and validate, call the library, and write reports; they compute
//! no metrics themselves.

use crate::config::{preset, RunConfig, PRESETS};
use crate::table::render;
use clap::Args;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Error, Result, SeedRng};
use rustworthy_data::registry::{dataset_summary, load_dataset};
use rustworthy_data::split::per_class_split;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_robust::{AdvMethod, AdvTrainConfig, AdvTrainer};
use rustworthy_train::checkpoint::{load_model, save_model, CheckpointMeta};
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{evaluate, fit_with, EvalResult, StandardStep, TrainHook};
use rustworthy_zo::{DeepZeroStep, ZoTrainConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A named preset (see `rustworthy info --presets`).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML config file (same shape as the files in presets/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base (peak) learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the training randomness.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seed of the weight initialisation.
    #[arg(long)]
    pub init_seed: Option<u64>,
    /// Model architecture: mlp, lenet, resnet18, resnet20, preact-resnet18, vgg16-bn.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on this many training samples only (0 = all).
    #[arg(long)]
    pub train_subset: Option<usize>,
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (report.json, model.safetensors, checkpoint/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// libtorch threads (0 = default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Continue an interrupted run from its last checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many epochs, keeping the checkpoint (resume later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// bar | quiet | json
    #[arg(long, default_value = "bar")]
    pub progress: String,
    /// Adversarial training: pgd | fast | gradalign | fast-bat | trades | none (standard).
    #[arg(long)]
    pub adv: Option<String>,
    /// l_inf radius of adversarial training, in pixel units.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Attack steps of adversarial training (pgd, trades).
    #[arg(long)]
    pub adv_steps: Option<usize>,
    /// Attack step size of adversarial training.
    #[arg(long)]
    pub adv_step_size: Option<f64>,
    /// GradAlign's penalty weight or Fast-BAT's lambda.
    #[arg(long)]
    pub adv_lambda: Option<f64>,
    /// TRADES' beta.
    #[arg(long)]
    pub adv_beta: Option<f64>,
    /// Validation samples attacked after each epoch to detect catastrophic overfitting (0: off).
    #[arg(long)]
    pub monitor_samples: Option<usize>,
    /// On catastrophic overfitting, restore the most robust epoch's weights and stop.
    #[arg(long)]
    pub stop_on_co: bool,
    /// Train without backpropagation: `cge` (DeepZero's sparse coordinate-wise estimates) or
    /// `none`.
    #[arg(long)]
    pub zo: Option<String>,
    /// Zeroth-order training: fraction of the weight coordinates left out of each estimate.
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Zeroth-order training: finite-difference radius.
    #[arg(long)]
    pub zo_mu: Option<f64>,
    /// Zeroth-order training: redraw the coordinate set every this many epochs.
    #[arg(long)]
    pub resample_every: Option<usize>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model file (`model.safetensors` with its `model.json` sidecar, or a checkpoint file).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset to evaluate on (default: the one the model was trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// For a weights file without sidecar: the architecture.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Where to write the report (default: `eval/` beside the model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "bar")]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Summarise this dataset (train and test splits).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Summarise this model architecture (layers and parameter counts).
    #[arg(long)]
    pub arch: Option<String>,
    /// List the presets.
    #[arg(long)]
    pub presets: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Resolves the configuration: preset or file, then flags, then validation.
pub fn resolve_config(a: &TrainArgs) -> Result<RunConfig> {
    let mut c = match (&a.config, &a.preset) {
        (Some(p), _) => RunConfig::from_file(p)?,
        (None, Some(name)) => preset(name)?,
        (None, None) => preset("fmnist-lenet")?,
    };
    if let Some(v) = a.epochs {
        c.train.epochs = v;
    }
    if let Some(v) = a.batch_size {
        c.train.batch_size = v;
    }
    if let Some(v) = a.lr {
        c.train.lr.lr = v;
    }
    if let Some(v) = a.seed {
        c.train.seed = v;
    }
    if let Some(v) = a.init_seed {
        c.model.init_seed = v;
    }
    if let Some(v) = &a.arch {
        c.model.arch = v.parse()?;
    }
    if let Some(v) = &a.dataset {
        c.data.dataset = v.clone();
    }
    if let Some(v) = &a.data_dir {
        c.data.data_dir = Some(v.clone());
    }
    if let Some(v) = a.train_subset {
        c.data.train_subset = v;
    }
    if let Some(v) = a.val_fraction {
        c.data.val_fraction = v;
    }
    if let Some(v) = &a.device {
        c.run.device = v.parse()?;
    }
    if let Some(v) = &a.out {
        c.run.out = v.clone();
    }
    if let Some(v) = a.threads {
        c.run.threads = v;
    }
    if a.adv.as_deref() == Some("none") {
        c.adv = None;
    } else if let Some(m) = &a.adv {
        let method: AdvMethod = m.parse()?;
        let eps = a.eps.or(c.adv.as_ref().map(|x| x.eps)).ok_or_else(|| {
            Error::config(
                "adv.eps",
                "adversarial training needs --eps (or adv.eps in the config)",
            )
        })?;
        match &mut c.adv {
            Some(x) if x.method == method => x.eps = eps,
            _ => c.adv = Some(AdvTrainConfig::new(method, eps)),
        }
    } else if let (Some(e), Some(x)) = (a.eps, c.adv.as_mut()) {
        x.eps = e;
    }
    let adv_flags = a.adv_steps.is_some()
        || a.adv_step_size.is_some()
        || a.adv_lambda.is_some()
        || a.adv_beta.is_some()
        || a.monitor_samples.is_some()
        || a.stop_on_co
        || a.eps.is_some();
    match c.adv.as_mut() {
        Some(x) => {
            if a.adv_steps.is_some() {
                x.steps = a.adv_steps;
            }
            if a.adv_step_size.is_some() {
                x.step_size = a.adv_step_size;
            }
            if a.adv_lambda.is_some() {
                x.lambda = a.adv_lambda;
            }
            if a.adv_beta.is_some() {
                x.beta = a.adv_beta;
            }
            if let Some(m) = a.monitor_samples {
                x.monitor.samples = m;
            }
            if a.stop_on_co {
                x.monitor.stop_on_co = true;
            }
        }
        None if adv_flags => {
            return Err(Error::config(
                "adv",
                "adversarial-training flags need --adv METHOD (or an [adv] section in the config)",
            ))
        }
        None => {}
    }
    match a.zo.as_deref() {
        Some("none") => c.zo = None,
        Some("cge") if c.zo.is_none() => c.zo = Some(ZoTrainConfig::new(0.9)),
        Some("cge") => {}
        Some(o) => {
            return Err(Error::config(
                "zo",
                format!("unknown zeroth-order training `{o}` (cge, none)"),
            ))
        }
        None => {}
    }
    let zo_flags = a.sparsity.is_some() || a.zo_mu.is_some() || a.resample_every.is_some();
    match c.zo.as_mut() {
        Some(z) => {
            if let Some(v) = a.sparsity {
                z.sparsity = v;
            }
            if let Some(v) = a.zo_mu {
                z.mu = v;
            }
            if let Some(v) = a.resample_every {
                z.resample_every = v;
            }
        }
        None if zo_flags => {
            return Err(Error::config(
                "zo",
                "zeroth-order flags need --zo cge (or a [zo] section in the config)",
            ))
        }
        None => {}
    }
    c.validate()?;
    Ok(c)
}

/// The train / validation / test datasets of a run, and the indices that define them.
pub struct Splits {
    /// The dataset's whole training file (scenario indices refer to it).
    pub full_train: Dataset,
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Dataset,
    pub train_idx: Vec<usize>,
    pub val_idx: Vec<usize>,
}

/// Loads the dataset and makes the seeded per-class validation split (and optional subset).
pub fn load_splits(c: &RunConfig) -> Result<Splits> {
    let (full, test) = load_dataset(&c.data.dataset, c.data.data_dir.as_deref())?;
    let labels = full.labels_vec();
    let (mut train_idx, val_idx) = per_class_split(
        &labels,
        full.num_classes,
        c.data.val_fraction,
        c.data.split_seed,
    )?;
    if c.data.train_subset > 0 && c.data.train_subset < train_idx.len() {
        let mut rng = SeedRng::stream(c.data.split_seed, "train-subset", 0);
        rng.shuffle(&mut train_idx);
        train_idx.truncate(c.data.train_subset);
        train_idx.sort_unstable();
    }
    let train = full.subset(&train_idx)?;
    let val = if val_idx.is_empty() {
        None
    } else {
        Some(full.subset(&val_idx)?)
    };
    Ok(Splits {
        full_train: full,
        train,
        val,
        test,
        train_idx,
        val_idx,
    })
}

pub fn progress_mode(s: &str) -> Result<ProgressMode> {
    s.parse()
}

pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

#[derive(Serialize)]
struct SplitFile<'a> {
    dataset: &'a str,
    val_fraction: f64,
    split_seed: u64,
    train_subset: usize,
    train: &'a [usize],
    val: &'a [usize],
}

pub fn train(a: TrainArgs) -> Result<()> {
    let c = resolve_config(&a)?;
    let mode = progress_mode(&a.progress)?;
    train_run(&c, mode, a.resume, a.stop_after).map(|_| ())
}

/// Trains per `c` into `c.run.out`; returns the final model file, or None if stopped early.
pub fn train_run(
    c: &RunConfig,
    mode: ProgressMode,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Option<PathBuf>> {
    let t_total = Instant::now();
    set_threads(c.run.threads);
    let device = c.run.device.resolve()?;
    let out = c.run.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let mut report = RunReport::new("train", serde_json::to_value(c)?, &device_name(device));
    report.seeds.insert("train".into(), c.train.seed);
    report.seeds.insert("init".into(), c.model.init_seed);
    report.seeds.insert("split".into(), c.data.split_seed);

    let t0 = Instant::now();
    let s = load_splits(c)?;
    let split_path = out.join("split.json");
    write_json_atomic(
        &split_path,
        &SplitFile {
            dataset: &c.data.dataset,
            val_fraction: c.data.val_fraction,
            split_seed: c.data.split_seed,
            train_subset: c.data.train_subset,
            train: &s.train_idx,
            val: &s.val_idx,
        },
    )?;
    let data_device = if c.data.on_device {
        device
    } else {
        tch::Device::Cpu
    };
    let train_ds = s.train.to_device(data_device);
    let val_ds = s.val.as_ref().map(|v| v.to_device(data_device));
    report
        .timings_s
        .insert("load_data".into(), t0.elapsed().as_secs_f64());
    if data_device != device {
        return Err(Error::config(
            "data.on_device",
            "false is not supported yet: the training loop reads batches on the model's device",
        ));
    }

    let (ch, h, w) = train_ds.image_shape();
    let spec = c.model_spec(ch as i64, (h as i64, w as i64), train_ds.num_classes as i64)?;
    rustworthy_core::seed::seed_torch(c.model.init_seed);
    let mut model = Model::new(spec, device)?;
    if mode != ProgressMode::JsonLines {
        eprintln!(
            "training {:?} ({} parameters) on {} ({} train / {} val / {} test) on {}",
            c.model.arch,
            model.num_params(),
            c.data.dataset,
            train_ds.len(),
            val_ds.as_ref().map(|v| v.len()).unwrap_or(0),
            s.test.len(),
            device_name(device)
        );
    }
    let opts = FitOptions {
        progress: mode,
        checkpoint_dir: Some(out.join("checkpoint")),
        resume,
        stop_after,
    };
    let t1 = Instant::now();
    let mut adv = match &c.adv {
        Some(a) => {
            if mode != ProgressMode::JsonLines {
                eprintln!(
                    "adversarial training: {:?}, eps {}, {} step(s) of {}; monitor: PGD-{} on {} validation samples",
                    a.method,
                    a.eps,
                    a.steps(),
                    a.step_size(),
                    a.monitor.steps,
                    a.monitor.samples.min(val_ds.as_ref().map(|v| v.len()).unwrap_or(0))
                );
            }
            Some(AdvTrainer::new(a.clone(), val_ds.as_ref(), c.train.seed)?)
        }
        None => None,
    };
    let mut zo = match &c.zo {
        Some(z) => {
            let n = z.grasp_batch.min(train_ds.len());
            let (gx, gy) = train_ds.batch(&(0..n).collect::<Vec<_>>());
            let hook = DeepZeroStep::new(
                z.clone(),
                (gx, gy),
                Some(out.join("zo-densities.json")),
                c.train.seed,
            )?;
            if mode != ProgressMode::JsonLines {
                eprintln!(
                    "zeroth-order training (DeepZero CGE): sparsity {}, mu {}, coordinates redrawn every {} epoch(s)",
                    z.sparsity, z.mu, z.resample_every
                );
            }
            Some(hook)
        }
        None => None,
    };
    let mut standard = StandardStep;
    let hook: &mut dyn TrainHook = match (adv.as_mut(), zo.as_mut()) {
        (Some(h), _) => h,
        (None, Some(z)) => z,
        (None, None) => &mut standard,
    };
    let fit_out = fit_with(
        &mut model,
        &train_ds,
        val_ds.as_ref(),
        &c.train,
        &opts,
        hook,
    )?;
    if let Some(h) = &adv {
        if !h.co_epochs().is_empty() {
            report.notes.push(format!(
                "catastrophic overfitting flagged in epoch(s) {:?}: PGD accuracy on the monitor set fell by more than {} points",
                h.co_epochs(),
                h.cfg.monitor.co_drop
            ));
        }
    }
    if let Some(why) = &fit_out.stopped {
        report.notes.push(format!("stopped early: {why}"));
    }
    report
        .timings_s
        .insert("train".into(), t1.elapsed().as_secs_f64());
    if let Some(e) = fit_out.resumed_from {
        report.notes.push(format!(
            "resumed after epoch {e} from {}",
            out.join("checkpoint").display()
        ));
    }
    report.history = fit_out
        .history
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()?;
    report.artifacts.push("split.json".into());
    report.artifacts.push("checkpoint/checkpoint.json".into());

    if !fit_out.completed {
        report.notes.push(format!(
            "stopped after {} of {} epochs; continue with --resume",
            fit_out.history.len(),
            c.train.epochs
        ));
        report.finished_utc = Some(rustworthy_core::report::utc_now());
        report
            .timings_s
            .insert("total".into(), t_total.elapsed().as_secs_f64());
        report.write(&out.join("report.json"))?;
        eprintln!(
            "stopped after epoch {}; resume with: rustworthy train ... --out {} --resume",
            fit_out.history.len(),
            out.display()
        );
        return Ok(None);
    }

    let t2 = Instant::now();
    let test_ds = s.test.to_device(device);
    let test = evaluate(&model, &test_ds, c.train.eval_batch_size)?;
    report
        .timings_s
        .insert("eval".into(), t2.elapsed().as_secs_f64());
    let last = fit_out.history.last();
    let metrics = serde_json::json!({
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": fit_out.last_val.as_ref().map(|v| v.accuracy),
        "val_loss": fit_out.last_val.as_ref().map(|v| v.loss),
        "train_accuracy": last.map(|r| r.train_accuracy),
        "train_loss": last.map(|r| r.train_loss),
        "test_per_class_accuracy": test.per_class_accuracy,
        "test_confusion": test.confusion,
        "num_params": model.num_params(),
        "catastrophic_overfitting_epochs": adv.as_ref().map(|h| h.co_epochs().to_vec()),
        "val_pgd_accuracy": last.and_then(|r| r.extra.get("val_pgd_accuracy").copied()),
        "zo_queries": zo.as_ref().map(|h| h.queries),
        "zo_coordinates_per_step": zo.as_ref().map(|h| h.coordinates()),
        "zo_layer_densities": zo.as_ref().map(|h| h.densities().clone()),
    });
    let model_path = out.join("model.safetensors");
    let mut seeds = BTreeMap::new();
    seeds.insert("train".into(), c.train.seed);
    seeds.insert("init".into(), c.model.init_seed);
    seeds.insert("split".into(), c.data.split_seed);
    save_model(
        &model_path,
        &model,
        CheckpointMeta {
            format: rustworthy_train::checkpoint::FORMAT,
            model_spec: model.spec.clone(),
            config: serde_json::to_value(c)?,
            epoch: fit_out.history.len(),
            optimizer_steps: 0,
            seeds,
            metrics: metrics.clone(),
            history: report.history.clone(),
            model_file: String::new(),
            optim_file: None,
        },
    )?;
    report.artifacts.push("model.safetensors".into());
    report.artifacts.push("model.json".into());
    report.metrics = metrics;
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.write(&out.join("report.json"))?;
    report.artifacts.push("report.json".into());

    let rows = vec![
        vec!["test accuracy".into(), format!("{:.2}%", test.accuracy)],
        vec!["test loss".into(), format!("{:.4}", test.loss)],
        vec![
            "val accuracy".into(),
            fit_out
                .last_val
                .as_ref()
                .map(|v| format!("{:.2}%", v.accuracy))
                .unwrap_or_else(|| "-".into()),
        ],
        vec![
            "train accuracy".into(),
            last.map(|r| format!("{:.2}%", r.train_accuracy))
                .unwrap_or_default(),
        ],
        vec!["epochs".into(), fit_out.history.len().to_string()],
        vec![
            "zo queries".into(),
            zo.as_ref()
                .map(|h| format!("{} ({} coordinates per step)", h.queries, h.coordinates()))
                .unwrap_or_else(|| "-".into()),
        ],
        vec![
            "train time".into(),
            format!("{:.1} s", fit_out.train_seconds),
        ],
        vec![
            "total time".into(),
            format!("{:.1} s", t_total.elapsed().as_secs_f64()),
        ],
        vec!["device".into(), device_name(device)],
        vec![
            "report".into(),
            out.join("report.json").display().to_string(),
        ],
        vec!["model".into(), model_path.display().to_string()],
    ];
    if mode == ProgressMode::JsonLines {
        rustworthy_core::progress::emit_json("summary", report.metrics.clone());
    } else {
        println!("{}", render(&["metric", "value"], &rows));
    }
    Ok(Some(model_path))
}

/// The dataset to evaluate a saved model on, and its folder: the flags if given, else what the
/// model's sidecar says it was trained on, else Fashion-MNIST from the default locations.
pub fn data_of(
    meta: Option<&CheckpointMeta>,
    dataset: Option<&str>,
    data_dir: Option<&Path>,
) -> (String, Option<PathBuf>) {
    let from_meta = |key: &str| {
        meta.and_then(|m| m.config.pointer(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let dataset = dataset
        .map(str::to_string)
        .or_else(|| from_meta("/data/dataset"))
        .unwrap_or_else(|| "fashion-mnist".to_string());
    let dir = data_dir
        .map(Path::to_path_buf)
        .or_else(|| from_meta("/data/data_dir").map(PathBuf::from));
    (dataset, dir)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.progress)?;
    let device = a.device.parse::<DeviceSpec>()?.resolve()?;
    let spec_override = match &a.arch {
        Some(arch) => {
            let arch: Arch = arch.parse()?;
            Some(match a.dataset.as_deref() {
                Some("cifar10") | Some("cifar100") => ModelSpec::cifar10(arch),
                _ => ModelSpec::fashion_mnist(arch),
            })
        }
        None => None,
    };
    let (model, meta) = load_model(&a.model, spec_override, device)?;
    let (dataset, data_dir) = data_of(meta.as_ref(), a.dataset.as_deref(), a.data_dir.as_deref());
    let (_, test) = load_dataset(&dataset, data_dir.as_deref())?;
    model.check_input(&test.images.narrow(0, 0, 1))?;
    if test.num_classes as i64 != model.spec.num_classes {
        return Err(Error::invalid(format!(
            "model has {} outputs but {dataset} has {} classes",
            model.spec.num_classes, test.num_classes
        )));
    }
    let test = test.to_device(device);
    let t0 = Instant::now();
    let r = evaluate(&model, &test, a.batch_size)?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.model
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("eval")
    });
    let mut report = RunReport::new(
        "eval",
        serde_json::json!({"model": a.model, "dataset": dataset, "batch_size": a.batch_size}),
        &device_name(device),
    );
    if let Some(m) = &meta {
        report.seeds = m.seeds.clone();
    }
    report
        .timings_s
        .insert("eval".into(), t0.elapsed().as_secs_f64());
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.metrics = serde_json::to_value(&r)?;
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))?;
    if mode == ProgressMode::JsonLines {
        rustworthy_core::progress::emit_json("summary", report.metrics.clone());
    } else {
        print_eval(&r, &test, &dataset);
        println!("report: {}", out.join("report.json").display());
    }
    Ok(())
}

fn print_eval(r: &EvalResult, data: &Dataset, dataset: &str) {
    println!(
        "{dataset} test: accuracy {:.2}%  loss {:.4}  (n = {})\n",
        r.accuracy, r.loss, r.n
    );
    let rows: Vec<Vec<String>> = r
        .per_class_accuracy
        .iter()
        .enumerate()
        .map(|(k, acc)| {
            vec![
                k.to_string(),
                data.class_names.get(k).cloned().unwrap_or_default(),
                acc.map(|a| format!("{a:.2}%"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!("{}", render(&["class", "name", "accuracy"], &rows));
}

pub fn info(a: InfoArgs) -> Result<()> {
    let nothing = a.dataset.is_none() && a.arch.is_none();
    let mut json = serde_json::Map::new();
    if a.presets || nothing {
        let rows: Vec<Vec<String>> = PRESETS
            .iter()
            .map(|(n, d, _)| vec![n.to_string(), d.to_string()])
            .collect();
        if a.json {
            json.insert(
                "presets".into(),
                serde_json::json!(PRESETS.iter().map(|p| p.0).collect::<Vec<_>>()),
            );
        } else {
            println!("{}", render(&["preset", "description"], &rows));
        }
    }
    if nothing {
        let archs = [
            "mlp",
            "lenet",
            "resnet18",
            "resnet20",
            "preact-resnet18",
            "vgg16-bn",
        ];
        let mut rows = Vec::new();
        for name in archs {
            let arch: Arch = name.parse()?;
            let fm = Model::new(ModelSpec::fashion_mnist(arch), tch::Device::Cpu)?.num_params();
            let cf = Model::new(ModelSpec::cifar10(arch), tch::Device::Cpu)?.num_params();
            rows.push(vec![name.to_string(), fm.to_string(), cf.to_string()]);
        }
        if a.json {
            json.insert("models".into(), serde_json::json!(rows));
        } else {
            println!(
                "{}",
                render(
                    &[
                        "model",
                        "params (1x28x28, 10 cls)",
                        "params (3x32x32, 10 cls)"
                    ],
                    &rows
                )
            );
        }
        let avail = match load_dataset("fashion-mnist", a.data_dir.as_deref()) {
            Ok((tr, te)) => format!("found ({} train, {} test)", tr.len(), te.len()),
            Err(e) => e.to_string(),
        };
        if a.json {
            json.insert("fashion-mnist".into(), serde_json::json!(avail));
        } else {
            println!("fashion-mnist: {avail}");
        }
    }
    if let Some(name) = &a.dataset {
        let (tr, te) = load_dataset(name, a.data_dir.as_deref())?;
        let s = serde_json::json!({"train": dataset_summary(&tr), "test": dataset_summary(&te)});
        if a.json {
            json.insert("dataset".into(), s);
        } else {
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
    }
    if let Some(arch) = &a.arch {
        let arch: Arch = arch.parse()?;
        let spec = match a.dataset.as_deref() {
            Some("cifar10") | Some("cifar100") => ModelSpec::cifar10(arch),
            _ => ModelSpec::fashion_mnist(arch),
        };
        let m = Model::new(spec, tch::Device::Cpu)?;
        let layers = m.summary();
        if a.json {
            json.insert("model".into(), serde_json::to_value(&layers)?);
            json.insert("num_params".into(), serde_json::json!(m.num_params()));
        } else {
            let rows: Vec<Vec<String>> = layers
                .iter()
                .map(|l| {
                    vec![
                        l.name.clone(),
                        format!("{:?}", l.shape),
                        l.numel.to_string(),
                        if l.trainable { "yes" } else { "buffer" }.to_string(),
                    ]
                })
                .collect();
            println!(
                "{}",
                render(&["tensor", "shape", "numel", "trainable"], &rows)
            );
            println!("{arch:?}: {} trainable parameters", m.num_params());
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(())
}
