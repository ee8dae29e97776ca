//! The run procedures behind `rustworthy diffusion train|sample|unlearn|eval|attack`: each
//! reads model folders, does one thing, writes its outputs and a `report.json` (config, seeds,
//! versions, host, timings, results) into its output folder.

use crate::attack::{AttackConfig, AttackVariable};
use crate::bench::{
    attack_model, evaluate_model, judge_classifier, judge_recipe, preset, AttackSummary,
    EvalConfig, ModelEval,
};
use crate::io::{at_resolution, class_subset, load_unet, save_unet, write_grid};
use crate::sample::{generate, Sampler};
use crate::train::{train_ddpm, DdpmTrainConfig, TrainOutcome};
use crate::unet::{CondUNet, UNetConfig};
use crate::unlearn::{
    erase, load_mask, saliency_mask, save_mask, EraseConfig, EraseMethod, EraseOutcome,
};
use rustworthy_core::report::{utc_now, RunReport};
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_data::{load_dataset, Dataset};
use rustworthy_models::Model;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// Fashion-MNIST's train and test splits at `side` pixels on `device`.
pub fn fmnist_at(side: i64, data_dir: Option<&Path>, device: Device) -> Result<(Dataset, Dataset)> {
    let (train, test) = load_dataset("fashion-mnist", data_dir)?;
    Ok((
        at_resolution(&train, side)?.to_device(device),
        at_resolution(&test, side)?.to_device(device),
    ))
}

fn finish(mut report: RunReport, out: &Path, metrics: serde_json::Value, t: Instant) -> Result<()> {
    report.metrics = metrics;
    report
        .timings_s
        .insert("total".into(), t.elapsed().as_secs_f64());
    report.finished_utc = Some(utc_now());
    report.write(&out.join("report.json"))
}

/// `diffusion train`: a U-Net and a recipe (a preset's unless overridden).
#[derive(Clone, Debug)]
pub struct TrainRun {
    /// Output model folder (the training checkpoint lives in `out/train` until the end).
    pub out: PathBuf,
    /// The U-Net.
    pub unet: UNetConfig,
    /// The recipe.
    pub train: DdpmTrainConfig,
    /// Leave this class out (Retrain).
    pub exclude_class: Option<i64>,
    /// Initialisation seed.
    pub init_seed: u64,
}

impl TrainRun {
    /// The run of a bench preset's original model.
    pub fn from_preset(name: &str, out: PathBuf) -> Result<Self> {
        let p = preset(name)?;
        Ok(TrainRun {
            out,
            unet: p.unet,
            train: p.train,
            exclude_class: None,
            init_seed: p.seed,
        })
    }
}

/// Trains (resuming from `out/train` when a checkpoint is there) and writes the model folder,
/// its EMA in `out/ema`, and the report.
pub fn run_train(
    run: &TrainRun,
    data_dir: Option<&Path>,
    device: Device,
    mut on_log: impl FnMut(&str),
) -> Result<TrainOutcome> {
    let t = Instant::now();
    let _lock = fsutil::RunLock::acquire(&run.out)?;
    let mut report = RunReport::new(
        "diffusion train",
        serde_json::json!({"unet": run.unet, "train": run.train, "exclude_class": run.exclude_class, "init_seed": run.init_seed}),
        &format!("{device:?}"),
    );
    report.seeds.insert("init".into(), run.init_seed);
    report.seeds.insert("train".into(), run.train.seed);
    let (train, _) = fmnist_at(run.unet.resolution, data_dir, device)?;
    let data = match run.exclude_class {
        Some(c) => {
            if c < 0 || c >= train.num_classes as i64 {
                return Err(Error::config(
                    "exclude_class",
                    format!("{c} is not a class of the data"),
                ));
            }
            class_subset(&train, c, true)?
        }
        None => train,
    };
    tch::manual_seed(run.init_seed as i64);
    let mut m = CondUNet::new(&run.unet, device)?;
    let mut ema = CondUNet::new(&run.unet, device)?;
    let o = train_ddpm(
        &mut m,
        &mut ema,
        &data,
        &run.train,
        Some(&run.out.join("train")),
        100,
        |p| {
            on_log(&format!(
                "step {} loss {:.3} grad norm {:.3}",
                p.step, p.loss, p.grad_norm
            ))
        },
    )?;
    save_unet(&run.out, &m)?;
    save_unet(&run.out.join("ema"), &ema)?;
    if o.resumed_from > 0 {
        report
            .notes
            .push(format!("resumed from step {}", o.resumed_from));
    }
    report.history = o
        .history
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    report.timings_s.insert("train".into(), o.seconds);
    report.artifacts = vec![
        "model.safetensors".into(),
        "unet.json".into(),
        "ema/".into(),
    ];
    finish(
        report,
        &run.out,
        serde_json::json!({"final_loss": o.history.last().map(|p| p.loss)}),
        t,
    )?;
    let _ = std::fs::remove_dir_all(run.out.join("train"));
    Ok(o)
}

/// `diffusion sample`: `per_class` images of each class in `classes`, as a PNG grid (one row
/// per class, at most 16 images) and a safetensors file of all images in [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn run_sample(
    model_dir: &Path,
    classes: &[i64],
    per_class: i64,
    sampler: &Sampler,
    guidance: f64,
    seed: u64,
    out: &Path,
    device: Device,
) -> Result<Tensor> {
    let t = Instant::now();
    let m = load_unet(model_dir, device)?;
    let mut report = RunReport::new(
        "diffusion sample",
        serde_json::json!({"model": model_dir, "classes": classes, "per_class": per_class, "sampler": sampler, "guidance": guidance, "seed": seed}),
        &format!("{device:?}"),
    );
    report.seeds.insert("sample".into(), seed);
    let x = generate(&m, sampler, classes, per_class, guidance, 256, seed)?;
    let rows: Vec<Tensor> = (0..classes.len() as i64)
        .map(|i| x.narrow(0, i * per_class, per_class.min(16)))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_grid(&out.join("samples.png"), &rows, 3)?;
    let named = vec![("images".to_string(), x.shallow_clone())];
    fsutil::atomic_write_with(&out.join("samples.safetensors"), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    report.artifacts = vec!["samples.png".into(), "samples.safetensors".into()];
    finish(report, out, serde_json::json!({"images": x.size()[0]}), t)?;
    Ok(x)
}

/// `diffusion unlearn`: erase a class from a model folder with one method; SalUn's mask is
/// read from `mask` or computed (and saved as `out/mask.safetensors`).
pub fn run_unlearn(
    model_dir: &Path,
    method: EraseMethod,
    cfg: &EraseConfig,
    mask: Option<&Path>,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
) -> Result<EraseOutcome> {
    let t = Instant::now();
    let mut m = load_unet(model_dir, device)?;
    cfg.validate(m.config.num_classes)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = fsutil::RunLock::acquire(out)?;
    let mut report = RunReport::new(
        "diffusion unlearn",
        serde_json::json!({"model": model_dir, "method": method, "erase": cfg, "mask": mask}),
        &format!("{device:?}"),
    );
    report.seeds.insert("erase".into(), cfg.seed);
    let (train, _) = fmnist_at(m.config.resolution, data_dir, device)?;
    let forget = class_subset(&train, cfg.forget_class, false)?;
    let retain = class_subset(&train, cfg.forget_class, true)?;
    let mask = if method.uses_mask() {
        Some(match mask {
            Some(p) => load_mask(p, &m)?,
            None => {
                let mk = saliency_mask(&m, &forget, cfg)?;
                save_mask(&out.join("mask.safetensors"), &mk)?;
                report.artifacts.push("mask.safetensors".into());
                mk
            }
        })
    } else {
        if mask.is_some() {
            return Err(Error::invalid(format!(
                "{} takes no saliency mask",
                method.name()
            )));
        }
        None
    };
    let o = erase(&mut m, method, &forget, &retain, mask.as_ref(), cfg, 25)?;
    save_unet(out, &m)?;
    report.history = o
        .history
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    report.timings_s.insert("erase".into(), o.seconds);
    report
        .artifacts
        .extend(["model.safetensors".into(), "unet.json".into()]);
    finish(
        report,
        out,
        serde_json::json!({"trainable_share": o.trainable_share}),
        t,
    )?;
    Ok(o)
}

/// The judge classifier kept in `judge_dir` (trained there on first use with
/// [`judge_recipe`], as the presets do).
pub fn judge_at(
    judge_dir: &Path,
    side: i64,
    data_dir: Option<&Path>,
    device: Device,
) -> Result<(Model, f64, Dataset)> {
    let (train, test) = fmnist_at(side, data_dir, device)?;
    std::fs::create_dir_all(judge_dir).map_err(|e| Error::io(judge_dir, e))?;
    let (arch, epochs) = judge_recipe(side);
    let (m, acc) = judge_classifier(judge_dir, arch, &train, &test, epochs, 0, device)?;
    Ok((m, acc, test))
}

/// `diffusion eval`: class shares, UA, FD-fmnist and KID-fmnist of a model folder.
pub fn run_eval(
    model_dir: &Path,
    judge_dir: &Path,
    cfg: &EvalConfig,
    forget_class: i64,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
) -> Result<ModelEval> {
    let t = Instant::now();
    let m = load_unet(model_dir, device)?;
    if forget_class < 0 || forget_class >= m.config.num_classes {
        return Err(Error::config(
            "forget_class",
            format!("{forget_class} is out of range"),
        ));
    }
    let (judge, acc, test) = judge_at(judge_dir, m.config.resolution, data_dir, device)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut report = RunReport::new(
        "diffusion eval",
        serde_json::json!({"model": model_dir, "judge": judge_dir, "eval": cfg, "forget_class": forget_class}),
        &format!("{device:?}"),
    );
    report.seeds.insert("eval".into(), cfg.seed);
    let real = class_subset(&test, forget_class, true)?
        .images
        .to_device(Device::Cpu);
    let e = evaluate_model(
        &m,
        &judge,
        cfg,
        forget_class,
        &real,
        Some(&out.join("samples.png")),
    )?;
    report.artifacts = vec!["samples.png".into()];
    let mut metrics = serde_json::to_value(&e)?;
    metrics["judge_test_accuracy"] = serde_json::json!(acc);
    finish(report, out, metrics, t)?;
    Ok(e)
}

/// `diffusion attack`: the attack on a model folder, `instances` times.
#[allow(clippy::too_many_arguments)]
pub fn run_attack(
    model_dir: &Path,
    judge_dir: &Path,
    cfg: &AttackConfig,
    class: i64,
    instances: usize,
    seed: u64,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
) -> Result<AttackSummary> {
    let t = Instant::now();
    let m = load_unet(model_dir, device)?;
    if class < 0 || class >= m.config.num_classes {
        return Err(Error::config("class", format!("{class} is out of range")));
    }
    let (judge, _, test) = judge_at(judge_dir, m.config.resolution, data_dir, device)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut cfg = cfg.clone();
    if matches!(cfg.variable, AttackVariable::Discrete { .. }) && cfg.weight_decay == 0.0 {
        cfg.weight_decay = 0.1;
    }
    let mut report = RunReport::new(
        "diffusion attack",
        serde_json::json!({"model": model_dir, "judge": judge_dir, "attack": cfg, "class": class, "instances": instances}),
        &format!("{device:?}"),
    );
    report.seeds.insert("attack".into(), seed);
    let targets = class_subset(&test, class, false)?
        .images
        .to_device(Device::Cpu);
    let a = attack_model(&m, &judge, &targets, class, &cfg, instances, seed)?;
    finish(report, out, serde_json::to_value(&a)?, t)?;
    Ok(a)
}
