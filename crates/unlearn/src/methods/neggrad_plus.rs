//! NegGrad+: every step pairs one retain batch with one forget batch and descends
//! `beta * (CE(retain) + l2_to_original / 2 * ||w - w_0||^2) - (1 - beta) * CE(forget)`, where
//! `w_0` are the original weights. An epoch is one pass over the retain set; forget batches
//! cycle.
//!
//! Reference defaults (the reference notebook's NegGrad+ run): beta 0.95, 10 epochs, lr 0.01,
//! plain SGD (no momentum, no weight decay), the proximal term with coefficient 0.1, retain
//! batch 128 and forget batch 64, batch norm in eval mode, and each epoch replaying its first
//! pass of forget batches (`itertools.cycle`). The `paper` profile keeps the numbers but trains
//! in train mode and reshuffles the forget set each time it is used up.
//!
//! Every field has a default, so a config file only names what it changes.

use super::common::{batches, sgd_loop, CycledBatches, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use tch::{Kind, Tensor};

/// Configuration of NegGrad+; every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegGradPlusConfig {
    /// Passes over the retain set (default 10).
    pub epochs: usize,
    /// Learning rate (default 0.01).
    pub lr: f64,
    /// Retain batch size.
    pub batch_size: usize,
    /// Forget batch size.
    pub forget_batch_size: usize,
    /// SGD momentum (default 0).
    pub momentum: f64,
    /// SGD weight decay (default 0).
    pub weight_decay: f64,
    /// Cosine-decay the learning rate to 0 over the run (else constant).
    pub cosine: bool,
    /// Weight of the retain loss; the forget loss gets `1 - beta`.
    pub beta: f64,
    /// Coefficient of the pull towards the original weights, `/2 * ||w - w_0||^2`, inside the
    /// retain term (0 disables it).
    pub l2_to_original: f64,
    /// Run batch norm in eval mode during the updates (as the reference notebook does, the
    /// default); else training mode.
    pub bn_eval: bool,
    /// Within an epoch, replay the epoch's first shuffled pass of forget batches whenever it is
    /// used up (the reference's `itertools.cycle`, the default); else reshuffle each pass.
    pub replay_forget: bool,
}

impl Default for NegGradPlusConfig {
    fn default() -> Self {
        NegGradPlusConfig {
            epochs: 10,
            lr: 0.01,
            batch_size: 128,
            forget_batch_size: 64,
            momentum: 0.0,
            weight_decay: 0.0,
            cosine: false,
            beta: 0.95,
            l2_to_original: 0.1,
            bn_eval: true,
            replay_forget: true,
        }
    }
}

impl NegGradPlusConfig {
    /// The optimisation recipe part of the config.
    pub fn run(&self) -> RunConfig {
        RunConfig {
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch_size,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            cosine: self.cosine,
        }
    }

    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<NegGradPlus> {
        self.run().validate("neggrad-plus.")?;
        validate::positive_int("neggrad-plus.forget_batch_size", self.forget_batch_size)?;
        validate::in_range("neggrad-plus.beta", self.beta, 0.0, 1.0)?;
        validate::non_negative("neggrad-plus.l2_to_original", self.l2_to_original)?;
        Ok(NegGradPlus { cfg: self })
    }
}

/// The runnable NegGrad+ method.
pub struct NegGradPlus {
    cfg: NegGradPlusConfig,
}

impl Unlearner for NegGradPlus {
    fn name(&self) -> &'static str {
        "neggrad-plus"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        let run = cfg.run();
        let stream = "neggrad-plus";
        let retain = &ctx.data.retain;
        if retain.is_empty() {
            return Err(Error::invalid(format!("{stream}: the retain set is empty")));
        }
        let mut forget = CycledBatches::new(
            &ctx.data.forget,
            cfg.forget_batch_size,
            ctx.seed,
            &format!("{stream}-forget"),
        )?;
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let originals: Vec<Tensor> = if cfg.l2_to_original > 0.0 {
            tch::no_grad(|| params.iter().map(|p| p.detach().copy()).collect())
        } else {
            Vec::new()
        };
        let train = !cfg.bn_eval;
        let mut opt = run.optimizer(model, ctx)?;
        let plan = RefCell::new(Vec::<Vec<usize>>::new());
        let forget_plan = RefCell::new(Vec::<Vec<usize>>::new());
        let m: &Model = model;
        let steps = sgd_loop(
            &mut opt,
            &run,
            ctx,
            stream,
            |epoch| {
                let b = batches(retain, run.batch_size, ctx.seed, stream, epoch);
                let n = b.len();
                *plan.borrow_mut() = b;
                if cfg.replay_forget {
                    *forget_plan.borrow_mut() = batches(
                        &ctx.data.forget,
                        cfg.forget_batch_size,
                        ctx.seed,
                        &format!("{stream}-forget"),
                        epoch,
                    );
                }
                Ok(n)
            },
            |_, i| {
                let (xr, yr) = retain.try_batch(&plan.borrow()[i])?;
                let (xf, yf) = if cfg.replay_forget {
                    let fp = forget_plan.borrow();
                    ctx.data.forget.try_batch(&fp[i % fp.len()])?
                } else {
                    forget.next_batch()?
                };
                let ce = m.forward_t(&xr, train).cross_entropy_for_logits(&yr);
                let retain_loss = if cfg.l2_to_original > 0.0 {
                    let parts: Vec<Tensor> = params
                        .iter()
                        .zip(&originals)
                        .map(|(p, o)| (p - o).square().sum(Kind::Float))
                        .collect();
                    ce + Tensor::stack(&parts, 0).sum(Kind::Float) * (cfg.l2_to_original / 2.0)
                } else {
                    ce
                };
                let forget_loss = m.forward_t(&xf, train).cross_entropy_for_logits(&yf);
                // Two batches of different sizes: every rank computes the whole step (the
                // same on each), weighted so the ranks' gradients sum to the step's.
                let loss = retain_loss * cfg.beta - forget_loss * (1.0 - cfg.beta);
                Ok(loss * super::common::replicated_weight(ctx))
            },
        )?;
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::Value::Null,
        })
    }
}
