//! `rustworthy attack` and `rustworthy robust-eval`.

use crate::commands::{data_of, progress_mode, set_threads};
use crate::table::render;
use clap::Args;
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::{atomic_write, write_json_atomic};
use rustworthy_core::plot::Chart;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_data::registry::load_dataset;
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_robust::{
    attack_dataset, robust_eval, Apgd, ApgdTargeted, Attack, AttackLoss, CarliniWagner, Norm, Pgd,
    RunOptions, Square, SuiteConfig, TargetSpec, ThreatModel,
};
use rustworthy_train::checkpoint::load_model;
use rustworthy_zo::{ZoAttack, ZoAttackKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Model and data options shared by the robustness commands.
#[derive(Args, Debug)]
pub struct ModelData {
    /// A model file (`model.safetensors` with its `model.json` sidecar).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset (default: the one the model was trained on); its test split is attacked.
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Attack the first N test samples (0 = all).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch threads (0 = default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Output folder (default: beside the model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "bar")]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    pub md: ModelData,
    /// fgsm | pgd | apgd | apgd-t | cw | square | zoo | zo-signsgd | nes
    #[arg(long, default_value = "pgd")]
    pub attack: String,
    /// linf | l2
    #[arg(long, default_value = "linf")]
    pub norm: String,
    /// Radius in pixel units (C&W: optional cap on the l2 norm of a success).
    #[arg(long)]
    pub eps: Option<f64>,
    /// Iterations (pgd 10, apgd 100, cw 100 per binary-search step).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Step size (pgd: default eps/4; zoo: the Adam rate, default eps/2; zo-signsgd and nes:
    /// the signed step, default eps/20).
    #[arg(long)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Attack loss for pgd and apgd: ce | dlr | margin.
    #[arg(long, default_value = "ce")]
    pub loss: String,
    /// Targeted attack: random | least-likely | CLASS.
    #[arg(long)]
    pub target: Option<String>,
    /// Start PGD from the clean image instead of a random point.
    #[arg(long)]
    pub no_random_start: bool,
    /// Run every sample for all steps (no early stop on success), as torchattacks does.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Query budget per sample (square, zoo, zo-signsgd, nes).
    #[arg(long, default_value_t = 5000)]
    pub queries: usize,
    /// Directions per estimate (zo-signsgd 20, nes 50) or coordinates per iteration (zoo 128).
    #[arg(long)]
    pub q: Option<usize>,
    /// Finite-difference radius (zoo h 1e-3, zo-signsgd mu 5e-3, nes sigma 1e-3).
    #[arg(long)]
    pub mu: Option<f64>,
    /// zo-signsgd and nes: momentum of the normalized estimates (0: the published plain step).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// Targets tried by apgd-t.
    #[arg(long, default_value_t = 9)]
    pub targets: usize,
    /// C&W: initial constant and binary-search steps.
    #[arg(long, default_value_t = 1e-2)]
    pub cw_c: f64,
    #[arg(long, default_value_t = 5)]
    pub cw_search: usize,
    /// Save the adversarial images (safetensors, `x_adv` [N, C, H, W]).
    #[arg(long)]
    pub save_images: bool,
    /// Also run the attack on samples the model already misclassifies (same work as libraries
    /// that attack every input; the statistics still count only clean-correct samples).
    #[arg(long)]
    pub attack_all: bool,
    /// Run the attack once on the first batch before the timed run (library initialization,
    /// kernel loading and autotuning stay out of the timing; the result is discarded).
    #[arg(long)]
    pub warmup: bool,
}

#[derive(Args, Debug)]
pub struct RobustEvalArgs {
    #[command(flatten)]
    pub md: ModelData,
    #[arg(long)]
    pub eps: f64,
    #[arg(long, default_value = "linf")]
    pub norm: String,
    /// quick | standard
    #[arg(long, default_value = "standard")]
    pub suite: String,
    /// Radii of the accuracy-vs-eps curve, comma-separated (default: eps x 1/4..4, plus 0.5).
    #[arg(long, value_delimiter = ',')]
    pub curve: Option<Vec<f64>>,
}

struct Loaded {
    model: Model,
    data: Dataset,
    dataset: String,
    device: tch::Device,
    out: PathBuf,
}

fn load(md: &ModelData, default_out: &str) -> Result<Loaded> {
    set_threads(md.threads);
    let device = md.device.parse::<DeviceSpec>()?.resolve()?;
    let (model, meta) = load_model(&md.model, None, device)?;
    let (dataset, data_dir) = data_of(meta.as_ref(), md.dataset.as_deref(), md.data_dir.as_deref());
    let (_, test) = load_dataset(&dataset, data_dir.as_deref())?;
    if test.num_classes as i64 != model.spec.num_classes {
        return Err(Error::invalid(format!(
            "model has {} outputs but {dataset} has {} classes",
            model.spec.num_classes, test.num_classes
        )));
    }
    let n = if md.n == 0 {
        test.len()
    } else {
        md.n.min(test.len())
    };
    let data = test.subset(&(0..n).collect::<Vec<_>>())?.to_device(device);
    model.check_input(&data.images.narrow(0, 0, 1))?;
    let out = md.out.clone().unwrap_or_else(|| {
        md.model
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(default_out)
    });
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    Ok(Loaded {
        model,
        data,
        dataset,
        device,
        out,
    })
}

fn build_attack(a: &AttackArgs) -> Result<Box<dyn Attack>> {
    let norm: Norm = a.norm.parse()?;
    let loss: AttackLoss = a.loss.parse()?;
    let threat = |eps: Option<f64>| -> Result<ThreatModel> {
        let eps =
            eps.ok_or_else(|| Error::config("eps", format!("--eps is required for {}", a.attack)))?;
        ThreatModel::new(norm, eps)
    };
    Ok(match a.attack.as_str() {
        "fgsm" => Box::new(Pgd::fgsm(threat(a.eps)?)),
        "pgd" => {
            let mut p = Pgd::new(threat(a.eps)?, a.steps.unwrap_or(10));
            p.step_size = a.step_size;
            p.restarts = a.restarts;
            p.loss = loss;
            p.random_start = !a.no_random_start;
            p.early_stop = !a.no_early_stop;
            p.validate()?;
            Box::new(p)
        }
        "apgd" => {
            let mut p = Apgd::new(threat(a.eps)?, a.steps.unwrap_or(100), loss);
            p.restarts = a.restarts;
            p.early_stop = !a.no_early_stop;
            p.validate()?;
            Box::new(p)
        }
        "apgd-t" => {
            let mut p = ApgdTargeted::new(threat(a.eps)?, a.steps.unwrap_or(100), a.targets);
            p.apgd.early_stop = !a.no_early_stop;
            Box::new(p)
        }
        "square" => {
            let s = Square::new(threat(a.eps)?, a.queries);
            s.validate()?;
            Box::new(s)
        }
        "zoo" | "zo-signsgd" | "nes" => {
            let t = threat(a.eps)?;
            let mut z = match a.attack.as_str() {
                "zoo" => ZoAttack::zoo(t, a.queries),
                "nes" => ZoAttack::nes(t, a.queries),
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
        "cw" => {
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
        o => {
            return Err(Error::config(
                "attack",
                format!(
                "unknown attack `{o}` (fgsm, pgd, apgd, apgd-t, cw, square, zoo, zo-signsgd, nes)"
            ),
            ))
        }
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

pub fn attack(a: AttackArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.md.progress)?;
    let attack = build_attack(&a)?;
    let target = a
        .target
        .as_deref()
        .map(str::parse::<TargetSpec>)
        .transpose()?;
    let l = load(&a.md, &format!("attack-{}", attack.name()))?;
    let opts = RunOptions {
        batch_size: a.md.batch_size,
        seed: a.md.seed,
        target,
        keep_images: a.save_images,
        attack_all: a.attack_all,
    };
    if mode == ProgressMode::Bar {
        eprintln!(
            "{} on {} {} test samples of {} on {}",
            attack.name(),
            l.data.len(),
            l.model.spec.arch,
            l.dataset,
            device_name(l.device)
        );
    }
    if a.warmup {
        let k = a.md.batch_size.min(l.data.len());
        let first = l.data.subset(&(0..k).collect::<Vec<_>>())?;
        attack_dataset(attack.as_ref(), &l.model, &first, &opts)?;
        if let tch::Device::Cuda(i) = l.device {
            tch::Cuda::synchronize(i as i64);
        }
    }
    let r = attack_dataset(attack.as_ref(), &l.model, &l.data, &opts)?;
    let config = serde_json::json!({
        "model": a.md.model, "dataset": l.dataset, "n": l.data.len(), "attack": a.attack,
        "name": attack.name(), "threat": attack.threat(), "target": target, "steps": a.steps,
        "step_size": a.step_size, "restarts": a.restarts, "loss": a.loss,
        "random_start": !a.no_random_start, "early_stop": !a.no_early_stop, "queries": a.queries,
        "attack_all": a.attack_all, "warmup": a.warmup,
        "batch_size": a.md.batch_size,
    });
    let mut report = RunReport::new("attack", config, &device_name(l.device));
    report.seeds.insert("attack".into(), a.md.seed);
    report.timings_s.insert("attack".into(), r.summary.seconds);
    report.metrics = serde_json::to_value(&r.summary)?;
    let ps = l.out.join("per_sample.json");
    write_json_atomic(&ps, &r.per_sample)?;
    report.artifacts.push("per_sample.json".into());
    if let Some(x) = &r.x_adv {
        let path = l.out.join("adversarial.safetensors");
        let tmp = l.out.join(".adversarial.safetensors.tmp");
        tch::Tensor::write_safetensors(&[("x_adv", x)], &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        report.artifacts.push("adversarial.safetensors".into());
    }
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.write(&l.out.join("report.json"))?;
    let s = &r.summary;
    if mode == ProgressMode::JsonLines {
        rustworthy_core::progress::emit_json("summary", report.metrics.clone());
        return Ok(());
    }
    let rows = vec![
        vec!["attack".into(), s.attack.clone()],
        vec!["clean accuracy".into(), format!("{:.2}%", s.clean_accuracy)],
        vec![
            "robust accuracy".into(),
            format!("{:.2}%", s.robust_accuracy),
        ],
        vec![
            "success rate".into(),
            format!("{:.2}% ({}/{})", s.success_rate, s.successes, s.attacked),
        ],
        vec![
            "median queries (success)".into(),
            fmt_opt(s.median_queries_success, 0),
        ],
        vec![
            "median linf (success)".into(),
            fmt_opt(s.median_linf_success, 4),
        ],
        vec![
            "median l2 (success)".into(),
            fmt_opt(s.median_l2_success, 4),
        ],
        vec![
            "max constraint violation".into(),
            format!("{:.1e}", s.max_violation),
        ],
        vec![
            "examples / s".into(),
            format!("{:.1}", s.examples_per_second),
        ],
        vec!["time".into(), format!("{:.2} s", s.seconds)],
        vec![
            "report".into(),
            l.out.join("report.json").display().to_string(),
        ],
    ];
    println!("{}", render(&["metric", "value"], &rows));
    Ok(())
}

pub fn robust_eval_cmd(a: RobustEvalArgs) -> Result<()> {
    let t_total = Instant::now();
    let mode = progress_mode(&a.md.progress)?;
    let norm: Norm = a.norm.parse()?;
    let threat = ThreatModel::new(norm, a.eps)?;
    let mut cfg = SuiteConfig::preset(&a.suite, threat)?;
    cfg.batch_size = a.md.batch_size;
    cfg.seed = a.md.seed;
    if let Some(c) = &a.curve {
        cfg.curve = c.clone();
    }
    cfg.validate()?;
    let l = load(&a.md, &format!("robust-eval-{}-{}", norm, a.eps))?;
    if mode == ProgressMode::Bar {
        eprintln!(
            "robust evaluation ({} suite, {}) of {} on {} {} test samples on {}",
            cfg.name,
            threat,
            l.model.spec.arch,
            l.data.len(),
            l.dataset,
            device_name(l.device)
        );
    }
    let r = robust_eval(&l.model, &l.data, &cfg)?;
    let mut report = RunReport::new(
        "robust-eval",
        serde_json::json!({"model": a.md.model, "dataset": l.dataset, "n": l.data.len(), "suite": cfg}),
        &device_name(l.device),
    );
    report.seeds.insert("attack".into(), a.md.seed);
    report.timings_s.insert("suite".into(), r.seconds);
    let mut metrics = serde_json::to_value(&r)?;
    if let Some(o) = metrics.as_object_mut() {
        o.remove("samples");
    }
    report.metrics = metrics;
    report.notes.extend(r.flags.iter().cloned());
    // Per-sample worst case.
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
        title: format!("{} robust accuracy vs eps ({})", l.model.spec.arch, norm),
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
    if mode == ProgressMode::JsonLines {
        rustworthy_core::progress::emit_json("summary", report.metrics.clone());
        return Ok(());
    }
    let mut rows = vec![
        vec![
            "clean".into(),
            format!("{:.2}%", r.clean_accuracy),
            "-".into(),
        ],
        vec![
            r.fgsm.attack.clone(),
            format!("{:.2}%", r.fgsm.robust_accuracy),
            format!("{:.1} s", r.fgsm.seconds),
        ],
        vec![
            r.pgd.attack.clone(),
            format!("{:.2}%", r.pgd.robust_accuracy),
            format!("{:.1} s", r.pgd.seconds),
        ],
    ];
    for e in &r.ensemble {
        rows.push(vec![
            format!("+ {} (ensemble, {} attacked)", e.attack, e.attacked),
            format!("{:.2}%", e.robust_accuracy),
            format!("{:.1} s", e.seconds),
        ]);
    }
    rows.push(vec![
        "ensemble".into(),
        format!("{:.2}%", r.ensemble_accuracy),
        "-".into(),
    ]);
    rows.push(vec![
        "worst case (all attacks)".into(),
        format!("{:.2}%", r.worst_case_accuracy),
        format!("{:.1} s", r.seconds),
    ]);
    println!("{}", render(&["attack", "accuracy", "time"], &rows));
    let curve: Vec<Vec<String>> = r
        .curve
        .iter()
        .map(|(e, acc)| vec![format!("{e}"), format!("{acc:.2}%")])
        .collect();
    println!("{}", render(&["eps", "PGD accuracy"], &curve));
    if r.flags.is_empty() {
        println!("no signs of gradient masking found");
    } else {
        for f in &r.flags {
            println!("warning: {f}");
        }
    }
    println!("report: {}", l.out.join("report.json").display());
    Ok(())
}
