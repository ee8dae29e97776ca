//! Pruning runs: a dense model trained from a preset, one pruning method to a sparsity with
//! its model, masks and report, and the benchmark of every method at several sparsities.

use crate::config::{preset, RunConfig};
use crate::model_source::{has_sidecar, open_model, ModelSource};
use crate::train_run::{load_splits, set_threads};
use crate::trained::TrainedRun;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::plot::Chart;
use rustworthy_core::report::RunReport;
use rustworthy_core::DeviceSpec;
use rustworthy_core::{Error, Result};
use rustworthy_models::Model;
use rustworthy_prune::methods::layer_map;
use rustworthy_prune::{prune, train_dense, Dense, PruneConfig, PruneData, PruneMethod, Scope};
use rustworthy_train::checkpoint::{save_model, CheckpointMeta};
use rustworthy_train::mask::save_masks;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings shared by `prune` and `bench prune`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PruneCommon {
    /// Training preset of the dense model and of every retraining.
    pub preset: String,
    /// Epochs of the recipe (dense training, IMP rounds, pruning at initialization).
    pub epochs: Option<usize>,
    /// Train on this many samples only.
    pub train_subset: Option<usize>,
    /// Where the dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// Global or per-layer sparsity.
    pub scope: Scope,
    /// Structured pruning (omp, bip): remove whole output channels.
    pub structured: bool,
    /// IMP: rewind to the weights after this many dense epochs (0 = initialization).
    pub rewind_epoch: usize,
    /// IMP: share of the remaining weights pruned per round.
    pub imp_rate: Option<f64>,
    /// HYDRA and BiP: epochs of the score loop.
    pub score_epochs: Option<usize>,
    /// HYDRA and BiP: learning rate of the scores.
    pub score_lr: Option<f64>,
    /// BiP: gamma.
    pub bip_gamma: Option<f64>,
    /// BiP: learning rate of the weights.
    pub bip_weight_lr: Option<f64>,
    /// OMP and HYDRA: fine-tuning epochs.
    pub finetune_epochs: Option<usize>,
    /// Seed of the pruning method.
    pub seed: u64,
    /// Device (default: the preset's).
    pub device: Option<DeviceSpec>,
    /// libtorch threads (0 = default).
    pub threads: usize,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Prune this trained model instead of training a dense one from the preset.
    #[serde(default)]
    pub model: Option<ModelSource>,
    /// With `model` (not a run of ours): the data it was trained on (default: the preset's).
    #[serde(default)]
    pub dataset: Option<String>,
}

impl Default for PruneCommon {
    fn default() -> Self {
        PruneCommon {
            preset: "fmnist-lenet".into(),
            epochs: None,
            train_subset: None,
            data_dir: None,
            scope: Scope::Global,
            structured: false,
            rewind_epoch: 0,
            imp_rate: None,
            score_epochs: None,
            score_lr: None,
            bip_gamma: None,
            bip_weight_lr: None,
            finetune_epochs: None,
            seed: 0,
            device: None,
            threads: 0,
            out: None,
            model: None,
            dataset: None,
        }
    }
}

/// The pruning config of `method` at `sparsity` with the shared settings.
pub fn config_for(c: &PruneCommon, method: PruneMethod, sparsity: f64) -> Result<PruneConfig> {
    let mut p = PruneConfig::new(method, sparsity);
    p.scope = c.scope;
    p.rewind_epoch = c.rewind_epoch;
    p.structured = c.structured;
    p.seed = c.seed;
    if let Some(v) = c.imp_rate {
        p.imp_rate = v;
    }
    if let Some(v) = c.score_epochs {
        p.score_epochs = v;
    }
    if let Some(v) = c.score_lr {
        p.score_lr = v;
    }
    if let Some(v) = c.bip_gamma {
        p.bip_gamma = v;
    }
    if let Some(v) = c.bip_weight_lr {
        p.bip_weight_lr = v;
    }
    if let Some(v) = c.finetune_epochs {
        p.finetune_epochs = v;
    }
    Ok(p)
}

/// The dense model and data every pruning run starts from.
pub struct Prepared {
    /// The training config (preset plus overrides).
    pub rc: RunConfig,
    /// The dense model (with its rewind point).
    pub dense: Dense,
    /// Training data.
    pub train: rustworthy_data::Dataset,
    /// Test data.
    pub test: rustworthy_data::Dataset,
    /// Device.
    pub device: tch::Device,
    /// Test accuracy of the dense model.
    pub dense_test_accuracy: f64,
}

/// Trains the dense model of `c`, or takes the given one (`c.model`).
pub fn prepare(c: &PruneCommon) -> Result<Prepared> {
    set_threads(c.threads);
    if let Some(src) = &c.model {
        return prepare_given(c, src);
    }
    let mut rc = preset(&c.preset)?;
    if let Some(e) = c.epochs {
        rc.train.epochs = e;
    }
    if let Some(s) = c.train_subset {
        rc.data.train_subset = s;
    }
    if let Some(d) = &c.data_dir {
        rc.data.data_dir = Some(d.clone());
    }
    if let Some(d) = c.device {
        rc.run.device = d;
    }
    rc.validate()?;
    if c.rewind_epoch >= rc.train.epochs {
        return Err(Error::config(
            "rewind_epoch",
            format!(
                "{} must be below the recipe's {} epochs",
                c.rewind_epoch, rc.train.epochs
            ),
        ));
    }
    let device = rc.run.device.resolve()?;
    let s = load_splits(&rc)?;
    let train = s.train.to_device(device);
    let test = s.test.to_device(device);
    let spec = rc.model_spec_for(&train)?;
    rustworthy_core::seed::seed_torch(rc.model.init_seed);
    let init = Model::new(spec, device)?;
    {
        tracing::info!(
            "training the dense {:?} ({} epochs, {} samples) on {}",
            rc.model.arch,
            rc.train.epochs,
            train.len(),
            device_name(device)
        );
    }
    let dense = train_dense(
        &init,
        &PruneData {
            train: &train,
            test: &test,
        },
        &rc.train,
        c.rewind_epoch,
    )?;
    let dense_test_accuracy =
        rustworthy_train::evaluate(&dense.trained, &test, rc.train.eval_batch_size)?.accuracy;
    {
        tracing::info!(
            "dense: test accuracy {dense_test_accuracy:.2}% in {:.1}s",
            dense.seconds
        );
    }
    Ok(Prepared {
        rc,
        dense,
        train,
        test,
        device,
        dense_test_accuracy,
    })
}

/// The dense model is a trained model the user gives: a run of ours (its data, split and recipe
/// come from its sidecar), or a TorchScript module or state dict trained on the preset's data
/// (`c.dataset` overrides it). Methods that start from an initialization (IMP, SNIP, GraSP,
/// SynFlow, random) use a fresh initialization of the same network.
fn prepare_given(c: &PruneCommon, src: &ModelSource) -> Result<Prepared> {
    if c.rewind_epoch != 0 {
        return Err(Error::config(
            "rewind_epoch",
            "a given model has no training trajectory to rewind to; leave it at 0",
        ));
    }
    let device = c.device.unwrap_or_default().resolve()?;
    let plain = src.arch.is_none() && src.mean.is_none() && src.map.is_empty();
    let file = crate::model_source::model_file(&src.path);
    let ours = has_sidecar(&file) && !crate::model_source::is_torchscript(&file)?;
    let (mut rc, splits, model) = if ours && plain {
        let run = TrainedRun::open(&src.path, c.data_dir.as_deref(), device)?;
        (run.config, run.splits, run.model)
    } else {
        let mut rc = preset(&c.preset)?;
        if let Some(d) = &c.dataset {
            rc.data.dataset = d.clone();
        }
        if let Some(d) = &c.data_dir {
            rc.data.data_dir = Some(d.clone());
        }
        let splits = load_splits(&rc)?;
        let (ch, h, w) = splits.train.image_shape();
        let opened = open_model(src, (ch as i64, (h as i64, w as i64)), device)?;
        opened.model.check_finite(&src.path.display().to_string())?;
        rc.model.arch = opened.model.spec.arch;
        (rc, splits, opened.model)
    };
    if let Some(e) = c.epochs {
        rc.train.epochs = e;
    }
    rc.run.device = c.device.unwrap_or(rc.run.device);
    let train = splits.train.to_device(device);
    let test = splits.test.to_device(device);
    rustworthy_core::seed::seed_torch(rc.model.init_seed);
    let init = model.fresh_like()?;
    let dense = Dense {
        rewind: init.try_clone()?,
        init,
        trained: model,
        rewind_epoch: 0,
        seconds: 0.0,
    };
    let dense_test_accuracy =
        rustworthy_train::evaluate(&dense.trained, &test, rc.train.eval_batch_size)?.accuracy;
    tracing::info!("given model: test accuracy {dense_test_accuracy:.2}%");
    Ok(Prepared {
        rc,
        dense,
        train,
        test,
        device,
        dense_test_accuracy,
    })
}

/// One pruning result, for tables and reports.
#[derive(Clone, Debug, Serialize)]
pub struct PruneRow {
    /// Method name.
    pub method: String,
    /// Sparsity asked for.
    pub requested_sparsity: f64,
    /// Sparsity of the mask.
    pub sparsity: f64,
    /// Share of the prunable weights that are zero.
    pub zero_fraction: f64,
    /// Test accuracy of the pruned model.
    pub test_accuracy: f64,
    /// Seconds of the method (without the dense training).
    pub seconds: f64,
    /// IMP rounds.
    pub rounds: Vec<rustworthy_prune::RoundRecord>,
    /// Per-layer sparsity.
    pub layers: BTreeMap<String, f64>,
    /// The config.
    pub config: PruneConfig,
}

/// Runs one pruning config from the prepared dense model; with `out`, writes the model, its
/// sidecar and the masks there.
pub fn run_one(p: &Prepared, cfg: &PruneConfig, out: Option<&Path>) -> Result<PruneRow> {
    let o = prune(
        cfg,
        &p.dense,
        &PruneData {
            train: &p.train,
            test: &p.test,
        },
        &p.rc.train,
    )?;
    if (o.zero_fraction - o.sparsity).abs() > 1e-9 && o.zero_fraction < o.sparsity {
        return Err(Error::Numerical(format!(
            "{}: {:.4} of the pruned weights are zero but the mask removes {:.4}",
            cfg.method.name(),
            o.zero_fraction,
            o.sparsity
        )));
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_masks(&dir.join("masks.safetensors"), &o.masks)?;
        if o.model.is_torchscript() {
            o.model.save_torchscript(dir.join("model.pt"))?;
        }
        let mut seeds = BTreeMap::new();
        seeds.insert("init".to_string(), p.rc.model.init_seed);
        seeds.insert("train".to_string(), p.rc.train.seed);
        seeds.insert("prune".to_string(), cfg.seed);
        save_model(
            &dir.join("model.safetensors"),
            &o.model,
            CheckpointMeta {
                format: rustworthy_train::checkpoint::FORMAT,
                model_spec: o.model.spec.clone(),
                config: serde_json::to_value(&p.rc)?,
                epoch: p.rc.train.epochs,
                optimizer_steps: 0,
                seeds,
                metrics: serde_json::json!({"test_accuracy": o.test_accuracy, "sparsity": o.sparsity, "prune": cfg}),
                history: Vec::new(),
                model_file: String::new(),
                optim_file: None,
                checksums: Default::default(),
            },
        )?;
    }
    Ok(PruneRow {
        method: cfg.method.name().to_string(),
        requested_sparsity: cfg.sparsity,
        sparsity: o.sparsity,
        zero_fraction: o.zero_fraction,
        test_accuracy: o.test_accuracy,
        seconds: o.seconds,
        rounds: o.rounds,
        layers: layer_map(&o.layers),
        config: cfg.clone(),
    })
}

/// What a pruning run produced.
pub struct PruneOutcome {
    /// The result.
    pub row: PruneRow,
    /// Test accuracy of the dense model.
    pub dense_test_accuracy: f64,
    /// Seconds of the dense training.
    pub dense_seconds: f64,
    /// Output folder.
    pub out: PathBuf,
    /// The report written to `report.json`.
    pub report: RunReport,
}

/// Trains the dense model, prunes it with `method` to `sparsity`, and writes the run folder
/// (`model.safetensors` + sidecar, `masks.safetensors`, `report.json`).
pub fn prune_run(method: PruneMethod, sparsity: f64, common: &PruneCommon) -> Result<PruneOutcome> {
    let t_total = Instant::now();
    let cfg = config_for(common, method, sparsity)?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/prune/{}-{}", method.name(), sparsity)));
    // Validate before the dense training.
    let mut probe = preset(&common.preset)?;
    if let Some(e) = common.epochs {
        probe.train.epochs = e;
    }
    cfg.validate(&probe.train)?;
    let _lock = crate::train_run::lock_out(&out)?;
    let p = prepare(common)?;
    let row = run_one(&p, &cfg, Some(&out))?;
    let mut report = RunReport::new(
        "prune",
        serde_json::json!({"prune": &cfg, "training": &p.rc}),
        &device_name(p.device),
    );
    report.seeds.insert("init".into(), p.rc.model.init_seed);
    report.seeds.insert("train".into(), p.rc.train.seed);
    report.seeds.insert("prune".into(), cfg.seed);
    report
        .timings_s
        .insert("dense_train".into(), p.dense.seconds);
    report.timings_s.insert("prune".into(), row.seconds);
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.metrics =
        serde_json::json!({"dense_test_accuracy": p.dense_test_accuracy, "result": &row});
    report.artifacts = vec![
        "model.safetensors".into(),
        "model.json".into(),
        "masks.safetensors".into(),
    ];
    report.write(&out.join("report.json"))?;
    Ok(PruneOutcome {
        row,
        dense_test_accuracy: p.dense_test_accuracy,
        dense_seconds: p.dense.seconds,
        out,
        report,
    })
}

/// What the pruning benchmark produced.
pub struct BenchPruneOutcome {
    /// The Markdown table with its header line (also in `results.md`).
    pub markdown: String,
    /// Every run.
    pub rows: Vec<PruneRow>,
    /// Output folder.
    pub out: PathBuf,
}

/// Every method in `methods` (empty: all) at every sparsity from one dense model: accuracy,
/// time and per-layer sparsity, with an accuracy-vs-sparsity plot.
pub fn bench_prune(
    methods: &[PruneMethod],
    sparsities: &[f64],
    common: &PruneCommon,
) -> Result<BenchPruneOutcome> {
    let t_total = Instant::now();
    let methods: Vec<PruneMethod> = if methods.is_empty() {
        PruneMethod::ALL.to_vec()
    } else {
        methods.to_vec()
    };
    let mut sps = sparsities.to_vec();
    for s in &sps {
        rustworthy_prune::check_sparsity(*s)?;
    }
    sps.sort_by(|x, y| x.total_cmp(y));
    sps.dedup();
    if sps.is_empty() {
        return Err(Error::config("sparsities", "no sparsity given"));
    }
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/bench-prune"));
    let _lock = crate::train_run::lock_out(&out)?;
    let p = prepare(common)?;
    let mut rows: Vec<PruneRow> = Vec::new();
    for m in &methods {
        let targets: Vec<f64> = if *m == PruneMethod::Imp {
            // One IMP trajectory to the largest sparsity gives every round.
            vec![*sps.last().expect("non-empty")]
        } else {
            sps.clone()
        };
        for s in targets {
            let cfg = config_for(common, *m, s)?;
            let t = Instant::now();
            let r = run_one(&p, &cfg, None)?;
            tracing::info!(
                "{} at {:.2}: test {:.2}% ({:.1}s)",
                m.name(),
                r.sparsity,
                r.test_accuracy,
                t.elapsed().as_secs_f64()
            );
            write_json_atomic(&out.join("results.json"), &rows)?;
            rows.push(r);
        }
    }
    // Table: one row per method and requested sparsity (IMP: the round nearest to it).
    let mut table = Vec::new();
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for m in &methods {
        let mine: Vec<&PruneRow> = rows.iter().filter(|r| r.method == m.name()).collect();
        let mut pts = Vec::new();
        for s in &sps {
            let (sp, acc, secs) = if *m == PruneMethod::Imp {
                let r = mine[0];
                let best = r
                    .rounds
                    .iter()
                    .min_by(|x, y| (x.sparsity - s).abs().total_cmp(&(y.sparsity - s).abs()))
                    .expect("IMP ran at least one round");
                (best.sparsity, best.test_accuracy, best.seconds)
            } else {
                match mine
                    .iter()
                    .find(|r| (r.requested_sparsity - s).abs() < 1e-12)
                {
                    Some(r) => (r.sparsity, r.test_accuracy, r.seconds),
                    None => continue,
                }
            };
            pts.push((sp, acc));
            table.push(vec![
                m.name().to_string(),
                format!("{s:.2}"),
                format!("{sp:.4}"),
                format!("{acc:.2}"),
                format!("{:+.2}", acc - p.dense_test_accuracy),
                format!("{secs:.1}"),
            ]);
        }
        if *m == PruneMethod::Imp {
            pts = mine[0]
                .rounds
                .iter()
                .map(|r| (r.sparsity, r.test_accuracy))
                .collect();
        }
        lines.push((m.name().to_string(), pts));
    }
    let head = [
        "method",
        "target",
        "sparsity",
        "test acc %",
        "vs dense",
        "method s",
    ];
    let md = format!(
        "Dense {:?}: test accuracy {:.2}% ({} epochs, {:.1} s). Method times exclude the dense training; IMP rows are the round nearest to the target (its time is cumulative to that round).\n\n{}",
        p.rc.model.arch,
        p.dense_test_accuracy,
        p.rc.train.epochs,
        p.dense.seconds,
        crate::table::markdown(&head, &table)
    );
    rustworthy_core::fsutil::atomic_write(&out.join("results.md"), md.as_bytes())?;
    write_json_atomic(&out.join("results.json"), &rows)?;
    let chart = Chart {
        title: format!("test accuracy vs sparsity ({:?})", p.rc.model.arch),
        x_label: "sparsity".into(),
        y_label: "test accuracy (%)".into(),
        lines,
        ..Chart::default()
    };
    chart.write_png(&out.join("accuracy_vs_sparsity.png"), 800, 500)?;
    let mut report = RunReport::new(
        "bench-prune",
        serde_json::json!({"methods": methods, "sparsities": sps, "training": &p.rc,
            "prune_defaults": config_for(common, PruneMethod::Bip, sps[0])?}),
        &device_name(p.device),
    );
    report.seeds.insert("init".into(), p.rc.model.init_seed);
    report.seeds.insert("train".into(), p.rc.train.seed);
    report.seeds.insert("prune".into(), common.seed);
    report
        .timings_s
        .insert("dense_train".into(), p.dense.seconds);
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.metrics =
        serde_json::json!({"dense_test_accuracy": p.dense_test_accuracy, "results": &rows});
    report.artifacts = vec![
        "results.md".into(),
        "results.json".into(),
        "accuracy_vs_sparsity.png".into(),
    ];
    report.write(&out.join("report.json"))?;
    Ok(BenchPruneOutcome {
        markdown: md,
        rows,
        out,
    })
}
