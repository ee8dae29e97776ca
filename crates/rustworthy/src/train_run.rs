//! Training runs: data splits of a run config, and `train` from a config into a run folder
//! (report, split, model with its sidecar, resumable checkpoints).

use crate::config::RunConfig;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::fsutil::RunLock;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::RunReport;
use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::split::per_class_split;
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_robust::AdvTrainer;
use rustworthy_train::checkpoint::{save_model, CheckpointMeta};
use rustworthy_train::trainer::{DistOptions, FitOptions};
use rustworthy_train::{evaluate, fit_with, EvalResult, StandardStep, TrainHook};
use rustworthy_zo::DeepZeroStep;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The train / validation / test datasets of a run, and the indices that define them.
pub struct Splits {
    /// The dataset's whole training file (scenario indices refer to it).
    pub full_train: Dataset,
    /// The training split.
    pub train: Dataset,
    /// The validation split (absent when `val_fraction` is 0).
    pub val: Option<Dataset>,
    /// The test split.
    pub test: Dataset,
    /// Indices of the training split in `full_train`.
    pub train_idx: Vec<usize>,
    /// Indices of the validation split in `full_train`.
    pub val_idx: Vec<usize>,
}

/// Loads the dataset and makes the seeded per-class validation split (and optional subset).
pub fn load_splits(c: &RunConfig) -> Result<Splits> {
    let (full, test) = crate::datasets::load_pair(
        &c.data.dataset,
        c.data.data_dir.as_deref(),
        c.data.test_fraction,
        c.data.split_seed,
    )?;
    let labels = full.labels_vec();
    let (mut train_idx, val_idx) = per_class_split(
        &labels,
        full.num_classes,
        c.data.val_fraction,
        c.data.split_seed,
    )?;
    seeded_subset(
        &mut train_idx,
        c.data.train_subset,
        c.data.split_seed,
        "train-subset",
    );
    let train = full.subset(&train_idx)?;
    let mut test_idx: Vec<usize> = (0..test.len()).collect();
    let test = if seeded_subset(
        &mut test_idx,
        c.data.test_subset,
        c.data.split_seed,
        "test-subset",
    ) {
        test.subset(&test_idx)?
    } else {
        test
    };
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

/// Keeps `n` of `idx`, drawn with the seed's `stream` and sorted, when `n` is neither 0 (all)
/// nor at least `idx.len()`; says whether it drew.
fn seeded_subset(idx: &mut Vec<usize>, n: usize, seed: u64, stream: &str) -> bool {
    if n == 0 || n >= idx.len() {
        return false;
    }
    let mut rng = SeedRng::stream(seed, stream, 0);
    rng.shuffle(idx);
    idx.truncate(n);
    idx.sort_unstable();
    true
}

/// Sets libtorch's intra-op threads (0 keeps libtorch's default).
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// The `split.json` of a run folder: the indices of the training and validation splits.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SplitFile {
    /// Dataset name.
    pub dataset: String,
    /// Share held out for validation.
    pub val_fraction: f64,
    /// Seed of the split.
    pub split_seed: u64,
    /// Training subset size (0: all).
    pub train_subset: usize,
    /// Training indices into the dataset's training file.
    pub train: Vec<usize>,
    /// Validation indices into the dataset's training file.
    pub val: Vec<usize>,
}

/// How a training run is driven (none of it changes the result).
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Progress display (library default: quiet).
    pub progress: ProgressMode,
    /// Continue from the last checkpoint in the output folder.
    pub resume: bool,
    /// Stop after this many epochs, keeping the checkpoint.
    pub stop_after: Option<usize>,
    /// Data-parallel training: every rank calls `train` with the same config; rank 0 alone
    /// writes the run folder (checkpoints, model, report).
    pub dist: Option<DistOptions>,
}

/// What a training run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The run folder.
    pub out: PathBuf,
    /// The final model file (absent when the run stopped early, see `stopped_after`).
    pub model_path: Option<PathBuf>,
    /// The report written to `report.json`.
    pub report: RunReport,
    /// Test-set evaluation of the final model.
    pub test: Option<EvalResult>,
    /// Epochs completed when the run stopped before the end (resume with `resume`).
    pub stopped_after: Option<usize>,
    /// Device name.
    pub device: String,
}

impl TrainOutcome {
    /// The headline figures as `(label, value)` pairs, for a summary table.
    pub fn summary(&self) -> Vec<(String, String)> {
        let m = &self.report.metrics;
        let pct = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.2}%"))
                .unwrap_or_else(|| "-".into())
        };
        let zo = match (
            m.get("zo_queries").and_then(|v| v.as_u64()),
            m.get("zo_coordinates_per_step").and_then(|v| v.as_u64()),
        ) {
            (Some(q), Some(c)) => format!("{q} ({c} coordinates per step)"),
            _ => "-".into(),
        };
        let t = |k: &str| {
            self.report
                .timings_s
                .get(k)
                .map(|v| format!("{v:.1} s"))
                .unwrap_or_default()
        };
        vec![
            ("test accuracy".into(), pct("test_accuracy")),
            (
                "test loss".into(),
                m.get("test_loss")
                    .and_then(|v| v.as_f64())
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default(),
            ),
            ("val accuracy".into(), pct("val_accuracy")),
            ("train accuracy".into(), pct("train_accuracy")),
            ("epochs".into(), self.report.history.len().to_string()),
            ("zo queries".into(), zo),
            ("train time".into(), t("train_loop")),
            ("total time".into(), t("total")),
            ("device".into(), self.device.clone()),
            (
                "report".into(),
                self.out.join("report.json").display().to_string(),
            ),
            (
                "model".into(),
                self.model_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
        ]
    }
}

/// Trains per `c` into `c.run.out`.
pub fn train(c: &RunConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    let t_total = Instant::now();
    set_threads(c.run.threads);
    let rank = opts.dist.as_ref().map(|d| d.group.rank()).unwrap_or(0);
    let world = opts
        .dist
        .as_ref()
        .map(|d| d.group.world_size())
        .unwrap_or(1);
    let main = rank == 0;
    let mode = if main {
        opts.progress
    } else {
        ProgressMode::Quiet
    };
    let device = c.run.device.resolve()?;
    let out = c.run.out.clone();
    let _lock = if main { Some(lock_out(&out)?) } else { None };
    let mut report = RunReport::new("train", serde_json::to_value(c)?, &device_name(device));
    report.seeds.insert("train".into(), c.train.seed);
    report.seeds.insert("init".into(), c.model.init_seed);
    report.seeds.insert("split".into(), c.data.split_seed);

    let t0 = Instant::now();
    let s = load_splits(c)?;
    if main {
        write_json_atomic(
            &out.join("split.json"),
            &SplitFile {
                dataset: c.data.dataset.clone(),
                val_fraction: c.data.val_fraction,
                split_seed: c.data.split_seed,
                train_subset: c.data.train_subset,
                train: s.train_idx.clone(),
                val: s.val_idx.clone(),
            },
        )?;
    }
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

    let spec = c.model_spec_for(&train_ds)?;
    rustworthy_core::seed::seed_torch(c.model.init_seed);
    let mut model = Model::new(spec, device)?;
    tracing::info!(
        "training {:?} ({} parameters) on {} ({} train / {} val / {} test) on {}",
        c.model.arch,
        model.num_params(),
        c.data.dataset,
        train_ds.len(),
        val_ds.as_ref().map(|v| v.len()).unwrap_or(0),
        s.test.len(),
        device_name(device)
    );
    let fit_opts = FitOptions {
        progress: mode,
        checkpoint_dir: Some(out.join("checkpoint")),
        resume: opts.resume,
        stop_after: opts.stop_after,
        dist: opts.dist.clone(),
    };
    if world > 1 {
        tracing::info!(
            "data-parallel: rank {rank} of {world} ({}), global batch {} ({} per rank), {} batch norm",
            opts.dist.as_ref().map(|d| d.group.backend()).unwrap_or("single"),
            c.train.batch_size,
            c.train.batch_size.div_ceil(world),
            if opts.dist.as_ref().is_some_and(|d| d.sync_batch_norm) {
                "synchronized"
            } else {
                "per-rank"
            }
        );
    }
    let t1 = Instant::now();
    let mut adv = match &c.adv {
        Some(a) => {
            tracing::info!(
                "adversarial training: {:?}, eps {}, {} step(s) of {}; monitor: PGD-{} on {} validation samples",
                a.method,
                a.eps,
                a.steps(),
                a.step_size(),
                a.monitor.steps,
                a.monitor.samples.min(val_ds.as_ref().map(|v| v.len()).unwrap_or(0))
            );
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
            tracing::info!(
                "zeroth-order training (DeepZero CGE): sparsity {}, mu {}, coordinates redrawn every {} epoch(s)",
                z.sparsity, z.mu, z.resample_every
            );
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
        &fit_opts,
        hook,
    )?;
    if !main {
        // Only rank 0 writes: the other ranks hold the same model.
        return Ok(TrainOutcome {
            out,
            model_path: None,
            stopped_after: (!fit_out.completed).then_some(fit_out.history.len()),
            report,
            test: None,
            device: device_name(device),
        });
    }
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
    report
        .timings_s
        .insert("train_loop".into(), fit_out.train_seconds);
    for n in &fit_out.resume_notes {
        tracing::warn!("{n}");
        report.notes.push(format!("warning: {n}"));
    }
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
        return Ok(TrainOutcome {
            out,
            model_path: None,
            stopped_after: Some(fit_out.history.len()),
            report,
            test: None,
            device: device_name(device),
        });
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
    let mut metrics = metrics;
    if let (Some(d), Some(obj)) = (&fit_out.dist, metrics.as_object_mut()) {
        obj.insert("distributed".into(), serde_json::to_value(d)?);
    }
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
            checksums: Default::default(),
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
    Ok(TrainOutcome {
        out,
        model_path: Some(model_path),
        report,
        test: Some(test),
        stopped_after: None,
        device: device_name(device),
    })
}

/// Claims the output folder `dir` for this run (see [`RunLock`]): a second run with the same
/// folder is refused while the first is alive; a dead run's lock is taken over, with a warning.
pub fn lock_out(dir: &std::path::Path) -> Result<RunLock> {
    let lock = RunLock::acquire(dir)?;
    if let Some(m) = &lock.took_over {
        tracing::warn!("{m}");
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn test_subset_is_seeded_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, n: i64| {
            // uint8 pixels; the first pixel of each image is its index, to tell samples apart.
            let x = Tensor::zeros([n, 1, 4, 4], (Kind::Uint8, Device::Cpu));
            x.narrow(2, 0, 1)
                .narrow(3, 0, 1)
                .copy_(&Tensor::arange(n, (Kind::Uint8, Device::Cpu)).view([n, 1, 1, 1]));
            let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
            let p = dir.path().join(name);
            Tensor::write_safetensors(&[("x", &x), ("y", &y)], &p).unwrap();
            p
        };
        let (tr, te) = (
            write("train.safetensors", 60),
            write("test.safetensors", 40),
        );
        let mut c = crate::config::preset("fmnist-lenet").unwrap();
        c.data.dataset = format!("file:{},{}", tr.display(), te.display());
        let ids = |c: &RunConfig| -> Vec<i64> {
            let t = load_splits(c).unwrap().test;
            let first = t.images.select(1, 0).select(1, 0).select(1, 0);
            Vec::<f32>::try_from(&first)
                .unwrap()
                .into_iter()
                .map(|v| (v * 255.0).round() as i64)
                .collect()
        };
        assert_eq!(ids(&c), (0..40).collect::<Vec<_>>());
        c.data.test_subset = 15;
        let a = ids(&c);
        assert_eq!(a.len(), 15);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert_ne!(a, (0..15).collect::<Vec<_>>(), "a draw, not the first 15");
        assert_eq!(ids(&c), a, "the same seed draws the same subset");
        c.data.split_seed = 1;
        assert_ne!(ids(&c), a);
        // A subset larger than the split keeps it whole; the default config omits the field.
        c.data.test_subset = 1000;
        assert_eq!(ids(&c).len(), 40);
        c.data.test_subset = 0;
        assert!(!serde_json::to_string(&c.data)
            .unwrap()
            .contains("test_subset"));
    }
}
