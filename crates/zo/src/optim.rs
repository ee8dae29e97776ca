//! Zeroth-order optimizers: ZO-SGD, ZO-signSGD, ZO-momentum, ZO-Adam (AdaMM), ZO-SVRG and the
//! conservative variant (a step is accepted only if the loss drops), with projections onto
//! boxes, norm balls and the simplex. A run under a query budget stops cleanly before a step
//! it cannot pay for and returns the best point seen.

use crate::estimate::Estimator;
use crate::objective::{Objective, Oracle};
use rustworthy_core::seed::{derive, SeedRng};
use rustworthy_core::{validate, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A convex set to project iterates onto. Balls are centred at the optimizer's `center` (the
/// origin without one).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Constraint {
    /// No constraint (the default).
    #[default]
    Free,
    /// Every coordinate in `[lo, hi]`.
    Box {
        /// Lower bound of every coordinate.
        lo: f64,
        /// Upper bound of every coordinate, >= `lo`.
        hi: f64,
    },
    /// `|x - c|_2 <= radius`.
    L2Ball {
        /// Radius of the ball, >= 0.
        radius: f64,
    },
    /// `|x - c|_inf <= radius`.
    LinfBall {
        /// Radius of the ball, >= 0.
        radius: f64,
    },
    /// The probability simplex `{x >= 0, sum x = 1}`.
    Simplex,
}

impl Constraint {
    /// Checks that box bounds are finite and ordered and ball radii finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Constraint::Box { lo, hi } => {
                validate::finite("lo", lo)?;
                validate::finite("hi", hi)?;
                if lo > hi {
                    return Err(Error::config("box", format!("lo {lo} > hi {hi}")));
                }
            }
            Constraint::L2Ball { radius } | Constraint::LinfBall { radius } => {
                validate::finite("radius", radius)?;
                if radius < 0.0 {
                    return Err(Error::config("radius", format!("{radius} is negative")));
                }
            }
            Constraint::Free | Constraint::Simplex => {}
        }
        Ok(())
    }

    /// The Euclidean projection of each row of `x` (`[d]` or `[n, d]`).
    pub fn project(&self, x: &Tensor, center: Option<&Tensor>) -> Tensor {
        let rel = |x: &Tensor| match center {
            Some(c) => x - c,
            None => x.shallow_clone(),
        };
        let back = |z: Tensor| match center {
            Some(c) => z + c,
            None => z,
        };
        match *self {
            Constraint::Free => x.shallow_clone(),
            Constraint::Box { lo, hi } => x.clamp(lo, hi),
            Constraint::LinfBall { radius } => back(rel(x).clamp(-radius, radius)),
            Constraint::L2Ball { radius } => {
                let z = rel(x);
                let n = z.norm_scalaropt_dim(2, [-1], true);
                let f = (n.clamp_min(1e-300).reciprocal() * radius).clamp_max(1.0);
                back(z * f)
            }
            Constraint::Simplex => project_simplex(x),
        }
    }

    /// The largest violation of the constraint by any row of `x` (0 inside).
    pub fn violation(&self, x: &Tensor, center: Option<&Tensor>) -> f64 {
        let p = self.project(x, center);
        (x - p).abs().max().double_value(&[])
    }
}

/// Projection onto the simplex by sorting (Duchi et al., 2008), row-wise.
fn project_simplex(x: &Tensor) -> Tensor {
    let d = *x.size().last().unwrap_or(&1);
    let (sorted, _) = x.sort(-1, true);
    let css = sorted.cumsum(-1, x.kind()) - 1.0;
    let ks = Tensor::arange_start(1, d + 1, (x.kind(), x.device()));
    let cond = (&sorted - &css / &ks).gt(0.0);
    // rho: the last index where the condition holds.
    let rho =
        (cond.to_kind(Kind::Int64) * Tensor::arange(d, (Kind::Int64, x.device()))).argmax(-1, true);
    let theta = css.gather(-1, &rho, false) / (rho.to_kind(x.kind()) + 1.0);
    (x - theta).clamp_min(0.0)
}

/// How an estimate becomes a step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Update {
    /// `x <- x - lr g` (ZO-SGD).
    Sgd,
    /// `x <- x - lr sign(g)` (ZO-signSGD).
    Sign,
    /// Heavy ball: `m <- beta m + g`, `x <- x - lr m`.
    Momentum {
        /// Momentum factor in [0, 1).
        beta: f64,
    },
    /// ZO-AdaMM: Adam moments with `v_hat = max(v_hat, v)` (no bias correction).
    Adam {
        /// Decay of the first moment in [0, 1).
        beta1: f64,
        /// Decay of the second moment in [0, 1).
        beta2: f64,
        /// Term added to the denominator, > 0.
        eps: f64,
    },
}

impl Update {
    /// ZO-AdaMM with beta1 0.9, beta2 0.999 and eps 1e-8.
    pub fn adam() -> Update {
        Update::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
    fn validate(&self) -> Result<()> {
        match *self {
            Update::Momentum { beta } => {
                validate::in_half_open("beta", beta, 0.0, 1.0)?;
            }
            Update::Adam { beta1, beta2, eps } => {
                validate::in_half_open("beta1", beta1, 0.0, 1.0)?;
                validate::in_half_open("beta2", beta2, 0.0, 1.0)?;
                validate::positive("eps", eps)?;
            }
            Update::Sgd | Update::Sign => {}
        }
        Ok(())
    }
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// The same `lr` at every step (the default).
    #[default]
    Constant,
    /// `lr / sqrt(t + 1)`.
    InvSqrt,
}

/// A zeroth-order optimization run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoConfig {
    /// The gradient estimator.
    pub estimator: Estimator,
    /// How an estimate becomes a step.
    pub update: Update,
    /// Step size, > 0.
    pub lr: f64,
    /// Schedule of the step size (default constant).
    #[serde(default)]
    pub decay: Decay,
    /// Optimization steps, >= 1.
    pub steps: usize,
    /// The feasible set the iterates are projected onto (default none).
    #[serde(default)]
    pub constraint: Constraint,
    /// Accept a step only if the (minibatch) loss drops; costs one query per step, plus one
    /// for `f(x)` when the estimator does not evaluate it.
    #[serde(default)]
    pub conservative: bool,
    /// ZO-SVRG: a full-objective estimate at a snapshot every this many steps, and variance-
    /// reduced minibatch estimates in between (common directions at both points).
    #[serde(default)]
    pub svrg_epoch: Option<usize>,
    /// Minibatch size for finite-sum objectives (the full objective when `None`).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Evaluate the full objective every this many steps for the trace and the best point
    /// (0: only the values the estimator computes anyway, and the final point).
    #[serde(default)]
    pub eval_every: usize,
    /// Seed of the directions and minibatches.
    pub seed: u64,
}

impl ZoConfig {
    /// A run of `steps` steps with a constant learning rate, no constraint, no minibatches, no
    /// variance reduction, no conservative test and seed 0; set the other fields as needed.
    pub fn new(estimator: Estimator, update: Update, lr: f64, steps: usize) -> Self {
        ZoConfig {
            estimator,
            update,
            lr,
            decay: Decay::Constant,
            steps,
            constraint: Constraint::Free,
            conservative: false,
            svrg_epoch: None,
            batch_size: None,
            eval_every: 0,
            seed: 0,
        }
    }

    /// Checks the run for an objective of dimension `d` with `samples` component functions; errors
    /// name the field.
    pub fn validate(&self, d: i64, samples: usize) -> Result<()> {
        self.estimator.validate(d)?;
        self.update.validate()?;
        self.constraint.validate()?;
        validate::positive("lr", self.lr)?;
        validate::positive_int("steps", self.steps)?;
        if let Some(b) = self.batch_size {
            if b == 0 || b > samples {
                return Err(Error::config(
                    "batch_size",
                    format!("{b} must be in 1..={samples} (the objective's samples)"),
                ));
            }
        }
        if self.svrg_epoch == Some(0) {
            return Err(Error::config("svrg_epoch", "must be >= 1"));
        }
        Ok(())
    }
}

/// One logged value of the full objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    /// Steps taken when the value was logged.
    pub step: usize,
    /// Queries spent when the value was logged.
    pub queries: u64,
    /// The full objective's value.
    pub f: f64,
}

/// What [`minimize`] returns.
#[derive(Debug)]
pub struct Trace {
    /// The last iterate.
    pub x: Tensor,
    /// The point with the lowest logged full-objective value, and that value.
    pub x_best: Tensor,
    /// The lowest logged full-objective value (NaN if none was logged).
    pub f_best: f64,
    /// Steps taken.
    pub steps: usize,
    /// Queries spent, logging included.
    pub queries: u64,
    /// Every logged value, in order.
    pub history: Vec<TracePoint>,
    /// Steps the conservative rule rejected.
    pub rejected: usize,
    /// Why the run ended before `steps` (e.g. the budget).
    pub stopped: Option<String>,
}

fn minibatch(
    samples: usize,
    b: Option<usize>,
    seed: u64,
    t: u64,
    dev: tch::Device,
) -> Option<Tensor> {
    let b = b?;
    let mut rng = SeedRng::stream(seed, "zo-batch", t);
    let idx: Vec<i64> = (0..b).map(|_| rng.below(samples) as i64).collect();
    Some(Tensor::from_slice(&idx).to_device(dev))
}

/// Minimizes the oracle's objective from `x0` (`[d]`) with `center` as the centre of norm-ball
/// constraints (`x0` when `None`).
pub fn minimize<O: Objective>(
    oracle: &mut Oracle<O>,
    x0: &Tensor,
    center: Option<&Tensor>,
    cfg: &ZoConfig,
) -> Result<Trace> {
    let d = oracle.dim();
    let samples = oracle.objective.samples();
    cfg.validate(d, samples)?;
    if x0.size() != [d] {
        return Err(Error::Shape {
            op: "zeroth-order start point".into(),
            expected: format!("[{d}]"),
            got: x0.size(),
        });
    }
    let center = center
        .map(|c| c.shallow_clone())
        .unwrap_or_else(|| x0.copy());
    let dev = x0.device();
    let mut x = cfg.constraint.project(&x0.detach().copy(), Some(&center));
    let mut m = x.zeros_like();
    let mut v = x.zeros_like();
    let mut v_hat = x.zeros_like();
    let per_step = cfg.estimator.queries(d) * if cfg.svrg_epoch.is_some() { 2 } else { 1 }
        + u64::from(cfg.conservative) * 2;
    let full_est = cfg.estimator.queries(d);
    let mut history = Vec::new();
    let mut best: Option<(f64, Tensor)> = None;
    let mut note = |step: usize, q: u64, f: f64, x: &Tensor, best: &mut Option<(f64, Tensor)>| {
        history.push(TracePoint {
            step,
            queries: q,
            f,
        });
        if f.is_finite() && best.as_ref().is_none_or(|(b, _)| f < *b) {
            *best = Some((f, x.copy()));
        }
    };
    let mut snapshot: Option<(Tensor, Tensor)> = None;
    let mut rejected = 0;
    let mut stopped = None;
    let mut t = 0;
    while t < cfg.steps {
        let svrg_refresh = cfg.svrg_epoch.is_some_and(|e| t % e == 0);
        let need = per_step
            + u64::from(cfg.eval_every > 0 && t % cfg.eval_every == 0)
            + if svrg_refresh { full_est } else { 0 };
        if !oracle.affords(need) {
            stopped = Some(format!(
                "query budget exhausted after {} queries and {t} steps (a step needs {need})",
                oracle.queries()
            ));
            break;
        }
        if cfg.eval_every > 0 && t % cfg.eval_every == 0 {
            let f = oracle.value(&x, None)?;
            note(t, oracle.queries(), f, &x, &mut best);
        }
        let lr = match cfg.decay {
            Decay::Constant => cfg.lr,
            Decay::InvSqrt => cfg.lr / ((t + 1) as f64).sqrt(),
        };
        let seed_t = derive(cfg.seed, "zo-step", t as u64);
        let batch = minibatch(samples, cfg.batch_size, cfg.seed, t as u64, dev);
        let est = cfg.estimator.estimate(oracle, &x, batch.as_ref(), seed_t)?;
        let mut g = est.grad;
        if let Some(e) = cfg.svrg_epoch {
            if t % e == 0 {
                let snap_seed = derive(cfg.seed, "zo-snapshot", t as u64);
                let full = cfg.estimator.estimate(oracle, &x, None, snap_seed)?;
                snapshot = Some((x.copy(), full.grad));
            }
            let (xs, gfull) = snapshot.as_ref().expect("snapshot set at t = 0");
            let at_snap = cfg.estimator.estimate(oracle, xs, batch.as_ref(), seed_t)?;
            g = g - at_snap.grad + gfull;
        }
        if !bool::try_from(g.isfinite().all())? {
            return Err(Error::Numerical(format!(
                "the gradient estimate is not finite at step {t}"
            )));
        }
        if batch.is_none() && cfg.eval_every == 0 {
            if let Some(f) = est.fx {
                note(t, oracle.queries(), f, &x, &mut best);
            }
        }
        let dir = match cfg.update {
            Update::Sgd => g,
            Update::Sign => g.sign(),
            Update::Momentum { beta } => {
                m = &m * beta + &g;
                m.shallow_clone()
            }
            Update::Adam { beta1, beta2, eps } => {
                m = &m * beta1 + &g * (1.0 - beta1);
                v = &v * beta2 + &g * &g * (1.0 - beta2);
                v_hat = v_hat.maximum(&v);
                &m / (v_hat.sqrt() + eps)
            }
        };
        let x_new = cfg.constraint.project(&(&x - dir * lr), Some(&center));
        if cfg.conservative {
            let f_cur = match (est.fx, cfg.svrg_epoch) {
                (Some(f), None) => f,
                _ => oracle.value(&x, batch.as_ref())?,
            };
            let f_new = oracle.value(&x_new, batch.as_ref())?;
            if f_new < f_cur {
                x = x_new;
            } else {
                rejected += 1;
            }
        } else {
            x = x_new;
        }
        t += 1;
    }
    // The final point, if the budget allows one more query.
    if oracle.affords(1) {
        let f = oracle.value(&x, None)?;
        note(t, oracle.queries(), f, &x, &mut best);
    }
    let (f_best, x_best) = best.unwrap_or((f64::NAN, x.copy()));
    Ok(Trace {
        x,
        x_best,
        f_best,
        steps: t,
        queries: oracle.queries(),
        history,
        rejected,
        stopped,
    })
}
