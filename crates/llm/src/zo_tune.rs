//! Zeroth-order fine-tuning of a causal LM at inference memory: MeZO (Malladi et al., 2023)
//! and its ZO-SGD-with-momentum, ZO-Adam and ZO-sign variants, with one- or two-sided
//! differences.
//!
//! MeZO draws one seed per step. The direction `z ~ N(0, I)` is never stored: it is regenerated
//! from that seed, parameter by parameter in a fixed order, to perturb (`θ + εz`), to move to
//! the other side (`θ − εz`), to restore, and to update (`θ ← θ − lr·(g·z + wd·θ)`, with `g` the
//! projected gradient `(L₊ − L₋)/2ε`, weight decay skipping biases and norms). No autograd graph
//! is built, so the memory is the model's plus one parameter-sized buffer. The momentum and
//! Adam variants keep per-parameter state (one or two more copies of the weights).

use crate::llama::CausalLm;
use crate::score::{scored_logprobs, QaBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZoOptimizer {
    /// MeZO: ZO-SGD with the direction regenerated from its seed.
    Mezo,
    /// ZO-SGD with heavy-ball momentum.
    Momentum,
    /// Adam on the zeroth-order gradient estimate.
    Adam,
    /// The sign of the estimate (ZO-signSGD).
    Sign,
}

/// Settings of a zeroth-order fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoTuneConfig {
    /// The update rule.
    pub optimizer: ZoOptimizer,
    /// Steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Perturbation scale ε.
    pub eps: f64,
    /// Weight decay (not applied to biases and norms).
    pub weight_decay: f64,
    /// Two-sided `(L₊ − L₋)/2ε` or one-sided `(L₊ − L)/ε` differences.
    pub two_sided: bool,
    /// Momentum (Momentum) or β₁ (Adam).
    pub beta1: f64,
    /// Adam's β₂.
    pub beta2: f64,
    /// Seed of the step seeds.
    pub seed: u64,
}

impl ZoTuneConfig {
    /// MeZO's defaults for a ~100M-parameter model (lr 1e-6 with ε 1e-3 as in the paper's
    /// OPT grid).
    pub fn mezo(steps: usize) -> ZoTuneConfig {
        ZoTuneConfig {
            optimizer: ZoOptimizer::Mezo,
            steps,
            lr: 1e-6,
            eps: 1e-3,
            weight_decay: 0.0,
            two_sided: true,
            beta1: 0.9,
            beta2: 0.999,
            seed: 0,
        }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::config("steps", "must be positive"));
        }
        for (k, v) in [("lr", self.lr), ("eps", self.eps)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::config(
                    k,
                    format!("must be a positive number, got {v}"),
                ));
            }
        }
        if self.weight_decay.is_nan()
            || self.weight_decay < 0.0
            || !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
        {
            return Err(Error::config(
                "weight_decay",
                "weight_decay >= 0 and beta1, beta2 in [0, 1)",
            ));
        }
        Ok(())
    }
}

fn decays(name: &str) -> bool {
    // Llama's norms are `*norm.weight`, GPT-2's `ln_1`, `ln_2`, `ln_f`.
    !(name.ends_with(".bias") || name.contains("norm") || name.contains(".ln_"))
}

/// The trained parameters (the LoRA adapters when there are some) in a fixed order (sorted by name), with whether weight decay applies.
fn ordered(model: &CausalLm) -> Vec<(String, Tensor, bool)> {
    let mut v: Vec<(String, Tensor)> = model.trainable().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter()
        .map(|(n, t)| {
            let d = decays(&n);
            (n, t, d)
        })
        .collect()
}

/// Adds `scale·z(seed)` to every parameter, regenerating `z` in order from `seed`.
fn perturb(params: &[(String, Tensor, bool)], seed: u64, scale: f64) {
    tch::manual_seed(seed as i64);
    for (_, p, _) in params {
        let z = p.randn_like();
        let _ = p.shallow_clone().g_add_(&(z * scale));
    }
}

/// One record every `log_every` steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZoLog {
    /// Step (1-based).
    pub step: usize,
    /// The loss at the unperturbed point (one-sided) or the mean of the two sides.
    pub loss: f64,
    /// Projected gradient.
    pub projected_grad: f64,
}

/// What to do after a step.
pub type AfterStep<'a> = &'a mut dyn FnMut(usize, &CausalLm) -> Result<bool>;

/// Fine-tunes `model` with zeroth-order steps; `batch(step)` gives each step's batch. After
/// each step `after(step, model)` may evaluate, and stops the run by returning `true`. Stops
/// after `cfg.steps` steps otherwise. Returns the log and the steps taken. An error in a step
/// leaves the weights as they were before it.
pub fn zo_tune(
    model: &mut CausalLm,
    batch: &mut dyn FnMut(usize) -> Result<QaBatch>,
    cfg: &ZoTuneConfig,
    log_every: usize,
    after: Option<AfterStep>,
) -> Result<(Vec<ZoLog>, usize)> {
    let mut after = after;
    cfg.validate()?;
    let params = ordered(model);
    let mut state: Vec<(Tensor, Tensor)> = match cfg.optimizer {
        ZoOptimizer::Momentum | ZoOptimizer::Adam => params
            .iter()
            .map(|(_, p, _)| (p.zeros_like(), p.zeros_like()))
            .collect(),
        _ => Vec::new(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut logs = Vec::new();
    let mut taken = 0;
    let loss_of = |m: &CausalLm, b: &QaBatch| -> Result<f64> {
        let (lp, mask) = scored_logprobs(m, b)?;
        let l = (-lp.sum(tch::Kind::Float) / mask.sum(tch::Kind::Float).clamp_min(1.0))
            .double_value(&[]);
        if !l.is_finite() {
            return Err(Error::Numerical(format!("zeroth-order loss is {l}")));
        }
        Ok(l)
    };
    tch::no_grad(|| -> Result<()> {
        for step in 1..=cfg.steps {
            rustworthy_core::progress::check_interrupt()?;
            let b = batch(step)?;
            let seed: u64 = rng.gen::<u64>() >> 1;
            // `at` is where the weights stand (in units of εz) while a loss is computed; on an
            // error they are put back first.
            let mut at = 0.0;
            let moved = |to: f64, at: &mut f64| {
                perturb(&params, seed, (to - *at) * cfg.eps);
                *at = to;
            };
            let sides = (|| -> Result<(f64, f64)> {
                if cfg.two_sided {
                    moved(1.0, &mut at);
                    let lp = loss_of(model, &b)?;
                    moved(-1.0, &mut at);
                    let lm = loss_of(model, &b)?;
                    Ok(((lp - lm) / (2.0 * cfg.eps), 0.5 * (lp + lm)))
                } else {
                    let l0 = loss_of(model, &b)?;
                    moved(1.0, &mut at);
                    let lp = loss_of(model, &b)?;
                    Ok(((lp - l0) / cfg.eps, l0))
                }
            })();
            moved(0.0, &mut at);
            let (g, loss) = sides?;
            // The update regenerates z from the same seed, parameter by parameter.
            tch::manual_seed(seed as i64);
            let t = step as f64;
            for (i, (_, p, decay)) in params.iter().enumerate() {
                let z = p.randn_like();
                let grad = z * g;
                let mut p = p.shallow_clone();
                let dir = match cfg.optimizer {
                    ZoOptimizer::Mezo => grad,
                    ZoOptimizer::Sign => grad.sign(),
                    ZoOptimizer::Momentum => {
                        let m = &mut state[i].0;
                        let _ = m.g_mul_scalar_(cfg.beta1).g_add_(&grad);
                        m.shallow_clone()
                    }
                    ZoOptimizer::Adam => {
                        let (m, v) = {
                            let s = &mut state[i];
                            let _ =
                                s.0.g_mul_scalar_(cfg.beta1)
                                    .g_add_(&(&grad * (1.0 - cfg.beta1)));
                            let _ =
                                s.1.g_mul_scalar_(cfg.beta2)
                                    .g_add_(&(grad.square() * (1.0 - cfg.beta2)));
                            (s.0.shallow_clone(), s.1.shallow_clone())
                        };
                        let mh = m / (1.0 - cfg.beta1.powf(t));
                        let vh = v / (1.0 - cfg.beta2.powf(t));
                        mh / (vh.sqrt() + 1e-8)
                    }
                };
                if *decay && cfg.weight_decay > 0.0 {
                    let _ = p.g_add_(&(&p * (-cfg.lr * cfg.weight_decay)));
                }
                let _ = p.g_add_(&(dir * (-cfg.lr)));
            }
            taken = step;
            if log_every > 0 && (step % log_every == 0 || step == cfg.steps) {
                logs.push(ZoLog {
                    step,
                    loss,
                    projected_grad: g,
                });
            }
            if let Some(f) = after.as_deref_mut() {
                if f(step, model)? {
                    break;
                }
            }
        }
        Ok(())
    })?;
    Ok((logs, taken))
}
