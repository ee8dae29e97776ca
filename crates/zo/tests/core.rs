//! Estimators, optimizers, projections and min-max on functions with known answers.

use rustworthy_core::Error;
use rustworthy_testkit::torch_lock;
use rustworthy_zo::estimate::{direction, directions};
use rustworthy_zo::*;
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn quadratic(d: i64, seed: i64) -> Quadratic {
    Quadratic::well_conditioned(d, seed)
}

fn logistic(n: i64, d: i64, seed: i64) -> Logistic {
    Logistic::synthetic(n, d, seed)
}

fn rge(dist: Dist, q: usize, mu: f64, diff: Diff) -> Rge {
    Rge { dist, q, mu, diff }
}

#[test]
fn query_counts_are_exact() {
    let _torch = torch_lock();
    let d = 7;
    let mut o = Oracle::new(quadratic(d, 0), None).unwrap();
    let x = Tensor::zeros([d], F64);
    for (r, want) in [
        (rge(Dist::Gaussian, 5, 1e-3, Diff::Forward), 6),
        (rge(Dist::Sphere, 5, 1e-3, Diff::Central), 10),
    ] {
        let before = o.queries();
        let e = r.estimate(&mut o, &x, None, 1).unwrap();
        assert_eq!(e.queries, want);
        assert_eq!(o.queries() - before, want);
        assert_eq!(r.queries(), want);
        let before = o.queries();
        r.estimate_replay(&mut o, &x, None, 1).unwrap();
        assert_eq!(o.queries() - before, want, "replay spends the same queries");
    }
    let all = Cge {
        mu: 1e-3,
        diff: Diff::Forward,
        coords: None,
    };
    assert_eq!(
        all.estimate(&mut o, &x, None).unwrap().queries,
        d as u64 + 1
    );
    let sparse = Cge {
        mu: 1e-3,
        diff: Diff::Central,
        coords: Some(vec![0, 3, 6]),
    };
    let e = sparse.estimate(&mut o, &x, None).unwrap();
    assert_eq!(e.queries, 6);
    // Coordinates outside the set stay exactly zero.
    for i in [1, 2, 4, 5] {
        assert_eq!(e.grad.double_value(&[i]), 0.0);
    }
    // A whole run: steps * (q + 1) plus the final value.
    let cfg = ZoConfig {
        seed: 3,
        ..ZoConfig::new(
            Estimator::Rge(rge(Dist::Gaussian, 4, 1e-3, Diff::Forward)),
            Update::Sgd,
            0.01,
            9,
        )
    };
    let mut o = Oracle::new(quadratic(d, 0), None).unwrap();
    let t = minimize(&mut o, &x, None, &cfg).unwrap();
    assert_eq!(t.queries, 9 * 5 + 1);
    assert_eq!(t.steps, 9);
}

/// Mean and mean squared error of `n` independent one-direction estimates.
fn moments(r: &Rge, o: &mut Oracle<Quadratic>, x: &Tensor, n: usize) -> (Tensor, f64) {
    let g = o.objective.gradient(x);
    let ests: Vec<Tensor> = (0..n)
        .map(|s| r.estimate(o, x, None, 1000 + s as u64).unwrap().grad)
        .collect();
    let e = Tensor::stack(&ests, 0);
    let mse = (&e - &g).square().sum(Kind::Double).double_value(&[]) / n as f64;
    (e.mean_dim(0, false, None), mse)
}

#[test]
fn rge_is_unbiased_with_the_closed_form_variance_on_a_quadratic() {
    let _torch = torch_lock();
    let d = 10;
    let n = 4000;
    let mut o = Oracle::new(quadratic(d, 1), None).unwrap();
    let x = Tensor::randn([d], F64);
    let g = o.objective.gradient(&x);
    let g2 = g.square().sum(Kind::Double).double_value(&[]);
    // Central differences are exact directional derivatives on a quadratic, so
    // E|g_hat - g|^2 = (d + 1)|g|^2 for Gaussian and (d - 1)|g|^2 for sphere directions.
    for (dist, mse_closed) in [
        (Dist::Gaussian, (d + 1) as f64 * g2),
        (Dist::Sphere, (d - 1) as f64 * g2),
    ] {
        let r = rge(dist, 1, 0.1, Diff::Central);
        let (mean, mse) = moments(&r, &mut o, &x, n);
        let rel = (mse - mse_closed).abs() / mse_closed;
        assert!(rel < 0.1, "{dist:?}: MSE {mse} vs closed form {mse_closed}");
        // |mean - g|^2 has expectation MSE / n.
        let bias2 = (&mean - &g).square().sum(Kind::Double).double_value(&[]);
        assert!(
            bias2 < 3.0 * mse_closed / n as f64,
            "{dist:?}: squared bias {bias2} vs sampling error {}",
            mse_closed / n as f64
        );
    }
    // Forward differences stay unbiased on a quadratic (the mu^2 term has zero mean in u).
    let r = rge(Dist::Gaussian, 1, 1e-3, Diff::Forward);
    let (mean, _) = moments(&r, &mut o, &x, n);
    let bias2 = (&mean - &g).square().sum(Kind::Double).double_value(&[]);
    assert!(
        bias2 < 3.0 * (d + 1) as f64 * g2 / n as f64,
        "forward bias {bias2}"
    );
    // q directions divide the variance by q.
    let r = rge(Dist::Gaussian, 10, 0.1, Diff::Central);
    let (_, mse) = moments(&r, &mut o, &x, n / 4);
    let closed = (d + 1) as f64 * g2 / 10.0;
    assert!(
        (mse - closed).abs() / closed < 0.15,
        "q=10 MSE {mse} vs {closed}"
    );
}

#[test]
fn cge_matches_the_gradient_of_logistic_regression() {
    let _torch = torch_lock();
    let mut o = Oracle::new(logistic(200, 6, 2), None).unwrap();
    let w = Tensor::randn([6], F64) * 0.3;
    let g = o.objective.gradient(&w);
    let c = Cge {
        mu: 1e-5,
        diff: Diff::Central,
        coords: None,
    };
    let e = c.estimate(&mut o, &w, None).unwrap();
    let err = (&e.grad - &g).abs().max().double_value(&[]);
    assert!(err < 1e-8, "central CGE error {err}");
}

#[test]
fn seed_replay_regenerates_identical_directions() {
    let _torch = torch_lock();
    let a = direction(42, 3, 1000, Dist::Gaussian, Kind::Float, Device::Cpu);
    let b = direction(42, 3, 1000, Dist::Gaussian, Kind::Float, Device::Cpu);
    assert!(a.equal(&b));
    let c = direction(42, 4, 1000, Dist::Gaussian, Kind::Float, Device::Cpu);
    assert!(!a.equal(&c));
    let rows = directions(42, 5, 1000, Dist::Gaussian, Kind::Float, Device::Cpu);
    assert!(rows.get(3).equal(&a));
    let s = direction(7, 0, 50, Dist::Sphere, Kind::Double, Device::Cpu);
    assert!((s.norm().double_value(&[]) - 1.0).abs() < 1e-12);
    // The replayed estimate equals the stored-direction estimate with the same seed.
    let d = 20;
    let mut o = Oracle::new(quadratic(d, 3), None).unwrap();
    let x = Tensor::randn([d], F64);
    for diff in [Diff::Forward, Diff::Central] {
        let r = rge(Dist::Sphere, 8, 1e-3, diff);
        let full = r.estimate(&mut o, &x, None, 9).unwrap().grad;
        let rep = r.estimate_replay(&mut o, &x, None, 9).unwrap();
        let g = rep.materialize(d, Kind::Double, Device::Cpu);
        let err = (&g - &full).abs().max().double_value(&[]);
        assert!(err < 1e-9, "{diff:?}: replay differs by {err}");
        let mut y = x.copy();
        rep.apply(&mut y, 0.5);
        let want = &x - &full * 0.5;
        assert!((&y - &want).abs().max().double_value(&[]) < 1e-9);
    }
}

#[test]
fn projections_keep_constraints_and_are_idempotent() {
    let _torch = torch_lock();
    tch::manual_seed(5);
    let x = Tensor::randn([50, 8], F64) * 3.0;
    let c = Tensor::randn([8], F64);
    for (k, cons) in [
        Constraint::Box { lo: -0.5, hi: 1.0 },
        Constraint::L2Ball { radius: 0.7 },
        Constraint::LinfBall { radius: 0.2 },
        Constraint::Simplex,
    ]
    .into_iter()
    .enumerate()
    {
        let p = cons.project(&x, Some(&c));
        assert!(cons.violation(&p, Some(&c)) < 1e-12, "case {k}");
        assert!(
            (cons.project(&p, Some(&c)) - &p)
                .abs()
                .max()
                .double_value(&[])
                < 1e-12
        );
        match cons {
            Constraint::L2Ball { radius } => {
                let n = (&p - &c).norm_scalaropt_dim(2, [1], false);
                assert!(n.max().double_value(&[]) <= radius + 1e-12);
            }
            Constraint::LinfBall { radius } => {
                assert!((&p - &c).abs().max().double_value(&[]) <= radius + 1e-12);
            }
            Constraint::Simplex => {
                let s = p.sum_dim_intlist(1, false, None);
                assert!((s - 1.0).abs().max().double_value(&[]) < 1e-12);
                assert!(p.min().double_value(&[]) >= 0.0);
            }
            _ => assert!(p.max().double_value(&[]) <= 1.0 && p.min().double_value(&[]) >= -0.5),
        }
    }
    // A worked simplex example: (0.5, 0.5, 2) -> (0, 0, 1); (0.4, 0.3, 0.1) -> +1/15 each.
    let p = Constraint::Simplex.project(&Tensor::from_slice(&[0.5, 0.5, 2.0]), None);
    assert!(
        (p - Tensor::from_slice(&[0.0, 0.0, 1.0]))
            .abs()
            .max()
            .double_value(&[])
            < 1e-12
    );
    let p = Constraint::Simplex.project(&Tensor::from_slice(&[0.4, 0.3, 0.1]), None);
    let want = Tensor::from_slice(&[0.4, 0.3, 0.1]) + 0.2 / 3.0;
    assert!((p - want).abs().max().double_value(&[]) < 1e-12);
}

fn base(est: Estimator, update: Update, lr: f64, steps: usize) -> ZoConfig {
    ZoConfig {
        seed: 11,
        ..ZoConfig::new(est, update, lr, steps)
    }
}

#[test]
fn zo_sgd_converges_to_the_optimum_of_a_quadratic() {
    let _torch = torch_lock();
    let d = 10;
    let obj = quadratic(d, 4);
    let c = obj.c.copy();
    let mut o = Oracle::new(obj, None).unwrap();
    let x0 = Tensor::zeros([d], F64);
    let cfg = base(
        Estimator::Rge(rge(Dist::Gaussian, 10, 1e-4, Diff::Forward)),
        Update::Sgd,
        0.05,
        1500,
    );
    let t = minimize(&mut o, &x0, None, &cfg).unwrap();
    let err = (&t.x - &c).norm().double_value(&[]) / c.norm().double_value(&[]);
    assert!(err < 1e-3, "relative distance to the optimum {err}");
    assert!(t.f_best < 1e-6, "best value {}", t.f_best);
}

#[test]
fn optimizers_reduce_logistic_loss_toward_the_optimum() {
    let _torch = torch_lock();
    let (n, d) = (400, 8);
    let obj = logistic(n, d, 6);
    // First-order reference optimum by gradient descent.
    let mut w = Tensor::zeros([d], F64);
    for _ in 0..3000 {
        w = &w - obj.gradient(&w) * 1.0;
    }
    let mut o = Oracle::new(logistic(n, d, 6), None).unwrap();
    let f_star = o.value(&w, None).unwrap();
    let f0 = o.value(&Tensor::zeros([d], F64), None).unwrap();
    let rg = Estimator::Rge(rge(Dist::Gaussian, 10, 1e-4, Diff::Forward));
    let cases: Vec<(&str, ZoConfig)> = vec![
        ("sgd", base(rg.clone(), Update::Sgd, 0.3, 600)),
        (
            "momentum",
            base(rg.clone(), Update::Momentum { beta: 0.5 }, 0.15, 600),
        ),
        ("adam", base(rg.clone(), Update::adam(), 0.05, 600)),
        ("sign", {
            let mut c = base(rg.clone(), Update::Sign, 0.2, 600);
            c.decay = Decay::InvSqrt;
            c
        }),
        ("svrg", {
            let mut c = base(rg.clone(), Update::Sgd, 0.2, 600);
            c.batch_size = Some(20);
            c.svrg_epoch = Some(20);
            c.eval_every = 50;
            c
        }),
        ("conservative", {
            let mut c = base(rg.clone(), Update::Sgd, 0.3, 600);
            c.conservative = true;
            c
        }),
    ];
    for (name, cfg) in cases {
        let mut o = Oracle::new(logistic(n, d, 6), None).unwrap();
        let t = minimize(&mut o, &Tensor::zeros([d], F64), None, &cfg).unwrap();
        let gap = (t.f_best - f_star) / (f0 - f_star);
        assert!(
            gap < 0.01,
            "{name}: optimality gap {gap:.4} (f {} f* {f_star})",
            t.f_best
        );
        if name == "conservative" {
            let fs: Vec<f64> = t.history.iter().map(|p| p.f).collect();
            assert!(
                fs.windows(2).all(|w| w[1] <= w[0] + 1e-15),
                "{name} went up"
            );
        }
    }
}

#[test]
fn bad_input_is_refused_by_name() {
    let _torch = torch_lock();
    let mut o = Oracle::new(quadratic(4, 0), None).unwrap();
    let x = Tensor::zeros([4], F64);
    let msg = |e: Error| e.to_string();
    let e = rge(Dist::Gaussian, 3, 0.0, Diff::Forward).estimate(&mut o, &x, None, 0);
    assert!(msg(e.err().unwrap()).contains("mu"));
    let e = rge(Dist::Gaussian, 3, -1.0, Diff::Forward).estimate(&mut o, &x, None, 0);
    assert!(msg(e.err().unwrap()).contains("mu"));
    let e = rge(Dist::Gaussian, 3, f64::NAN, Diff::Forward).estimate(&mut o, &x, None, 0);
    assert!(msg(e.err().unwrap()).contains("mu"));
    let e = rge(Dist::Gaussian, 0, 1e-3, Diff::Forward).estimate(&mut o, &x, None, 0);
    assert!(msg(e.err().unwrap()).contains("q"));
    let e = Cge {
        mu: 1e-3,
        diff: Diff::Forward,
        coords: Some(vec![4]),
    }
    .estimate(&mut o, &x, None);
    assert!(msg(e.err().unwrap()).contains("coordinate 4"));
    let e = rge(Dist::Gaussian, 3, 1e-3, Diff::Forward).estimate(
        &mut o,
        &Tensor::zeros([5], F64),
        None,
        0,
    );
    assert!(matches!(e.err().unwrap(), Error::Shape { .. }));
    assert!(Oracle::new(quadratic(4, 0), Some(0)).is_err());
    // A NaN from the objective is named, not propagated.
    let mut nan = Oracle::new(
        FnObjective {
            dim: 2,
            f: |x: &Tensor| x.sum_dim_intlist(1, false, None).log(),
        },
        None,
    )
    .unwrap();
    let e = nan.value(&Tensor::from_slice(&[-1.0, -1.0]), None);
    assert!(matches!(e.err().unwrap(), Error::Numerical(_)));
    // Non-finite query points are refused before evaluation.
    let e = o.value(&Tensor::from_slice(&[f64::INFINITY, 0.0, 0.0, 0.0]), None);
    assert!(matches!(e.err().unwrap(), Error::Numerical(_)));
    assert_eq!(o.queries(), 0);
    // Out-of-range hyperparameters.
    let mut cfg = base(
        Estimator::Rge(rge(Dist::Gaussian, 2, 1e-3, Diff::Forward)),
        Update::Momentum { beta: 1.0 },
        0.1,
        10,
    );
    assert!(msg(minimize(&mut o, &x, None, &cfg).err().unwrap()).contains("beta"));
    cfg.update = Update::Sgd;
    cfg.lr = -1.0;
    assert!(msg(minimize(&mut o, &x, None, &cfg).err().unwrap()).contains("lr"));
}

#[test]
fn an_exhausted_budget_stops_cleanly_with_the_best_point() {
    let _torch = torch_lock();
    let d = 6;
    let mut o = Oracle::new(quadratic(d, 7), Some(100)).unwrap();
    let x0 = Tensor::zeros([d], F64);
    let f0 = o.value(&x0, None).unwrap();
    let cfg = base(
        Estimator::Rge(rge(Dist::Gaussian, 6, 1e-4, Diff::Forward)),
        Update::Sgd,
        0.05,
        1000,
    );
    let t = minimize(&mut o, &x0, None, &cfg).unwrap();
    assert!(t.stopped.as_deref().unwrap().contains("budget"));
    assert!(t.queries <= 100);
    // 99 queries left: 14 steps of 7, then one for the final value.
    assert_eq!(t.steps, 14);
    assert!(t.f_best < f0);
    let f_at_best = o.objective.eval(&t.x_best.unsqueeze(0), None).unwrap();
    assert!((f_at_best.double_value(&[0]) - t.f_best).abs() < 1e-12);
    // An estimate the budget cannot pay for in full spends nothing.
    let mut small = Oracle::new(quadratic(d, 7), Some(5)).unwrap();
    let cge = Cge {
        mu: 1e-3,
        diff: Diff::Forward,
        coords: None,
    };
    let e = cge.estimate(&mut small, &x0, None).err().unwrap();
    assert!(matches!(e, Error::BudgetExhausted { needed: 7, .. }), "{e}");
    let e = rge(Dist::Gaussian, 6, 1e-3, Diff::Central).estimate(&mut small, &x0, None, 0);
    assert!(matches!(e.err().unwrap(), Error::BudgetExhausted { .. }));
    assert_eq!(small.queries(), 0);
    // A direct query beyond the budget is refused with the counts.
    let e = o.query(&Tensor::zeros([5, d], F64), None).err().unwrap();
    assert!(
        matches!(e, Error::BudgetExhausted { budget: 100, .. }),
        "{e}"
    );
}

#[test]
fn zo_min_max_closes_the_duality_gap_of_robust_regression() {
    let _torch = torch_lock();
    let mut f = RobustRegression::synthetic(4, 50, 5, 0.5, 1.0, 8);
    let x0 = Tensor::zeros([5], F64);
    let w0 = Tensor::full([4], 0.25, F64);
    let gap0 = f.gap(&x0, &w0);
    let cfg = MinMaxConfig {
        est_x: rge(Dist::Gaussian, 10, 1e-4, Diff::Forward),
        est_y: rge(Dist::Gaussian, 10, 1e-4, Diff::Forward),
        lr_x: 0.3,
        lr_y: 0.3,
        decay: Decay::InvSqrt,
        steps: 3000,
        inner_steps: 1,
        cons_x: Constraint::Free,
        cons_y: Constraint::Simplex,
        budget: None,
        seed: 1,
    };
    let t = min_max(&mut f, &x0, &w0, &cfg, |_, _, _| {}).unwrap();
    let gap = f.gap(&t.x, &t.y);
    assert!(gap >= -1e-9, "a duality gap cannot be negative: {gap}");
    assert!(gap < 0.01 * gap0, "gap {gap} from {gap0}");
    assert!(Constraint::Simplex.violation(&t.y, None) < 1e-12);
    assert_eq!(t.queries, 3000 * 22);
}
