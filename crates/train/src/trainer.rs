//! The training loop. Every epoch draws its randomness (shuffle order, augmentation, libtorch's
//! generator) from streams derived from the run seed and the epoch number, so an interrupted run
//! resumed from its last checkpoint replays exactly what an uninterrupted run would have done.

use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::eval::{evaluate, EvalResult};
use crate::optim::{OptimConfig, OptimImpl, Optimizer};
use crate::schedule::ScheduleConfig;
use rustworthy_core::progress::{emit_json, Progress, ProgressMode};
use rustworthy_core::seed::derive;
use rustworthy_core::validate;
use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::augment::Augment;
use rustworthy_data::dataset::{epoch_order, Dataset};
use rustworthy_models::{Exec, Model, Precision};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Hyperparameters of a supervised training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs, >= 1.
    pub epochs: usize,
    /// Training batch size, >= 1.
    pub batch_size: usize,
    /// Batch size for validation (default 1000).
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Optimizer and its hyperparameters.
    pub optim: OptimConfig,
    /// Learning rate and its schedule.
    pub lr: ScheduleConfig,
    /// On-device augmentation of training batches (default none).
    #[serde(default)]
    pub augment: Augment,
    /// Drop the last incomplete batch of each epoch.
    #[serde(default)]
    pub drop_last: bool,
    /// Seed of the training randomness (shuffle, augmentation, libtorch's generator).
    pub seed: u64,
    /// Precision of forward passes: `fp32` (default) or `bf16` autocast (PyTorch AMP).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Convolution weights and inputs in channels-last memory order (default off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channels_last: bool,
    /// How SGD, Adam and AdamW apply updates: `auto` (default: fused kernels on CUDA, the loop
    /// on the CPU), `loop` or `fused`.
    #[serde(default, skip_serializing_if = "OptimImpl::is_auto")]
    pub optim_impl: OptimImpl,
}

fn default_eval_batch() -> usize {
    1000
}

impl TrainConfig {
    /// Adam (betas 0.9/0.999, eps 1e-8, no weight decay) at a constant `lr`, no augmentation,
    /// evaluation batches of 1000: the plain recipe of small helper models (judges, victims).
    pub fn adam_constant(epochs: usize, batch_size: usize, lr: f64, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size,
            eval_batch_size: 1000,
            optim: OptimConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            lr: ScheduleConfig {
                lr,
                schedule: crate::schedule::LrSchedule::Constant,
                warmup_epochs: 0.0,
            },
            augment: Default::default(),
            drop_last: false,
            seed,
            precision: Precision::Fp32,
            channels_last: false,
            optim_impl: OptimImpl::Auto,
        }
    }

    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate::positive_int("epochs", self.epochs)?;
        validate::positive_int("batch_size", self.batch_size)?;
        validate::positive_int("eval_batch_size", self.eval_batch_size)?;
        self.optim.validate()?;
        self.lr.validate(self.epochs)?;
        if self.augment.crop_padding < 0 {
            return Err(Error::config("augment.crop_padding", "must be >= 0"));
        }
        Ok(())
    }
}

/// How a data-parallel run splits the work (see [`crate::ddp`]).
#[derive(Clone, Debug)]
pub struct DistOptions {
    /// The process group; every rank calls `fit` with the same arguments.
    pub group: rustworthy_dist::ProcessGroup,
    /// Batch norm over the whole global batch (exactly what one process computes) instead of
    /// each rank's shard.
    pub sync_batch_norm: bool,
    /// Gradient bucket size in MiB (each bucket is one all-reduce).
    pub bucket_mib: f64,
    /// Gradient compression with error feedback (default none: exact float32 all-reduce).
    pub compression: crate::ddp::Compression,
}

impl DistOptions {
    /// Data-parallel training over `group` with synchronized batch norm and 25 MiB buckets
    /// (DDP's default).
    pub fn new(group: rustworthy_dist::ProcessGroup) -> DistOptions {
        DistOptions {
            group,
            sync_batch_norm: true,
            bucket_mib: 25.0,
            compression: Default::default(),
        }
    }
}

/// Options of one `fit` call that do not change the result.
#[derive(Clone, Debug, Default)]
pub struct FitOptions {
    /// How epochs report their progress.
    pub progress: ProgressMode,
    /// Where to write per-epoch checkpoints (none if `None`).
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
    /// Stop (as if interrupted) after this many completed epochs.
    pub stop_after: Option<usize>,
    /// Data-parallel training over several processes (none: this process alone). With the
    /// same global batch the result equals one process's within float tolerance when batch
    /// norm is synchronized.
    pub dist: Option<DistOptions>,
}

/// One row of the training history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// The epoch number, counted from 1.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Training accuracy over the epoch, in percent.
    pub train_accuracy: f64,
    /// Validation loss after the epoch, if there is a validation set.
    pub val_loss: Option<f64>,
    /// Validation accuracy after the epoch in percent, if there is a validation set.
    pub val_accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch, validation included.
    pub seconds: f64,
    /// Extra per-epoch measurements of a [`TrainHook`] (e.g. robust validation accuracy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// What a [`TrainHook`] decides after an epoch.
#[derive(Clone, Debug, Default)]
pub struct EpochVerdict {
    /// Measurements added to the epoch's [`EpochRecord::extra`].
    pub extra: BTreeMap<String, f64>,
    /// Stop training after this epoch (e.g. catastrophic overfitting with early stopping).
    pub stop: Option<String>,
}

/// Customizes the training step (the loss and its gradients) and observes each epoch. The
/// standard hook is plain cross-entropy; adversarial training supplies its own.
pub trait TrainHook {
    /// Extra configuration that a resumed run must match (stored with the checkpoint).
    fn config(&self) -> Option<serde_json::Value> {
        None
    }
    /// Called once before training with the history so far (non-empty when resuming).
    fn begin(&mut self, _model: &Model, _history: &[EpochRecord]) -> Result<()> {
        Ok(())
    }
    /// Computes the loss on one batch and accumulates the parameter gradients (the trainer has
    /// zeroed them). Returns `(loss, logits)` for the running statistics.
    fn step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Masks to keep fixed during training (pruned entries are zeroed before the first step and
    /// never updated).
    fn masks(&self) -> Option<&crate::mask::Masks> {
        None
    }
    /// Called after each epoch's validation.
    fn end_epoch(&mut self, _model: &mut Model, _epoch: usize) -> Result<EpochVerdict> {
        Ok(EpochVerdict::default())
    }
}

/// Plain cross-entropy training.
pub struct StandardStep;

/// Cross-entropy training of a pruned model: the masks stay fixed.
pub struct MaskedStep<'a>(pub &'a crate::mask::Masks);

impl TrainHook for MaskedStep<'_> {
    fn masks(&self) -> Option<&crate::mask::Masks> {
        Some(self.0)
    }
    fn step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        StandardStep.step(model, x, y)
    }
}

impl TrainHook for StandardStep {
    fn step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = model.forward_t(x, true);
        let loss = out.cross_entropy_for_logits(y);
        if let Err(e) = loss.f_backward() {
            // A synchronized batch norm's collective fails inside the backward pass.
            return Err(rustworthy_dist::take_failure().unwrap_or(Error::Torch(e)));
        }
        Ok((loss, out))
    }
}

/// What `fit` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitOutcome {
    /// Every completed epoch, including those loaded from a checkpoint.
    pub history: Vec<EpochRecord>,
    /// Completed epochs loaded from a checkpoint, if the run resumed.
    pub resumed_from: Option<usize>,
    /// Whether all configured epochs are done (false after `stop_after`).
    pub completed: bool,
    /// Wall-clock seconds of the epochs run by this call.
    pub train_seconds: f64,
    /// Validation of the last epoch run by this call, if any.
    pub last_val: Option<EvalResult>,
    /// Why the hook stopped training early, if it did.
    pub stopped: Option<String>,
    /// What happened on resume worth telling (a damaged latest checkpoint skipped).
    pub resume_notes: Vec<String>,
    /// World size and per-rank timings of a data-parallel run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist: Option<crate::ddp::DistReport>,
}

/// Named trainable parameters of a model in a stable order.
pub fn named_trainable(model: &Model) -> Vec<(String, Tensor)> {
    model.parameters()
}

/// Trains `model` on `train` with cross-entropy, evaluating on `val` after each epoch.
pub fn fit(
    model: &mut Model,
    train: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    opts: &FitOptions,
) -> Result<FitOutcome> {
    fit_with(model, train, val, cfg, opts, &mut StandardStep)
}

/// [`fit`] with a custom training step. A config with bf16 precision or channels-last sets
/// them on the model for the call ([`Model::set_exec`]) and restores the model's own settings
/// after.
pub fn fit_with(
    model: &mut Model,
    train: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    opts: &FitOptions,
    hook: &mut dyn TrainHook,
) -> Result<FitOutcome> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::invalid("training set is empty"));
    }
    let device = model.vs.device();
    if train.device() != device {
        return Err(Error::Device(format!(
            "training data on {:?} but model on {:?}",
            train.device(),
            device
        )));
    }
    let mut opt = Optimizer::new(cfg.optim.clone(), named_trainable(model))?;
    opt.set_impl(cfg.optim_impl);
    let prev_exec = model.exec();
    let run_exec = Exec {
        precision: cfg.precision,
        channels_last: cfg.channels_last,
    };
    if run_exec != Exec::default() {
        model.set_exec(run_exec)?;
    }
    let result = fit_loop(model, train, val, cfg, opts, hook, opt);
    if run_exec != Exec::default() {
        model.set_exec(prev_exec)?;
    }
    result
}

/// The body of [`fit_with`] once the model runs with the config's execution settings.
fn fit_loop(
    model: &mut Model,
    train: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    opts: &FitOptions,
    hook: &mut dyn TrainHook,
    mut opt: Optimizer,
) -> Result<FitOutcome> {
    let device = model.vs.device();
    if let Some(m) = hook.masks() {
        crate::mask::apply_masks(model, m)?;
        // Parameters without a mask stay dense.
        opt.set_masks(&m.for_update(&named_trainable(model)))?;
    }
    let mut cfg_json = serde_json::to_value(cfg)?;
    if let (Some(extra), Some(obj)) = (hook.config(), cfg_json.as_object_mut()) {
        obj.insert("hook".to_string(), extra);
    }
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut start_epoch = 0usize;
    let mut resumed_from = None;
    let mut resume_notes: Vec<String> = Vec::new();
    let ckpt = opts.checkpoint_dir.as_ref().map(Checkpoint::new);
    if let (true, Some(ck)) = (opts.resume, &ckpt) {
        if ck.exists() {
            let meta = ck.restore_or_previous(model, &mut opt, &mut |w| resume_notes.push(w))?;
            model.check_finite(&format!("checkpoint in {}", ck.dir().display()))?;
            if meta.config != cfg_json {
                return Err(Error::checkpoint(
                    ck.dir(),
                    format!(
                        "cannot resume: the checkpoint was made with a different training config ({})",
                        diff_fields(&meta.config, &cfg_json)
                    ),
                ));
            }
            start_epoch = meta.epoch;
            resumed_from = Some(meta.epoch);
            for h in meta.history {
                history.push(serde_json::from_value(h)?);
            }
        }
    }

    let dist = opts.dist.as_ref().filter(|d| d.group.world_size() > 1);
    let mut ddp = match dist {
        Some(d) => Some(crate::ddp::Ddp::new(d, model, train.len(), cfg)?),
        None => None,
    };
    let _sync_bn = dist
        .filter(|d| d.sync_batch_norm)
        .map(|d| rustworthy_dist::SyncBatchNormScope::enter(&d.group));
    hook.begin(model, &history)?;
    let mut stopped = None;
    let n = train.len();
    let steps_per_epoch = if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    };
    if steps_per_epoch == 0 {
        return Err(Error::config(
            "batch_size",
            format!(
                "{} exceeds the {n} training samples with drop_last",
                cfg.batch_size
            ),
        ));
    }
    let t_run = Instant::now();
    let mut last_val = None;
    let end_epoch = match opts.stop_after {
        Some(s) => s.min(cfg.epochs),
        None => cfg.epochs,
    };
    for epoch in start_epoch..end_epoch {
        let t0 = Instant::now();
        let torch_seed = derive(cfg.seed, "torch", epoch as u64);
        rustworthy_core::seed::seed_torch(match &ddp {
            // Other ranks draw their own libtorch randomness (attack starts, dropout).
            Some(d) if d.rank() > 0 => derive(torch_seed, "rank", d.rank() as u64),
            _ => torch_seed,
        });
        // The epoch's order and augmentation go to the device in one copy each; steps slice
        // them there (no transfer and no host synchronization inside the step loop).
        let order = train.order_tensor(&epoch_order(n, true, cfg.seed, epoch as u64))?;
        let mut aug_rng = SeedRng::stream(cfg.seed, "augment", epoch as u64);
        let draws = cfg.augment.draw_epoch(
            (0..steps_per_epoch).map(|s| (n - s * cfg.batch_size).min(cfg.batch_size)),
            &mut aug_rng,
            device,
        )?;
        let bar = Progress::new(
            opts.progress,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
            steps_per_epoch as u64,
        );
        let loss_sum = Tensor::zeros([], (Kind::Float, device));
        let correct = Tensor::zeros([], (Kind::Int64, device));
        let mut seen = 0usize;
        let mut shown = 0u64;
        let mut lr = cfg.lr.lr_at(epoch as f64, cfg.epochs);
        for step in 0..steps_per_epoch {
            rustworthy_core::progress::check_interrupt()?;
            let lo = step * cfg.batch_size;
            let hi = (lo + cfg.batch_size).min(n);
            let (x, y) = train.batch_at(&order.narrow(0, lo as i64, (hi - lo) as i64))?;
            // Augmentation is drawn for the whole global batch, so every sample gets the same
            // draw whatever the world size; each rank then keeps its shard.
            let x = draws.apply(&x, lo)?;
            let (x, y, local) = match &ddp {
                Some(d) => d.shard(&x, &y),
                None => (x, y, hi - lo),
            };
            lr = cfg.lr.lr_at(
                epoch as f64 + step as f64 / steps_per_epoch as f64,
                cfg.epochs,
            );
            opt.zero_grad();
            let stepped = hook.step(model, &x, &y);
            if let Some(e) = rustworthy_dist::take_failure() {
                return Err(e);
            }
            let (loss, out) = stepped?;
            if let Some(d) = ddp.as_mut() {
                // The global loss is the mean over the global batch: this shard's gradient
                // counts with weight local / global.
                d.average_gradients(local as f64 / (hi - lo) as f64)?;
            }
            opt.step(lr)?;
            let bs = local as i64;
            tch::no_grad(|| {
                let _ = loss_sum
                    .shallow_clone()
                    .g_add_(&(loss.detach() * bs as f64));
                let _ = correct
                    .shallow_clone()
                    .g_add_(&out.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64));
            });
            seen += local;
            // Reading the running loss back synchronizes with the device: only a visible
            // progress display does it within the epoch (every 25 steps).
            let refresh = opts.progress != ProgressMode::Quiet
                && (step % 25 == 24 || step + 1 == steps_per_epoch);
            if refresh {
                let l = loss_sum.double_value(&[]) / seen as f64;
                if !l.is_finite() {
                    return Err(Error::Numerical(format!(
                        "training loss became {l} in epoch {} (step {}); lower the learning rate",
                        epoch + 1,
                        step + 1
                    )));
                }
                let a = 100.0 * correct.int64_value(&[]) as f64 / seen as f64;
                let done = step as u64 + 1;
                bar.inc(done - shown, || {
                    format!("loss {l:.4} acc {a:.2}% lr {lr:.4}")
                });
                shown = done;
            }
        }
        let mut totals = [
            loss_sum.double_value(&[]),
            correct.int64_value(&[]) as f64,
            seen as f64,
        ];
        if let Some(d) = &ddp {
            totals = d.sum_over_ranks(totals)?;
        }
        let train_loss = totals[0] / totals[2];
        if !train_loss.is_finite() {
            return Err(Error::Numerical(format!(
                "training loss became {train_loss} in epoch {}; lower the learning rate",
                epoch + 1
            )));
        }
        let train_accuracy = 100.0 * totals[1] / totals[2];
        if let Some(d) = &ddp {
            d.sync_buffers()?;
        }
        let v = match val {
            Some(v) => Some(evaluate(model, v, cfg.eval_batch_size)?),
            None => None,
        };
        let verdict = hook.end_epoch(model, epoch)?;
        // A hook that stops may have restored earlier weights: validate what is kept.
        let v = match (&verdict.stop, val) {
            (Some(_), Some(vd)) => Some(evaluate(model, vd, cfg.eval_batch_size)?),
            _ => v,
        };
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss,
            train_accuracy,
            val_loss: v.as_ref().map(|r| r.loss),
            val_accuracy: v.as_ref().map(|r| r.accuracy),
            seconds: t0.elapsed().as_secs_f64(),
            extra: verdict.extra,
        };
        bar.finish(serde_json::to_value(&rec)?);
        if opts.progress == ProgressMode::Bar {
            let extra: String = rec
                .extra
                .iter()
                .map(|(k, v)| format!("  {k} {v:.2}"))
                .collect();
            eprintln!(
                "epoch {:>3}/{}  loss {:.4}  train {:.2}%{}{}  lr {:.5}  {:.1}s",
                rec.epoch,
                cfg.epochs,
                rec.train_loss,
                rec.train_accuracy,
                rec.val_accuracy
                    .map(|a| format!("  val {a:.2}%"))
                    .unwrap_or_default(),
                extra,
                rec.lr,
                rec.seconds
            );
        }
        history.push(rec);
        last_val = v;
        if let Some(ck) = ckpt
            .as_ref()
            .filter(|_| ddp.as_ref().is_none_or(|d| d.rank() == 0))
        {
            let mut seeds = BTreeMap::new();
            seeds.insert("train".to_string(), cfg.seed);
            let meta = CheckpointMeta {
                format: crate::checkpoint::FORMAT,
                model_spec: model.spec.clone(),
                config: cfg_json.clone(),
                epoch: epoch + 1,
                optimizer_steps: opt.steps(),
                seeds,
                metrics: serde_json::to_value(history.last())?,
                history: history
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<std::result::Result<_, _>>()?,
                model_file: String::new(),
                optim_file: None,
                checksums: Default::default(),
            };
            ck.save(model, &opt, meta)?;
        }
        if let Some(d) = &ddp {
            // No rank runs ahead of rank 0's checkpoint (a resume then finds it complete).
            d.barrier()?;
        }
        if let Some(why) = verdict.stop {
            if opts.progress == ProgressMode::Bar {
                eprintln!("stopping early: {why}");
            }
            stopped = Some(why);
            break;
        }
    }
    if opts.progress == ProgressMode::JsonLines {
        emit_json(
            "fit-done",
            serde_json::json!({"epochs": history.len(), "seconds": t_run.elapsed().as_secs_f64()}),
        );
    }
    let dist_report = match &ddp {
        Some(d) => Some(d.report(t_run.elapsed().as_secs_f64())?),
        None => None,
    };
    Ok(FitOutcome {
        dist: dist_report,
        completed: history.len() >= cfg.epochs || stopped.is_some(),
        stopped,
        history,
        resumed_from,
        resume_notes,
        train_seconds: t_run.elapsed().as_secs_f64(),
        last_val,
    })
}

/// Names the top-level fields in which two JSON configs differ.
fn diff_fields(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let d: Vec<String> = keys
                .into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(|k| format!("`{k}`"))
                .collect();
            format!("differs in {}", d.join(", "))
        }
        _ => "not comparable".to_string(),
    }
}
