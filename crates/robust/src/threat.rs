//! The threat model: which perturbations an attacker may make. Inputs are images in a pixel box
//! (by default [0, 1]); normalization lives inside the model, so `eps` is always measured in
//! pixel units. Every attack output satisfies `|x_adv - x| <= eps` in its norm and
//! `lo <= x_adv <= hi`, and the inputs are checked before an attack starts.

use rustworthy_core::{validate, Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::{Kind, Tensor};

/// Perturbation norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// The l_inf norm: every pixel moves by at most `eps`.
    Linf,
    /// The l_2 norm of the whole per-sample perturbation is at most `eps`.
    L2,
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        })
    }
}

impl std::str::FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Norm> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l_inf" | "inf" => Ok(Norm::Linf),
            "l2" | "l_2" | "2" => Ok(Norm::L2),
            o => Err(Error::config(
                "norm",
                format!("unknown norm `{o}` (linf, l2)"),
            )),
        }
    }
}

fn default_lo() -> f64 {
    0.0
}
fn default_hi() -> f64 {
    1.0
}

/// An `eps`-ball in `norm` intersected with the pixel box `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreatModel {
    /// The norm of the ball.
    pub norm: Norm,
    /// Radius of the ball in pixel units, > 0 (for l_inf at most `hi - lo`).
    pub eps: f64,
    /// Lower bound of the pixel box (default 0).
    #[serde(default = "default_lo")]
    pub lo: f64,
    /// Upper bound of the pixel box, above `lo` (default 1).
    #[serde(default = "default_hi")]
    pub hi: f64,
}

/// Slack for floating-point rounding when checking constraints.
pub const TOL: f64 = 1e-5;

impl ThreatModel {
    /// A checked threat model of radius `eps` in `norm` over the pixel box `[0, 1]`.
    pub fn new(norm: Norm, eps: f64) -> Result<ThreatModel> {
        let t = ThreatModel {
            norm,
            eps,
            lo: 0.0,
            hi: 1.0,
        };
        t.validate()?;
        Ok(t)
    }
    /// A checked l_inf threat model of radius `eps` over `[0, 1]`.
    pub fn linf(eps: f64) -> Result<ThreatModel> {
        ThreatModel::new(Norm::Linf, eps)
    }
    /// A checked l_2 threat model of radius `eps` over `[0, 1]`.
    pub fn l2(eps: f64) -> Result<ThreatModel> {
        ThreatModel::new(Norm::L2, eps)
    }

    /// Checks that `eps` is positive, the box bounds are finite and ordered, and an l_inf `eps` is
    /// not wider than the box.
    pub fn validate(&self) -> Result<()> {
        validate::positive("eps", self.eps)?;
        validate::finite("bounds.lo", self.lo)?;
        validate::finite("bounds.hi", self.hi)?;
        if self.lo >= self.hi {
            return Err(Error::config(
                "bounds",
                format!(
                    "lower bound {} must be below upper bound {}",
                    self.lo, self.hi
                ),
            ));
        }
        if self.norm == Norm::Linf && self.eps > self.hi - self.lo {
            return Err(Error::config(
                "eps",
                format!(
                    "{} exceeds the width of the pixel box [{}, {}]: every image would be reachable",
                    self.eps, self.lo, self.hi
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `x` is a finite float batch inside the pixel box. Images outside the box are
    /// almost always a normalization mistake (normalized tensors passed to a model that
    /// normalizes itself), so the error says so.
    pub fn check_images(&self, x: &Tensor) -> Result<()> {
        if x.kind() != Kind::Float {
            return Err(Error::invalid(format!(
                "attack inputs must be float32 images, got {:?}",
                x.kind()
            )));
        }
        if x.numel() == 0 {
            return Err(Error::invalid("attack input batch is empty"));
        }
        let (mn, mx) = tch::no_grad(|| (x.min().double_value(&[]), x.max().double_value(&[])));
        if !mn.is_finite() || !mx.is_finite() || x.isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::Numerical(
                "attack inputs contain NaN or infinite values".into(),
            ));
        }
        if mn < self.lo - TOL || mx > self.hi + TOL {
            return Err(Error::invalid(format!(
                "attack inputs span [{mn:.4}, {mx:.4}], outside the pixel box [{}, {}]; pass raw \
                 images (the model normalizes them itself), not normalized tensors",
                self.lo, self.hi
            )));
        }
        Ok(())
    }

    /// Clamps into the pixel box.
    pub fn clamp_box(&self, x: &Tensor) -> Tensor {
        x.clamp(self.lo, self.hi)
    }

    /// Projects `x_adv` onto the eps-ball around `x` intersected with the pixel box.
    pub fn project(&self, x_adv: &Tensor, x: &Tensor) -> Tensor {
        let delta = x_adv - x;
        let delta = match self.norm {
            Norm::Linf => delta.clamp(-self.eps, self.eps),
            Norm::L2 => {
                let n = per_sample_norm(&delta, Norm::L2).clamp_min(1e-12);
                let f = (Tensor::from(self.eps) / n).clamp_max(1.0);
                delta * broadcast_to(&f, x)
            }
        };
        // Clamping into the box only moves coordinates toward x, so the norm bound still holds.
        (x + delta).clamp(self.lo, self.hi)
    }

    /// A projector onto the ball around `x` intersected with the box, with the per-pixel
    /// bounds of the l_inf case computed once (one clamp per projection instead of four passes).
    pub fn projector(&self, x: &Tensor) -> Projector {
        let bounds = match self.norm {
            Norm::Linf => Some((
                (x - self.eps).clamp_min(self.lo),
                (x + self.eps).clamp_max(self.hi),
            )),
            Norm::L2 => None,
        };
        Projector {
            threat: *self,
            x: x.shallow_clone(),
            bounds,
        }
    }

    /// A uniformly random point of the ball around `x` (clamped to the box), drawn from
    /// libtorch's generator.
    pub fn random_start(&self, x: &Tensor) -> Tensor {
        let delta = match self.norm {
            Norm::Linf => x.rand_like() * (2.0 * self.eps) - self.eps,
            Norm::L2 => {
                let g = x.randn_like();
                let n = per_sample_norm(&g, Norm::L2).clamp_min(1e-12);
                let d = x.numel() as f64 / x.size()[0].max(1) as f64;
                // radius ~ eps * U^(1/d) for a uniform draw in the ball.
                let r = Tensor::rand([x.size()[0]], (Kind::Float, x.device()))
                    .pow_tensor_scalar(1.0 / d)
                    * self.eps;
                g * broadcast_to(&(r / n), x)
            }
        };
        (x + delta).clamp(self.lo, self.hi)
    }

    /// The steepest-ascent direction for a gradient under this norm: the sign for l_inf, the
    /// l2-normalized gradient for l_2.
    pub fn ascent_direction(&self, grad: &Tensor) -> Tensor {
        match self.norm {
            Norm::Linf => grad.sign(),
            Norm::L2 => {
                let n = per_sample_norm(grad, Norm::L2).clamp_min(1e-12);
                grad / broadcast_to(&n, grad)
            }
        }
    }

    /// Per-sample maximum violation of the constraints (0 when all hold up to rounding):
    /// `max(norm(x_adv - x) - eps, box overshoot)`.
    pub fn violation(&self, x_adv: &Tensor, x: &Tensor) -> Tensor {
        let n = per_sample_norm(&(x_adv - x), self.norm) - self.eps;
        let flat = x_adv.flatten(1, -1);
        let below = (-(&flat) + self.lo).amax(1, false);
        let above = (flat - self.hi).amax(1, false);
        n.maximum(&below).maximum(&above).clamp_min(0.0)
    }
}

impl fmt::Display for ThreatModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} eps={}", self.norm, self.eps)
    }
}

/// [`ThreatModel::project`] for one fixed clean batch (see [`ThreatModel::projector`]).
pub struct Projector {
    threat: ThreatModel,
    x: Tensor,
    bounds: Option<(Tensor, Tensor)>,
}

impl Projector {
    /// Projects `x_adv` onto the ball around the clean batch intersected with the pixel box.
    pub fn project(&self, x_adv: &Tensor) -> Tensor {
        match &self.bounds {
            Some((lo, hi)) => x_adv.clamp_tensor(Some(lo), Some(hi)),
            None => self.threat.project(x_adv, &self.x),
        }
    }

    /// Keeps the rows `idx` (after samples leave the batch).
    pub fn keep(&mut self, idx: &Tensor) {
        self.x = self.x.index_select(0, idx);
        self.bounds = self
            .bounds
            .as_ref()
            .map(|(l, h)| (l.index_select(0, idx), h.index_select(0, idx)));
    }
}

/// Per-sample norm of a batch `[B, ...]`, shape `[B]`.
pub fn per_sample_norm(t: &Tensor, norm: Norm) -> Tensor {
    let flat = t.flatten(1, -1);
    match norm {
        Norm::Linf => flat.abs().amax(1, false),
        Norm::L2 => flat.square().sum_dim_intlist(1, false, t.kind()).sqrt(),
    }
}

/// Reshapes a per-sample `[B]` tensor to broadcast against `like` (`[B, 1, 1, 1]`).
pub fn broadcast_to(v: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![v.size()[0]];
    shape.extend(std::iter::repeat_n(1, like.dim() - 1));
    v.reshape(shape)
}
