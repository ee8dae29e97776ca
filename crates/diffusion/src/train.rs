//! Training the class-conditional DDPM as SalUn's code does: classifier-free-guidance training
//! (each label dropped to the null vector with probability 0.1), antithetic timesteps, the
//! summed epsilon MSE, Adam with global gradient-norm clipping, and an EMA of the weights;
//! checkpoints written atomically and resumed bit-exactly (every step's randomness is seeded
//! from the run seed and the step number).

use crate::schedule::{ddpm_loss, Schedule};
use crate::unet::CondUNet;
use rustworthy_core::progress::check_interrupt;
use rustworthy_core::seed::derive;
use rustworthy_core::{fsutil, validate, Error, Result};
use rustworthy_data::{epoch_order, Dataset};
use rustworthy_train::optim::{OptimConfig, Optimizer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The training recipe (defaults: the reference's CIFAR-10 recipe, 800k steps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdpmTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Adam learning rate (constant, no warm-up, as the reference).
    pub lr: f64,
    /// Global gradient-norm clipping threshold (0 turns clipping off).
    pub grad_clip: f64,
    /// EMA decay of the weights kept beside the raw ones (0 turns the EMA off).
    pub ema_rate: f64,
    /// Probability of dropping a label to the null vector.
    pub cond_drop: f64,
    /// Random horizontal flips of the training images.
    pub hflip: bool,
    /// Seed of the data order, flips, timesteps, noise, label drops and dropout.
    pub seed: u64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
}

impl Default for DdpmTrainConfig {
    fn default() -> Self {
        DdpmTrainConfig {
            steps: 800_000,
            batch_size: 128,
            lr: 2e-4,
            grad_clip: 1.0,
            ema_rate: 0.9999,
            cond_drop: 0.1,
            hflip: true,
            seed: 0,
            checkpoint_every: 5000,
        }
    }
}

impl DdpmTrainConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        validate::positive("train.lr", self.lr)?;
        validate::non_negative("train.grad_clip", self.grad_clip)?;
        validate::in_half_open("train.ema_rate", self.ema_rate, 0.0, 1.0)?;
        validate::in_half_open("train.cond_drop", self.cond_drop, 0.0, 1.0)?;
        validate::positive_int("train.batch_size", self.batch_size)?;
        if self.steps == 0 {
            return Err(Error::config("train.steps", "must be >= 1"));
        }
        Ok(())
    }
}

/// Maps images in [0, 1] to the model's [-1, 1].
pub fn to_model_range(x: &Tensor) -> Tensor {
    x * 2.0 - 1.0
}

/// Maps model outputs in [-1, 1] back to [0, 1] (clamped).
pub fn to_unit_range(x: &Tensor) -> Tensor {
    ((x + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// Scales the gradients of `params` so that their global L2 norm is at most `max` (PyTorch's
/// `clip_grad_norm_`: factor `max / (norm + 1e-6)` when below 1); returns the norm before.
pub fn clip_grad_norm(params: &[Tensor], max: f64) -> f64 {
    clip_grad_norm_on_device(params, max).double_value(&[])
}

/// [`clip_grad_norm`] without reading anything back to the host: the norm before clipping comes
/// back as a float64 scalar tensor on the gradients' device, and the factor is applied there
/// (clamped at 1, so gradients below the bound are multiplied by exactly 1: the same values as
/// when they are left alone).
pub fn clip_grad_norm_on_device(params: &[Tensor], max: f64) -> Tensor {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return Tensor::zeros([], (Kind::Double, Device::Cpu));
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().unsqueeze(0)).collect();
    let total = Tensor::cat(&norms, 0).norm().to_kind(Kind::Double);
    if max > 0.0 {
        // In float64 as the host computation was, then applied as float32.
        let coef = (Tensor::full([], max, (Kind::Double, total.device())) / (&total + 1e-6))
            .clamp_max(1.0)
            .to_kind(grads[0].kind());
        tch::no_grad(|| {
            for g in &grads {
                let _ = g.shallow_clone().f_mul_(&coef);
            }
        });
    }
    total
}

/// Sets the gradients of `params` to zero (those that have one).
pub fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// `ema <- rate * ema + (1 - rate) * model`, variable by variable.
pub fn ema_update(ema: &CondUNet, model: &CondUNet, rate: f64) {
    let src = model.vs.variables();
    tch::no_grad(|| {
        for (name, mut e) in ema.vs.variables() {
            if let Some(p) = src.get(&name) {
                let _ = e.f_mul_scalar_(rate);
                let _ = e.f_add_(&(p * (1.0 - rate)));
            }
        }
    });
}

/// One line of the loss history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossPoint {
    /// Steps done.
    pub step: u64,
    /// Mean loss over the steps since the previous point.
    pub loss: f64,
    /// Mean gradient norm (before clipping) over the same steps.
    pub grad_norm: f64,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The step the run resumed from (0 for a fresh run).
    pub resumed_from: u64,
    /// Loss history, one point per `log_every` steps (from the start, across resumes).
    pub history: Vec<LossPoint>,
    /// Seconds of training (across resumes: the runs before the checkpoint and this one).
    pub seconds: f64,
}

/// The checkpoint folder's file.
pub fn checkpoint_file(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// What a checkpoint must have been made with to be resumed: the U-Net, the recipe (but for
/// its length and checkpoint interval) and the data (name, size, classes).
fn resume_key(model: &CondUNet, data: &Dataset, cfg: &DdpmTrainConfig) -> serde_json::Value {
    let mut c = cfg.clone();
    c.steps = 0;
    c.checkpoint_every = 0;
    serde_json::json!({
        "unet": model.config,
        "train": c,
        "data": {"name": data.name, "len": data.len(), "class_counts": data.class_counts()},
    })
}

/// The loss history and seconds up to the checkpoint, kept beside it so a resumed run reports
/// the whole run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    history: Vec<LossPoint>,
    seconds: f64,
}

/// Writes the raw weights, the EMA, the optimizer state and the step into one safetensors file,
/// atomically.
pub fn save_checkpoint(
    dir: &Path,
    model: &CondUNet,
    ema: &CondUNet,
    opt: &Optimizer,
    step: u64,
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in model.named_parameters() {
        named.push((format!("model/{n}"), t.detach()));
    }
    for (n, t) in ema.named_parameters() {
        named.push((format!("ema/{n}"), t.detach()));
    }
    for (n, t) in opt.state_tensors() {
        named.push((format!("optim/{n}"), t.detach()));
    }
    named.push(("meta/step".into(), Tensor::from_slice(&[step as i64])));
    named.push((
        "meta/optim_steps".into(),
        Tensor::from_slice(&[opt.steps() as i64]),
    ));
    let path = checkpoint_file(dir);
    fsutil::atomic_write_with(&path, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })
}

/// Restores a checkpoint written by [`save_checkpoint`]; returns the step it holds.
pub fn load_checkpoint(
    dir: &Path,
    model: &mut CondUNet,
    ema: &mut CondUNet,
    opt: &mut Optimizer,
) -> Result<u64> {
    let path = checkpoint_file(dir);
    let all =
        Tensor::read_safetensors(&path).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    let mut m = Vec::new();
    let mut e = Vec::new();
    let mut o = Vec::new();
    let (mut step, mut osteps) = (None, None);
    for (n, t) in all {
        if let Some(r) = n.strip_prefix("model/") {
            m.push((r.to_string(), t));
        } else if let Some(r) = n.strip_prefix("ema/") {
            e.push((r.to_string(), t));
        } else if let Some(r) = n.strip_prefix("optim/") {
            o.push((r.to_string(), t));
        } else if n == "meta/step" || n == "meta/optim_steps" {
            if t.numel() != 1 || t.kind() != Kind::Int64 {
                return Err(Error::checkpoint(
                    &path,
                    format!("{n} must be one int64, got {:?} {:?}", t.kind(), t.size()),
                ));
            }
            let v = t.int64_value(&[0]);
            if v < 0 {
                return Err(Error::checkpoint(&path, format!("{n} is negative ({v})")));
            }
            if n == "meta/step" {
                step = Some(v);
            } else {
                osteps = Some(v);
            }
        }
    }
    let (Some(step), Some(osteps)) = (step, osteps) else {
        return Err(Error::checkpoint(
            &path,
            "no meta/step entry: not a DDPM training checkpoint",
        ));
    };
    model.load_tensors(&m, &path.display().to_string())?;
    ema.load_tensors(&e, &path.display().to_string())?;
    opt.load_state(o, osteps as u64)
        .map_err(|err| Error::checkpoint(&path, err.to_string()))?;
    Ok(step as u64)
}

/// Adam as the reference configures it (betas 0.9/0.999, eps 1e-8, no weight decay) over every
/// variable of `model`.
pub fn adam_for(model: &CondUNet) -> Result<Optimizer> {
    Optimizer::new(
        OptimConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        model.named_parameters(),
    )
}

/// A batch of `idx` from `data` in the model's range, flipped per sample when `hflip` (the flip
/// draws come from libtorch's generator, seeded per step by the caller).
pub fn model_batch(data: &Dataset, idx: &[usize], hflip: bool) -> Result<(Tensor, Tensor)> {
    let (x, y) = data.try_batch(idx)?;
    let x = to_model_range(&x);
    let x = if hflip {
        let flip = Tensor::rand([idx.len() as i64, 1, 1, 1], (Kind::Float, x.device())).lt(0.5);
        x.flip([3]).where_self(&flip, &x)
    } else {
        x
    };
    Ok((x, y))
}

/// Trains `model` (and its EMA `ema`) on `data` (images in [0, 1]) with `cfg`. With `ckpt_dir`,
/// a checkpoint there is resumed and a new one written every `checkpoint_every` steps and at the
/// end. `log_every` sets the loss history's resolution; `on_log` sees each point.
pub fn train_ddpm(
    model: &mut CondUNet,
    ema: &mut CondUNet,
    data: &Dataset,
    cfg: &DdpmTrainConfig,
    ckpt_dir: Option<&Path>,
    log_every: u64,
    mut on_log: impl FnMut(&LossPoint),
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if data.is_empty() {
        return Err(Error::invalid("DDPM training: the dataset is empty"));
    }
    let (_, h, w) = {
        let (c, h, w) = data.image_shape();
        (c, h as i64, w as i64)
    };
    let mc = &model.config;
    if data.image_shape().0 as i64 != mc.in_channels || h != mc.resolution || w != mc.resolution {
        return Err(Error::Shape {
            op: "DDPM training data".into(),
            expected: format!(
                "[N, {}, {}, {}]",
                mc.in_channels, mc.resolution, mc.resolution
            ),
            got: data.images.size(),
        });
    }
    if data.num_classes as i64 > mc.num_classes {
        return Err(Error::invalid(format!(
            "the data have {} classes, the model {}",
            data.num_classes, mc.num_classes
        )));
    }
    let sched = Schedule::reference(model.device());
    let mut opt = adam_for(model)?;
    let mut start = 0;
    let mut before = Progress::default();
    let key = resume_key(model, data, cfg);
    if let Some(dir) = ckpt_dir {
        let key_path = dir.join("resume_key.json");
        if checkpoint_file(dir).exists() {
            let text = std::fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?;
            let old: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::corrupt(&key_path, e.to_string()))?;
            if old != key {
                return Err(Error::checkpoint(
                    dir,
                    "this checkpoint was made with another model, recipe or dataset; resume with \
                     the same settings or train into another folder",
                ));
            }
            start = load_checkpoint(dir, model, ema, &mut opt)?;
            if start > cfg.steps {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "the checkpoint is at step {start}, past the {} steps asked for",
                        cfg.steps
                    ),
                ));
            }
            let pp = dir.join("progress.json");
            if pp.exists() {
                let text = std::fs::read_to_string(&pp).map_err(|e| Error::io(&pp, e))?;
                before =
                    serde_json::from_str(&text).map_err(|e| Error::corrupt(&pp, e.to_string()))?;
                before.history.retain(|p| p.step <= start);
            }
        } else {
            ema.copy_from(model)?;
            fsutil::write_json_atomic(&key_path, &key)?;
        }
    } else {
        ema.copy_from(model)?;
    }
    let params: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let n = data.len();
    let bs = cfg.batch_size.min(n);
    let per_epoch = (n / bs).max(1) as u64;
    let t0 = Instant::now();
    let mut history = before.history.clone();
    // The loss and gradient-norm sums stay on the device and are read when a loss point or a
    // checkpoint is due (and at the end), so a step does not wait for the host. A non-finite
    // loss is caught there, before anything is logged or saved.
    let dev = params.first().map_or(Device::Cpu, |p| p.device());
    let zero = || Tensor::zeros([], (Kind::Double, dev));
    let (mut acc, mut acc_g, mut cnt) = (zero(), zero(), 0u64);
    let mut checked = start;
    let log_every = log_every.max(1);
    for step in start..cfg.steps {
        check_interrupt()?;
        let epoch = step / per_epoch;
        let within = (step % per_epoch) as usize;
        let order = epoch_order(n, true, cfg.seed, epoch);
        let idx = &order[within * bs..(within + 1) * bs];
        tch::manual_seed(derive(cfg.seed, "ddpm-train-step", step) as i64);
        let (x, y) = model_batch(data, idx, cfg.hflip)?;
        let t = sched.antithetic_t(bs as i64, x.device());
        let e = x.randn_like();
        opt.zero_grad();
        let loss = ddpm_loss(model, &sched, &x, &t, &e, &y, cfg.cond_drop, true)?;
        acc += loss.detach().to_kind(Kind::Double);
        loss.backward();
        acc_g += clip_grad_norm_on_device(&params, cfg.grad_clip);
        opt.step(cfg.lr)?;
        if cfg.ema_rate > 0.0 {
            ema_update(ema, model, cfg.ema_rate);
        }
        cnt += 1;
        let done = step + 1;
        let log_due = done % log_every == 0 || done == cfg.steps;
        let every = cfg.checkpoint_every;
        let save_due =
            ckpt_dir.is_some() && ((every > 0 && done % every == 0) || done == cfg.steps);
        if log_due || save_due {
            // One read for both sums.
            let sums: Vec<f64> = Vec::try_from(Tensor::stack(&[&acc, &acc_g], 0))?;
            if !sums[0].is_finite() {
                return Err(Error::Numerical(format!(
                    "DDPM training loss became {} between steps {} and {done}; lower train.lr \
                     (now {}) or check the data",
                    sums[0],
                    checked + 1,
                    cfg.lr
                )));
            }
            checked = done;
            if log_due {
                let p = LossPoint {
                    step: done,
                    loss: sums[0] / cnt as f64,
                    grad_norm: sums[1] / cnt as f64,
                };
                on_log(&p);
                history.push(p);
                (acc, acc_g, cnt) = (zero(), zero(), 0);
            }
        }
        if let Some(dir) = ckpt_dir {
            if save_due {
                // The progress first: a checkpoint never has less history than its step.
                let p = Progress {
                    history: history.clone(),
                    seconds: before.seconds + t0.elapsed().as_secs_f64(),
                };
                fsutil::write_json_atomic(&dir.join("progress.json"), &p)?;
                save_checkpoint(dir, model, ema, &opt, done)?;
            }
        }
    }
    if cfg.ema_rate == 0.0 {
        ema.copy_from(model)?;
    }
    Ok(TrainOutcome {
        resumed_from: start,
        history,
        seconds: before.seconds + t0.elapsed().as_secs_f64(),
    })
}
