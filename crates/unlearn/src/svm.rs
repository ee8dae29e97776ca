//! A binary C-support-vector classifier with an RBF kernel, as used by the MIA-Efficacy metric.
//!
//! It solves the C-SVC dual
//!
//! ```text
//! min_a  1/2 a^T Q a - e^T a   s.t.  0 <= a_i <= C,  y^T a = 0,   Q_ij = y_i y_j K(x_i, x_j)
//! ```
//!
//! with SMO and second-order working-set selection (Fan, Chen and Lin, JMLR 2005), the
//! algorithm of libsvm and therefore of scikit-learn's `SVC`. The semantics follow
//! `sklearn.svm.SVC(kernel="rbf")`:
//!
//! - `K(x, z) = exp(-gamma * ||x - z||^2)`, gamma `auto` = 1 / n_features, `scale` =
//!   1 / (n_features * Var(X)) with the variance over all entries of X (1 if it is 0);
//! - the stopping rule is libsvm's: the maximal KKT violation `m(a) - M(a)` drops below `tol`
//!   (scikit-learn's default 1e-3);
//! - the training data are grouped by class (class 0 first, each in input order) before solving,
//!   and ties in the working-set selection go to the last index, as in libsvm; kernel values
//!   are cached in single precision as libsvm does, everything else is f64. So the iterates
//!   follow scikit-learn's `shrinking=False` path up to last-bit differences of `exp`;
//! - `decision_function(x) = sum_s dual_coef_s K(sv_s, x) + intercept`, positive towards class 1
//!   (the `true` label), and `predict` returns class 1 where the decision value is `>= 0`
//!   (libsvm's vote gives the tie at exactly 0 to class 1 in scikit-learn's labelling).
//!
//! Shrinking is not used: the MIA problems are one-dimensional, where kernel rows are cheap and
//! shrinking's gradient reconstruction costs more than it saves (the solution satisfies the same
//! stopping rule either way). Kernel rows are held in an LRU cache of bounded size (`cache_mb`,
//! 200 MB by default like scikit-learn), so memory stays bounded for any n; samples with equal
//! features share one row. `exp` is evaluated by a vectorizable routine accurate to a few ulp.
//! The decision function evaluates each distinct query row once, over all support vectors, split
//! across the available threads for large batches (no approximation). Everything is
//! deterministic: the same input gives bit-identical output on any thread count.

use rustworthy_core::validate;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Curvature floor for non-positive-definite pairs (libsvm's TAU).
const TAU: f64 = 1e-12;

/// The RBF kernel width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gamma {
    /// `1 / n_features` (scikit-learn's `gamma="auto"`; 1.0 for the one-feature MIA).
    Auto,
    /// `1 / (n_features * Var(X))`, variance over all entries of X; 1.0 if that variance is 0
    /// (scikit-learn's `gamma="scale"`).
    Scale,
    /// A fixed value (> 0).
    Value(f64),
}

/// Hyperparameters of [`Svc`]. The default is the MIA's: C = 3, gamma = auto, tol = 1e-3.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SvcConfig {
    /// Box constraint C (> 0), the same for both classes.
    pub c: f64,
    /// The RBF kernel width (default auto).
    pub gamma: Gamma,
    /// Stopping tolerance on the maximal KKT violation (> 0).
    pub tol: f64,
    /// Hard limit on SMO iterations (>= 1). Reaching it is not an error: the model is returned
    /// with [`Svc::converged`] false.
    pub max_iter: usize,
    /// Kernel-row cache size in MiB (>= 1); at least two rows are always kept.
    pub cache_mb: usize,
}

impl Default for SvcConfig {
    fn default() -> Self {
        SvcConfig {
            c: 3.0,
            gamma: Gamma::Auto,
            tol: 1e-3,
            max_iter: 10_000_000,
            cache_mb: 200,
        }
    }
}

impl SvcConfig {
    /// Checks every field; errors name the field (`svc.c`, `svc.gamma`, ...).
    pub fn validate(&self) -> Result<()> {
        validate::positive("svc.c", self.c)?;
        if let Gamma::Value(g) = self.gamma {
            validate::positive("svc.gamma", g)?;
        }
        validate::positive("svc.tol", self.tol)?;
        validate::positive_int("svc.max_iter", self.max_iter)?;
        validate::positive_int("svc.cache_mb", self.cache_mb)?;
        Ok(())
    }
}

/// A fitted binary RBF C-SVC. Class 0 is `false`, class 1 is `true`.
#[derive(Debug, Clone)]
pub struct Svc {
    n_features: usize,
    gamma: f64,
    /// Support vectors, row-major, class-0 ones first (each class in input order).
    support_vectors: Vec<f64>,
    /// Input indices of the support vectors, in the same order.
    support: Vec<usize>,
    /// `alpha_s * (+1 for class 1, -1 for class 0)`.
    dual_coef: Vec<f64>,
    intercept: f64,
    n_support: [usize; 2],
    n_iter: usize,
    converged: bool,
}

impl Svc {
    /// Fits on `x`, row-major with `n_features` columns, and labels `y` (`true` = class 1).
    ///
    /// Errors: invalid config, no samples, `n_features == 0`, `x.len() != y.len() * n_features`,
    /// a NaN or infinite feature, or only one class present.
    pub fn fit(x: &[f64], n_features: usize, y: &[bool], cfg: &SvcConfig) -> Result<Svc> {
        cfg.validate()?;
        let n = y.len();
        if n == 0 {
            return Err(Error::invalid("svc fit: no training samples"));
        }
        if n_features == 0 {
            return Err(Error::invalid("svc fit: n_features must be >= 1"));
        }
        if x.len() != n * n_features {
            return Err(Error::invalid(format!(
                "svc fit: x has {} values but {} labels x {} features need {}",
                x.len(),
                n,
                n_features,
                n * n_features
            )));
        }
        check_finite("svc fit", x, n_features)?;
        let n_pos = y.iter().filter(|&&b| b).count();
        if n_pos == 0 || n_pos == n {
            return Err(Error::invalid(format!(
                "svc fit: both classes are needed, got only class {} ({} samples)",
                u8::from(n_pos == n),
                n
            )));
        }
        let gamma = resolve_gamma(cfg.gamma, x, n_features);

        // libsvm's grouping: class 0 first, then class 1, each in input order. Inside the solver
        // class 0 carries y = +1 (libsvm's first label), class 1 y = -1.
        let order: Vec<usize> = (0..n)
            .filter(|&i| !y[i])
            .chain((0..n).filter(|&i| y[i]))
            .collect();
        let mut xs = Vec::with_capacity(x.len());
        for &i in &order {
            xs.extend_from_slice(&x[i * n_features..(i + 1) * n_features]);
        }
        let ys: Vec<f64> = order
            .iter()
            .map(|&i| if y[i] { -1.0 } else { 1.0 })
            .collect();

        let kernel = Kernel::new(xs, n_features, gamma);
        let sol = solve(&kernel, &ys, cfg);

        let mut support_vectors = Vec::new();
        let mut support = Vec::new();
        let mut dual_coef = Vec::new();
        let mut n_support = [0usize; 2];
        for (p, &i) in order.iter().enumerate() {
            if sol.alpha[p] > 0.0 {
                support_vectors.extend_from_slice(kernel.row(p));
                support.push(i);
                // Positive towards class 1: minus the solver's (class-0-positive) y.
                dual_coef.push(-ys[p] * sol.alpha[p]);
                n_support[usize::from(y[i])] += 1;
            }
        }
        Ok(Svc {
            n_features,
            gamma,
            support_vectors,
            support,
            dual_coef,
            // The solver's decision is sum(alpha y K) - rho, positive for class 0; negated.
            intercept: sol.rho,
            n_support,
            n_iter: sol.n_iter,
            converged: sol.converged,
        })
    }

    /// [`Svc::fit`] on one `Vec` per sample; all rows must have the same length.
    pub fn fit_rows(x: &[Vec<f64>], y: &[bool], cfg: &SvcConfig) -> Result<Svc> {
        let d = x.first().map_or(0, Vec::len);
        if let Some((i, r)) = x.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(Error::invalid(format!(
                "svc fit: row {i} has {} features, row 0 has {d}",
                r.len()
            )));
        }
        if x.len() != y.len() {
            return Err(Error::invalid(format!(
                "svc fit: {} rows but {} labels",
                x.len(),
                y.len()
            )));
        }
        let flat: Vec<f64> = x.iter().flatten().copied().collect();
        Svc::fit(&flat, d, y, cfg)
    }

    /// Decision values of the rows of `x` (row-major, `n_features` columns): positive towards
    /// class 1. Errors on a length that is not a multiple of `n_features` or a non-finite value.
    pub fn decision_function(&self, x: &[f64]) -> Result<Vec<f64>> {
        let d = self.n_features;
        let m = x.len() / d;
        if m * d != x.len() {
            return Err(Error::invalid(format!(
                "svc decision_function: {} values are not rows of {d} features",
                x.len()
            )));
        }
        check_finite("svc decision_function", x, d)?;
        // Evaluate each distinct row once (confidence features repeat a lot, e.g. exactly 1.0).
        let mut idx: Vec<usize> = (0..m).collect();
        let row = |i: usize| &x[i * d..(i + 1) * d];
        idx.sort_by(|&a, &b| cmp_rows(row(a), row(b)));
        let mut uniq: Vec<f64> = Vec::new();
        let mut slot = vec![0usize; m];
        for (k, &i) in idx.iter().enumerate() {
            if k == 0 || row(idx[k - 1]) != row(i) {
                uniq.extend_from_slice(row(i));
            }
            slot[i] = uniq.len() / d - 1;
        }
        let vals = self.decision_unique(&uniq);
        Ok(slot.into_iter().map(|s| vals[s]).collect())
    }

    /// Predicted classes (`true` = class 1) of the rows of `x`: class 1 where the decision value
    /// is `>= 0`.
    pub fn predict(&self, x: &[f64]) -> Result<Vec<bool>> {
        Ok(self
            .decision_function(x)?
            .into_iter()
            .map(|v| v >= 0.0)
            .collect())
    }

    /// Number of support vectors of class 0 and of class 1 (scikit-learn's `n_support_`).
    pub fn n_support(&self) -> [usize; 2] {
        self.n_support
    }
    /// Input indices of the support vectors (scikit-learn's `support_`): class 0 first.
    pub fn support(&self) -> &[usize] {
        &self.support
    }
    /// Support vectors, row-major (scikit-learn's `support_vectors_`).
    pub fn support_vectors(&self) -> &[f64] {
        &self.support_vectors
    }
    /// Signed dual coefficients, one per support vector (scikit-learn's `dual_coef_`).
    pub fn dual_coef(&self) -> &[f64] {
        &self.dual_coef
    }
    /// Intercept of the decision function (scikit-learn's `intercept_`).
    pub fn intercept(&self) -> f64 {
        self.intercept
    }
    /// The resolved kernel width.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }
    /// Number of input features the model was fitted on.
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    /// SMO iterations used (scikit-learn's `n_iter_`).
    pub fn n_iter(&self) -> usize {
        self.n_iter
    }
    /// False when the solver stopped at `max_iter` before reaching `tol`.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// Decision values of distinct rows, split across threads for large batches.
    fn decision_unique(&self, x: &[f64]) -> Vec<f64> {
        let d = self.n_features;
        let m = x.len() / d;
        let work = m.saturating_mul(self.dual_coef.len().max(1));
        let threads = if work < 2_000_000 {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |t| t.get())
                .min(m)
        };
        let mut out = vec![0.0; m];
        if threads <= 1 {
            self.decision_into(x, &mut out);
            return out;
        }
        let per = m.div_ceil(threads);
        std::thread::scope(|s| {
            for (xc, oc) in x.chunks(per * d).zip(out.chunks_mut(per)) {
                s.spawn(move || self.decision_into(xc, oc));
            }
        });
        out
    }

    fn decision_into(&self, x: &[f64], out: &mut [f64]) {
        let d = self.n_features;
        let g = self.gamma;
        let sv = &self.support_vectors;
        let e = ExpNeg::get();
        let mut terms = vec![0.0f64; self.dual_coef.len()];
        for (q, o) in x.chunks_exact(d).zip(out.iter_mut()) {
            if d == 1 {
                let xq = q[0];
                for ((t, &s), &c) in terms.iter_mut().zip(sv).zip(&self.dual_coef) {
                    let diff = xq - s;
                    *t = c * e.eval(-g * (diff * diff));
                }
            } else {
                for ((t, s), &c) in terms
                    .iter_mut()
                    .zip(sv.chunks_exact(d))
                    .zip(&self.dual_coef)
                {
                    *t = c * e.eval(-g * dist2(q, s));
                }
            }
            *o = sum4(&terms) + self.intercept;
        }
    }
}

/// Sum with four interleaved partial sums (vectorizes; differs from a sequential sum only in
/// rounding).
fn sum4(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..4 {
            acc[k] += c[k];
        }
    }
    let tail: f64 = rest.iter().sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

fn cmp_rows(a: &[f64], b: &[f64]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.total_cmp(y) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
    }
    std::cmp::Ordering::Equal
}

fn check_finite(op: &str, x: &[f64], d: usize) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(p) => Err(Error::invalid(format!(
            "{op}: feature {} of row {} is {} (features must be finite)",
            p % d,
            p / d,
            x[p]
        ))),
    }
}

fn resolve_gamma(g: Gamma, x: &[f64], d: usize) -> f64 {
    match g {
        Gamma::Value(v) => v,
        Gamma::Auto => 1.0 / d as f64,
        Gamma::Scale => {
            let n = x.len() as f64;
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            if var != 0.0 {
                1.0 / (d as f64 * var)
            } else {
                1.0
            }
        }
    }
}

#[inline(always)]
fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// `exp(x)` for `x <= 0` in a form the compiler vectorizes: `x = (64 m + j) ln2/64 + r` with
/// `|r| <= ln2/128`, `exp(x) = 2^m * 2^(j/64) * exp(r)`, `exp(r)` by a degree-6 Taylor polynomial
/// (truncation < 1e-17 relative). Within a few ulp of `f64::exp` (tested); returns 0 below -708,
/// where `exp` is < 3.4e-308.
struct ExpNeg {
    /// `2^(j/64)`, j = 0..64.
    table: [f64; 64],
}

impl ExpNeg {
    fn get() -> &'static ExpNeg {
        static T: std::sync::OnceLock<ExpNeg> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            let mut table = [0.0; 64];
            for (j, t) in table.iter_mut().enumerate() {
                *t = (j as f64 / 64.0).exp2();
            }
            ExpNeg { table }
        })
    }

    #[inline(always)]
    fn eval(&self, x: f64) -> f64 {
        const LOG2E_64: f64 = std::f64::consts::LOG2_E * 64.0;
        // ln 2 / 64 split in two: the high part has 32 significant bits, so k * LN2_HI_64 is
        // exact for the k that occur (|k| < 2^17); the low part holds the rest of ln 2.
        const LN2_HI_64: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000) / 64.0;
        const LN2_LO_64: f64 = f64::from_bits(0x3dea_39ef_3579_3c76) / 64.0;
        // 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits.
        const SHIFT: f64 = 6_755_399_441_055_744.0;
        let xc = if x < -708.0 { -708.0 } else { x };
        let t = xc * LOG2E_64 + SHIFT;
        let kf = t - SHIFT;
        let r = (xc - kf * LN2_HI_64) - kf * LN2_LO_64;
        let r2 = r * r;
        let p = 1.0
            + r
            + r2 * (0.5
                + r * (1.0 / 6.0)
                + r2 * ((1.0 / 24.0) + r * (1.0 / 120.0) + r2 * (1.0 / 720.0)));
        let k = t.to_bits().wrapping_sub(SHIFT.to_bits()) as i64;
        let j = (k & 63) as usize;
        let m = k >> 6;
        let scale = f64::from_bits(((m + 1023) as u64) << 52);
        let v = p * self.table[j] * scale;
        if x < -708.0 {
            0.0
        } else {
            v
        }
    }
}

/// Training rows (grouped order) and the kernel on them.
struct Kernel {
    x: Vec<f64>,
    d: usize,
    gamma: f64,
    /// `rep[t]`: the smallest index whose row equals row t (they share one kernel row).
    rep: Vec<usize>,
}

impl Kernel {
    fn new(x: Vec<f64>, d: usize, gamma: f64) -> Self {
        let n = x.len() / d;
        let row = |i: usize| &x[i * d..(i + 1) * d];
        let mut order: Vec<usize> = (0..n).collect();
        // Stable: within a group of equal rows the smallest index comes first.
        order.sort_by(|&a, &b| cmp_rows(row(a), row(b)));
        let mut rep = vec![0; n];
        for (k, &t) in order.iter().enumerate() {
            rep[t] = if k > 0 && row(order[k - 1]) == row(t) {
                rep[order[k - 1]]
            } else {
                t
            };
        }
        Kernel { x, d, gamma, rep }
    }

    fn n(&self) -> usize {
        self.x.len() / self.d
    }
    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }
    /// `out[k] = K(x_i, x_k)` in single precision.
    fn fill(&self, i: usize, out: &mut [f32]) {
        let g = self.gamma;
        let e = ExpNeg::get();
        if self.d == 1 {
            let xi = self.x[i];
            for (o, &xk) in out.iter_mut().zip(&self.x) {
                let diff = xi - xk;
                *o = e.eval(-g * (diff * diff)) as f32;
            }
        } else {
            let xi = self.row(i);
            for (o, xk) in out.iter_mut().zip(self.x.chunks_exact(self.d)) {
                *o = e.eval(-g * dist2(xi, xk)) as f32;
            }
        }
    }
}

/// Least-recently-used cache of full kernel rows.
struct RowCache {
    rows: Vec<Vec<f32>>,
    /// Doubly linked LRU list over cached row indices; `n` is the sentinel (head = oldest).
    prev: Vec<usize>,
    next: Vec<usize>,
    cached: usize,
    capacity: usize,
}

impl RowCache {
    fn new(n: usize, cache_mb: usize) -> Self {
        let row_bytes = (n * std::mem::size_of::<f32>()).max(1);
        let capacity = (cache_mb.saturating_mul(1 << 20) / row_bytes).clamp(2, n.max(2));
        RowCache {
            rows: vec![Vec::new(); n],
            prev: vec![n; n + 1],
            next: vec![n; n + 1],
            cached: 0,
            capacity,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (p, q) = (self.prev[i], self.next[i]);
        self.next[p] = q;
        self.prev[q] = p;
    }

    fn push_back(&mut self, i: usize) {
        let s = self.rows.len();
        let last = self.prev[s];
        self.next[last] = i;
        self.prev[i] = last;
        self.next[i] = s;
        self.prev[s] = i;
    }

    /// Makes the kernel row of sample `i` present and most recently used; returns the slot
    /// that holds it (`kernel.rep[i]`).
    fn ensure(&mut self, i: usize, kernel: &Kernel) -> usize {
        let i = kernel.rep[i];
        if !self.rows[i].is_empty() {
            self.unlink(i);
            self.push_back(i);
            return i;
        }
        let mut buf = if self.cached >= self.capacity {
            let s = self.rows.len();
            let old = self.next[s];
            self.unlink(old);
            self.cached -= 1;
            std::mem::take(&mut self.rows[old])
        } else {
            vec![0.0f32; kernel.n()]
        };
        buf.resize(kernel.n(), 0.0);
        kernel.fill(i, &mut buf);
        self.rows[i] = buf;
        self.cached += 1;
        self.push_back(i);
        i
    }
}

struct Solution {
    alpha: Vec<f64>,
    rho: f64,
    n_iter: usize,
    converged: bool,
}

/// SMO with WSS 2 on the grouped problem (`y` in {+1, -1}), starting from alpha = 0.
///
/// The gradient is kept as `yg_t = y_t G_t` (G = Q alpha - e): libsvm's selection rules read
/// `-y_t G_t` and `y_t G_t`, and `yg` updates without the signs (`Q_kt = y_k y_t K_kt`), exactly.
fn solve(kernel: &Kernel, y: &[f64], cfg: &SvcConfig) -> Solution {
    let n = y.len();
    let c = cfg.c;
    let eps = cfg.tol;
    let mut alpha = vec![0.0f64; n];
    let mut yg: Vec<f64> = y.iter().map(|&v| -v).collect();
    // I_up: alpha can move so that y_t alpha_t grows; I_low: so that it shrinks.
    let mut up = vec![true; n];
    let mut low = vec![true; n];
    let set_status = |t: usize, a: f64, up: &mut [bool], low: &mut [bool]| {
        let (below_c, above_0) = (a < c, a > 0.0);
        if y[t] > 0.0 {
            (up[t], low[t]) = (below_c, above_0);
        } else {
            (up[t], low[t]) = (above_0, below_c);
        }
    };
    for t in 0..n {
        set_status(t, 0.0, &mut up, &mut low);
    }
    let mut cache = RowCache::new(n, cfg.cache_mb);
    // K(x_i, x_i) = 1 for the RBF kernel.
    let qd = 1.0f64;
    let mut n_iter = 0usize;
    let mut converged = false;

    while n_iter < cfg.max_iter {
        // First index: i = argmax_{t in I_up} -y_t G_t (the last one on ties).
        let Some((gmax, i)) = select_first(&yg, &up) else {
            converged = true;
            break;
        };
        let ri = cache.ensure(i, kernel);
        // Second index: among t in I_low with b_it = gmax + y_t G_t > 0, minimise
        // -b_it^2 / a_it with a_it = K_ii + K_tt - 2 K_it; gmax2 = max_{t in I_low} y_t G_t.
        let (gmax2, j) = select_second(&yg, &low, &cache.rows[ri], gmax, qd);
        let j = match j {
            Some(j) if gmax + gmax2 >= eps => j,
            _ => {
                converged = true;
                break;
            }
        };
        n_iter += 1;

        let rj = cache.ensure(j, kernel);
        let (ki, kj) = (&cache.rows[ri], &cache.rows[rj]);
        let (gi, gj) = (y[i] * yg[i], y[j] * yg[j]);
        let (old_ai, old_aj) = (alpha[i], alpha[j]);
        let mut quad = qd + qd - 2.0 * f64::from(ki[j]);
        if quad <= 0.0 {
            quad = TAU;
        }
        let (mut ai, mut aj) = (old_ai, old_aj);
        if y[i] != y[j] {
            let delta = (-gi - gj) / quad;
            let diff = ai - aj;
            ai += delta;
            aj += delta;
            if diff > 0.0 {
                if aj < 0.0 {
                    aj = 0.0;
                    ai = diff;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = -diff;
            }
            if diff > 0.0 {
                // C_i - C_j = 0 with one C for both classes.
                if ai > c {
                    ai = c;
                    aj = c - diff;
                }
            } else if aj > c {
                aj = c;
                ai = c + diff;
            }
        } else {
            let delta = (gi - gj) / quad;
            let sum = ai + aj;
            ai -= delta;
            aj += delta;
            if sum > c {
                if ai > c {
                    ai = c;
                    aj = sum - c;
                }
            } else if aj < 0.0 {
                aj = 0.0;
                ai = sum;
            }
            if sum > c {
                if aj > c {
                    aj = c;
                    ai = sum - c;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = sum;
            }
        }
        alpha[i] = ai;
        alpha[j] = aj;
        set_status(i, ai, &mut up, &mut low);
        set_status(j, aj, &mut up, &mut low);
        // G_k += Q_ki dai + Q_kj daj, i.e. yg_k += K_ki y_i dai + K_kj y_j daj.
        let si = y[i] * (ai - old_ai);
        let sj = y[j] * (aj - old_aj);
        for ((g, &kik), &kjk) in yg.iter_mut().zip(ki).zip(kj) {
            *g += f64::from(kik) * si + f64::from(kjk) * sj;
        }
    }

    Solution {
        rho: compute_rho(y, &alpha, &yg, c),
        alpha,
        n_iter,
        converged,
    }
}

/// Interleaved streams for the selection scans (independent dependency chains); merging them
/// keeps the sequential rule "last index wins on ties" exactly.
const LANES: usize = 4;

/// `argmax_{t: up_t} -yg_t`, the largest such index on ties; None if no t is in I_up.
fn select_first(yg: &[f64], up: &[bool]) -> Option<(f64, usize)> {
    let mut best = [f64::NEG_INFINITY; LANES];
    let mut idx = [usize::MAX; LANES];
    let n = yg.len();
    let full = n - n % LANES;
    for base in (0..full).step_by(LANES) {
        for l in 0..LANES {
            let t = base + l;
            let v = -yg[t];
            if up[t] && v >= best[l] {
                best[l] = v;
                idx[l] = t;
            }
        }
    }
    for t in full..n {
        let v = -yg[t];
        if up[t] && v >= best[0] {
            best[0] = v;
            idx[0] = t;
        }
    }
    merge_max(&best, &idx)
}

/// The second index of WSS 2 and `gmax2 = max_{t in I_low} yg_t` (-inf if I_low is empty).
fn select_second(yg: &[f64], low: &[bool], ki: &[f32], gmax: f64, qd: f64) -> (f64, Option<usize>) {
    let mut gmax2 = [f64::NEG_INFINITY; LANES];
    // Maximise b^2 / a, i.e. minimise -b^2 / a, last index on ties.
    let mut best = [f64::NEG_INFINITY; LANES];
    let mut idx = [usize::MAX; LANES];
    let step = |l: usize, t: usize, gmax2: &mut [f64], best: &mut [f64], idx: &mut [usize]| {
        if !low[t] {
            return;
        }
        let v = yg[t];
        if v >= gmax2[l] {
            gmax2[l] = v;
        }
        let b = gmax + v;
        if b > 0.0 {
            let a = qd + qd - 2.0 * f64::from(ki[t]);
            let obj = if a > 0.0 {
                -(b * b) / a
            } else {
                -(b * b) / TAU
            };
            // obj <= obj_min  <=>  -obj >= -obj_min (negation is exact).
            if -obj >= best[l] {
                best[l] = -obj;
                idx[l] = t;
            }
        }
    };
    let n = yg.len();
    let full = n - n % LANES;
    for base in (0..full).step_by(LANES) {
        for l in 0..LANES {
            step(l, base + l, &mut gmax2, &mut best, &mut idx);
        }
    }
    for t in full..n {
        step(0, t, &mut gmax2, &mut best, &mut idx);
    }
    let g2 = gmax2.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (g2, merge_max(&best, &idx).map(|(_, j)| j))
}

/// The lane maxima merged: the overall maximum and the largest index attaining it.
fn merge_max(best: &[f64; LANES], idx: &[usize; LANES]) -> Option<(f64, usize)> {
    let mut out: Option<(f64, usize)> = None;
    for l in 0..LANES {
        if idx[l] == usize::MAX {
            continue;
        }
        out = match out {
            Some((v, t)) if v > best[l] || (v == best[l] && t > idx[l]) => Some((v, t)),
            _ => Some((best[l], idx[l])),
        };
    }
    out
}

/// rho = mean of y_t G_t over free variables, else the midpoint of the feasible interval.
fn compute_rho(y: &[f64], alpha: &[f64], yg: &[f64], c: f64) -> f64 {
    let mut ub = f64::INFINITY;
    let mut lb = f64::NEG_INFINITY;
    let mut n_free = 0usize;
    let mut sum_free = 0.0;
    for t in 0..y.len() {
        let yg = yg[t];
        if alpha[t] >= c {
            if y[t] < 0.0 {
                ub = ub.min(yg);
            } else {
                lb = lb.max(yg);
            }
        } else if alpha[t] <= 0.0 {
            if y[t] > 0.0 {
                ub = ub.min(yg);
            } else {
                lb = lb.max(yg);
            }
        } else {
            n_free += 1;
            sum_free += yg;
        }
    }
    if n_free > 0 {
        sum_free / n_free as f64
    } else {
        (ub + lb) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std() {
        let e = ExpNeg::get();
        let mut worst = 0.0f64;
        let mut x = 0.0f64;
        while x > -708.0 {
            let rel = (e.eval(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x -= 0.000_737;
        }
        assert!(worst < 1e-15, "max relative error {worst}");
        // Rounded to f32, as the kernel cache holds it, it agrees with std's exp.
        let mut x = 0.0f64;
        while x > -30.0 {
            assert_eq!(e.eval(x) as f32, x.exp() as f32, "exp({x})");
            x -= 0.000_113;
        }
        assert_eq!(e.eval(0.0), 1.0);
        assert_eq!(e.eval(-1e-300), 1.0);
        assert_eq!(e.eval(-800.0), 0.0);
        assert_eq!(e.eval(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn gamma_resolution() {
        let x = [0.0, 2.0, 4.0, 6.0];
        assert_eq!(resolve_gamma(Gamma::Auto, &x, 2), 0.5);
        // Var of {0, 2, 4, 6} = 5.
        assert_eq!(resolve_gamma(Gamma::Scale, &x, 2), 1.0 / 10.0);
        assert_eq!(resolve_gamma(Gamma::Scale, &[3.0; 4], 1), 1.0);
        assert_eq!(resolve_gamma(Gamma::Value(0.25), &x, 1), 0.25);
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let kernel = Kernel::new(vec![0.0, 1.0, 2.0, 3.0, 1.0, 2.0], 1, 1.0);
        assert_eq!(kernel.rep, [0, 1, 2, 3, 1, 2]);
        let mut cache = RowCache::new(6, 1);
        cache.capacity = 2;
        assert_eq!(cache.ensure(0, &kernel), 0);
        assert_eq!(cache.ensure(4, &kernel), 1);
        assert_eq!(cache.ensure(0, &kernel), 0);
        assert_eq!(cache.ensure(5, &kernel), 2); // evicts the row of 1 and 4
        assert!(!cache.rows[0].is_empty() && cache.rows[1].is_empty());
        assert!(!cache.rows[2].is_empty());
        assert_eq!(cache.rows[2][2], 1.0);
        assert_eq!(cache.rows[2][5], 1.0);
        assert_eq!(cache.rows[2][0], (-4.0f64).exp() as f32);
        let k2 = Kernel::new(vec![0.0, 1.0, 0.0, 1.0, 0.0, 2.0], 2, 0.5);
        assert_eq!(k2.rep, [0, 0, 2]);
    }
}
