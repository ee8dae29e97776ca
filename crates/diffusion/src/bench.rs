//! `bench diffusion`: the whole class-erasure study in one resumable run. Train a Fashion-MNIST
//! classifier (the metrics' feature network and the judge of generated classes), train the
//! conditional DDPM, retrain it without the erased class, compute SalUn's mask, erase the class
//! with every method, evaluate every model (per-class accuracy of generated images, UA,
//! FD-fmnist and KID-fmnist on the other classes, sample grids) and attack every erased model
//! and Retrain. Each stage writes its result into the run folder and is skipped when the
//! folder already holds it, so an interrupted run resumes where it stopped.

use crate::attack::{attack, wilson, AttackConfig, AttackOutcome, AttackVariable};
use crate::io::{at_resolution, class_subset, has_unet, load_unet, save_unet, write_grid};
use crate::metrics::{class_share, predict, quality, sanity, Quality, SanityRow};
use crate::sample::{generate, Sampler};
use crate::train::{train_ddpm, DdpmTrainConfig};
use crate::unet::{CondUNet, UNetConfig};
use crate::unlearn::{
    erase, load_mask, mask_density, saliency_mask, save_mask, EraseConfig, EraseMethod,
};
use rustworthy_core::report::RunReport;
use rustworthy_core::seed::derive;
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_data::{load_dataset, Dataset};
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_train::trainer::{fit, FitOptions, TrainConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How generated images are evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The sampler.
    pub sampler: Sampler,
    /// Guidance scale w (2.0, the reference's).
    pub guidance: f64,
    /// Images generated per class (the erased class's give UA; the others' give FD and KID).
    pub per_class: i64,
    /// Sampling batch.
    pub batch: i64,
    /// Seed of the sampling noise (the same for every model).
    pub seed: u64,
}

/// The whole study's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionBenchConfig {
    /// Preset name.
    pub preset: String,
    /// Image side the study runs at (Fashion-MNIST is pooled to it).
    pub resolution: i64,
    /// The U-Net.
    pub unet: UNetConfig,
    /// Training of the original model and of Retrain.
    pub train: DdpmTrainConfig,
    /// The erasure settings shared by every method (forget class included).
    pub erase: EraseConfig,
    /// Methods to run.
    pub methods: Vec<EraseMethod>,
    /// Whether to retrain without the class (the attack's control).
    pub retrain: bool,
    /// Architecture of the judge classifier (LeNet at 28 pixels; the MLP at 14, where LeNet's
    /// pooling leaves a 1x1 map).
    pub classifier_arch: Arch,
    /// Epochs of the judge classifier (Adam 1e-3, batch 128).
    pub classifier_epochs: usize,
    /// Evaluation of generated images.
    pub eval: EvalConfig,
    /// The attack.
    pub attack: AttackConfig,
    /// Attack variables run on each model.
    pub attack_variables: Vec<AttackVariable>,
    /// Attack instances per model and variable (each a different target image and seed).
    pub attack_instances: usize,
    /// Seed of the classifier and the model initialisations.
    pub seed: u64,
}

/// The judge classifier's architecture and epochs at `side` pixels: the MLP for 5 epochs below
/// 28 pixels (LeNet's pooling leaves a 1x1 map there), LeNet for 10 at 28 and above.
pub fn judge_recipe(side: i64) -> (Arch, usize) {
    if side < 28 {
        (Arch::Mlp, 5)
    } else {
        (Arch::Lenet, 10)
    }
}

/// The presets: `fmnist-ddpm-mini` (14x14 pooled Fashion-MNIST, a small U-Net, class 1 erased;
/// 15 minutes on 2 CPU cores) and `fmnist-ddpm` (28x28, the reference U-Net's width at 3
/// levels; GPU-sized).
pub fn preset(name: &str) -> Result<DiffusionBenchConfig> {
    let methods = EraseMethod::ALL.to_vec();
    let variables = vec![
        AttackVariable::Continuous,
        AttackVariable::Discrete { tokens: 3 },
    ];
    match name {
        "fmnist-ddpm-mini" => Ok(DiffusionBenchConfig {
            preset: name.into(),
            resolution: 14,
            unet: UNetConfig {
                in_channels: 1,
                resolution: 14,
                ch: 16,
                ch_mult: vec![1, 2],
                num_res_blocks: 1,
                attn_resolutions: vec![7],
                dropout: 0.1,
                num_classes: 10,
                groups: 8,
            },
            train: DdpmTrainConfig {
                steps: 3000,
                batch_size: 64,
                lr: 1e-3,
                ema_rate: 0.999,
                checkpoint_every: 500,
                ..Default::default()
            },
            erase: EraseConfig {
                forget_class: 1,
                steps: 150,
                batch_size: 32,
                ..Default::default()
            },
            methods,
            retrain: true,
            classifier_arch: judge_recipe(14).0,
            classifier_epochs: judge_recipe(14).1,
            eval: EvalConfig {
                sampler: Sampler::Ddpm { steps: 50 },
                guidance: 2.0,
                per_class: 40,
                batch: 400,
                seed: 7,
            },
            attack: AttackConfig {
                t_start: 10,
                t_stride: 100,
                iterations: 15,
                check_sampler: Sampler::Ddim {
                    steps: 25,
                    eta: 0.0,
                },
                ..Default::default()
            },
            attack_variables: variables,
            attack_instances: 8,
            seed: 0,
        }),
        "fmnist-ddpm" => Ok(DiffusionBenchConfig {
            preset: name.into(),
            resolution: 28,
            unet: UNetConfig {
                ch_mult: vec![1, 2, 2],
                attn_resolutions: vec![14],
                ..UNetConfig::reference(1, 28)
            },
            train: DdpmTrainConfig {
                steps: 60_000,
                ..Default::default()
            },
            erase: EraseConfig::default(),
            methods,
            retrain: true,
            classifier_arch: judge_recipe(28).0,
            classifier_epochs: judge_recipe(28).1,
            eval: EvalConfig {
                sampler: Sampler::Ddim {
                    steps: 1000,
                    eta: 1.0,
                },
                guidance: 2.0,
                per_class: 500,
                batch: 500,
                seed: 7,
            },
            attack: AttackConfig {
                variable: AttackVariable::Continuous,
                ..Default::default()
            },
            attack_variables: variables,
            attack_instances: 50,
            seed: 0,
        }),
        other => Err(Error::config(
            "preset",
            format!("unknown diffusion preset `{other}`; choose fmnist-ddpm-mini or fmnist-ddpm"),
        )),
    }
}

/// Evaluation of one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelEval {
    /// Share of each class's generated images the classifier assigns to that class.
    pub class_share: Vec<f64>,
    /// Unlearning accuracy: 1 - the erased class's share.
    pub ua: f64,
    /// Mean share over the other classes.
    pub retain_share: f64,
    /// FD-fmnist and KID-fmnist of the other classes' images against real test images of them.
    pub quality: Quality,
    /// Seconds of sampling and scoring.
    pub seconds: f64,
}

/// Attack results of one model and variable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackSummary {
    /// The variable.
    pub variable: AttackVariable,
    /// Instances that succeeded (pre-attack successes included).
    pub successes: usize,
    /// Instances where the unattacked label already generated the class.
    pub pre_successes: usize,
    /// Instances run.
    pub instances: usize,
    /// Attack success rate.
    pub asr: f64,
    /// 95% Wilson interval of the ASR.
    pub ci: (f64, f64),
    /// Each instance.
    pub runs: Vec<AttackOutcome>,
    /// Seconds.
    pub seconds: f64,
}

/// One model's row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    /// `original`, `retrain` or a method name.
    pub model: String,
    /// Seconds spent making the model (training or erasing).
    pub make_seconds: f64,
    /// Its evaluation.
    pub eval: ModelEval,
    /// Its attacks (none for the original).
    pub attacks: Vec<AttackSummary>,
}

/// The whole study's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// Test accuracy (%) of the judge classifier on real images.
    pub classifier_accuracy: f64,
    /// The judge's accuracy on each class's real test images (the ceiling for the generated
    /// images' class shares).
    pub classifier_class_accuracy: Vec<f64>,
    /// Density of SalUn's mask.
    pub mask_density: Option<f64>,
    /// The metric sanity checks on real test images.
    pub sanity: Vec<SanityRow>,
    /// One row per model.
    pub rows: Vec<BenchRow>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::corrupt(path, e.to_string()))
}

/// Trains (or reads back from `dir`) the judge classifier: `arch` on the training images at the
/// study's resolution, Adam 1e-3, batch 128.
pub fn judge_classifier(
    dir: &Path,
    arch: Arch,
    train: &Dataset,
    test: &Dataset,
    epochs: usize,
    seed: u64,
    device: Device,
) -> Result<(Model, f64)> {
    let (c, h, w) = train.image_shape();
    let spec = ModelSpec {
        activation: Default::default(),
        arch,
        in_channels: c as i64,
        num_classes: train.num_classes as i64,
        input_size: (h as i64, w as i64),
        mean: vec![0.2860; c],
        std: vec![0.3530; c],
    };
    tch::manual_seed(seed as i64);
    let mut m = Model::new(spec, device)?;
    let path = dir.join("classifier.safetensors");
    if path.exists() {
        m.load(&path)?;
    } else {
        let cfg = TrainConfig::adam_constant(epochs, 128, 1e-3, seed);
        fit(&mut m, train, None, &cfg, &FitOptions::default())?;
        m.save(&path)?;
    }
    let pred = predict(&m, &test.images, 1000)?;
    let acc = pred
        .eq_tensor(&test.labels.to_device(Device::Cpu))
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
        * 100.0;
    Ok((m, acc))
}

/// Evaluates `model`: `per_class` images of every class, their class shares, UA for
/// `forget_class`, FD/KID of the other classes against `real_retain` (test images of them),
/// and a grid of the first 8 images per class.
pub fn evaluate_model(
    model: &CondUNet,
    judge: &Model,
    cfg: &EvalConfig,
    forget_class: i64,
    real_retain: &Tensor,
    grid: Option<&Path>,
) -> Result<ModelEval> {
    let t0 = Instant::now();
    let k = model.config.num_classes;
    let classes: Vec<i64> = (0..k).collect();
    let x = generate(
        model,
        &cfg.sampler,
        &classes,
        cfg.per_class,
        cfg.guidance,
        cfg.batch,
        cfg.seed,
    )?;
    let mut shares = Vec::new();
    let mut rows = Vec::new();
    let mut others = Vec::new();
    for c in 0..k {
        let xc = x.narrow(0, c * cfg.per_class, cfg.per_class);
        shares.push(class_share(judge, &xc, c)?);
        rows.push(xc.narrow(0, 0, cfg.per_class.min(8)));
        if c != forget_class {
            others.push(xc);
        }
    }
    if let Some(g) = grid {
        write_grid(g, &rows, 3)?;
    }
    let q = quality(judge, &Tensor::cat(&others, 0), real_retain)?;
    let retain_share = shares
        .iter()
        .enumerate()
        .filter(|(c, _)| *c as i64 != forget_class)
        .map(|(_, s)| s)
        .sum::<f64>()
        / (k - 1) as f64;
    Ok(ModelEval {
        ua: 1.0 - shares[forget_class as usize],
        class_share: shares,
        retain_share,
        quality: q,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Runs the attack `instances` times on `model` with targets from `targets` (test images of the
/// erased class, in [0, 1]).
pub fn attack_model(
    model: &CondUNet,
    judge: &Model,
    targets: &Tensor,
    class: i64,
    cfg: &AttackConfig,
    instances: usize,
    seed: u64,
) -> Result<AttackSummary> {
    let t0 = Instant::now();
    let n = (instances as i64).min(targets.size()[0]);
    let mut runs = Vec::new();
    for i in 0..n {
        let target = targets.narrow(0, i, 1);
        runs.push(attack(
            model,
            judge,
            &target,
            class,
            cfg,
            derive(seed, "attack-instance", i as u64),
            derive(seed, "attack-check", i as u64),
        )?);
    }
    let successes = runs.iter().filter(|r| r.success).count();
    let pre = runs.iter().filter(|r| r.pre_success).count();
    Ok(AttackSummary {
        variable: cfg.variable.clone(),
        successes,
        pre_successes: pre,
        instances: runs.len(),
        asr: successes as f64 / runs.len().max(1) as f64,
        ci: wilson(successes, runs.len()),
        runs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The results table as Markdown.
pub fn markdown(res: &BenchResult) -> String {
    let mut s = String::from(
        "| model | UA | forget-class share | other classes' share | FD-fmnist | KID-fmnist | ASR (continuous) | ASR (discrete) | time (s) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &res.rows {
        let asr = |want: &str| -> String {
            r.attacks
                .iter()
                .find(|a| {
                    matches!(
                        (&a.variable, want),
                        (AttackVariable::Continuous, "c") | (AttackVariable::Discrete { .. }, "d")
                    )
                })
                .map(|a| {
                    format!(
                        "{}/{} [{:.2}, {:.2}]",
                        a.successes, a.instances, a.ci.0, a.ci.1
                    )
                })
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.4} | {} | {} | {:.0} |\n",
            r.model,
            r.eval.ua,
            1.0 - r.eval.ua,
            r.eval.retain_share,
            r.eval.quality.fd,
            r.eval.quality.kid,
            asr("c"),
            asr("d"),
            r.make_seconds
        ));
    }
    s
}

/// The share of each class's generated images the judge assigns to that class, per model, under
/// the judge's accuracy on real test images of the class.
pub fn class_markdown(res: &BenchResult) -> String {
    let k = res.classifier_class_accuracy.len();
    let mut s = format!(
        "| model | {} |\n|---|{}\n",
        (0..k)
            .map(|c| format!("class {c}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(k)
    );
    let row = |name: &str, v: &[f64]| {
        format!(
            "| {name} | {} |\n",
            v.iter()
                .map(|x| format!("{:.2}", x))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    };
    s.push_str(&row("real test images", &res.classifier_class_accuracy));
    for r in &res.rows {
        s.push_str(&row(&r.model, &r.eval.class_share));
    }
    s
}

/// The results table as CSV.
pub fn csv(res: &BenchResult) -> String {
    let mut s = String::from("model,ua,retain_share,fd_fmnist,kid_fmnist,kid_std,asr_continuous,asr_discrete,make_seconds\n");
    for r in &res.rows {
        let asr = |disc: bool| {
            r.attacks
                .iter()
                .find(|a| matches!(a.variable, AttackVariable::Discrete { .. }) == disc)
                .map(|a| format!("{:.4}", a.asr))
                .unwrap_or_default()
        };
        s.push_str(&format!(
            "{},{:.4},{:.4},{:.4},{:.6},{:.6},{},{},{:.1}\n",
            r.model,
            r.eval.ua,
            r.eval.retain_share,
            r.eval.quality.fd,
            r.eval.quality.kid,
            r.eval.quality.kid_std,
            asr(false),
            asr(true),
            r.make_seconds
        ));
    }
    s
}

/// Runs (or resumes) the study into `out`. `say` receives one line per stage.
pub fn run_bench(
    cfg: &DiffusionBenchConfig,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<BenchResult> {
    if cfg.unet.resolution != cfg.resolution {
        return Err(Error::config(
            "unet.resolution",
            "must equal the study's resolution",
        ));
    }
    cfg.erase.validate(cfg.unet.num_classes)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = fsutil::RunLock::acquire(out)?;
    // Every stage's result is reused when its file exists, so a folder serves one config only.
    let cfg_path = out.join("bench_config.json");
    let now = serde_json::to_value(cfg)?;
    match read_json::<serde_json::Value>(&cfg_path)? {
        Some(old) if old != now => {
            let differ: Vec<String> = now
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, v)| old.get(k.as_str()) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            return Err(Error::invalid(format!(
                "{} holds a bench run with another config (it differs in {}); use another --out",
                out.display(),
                differ.join(", ")
            )));
        }
        Some(_) => {}
        None => fsutil::write_json_atomic(&cfg_path, &now)?,
    }
    let mut report = RunReport::new(
        "bench diffusion",
        serde_json::to_value(cfg)?,
        &format!("{device:?}"),
    );
    report.seeds.insert("seed".into(), cfg.seed);
    report.seeds.insert("train".into(), cfg.train.seed);
    report.seeds.insert("erase".into(), cfg.erase.seed);
    report.seeds.insert("eval".into(), cfg.eval.seed);
    let fc = cfg.erase.forget_class;
    let (train, test) = load_dataset("fashion-mnist", data_dir)?;
    let train = at_resolution(&train, cfg.resolution)?.to_device(device);
    let test = at_resolution(&test, cfg.resolution)?.to_device(device);
    let t = Instant::now();
    say("judge classifier");
    let (judge, judge_acc) = judge_classifier(
        out,
        cfg.classifier_arch,
        &train,
        &test,
        cfg.classifier_epochs,
        cfg.seed,
        device,
    )?;
    say(&format!("judge classifier: test accuracy {judge_acc:.2}%"));
    report
        .timings_s
        .insert("classifier".into(), t.elapsed().as_secs_f64());
    let retain_train = class_subset(&train, fc, true)?;
    let forget_train = class_subset(&train, fc, false)?;
    let real_retain = class_subset(&test, fc, true)?.images.to_device(Device::Cpu);
    let targets = class_subset(&test, fc, false)?
        .images
        .to_device(Device::Cpu);
    say("metric sanity checks");
    let sanity_path = out.join("sanity.json");
    let sanity_rows: Vec<SanityRow> = match read_json(&sanity_path)? {
        Some(v) => v,
        None => {
            let all = test.images.to_device(Device::Cpu);
            let rows = sanity(&judge, &all, cfg.seed)?;
            fsutil::write_json_atomic(&sanity_path, &rows)?;
            rows
        }
    };
    let mut make_seconds: BTreeMap<String, f64> =
        read_json(&out.join("make_seconds.json"))?.unwrap_or_default();
    let mut trained = |name: &str, data: &Dataset, say: &mut dyn FnMut(&str)| -> Result<CondUNet> {
        let dir = out.join(name);
        if has_unet(&dir) {
            return load_unet(&dir, device);
        }
        say(&format!("train {name} ({} steps)", cfg.train.steps));
        tch::manual_seed(cfg.seed as i64);
        let mut m = CondUNet::new(&cfg.unet, device)?;
        let mut ema = CondUNet::new(&cfg.unet, device)?;
        let t = Instant::now();
        let o = train_ddpm(
            &mut m,
            &mut ema,
            data,
            &cfg.train,
            Some(&dir.join("train")),
            100,
            |p| {
                say(&format!("  {name} step {} loss {:.2}", p.step, p.loss));
            },
        )?;
        fsutil::write_json_atomic(&dir.join("train_history.json"), &o)?;
        save_unet(&dir, &m)?;
        save_unet(&dir.join("ema"), &ema)?;
        let _ = std::fs::remove_dir_all(dir.join("train"));
        make_seconds.insert(name.to_string(), t.elapsed().as_secs_f64());
        Ok(m)
    };
    let original = trained("original", &train, &mut say)?;
    let retrain = if cfg.retrain {
        Some(trained("retrain", &retain_train, &mut say)?)
    } else {
        None
    };
    fsutil::write_json_atomic(&out.join("make_seconds.json"), &make_seconds)?;
    let mut models: Vec<(String, CondUNet)> = vec![("original".into(), original)];
    if let Some(r) = retrain {
        models.push(("retrain".into(), r));
    }
    let mut mdens = None;
    if cfg.methods.iter().any(|m| m.uses_mask()) {
        let mp = out.join("mask.safetensors");
        if !mp.exists() {
            say("SalUn saliency mask");
            let t = Instant::now();
            let mask = saliency_mask(&models[0].1, &forget_train, &cfg.erase)?;
            save_mask(&mp, &mask)?;
            make_seconds.insert("mask".into(), t.elapsed().as_secs_f64());
        }
        mdens = Some(mask_density(&load_mask(&mp, &models[0].1)?));
    }
    for &method in &cfg.methods {
        let name = method.name();
        let dir = out.join(name);
        if !has_unet(&dir) {
            say(&format!(
                "erase class {fc} with {name} ({} steps)",
                cfg.erase.steps
            ));
            let mut m = CondUNet::new(&cfg.unet, device)?;
            m.copy_from(&models[0].1)?;
            let mask = if method.uses_mask() {
                Some(load_mask(&out.join("mask.safetensors"), &m)?)
            } else {
                None
            };
            let o = erase(
                &mut m,
                method,
                &forget_train,
                &retain_train,
                mask.as_ref(),
                &cfg.erase,
                25,
            )?;
            fsutil::write_json_atomic(&dir.join("erase_history.json"), &o)?;
            save_unet(&dir, &m)?;
            make_seconds.insert(name.into(), o.seconds);
            fsutil::write_json_atomic(&out.join("make_seconds.json"), &make_seconds)?;
        }
        models.push((name.into(), load_unet(&dir, device)?));
    }
    let mut rows = Vec::new();
    for (name, m) in &models {
        let dir = out.join(name);
        let ep = dir.join("eval.json");
        let ev: ModelEval = match read_json(&ep)? {
            Some(e) => e,
            None => {
                say(&format!("evaluate {name}"));
                let e = evaluate_model(
                    m,
                    &judge,
                    &cfg.eval,
                    fc,
                    &real_retain,
                    Some(&dir.join("samples.png")),
                )?;
                fsutil::write_json_atomic(&ep, &e)?;
                e
            }
        };
        say(&format!(
            "  {name}: UA {:.3}, other classes {:.3}, FD-fmnist {:.2}, KID-fmnist {:.4}",
            ev.ua, ev.retain_share, ev.quality.fd, ev.quality.kid
        ));
        let mut attacks = Vec::new();
        if name != "original" {
            for v in &cfg.attack_variables {
                let tag = match v {
                    AttackVariable::Continuous => "continuous".to_string(),
                    AttackVariable::Discrete { tokens } => format!("discrete{tokens}"),
                };
                let ap = dir.join(format!("attack_{tag}.json"));
                let a: AttackSummary = match read_json(&ap)? {
                    Some(a) => a,
                    None => {
                        say(&format!(
                            "attack {name} ({tag}, {} instances)",
                            cfg.attack_instances
                        ));
                        let ac = AttackConfig {
                            variable: v.clone(),
                            weight_decay: match v {
                                AttackVariable::Continuous => cfg.attack.weight_decay,
                                AttackVariable::Discrete { .. } => 0.1,
                            },
                            ..cfg.attack.clone()
                        };
                        let a = attack_model(
                            m,
                            &judge,
                            &targets,
                            fc,
                            &ac,
                            cfg.attack_instances,
                            cfg.seed,
                        )?;
                        fsutil::write_json_atomic(&ap, &a)?;
                        a
                    }
                };
                say(&format!(
                    "  {name} {tag}: ASR {}/{}",
                    a.successes, a.instances
                ));
                attacks.push(a);
            }
        }
        rows.push(BenchRow {
            model: name.clone(),
            make_seconds: make_seconds.get(name).copied().unwrap_or(0.0),
            eval: ev,
            attacks,
        });
    }
    let pred = predict(&judge, &test.images, 1000)?;
    let labels = test.labels.to_device(Device::Cpu);
    let classifier_class_accuracy = (0..cfg.unet.num_classes)
        .map(|c| {
            let of = labels.eq(c);
            let right = pred
                .eq_tensor(&labels)
                .logical_and(&of)
                .sum(Kind::Double)
                .double_value(&[]);
            right / of.sum(Kind::Double).double_value(&[]).max(1.0)
        })
        .collect();
    let res = BenchResult {
        classifier_accuracy: judge_acc,
        classifier_class_accuracy,
        mask_density: mdens,
        sanity: sanity_rows,
        rows,
    };
    let md = format!("{}\n{}", markdown(&res), class_markdown(&res));
    fsutil::atomic_write(&out.join("table.md"), md.as_bytes())?;
    fsutil::atomic_write(&out.join("table.csv"), csv(&res).as_bytes())?;
    fsutil::write_json_atomic(&out.join("table.json"), &res)?;
    report.metrics = serde_json::to_value(&res)?;
    report
        .timings_s
        .insert("total".into(), t.elapsed().as_secs_f64());
    for (k, v) in &make_seconds {
        report.timings_s.insert(format!("make_{k}"), *v);
    }
    report.artifacts = vec![
        "table.md".into(),
        "table.csv".into(),
        "table.json".into(),
        "sanity.json".into(),
    ];
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))?;
    Ok(res)
}
