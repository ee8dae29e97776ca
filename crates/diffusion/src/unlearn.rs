//! Erasing a class from the conditional DDPM: SalUn's saliency mask and its RL and GA methods,
//! the same methods without a mask, and an ESD analogue (the frozen model's negatively guided
//! prediction as the target), with the reference code's loss reductions and the meaning of its
//! alpha. Retraining without the class is [`crate::train::train_ddpm`] on the other classes.

use crate::sample::{ddim_step, timesteps};
use crate::schedule::{ddpm_loss, keep_mask, sum_mse, Schedule};
use crate::train::{
    adam_for, clip_grad_norm, clip_grad_norm_on_device, model_batch, to_model_range, zero_grads,
};
use crate::unet::CondUNet;
use rustworthy_core::progress::check_interrupt;
use rustworthy_core::seed::derive;
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::{epoch_order, Dataset};
use rustworthy_train::mask::{load_masks, save_masks};
use rustworthy_train::{Masks, UpdateMasks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// The erasure methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EraseMethod {
    /// SalUn with random labelling: forget images pushed toward another class's prediction,
    /// updates restricted to the saliency mask.
    SalunRl,
    /// SalUn with gradient ascent on the forget images' denoising loss, masked.
    SalunGa,
    /// Random labelling without a mask.
    Rl,
    /// Gradient ascent without a mask.
    Ga,
    /// ESD analogue, training everything except the class pathway (ESD-u's counterpart).
    EsdU,
    /// ESD analogue, training only the class pathway: the class table, the class MLP and the
    /// projections of the joint embedding into each block (ESD-x's counterpart).
    EsdX,
}

impl EraseMethod {
    /// Every method, in table order.
    pub const ALL: [EraseMethod; 6] = [
        EraseMethod::SalunRl,
        EraseMethod::SalunGa,
        EraseMethod::Rl,
        EraseMethod::Ga,
        EraseMethod::EsdU,
        EraseMethod::EsdX,
    ];

    /// The method's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            EraseMethod::SalunRl => "salun-rl",
            EraseMethod::SalunGa => "salun-ga",
            EraseMethod::Rl => "rl",
            EraseMethod::Ga => "ga",
            EraseMethod::EsdU => "esd-u",
            EraseMethod::EsdX => "esd-x",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "method",
                    format!(
                        "unknown erasure method `{s}`; choose one of {}",
                        Self::ALL.map(|m| m.name()).join(", ")
                    ),
                )
            })
    }

    /// Whether the method restricts updates to the saliency mask.
    pub fn uses_mask(&self) -> bool {
        matches!(self, EraseMethod::SalunRl | EraseMethod::SalunGa)
    }
}

/// Settings of an erasure run (defaults: the reference's `cifar10_saliency_unlearn.yml` and the
/// README's `--alpha 1e-3`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseConfig {
    /// The class to erase.
    pub forget_class: i64,
    /// Optimizer steps (1000).
    pub steps: u64,
    /// Forget and retain images per step, each (128).
    pub batch_size: usize,
    /// Adam learning rate (1e-4).
    pub lr: f64,
    /// Weight of the retain term: `loss = forget + alpha * retain` (1e-3). With the reference's
    /// reductions the retain term is summed over pixels and the RL forget term is a mean, so
    /// alpha = 1e-3 weighs the retain loss about `pixels / 1000` times a per-pixel mean.
    pub alpha: f64,
    /// Our opt-in deviation: both terms as per-element means (the retain and GA losses divided
    /// by the pixel count), so alpha is a plain ratio of two means.
    pub normalized: bool,
    /// Global gradient-norm clipping before masking (1.0).
    pub grad_clip: f64,
    /// Label-drop probability of every conditional pass (0.1).
    pub cond_drop: f64,
    /// Share of parameters the saliency mask frees (0.5).
    pub mask_ratio: f64,
    /// Guidance scale of the loss the mask is computed from (2.0).
    pub mask_guidance: f64,
    /// ESD's negative guidance eta in `e_c - eta (e_c - e_null)` (2.0, the official
    /// `esd_sd.py` default).
    pub esd_guidance: f64,
    /// Guidance w of the frozen model's generations ESD trains on (2.0, i.e. `esd_sd.py`'s
    /// guidance scale 3 in the `e_null + s (e_c - e_null)` convention).
    pub esd_sample_guidance: f64,
    /// Random horizontal flips of forget and retain images.
    pub hflip: bool,
    /// Seed of batches, timesteps, noise, label drops and dropout.
    pub seed: u64,
}

impl Default for EraseConfig {
    fn default() -> Self {
        EraseConfig {
            forget_class: 0,
            steps: 1000,
            batch_size: 128,
            lr: 1e-4,
            alpha: 1e-3,
            normalized: false,
            grad_clip: 1.0,
            cond_drop: 0.1,
            mask_ratio: 0.5,
            mask_guidance: 2.0,
            esd_guidance: 2.0,
            esd_sample_guidance: 2.0,
            hflip: true,
            seed: 0,
        }
    }
}

impl EraseConfig {
    /// Checks every field's range against a model of `num_classes` classes.
    pub fn validate(&self, num_classes: i64) -> Result<()> {
        if self.forget_class < 0 || self.forget_class >= num_classes {
            return Err(Error::config(
                "forget_class",
                format!(
                    "{} is out of range: the model has {num_classes} classes",
                    self.forget_class
                ),
            ));
        }
        if num_classes < 2 {
            return Err(Error::config(
                "forget_class",
                "erasing needs a model of 2+ classes",
            ));
        }
        if self.steps == 0 {
            return Err(Error::config("steps", "must be >= 1"));
        }
        validate::positive_int("batch_size", self.batch_size)?;
        validate::positive("lr", self.lr)?;
        validate::non_negative("alpha", self.alpha)?;
        validate::non_negative("grad_clip", self.grad_clip)?;
        validate::in_half_open("cond_drop", self.cond_drop, 0.0, 1.0)?;
        validate::in_range("mask_ratio", self.mask_ratio, 0.0, 1.0)?;
        if self.mask_ratio == 0.0 {
            return Err(Error::config(
                "mask_ratio",
                "must be > 0 (0 would freeze every weight)",
            ));
        }
        validate::non_negative("mask_guidance", self.mask_guidance)?;
        validate::non_negative("esd_guidance", self.esd_guidance)?;
        validate::non_negative("esd_sample_guidance", self.esd_sample_guidance)?;
        Ok(())
    }

    /// The class the RL target comes from: `(forget_class + 1) mod classes`, as the reference.
    pub fn pseudo_class(&self, num_classes: i64) -> i64 {
        (self.forget_class + 1) % num_classes
    }
}

/// SalUn's saliency mask: the gradient of the guided (`w = mask_guidance`) denoising loss,
/// each batch's gradient clipped to global norm `grad_clip` and the signed gradients summed over
/// one pass of the forget images, then the largest `mask_ratio` of magnitudes over all
/// parameters together (exactly `floor(N * ratio)` entries) set to 1. Dropout is off.
pub fn saliency_mask(model: &CondUNet, forget: &Dataset, cfg: &EraseConfig) -> Result<UpdateMasks> {
    cfg.validate(model.config.num_classes)?;
    if forget.is_empty() {
        return Err(Error::invalid("saliency mask: the forget set is empty"));
    }
    let sched = Schedule::reference(model.device());
    let params = model.named_parameters();
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut sums: Vec<Tensor> = tensors.iter().map(|t| t.zeros_like()).collect();
    let n = forget.len();
    let order = epoch_order(n, false, cfg.seed, 0);
    for (b, idx) in order.chunks(cfg.batch_size).enumerate() {
        check_interrupt()?;
        tch::manual_seed(derive(cfg.seed, "salun-mask", b as u64) as i64);
        let (x, _) = forget.try_batch(idx)?;
        let x = to_model_range(&x);
        let bs = idx.len() as i64;
        let t = sched.antithetic_t(bs, x.device());
        let e = x.randn_like();
        let xt = sched.q_sample(&x, &t, &e);
        let c = Tensor::full([bs], cfg.forget_class, (Kind::Int64, x.device()));
        zero_grads(&tensors);
        let out = model.guided(&xt, &t.to_kind(Kind::Float), &c, cfg.mask_guidance, false)?;
        sum_mse(&e, &out).backward();
        clip_grad_norm(&tensors, cfg.grad_clip);
        tch::no_grad(|| {
            for (s, p) in sums.iter_mut().zip(&tensors) {
                let g = p.grad();
                if g.defined() {
                    *s += g;
                }
            }
        });
    }
    zero_grads(&tensors);
    let flat = Tensor::cat(
        &sums
            .iter()
            .map(|s| s.abs().flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    let total = flat.numel() as i64;
    let k = (total as f64 * cfg.mask_ratio).floor() as i64;
    let chosen = flat.zeros_like();
    let chosen = if k > 0 {
        let (_, top) = flat.topk(k, 0, true, false);
        chosen.index_fill(0, &top, 1.0)
    } else {
        chosen
    };
    let mut out = BTreeMap::new();
    let mut off = 0;
    for (name, p) in &params {
        let m = p.numel() as i64;
        out.insert(
            name.clone(),
            chosen
                .narrow(0, off, m)
                .view(p.size().as_slice())
                .to_kind(Kind::Float),
        );
        off += m;
    }
    Ok(out.into())
}

/// Saves a mask as safetensors (through the pruning masks' writer: atomic, 0/1 as bytes).
pub fn save_mask(path: &Path, mask: &UpdateMasks) -> Result<()> {
    let masks: Masks = mask
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    save_masks(path, &masks)
}

/// Reads a mask (through the pruning masks' reader, which refuses values other than 0 and 1)
/// and checks it against `model`: the same parameter names and shapes; a mask of another model
/// is an error naming the first mismatch.
pub fn load_mask(path: &Path, model: &CondUNet) -> Result<UpdateMasks> {
    let given = load_masks(path, model.device())?.into_inner();
    let params = model.named_parameters();
    for (name, p) in &params {
        let Some(m) = given.get(name) else {
            return Err(Error::corrupt(
                path,
                format!("mask has no entry for parameter {name}: it was made for another model"),
            ));
        };
        if m.size() != p.size() {
            return Err(Error::corrupt(
                path,
                format!(
                    "mask for {name} has shape {:?}, the model's parameter {:?}: it was made for another model",
                    m.size(),
                    p.size()
                ),
            ));
        }
    }
    if let Some(extra) = given.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
        return Err(Error::corrupt(
            path,
            format!("mask entry {extra} is not a parameter of this model: it was made for another model"),
        ));
    }
    Ok(given.into_iter().collect())
}

/// Share of ones in a mask.
pub fn mask_density(mask: &UpdateMasks) -> f64 {
    let (mut on, mut all) = (0.0, 0.0);
    for (_, m) in mask {
        on += m.sum(Kind::Double).double_value(&[]);
        all += m.numel() as f64;
    }
    if all == 0.0 {
        0.0
    } else {
        on / all
    }
}

/// Whether a parameter belongs to the class pathway (ESD-x's set): the class table, the null
/// vector, the class MLP and the joint-embedding projections.
pub fn is_class_pathway(name: &str) -> bool {
    name.starts_with("classes_emb")
        || name == "null_classes_emb"
        || name.starts_with("cemb.")
        || name.contains("temb_cemb_proj")
}

/// A pool of `(x_t, t)` pairs on the frozen model's own sampling trajectories for the erased
/// class (ESD trains on the model's generations, not on data): DDIM (eta 0) with `steps` steps
/// from `n` noise images, guided with `w`, every intermediate state kept.
pub fn esd_pool(
    orig: &CondUNet,
    class: i64,
    n: i64,
    steps: i64,
    w: f64,
    seed: u64,
) -> Result<(Tensor, Tensor)> {
    let sched = Schedule::reference(orig.device());
    let dev = orig.device();
    tch::manual_seed(seed as i64);
    let mut x = Tensor::randn(
        [
            n,
            orig.config.in_channels,
            orig.config.resolution,
            orig.config.resolution,
        ],
        (Kind::Float, dev),
    );
    let c = Tensor::full([n], class, (Kind::Int64, dev));
    let seq = timesteps(&sched, steps);
    let (mut xs, mut ts) = (Vec::new(), Vec::new());
    for idx in (0..seq.len()).rev() {
        let i = seq[idx];
        xs.push(x.shallow_clone());
        ts.push(Tensor::full([n], i, (Kind::Int64, dev)));
        // One deterministic DDIM step from i to the previous visited timestep.
        let j = if idx == 0 { -1 } else { seq[idx - 1] };
        let t = Tensor::full([n], i, (Kind::Float, dev));
        let e = tch::no_grad(|| orig.guided(&x, &t, &c, w, false))?;
        let at = sched.alpha_bar(&Tensor::full([n], i, (Kind::Int64, dev)));
        let an = sched.alpha_bar(&Tensor::full([n], j, (Kind::Int64, dev)));
        x = ddim_step(&x, &e, &at, &an, 0.0, &x.zeros_like());
    }
    Ok((Tensor::cat(&xs, 0), Tensor::cat(&ts, 0)))
}

/// One point of an erasure run's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EraseLog {
    /// Steps done.
    pub step: u64,
    /// Mean forget term since the previous point.
    pub forget_loss: f64,
    /// Mean retain term (before alpha) since the previous point.
    pub retain_loss: f64,
}

/// What an erasure run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EraseOutcome {
    /// The method.
    pub method: EraseMethod,
    /// Share of parameters free to move (1 without a mask; the pathway's share for ESD).
    pub trainable_share: f64,
    /// Loss history.
    pub history: Vec<EraseLog>,
    /// Seconds spent.
    pub seconds: f64,
}

/// Erases `cfg.forget_class` from `model` in place with `method`. `forget` holds images of the
/// class, `retain` the other classes (labels as the model's); `mask` is SalUn's mask (required by
/// the SalUn methods, refused by the others).
pub fn erase(
    model: &mut CondUNet,
    method: EraseMethod,
    forget: &Dataset,
    retain: &Dataset,
    mask: Option<&UpdateMasks>,
    cfg: &EraseConfig,
    log_every: u64,
) -> Result<EraseOutcome> {
    let classes = model.config.num_classes;
    cfg.validate(classes)?;
    if forget.is_empty() || retain.is_empty() {
        return Err(Error::invalid(
            "erase: the forget and retain sets must both be non-empty",
        ));
    }
    if forget.labels.ne(cfg.forget_class).any().int64_value(&[]) != 0 {
        return Err(Error::invalid(format!(
            "erase: the forget set holds images of classes other than {}",
            cfg.forget_class
        )));
    }
    if retain.labels.eq(cfg.forget_class).any().int64_value(&[]) != 0 {
        return Err(Error::invalid(format!(
            "erase: the retain set holds images of the erased class {}",
            cfg.forget_class
        )));
    }
    match (method.uses_mask(), mask) {
        (true, None) => {
            return Err(Error::invalid(format!(
                "{} needs a saliency mask",
                method.name()
            )))
        }
        (false, Some(_)) => {
            return Err(Error::invalid(format!(
                "{} takes no saliency mask",
                method.name()
            )))
        }
        _ => {}
    }
    let t0 = Instant::now();
    let dev = model.device();
    let sched = Schedule::reference(dev);
    let mut opt = adam_for(model)?;
    let params = model.named_parameters();
    let mut trainable_share = 1.0;
    let esd = matches!(method, EraseMethod::EsdU | EraseMethod::EsdX);
    if let Some(m) = mask {
        for (name, p) in &params {
            match m.get(name) {
                Some(t) if t.size() == p.size() => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "the saliency mask does not fit this model at {name}"
                    )))
                }
            }
        }
        opt.set_masks(m)?;
        trainable_share = mask_density(m);
    } else if esd {
        let pathway = method == EraseMethod::EsdX;
        let sel: UpdateMasks = params
            .iter()
            .filter(|(n, _)| is_class_pathway(n) == pathway)
            .map(|(n, p)| (n.clone(), p.ones_like()))
            .collect();
        let on: i64 = sel.values().map(|t| t.numel() as i64).sum();
        let all: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
        trainable_share = on as f64 / all as f64;
        opt.set_masks(&sel)?;
    }
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    // ESD's frozen model and its pool of trajectory states.
    let esd_parts = if esd {
        let mut frozen = CondUNet::new(&model.config, dev)?;
        frozen.copy_from(model)?;
        let pool = esd_pool(
            &frozen,
            cfg.forget_class,
            cfg.batch_size as i64,
            50,
            cfg.esd_sample_guidance,
            derive(cfg.seed, "esd-pool", 0),
        )?;
        Some((frozen, pool))
    } else {
        None
    };
    let pixels = {
        let c = &model.config;
        (c.in_channels * c.resolution * c.resolution) as f64
    };
    let (nf, nr) = (forget.len(), retain.len());
    let (bf, br) = (cfg.batch_size.min(nf), cfg.batch_size.min(nr));
    let (pf, pr) = ((nf / bf).max(1) as u64, (nr / br).max(1) as u64);
    let mut history = Vec::new();
    // The loss sums stay on the device and are read once per log point, with the
    // non-finite check, so a step does not wait for the host.
    let zero = || Tensor::zeros([], (Kind::Double, dev));
    let (mut af, mut ar, mut cnt) = (zero(), zero(), 0u64);
    let mut checked = 0u64;
    for step in 0..cfg.steps {
        check_interrupt()?;
        tch::manual_seed(derive(cfg.seed, "erase-step", step) as i64);
        let of = epoch_order(nf, true, derive(cfg.seed, "erase-forget", 0), step / pf);
        let or = epoch_order(nr, true, derive(cfg.seed, "erase-retain", 0), step / pr);
        let fi = &of[(step % pf) as usize * bf..][..bf];
        let ri = &or[(step % pr) as usize * br..][..br];
        opt.zero_grad();
        let forget_loss = match method {
            EraseMethod::SalunRl | EraseMethod::Rl => {
                let (x, c) = model_batch(forget, fi, cfg.hflip)?;
                let b = bf as i64;
                let t = sched.antithetic_t(b, dev).to_kind(Kind::Float);
                let e = x.randn_like();
                let xt = sched.q_sample(&x, &t, &e);
                let keep = keep_mask(b, cfg.cond_drop, dev);
                let out = model.forward(&xt, &t, &c, Some(&keep), true)?;
                let pc = Tensor::full([b], cfg.pseudo_class(classes), (Kind::Int64, dev));
                let keep2 = keep_mask(b, cfg.cond_drop, dev);
                let pseudo = model.forward(&xt, &t, &pc, Some(&keep2), true)?.detach();
                (pseudo - out).square().mean(Kind::Float)
            }
            EraseMethod::SalunGa | EraseMethod::Ga => {
                let (x, c) = model_batch(forget, fi, cfg.hflip)?;
                let t = sched.antithetic_t(bf as i64, dev);
                let e = x.randn_like();
                let l = -ddpm_loss(model, &sched, &x, &t, &e, &c, cfg.cond_drop, true)?;
                if cfg.normalized {
                    l / pixels
                } else {
                    l
                }
            }
            EraseMethod::EsdU | EraseMethod::EsdX => {
                let (frozen, (px, pt)) = esd_parts.as_ref().expect("ESD parts");
                let pick = Tensor::randint(px.size()[0], [bf as i64], (Kind::Int64, dev));
                let xt = px.index_select(0, &pick);
                let t = pt.index_select(0, &pick).to_kind(Kind::Float);
                let b = bf as i64;
                let c = Tensor::full([b], cfg.forget_class, (Kind::Int64, dev));
                let target = tch::no_grad(|| -> Result<Tensor> {
                    let e0 = frozen.forward_vec(&xt, &t, &frozen.null_vectors(b), false)?;
                    let ep = frozen.forward(&xt, &t, &c, None, false)?;
                    // esd_sd.py: e_from - eta (e_c - e_null), e_from = e_c by default.
                    Ok(&ep - (&ep - &e0) * cfg.esd_guidance)
                })?;
                let en = model.forward(&xt, &t, &c, None, true)?;
                (en - target).square().mean(Kind::Float)
            }
        };
        // ESD as published has no retain term; the others add SalUn's.
        let (loss, rl) = if esd {
            (forget_loss.shallow_clone(), zero())
        } else {
            let (x, y) = model_batch(retain, ri, cfg.hflip)?;
            let t = sched.antithetic_t(br as i64, dev);
            let e = x.randn_like();
            let r = ddpm_loss(model, &sched, &x, &t, &e, &y, cfg.cond_drop, true)?;
            let r = if cfg.normalized { r / pixels } else { r };
            let rv = r.detach().to_kind(Kind::Double);
            (&forget_loss + r * cfg.alpha, rv)
        };
        af += forget_loss.detach().to_kind(Kind::Double);
        ar += rl;
        loss.backward();
        // ESD clips nothing (esd_sd.py); SalUn clips over all parameters before masking.
        if !esd {
            let _ = clip_grad_norm_on_device(&tensors, cfg.grad_clip);
        }
        opt.step(cfg.lr)?;
        cnt += 1;
        let done = step + 1;
        if done % log_every.max(1) == 0 || done == cfg.steps {
            let sums: Vec<f64> = Vec::try_from(Tensor::stack(&[&af, &ar], 0))?;
            if !sums[0].is_finite() || !sums[1].is_finite() {
                return Err(Error::Numerical(format!(
                    "{}: loss became non-finite between steps {} and {done} (forget sum {}, \
                     retain sum {}); lower lr (now {})",
                    method.name(),
                    checked + 1,
                    sums[0],
                    sums[1],
                    cfg.lr
                )));
            }
            checked = done;
            history.push(EraseLog {
                step: done,
                forget_loss: sums[0] / cnt as f64,
                retain_loss: sums[1] / cnt as f64,
            });
            (af, ar, cnt) = (zero(), zero(), 0);
        }
    }
    Ok(EraseOutcome {
        method,
        trainable_share,
        history,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
