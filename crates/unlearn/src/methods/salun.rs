//! SalUn (saliency unlearning): RL restricted to the weights most salient to the forget loss.
//!
//! 1. Saliency: the gradient of the forget loss `-CE(D_f)` (batch-mean, summed over one pass of
//!    the forget set, batch norm in eval mode), taken element-wise in absolute value.
//! 2. Mask: the `mask_ratio` share of all trainable entries (every parameter tensor, ranked
//!    globally) with the largest saliency may change; the rest are frozen.
//! 3. RL with that mask: frozen entries stay bit-for-bit unchanged, momentum and weight decay
//!    included (see [`rustworthy_train::optim::Optimizer::set_masks`]).
//!
//! Reference defaults (CIFAR-10, ResNet-18): mask ratio 0.5, then the RL recipe (10 epochs,
//! lr 0.013, SGD momentum 0.9, weight decay 5e-4, batch 256).

use super::common::RunConfig;
use super::rl::{run_rl, RlConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_train::mask::UpdateMasks;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Configuration of SalUn: the saliency mask and the RL recipe it restricts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalunConfig {
    /// Share of all trainable entries that may change, in (0, 1].
    #[serde(default = "default_ratio")]
    pub mask_ratio: f64,
    /// Batch size of the saliency pass (default: the RL batch size).
    #[serde(default)]
    pub saliency_batch_size: Option<usize>,
    /// The RL recipe (see [`RlConfig`]; its fields are repeated here because nested flattening
    /// would defeat the rejection of unknown keys).
    #[serde(flatten)]
    pub run: RunConfig,
    /// See [`RlConfig::exclude_true_label`].
    #[serde(default)]
    pub exclude_true_label: bool,
    /// See [`RlConfig::relabel_each_epoch`].
    #[serde(default = "default_relabel")]
    pub relabel_each_epoch: bool,
    /// See [`RlConfig::forget_first`].
    #[serde(default = "super::rl::default_forget_first")]
    pub forget_first: bool,
}

fn default_ratio() -> f64 {
    0.5
}

fn default_relabel() -> bool {
    RlConfig::default().relabel_each_epoch
}

impl Default for SalunConfig {
    fn default() -> Self {
        SalunConfig::with_rl(default_ratio(), RlConfig::default())
    }
}

fn check_ratio(field: &str, ratio: f64) -> Result<()> {
    validate::finite(field, ratio)?;
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(())
    } else {
        Err(Error::config(
            field,
            format!("must be in (0, 1], got {ratio}"),
        ))
    }
}

impl SalunConfig {
    /// SalUn with mask ratio `ratio` over the RL recipe `rl`.
    pub fn with_rl(ratio: f64, rl: RlConfig) -> Self {
        SalunConfig {
            mask_ratio: ratio,
            saliency_batch_size: None,
            run: rl.run,
            exclude_true_label: rl.exclude_true_label,
            relabel_each_epoch: rl.relabel_each_epoch,
            forget_first: rl.forget_first,
        }
    }

    /// The RL recipe restricted to the mask.
    pub fn rl(&self) -> RlConfig {
        RlConfig {
            run: self.run.clone(),
            exclude_true_label: self.exclude_true_label,
            relabel_each_epoch: self.relabel_each_epoch,
            forget_first: self.forget_first,
        }
    }

    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Salun> {
        check_ratio("salun.mask_ratio", self.mask_ratio)?;
        if let Some(b) = self.saliency_batch_size {
            validate::positive_int("salun.saliency_batch_size", b)?;
        }
        self.rl().validate("salun.")?;
        Ok(Salun { cfg: self })
    }
}

/// The runnable SalUn method.
pub struct Salun {
    cfg: SalunConfig,
}

impl Unlearner for Salun {
    fn name(&self) -> &'static str {
        "salun"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        let rl = cfg.rl();
        let bs = cfg.saliency_batch_size.unwrap_or(rl.run.batch_size);
        let masks = saliency_mask(model, &ctx.data.forget, bs, cfg.mask_ratio)?;
        let (kept, total) = mask_count(&masks)?;
        let mut opt = rl.run.optimizer(model, ctx)?;
        super::common::restrict_to_masks(&mut opt, model, ctx, Some(&masks))?;
        let steps = run_rl(model, &mut opt, &rl, ctx, "salun")?;
        Ok(MethodReport {
            epochs: rl.run.epochs,
            steps,
            extra: serde_json::json!({
                "mask_ratio": cfg.mask_ratio,
                "mask_density": kept as f64 / total as f64,
                "mask_kept": kept,
                "mask_total": total,
            }),
        })
    }
}

/// Number of non-zero entries and of all entries over a set of masks.
pub fn mask_count(masks: &BTreeMap<String, Tensor>) -> Result<(u64, u64)> {
    let mut kept = 0u64;
    let mut total = 0u64;
    for m in masks.values() {
        kept += m.f_count_nonzero(None::<i64>)?.f_int64_value(&[])? as u64;
        total += m.numel() as u64;
    }
    Ok((kept, total))
}

/// Per-entry saliency `|sum over forget batches of grad(-CE)|` of every trainable parameter,
/// with batch norm in eval mode (the model, its statistics and its `.grad` fields are left
/// untouched).
pub fn saliency(
    model: &Model,
    forget: &Dataset,
    batch_size: usize,
) -> Result<BTreeMap<String, Tensor>> {
    validate::positive_int("batch_size", batch_size)?;
    if forget.is_empty() {
        return Err(Error::invalid("saliency: the forget set is empty"));
    }
    let named = model.parameters();
    let params: Vec<Tensor> = named.iter().map(|(_, p)| p.shallow_clone()).collect();
    let mut acc: Vec<Tensor> = params
        .iter()
        .map(|p| p.f_zeros_like())
        .collect::<std::result::Result<_, _>>()?;
    let idx: Vec<usize> = (0..forget.len()).collect();
    for chunk in idx.chunks(batch_size) {
        let (x, y) = forget.try_batch(chunk)?;
        let loss = -model.forward_t(&x, false).cross_entropy_for_logits(&y);
        let l = loss.f_double_value(&[])?;
        if !l.is_finite() {
            return Err(Error::Numerical(format!(
                "saliency: the forget loss is {l}; the model outputs non-finite logits"
            )));
        }
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        tch::no_grad(|| -> Result<()> {
            for (a, g) in acc.iter_mut().zip(&grads) {
                if g.defined() {
                    let _ = a.f_add_(g)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(named
        .into_iter()
        .zip(acc)
        .map(|((n, _), a)| (n, a.abs()))
        .collect())
}

/// The SalUn mask: 1 (may change) for the `ratio` share of all trainable entries with the
/// largest saliency (see [`saliency`]), ranked globally across parameters, 0 elsewhere. Exactly
/// `max(1, floor(ratio * n))` entries are kept; ties are broken by state-dict order, then by
/// position. Masks are float32 on the model's device, keyed by parameter name; every trainable
/// parameter has one.
pub fn saliency_mask(
    model: &Model,
    forget: &Dataset,
    batch_size: usize,
    ratio: f64,
) -> Result<UpdateMasks> {
    check_ratio("mask_ratio", ratio)?;
    let sal = saliency(model, forget, batch_size)?;
    mask_from_scores(model, &sal, ratio)
}

/// Top-`ratio` mask of `scores` (one tensor per trainable parameter of `model`).
pub fn mask_from_scores(
    model: &Model,
    scores: &BTreeMap<String, Tensor>,
    ratio: f64,
) -> Result<UpdateMasks> {
    check_ratio("mask_ratio", ratio)?;
    let named = model.parameters();
    let mut flat = Vec::with_capacity(named.len());
    for (n, p) in &named {
        let s = scores
            .get(n)
            .ok_or_else(|| Error::invalid(format!("saliency mask: no score for `{n}`")))?;
        if s.size() != p.size() {
            return Err(Error::Shape {
                op: format!("saliency score for {n}"),
                expected: format!("{:?}", p.size()),
                got: s.size(),
            });
        }
        flat.push(s.f_to_kind(Kind::Float)?.f_flatten(0, -1)?);
    }
    let all = Tensor::f_cat(&flat, 0)?;
    let n = all.numel() as i64;
    let k = ((n as f64 * ratio).floor() as i64).clamp(1, n);
    let mask = tch::no_grad(|| -> Result<Tensor> {
        let order = all.f_argsort_stable(true, 0, true)?;
        let top = order.f_narrow(0, 0, k)?;
        let mut m = all.f_zeros_like()?;
        let _ = m.f_index_fill_(0, &top, 1.0)?;
        Ok(m)
    })?;
    let mut out = UpdateMasks::new();
    let mut start = 0i64;
    for (name, p) in &named {
        let len = p.numel() as i64;
        let m = mask.f_narrow(0, start, len)?.f_reshape(p.size())?;
        out.insert(name.clone(), m.f_to_device(p.device())?);
        start += len;
    }
    Ok(out)
}
