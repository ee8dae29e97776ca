//! Score-based black-box attacks from zeroth-order estimates, on the attack interface of
//! `rustworthy-robust` (same input checks, threat-model projection, per-sample success and
//! exact per-sample query counts through a [`ScoreOracle`] with a budget):
//!
//! - ZOO (Chen et al., 2017): per iteration, `coords` random coordinates per image, a symmetric
//!   difference on each (`2 coords` queries) and the ZOO-Adam per-coordinate update.
//! - ZO-signSGD (Liu et al., 2019): RGE with `q` Gaussian directions and forward differences
//!   (`q` queries; `f(x)` is known from the previous iteration), a signed step.
//! - NES (Ilyas et al., 2018): `q / 2` antithetic Gaussian pairs (`q` queries), a signed step.
//!
//! All three minimize the logit margin `z_y - max_{j != y} z_j` (targeted:
//! `max_{j != t} z_j - z_t`) and stop a sample as soon as it is below zero, after one more query
//! that scores the new point. The l_2 versions step along the normalized estimate instead of
//! its sign.

use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use rustworthy_robust::attack::{check_batch, nonzero_idx, Attack, AttackOutput, ScoreOracle};
use rustworthy_robust::loss;
use rustworthy_robust::ThreatModel;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which estimator drives the attack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ZoAttackKind {
    /// Coordinate-wise symmetric differences with step `h` on `coords` coordinates.
    Zoo {
        /// Coordinates estimated per image and iteration (128 published).
        coords: usize,
        /// Difference step in pixel units, > 0.
        h: f64,
    },
    /// Forward-difference RGE with `q` Gaussian directions and radius `mu`.
    SignSgd {
        /// Random directions per estimate.
        q: usize,
        /// Smoothing radius in pixel units, > 0.
        mu: f64,
    },
    /// `q` antithetic Gaussian samples (`q` even) with radius `sigma`.
    Nes {
        /// Samples per estimate (even, >= 2).
        q: usize,
        /// Smoothing radius in pixel units, > 0.
        sigma: f64,
    },
}

/// A zeroth-order black-box attack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoAttack {
    /// The estimator and its parameters.
    pub kind: ZoAttackKind,
    /// The perturbation set.
    pub threat: ThreatModel,
    /// Query budget per sample.
    pub queries: usize,
    /// Step size (ZOO: the Adam learning rate; the others: the signed step).
    pub lr: f64,
    /// ZO-signSGD and NES: step along the sign of a momentum of the l1-normalized estimates,
    /// `m <- beta m + g / mean|g|` (as in MI-FGSM); 0 for the published plain signed step.
    #[serde(default)]
    pub momentum: f64,
}

/// Points scored per oracle call (bounds the memory of a batch of perturbed images).
const POINTS_PER_CALL: i64 = 16384;

impl ZoAttack {
    /// ZOO with the published batch of 128 coordinates and Adam.
    pub fn zoo(threat: ThreatModel, queries: usize) -> ZoAttack {
        ZoAttack {
            kind: ZoAttackKind::Zoo {
                coords: 128,
                h: 1e-3,
            },
            lr: threat.eps / 2.0,
            threat,
            queries,
            momentum: 0.0,
        }
    }
    /// ZO-signSGD with 20 directions, radius 5e-3 and step `eps / 20`.
    pub fn sign_sgd(threat: ThreatModel, queries: usize) -> ZoAttack {
        ZoAttack {
            kind: ZoAttackKind::SignSgd { q: 20, mu: 5e-3 },
            lr: threat.eps / 20.0,
            threat,
            queries,
            momentum: 0.0,
        }
    }
    /// NES with 50 antithetic samples, radius 1e-3 and step `eps / 20`.
    pub fn nes(threat: ThreatModel, queries: usize) -> ZoAttack {
        ZoAttack {
            kind: ZoAttackKind::Nes { q: 50, sigma: 1e-3 },
            lr: threat.eps / 20.0,
            threat,
            queries,
            momentum: 0.0,
        }
    }

    /// Checks every field, and that the budget pays for at least one iteration.
    pub fn validate(&self) -> Result<()> {
        self.threat.validate()?;
        validate::positive("lr", self.lr)?;
        validate::positive_int("queries", self.queries)?;
        validate::in_half_open("momentum", self.momentum, 0.0, 1.0)?;
        let (radius, field) = match self.kind {
            ZoAttackKind::Zoo { coords, h } => {
                validate::positive_int("coords", coords)?;
                (h, "h")
            }
            ZoAttackKind::SignSgd { q, mu } => {
                validate::positive_int("q", q)?;
                (mu, "mu")
            }
            ZoAttackKind::Nes { q, sigma } => {
                if q < 2 || q % 2 != 0 {
                    return Err(Error::config(
                        "q",
                        format!("NES samples antithetic pairs: q must be even and >= 2, got {q}"),
                    ));
                }
                (sigma, "sigma")
            }
        };
        validate::finite(field, radius)?;
        if radius <= 0.0 {
            return Err(Error::config(
                field,
                format!("the finite-difference radius must be > 0, got {radius}"),
            ));
        }
        if self.queries < 1 + self.cost_per_iteration() as usize {
            return Err(Error::config(
                "queries",
                format!(
                    "a budget of {} cannot pay for one iteration ({} queries)",
                    self.queries,
                    1 + self.cost_per_iteration()
                ),
            ));
        }
        Ok(())
    }

    /// The estimate `g` (`[m, d]`) of the samples `todo`, or with momentum the updated
    /// momentum of those samples.
    fn with_momentum(&self, mom: &mut Tensor, todo: &Tensor, g: Tensor) -> Tensor {
        if self.momentum == 0.0 {
            return g;
        }
        let scale = g.abs().mean_dim(1, true, None).clamp_min(1e-12);
        let m = mom.index_select(0, todo) * self.momentum + g / scale;
        let _ = mom.index_copy_(0, todo, &m);
        m
    }

    /// Queries per sample per iteration, the scoring of the new point included.
    pub fn cost_per_iteration(&self) -> i64 {
        match self.kind {
            ZoAttackKind::Zoo { coords, .. } => 2 * coords as i64 + 1,
            ZoAttackKind::SignSgd { q, .. } | ZoAttackKind::Nes { q, .. } => q as i64 + 1,
        }
    }
}

/// Scores `p` points per sample: `pts` is `[m * p, C, H, W]` (sample-major), `idx` the batch
/// positions of the `m` samples. Returns the search loss `[m, p]`.
fn score_points(
    oracle: &mut ScoreOracle<'_>,
    pts: &Tensor,
    idx: &Tensor,
    y: &Tensor,
    t: Option<&Tensor>,
    p: i64,
) -> Result<Tensor> {
    let rep = |v: &Tensor| v.repeat_interleave_self_int(p, 0, None);
    let (idx_r, y_r, t_r) = (rep(idx), rep(y), t.map(rep));
    let n = pts.size()[0];
    let mut out = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + POINTS_PER_CALL).min(n);
        let logits = oracle.scores(&pts.narrow(0, s, e - s), &idx_r.narrow(0, s, e - s))?;
        let tt = t_r.as_ref().map(|t| t.narrow(0, s, e - s));
        out.push(loss::goal_margin(
            &logits,
            &y_r.narrow(0, s, e - s),
            tt.as_ref(),
        ));
        s = e;
    }
    Ok(Tensor::cat(&out, 0).view([-1, p]))
}

impl Attack for ZoAttack {
    fn name(&self) -> String {
        let m = if self.momentum > 0.0 {
            format!("-m{}", self.momentum)
        } else {
            String::new()
        };
        match self.kind {
            ZoAttackKind::Zoo { coords, .. } => format!("zoo-{coords}x{}", self.queries),
            ZoAttackKind::SignSgd { q, .. } => format!("zo-signsgd-q{q}x{}{m}", self.queries),
            ZoAttackKind::Nes { q, .. } => format!("nes-q{q}x{}{m}", self.queries),
        }
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
        let b = size[0];
        let d: i64 = size[1..].iter().product();
        let dev = x.device();
        let mut oracle = ScoreOracle::new(model, b, Some(self.queries as i64));
        let all = Tensor::arange(b, (Kind::Int64, dev));
        let logits = oracle.scores(x, &all)?;
        let mut loss_cur = loss::goal_margin(&logits, y, target);
        let mut x_cur = x.copy();
        let mut x_best = x.copy();
        let mut loss_best = loss_cur.copy();
        // ZOO-Adam state per coordinate.
        let (mut m1, mut m2, mut steps) = match self.kind {
            ZoAttackKind::Zoo { .. } => (
                Tensor::zeros([b, d], (Kind::Float, dev)),
                Tensor::zeros([b, d], (Kind::Float, dev)),
                Tensor::zeros([b, d], (Kind::Float, dev)),
            ),
            _ => (Tensor::new(), Tensor::new(), Tensor::new()),
        };
        let mut mom = if self.momentum > 0.0 {
            Tensor::zeros([b, d], (Kind::Float, dev))
        } else {
            Tensor::new()
        };
        let cost = self.cost_per_iteration();
        let iterations = (self.queries as i64 - 1) / cost;
        for _ in 0..iterations {
            let todo = nonzero_idx(&loss_best.ge(0.0));
            let m = todo.size()[0];
            if m == 0 {
                break;
            }
            let xc = x.index_select(0, &todo);
            let xa = x_cur.index_select(0, &todo).view([m, d]);
            let yc = y.index_select(0, &todo);
            let tc = target.map(|t| t.index_select(0, &todo));
            let f0 = loss_cur.index_select(0, &todo);
            let shape4 = |n: i64| {
                let mut s = size.clone();
                s[0] = n;
                s
            };
            let x_new = match self.kind {
                ZoAttackKind::Zoo { coords, h } => {
                    let k = (coords as i64).min(d);
                    let (_, ids) = Tensor::rand([m, d], (Kind::Float, dev)).topk(k, 1, true, false);
                    // [m, k, d] unit steps on the chosen coordinates.
                    let e = Tensor::zeros([m, k, d], (Kind::Float, dev)).scatter_value(
                        2,
                        &ids.unsqueeze(2),
                        h,
                    );
                    let pts = Tensor::cat(&[xa.unsqueeze(1) + &e, xa.unsqueeze(1) - &e], 1);
                    let l = score_points(
                        &mut oracle,
                        &pts.view(shape4(m * 2 * k).as_slice()),
                        &todo,
                        &yc,
                        tc.as_ref(),
                        2 * k,
                    )?;
                    let g = (l.narrow(1, 0, k) - l.narrow(1, k, k)) / (2.0 * h);
                    // ZOO-Adam on the chosen coordinates, with per-coordinate step counts.
                    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
                    let gm = |s: &Tensor| s.index_select(0, &todo).gather(1, &ids, false);
                    let mm = gm(&m1) * b1 + &g * (1.0 - b1);
                    let vv = gm(&m2) * b2 + &g * &g * (1.0 - b2);
                    let tt = gm(&steps) + 1.0;
                    let mh: Tensor = &mm / (1.0 - Tensor::pow_scalar(b1, &tt));
                    let vh: Tensor = &vv / (1.0 - Tensor::pow_scalar(b2, &tt));
                    let delta = -(mh / (vh.sqrt() + eps)) * self.lr;
                    for (state, val) in [(&mut m1, &mm), (&mut m2, &vv), (&mut steps, &tt)] {
                        let rows = state.index_select(0, &todo).scatter(1, &ids, val);
                        let _ = state.index_copy_(0, &todo, &rows);
                    }
                    xa.scatter_add(1, &ids, &delta)
                }
                ZoAttackKind::SignSgd { q, mu } => {
                    let q = q as i64;
                    let u = Tensor::randn([m, q, d], (Kind::Float, dev));
                    let pts = xa.unsqueeze(1) + &u * mu;
                    let l = score_points(
                        &mut oracle,
                        &pts.view(shape4(m * q).as_slice()),
                        &todo,
                        &yc,
                        tc.as_ref(),
                        q,
                    )?;
                    let c = (l - f0.unsqueeze(1)) / mu;
                    let g = (c.unsqueeze(2) * u).mean_dim(1, false, None);
                    let g = self.with_momentum(&mut mom, &todo, g);
                    &xa - self
                        .threat
                        .ascent_direction(&g.view(shape4(m).as_slice()))
                        .view([m, d])
                        * self.lr
                }
                ZoAttackKind::Nes { q, sigma } => {
                    let half = q as i64 / 2;
                    let u = Tensor::randn([m, half, d], (Kind::Float, dev));
                    let u = Tensor::cat(&[&u, &(-&u)], 1);
                    let pts = xa.unsqueeze(1) + &u * sigma;
                    let l = score_points(
                        &mut oracle,
                        &pts.view(shape4(m * 2 * half).as_slice()),
                        &todo,
                        &yc,
                        tc.as_ref(),
                        2 * half,
                    )?;
                    let g = (l.unsqueeze(2) * u).mean_dim(1, false, None) / sigma;
                    let g = self.with_momentum(&mut mom, &todo, g);
                    &xa - self
                        .threat
                        .ascent_direction(&g.view(shape4(m).as_slice()))
                        .view([m, d])
                        * self.lr
                }
            };
            let x_new = self.threat.project(&x_new.view(shape4(m).as_slice()), &xc);
            let l_new = score_points(&mut oracle, &x_new, &todo, &yc, tc.as_ref(), 1)?.view([m]);
            let _ = x_cur.index_copy_(0, &todo, &x_new);
            let _ = loss_cur.index_copy_(0, &todo, &l_new);
            let lb = loss_best.index_select(0, &todo);
            let better = l_new.lt_tensor(&lb);
            let xb = x_best.index_select(0, &todo);
            let upd = x_new.where_self(&better.view([m, 1, 1, 1]), &xb);
            let _ = x_best.index_copy_(0, &todo, &upd);
            let _ = loss_best.index_copy_(0, &todo, &l_new.where_self(&better, &lb));
        }
        // Verify on the returned images (not counted as queries).
        let final_logits = tch::no_grad(|| model.forward_t(&x_best, false));
        let success = loss::goal_margin(&final_logits, y, target).lt(0.0);
        Ok(AttackOutput {
            x_adv: x_best,
            success,
            queries: oracle.queries,
        })
    }
}
