//! Zeroth-order gradient estimators (the ZO primer's definitions, see docs/zo.md):
//!
//! - RGE: `q` random directions `u_i` (Gaussian, or uniform on the unit sphere), forward
//!   difference `(f(x + mu u) - f(x)) / mu` or central difference
//!   `(f(x + mu u) - f(x - mu u)) / (2 mu)`, averaged as `phi/q sum_i diff_i u_i` with `phi = 1`
//!   for Gaussian and `phi = d` for sphere directions.
//! - CGE: one coordinate `e_i` at a time, on all coordinates or on a chosen sparse set.
//! - Seed replay: a direction is regenerated from `(seed, i)` instead of stored, so an RGE step
//!   holds one direction at a time next to the parameters (MeZO-style memory).
//!
//! Every estimator evaluates its points in batches through the [`Oracle`], so query counts are
//! exact: forward RGE costs `q + 1`, central RGE `2q`, forward CGE `|S| + 1`, central CGE `2|S|`.

use crate::objective::{Objective, Oracle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::seed::derive;
use rustworthy_core::{validate, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The distribution of RGE directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Standard normal `N(0, I)`.
    Gaussian,
    /// Uniform on the unit sphere.
    Sphere,
}

/// The finite difference used per direction or coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Diff {
    /// `(f(x + mu u) - f(x)) / mu`: one query per direction plus one for `f(x)`.
    Forward,
    /// `(f(x + mu u) - f(x - mu u)) / (2 mu)`: two queries per direction.
    Central,
}

impl std::str::FromStr for Dist {
    type Err = Error;
    fn from_str(s: &str) -> Result<Dist> {
        match s {
            "gaussian" | "normal" => Ok(Dist::Gaussian),
            "sphere" | "uniform" => Ok(Dist::Sphere),
            o => Err(Error::config(
                "dist",
                format!("unknown direction distribution `{o}` (gaussian, sphere)"),
            )),
        }
    }
}

impl std::str::FromStr for Diff {
    type Err = Error;
    fn from_str(s: &str) -> Result<Diff> {
        match s {
            "forward" => Ok(Diff::Forward),
            "central" => Ok(Diff::Central),
            o => Err(Error::config(
                "diff",
                format!("unknown difference `{o}` (forward, central)"),
            )),
        }
    }
}

/// Direction `i` of the stream `seed`: `[d]`, regenerated bit for bit from the same
/// `(seed, i)` on any device (drawn on the host with ChaCha8, then moved).
pub fn direction(seed: u64, i: u64, d: i64, dist: Dist, kind: Kind, device: Device) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, "zo-direction", i));
    let n = d as usize;
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        // Box-Muller: two normals from two uniforms in (0, 1].
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        v.push(r * t.cos());
        v.push(r * t.sin());
    }
    v.truncate(n);
    if dist == Dist::Sphere {
        let norm = v
            .iter()
            .map(|a| a * a)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        v.iter_mut().for_each(|a| *a /= norm);
    }
    Tensor::from_slice(&v).to_kind(kind).to_device(device)
}

/// Directions `0..q` of the stream `seed` as rows of a `[q, d]` tensor.
pub fn directions(seed: u64, q: usize, d: i64, dist: Dist, kind: Kind, device: Device) -> Tensor {
    let rows: Vec<Tensor> = (0..q as u64)
        .map(|i| direction(seed, i, d, dist, kind, device))
        .collect();
    Tensor::stack(&rows, 0)
}

/// A gradient estimate and what it cost.
pub struct Estimate {
    /// `[d]`, same kind and device as the point.
    pub grad: Tensor,
    /// `f(x)` when the estimator evaluated it (forward differences).
    pub fx: Option<f64>,
    /// Queries spent on this estimate.
    pub queries: u64,
}

/// Rows evaluated per oracle call by default (caps the memory of a batch of query points).
pub const DEFAULT_CHUNK: usize = 4096;

impl Diff {
    /// Queries of `n` differences (forward ones share one evaluation of `f(x)`).
    pub fn queries(self, n: u64) -> u64 {
        match self {
            Diff::Forward => n + 1,
            Diff::Central => 2 * n,
        }
    }
}

/// `f(x)` for forward differences (one query), nothing for central ones.
fn base_value<O: Objective>(
    oracle: &mut Oracle<O>,
    x: &Tensor,
    diff: Diff,
    batch: Option<&Tensor>,
) -> Result<Option<f64>> {
    match diff {
        Diff::Forward => oracle.value(x, batch).map(Some),
        Diff::Central => Ok(None),
    }
}

/// Finite differences along the rows `v` (`[k, d]`) with step `mu`: `(f(x + mu v) - f0) / mu`
/// given `f0 = f(x)`, else central `(f(x + mu v) - f(x - mu v)) / (2 mu)`. Points go to the
/// oracle at most [`DEFAULT_CHUNK`] rows at a time.
fn differences<O: Objective>(
    oracle: &mut Oracle<O>,
    x: &Tensor,
    v: &Tensor,
    mu: f64,
    f0: Option<f64>,
    batch: Option<&Tensor>,
) -> Result<Tensor> {
    let k = v.size()[0];
    let x0 = x.unsqueeze(0);
    let pts = match f0 {
        Some(_) => &x0 + v * mu,
        None => Tensor::cat(&[&x0 + v * mu, &x0 - v * mu], 0),
    };
    let n = pts.size()[0];
    let mut out = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + DEFAULT_CHUNK as i64).min(n);
        out.push(oracle.query(&pts.narrow(0, s, e - s), batch)?);
        s = e;
    }
    let f = Tensor::cat(&out, 0);
    Ok(match f0 {
        Some(f0) => (f - f0) / mu,
        None => (f.narrow(0, 0, k) - f.narrow(0, k, k)) / (2.0 * mu),
    })
}

/// Fails with the budget's numbers unless the oracle can pay `need` more queries.
fn ensure_budget<O: Objective>(oracle: &Oracle<O>, need: u64) -> Result<()> {
    if oracle.affords(need) {
        return Ok(());
    }
    Err(Error::BudgetExhausted {
        budget: oracle.budget().unwrap_or(0),
        used: oracle.queries(),
        needed: need,
    })
}

fn check_point<O: Objective>(oracle: &Oracle<O>, x: &Tensor) -> Result<()> {
    let d = oracle.dim();
    if x.size() != [d] {
        return Err(Error::Shape {
            op: "zeroth-order estimate".into(),
            expected: format!("[{d}]"),
            got: x.size(),
        });
    }
    if !matches!(x.kind(), Kind::Float | Kind::Double) {
        return Err(Error::invalid(format!(
            "a point must be float32 or float64, got {:?}",
            x.kind()
        )));
    }
    Ok(())
}

fn check_mu(mu: f64) -> Result<()> {
    validate::finite("mu", mu)?;
    if mu <= 0.0 {
        return Err(Error::config(
            "mu",
            format!("the smoothing radius must be > 0, got {mu}"),
        ));
    }
    Ok(())
}

/// Random gradient estimator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rge {
    /// The distribution of the directions.
    pub dist: Dist,
    /// Directions per estimate.
    pub q: usize,
    /// Smoothing radius.
    pub mu: f64,
    /// Forward or central differences.
    pub diff: Diff,
}

impl Rge {
    /// Checks that `mu` is finite and positive and `q >= 1`.
    pub fn validate(&self) -> Result<()> {
        check_mu(self.mu)?;
        if self.q == 0 {
            return Err(Error::config(
                "q",
                "RGE needs at least one direction (q >= 1)",
            ));
        }
        Ok(())
    }

    /// Queries per estimate.
    pub fn queries(&self) -> u64 {
        self.diff.queries(self.q as u64)
    }

    fn scale(&self, d: i64) -> f64 {
        let phi = match self.dist {
            Dist::Gaussian => 1.0,
            Dist::Sphere => d as f64,
        };
        phi / self.q as f64
    }

    /// Estimates the gradient at `x` with the directions of stream `seed`, all points in one
    /// batch (memory `q` copies of `x`).
    pub fn estimate<O: Objective>(
        &self,
        oracle: &mut Oracle<O>,
        x: &Tensor,
        batch: Option<&Tensor>,
        seed: u64,
    ) -> Result<Estimate> {
        self.validate()?;
        check_point(oracle, x)?;
        let d = oracle.dim();
        let u = directions(seed, self.q, d, self.dist, x.kind(), x.device());
        let q0 = oracle.queries();
        ensure_budget(oracle, self.queries())?;
        let fx = base_value(oracle, x, self.diff, batch)?;
        let c = differences(oracle, x, &u, self.mu, fx, batch)?;
        let grad = c.unsqueeze(0).matmul(&u).squeeze_dim(0) * self.scale(d);
        Ok(Estimate {
            grad,
            fx,
            queries: oracle.queries() - q0,
        })
    }

    /// Estimates with seed replay: one direction is alive at a time and the estimate is kept
    /// as `q` scalars; [`Replay::apply`] regenerates the directions to update a point.
    pub fn estimate_replay<O: Objective>(
        &self,
        oracle: &mut Oracle<O>,
        x: &Tensor,
        batch: Option<&Tensor>,
        seed: u64,
    ) -> Result<Replay> {
        self.validate()?;
        check_point(oracle, x)?;
        ensure_budget(oracle, self.queries())?;
        let d = oracle.dim();
        let scale = self.scale(d);
        let fx = base_value(oracle, x, self.diff, batch)?;
        let mut coefs = Vec::with_capacity(self.q);
        for i in 0..self.q as u64 {
            let u = direction(seed, i, d, self.dist, x.kind(), x.device()).unsqueeze(0);
            let c = differences(oracle, x, &u, self.mu, fx, batch)?.double_value(&[0]);
            coefs.push(c * scale);
        }
        Ok(Replay {
            seed,
            dist: self.dist,
            coefs,
            fx,
        })
    }
}

/// An RGE estimate stored as its seed and one scalar per direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// The seed the directions are regenerated from.
    pub seed: u64,
    /// The distribution of the directions.
    pub dist: Dist,
    /// The scaled difference of each direction: the estimate is `sum_i coefs[i] u_i`.
    pub coefs: Vec<f64>,
    /// `f(x)` when the estimator evaluated it (forward differences).
    pub fx: Option<f64>,
}

impl Replay {
    /// `x <- x - step * g`, regenerating one direction at a time.
    pub fn apply(&self, x: &mut Tensor, step: f64) {
        let d = x.size()[0];
        for (i, c) in self.coefs.iter().enumerate() {
            let u = direction(self.seed, i as u64, d, self.dist, x.kind(), x.device());
            let _ = x.g_add_(&(u * (-step * c)));
        }
    }
    /// The estimate as a dense `[d]` tensor.
    pub fn materialize(&self, d: i64, kind: Kind, device: Device) -> Tensor {
        let mut g = Tensor::zeros([d], (kind, device));
        self.apply(&mut g, -1.0);
        g
    }
}

/// Coordinate-wise gradient estimator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cge {
    /// Difference step, > 0.
    pub mu: f64,
    /// Forward or central differences.
    pub diff: Diff,
    /// The coordinates to estimate (all when `None`); the others come back as 0.
    pub coords: Option<Vec<i64>>,
}

impl Cge {
    /// Checks `mu` and that the coordinate set is non-empty and inside `0..d`.
    pub fn validate(&self, d: i64) -> Result<()> {
        check_mu(self.mu)?;
        if let Some(c) = &self.coords {
            if c.is_empty() {
                return Err(Error::config("coords", "the coordinate set is empty"));
            }
            if let Some(bad) = c.iter().find(|&&i| i < 0 || i >= d) {
                return Err(Error::config(
                    "coords",
                    format!("coordinate {bad} is outside 0..{d}"),
                ));
            }
        }
        Ok(())
    }

    fn count(&self, d: i64) -> u64 {
        self.coords.as_ref().map_or(d as u64, |c| c.len() as u64)
    }

    /// Queries per estimate in dimension `d`.
    pub fn queries(&self, d: i64) -> u64 {
        self.diff.queries(self.count(d))
    }

    /// Estimates the chosen coordinates of the gradient at `x` (the others are 0), in chunks of
    /// [`DEFAULT_CHUNK`] points.
    pub fn estimate<O: Objective>(
        &self,
        oracle: &mut Oracle<O>,
        x: &Tensor,
        batch: Option<&Tensor>,
    ) -> Result<Estimate> {
        let d = oracle.dim();
        self.validate(d)?;
        check_point(oracle, x)?;
        let (kind, dev) = (x.kind(), x.device());
        let idx = match &self.coords {
            Some(c) => Tensor::from_slice(c).to_device(dev),
            None => Tensor::arange(d, (Kind::Int64, dev)),
        };
        let k = idx.size()[0];
        let q0 = oracle.queries();
        ensure_budget(oracle, self.queries(d))?;
        let fx = base_value(oracle, x, self.diff, batch)?;
        // Unit vectors of the chosen coordinates, built one chunk at a time.
        let mut grad = Tensor::zeros([d], (kind, dev));
        let chunk = DEFAULT_CHUNK as i64;
        let mut s = 0;
        while s < k {
            let e = (s + chunk).min(k);
            let ids = idx.narrow(0, s, e - s);
            let eye =
                Tensor::zeros([e - s, d], (kind, dev)).scatter_value(1, &ids.unsqueeze(1), 1.0);
            let c = differences(oracle, x, &eye, self.mu, fx, batch)?;
            let _ = grad.index_copy_(0, &ids, &c.to_kind(kind));
            s = e;
        }
        Ok(Estimate {
            grad,
            fx,
            queries: oracle.queries() - q0,
        })
    }
}

/// Either estimator, as an optimizer sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Random directions.
    Rge(Rge),
    /// Coordinate-wise differences.
    Cge(Cge),
}

impl Estimator {
    /// Checks the estimator for a problem of dimension `d`.
    pub fn validate(&self, d: i64) -> Result<()> {
        match self {
            Estimator::Rge(r) => r.validate(),
            Estimator::Cge(c) => c.validate(d),
        }
    }
    /// Queries per estimate in dimension `d`.
    pub fn queries(&self, d: i64) -> u64 {
        match self {
            Estimator::Rge(r) => r.queries(),
            Estimator::Cge(c) => c.queries(d),
        }
    }
    /// Estimates the gradient at `x`; `seed` selects RGE's directions (CGE ignores it).
    pub fn estimate<O: Objective>(
        &self,
        oracle: &mut Oracle<O>,
        x: &Tensor,
        batch: Option<&Tensor>,
        seed: u64,
    ) -> Result<Estimate> {
        match self {
            Estimator::Rge(r) => r.estimate(oracle, x, batch, seed),
            Estimator::Cge(c) => c.estimate(oracle, x, batch),
        }
    }
}
