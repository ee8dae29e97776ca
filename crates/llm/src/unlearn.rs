//! LLM unlearning: gradient ascent, GradDiff, NPO, SimNPO, IdkDPO and RMU, with the losses and
//! defaults of OpenUnlearning (and RMU also as in the WMDP release).
//!
//! Each step takes a batch of forget items and as many retain items, each drawn uniformly at
//! random (OpenUnlearning pairs every forget item with a random retain item). With `nll` the
//! sequence-summed answer NLL, `pooled` Hugging Face's token-mean cross-entropy over the batch,
//! `σ` the logistic function and `θ`/`ref` the model being unlearned and its frozen starting copy:
//!
//! Training is AdamW with one warm-up epoch, linear decay and the gradient norm clipped at 1.
//!
//! - GA: `−pooled(forget)`.
//! - GradDiff: `γ·(−pooled(forget)) + α·retain`, where `retain` is `pooled(retain)` (NLL) or
//!   `KL(p_ref ‖ p_θ)` over every position of the retain batch, flattened, divided by `B·T`.
//! - NPO: `γ·(−2/β)·mean log σ(−β·(nll_ref − nll_θ))` on forget `+ α·pooled(retain)`.
//! - SimNPO: `γ·(−2/β)·mean log σ(β·(nll_θ/|y| − δ))` on forget `+ α·pooled(retain)`.
//! - IdkDPO: DPO with the forget answer as the loser and an "I don't know" answer to the same
//!   question as the winner: `γ·(−2/β)·mean log σ(β·((nll_ref − nll_θ)(idk) − (nll_ref −
//!   nll_θ)(answer)))` `+ α·pooled(retain)`.
//! - RMU: the residual stream leaving block `layer` is pushed towards `c·u` on forget tokens
//!   (`u` a uniform random unit vector, drawn once) and held to the reference model's on retain
//!   tokens, by mean squared error. OpenUnlearning averages over answer tokens per sequence, then
//!   over the batch; the WMDP release averages over every element of the batch, padding
//!   included, and trains only the MLP down-projections of blocks `layer−2 ..= layer`.

use crate::llama::CausalLm;
use crate::score::{batch_logits, pooled_nll_of, sequence_nll_of, QaBatch, IGNORE};
use crate::tofu::QaItem;
use crate::tune::{Encoder, EpochLog};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{Kind, Tensor};

/// An unlearning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LlmMethod {
    /// Gradient ascent on the forget set.
    Ga,
    /// Gradient ascent on forget, descent on retain.
    GradDiff,
    /// Negative preference optimization.
    Npo,
    /// Reference-free, length-normalized NPO.
    SimNpo,
    /// DPO preferring "I don't know" over the forget answer.
    IdkDpo,
    /// Representation misdirection (OpenUnlearning's form).
    Rmu,
    /// Representation misdirection (the WMDP release's form).
    RmuWmdp,
}

impl LlmMethod {
    /// Every method, in table order.
    pub const ALL: [LlmMethod; 7] = [
        LlmMethod::Ga,
        LlmMethod::GradDiff,
        LlmMethod::Npo,
        LlmMethod::SimNpo,
        LlmMethod::IdkDpo,
        LlmMethod::Rmu,
        LlmMethod::RmuWmdp,
    ];

    /// The name used in configs and tables.
    pub fn name(self) -> &'static str {
        match self {
            LlmMethod::Ga => "ga",
            LlmMethod::GradDiff => "grad-diff",
            LlmMethod::Npo => "npo",
            LlmMethod::SimNpo => "sim-npo",
            LlmMethod::IdkDpo => "idk-dpo",
            LlmMethod::Rmu => "rmu",
            LlmMethod::RmuWmdp => "rmu-wmdp",
        }
    }

    /// Parses [`LlmMethod::name`].
    pub fn parse(s: &str) -> Result<LlmMethod> {
        LlmMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "method",
                    format!(
                        "unknown method `{s}` (have: {})",
                        LlmMethod::ALL.map(|m| m.name()).join(", ")
                    ),
                )
            })
    }

    /// Whether the method needs the frozen reference model (NPO, IdkDPO, RMU, GradDiff with KL).
    pub fn uses_reference(self, retain: RetainLoss) -> bool {
        match self {
            LlmMethod::Npo | LlmMethod::IdkDpo | LlmMethod::Rmu | LlmMethod::RmuWmdp => true,
            LlmMethod::GradDiff => retain == RetainLoss::Kl,
            _ => false,
        }
    }
}

/// The retain term of GradDiff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetainLoss {
    /// Token-mean cross-entropy on the retain batch.
    Nll,
    /// KL divergence from the reference model's next-token distributions.
    Kl,
}

/// Settings of an unlearning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmUnlearnConfig {
    /// The method.
    pub method: LlmMethod,
    /// Passes over the forget set.
    pub epochs: usize,
    /// Forget items per step (and as many retain items).
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Warm-up, in epochs (then linear decay to 0).
    pub warmup_epochs: f64,
    /// Weight of the forget term.
    pub gamma: f64,
    /// Weight of the retain term.
    pub alpha: f64,
    /// Inverse temperature of NPO, SimNPO and DPO.
    pub beta: f64,
    /// SimNPO's margin.
    pub delta: f64,
    /// GradDiff's retain term.
    pub retain_loss: RetainLoss,
    /// RMU: the block whose output is steered.
    pub rmu_layer: usize,
    /// RMU: the steering coefficient `c`.
    pub steering_coeff: f64,
    /// Gradient norm clip (0: none; Hugging Face's trainer, which OpenUnlearning runs on,
    /// clips at 1).
    #[serde(default = "default_clip")]
    pub clip: f64,
    /// Seed of the retain draws, the idk answers and RMU's direction.
    pub seed: u64,
}

fn default_clip() -> f64 {
    1.0
}

impl LlmUnlearnConfig {
    /// OpenUnlearning's defaults for `method` (TOFU: lr 1e-5, 10 epochs, batch 32, weight decay
    /// 0.01, one warm-up epoch; NPO β 0.1; SimNPO β 4.5, δ 0, γ 0.125; IdkDPO β 0.1; RMU
    /// steering 2 at block 7, or the middle block of a shallower model). The WMDP form of RMU
    /// uses its release's α = 100 and steering 20.
    pub fn defaults(method: LlmMethod, layers: usize) -> LlmUnlearnConfig {
        let mut c = LlmUnlearnConfig {
            method,
            epochs: 10,
            batch_size: 32,
            lr: 1e-5,
            weight_decay: 0.01,
            warmup_epochs: 1.0,
            gamma: 1.0,
            alpha: 1.0,
            beta: 0.1,
            delta: 0.0,
            retain_loss: RetainLoss::Nll,
            rmu_layer: 7.min(layers.saturating_sub(1) / 2),
            steering_coeff: 2.0,
            clip: 1.0,
            seed: 0,
        };
        match method {
            LlmMethod::SimNpo => {
                c.beta = 4.5;
                c.gamma = 0.125;
            }
            LlmMethod::RmuWmdp => {
                c.alpha = 100.0;
                c.steering_coeff = 20.0;
            }
            _ => {}
        }
        c
    }

    /// Changes one setting by its field name (`lr`, `epochs`, `alpha`, `steering_coeff`, ...),
    /// the value parsed as JSON (or taken as a string). The result is checked by `validate`.
    pub fn set(&mut self, field: &str, value: &str) -> Result<()> {
        let parsed: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        let mut v = serde_json::to_value(&*self)?;
        if v.get(field).is_none() || field == "method" {
            return Err(Error::config(
                field,
                format!("unlearning settings have no field `{field}`"),
            ));
        }
        v[field] = parsed;
        *self = serde_json::from_value(v)
            .map_err(|e| Error::config(field, format!("`{value}` does not fit: {e}")))?;
        Ok(())
    }

    /// Checks the ranges.
    pub fn validate(&self, layers: usize) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::config(
                "epochs",
                "epochs and batch_size must be positive",
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config("lr", "must be a positive number"));
        }
        for (k, v) in [
            ("gamma", self.gamma),
            ("alpha", self.alpha),
            ("weight_decay", self.weight_decay),
            ("warmup_epochs", self.warmup_epochs),
            ("steering_coeff", self.steering_coeff),
            ("clip", self.clip),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(
                    k,
                    format!("must be a non-negative number, got {v}"),
                ));
            }
        }
        if self.beta.is_nan()
            || self.beta <= 0.0
            || self.beta.is_infinite()
            || !self.delta.is_finite()
        {
            return Err(Error::config(
                "beta",
                "beta must be positive and delta finite",
            ));
        }
        if self.rmu_layer >= layers {
            return Err(Error::config(
                "rmu_layer",
                format!(
                    "block {} does not exist (the model has {layers})",
                    self.rmu_layer
                ),
            ));
        }
        Ok(())
    }
}

/// Answers the winner of IdkDPO is drawn from.
pub const IDK_ANSWERS: [&str; 12] = [
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "I don't have that information.",
    "That is not something I know.",
    "I am not able to answer that.",
    "I don't know the answer.",
    "I'm afraid I don't know.",
    "I have no information about that.",
    "Sorry, I don't know.",
    "I cannot say.",
];

/// The per-batch loss of a method, from the model (and reference) on a forget, a retain and,
/// for IdkDPO, an idk batch.
pub struct Batches<'a> {
    /// Forget items.
    pub forget: &'a QaBatch,
    /// Retain items.
    pub retain: &'a QaBatch,
    /// The forget questions with "I don't know" answers (IdkDPO).
    pub idk: Option<&'a QaBatch>,
}

fn npo_like(beta: f64, margin: &Tensor) -> Tensor {
    // −(2/β) · mean log σ(β · margin)
    (margin * beta).log_sigmoid().mean(Kind::Float) * (-2.0 / beta)
}

/// Mean over answer tokens (per sequence, then over the batch) of the squared error averaged
/// over the hidden dimension; or, with `all`, the plain mean over every element.
fn hidden_mse(a: &Tensor, b: &Tensor, labels: &Tensor, all: bool) -> Tensor {
    let se = (a - b).square();
    if all {
        return se.mean(Kind::Float);
    }
    let per_tok = se.mean_dim(-1, false, Kind::Float);
    let m = labels.ne(IGNORE).to_kind(Kind::Float);
    ((per_tok * &m).sum_dim_intlist(1, false, Kind::Float)
        / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0))
    .mean(Kind::Float)
}

/// The loss of one step, and its forget and retain parts (for the log).
pub fn method_loss(
    cfg: &LlmUnlearnConfig,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    control: Option<&Tensor>,
    b: &Batches,
) -> Result<(Tensor, f64, f64)> {
    let need_ref = || {
        reference
            .ok_or_else(|| Error::invalid(format!("{} needs a reference model", cfg.method.name())))
    };
    let ref_nll = |batch: &QaBatch| -> Result<Tensor> {
        let r = need_ref()?;
        tch::no_grad(|| -> Result<Tensor> { sequence_nll_of(r, batch) })
    };
    let retain_nll = || -> Result<Tensor> { pooled_nll_of(model, b.retain) };
    let (forget, retain) = match cfg.method {
        LlmMethod::Ga => {
            let f = -pooled_nll_of(model, b.forget)?;
            (f, None)
        }
        LlmMethod::GradDiff => {
            let f = -pooled_nll_of(model, b.forget)?;
            let r = match cfg.retain_loss {
                RetainLoss::Nll => retain_nll()?,
                RetainLoss::Kl => {
                    let cur = batch_logits(model, b.retain)?;
                    let v = cur.size()[2];
                    let refl = tch::no_grad(|| batch_logits(need_ref()?, b.retain))?;
                    let lp = cur.log_softmax(-1, Kind::Float).view([-1, v]);
                    let lq = refl.log_softmax(-1, Kind::Float).view([-1, v]);
                    // KL(p_ref ‖ p_θ), summed over the vocabulary, averaged over positions.
                    let n = lp.size()[0] as f64;
                    ((lq.exp() * (&lq - &lp)).sum(Kind::Float)) / n
                }
            };
            (f, Some(r))
        }
        LlmMethod::Npo => {
            let cur = sequence_nll_of(model, b.forget)?;
            let lose_ratio = ref_nll(b.forget)? - cur;
            (npo_like(cfg.beta, &(-lose_ratio)), Some(retain_nll()?))
        }
        LlmMethod::SimNpo => {
            let cur = sequence_nll_of(model, b.forget)?;
            let avg = cur / b.forget.answer_lengths() - cfg.delta;
            (npo_like(cfg.beta, &avg), Some(retain_nll()?))
        }
        LlmMethod::IdkDpo => {
            let idk = b
                .idk
                .ok_or_else(|| Error::invalid("idk-dpo needs the idk batch"))?;
            let win = ref_nll(idk)? - sequence_nll_of(model, idk)?;
            let lose = ref_nll(b.forget)? - sequence_nll_of(model, b.forget)?;
            (npo_like(cfg.beta, &(win - lose)), Some(retain_nll()?))
        }
        LlmMethod::Rmu | LlmMethod::RmuWmdp => {
            let all = cfg.method == LlmMethod::RmuWmdp;
            let r = need_ref()?;
            let u = control.ok_or_else(|| Error::invalid("rmu needs its control vector"))?;
            let l = Some(cfg.rmu_layer);
            let hf = model.hidden(&b.forget.ids, Some(&b.forget.mask), None, None, l)?;
            let target = u.to_kind(hf.kind()).expand_as(&hf);
            let f = hidden_mse(&hf, &target, &b.forget.labels, all);
            let hr = model.hidden(&b.retain.ids, Some(&b.retain.mask), None, None, l)?;
            let hr_ref =
                tch::no_grad(|| r.hidden(&b.retain.ids, Some(&b.retain.mask), None, None, l))?;
            (f, Some(hidden_mse(&hr, &hr_ref, &b.retain.labels, all)))
        }
    };
    let fv = forget.double_value(&[]);
    let rv = retain.as_ref().map_or(0.0, |r| r.double_value(&[]));
    let loss = match retain {
        Some(r) => forget * cfg.gamma + r * cfg.alpha,
        None => forget * cfg.gamma,
    };
    Ok((loss, fv, rv))
}

/// RMU's control vector `c·u`: `u` uniform on `[0, 1)^d`, normalized (`[1, 1, d]`).
pub fn control_vector(d: i64, coeff: f64, seed: u64, device: tch::Device) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x524d55);
    let v: Vec<f32> = (0..d).map(|_| rng.gen::<f32>()).collect();
    let u = Tensor::from_slice(&v).view([1, 1, d]);
    (&u / u.norm() * coeff).to_device(device)
}

/// What a method needs beside the model it trains: the frozen reference model (NPO, IdkDPO,
/// RMU, GradDiff with KL) and RMU's control vector.
pub fn method_aids(
    model: &CausalLm,
    cfg: &LlmUnlearnConfig,
) -> Result<(Option<CausalLm>, Option<Tensor>)> {
    let reference = if cfg.method.uses_reference(cfg.retain_loss) {
        Some(model.frozen_copy()?)
    } else {
        None
    };
    let control = matches!(cfg.method, LlmMethod::Rmu | LlmMethod::RmuWmdp).then(|| {
        control_vector(
            model.config.hidden_size,
            cfg.steering_coeff,
            cfg.seed,
            model.device(),
        )
    });
    Ok((reference, control))
}

/// One record per epoch of an unlearning run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnlearnLog {
    /// Epoch, loss and seconds.
    pub epoch: EpochLog,
    /// Mean forget term.
    pub forget: f64,
    /// Mean retain term.
    pub retain: f64,
}

/// Unlearns `forget` from `model`, keeping `retain`. Returns one log per epoch.
pub fn unlearn(
    model: &mut CausalLm,
    enc: &Encoder,
    forget: &[QaItem],
    retain: &[QaItem],
    cfg: &LlmUnlearnConfig,
) -> Result<Vec<UnlearnLog>> {
    let layers = model.config.num_hidden_layers as usize;
    cfg.validate(layers)?;
    if forget.is_empty() || retain.is_empty() {
        return Err(Error::invalid("unlearning needs forget and retain items"));
    }
    if cfg.method == LlmMethod::RmuWmdp && model.lora_config().is_some() {
        return Err(Error::config(
            "method",
            "rmu-wmdp trains the MLP down-projections themselves; use rmu with LoRA adapters",
        ));
    }
    let dev = model.device();
    let (reference, control) = method_aids(model, cfg)?;
    // The WMDP form trains only the MLP down-projections of blocks layer-2..=layer.
    let params = model.named_parameters();
    let trained = |name: &str| {
        cfg.method != LlmMethod::RmuWmdp
            || (cfg.rmu_layer.saturating_sub(2)..=cfg.rmu_layer)
                .any(|l| *name == model.mlp_out_weight_name(l))
    };
    // Frozen parameters get no gradient; they are also put back after every step, since a
    // gradient left from earlier training would let AdamW's weight decay move them.
    let mut frozen: Vec<(Tensor, Tensor)> = Vec::new();
    for (name, p) in &params {
        // With LoRA adapters the base is frozen already and only the adapters train.
        if model.lora_config().is_none() && !trained(name) {
            let _ = p.shallow_clone().set_requires_grad(false);
            frozen.push((p.shallow_clone(), p.detach().copy()));
        }
    }
    let result = (|| {
        let mut opt = tch::nn::AdamW::default()
            .wd(cfg.weight_decay)
            .build(model.trainable(), cfg.lr)?;
        let steps_per_epoch = forget.len().div_ceil(cfg.batch_size);
        let total = steps_per_epoch * cfg.epochs;
        let warm = ((cfg.warmup_epochs * forget.len() as f64) as usize / cfg.batch_size).min(total);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..forget.len()).collect();
        let mut logs = Vec::new();
        let mut step = 0;
        for epoch in 1..=cfg.epochs {
            let t0 = std::time::Instant::now();
            order.shuffle(&mut rng);
            let (mut sl, mut sf, mut sr) = (0.0, 0.0, 0.0);
            for chunk in order.chunks(cfg.batch_size) {
                rustworthy_core::progress::check_interrupt()?;
                let f: Vec<(&str, &str)> = chunk
                    .iter()
                    .map(|&i| (forget[i].question.as_str(), forget[i].answer.as_str()))
                    .collect();
                let r: Vec<(&str, &str)> = chunk
                    .iter()
                    .map(|_| {
                        let it = &retain[rng.gen_range(0..retain.len())];
                        (it.question.as_str(), it.answer.as_str())
                    })
                    .collect();
                let idk: Option<Vec<(&str, &str)>> = (cfg.method == LlmMethod::IdkDpo).then(|| {
                    chunk
                        .iter()
                        .map(|&i| {
                            let a = IDK_ANSWERS[rng.gen_range(0..IDK_ANSWERS.len())];
                            (forget[i].question.as_str(), a)
                        })
                        .collect()
                });
                let fb = enc.batch(&f, dev)?;
                let rb = enc.batch(&r, dev)?;
                let ib = idk.map(|p| enc.batch(&p, dev)).transpose()?;
                let batches = Batches {
                    forget: &fb,
                    retain: &rb,
                    idk: ib.as_ref(),
                };
                let (loss, fv, rv) =
                    method_loss(cfg, model, reference.as_ref(), control.as_ref(), &batches)?;
                let l = loss.double_value(&[]);
                if !l.is_finite() {
                    return Err(Error::Numerical(format!(
                        "{} loss is {l} at epoch {epoch}, step {step}",
                        cfg.method.name()
                    )));
                }
                let lr = if step < warm {
                    cfg.lr * (step + 1) as f64 / warm as f64
                } else {
                    cfg.lr * (total - step) as f64 / (total - warm).max(1) as f64
                };
                opt.set_lr(lr);
                opt.zero_grad();
                loss.backward();
                if cfg.clip > 0.0 {
                    opt.clip_grad_norm(cfg.clip);
                }
                opt.step();
                tch::no_grad(|| {
                    for (p, saved) in &frozen {
                        p.shallow_clone().copy_(saved);
                    }
                });
                sl += l;
                sf += fv;
                sr += rv;
                step += 1;
            }
            let n = steps_per_epoch as f64;
            logs.push(UnlearnLog {
                epoch: EpochLog {
                    epoch,
                    loss: sl / n,
                    seconds: t0.elapsed().as_secs_f64(),
                },
                forget: sf / n,
                retain: sr / n,
            });
        }
        Ok(logs)
    })();
    for (p, _) in &frozen {
        let _ = p.shallow_clone().set_requires_grad(true);
    }
    result
}
