//! SCRUB: the model (student) moves away from the original model (teacher, frozen, eval mode)
//! on the forget set while staying close to it on the retain set. Each epoch: if
//! `epoch < msteps`, one max-pass over the forget set ascending
//! `KL_T(teacher || student)`; then one min-pass over the retain set descending
//! `alpha * KL_T(teacher || student) + gamma * CE`. `KL_T` is the distillation divergence at
//! temperature `T` (scaled by `T^2`). The student's batch norm runs in training mode in both
//! passes; one optimizer (and momentum buffer) serves both.
//!
//! The teacher is the model as it is when the run starts. Its eval-mode logits are deterministic,
//! so they are computed once for both sets instead of keeping a second network.
//!
//! Reference defaults (CIFAR-10, ResNet-18): 3 epochs, msteps 2, T 4, alpha 0.001, gamma 0.99,
//! SGD lr 5e-4, momentum 0.9, weight decay 5e-4, retain batch 256, forget batch 512, constant
//! learning rate.

use super::common::{batches, distill_kl, sgd_loop, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use rustworthy_train::eval::logits;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use tch::Tensor;

/// Configuration of SCRUB (teacher-student distillation away from the forget set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubConfig {
    /// The recipe; `batch_size` is the retain (min-pass) batch size.
    #[serde(flatten)]
    pub run: RunConfig,
    /// Batch size of the max-pass over the forget set.
    #[serde(default = "default_forget_batch")]
    pub forget_batch_size: usize,
    /// Number of leading epochs that include a max-pass.
    #[serde(default = "default_msteps")]
    pub msteps: usize,
    /// Distillation temperature T.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Weight of the divergence in the min-pass.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weight of the cross-entropy in the min-pass.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

fn default_forget_batch() -> usize {
    512
}
fn default_msteps() -> usize {
    2
}
fn default_temperature() -> f64 {
    4.0
}
fn default_alpha() -> f64 {
    0.001
}
fn default_gamma() -> f64 {
    0.99
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            run: RunConfig::new(3, 5e-4),
            forget_batch_size: default_forget_batch(),
            msteps: default_msteps(),
            temperature: default_temperature(),
            alpha: default_alpha(),
            gamma: default_gamma(),
        }
    }
}

impl ScrubConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Scrub> {
        self.run.validate("scrub.")?;
        validate::positive_int("scrub.forget_batch_size", self.forget_batch_size)?;
        validate::positive("scrub.temperature", self.temperature)?;
        validate::non_negative("scrub.alpha", self.alpha)?;
        validate::non_negative("scrub.gamma", self.gamma)?;
        if self.alpha == 0.0 && self.gamma == 0.0 {
            return Err(Error::config(
                "scrub.gamma",
                "scrub.alpha and scrub.gamma cannot both be 0 (the min-pass would do nothing)",
            ));
        }
        if self.msteps > self.run.epochs {
            return Err(Error::config(
                "scrub.msteps",
                format!(
                    "must be at most scrub.epochs ({}), got {}",
                    self.run.epochs, self.msteps
                ),
            ));
        }
        Ok(Scrub { cfg: self })
    }
}

/// The runnable SCRUB method.
pub struct Scrub {
    cfg: ScrubConfig,
}

/// One epoch: max-pass batches (forget-set indices) then min-pass batches (retain-set indices).
#[derive(Default)]
struct Plan {
    max: Vec<Vec<usize>>,
    min: Vec<Vec<usize>>,
}

fn index_tensor(idx: &[usize], device: tch::Device) -> Result<Tensor> {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Ok(Tensor::from_slice(&v).f_to_device(device)?)
}

impl Unlearner for Scrub {
    fn name(&self) -> &'static str {
        "scrub"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        let run = &cfg.run;
        let stream = "scrub";
        let forget = &ctx.data.forget;
        let retain = &ctx.data.retain;
        if retain.is_empty() || (cfg.msteps > 0 && forget.is_empty()) {
            return Err(Error::invalid(format!(
                "{stream}: the retain or forget set is empty"
            )));
        }
        let teacher_retain = logits(model, retain, run.batch_size)?;
        let teacher_forget = if cfg.msteps > 0 {
            Some(logits(model, forget, cfg.forget_batch_size)?)
        } else {
            None
        };
        let t = cfg.temperature;
        let plan = RefCell::new(Plan::default());
        let mut opt = run.optimizer(model, ctx)?;
        let m: &Model = model;
        let steps = sgd_loop(
            &mut opt,
            run,
            ctx,
            stream,
            |epoch| {
                let mut p = plan.borrow_mut();
                p.max = if epoch < cfg.msteps {
                    batches(forget, cfg.forget_batch_size, ctx.seed, "scrub-max", epoch)
                } else {
                    Vec::new()
                };
                p.min = batches(retain, run.batch_size, ctx.seed, "scrub-min", epoch);
                Ok(p.max.len() + p.min.len())
            },
            |_, i| {
                let p = plan.borrow();
                if i < p.max.len() {
                    let idx = &p.max[i];
                    let (x, _) = forget.try_batch(idx)?;
                    let teacher = teacher_forget
                        .as_ref()
                        .ok_or_else(|| Error::invalid("scrub: no teacher logits"))?
                        .f_index_select(0, &index_tensor(idx, x.device())?)?;
                    let (rows, w) = super::common::shard_rows(ctx, &[&x, &teacher]);
                    let student = m.forward_t(&rows[0], true);
                    Ok(-distill_kl(&student, &rows[1], t) * w)
                } else {
                    let idx = &p.min[i - p.max.len()];
                    let (x, y) = retain.try_batch(idx)?;
                    let teacher =
                        teacher_retain.f_index_select(0, &index_tensor(idx, x.device())?)?;
                    let (rows, w) = super::common::shard_rows(ctx, &[&x, &y, &teacher]);
                    let student = m.forward_t(&rows[0], true);
                    let kl = distill_kl(&student, &rows[2], t);
                    let ce = student.cross_entropy_for_logits(&rows[1]);
                    Ok((kl * cfg.alpha + ce * cfg.gamma) * w)
                }
            },
        )?;
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::json!({ "max_epochs": cfg.msteps.min(run.epochs) }),
        })
    }
}
