//! First-order optimizers over named parameters: SGD (momentum, dampening, Nesterov, weight
//! decay), Adam (L2 weight decay), AdamW (decoupled weight decay), and the large-batch
//! optimizers with layer-wise trust ratios: LARS (You et al. 2017) and LAMB (You et al. 2020, as
//! distributed adversarial training uses it).
//!
//! Every optimizer accepts an optional per-parameter mask (1 = may change, 0 = frozen). Masked
//! entries are left bit-for-bit unchanged: their gradient, weight decay and momentum never reach
//! them, because the new value is selected with `where(mask, new, old)` instead of being added
//! as a zero update (which would still turn a NaN update into NaN and touch -0.0).
//!
//! SGD, Adam and AdamW have two implementations ([`OptimImpl`]): a loop of a few tensor ops per
//! parameter, and libtorch's fused multi-tensor kernels (one kernel per step for all
//! parameters). They agree within float rounding; masks keep masked entries exact in both. The
//! default picks the fused kernels on CUDA, where per-tensor launches dominate small models,
//! and the loop on the CPU, where it reproduces earlier CPU results bit for bit.

use rustworthy_core::validate;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Optimizer hyperparameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimConfig {
    /// Stochastic gradient descent with momentum (PyTorch's `SGD`).
    Sgd {
        /// Momentum factor in [0, 1) (default 0.9).
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Dampening of the momentum in [0, 1] (default 0).
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum (needs momentum > 0 and dampening = 0).
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient (default 0 in a config file; 5e-4 in
        /// `OptimConfig::default()`).
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with L2 weight decay added to the gradient (PyTorch's `Adam`).
    Adam {
        /// Decay of the first-moment estimate in [0, 1) (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Decay of the second-moment estimate in [0, 1) (default 0.999).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Term added to the denominator for stability, > 0 (default 1e-8).
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient (default 0).
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay (PyTorch's `AdamW`).
    Adamw {
        /// Decay of the first-moment estimate in [0, 1) (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Decay of the second-moment estimate in [0, 1) (default 0.999).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Term added to the denominator for stability, > 0 (default 1e-8).
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay, applied to the weights directly (default 0.01).
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
    },
    /// LAMB: the Adam direction plus weight decay, scaled per parameter tensor by the trust
    /// ratio `min(||w||, 10) / ||direction||` (1 when either norm is 0). As the LAMB code used by
    /// distributed adversarial training: no bias correction unless asked, eps 1e-6.
    Lamb {
        /// Decay of the first-moment estimate in [0, 1) (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Decay of the second-moment estimate in [0, 1) (default 0.999).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Term added to the denominator, > 0 (default 1e-6).
        #[serde(default = "default_lamb_eps")]
        eps: f64,
        /// Weight decay added to the direction before the trust ratio (default 0).
        #[serde(default)]
        weight_decay: f64,
        /// Divide the moments by `1 - beta^t` as Adam does (default false).
        #[serde(default)]
        bias_correction: bool,
    },
    /// LARS: SGD with momentum whose step for each parameter tensor is scaled by
    /// `trust * ||w|| / (||g|| + weight_decay * ||w||)`; tensors of one dimension (biases,
    /// batch-norm affine parameters) take plain SGD steps unless `adapt_1d`.
    Lars {
        /// Momentum factor in [0, 1) (default 0.9).
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// L2 penalty added to the gradient (default 0).
        #[serde(default)]
        weight_decay: f64,
        /// Trust coefficient eta, > 0 (default 0.001).
        #[serde(default = "default_lars_trust")]
        trust: f64,
        /// Adapt one-dimensional tensors too (default false).
        #[serde(default)]
        adapt_1d: bool,
    },
}

fn default_lamb_eps() -> f64 {
    1e-6
}
fn default_lars_trust() -> f64 {
    0.001
}

/// LAMB's cap on the weight norm in the trust ratio.
const LAMB_MAX_WEIGHT_NORM: f64 = 10.0;

fn default_momentum() -> f64 {
    0.9
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
        }
    }
}

impl OptimConfig {
    /// Checks every hyperparameter; errors name the field.
    pub fn validate(&self) -> Result<()> {
        match *self {
            OptimConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                validate::in_half_open("optim.momentum", momentum, 0.0, 1.0)?;
                validate::in_range("optim.dampening", dampening, 0.0, 1.0)?;
                validate::non_negative("optim.weight_decay", weight_decay)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::config(
                        "optim.nesterov",
                        "Nesterov momentum needs momentum > 0 and dampening = 0",
                    ));
                }
            }
            OptimConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimConfig::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimConfig::Lamb {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                validate::in_half_open("optim.beta1", beta1, 0.0, 1.0)?;
                validate::in_half_open("optim.beta2", beta2, 0.0, 1.0)?;
                validate::positive("optim.eps", eps)?;
                validate::non_negative("optim.weight_decay", weight_decay)?;
            }
            OptimConfig::Lars {
                momentum,
                weight_decay,
                trust,
                ..
            } => {
                validate::in_half_open("optim.momentum", momentum, 0.0, 1.0)?;
                validate::non_negative("optim.weight_decay", weight_decay)?;
                validate::positive("optim.trust", trust)?;
            }
        }
        Ok(())
    }
}

/// How SGD, Adam and AdamW apply their update (LAMB and LARS always use the loop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimImpl {
    /// Fused kernels for parameters on CUDA, the loop on the CPU (the default).
    #[default]
    Auto,
    /// A few tensor ops per parameter tensor.
    Loop,
    /// libtorch's fused multi-tensor kernels (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`).
    Fused,
}

impl OptimImpl {
    /// Whether this is the default.
    pub fn is_auto(&self) -> bool {
        *self == OptimImpl::Auto
    }

    /// Parses `auto`, `loop` or `fused`.
    pub fn parse(s: &str) -> Result<OptimImpl> {
        match s {
            "auto" => Ok(OptimImpl::Auto),
            "loop" => Ok(OptimImpl::Loop),
            "fused" => Ok(OptimImpl::Fused),
            _ => Err(Error::config(
                "optim_impl",
                format!("unknown optimizer implementation `{s}` (auto, loop or fused)"),
            )),
        }
    }
}

/// Adam's moment estimates, created at zero on the first step: `m = b1 m + (1 - b1) d`,
/// `v = b2 v + (1 - b2) d^2`.
fn update_moments(bufs: &mut Vec<Tensor>, p: &Tensor, d: &Tensor, beta1: f64, beta2: f64) {
    if bufs.is_empty() {
        bufs.push(p.zeros_like());
        bufs.push(p.zeros_like());
    }
    let (m1, rest) = bufs.split_at_mut(1);
    let _ = m1[0].g_mul_scalar_(beta1);
    let _ = m1[0].g_add_(&(d * (1.0 - beta1)));
    let _ = rest[0].g_mul_scalar_(beta2);
    let _ = rest[0].g_add_(&(d * d * (1.0 - beta2)));
}

/// `num / den` as a 0-dimensional tensor, or 1 where either is 0 (a zero weight or direction
/// takes the unscaled step). Stays on the device: no host synchronization per tensor.
fn trust_ratio(num: &Tensor, den: &Tensor) -> Tensor {
    let ok = num.gt(0.0).logical_and(&den.gt(0.0));
    let r = num / den.clamp_min(f64::MIN_POSITIVE);
    r.where_self(&ok, &r.ones_like())
}

/// Per-parameter optimizer state.
struct Slot {
    name: String,
    param: Tensor,
    mask: Option<Tensor>,
    /// SGD and LARS: [momentum]; Adam, AdamW and LAMB: [m, v].
    bufs: Vec<Tensor>,
}

/// A stateful optimizer over named parameters.
pub struct Optimizer {
    cfg: OptimConfig,
    slots: Vec<Slot>,
    step: u64,
    imp: OptimImpl,
}

impl Optimizer {
    /// Builds an optimizer for the given named trainable parameters.
    pub fn new(cfg: OptimConfig, params: Vec<(String, Tensor)>) -> Result<Self> {
        cfg.validate()?;
        if params.is_empty() {
            return Err(Error::invalid("optimizer: no trainable parameters"));
        }
        let slots = params
            .into_iter()
            .map(|(name, param)| Slot {
                name,
                param,
                mask: None,
                bufs: Vec::new(),
            })
            .collect();
        Ok(Optimizer {
            cfg,
            slots,
            step: 0,
            imp: OptimImpl::Auto,
        })
    }

    /// Chooses how SGD, Adam and AdamW apply their update.
    pub fn set_impl(&mut self, imp: OptimImpl) {
        self.imp = imp;
    }

    /// Whether the next step runs the fused kernels.
    pub fn uses_fused(&self) -> bool {
        let fusable = matches!(
            self.cfg,
            OptimConfig::Sgd { .. } | OptimConfig::Adam { .. } | OptimConfig::Adamw { .. }
        );
        let on_cuda = self
            .slots
            .first()
            .is_some_and(|s| s.param.device().is_cuda());
        fusable
            && match self.imp {
                OptimImpl::Auto => on_cuda,
                OptimImpl::Loop => false,
                OptimImpl::Fused => true,
            }
    }

    /// The hyperparameters this optimizer was built with.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// The optimized parameters with their names, in order.
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.param.shallow_clone()))
            .collect()
    }

    /// Number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Restricts updates to the entries where `masks[name]` is non-zero. Parameters absent from
    /// `masks` are frozen entirely. Masks must have the parameter's shape.
    pub fn set_masks(&mut self, masks: &crate::mask::UpdateMasks) -> Result<()> {
        for s in &mut self.slots {
            let m = match masks.get(&s.name) {
                Some(m) => {
                    if m.size() != s.param.size() {
                        return Err(Error::Shape {
                            op: format!("mask for {}", s.name),
                            expected: format!("{:?}", s.param.size()),
                            got: m.size(),
                        });
                    }
                    m.to_device(s.param.device()).ne(0.0)
                }
                None => Tensor::zeros_like(&s.param).to_kind(Kind::Bool),
            };
            s.mask = Some(m);
        }
        Ok(())
    }

    /// Removes all masks.
    pub fn clear_masks(&mut self) {
        for s in &mut self.slots {
            s.mask = None;
        }
    }

    /// Clears the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Applies one update with learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        validate::finite("lr", lr)?;
        if self.uses_fused() {
            self.step += 1;
            return tch::no_grad(|| self.step_fused(lr));
        }
        self.step += 1;
        let t = self.step as f64;
        let cfg = self.cfg.clone();
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let p = &s.param;
                let new = match cfg {
                    OptimConfig::Sgd {
                        momentum,
                        dampening,
                        nesterov,
                        weight_decay,
                    } => {
                        let mut d = if weight_decay > 0.0 {
                            &g + p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if let Some(m) = &s.mask {
                            d = d.where_self(m, &d.zeros_like());
                        }
                        if momentum > 0.0 {
                            if s.bufs.is_empty() {
                                // PyTorch semantics: the first buffer is the raw gradient.
                                s.bufs.push(d.detach().copy());
                            } else {
                                let b = &mut s.bufs[0];
                                let _ = b.g_mul_scalar_(momentum);
                                let _ = b.g_add_(&(&d * (1.0 - dampening)));
                            }
                            let b = &s.bufs[0];
                            d = if nesterov {
                                &d + b * momentum
                            } else {
                                b.shallow_clone()
                            };
                        }
                        p - d * lr
                    }
                    OptimConfig::Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    }
                    | OptimConfig::Adamw {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    } => {
                        let decoupled = matches!(cfg, OptimConfig::Adamw { .. });
                        let mut d = if weight_decay > 0.0 && !decoupled {
                            &g + p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if let Some(m) = &s.mask {
                            d = d.where_self(m, &d.zeros_like());
                        }
                        update_moments(&mut s.bufs, p, &d, beta1, beta2);
                        let bc1 = 1.0 - beta1.powf(t);
                        let bc2 = 1.0 - beta2.powf(t);
                        let denom = (&s.bufs[1] / bc2).sqrt() + eps;
                        let upd = (&s.bufs[0] / bc1) / denom;
                        let base = if decoupled && weight_decay > 0.0 {
                            p * (1.0 - lr * weight_decay)
                        } else {
                            p.shallow_clone()
                        };
                        base - upd * lr
                    }
                    OptimConfig::Lamb {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                        bias_correction,
                    } => {
                        let mut d = g.shallow_clone();
                        if let Some(m) = &s.mask {
                            d = d.where_self(m, &d.zeros_like());
                        }
                        update_moments(&mut s.bufs, p, &d, beta1, beta2);
                        let (bc1, bc2) = if bias_correction {
                            (1.0 - beta1.powf(t), 1.0 - beta2.powf(t))
                        } else {
                            (1.0, 1.0)
                        };
                        let mut dir = (&s.bufs[0] / bc1) / ((&s.bufs[1] / bc2).sqrt() + eps);
                        if weight_decay > 0.0 {
                            dir = &dir + p * weight_decay;
                        }
                        if let Some(m) = &s.mask {
                            dir = dir.where_self(m, &dir.zeros_like());
                        }
                        let ratio =
                            trust_ratio(&p.norm().clamp_max(LAMB_MAX_WEIGHT_NORM), &dir.norm());
                        p - dir * ratio * lr
                    }
                    OptimConfig::Lars {
                        momentum,
                        weight_decay,
                        trust,
                        adapt_1d,
                    } => {
                        let mut d = if weight_decay > 0.0 {
                            &g + p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if let Some(m) = &s.mask {
                            d = d.where_self(m, &d.zeros_like());
                        }
                        if adapt_1d || p.dim() > 1 {
                            let wn = p.norm();
                            let denom = g.norm() + &wn * weight_decay;
                            d = &d * trust_ratio(&(wn * trust), &denom);
                        }
                        if momentum > 0.0 {
                            if s.bufs.is_empty() {
                                s.bufs.push(d.detach().copy());
                            } else {
                                let b = &mut s.bufs[0];
                                let _ = b.g_mul_scalar_(momentum);
                                let _ = b.g_add_(&d);
                            }
                            d = s.bufs[0].shallow_clone();
                        }
                        p - d * lr
                    }
                };
                let new = match &s.mask {
                    Some(m) => new.where_self(m, p),
                    None => new,
                };
                let mut pm = p.shallow_clone();
                pm.copy_(&new);
            }
        });
        Ok(())
    }

    /// One step of SGD, Adam or AdamW through the fused kernels. Masked parameters take the
    /// same update as in the loop: their gradient (with weight decay folded in, so that the
    /// kernel's decay cannot reach masked entries through the momentum or the moments) is zero
    /// where the mask is, and their masked entries are restored after the kernel.
    fn step_fused(&mut self, lr: f64) -> Result<()> {
        let any_mask = self.slots.iter().any(|s| s.mask.is_some());
        let (wd, decoupled) = match self.cfg {
            OptimConfig::Sgd { weight_decay, .. } | OptimConfig::Adam { weight_decay, .. } => {
                (weight_decay, false)
            }
            OptimConfig::Adamw { weight_decay, .. } => (weight_decay, true),
            _ => {
                return Err(Error::invalid(
                    "fused kernels exist for SGD, Adam and AdamW only",
                ))
            }
        };
        // Coupled decay goes into the gradient here when a mask must hide it.
        let fold_wd = any_mask && !decoupled && wd > 0.0;
        let kernel_wd = if fold_wd { 0.0 } else { wd };
        let mut params = Vec::new();
        let mut grads = Vec::new();
        let mut fresh = Vec::new();
        let mut restore = Vec::new();
        let momentum = match self.cfg {
            OptimConfig::Sgd { momentum, .. } => momentum,
            _ => 0.0,
        };
        let adam = !matches!(self.cfg, OptimConfig::Sgd { .. });
        for (i, s) in self.slots.iter_mut().enumerate() {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            let mut g = if fold_wd { &g + &s.param * wd } else { g };
            if let Some(m) = &s.mask {
                g = g.where_self(m, &g.zeros_like());
                restore.push((i, s.param.copy()));
            }
            let need = if adam { 2 } else { usize::from(momentum > 0.0) };
            fresh.push(s.bufs.len() < need);
            while s.bufs.len() < need {
                s.bufs.push(s.param.zeros_like());
            }
            params.push(i);
            grads.push(g);
        }
        if params.is_empty() {
            return Ok(());
        }
        let p: Vec<Tensor> = params
            .iter()
            .map(|&i| self.slots[i].param.shallow_clone())
            .collect();
        let buf = |k: usize| -> Vec<Tensor> {
            params
                .iter()
                .map(|&i| self.slots[i].bufs[k].shallow_clone())
                .collect()
        };
        match self.cfg {
            OptimConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                ..
            } => {
                let bufs = if momentum > 0.0 { buf(0) } else { Vec::new() };
                // PyTorch's first step copies the gradient into a fresh buffer: run the
                // fresh and the warm buffers as two groups.
                for first in [true, false] {
                    let pick = |v: &[Tensor]| -> Vec<Tensor> {
                        v.iter()
                            .zip(&fresh)
                            .filter(|(_, f)| **f == first || momentum == 0.0)
                            .map(|(t, _)| t.shallow_clone())
                            .collect()
                    };
                    if momentum == 0.0 && first {
                        continue;
                    }
                    let bs = if momentum > 0.0 {
                        pick(&bufs)
                    } else {
                        Vec::new()
                    };
                    rustworthy_accel::fused_sgd(
                        &pick(&p),
                        &pick(&grads),
                        &bs,
                        kernel_wd,
                        momentum,
                        lr,
                        dampening,
                        nesterov,
                        first,
                    )?;
                }
            }
            OptimConfig::Adam {
                beta1, beta2, eps, ..
            }
            | OptimConfig::Adamw {
                beta1, beta2, eps, ..
            } => {
                let step = Tensor::full([], self.step as f64, (Kind::Float, p[0].device()));
                rustworthy_accel::fused_adam(
                    &p,
                    &grads,
                    &buf(0),
                    &buf(1),
                    &step,
                    lr,
                    beta1,
                    beta2,
                    kernel_wd,
                    eps,
                    decoupled,
                )?;
            }
            _ => unreachable!("checked above"),
        }
        for (i, old) in restore {
            let s = &self.slots[i];
            if let Some(m) = &s.mask {
                let kept = s.param.where_self(m, &old);
                let mut pm = s.param.shallow_clone();
                pm.copy_(&kept);
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            for (i, b) in s.bufs.iter().enumerate() {
                out.push((format!("{}::{i}", s.name), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<()> {
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        for s in &mut self.slots {
            s.bufs.clear();
            for i in 0.. {
                match by_name.remove(&format!("{}::{i}", s.name)) {
                    Some(t) => {
                        if t.size() != s.param.size() {
                            return Err(Error::invalid(format!(
                                "optimizer state for {} has shape {:?}, parameter has {:?}",
                                s.name,
                                t.size(),
                                s.param.size()
                            )));
                        }
                        s.bufs.push(t.to_device(s.param.device()));
                    }
                    None => break,
                }
            }
        }
        if let Some(k) = by_name.keys().next() {
            return Err(Error::invalid(format!(
                "optimizer state has an entry `{k}` for no parameter"
            )));
        }
        self.step = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad_params() -> (Tensor, Vec<(String, Tensor)>) {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).set_requires_grad(true);
        (w.shallow_clone(), vec![("w".to_string(), w)])
    }

    fn grad_step(opt: &mut Optimizer, w: &Tensor, lr: f64) {
        opt.zero_grad();
        let loss = (w * w).sum(Kind::Float);
        loss.backward();
        opt.step(lr).unwrap();
    }

    #[test]
    fn sgd_matches_hand_computation() {
        // w <- w - lr * (2w + wd*w), momentum buffer starts at the first gradient.
        let (w, params) = quad_params();
        let cfg = OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(cfg, params).unwrap();
        grad_step(&mut opt, &w, 0.1);
        // g = 2.1 w0 ; w1 = w0 - 0.1*2.1 w0 = 0.79 w0
        let w1: Vec<f32> = Vec::try_from(&w).unwrap();
        assert!((w1[0] - 0.79).abs() < 1e-6, "{w1:?}");
        grad_step(&mut opt, &w, 0.1);
        // b = 0.9*2.1 w0 + 2.1 w1 ; w2 = w1 - 0.1 b
        let expect = 0.79 - 0.1 * (0.9 * 2.1 + 2.1 * 0.79);
        let w2: Vec<f32> = Vec::try_from(&w).unwrap();
        assert!((w2[0] - expect as f32).abs() < 1e-6, "{w2:?} vs {expect}");
    }

    #[test]
    fn lamb_and_lars_first_steps_match_hand_computation() {
        // LAMB, step 1, no bias correction: the direction is (1-b1)/sqrt(1-b2) * sign(g) (eps
        // aside); the trust ratio rescales it to norm ||w|| (< 10 here): w - lr*||w||/2*sign(w).
        let (w, params) = quad_params();
        let w0 = Vec::<f32>::try_from(&w).unwrap();
        let norm = w0.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
        let mut opt = Optimizer::new(
            OptimConfig::Lamb {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-6,
                weight_decay: 0.0,
                bias_correction: false,
            },
            params,
        )
        .unwrap();
        grad_step(&mut opt, &w, 0.1);
        for (a, b) in Vec::<f32>::try_from(&w).unwrap().iter().zip(&w0) {
            let want = *b as f64 - 0.1 * norm / 2.0 * (*b as f64).signum();
            assert!((*a as f64 - want).abs() < 1e-4, "{a} vs {want}");
        }
        // LARS, step 1: g = 2w, local rate trust*||w||/||g|| = trust/2, so w <- w(1 - lr*trust).
        let (w, params) = quad_params();
        let cfg = OptimConfig::Lars {
            momentum: 0.9,
            weight_decay: 0.0,
            trust: 0.02,
            adapt_1d: true,
        };
        let mut opt = Optimizer::new(cfg, params).unwrap();
        grad_step(&mut opt, &w, 0.5);
        for (a, b) in Vec::<f32>::try_from(&w).unwrap().iter().zip(&w0) {
            assert!((a - b * (1.0 - 0.5 * 0.02)).abs() < 1e-6, "{a} vs {b}");
        }
        // A one-dimensional tensor without adapt_1d takes the plain SGD step w - lr*2w.
        let (w, params) = quad_params();
        let cfg = OptimConfig::Lars {
            momentum: 0.9,
            weight_decay: 0.0,
            trust: 0.02,
            adapt_1d: false,
        };
        let mut opt = Optimizer::new(cfg, params).unwrap();
        grad_step(&mut opt, &w, 0.1);
        for (a, b) in Vec::<f32>::try_from(&w).unwrap().iter().zip(&w0) {
            assert!((a - b * 0.8).abs() < 1e-6, "{a} vs {b}");
        }
        let bad = OptimConfig::Lars {
            momentum: 0.9,
            weight_decay: 0.0,
            trust: 0.0,
            adapt_1d: false,
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("optim.trust"));
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let (w, params) = quad_params();
        let cfg = OptimConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(cfg, params).unwrap();
        grad_step(&mut opt, &w, 0.01);
        let v: Vec<f32> = Vec::try_from(&w).unwrap();
        let expect = [0.99f32, -1.99, 2.99, 0.49];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{v:?}");
        }
    }

    #[test]
    fn masked_entries_never_move_even_with_momentum_and_decay() {
        for cfg in [
            OptimConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: 5e-4,
            },
            OptimConfig::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        ] {
            let (w, params) = quad_params();
            let before: Vec<f32> = Vec::try_from(&w).unwrap();
            let mut opt = Optimizer::new(cfg, params).unwrap();
            // Warm momentum up without a mask, then freeze entries 1 and 3.
            grad_step(&mut opt, &w, 0.1);
            let frozen: Vec<f32> = Vec::try_from(&w).unwrap();
            let mut masks = crate::mask::UpdateMasks::new();
            masks.insert(
                "w".to_string(),
                Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]),
            );
            opt.set_masks(&masks).unwrap();
            for _ in 0..5 {
                grad_step(&mut opt, &w, 0.1);
            }
            let after: Vec<f32> = Vec::try_from(&w).unwrap();
            assert_eq!(after[1].to_bits(), frozen[1].to_bits());
            assert_eq!(after[3].to_bits(), frozen[3].to_bits());
            assert_ne!(after[0], frozen[0]);
            assert_ne!(before[0], frozen[0]);
        }
    }

    /// Runs `steps` steps of `cfg` with implementation `imp` on a fixed set of tensors of
    /// several shapes (a mask set after two steps when `masked`); returns the parameters and
    /// the optimizer state.
    fn run_impl(cfg: &OptimConfig, imp: OptimImpl, masked: bool, steps: usize) -> Vec<Tensor> {
        // Deterministic values without libtorch's global generator (tests run in parallel).
        let det = |shape: &[i64], k: f64| -> Tensor {
            let n: i64 = shape.iter().product();
            (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * k + k)
                .sin()
                .view(shape)
                * 1.5
        };
        let shapes: [&[i64]; 4] = [&[8, 3, 3, 3], &[8], &[10, 16], &[10]];
        let params: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("p{i}"),
                    det(s, 0.37 + i as f64).set_requires_grad(true),
                )
            })
            .collect();
        let targets: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| det(s, 1.91 + i as f64))
            .collect();
        let ps: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut opt = Optimizer::new(cfg.clone(), params).unwrap();
        opt.set_impl(imp);
        let mut p0_mask = None;
        for k in 0..steps {
            if masked && k == 2 {
                let mut masks = crate::mask::UpdateMasks::new();
                let m0 = det(&[8, 3, 3, 3], 2.3).gt(0.0);
                p0_mask = Some(m0.copy());
                masks.insert("p0".to_string(), m0);
                masks.insert("p2".to_string(), det(&[10, 16], 0.71).gt(-0.4));
                masks.insert(
                    "p1".to_string(),
                    Tensor::ones([8], (Kind::Float, tch::Device::Cpu)),
                );
                // p3 has no mask: it is frozen.
                opt.set_masks(&masks).unwrap();
            }
            opt.zero_grad();
            let loss = ps
                .iter()
                .zip(&targets)
                .map(|(p, t)| ((p - t) * (p - t) * (p.abs() + 1.0)).sum(Kind::Float))
                .fold(
                    Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                    |a, b| a + b,
                );
            loss.backward();
            opt.step(0.05).unwrap();
        }
        let mut out: Vec<Tensor> = ps.iter().map(|p| p.detach().copy()).collect();
        out.extend(opt.state_tensors().into_iter().map(|(_, t)| t.copy()));
        if masked {
            // Last: p0's mask.
            out.push(p0_mask.expect("mask set"));
        }
        out
    }

    fn cfg_is_adam(cfg: &OptimConfig) -> bool {
        matches!(cfg, OptimConfig::Adam { .. } | OptimConfig::Adamw { .. })
    }

    #[test]
    fn fused_kernels_equal_the_loop_with_and_without_masks() {
        let cfgs = [
            OptimConfig::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            OptimConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: 5e-4,
            },
            OptimConfig::Sgd {
                momentum: 0.9,
                dampening: 0.1,
                nesterov: false,
                weight_decay: 5e-4,
            },
            OptimConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-2,
            },
            OptimConfig::Adamw {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        ];
        for cfg in &cfgs {
            for masked in [false, true] {
                let a = run_impl(cfg, OptimImpl::Loop, masked, 12);
                let b = run_impl(cfg, OptimImpl::Fused, masked, 12);
                assert_eq!(a.len(), b.len(), "{cfg:?}");
                assert_eq!(
                    a.len(),
                    4 + 4 * if cfg_is_adam(cfg) { 2 } else { 1 }
                        - if matches!(cfg, OptimConfig::Sgd { momentum, .. } if *momentum == 0.0) {
                            4
                        } else {
                            0
                        }
                        + usize::from(masked),
                    "{cfg:?}"
                );
                assert!(!masked || a.last().unwrap().equal(b.last().unwrap()));
                for (x, y) in a.iter().zip(&b).take(a.len() - usize::from(masked)) {
                    let diff = (x - y).abs().max().double_value(&[]);
                    let scale = x.abs().max().double_value(&[]).max(1e-3);
                    assert!(
                        diff <= 1e-5 * scale,
                        "{cfg:?} masked={masked}: {diff} vs scale {scale}"
                    );
                }
            }
        }
        // Masked entries are bit-exact under the fused kernels: p0 where its mask is 0 keeps
        // the value it had when the mask was set (after two steps).
        for cfg in &cfgs {
            let two = run_impl(cfg, OptimImpl::Fused, false, 2);
            let twelve = run_impl(cfg, OptimImpl::Fused, true, 12);
            let mask = twelve.last().unwrap();
            let frozen = mask.logical_not();
            let kept = twelve[0]
                .masked_select(&frozen)
                .equal(&two[0].masked_select(&frozen));
            let moved = twelve[0]
                .masked_select(mask)
                .ne_tensor(&two[0].masked_select(mask));
            assert!(kept, "{cfg:?}");
            assert!(moved.any().int64_value(&[]) == 1, "{cfg:?}");
        }
    }

    #[test]
    fn rejects_bad_hyperparameters() {
        let bad = OptimConfig::Sgd {
            momentum: 1.5,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("optim.momentum"), "{e}");
        let bad = OptimConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: f64::NAN,
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("weight_decay"));
        let (_w, params) = quad_params();
        let mut opt = Optimizer::new(OptimConfig::default(), params).unwrap();
        assert!(opt.step(f64::NAN).is_err());
    }

    #[test]
    fn state_round_trips() {
        let (w, params) = quad_params();
        let mut opt = Optimizer::new(OptimConfig::default(), params).unwrap();
        grad_step(&mut opt, &w, 0.1);
        let st = opt.state_tensors();
        assert_eq!(st.len(), 1);
        let (w2, params2) = quad_params();
        let _ = w2;
        let mut opt2 = Optimizer::new(OptimConfig::default(), params2).unwrap();
        opt2.load_state(st, opt.steps()).unwrap();
        assert_eq!(opt2.steps(), 1);
        let bad = vec![(
            "zz::0".to_string(),
            Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
        )];
        assert!(opt2.load_state(bad, 1).is_err());
    }
}
