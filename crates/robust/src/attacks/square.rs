//! Square attack (Andriushchenko et al., 2020), l_inf: a score-based random search that changes
//! one random square window per image and iteration to a corner of the eps-ball, accepting the
//! change if the margin loss drops. Sees only the model's scores through a [`ScoreOracle`].

use crate::attack::{check_batch, nonzero_idx, Attack, AttackOutput, ScoreOracle};
use crate::loss;
use crate::threat::{Norm, ThreatModel};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The l_inf Square attack: score-based random search within a query budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Square {
    /// The perturbation set (l_inf only).
    pub threat: ThreatModel,
    /// Query budget per sample (5000 in AutoAttack).
    pub queries: usize,
    /// Initial fraction of pixels changed per iteration (0.8 in AutoAttack).
    #[serde(default = "p_init")]
    pub p_init: f64,
}

fn p_init() -> f64 {
    0.8
}

/// The fraction of pixels to change at iteration `it` of `n` (the published piecewise schedule,
/// rescaled to a budget of 10000 queries).
pub fn p_schedule(p_init: f64, it: usize, n: usize) -> f64 {
    let it = (it as f64 / n.max(1) as f64 * 10000.0) as usize;
    let div = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        _ => 512.0,
    };
    p_init / div
}

impl Square {
    /// The Square attack with `queries` queries per sample and `p_init` 0.8.
    pub fn new(threat: ThreatModel, queries: usize) -> Square {
        Square {
            threat,
            queries,
            p_init: 0.8,
        }
    }

    /// Checks the threat model (l_inf), the query budget and `p_init` in (0, 1].
    pub fn validate(&self) -> Result<()> {
        self.threat.validate()?;
        if self.threat.norm != Norm::Linf {
            return Err(Error::config(
                "norm",
                "the Square attack is implemented for linf",
            ));
        }
        validate::positive_int("queries", self.queries)?;
        validate::finite("p_init", self.p_init)?;
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(Error::config(
                "p_init",
                format!("{} must be in (0, 1]", self.p_init),
            ));
        }
        Ok(())
    }
}

impl Attack for Square {
    fn name(&self) -> String {
        format!("square-{}", self.queries)
    }
    fn threat(&self) -> Option<ThreatModel> {
        Some(self.threat)
    }
    fn perturb(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<AttackOutput> {
        self.validate()?;
        check_batch(model, Some(&self.threat), x, y, target)?;
        let size = x.size();
        let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
        if h < 2 || w < 2 {
            return Err(Error::invalid(format!(
                "the Square attack needs images of at least 2x2 pixels, got {h}x{w}"
            )));
        }
        let dev = x.device();
        let eps = self.threat.eps;
        let mut oracle = ScoreOracle::new(model, b, Some(self.queries as i64));
        let all = Tensor::arange(b, (Kind::Int64, dev));
        // Vertical stripes: one random sign per channel and column.
        let signs = Tensor::randint(2, [b, c, 1, w], (Kind::Float, dev)) * 2.0 - 1.0;
        let mut x_best = self.threat.clamp_box(&(x + signs * eps));
        let logits = oracle.scores(&x_best, &all)?;
        let mut loss_min = loss::goal_margin(&logits, y, target);
        // Success: margin below zero (untargeted) or the target on top (targeted loss < 0).
        let rows = Tensor::arange(h, (Kind::Int64, dev)).view([1, 1, h, 1]);
        let cols = Tensor::arange(w, (Kind::Int64, dev)).view([1, 1, 1, w]);
        let n_features = (c * h * w) as f64;
        for it in 1..self.queries {
            let todo = nonzero_idx(&loss_min.ge(0.0));
            let m = todo.size()[0];
            if m == 0 {
                break;
            }
            let p = p_schedule(self.p_init, it, self.queries);
            let s = ((p * n_features / c as f64).sqrt().round() as i64).clamp(1, h.min(w) - 1);
            let xc = x.index_select(0, &todo);
            let xb = x_best.index_select(0, &todo);
            let yc = y.index_select(0, &todo);
            let tc = target.map(|t| t.index_select(0, &todo));
            let r0 = Tensor::randint(h - s + 1, [m, 1, 1, 1], (Kind::Int64, dev));
            let c0 = Tensor::randint(w - s + 1, [m, 1, 1, 1], (Kind::Int64, dev));
            let win = rows
                .ge_tensor(&r0)
                .logical_and(&rows.lt_tensor(&(&r0 + s)))
                .logical_and(&cols.ge_tensor(&c0).logical_and(&cols.lt_tensor(&(&c0 + s))));
            let delta = &xb - &xc;
            let mut new_delta = Tensor::zeros_like(&delta);
            // Redraw window signs where they would leave the window unchanged (a wasted query).
            let mut need = Tensor::ones([m], (Kind::Bool, dev));
            for _ in 0..10 {
                let sgn = Tensor::randint(2, [m, c, 1, 1], (Kind::Float, dev)) * 2.0 - 1.0;
                let cand = (sgn * eps).expand_as(&delta).where_self(&win, &delta);
                let need4 = need.view([m, 1, 1, 1]);
                new_delta = cand.where_self(&need4, &new_delta);
                let moved = self
                    .threat
                    .clamp_box(&(&xc + &new_delta))
                    .g_sub(&xb)
                    .abs()
                    .gt(1e-7)
                    .logical_and(&win)
                    .flatten(1, -1)
                    .any_dim(1, false);
                need = moved.logical_not();
                if need.any().int64_value(&[]) == 0 {
                    break;
                }
            }
            let x_new = self.threat.clamp_box(&(&xc + &new_delta));
            let logits = oracle.scores(&x_new, &todo)?;
            let l = loss::goal_margin(&logits, &yc, tc.as_ref());
            let cur = loss_min.index_select(0, &todo);
            let better = l.lt_tensor(&cur);
            let upd = x_new.where_self(&better.view([m, 1, 1, 1]), &xb);
            let _ = x_best.index_copy_(0, &todo, &upd);
            let _ = loss_min.index_copy_(0, &todo, &l.where_self(&better, &cur));
        }
        let success = loss_min.lt(0.0);
        // Verify on the returned images (not counted as queries).
        let final_logits = tch::no_grad(|| model.forward_t(&x_best, false));
        let success = match target {
            None => success.logical_and(&final_logits.argmax(-1, false).ne_tensor(y)),
            Some(t) => success.logical_and(&final_logits.argmax(-1, false).eq_tensor(t)),
        };
        Ok(AttackOutput {
            x_adv: x_best,
            success,
            queries: oracle.queries,
        })
    }
}
