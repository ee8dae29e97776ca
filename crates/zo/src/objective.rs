//! Black-box objectives evaluated a batch of query points at a time, and the [`Oracle`] that
//! counts every query exactly and enforces an optional budget.

use rustworthy_core::{Error, Result};
use tch::{Kind, Tensor};

/// A function `f: R^d -> R` seen only through its values. `eval` receives a batch of points so
/// that a network can score many perturbed points in one forward pass.
///
/// A finite-sum objective `f(x) = 1/n sum_i f_i(x)` reports `n` through [`Objective::samples`]
/// and evaluates the mean over a minibatch of sample indices when one is given.
pub trait Objective {
    /// The dimension `d` of the domain.
    fn dim(&self) -> i64;
    /// The number of component functions (1 for a plain function).
    fn samples(&self) -> usize {
        1
    }
    /// Values at the rows of `xs` (`[n, d]`) as an `[n]` tensor; with `batch` (int64 sample
    /// indices), the mean over those components only.
    fn eval(&mut self, xs: &Tensor, batch: Option<&Tensor>) -> Result<Tensor>;
}

/// Wraps an objective with exact query accounting. One query is the value of the objective at
/// one point (on the full objective or on a minibatch); `sample_evals` also counts the component
/// functions evaluated.
pub struct Oracle<O> {
    /// The wrapped objective (evaluating it directly bypasses the accounting).
    pub objective: O,
    queries: u64,
    sample_evals: u64,
    budget: Option<u64>,
}

impl<O: Objective> Oracle<O> {
    /// Wraps `objective` with no query spent yet and at most `budget` queries (`None`: unlimited);
    /// a zero budget or a dimension below 1 is an error.
    pub fn new(objective: O, budget: Option<u64>) -> Result<Self> {
        if budget == Some(0) {
            return Err(Error::config("budget", "a query budget must be positive"));
        }
        if objective.dim() < 1 {
            return Err(Error::invalid(format!(
                "an objective needs dimension >= 1, got {}",
                objective.dim()
            )));
        }
        Ok(Oracle {
            objective,
            queries: 0,
            sample_evals: 0,
            budget,
        })
    }

    /// The dimension `d` of the objective's domain.
    pub fn dim(&self) -> i64 {
        self.objective.dim()
    }
    /// Queries spent so far.
    pub fn queries(&self) -> u64 {
        self.queries
    }
    /// Component-function evaluations spent so far.
    pub fn sample_evals(&self) -> u64 {
        self.sample_evals
    }
    /// The query budget (`None`: unlimited).
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }
    /// Queries left (None without a budget).
    pub fn remaining(&self) -> Option<u64> {
        self.budget.map(|b| b.saturating_sub(self.queries))
    }
    /// Whether `n` more queries fit the budget.
    pub fn affords(&self, n: u64) -> bool {
        self.remaining().is_none_or(|r| r >= n)
    }

    /// Values at the rows of `xs` (`[n, d]`), counting `n` queries. Fails without evaluating if
    /// the budget cannot pay for all of them, if a point is not finite, or if the objective
    /// returns a wrong shape or a NaN.
    pub fn query(&mut self, xs: &Tensor, batch: Option<&Tensor>) -> Result<Tensor> {
        let d = self.dim();
        let size = xs.size();
        if size.len() != 2 || size[1] != d || size[0] < 1 {
            return Err(Error::Shape {
                op: "objective query".into(),
                expected: format!("[n >= 1, {d}]"),
                got: size,
            });
        }
        let n = size[0] as u64;
        if let Some(b) = self.budget {
            if self.queries + n > b {
                return Err(Error::BudgetExhausted {
                    budget: b,
                    used: self.queries,
                    needed: n,
                });
            }
        }
        if !bool::try_from(xs.isfinite().all())? {
            return Err(Error::Numerical("a query point is not finite".into()));
        }
        let m = match batch {
            None => self.objective.samples() as u64,
            Some(idx) => {
                let len = idx.numel() as i64;
                let ns = self.objective.samples() as i64;
                if len < 1 || idx.kind() != Kind::Int64 {
                    return Err(Error::invalid(
                        "a minibatch needs >= 1 int64 sample indices",
                    ));
                }
                let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
                if lo < 0 || hi >= ns {
                    return Err(Error::invalid(format!(
                        "minibatch indices span [{lo}, {hi}], outside the {ns} samples"
                    )));
                }
                len as u64
            }
        };
        let v = self.objective.eval(xs, batch)?;
        if v.size() != [n as i64] {
            return Err(Error::Shape {
                op: "objective values".into(),
                expected: format!("[{n}]"),
                got: v.size(),
            });
        }
        self.queries += n;
        self.sample_evals += n * m;
        if bool::try_from(v.isnan().any())? {
            return Err(Error::Numerical(format!(
                "the objective returned NaN (after {} queries)",
                self.queries
            )));
        }
        Ok(v)
    }

    /// The value at one point `x` (`[d]`): one query.
    pub fn value(&mut self, x: &Tensor, batch: Option<&Tensor>) -> Result<f64> {
        Ok(self.query(&x.unsqueeze(0), batch)?.double_value(&[0]))
    }
}

/// An objective from a closure over a batch of points (no finite-sum structure).
pub struct FnObjective<F> {
    /// The dimension `d` of the domain.
    pub dim: i64,
    /// Maps a batch of points `[n, d]` to their values `[n]`.
    pub f: F,
}

impl<F: FnMut(&Tensor) -> Tensor> Objective for FnObjective<F> {
    fn dim(&self) -> i64 {
        self.dim
    }
    fn eval(&mut self, xs: &Tensor, _batch: Option<&Tensor>) -> Result<Tensor> {
        Ok((self.f)(xs))
    }
}

/// `f(x) = 1/2 (x - c)^T A (x - c)` with `A` symmetric: the test function whose gradient, Hessian
/// and estimator moments are known in closed form.
pub struct Quadratic {
    /// The symmetric matrix `A`, `[d, d]`.
    pub a: Tensor,
    /// The minimizer `c`, `[d]`.
    pub c: Tensor,
}

impl Quadratic {
    /// A random quadratic in `d` dimensions (float64) with eigenvalues evenly spaced in [1, 4]
    /// and a standard normal minimizer, from libtorch's generator seeded with `seed`.
    pub fn well_conditioned(d: i64, seed: i64) -> Quadratic {
        let f64 = (Kind::Double, tch::Device::Cpu);
        tch::manual_seed(seed);
        let q = Tensor::linalg_qr(&Tensor::randn([d, d], f64), "reduced").0;
        let eig = Tensor::linspace(1.0, 4.0, d, f64);
        let a = q
            .matmul(&Tensor::diag_embed(&eig, 0, -2, -1))
            .matmul(&q.tr());
        Quadratic {
            a: (&a + a.tr()) * 0.5,
            c: Tensor::randn([d], f64),
        }
    }

    /// The exact gradient `A (x - c)` at `x` (`[d]`).
    pub fn gradient(&self, x: &Tensor) -> Tensor {
        self.a.mv(&(x - &self.c))
    }
}

impl Objective for Quadratic {
    fn dim(&self) -> i64 {
        self.c.size()[0]
    }
    fn eval(&mut self, xs: &Tensor, _batch: Option<&Tensor>) -> Result<Tensor> {
        let z = xs - &self.c;
        Ok((z.matmul(&self.a) * &z).sum_dim_intlist(1, false, None) * 0.5)
    }
}

/// Mean logistic loss `1/n sum log(1 + exp(-y_i w^T a_i)) + l2/2 |w|^2` over rows `a_i` of
/// `features` and labels `y_i` in {-1, +1}: the finite-sum test problem of the ZO literature.
pub struct Logistic {
    /// The samples `a_i` as rows, `[n, d]`.
    pub features: Tensor,
    /// The labels `y_i` in {-1, +1}, `[n]`.
    pub labels: Tensor,
    /// Coefficient of the l2 penalty.
    pub l2: f64,
}

impl Logistic {
    /// `n` standard normal samples in `d` dimensions (float64) labelled by a random linear
    /// classifier with Gaussian label noise, l2 = 0.01, from libtorch's generator seeded with
    /// `seed`.
    pub fn synthetic(n: i64, d: i64, seed: i64) -> Logistic {
        let f64 = (Kind::Double, tch::Device::Cpu);
        tch::manual_seed(seed);
        let features = Tensor::randn([n, d], f64);
        let w = Tensor::randn([d], f64);
        let labels = (features.mv(&w) + Tensor::randn([n], f64) * 0.5).sign();
        Logistic {
            features,
            labels,
            l2: 0.01,
        }
    }

    /// An independent copy (same samples).
    pub fn copy(&self) -> Logistic {
        Logistic {
            features: self.features.copy(),
            labels: self.labels.copy(),
            l2: self.l2,
        }
    }

    /// Exact gradient at `w` (`[d]`) on all samples.
    pub fn gradient(&self, w: &Tensor) -> Tensor {
        let margin = self.features.mv(w) * &self.labels;
        let s = (-margin).sigmoid() * &self.labels;
        -(self.features.tr().mv(&s)) / self.labels.size()[0] as f64 + w * self.l2
    }
}

impl Objective for Logistic {
    fn dim(&self) -> i64 {
        self.features.size()[1]
    }
    fn samples(&self) -> usize {
        self.labels.size()[0] as usize
    }
    fn eval(&mut self, xs: &Tensor, batch: Option<&Tensor>) -> Result<Tensor> {
        let (a, y) = match batch {
            Some(i) => (
                self.features.index_select(0, i),
                self.labels.index_select(0, i),
            ),
            None => (self.features.shallow_clone(), self.labels.shallow_clone()),
        };
        // [n, m] margins
        let m = xs.matmul(&a.tr()) * y.unsqueeze(0);
        let loss = (-m).softplus().mean_dim(1, false, None);
        Ok(loss + (xs * xs).sum_dim_intlist(1, false, None) * (self.l2 / 2.0))
    }
}
