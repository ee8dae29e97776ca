//! RL (random labels): fine-tune on the forget set relabelled at random together with the retain
//! set under its true labels, with cross-entropy. The union is never materialised: every epoch
//! visits a shuffled list of indices into both sets and gathers each batch from its two parts.
//!
//! Reference defaults (CIFAR-10, ResNet-18): 10 epochs, lr 0.013, SGD momentum 0.9, weight decay
//! 5e-4, batch 256, constant learning rate. Random labels are uniform over all classes (the true
//! one included) and drawn afresh every epoch, as the reference code does; both are options.
//! The `reference` profile runs each epoch's forget batches first, then its retain batches (the
//! official CIFAR-10 path); the `paper` profile mixes both sets in one shuffled stream (the
//! paper's joint objective, and the official code before April 2024 and for CIFAR-100).

use super::common::{sgd_loop, try_random_other_labels, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::seed::derive;
use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::dataset::epoch_order;
use rustworthy_models::Model;
use rustworthy_train::Optimizer;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use tch::Tensor;

/// Configuration of RL (random labels on the forget set, true labels on the retain set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    /// The optimisation recipe (reference: 10 epochs at lr 0.013).
    #[serde(flatten)]
    pub run: RunConfig,
    /// Draw each forget sample's label among the classes other than its true one (else uniformly
    /// over all classes, as the reference does).
    #[serde(default)]
    pub exclude_true_label: bool,
    /// Draw new random labels every epoch (the reference's behaviour); else once per run.
    #[serde(default = "default_relabel")]
    pub relabel_each_epoch: bool,
    /// Each epoch, run all forget batches first and then all retain batches (the reference's
    /// CIFAR-10/SVHN code path, the default) instead of one shuffled mix of both sets (its
    /// CIFAR-100 path and the paper's formulation: the `paper` profile).
    #[serde(default = "default_forget_first")]
    pub forget_first: bool,
}

fn default_relabel() -> bool {
    true
}

/// The reference code's order (see [`RlConfig::forget_first`]).
pub(crate) fn default_forget_first() -> bool {
    true
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            run: RunConfig::new(10, 0.013),
            exclude_true_label: false,
            relabel_each_epoch: default_relabel(),
            forget_first: default_forget_first(),
        }
    }
}

impl RlConfig {
    /// Checks the recipe; `prefix` names the method (`rl.`, `salun.`) in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        self.run.validate(prefix)
    }

    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Rl> {
        self.validate("rl.")?;
        Ok(Rl { cfg: self })
    }
}

/// The runnable RL method.
pub struct Rl {
    cfg: RlConfig,
}

impl Unlearner for Rl {
    fn name(&self) -> &'static str {
        "rl"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let mut opt = self.cfg.run.optimizer(model, ctx)?;
        let steps = run_rl(model, &mut opt, &self.cfg, ctx, "rl")?;
        Ok(MethodReport {
            epochs: self.cfg.run.epochs,
            steps,
            extra: serde_json::Value::Null,
        })
    }
}

/// Random labels for the forget set (on its device), drawn from the stream `stream` at `index`.
fn draw_labels(
    cfg: &RlConfig,
    ctx: &UnlearnCtx,
    num_classes: i64,
    stream: &str,
    index: u64,
) -> Result<Tensor> {
    let forget = &ctx.data.forget;
    let mut rng = SeedRng::stream(ctx.seed, &format!("{stream}-labels"), index);
    if cfg.exclude_true_label {
        return try_random_other_labels(&forget.labels, num_classes, &mut rng);
    }
    if num_classes < 1 {
        return Err(Error::invalid(format!(
            "{stream}: the model has {num_classes} classes"
        )));
    }
    let labels: Vec<i64> = (0..forget.len())
        .map(|_| rng.below(num_classes as usize) as i64)
        .collect();
    Ok(Tensor::from_slice(&labels).f_to_device(forget.device())?)
}

/// The batches of one epoch as indices into the union `forget ++ retain` (forget first).
fn epoch_batches(cfg: &RlConfig, ctx: &UnlearnCtx, stream: &str, epoch: usize) -> Vec<Vec<usize>> {
    let nf = ctx.data.forget.len();
    let nr = ctx.data.retain.len();
    let bs = cfg.run.batch_size;
    let seed = derive(ctx.seed, stream, 0);
    if cfg.forget_first {
        let f = epoch_order(nf, true, derive(seed, "forget", 0), epoch as u64);
        let r = epoch_order(nr, true, derive(seed, "retain", 0), epoch as u64);
        let mut out: Vec<Vec<usize>> = f.chunks(bs).map(|c| c.to_vec()).collect();
        out.extend(
            r.chunks(bs)
                .map(|c| c.iter().map(|&i| i + nf).collect::<Vec<usize>>()),
        );
        out
    } else {
        epoch_order(nf + nr, true, seed, epoch as u64)
            .chunks(bs)
            .map(|c| c.to_vec())
            .collect()
    }
}

/// The RL loop shared by RL and SalUn: `opt` (masked or not) drives the updates. Returns the
/// number of optimizer steps.
pub(crate) fn run_rl(
    model: &Model,
    opt: &mut Optimizer,
    cfg: &RlConfig,
    ctx: &UnlearnCtx,
    stream: &str,
) -> Result<u64> {
    let forget = &ctx.data.forget;
    let retain = &ctx.data.retain;
    if forget.is_empty() {
        return Err(Error::invalid(format!("{stream}: the forget set is empty")));
    }
    let nf = forget.len();
    let num_classes = model.spec.num_classes;
    let device = forget.device();
    let state = RefCell::new((Vec::<Vec<usize>>::new(), Tensor::new()));
    sgd_loop(
        opt,
        &cfg.run,
        ctx,
        stream,
        |epoch| {
            let mut st = state.borrow_mut();
            if epoch == 0 || cfg.relabel_each_epoch {
                let index = if cfg.relabel_each_epoch {
                    epoch as u64
                } else {
                    0
                };
                st.1 = draw_labels(cfg, ctx, num_classes, stream, index)?;
            }
            st.0 = epoch_batches(cfg, ctx, stream, epoch);
            Ok(st.0.len())
        },
        |_, i| {
            let st = state.borrow();
            let (fi, ri): (Vec<usize>, Vec<usize>) = st.0[i].iter().partition(|&&j| j < nf);
            let mut xs = Vec::with_capacity(2);
            let mut ys = Vec::with_capacity(2);
            if !fi.is_empty() {
                let (x, _) = forget.try_batch(&fi)?;
                let at: Vec<i64> = fi.iter().map(|&j| j as i64).collect();
                let at = Tensor::from_slice(&at).f_to_device(device)?;
                xs.push(x);
                ys.push(st.1.f_index_select(0, &at)?);
            }
            if !ri.is_empty() {
                let ri: Vec<usize> = ri.iter().map(|&j| j - nf).collect();
                let (x, y) = retain.try_batch(&ri)?;
                xs.push(x.f_to_device(device)?);
                ys.push(y.f_to_device(device)?);
            }
            let x = Tensor::f_cat(&xs, 0)?;
            let y = Tensor::f_cat(&ys, 0)?;
            let (rows, w) = super::common::shard_rows(ctx, &[&x, &y]);
            let loss = model
                .forward_t(&rows[0], true)
                .cross_entropy_for_logits(&rows[1]);
            Ok(if w == 1.0 { loss } else { loss * w })
        },
    )
}
