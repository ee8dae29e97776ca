//! Attack and robust-evaluation runs on a saved model: the model and its test data loaded
//! and checked, an attack built from plain settings, the run folder written.

use crate::model_source::{open_with_test_data, ModelSource, ModelWithData};
use crate::train_run::set_threads;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::{atomic_write, atomic_write_with, write_json_atomic};
use rustworthy_core::plot::Chart;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Exec;
use rustworthy_models::Model;
use rustworthy_robust::{
    attack_dataset, robust_eval, Apgd, ApgdTargeted, Attack, AttackLoss, AttackRun, CarliniWagner,
    Norm, Pgd, RobustReport, RunOptions, Square, SuiteConfig, TargetSpec, ThreatModel,
};
use rustworthy_zo::{ZoAttack, ZoAttackKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which model and which test samples a robustness run uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelData {
    /// The model: a run's model file with its sidecar, a TorchScript module, or a bare state
    /// dict with what to assume about it.
    pub model: ModelSource,
    /// Dataset (default: the one the model was trained on); its test split is used.
    pub dataset: Option<String>,
    /// Where the dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// The first `n` test samples (0 = all).
    pub n: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Seed of the attack's randomness.
    pub seed: u64,
    /// Device.
    pub device: DeviceSpec,
    /// libtorch threads (0 = default).
    pub threads: usize,
    /// Output folder (default: beside the model).
    pub out: Option<PathBuf>,
    /// Precision and layout of the model's forward passes (default float32).
    #[serde(default, skip_serializing_if = "Exec::is_default")]
    pub exec: Exec,
}

impl ModelData {
    /// The first 1000 test samples in batches of 500, seed 0, on the default device.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ModelData {
            model: ModelSource::new(model),
            dataset: None,
            data_dir: None,
            n: 1000,
            batch_size: 500,
            seed: 0,
            device: DeviceSpec::default(),
            threads: 0,
            out: None,
            exec: Exec::default(),
        }
    }
}

/// A model with the test samples to attack, checked against each other.
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// The samples, on the model's device.
    pub data: Dataset,
    /// Dataset name.
    pub dataset: String,
    /// Device.
    pub device: tch::Device,
    /// Output folder (created, and claimed for this run while this value lives).
    pub out: PathBuf,
    _lock: rustworthy_core::fsutil::RunLock,
}

/// Loads the model and the samples of `md`; `default_out` names the output folder beside the
/// model when `md.out` is absent.
pub fn load(md: &ModelData, default_out: &str) -> Result<Loaded> {
    set_threads(md.threads);
    let device = md.device.resolve()?;
    let ModelWithData {
        opened,
        test,
        dataset,
    } = open_with_test_data(
        &md.model,
        md.dataset.as_deref(),
        md.data_dir.as_deref(),
        device,
    )?;
    for n in &opened.notes {
        tracing::info!("{n}");
    }
    let mut model = opened.model;
    model.check_finite(&md.model.path.display().to_string())?;
    model.set_exec(md.exec)?;
    let n = if md.n == 0 {
        test.len()
    } else {
        md.n.min(test.len())
    };
    let data = test.subset(&(0..n).collect::<Vec<_>>())?.to_device(device);
    model.check_input(&data.images.narrow(0, 0, 1))?;
    let out = md.out.clone().unwrap_or_else(|| {
        md.model
            .path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(default_out)
    });
    let lock = crate::train_run::lock_out(&out)?;
    Ok(Loaded {
        _lock: lock,
        model,
        data,
        dataset,
        device,
        out,
    })
}

/// The attacks a run can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Fast gradient sign method (one step).
    Fgsm,
    /// Projected gradient descent.
    Pgd,
    /// Auto-PGD.
    Apgd,
    /// Targeted Auto-PGD with the DLR loss.
    ApgdT,
    /// Carlini-Wagner l2.
    Cw,
    /// Square attack (scores only).
    Square,
    /// ZOO (zeroth-order coordinate Adam; scores only).
    Zoo,
    /// ZO-signSGD (scores only).
    ZoSignsgd,
    /// NES (scores only).
    Nes,
}

impl AttackKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Pgd => "pgd",
            AttackKind::Apgd => "apgd",
            AttackKind::ApgdT => "apgd-t",
            AttackKind::Cw => "cw",
            AttackKind::Square => "square",
            AttackKind::Zoo => "zoo",
            AttackKind::ZoSignsgd => "zo-signsgd",
            AttackKind::Nes => "nes",
        }
    }
}

/// The settings of one attack, as plain values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackSpec {
    /// Which attack.
    pub attack: AttackKind,
    /// Threat-model norm.
    pub norm: Norm,
    /// Radius in pixel units (C&W: optional cap on the l2 norm of a success).
    pub eps: Option<f64>,
    /// Iterations (pgd 10, apgd 100, cw 100 per binary-search step).
    pub steps: Option<usize>,
    /// Step size (pgd: eps/4; zoo: Adam rate eps/2; zo-signsgd, nes: eps/20).
    pub step_size: Option<f64>,
    /// Restarts.
    pub restarts: usize,
    /// Loss of pgd and apgd.
    pub loss: AttackLoss,
    /// Start PGD at a random point of the ball.
    pub random_start: bool,
    /// Stop each sample at its first success.
    pub early_stop: bool,
    /// Query budget per sample (square, zoo, zo-signsgd, nes).
    pub queries: usize,
    /// Directions per estimate or coordinates per iteration (zeroth-order attacks).
    pub q: Option<usize>,
    /// Finite-difference radius (zeroth-order attacks).
    pub mu: Option<f64>,
    /// Momentum of the normalized estimates (zo-signsgd, nes).
    pub momentum: f64,
    /// Targets tried by apgd-t.
    pub targets: usize,
    /// C&W initial constant.
    pub cw_c: f64,
    /// C&W binary-search steps.
    pub cw_search: usize,
}

impl AttackSpec {
    /// The defaults of `rustworthy attack` for `attack` at l_inf radius `eps`.
    pub fn new(attack: AttackKind, eps: Option<f64>) -> Self {
        AttackSpec {
            attack,
            norm: Norm::Linf,
            eps,
            steps: None,
            step_size: None,
            restarts: 1,
            loss: AttackLoss::Ce,
            random_start: true,
            early_stop: true,
            queries: 5000,
            q: None,
            mu: None,
            momentum: 0.0,
            targets: 9,
            cw_c: 1e-2,
            cw_search: 5,
        }
    }

    /// Builds the attack (validated).
    pub fn build(&self) -> Result<Box<dyn Attack>> {
        let a = self;
        let norm = a.norm;
        let name = a.attack.name();
        let threat = |eps: Option<f64>| -> Result<ThreatModel> {
            let eps =
                eps.ok_or_else(|| Error::config("eps", format!("--eps is required for {name}")))?;
            ThreatModel::new(norm, eps)
        };
        Ok(match a.attack {
            AttackKind::Fgsm => Box::new(Pgd::fgsm(threat(a.eps)?)),
            AttackKind::Pgd => {
                let mut p = Pgd::new(threat(a.eps)?, a.steps.unwrap_or(10));
                p.step_size = a.step_size;
                p.restarts = a.restarts;
                p.loss = a.loss;
                p.random_start = a.random_start;
                p.early_stop = a.early_stop;
                p.validate()?;
                Box::new(p)
            }
            AttackKind::Apgd => {
                let mut p = Apgd::new(threat(a.eps)?, a.steps.unwrap_or(100), a.loss);
                p.restarts = a.restarts;
                p.early_stop = a.early_stop;
                p.validate()?;
                Box::new(p)
            }
            AttackKind::ApgdT => {
                let mut p = ApgdTargeted::new(threat(a.eps)?, a.steps.unwrap_or(100), a.targets);
                p.apgd.early_stop = a.early_stop;
                Box::new(p)
            }
            AttackKind::Square => {
                let s = Square::new(threat(a.eps)?, a.queries);
                s.validate()?;
                Box::new(s)
            }
            AttackKind::Zoo | AttackKind::ZoSignsgd | AttackKind::Nes => {
                let t = threat(a.eps)?;
                let mut z = match a.attack {
                    AttackKind::Zoo => ZoAttack::zoo(t, a.queries),
                    AttackKind::Nes => ZoAttack::nes(t, a.queries),
                    _ => ZoAttack::sign_sgd(t, a.queries),
                };
                if let Some(lr) = a.step_size {
                    z.lr = lr;
                }
                z.momentum = a.momentum;
                z.kind = match z.kind {
                    ZoAttackKind::Zoo { coords, h } => ZoAttackKind::Zoo {
                        coords: a.q.unwrap_or(coords),
                        h: a.mu.unwrap_or(h),
                    },
                    ZoAttackKind::SignSgd { q, mu } => ZoAttackKind::SignSgd {
                        q: a.q.unwrap_or(q),
                        mu: a.mu.unwrap_or(mu),
                    },
                    ZoAttackKind::Nes { q, sigma } => ZoAttackKind::Nes {
                        q: a.q.unwrap_or(q),
                        sigma: a.mu.unwrap_or(sigma),
                    },
                };
                z.validate()?;
                Box::new(z)
            }
            AttackKind::Cw => {
                if norm != Norm::L2 {
                    return Err(Error::config("norm", "C&W is an l2 attack; pass --norm l2"));
                }
                let c = CarliniWagner {
                    c_init: a.cw_c,
                    binary_search_steps: a.cw_search,
                    steps: a.steps.unwrap_or(100),
                    max_norm: a.eps,
                    ..CarliniWagner::default()
                };
                c.validate()?;
                Box::new(c)
            }
        })
    }
}

/// One attack run.
#[derive(Clone, Debug)]
pub struct AttackRequest {
    /// Model and samples.
    pub md: ModelData,
    /// The attack.
    pub spec: AttackSpec,
    /// Targeted attack.
    pub target: Option<TargetSpec>,
    /// Keep the adversarial images (written as `adversarial.safetensors`).
    pub save_images: bool,
    /// Also attack samples the model already misclassifies.
    pub attack_all: bool,
    /// Run once on the first batch before the timed run (result discarded).
    pub warmup: bool,
}

/// What an attack run produced.
pub struct AttackOutcome {
    /// Per-sample and summary results.
    pub run: AttackRun,
    /// The report written to `report.json`.
    pub report: RunReport,
    /// The output folder.
    pub out: PathBuf,
}

/// Attacks the samples of `req.md` and writes `report.json`, `per_sample.json` and
/// optionally `adversarial.safetensors`.
pub fn attack(req: &AttackRequest) -> Result<AttackOutcome> {
    let t_total = Instant::now();
    let attack = req.spec.build()?;
    let l = load(&req.md, &format!("attack-{}", attack.name()))?;
    let opts = RunOptions {
        batch_size: req.md.batch_size,
        seed: req.md.seed,
        target: req.target,
        keep_images: req.save_images,
        attack_all: req.attack_all,
        progress: ProgressMode::Quiet,
    };
    tracing::info!(
        "{} on {} {} test samples of {} on {}",
        attack.name(),
        l.data.len(),
        l.model.spec.arch,
        l.dataset,
        device_name(l.device)
    );
    if req.warmup {
        let k = req.md.batch_size.min(l.data.len());
        let first = l.data.subset(&(0..k).collect::<Vec<_>>())?;
        attack_dataset(attack.as_ref(), &l.model, &first, &opts)?;
        if let tch::Device::Cuda(i) = l.device {
            tch::Cuda::synchronize(i as i64);
        }
    }
    let r = attack_dataset(attack.as_ref(), &l.model, &l.data, &opts)?;
    let s = &req.spec;
    let config = serde_json::json!({
        "model": req.md.model, "dataset": l.dataset, "n": l.data.len(), "attack": s.attack.name(),
        "name": attack.name(), "threat": attack.threat(), "target": req.target, "steps": s.steps,
        "step_size": s.step_size, "restarts": s.restarts, "loss": s.loss,
        "random_start": s.random_start, "early_stop": s.early_stop, "queries": s.queries,
        "attack_all": req.attack_all, "warmup": req.warmup,
        "batch_size": req.md.batch_size, "spec": s,
    });
    let mut report = RunReport::new("attack", config, &device_name(l.device));
    report.seeds.insert("attack".into(), req.md.seed);
    report.timings_s.insert("attack".into(), r.summary.seconds);
    report.metrics = serde_json::to_value(&r.summary)?;
    write_json_atomic(&l.out.join("per_sample.json"), &r.per_sample)?;
    report.artifacts.push("per_sample.json".into());
    if let Some(x) = &r.x_adv {
        let path = l.out.join("adversarial.safetensors");
        atomic_write_with(&path, |tmp| {
            tch::Tensor::write_safetensors(&[("x_adv", x)], tmp)?;
            Ok(())
        })?;
        report.artifacts.push("adversarial.safetensors".into());
    }
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.write(&l.out.join("report.json"))?;
    Ok(AttackOutcome {
        run: r,
        report,
        out: l.out,
    })
}

/// One robust-evaluation run.
#[derive(Clone, Debug)]
pub struct RobustEvalRequest {
    /// Model and samples.
    pub md: ModelData,
    /// The suite (its batch size and seed are taken from `md`).
    pub suite: SuiteConfig,
}

/// What a robust evaluation produced.
pub struct RobustEvalOutcome {
    /// The suite's results.
    pub result: RobustReport,
    /// The report written to `report.json`.
    pub report: RunReport,
    /// The output folder.
    pub out: PathBuf,
}

/// Runs the robust-evaluation suite and writes `report.json`, `per_sample.csv` and the
/// accuracy-vs-eps plot.
pub fn robust_eval_run(req: &RobustEvalRequest) -> Result<RobustEvalOutcome> {
    let t_total = Instant::now();
    let mut cfg = req.suite.clone();
    cfg.batch_size = req.md.batch_size;
    cfg.seed = req.md.seed;
    cfg.validate()?;
    let threat = cfg.threat;
    let l = load(
        &req.md,
        &format!("robust-eval-{}-{}", threat.norm, threat.eps),
    )?;
    tracing::info!(
        "robust evaluation ({} suite, {}) of {} on {} {} test samples on {}",
        cfg.name,
        threat,
        l.model.spec.arch,
        l.data.len(),
        l.dataset,
        device_name(l.device)
    );
    let r = robust_eval(&l.model, &l.data, &cfg)?;
    let mut report = RunReport::new(
        "robust-eval",
        serde_json::json!({"model": req.md.model, "dataset": l.dataset, "n": l.data.len(), "suite": cfg}),
        &device_name(l.device),
    );
    report.seeds.insert("attack".into(), req.md.seed);
    report.timings_s.insert("suite".into(), r.seconds);
    let mut metrics = serde_json::to_value(&r)?;
    if let Some(o) = metrics.as_object_mut() {
        o.remove("samples");
    }
    report.metrics = metrics;
    report.notes.extend(r.flags.iter().cloned());
    let mut csv = String::from("index,label,clean_correct,robust,fooled_by\n");
    for s in &r.samples {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            s.index,
            s.label,
            s.clean_correct,
            s.clean_correct && s.fooled_by.is_empty(),
            s.fooled_by.join(";")
        ));
    }
    atomic_write(&l.out.join("per_sample.csv"), csv.as_bytes())?;
    report.artifacts.push("per_sample.csv".into());
    let chart = Chart {
        title: format!(
            "{} robust accuracy vs eps ({})",
            l.model.spec.arch, threat.norm
        ),
        x_label: "eps".into(),
        y_label: "PGD accuracy (%)".into(),
        lines: vec![(
            format!("PGD-{}", cfg.curve_steps),
            std::iter::once((0.0, r.clean_accuracy))
                .chain(r.curve.iter().copied())
                .collect(),
        )],
        ..Chart::default()
    };
    if !r.curve.is_empty() {
        chart.write_png(&l.out.join("accuracy_vs_eps.png"), 720, 480)?;
        report.artifacts.push("accuracy_vs_eps.png".into());
    }
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.write(&l.out.join("report.json"))?;
    Ok(RobustEvalOutcome {
        result: r,
        report,
        out: l.out,
    })
}
