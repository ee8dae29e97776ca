//! Carlini & Wagner l_2 (2017): minimize `||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`
//! over `x' = lo + (hi - lo) * (tanh(w) + 1) / 2` with Adam, binary-searching `c` per sample.
//! A minimum-norm attack: it reports the smallest successful perturbation it found.

use crate::attack::{check_batch, Attack, AttackOutput};
use crate::loss;
use crate::threat::{broadcast_to, ThreatModel};
use rustworthy_core::{validate, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The Carlini & Wagner l_2 attack (untargeted, or towards a target class).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarliniWagner {
    /// Initial trade-off constant.
    pub c_init: f64,
    /// Confidence margin.
    pub kappa: f64,
    /// Adam steps per binary-search step.
    pub steps: usize,
    /// Binary-search steps over the trade-off constant `c` (default 5).
    pub binary_search_steps: usize,
    /// Adam learning rate on the tanh-space variable (default 0.01).
    pub lr: f64,
    /// Successes with a larger l2 norm do not count (None: any norm).
    #[serde(default)]
    pub max_norm: Option<f64>,
}

impl Default for CarliniWagner {
    fn default() -> Self {
        CarliniWagner {
            c_init: 1e-2,
            kappa: 0.0,
            steps: 100,
            binary_search_steps: 5,
            lr: 1e-2,
            max_norm: None,
        }
    }
}

impl CarliniWagner {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate::positive("c_init", self.c_init)?;
        validate::non_negative("kappa", self.kappa)?;
        validate::positive_int("steps", self.steps)?;
        validate::positive_int("binary_search_steps", self.binary_search_steps)?;
        validate::positive("lr", self.lr)?;
        if let Some(m) = self.max_norm {
            validate::positive("max_norm", m)?;
        }
        Ok(())
    }
}

impl Attack for CarliniWagner {
    fn name(&self) -> String {
        format!("cw-l2-{}x{}", self.binary_search_steps, self.steps)
    }
    fn threat(&self) -> Option<ThreatModel> {
        self.max_norm.map(|eps| ThreatModel {
            norm: crate::threat::Norm::L2,
            eps,
            lo: 0.0,
            hi: 1.0,
        })
    }
    fn perturb(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<AttackOutput> {
        self.validate()?;
        check_batch(model, None, x, y, target)?;
        let (lo, hi) = (0.0, 1.0);
        let b = x.size()[0];
        let dev = x.device();
        let to_img = |w: &Tensor| (w.tanh() + 1.0) * (0.5 * (hi - lo)) + lo;
        // Inverse map of the clean image, pulled slightly inside so atanh stays finite.
        let w0 = (((x - lo) / (hi - lo)) * 2.0 - 1.0)
            .clamp(-1.0 + 1e-6, 1.0 - 1e-6)
            .atanh();
        let mut c = Tensor::full([b], self.c_init, (Kind::Float, dev));
        let mut lower = Tensor::zeros([b], (Kind::Float, dev));
        let mut upper = Tensor::full([b], 1e10, (Kind::Float, dev));
        let mut best_l2 = Tensor::full([b], f64::INFINITY, (Kind::Float, dev));
        let mut x_best = x.copy();
        let mut queries = Tensor::zeros([b], (Kind::Int64, dev));
        let (beta1, beta2, adam_eps) = (0.9f64, 0.999f64, 1e-8);
        let limit = self.max_norm.map(|m| m * m).unwrap_or(f64::INFINITY);
        for _ in 0..self.binary_search_steps {
            let mut w = w0.copy();
            let mut m1 = w.zeros_like();
            let mut m2 = w.zeros_like();
            let mut round_success = Tensor::zeros([b], (Kind::Bool, dev));
            for t in 1..=self.steps {
                let wv = w.detach().set_requires_grad(true);
                let xa = to_img(&wv);
                let logits = model.forward_t(&xa, false);
                let l2 = (&xa - x)
                    .square()
                    .flatten(1, -1)
                    .sum_dim_intlist(1, false, Kind::Float);
                let f = match target {
                    None => loss::margin(&logits, y),
                    Some(t) => -loss::margin(&logits, t),
                }
                .clamp_min(-self.kappa);
                let obj = (&l2 + &c * &f).sum(Kind::Float);
                let g = Tensor::run_backward(&[obj], &[&wv], false, false)[0].detach();
                let _ = queries.g_add_scalar_(1);
                tch::no_grad(|| {
                    let pred = logits.argmax(-1, false);
                    // Success needs the confidence margin kappa, as in the original.
                    let ok = match target {
                        None => pred
                            .ne_tensor(y)
                            .logical_and(&loss::margin(&logits, y).le(-self.kappa)),
                        Some(t) => pred
                            .eq_tensor(t)
                            .logical_and(&loss::margin(&logits, t).ge(self.kappa)),
                    };
                    let l2d = l2.detach();
                    let ok = ok.logical_and(&l2d.le(limit));
                    let _ = round_success.logical_or_(&ok);
                    let better = ok.logical_and(&l2d.lt_tensor(&best_l2));
                    best_l2.copy_(&l2d.where_self(&better, &best_l2));
                    x_best.copy_(&xa.detach().where_self(&broadcast_to(&better, x), &x_best));
                    m1 = &m1 * beta1 + &g * (1.0 - beta1);
                    m2 = &m2 * beta2 + g.square() * (1.0 - beta2);
                    let mh = &m1 / (1.0 - beta1.powi(t as i32));
                    let vh = &m2 / (1.0 - beta2.powi(t as i32));
                    w = &w - mh * self.lr / (vh.sqrt() + adam_eps);
                });
            }
            // Binary search on c: shrink after a success, grow (x10 until bracketed) otherwise.
            upper = c.where_self(&round_success, &upper);
            lower = lower.where_self(&round_success, &c);
            let bracketed = upper.lt(1e9);
            let mid = (&lower + &upper) * 0.5;
            c = mid.where_self(&bracketed, &(&c * 10.0));
        }
        let success = best_l2.isfinite();
        Ok(AttackOutput {
            x_adv: x_best,
            success,
            queries,
        })
    }
}
