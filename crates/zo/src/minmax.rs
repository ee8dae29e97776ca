//! ZO-Min-Max (Liu et al., ICML'20): `min_x max_y f(x, y)` with alternating projected ZO
//! descent on `x` and ZO ascent on `y`, both from function values only, and a robust
//! (distributionally robust) regression problem whose duality gap is known in closed form.

use crate::estimate::Rge;
use crate::objective::{Objective, Oracle};
use crate::optim::{Constraint, Decay};
use rustworthy_core::seed::derive;
use rustworthy_core::{validate, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A black-box function of two blocks of variables, evaluated on a batch of pairs.
pub trait MinMaxObjective {
    /// `(dim x, dim y)`.
    fn dims(&self) -> (i64, i64);
    /// `f(xs[i], ys[i])` for rows `i` of `xs` (`[n, dx]`) and `ys` (`[n, dy]`).
    fn eval(&mut self, xs: &Tensor, ys: &Tensor) -> Result<Tensor>;
}

/// One block of a min-max objective with the other block held fixed.
struct Side<'a, M> {
    m: &'a mut M,
    fixed: Tensor,
    x_side: bool,
}

impl<M: MinMaxObjective> Objective for Side<'_, M> {
    fn dim(&self) -> i64 {
        let (dx, dy) = self.m.dims();
        if self.x_side {
            dx
        } else {
            dy
        }
    }
    fn eval(&mut self, v: &Tensor, _batch: Option<&Tensor>) -> Result<Tensor> {
        let n = v.size()[0];
        let other = self.fixed.unsqueeze(0).expand([n, -1], false);
        if self.x_side {
            self.m.eval(v, &other)
        } else {
            self.m.eval(&other, v)
        }
    }
}

/// Settings of [`min_max`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinMaxConfig {
    /// Estimator of the gradient in `x` (descent).
    pub est_x: Rge,
    /// Estimator of the gradient in `y` (ascent).
    pub est_y: Rge,
    /// Step size of the descent on `x`, > 0.
    pub lr_x: f64,
    /// Step size of the ascent on `y`, > 0.
    pub lr_y: f64,
    /// Schedule of both step sizes (the decay lets the iterates settle despite estimator noise).
    #[serde(default)]
    pub decay: Decay,
    /// Outer (descent) steps, >= 1.
    pub steps: usize,
    /// Ascent steps on `y` per descent step on `x`.
    pub inner_steps: usize,
    /// The feasible set of `x`, projected onto after every step.
    pub cons_x: Constraint,
    /// The feasible set of `y`, projected onto after every step.
    pub cons_y: Constraint,
    /// Total query budget; the run stops before an outer step it cannot pay for.
    pub budget: Option<u64>,
    /// Seed of the estimators' directions.
    pub seed: u64,
}

/// The outcome of [`min_max`].
#[derive(Debug)]
pub struct MinMaxTrace {
    /// The final `x`.
    pub x: Tensor,
    /// The final `y`.
    pub y: Tensor,
    /// Outer steps completed.
    pub steps: usize,
    /// Function evaluations spent.
    pub queries: u64,
    /// Why the run stopped before `steps` steps (the budget), if it did.
    pub stopped: Option<String>,
}

/// Runs alternating projected ZO descent-ascent from `(x0, y0)`. `monitor` is called after
/// every outer step with `(step, x, y)` (it may evaluate anything; its work is not counted).
pub fn min_max<M: MinMaxObjective>(
    f: &mut M,
    x0: &Tensor,
    y0: &Tensor,
    cfg: &MinMaxConfig,
    mut monitor: impl FnMut(usize, &Tensor, &Tensor),
) -> Result<MinMaxTrace> {
    cfg.est_x.validate()?;
    cfg.est_y.validate()?;
    cfg.cons_x.validate()?;
    cfg.cons_y.validate()?;
    validate::positive("lr_x", cfg.lr_x)?;
    validate::positive("lr_y", cfg.lr_y)?;
    validate::positive_int("steps", cfg.steps)?;
    validate::positive_int("inner_steps", cfg.inner_steps)?;
    let (dx, dy) = f.dims();
    if x0.size() != [dx] || y0.size() != [dy] {
        return Err(Error::Shape {
            op: "min-max start point".into(),
            expected: format!("x [{dx}], y [{dy}]"),
            got: [x0.size(), y0.size()].concat(),
        });
    }
    let mut x = cfg.cons_x.project(&x0.copy(), None);
    let mut y = cfg.cons_y.project(&y0.copy(), None);
    let per_step = cfg.est_x.queries() + cfg.est_y.queries() * cfg.inner_steps as u64;
    let mut queries = 0u64;
    let mut stopped = None;
    let mut t = 0;
    while t < cfg.steps {
        let scale = match cfg.decay {
            Decay::Constant => 1.0,
            Decay::InvSqrt => 1.0 / ((t + 1) as f64).sqrt(),
        };
        if cfg.budget.is_some_and(|b| queries + per_step > b) {
            stopped = Some(format!(
                "query budget exhausted after {queries} queries and {t} steps"
            ));
            break;
        }
        for k in 0..cfg.inner_steps {
            let mut o = Oracle::new(
                Side {
                    m: f,
                    fixed: x.shallow_clone(),
                    x_side: false,
                },
                None,
            )?;
            let seed = derive(cfg.seed, "minmax-y", (t * cfg.inner_steps + k) as u64);
            let g = cfg.est_y.estimate(&mut o, &y, None, seed)?;
            queries += o.queries();
            y = cfg
                .cons_y
                .project(&(&y + g.grad * (cfg.lr_y * scale)), None);
        }
        let mut o = Oracle::new(
            Side {
                m: f,
                fixed: y.shallow_clone(),
                x_side: true,
            },
            None,
        )?;
        let g = cfg
            .est_x
            .estimate(&mut o, &x, None, derive(cfg.seed, "minmax-x", t as u64))?;
        queries += o.queries();
        x = cfg
            .cons_x
            .project(&(&x - g.grad * (cfg.lr_x * scale)), None);
        t += 1;
        monitor(t, &x, &y);
    }
    Ok(MinMaxTrace {
        x,
        y,
        steps: t,
        queries,
        stopped,
    })
}

/// Distributionally robust least squares over `K` groups:
/// `min_x max_{w in simplex} sum_k w_k L_k(x) - lambda/2 |w - 1/K|^2`, with
/// `L_k(x) = mean_i (a_ki^T x - b_ki)^2 / 2`. Convex in `x`, strongly concave in `w`, and both
/// inner problems have closed forms, so the duality gap of any pair is exact.
pub struct RobustRegression {
    /// Per group: features `[m_k, p]` and targets `[m_k]` (float64).
    pub groups: Vec<(Tensor, Tensor)>,
    /// Strength of the pull of the group weights `w` towards uniform, > 0.
    pub lambda: f64,
}

impl RobustRegression {
    /// `K` groups of `m` samples in dimension `p`, each with its own true weights (group `k`
    /// is shifted by `k * shift`) and Gaussian noise.
    pub fn synthetic(k: usize, m: i64, p: i64, shift: f64, lambda: f64, seed: u64) -> Self {
        tch::manual_seed(seed as i64);
        let base = Tensor::randn([p], (Kind::Double, tch::Device::Cpu));
        let groups = (0..k)
            .map(|g| {
                let a = Tensor::randn([m, p], (Kind::Double, tch::Device::Cpu));
                let w = &base + shift * g as f64;
                let b = a.mv(&w) + Tensor::randn([m], (Kind::Double, tch::Device::Cpu)) * 0.1;
                (a, b)
            })
            .collect();
        RobustRegression { groups, lambda }
    }

    /// Group losses at each row of `xs`: `[n, K]`.
    pub fn group_losses(&self, xs: &Tensor) -> Tensor {
        let cols: Vec<Tensor> = self
            .groups
            .iter()
            .map(|(a, b)| {
                let r = xs.matmul(&a.tr()) - b.unsqueeze(0);
                (&r * &r).mean_dim(1, false, None) * 0.5
            })
            .collect();
        Tensor::stack(&cols, 1)
    }

    fn k(&self) -> i64 {
        self.groups.len() as i64
    }

    /// `max_w f(x, w)` and its maximizer.
    pub fn primal(&self, x: &Tensor) -> (f64, Tensor) {
        let l = self.group_losses(&x.unsqueeze(0)).squeeze_dim(0);
        let u = 1.0 / self.k() as f64;
        let w = Constraint::Simplex.project(&(&l / self.lambda + u), None);
        let v = self.value(x, &w);
        (v, w)
    }

    /// `min_x f(x, w)` (weighted least squares) and its minimizer.
    pub fn dual(&self, w: &Tensor) -> (f64, Tensor) {
        let p = self.groups[0].0.size()[1];
        let mut h = Tensor::zeros([p, p], (Kind::Double, tch::Device::Cpu));
        let mut r = Tensor::zeros([p], (Kind::Double, tch::Device::Cpu));
        for (k, (a, b)) in self.groups.iter().enumerate() {
            let wk = w.double_value(&[k as i64]) / a.size()[0] as f64;
            h += a.tr().matmul(a) * wk;
            r += a.tr().mv(b) * wk;
        }
        let x = Tensor::linalg_solve(&h, &r.unsqueeze(1), true).squeeze_dim(1);
        (self.value(&x, w), x)
    }

    /// `f(x, w)`.
    pub fn value(&self, x: &Tensor, w: &Tensor) -> f64 {
        let l = self.group_losses(&x.unsqueeze(0)).squeeze_dim(0);
        let u = 1.0 / self.k() as f64;
        let dw = w - u;
        ((&l * w).sum(Kind::Double) - (&dw * &dw).sum(Kind::Double) * (self.lambda / 2.0))
            .double_value(&[])
    }

    /// The duality gap `max_w f(x, w) - min_x f(x, w)` (>= 0, 0 exactly at the saddle point).
    pub fn gap(&self, x: &Tensor, w: &Tensor) -> f64 {
        self.primal(x).0 - self.dual(w).0
    }
}

impl MinMaxObjective for RobustRegression {
    fn dims(&self) -> (i64, i64) {
        (self.groups[0].0.size()[1], self.k())
    }
    fn eval(&mut self, xs: &Tensor, ws: &Tensor) -> Result<Tensor> {
        let l = self.group_losses(xs);
        let dw = ws - 1.0 / self.k() as f64;
        Ok((l * ws).sum_dim_intlist(1, false, None)
            - (&dw * &dw).sum_dim_intlist(1, false, None) * (self.lambda / 2.0))
    }
}
