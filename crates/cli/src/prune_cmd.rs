//! `rustworthy prune` and `rustworthy bench prune`.

use crate::commands::{load_splits, progress_mode, set_threads};
use crate::config::{preset, RunConfig};
use crate::table::render;
use clap::Args;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::plot::Chart;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::RunReport;
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

/// Options shared by `prune` and `bench prune`.
#[derive(Args, Debug)]
pub struct PruneCommon {
    /// Training preset of the dense model and of every retraining.
    #[arg(long, default_value = "fmnist-lenet")]
    pub preset: String,
    /// Epochs of the recipe (dense training, IMP rounds, pruning at initialization).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub train_subset: Option<usize>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// global | layerwise
    #[arg(long, default_value = "global")]
    pub scope: String,
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
    #[arg(long)]
    pub score_lr: Option<f64>,
    #[arg(long)]
    pub bip_gamma: Option<f64>,
    #[arg(long)]
    pub bip_weight_lr: Option<f64>,
    /// OMP and HYDRA: fine-tuning epochs.
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "bar")]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// omp | imp | snip | grasp | synflow | random | hydra | bip
    #[arg(long)]
    pub method: String,
    /// Fraction of the prunable weights removed, in [0, 1).
    #[arg(long)]
    pub sparsity: f64,
    #[command(flatten)]
    pub common: PruneCommon,
}

#[derive(Args, Debug)]
pub struct BenchPruneArgs {
    /// Methods to compare (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Sparsities of the comparison.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.8,0.9,0.95")]
    pub sparsities: Vec<f64>,
    #[command(flatten)]
    pub common: PruneCommon,
}

fn config_for(c: &PruneCommon, method: PruneMethod, sparsity: f64) -> Result<PruneConfig> {
    let mut p = PruneConfig::new(method, sparsity);
    p.scope = c.scope.parse::<Scope>()?;
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

struct Prepared {
    rc: RunConfig,
    dense: Dense,
    train: rustworthy_data::Dataset,
    test: rustworthy_data::Dataset,
    device: tch::Device,
    dense_test_accuracy: f64,
}

fn prepare(c: &PruneCommon, mode: ProgressMode) -> Result<Prepared> {
    set_threads(c.threads);
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
    if let Some(d) = &c.device {
        rc.run.device = d.parse()?;
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
    let (ch, h, w) = train.image_shape();
    let spec = rc.model_spec(ch as i64, (h as i64, w as i64), train.num_classes as i64)?;
    rustworthy_core::seed::seed_torch(rc.model.init_seed);
    let init = Model::new(spec, device)?;
    if mode == ProgressMode::Bar {
        eprintln!(
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
    if mode == ProgressMode::Bar {
        eprintln!(
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

/// One pruning result, for tables and reports.
#[derive(Clone, Debug, Serialize)]
pub struct PruneRow {
    pub method: String,
    pub requested_sparsity: f64,
    pub sparsity: f64,
    pub zero_fraction: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
    pub rounds: Vec<rustworthy_prune::RoundRecord>,
    pub layers: BTreeMap<String, f64>,
    pub config: PruneConfig,
}

fn run_one(p: &Prepared, cfg: &PruneConfig, out: Option<&Path>) -> Result<PruneRow> {
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

pub fn prune_cmd(a: PruneArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.common.progress)?;
    let method: PruneMethod = a.method.parse()?;
    let cfg = config_for(&a.common, method, a.sparsity)?;
    let out =
        a.common.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!("runs/prune/{}-{}", method.name(), a.sparsity))
        });
    // Validate before the dense training.
    let mut probe = preset(&a.common.preset)?;
    if let Some(e) = a.common.epochs {
        probe.train.epochs = e;
    }
    cfg.validate(&probe.train)?;
    let p = prepare(&a.common, mode)?;
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
    let mut rows = vec![
        vec!["method".into(), row.method.clone()],
        vec!["sparsity".into(), format!("{:.4}", row.sparsity)],
        vec!["test accuracy".into(), format!("{:.2}%", row.test_accuracy)],
        vec![
            "dense test accuracy".into(),
            format!("{:.2}%", p.dense_test_accuracy),
        ],
        vec!["method time".into(), format!("{:.1} s", row.seconds)],
        vec!["dense training".into(), format!("{:.1} s", p.dense.seconds)],
    ];
    for (k, v) in &row.layers {
        rows.push(vec![format!("  {k}"), format!("{:.4}", v)]);
    }
    rows.push(vec![
        "report".into(),
        out.join("report.json").display().to_string(),
    ]);
    println!("{}", render(&["metric", "value"], &rows));
    Ok(())
}

pub fn bench_prune(a: BenchPruneArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.common.progress)?;
    let methods: Vec<PruneMethod> = match &a.methods {
        Some(m) => m.iter().map(|s| s.parse()).collect::<Result<_>>()?,
        None => PruneMethod::ALL.to_vec(),
    };
    let mut sps = a.sparsities.clone();
    for s in &sps {
        rustworthy_prune::check_sparsity(*s)?;
    }
    sps.sort_by(|x, y| x.total_cmp(y));
    sps.dedup();
    if sps.is_empty() {
        return Err(Error::config("sparsities", "no sparsity given"));
    }
    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/bench-prune"));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let p = prepare(&a.common, mode)?;
    let mut rows: Vec<PruneRow> = Vec::new();
    for m in &methods {
        let targets: Vec<f64> = if *m == PruneMethod::Imp {
            // One IMP trajectory to the largest sparsity gives every round.
            vec![*sps.last().expect("non-empty")]
        } else {
            sps.clone()
        };
        for s in targets {
            let cfg = config_for(&a.common, *m, s)?;
            let t = Instant::now();
            let r = run_one(&p, &cfg, None)?;
            eprintln!(
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
            "prune_defaults": config_for(&a.common, PruneMethod::Bip, sps[0])?}),
        &device_name(p.device),
    );
    report.seeds.insert("init".into(), p.rc.model.init_seed);
    report.seeds.insert("train".into(), p.rc.train.seed);
    report.seeds.insert("prune".into(), a.common.seed);
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
    println!("{md}");
    Ok(())
}
