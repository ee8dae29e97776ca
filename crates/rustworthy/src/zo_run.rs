//! Zeroth-order checks (estimators, optimizers and min-max on problems with known answers)
//! and the CGE throughput benchmark of DeepZero training.

use crate::table::render;
use crate::train_run::set_threads;
use rustworthy_core::device::device_name;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_zo::*;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Settings of the zeroth-order checks.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ZoCheckConfig {
    /// Independent estimates per row of the estimator table.
    pub samples: usize,
    /// Dimension of the test problems.
    pub dim: i64,
    /// Seed of the problems and estimates.
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
}

impl Default for ZoCheckConfig {
    fn default() -> Self {
        ZoCheckConfig {
            samples: 4000,
            dim: 20,
            seed: 0,
            out: PathBuf::from("runs/zo/check"),
        }
    }
}

/// What the checks found: the tables as text and the report.
pub struct ZoCheckOutcome {
    /// The estimator, optimizer and min-max tables.
    pub text: String,
    /// The report written to `report.json`.
    pub report: RunReport,
}

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// Empirical squared bias and MSE of `n` independent estimates, with the sampling standard
/// error of the MSE.
fn moments<O: Objective>(
    r: &Rge,
    o: &mut Oracle<O>,
    x: &Tensor,
    g: &Tensor,
    n: usize,
    seed: u64,
) -> Result<(f64, f64, f64)> {
    let mut ests = Vec::with_capacity(n);
    for s in 0..n {
        ests.push(r.estimate(o, x, None, seed.wrapping_add(s as u64))?.grad);
    }
    let e = Tensor::stack(&ests, 0);
    let err2 = (&e - g)
        .square()
        .sum_dim_intlist(1, false, Some(Kind::Double));
    let mse = err2.mean(Kind::Double).double_value(&[]);
    let se = err2.std(true).double_value(&[]) / (n as f64).sqrt();
    let bias2 = (e.mean_dim(0, false, None) - g)
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    Ok((bias2, mse, se))
}

/// Runs the checks and writes `report.json` into `a.out`.
pub fn zo_check(a: &ZoCheckConfig) -> Result<ZoCheckOutcome> {
    let t0 = Instant::now();
    tch::manual_seed(a.seed as i64);
    let d = a.dim;
    let n = a.samples;
    if n < 10 || d < 2 {
        return Err(Error::config(
            "samples/dim",
            "need --samples >= 10 and --dim >= 2",
        ));
    }
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    // 1. Estimator moments against closed forms.
    let mut quad = Oracle::new(Quadratic::well_conditioned(d, a.seed as i64), None)?;
    let x = Tensor::randn([d], F64);
    let g = quad.objective.gradient(&x);
    let g2 = g.square().sum(Kind::Double).double_value(&[]);
    let mut logit = Oracle::new(Logistic::synthetic(500, d, a.seed as i64 + 1), None)?;
    let w = Tensor::randn([d], F64) * 0.3;
    let gl = logit.objective.gradient(&w);
    let gl2 = gl.square().sum(Kind::Double).double_value(&[]);
    let df = d as f64;
    for (problem, dist, diff, q, mu) in [
        ("quadratic", Dist::Gaussian, Diff::Central, 1, 0.1),
        ("quadratic", Dist::Sphere, Diff::Central, 1, 0.1),
        ("quadratic", Dist::Gaussian, Diff::Forward, 1, 1e-3),
        ("quadratic", Dist::Gaussian, Diff::Central, 10, 0.1),
        ("quadratic", Dist::Sphere, Diff::Central, 10, 0.1),
        ("logistic", Dist::Gaussian, Diff::Central, 1, 1e-3),
        ("logistic", Dist::Sphere, Diff::Central, 1, 1e-3),
        ("logistic", Dist::Gaussian, Diff::Forward, 10, 1e-3),
    ] {
        let r = Rge { dist, q, mu, diff };
        let (bias2, mse, se, gn2) = if problem == "quadratic" {
            let (b, m, s) = moments(&r, &mut quad, &x, &g, n, a.seed)?;
            (b, m, s, g2)
        } else {
            let (b, m, s) = moments(&r, &mut logit, &w, &gl, n, a.seed)?;
            (b, m, s, gl2)
        };
        // E|g_hat - g|^2 for an exact directional derivative: (d + 1)|g|^2 / q (Gaussian),
        // (d - 1)|g|^2 / q (sphere). Forward differences on a quadratic add
        // mu^2/4 * E[(u^T A u)^2 |u|^2] / q, negligible at mu = 1e-3; on the logistic loss the
        // closed form holds up to O(mu).
        let closed = match dist {
            Dist::Gaussian => (df + 1.0) * gn2 / q as f64,
            Dist::Sphere => (df - 1.0) * gn2 / q as f64,
        };
        let z = (mse - closed) / se;
        // |mean - g|^2 has expectation MSE / n for an unbiased estimator.
        let bias_ratio = bias2 / (closed / n as f64);
        rows.push(vec![
            problem.to_string(),
            format!("{dist:?}").to_lowercase(),
            format!("{diff:?}").to_lowercase(),
            q.to_string(),
            format!("{mu}"),
            format!("{mse:.4}"),
            format!("{closed:.4}"),
            format!("{z:+.2}"),
            format!("{bias_ratio:.2}"),
        ]);
        json_rows.push(serde_json::json!({
            "problem": problem, "dist": dist, "diff": diff, "q": q, "mu": mu,
            "mse": mse, "mse_closed_form": closed, "mse_standard_error": se,
            "z_score": z, "squared_bias": bias2,
            "squared_bias_over_sampling_error": bias_ratio,
        }));
    }
    let est_table = render(
        &[
            "problem",
            "dirs",
            "diff",
            "q",
            "mu",
            "MSE",
            "closed form",
            "z",
            "bias^2 / (MSE/n)",
        ],
        &rows,
    );
    // 2. Convergence of the optimizers on the quadratic (known optimum c) and on logistic
    //    regression (optimum by first-order gradient descent).
    let quad_obj = Quadratic::well_conditioned(d, a.seed as i64 + 2);
    let c = quad_obj.c.copy();
    let mut oq = Oracle::new(quad_obj, None)?;
    let rg = |q: usize| {
        Estimator::Rge(Rge {
            dist: Dist::Gaussian,
            q,
            mu: 1e-4,
            diff: Diff::Forward,
        })
    };
    let cfg = |est: Estimator, update: Update, lr: f64, steps: usize| ZoConfig {
        seed: a.seed,
        ..ZoConfig::new(est, update, lr, steps)
    };
    let t = minimize(
        &mut oq,
        &Tensor::zeros([d], F64),
        None,
        &cfg(rg(10), Update::Sgd, 0.05, 3000),
    )?;
    let quad_err = (&t.x - &c).norm().double_value(&[]) / c.norm().double_value(&[]);
    let lg = Logistic::synthetic(1000, d, a.seed as i64 + 3);
    let mut wstar = Tensor::zeros([d], F64);
    for _ in 0..5000 {
        wstar = &wstar - lg.gradient(&wstar) * 1.0;
    }
    let mut ol = Oracle::new(lg.copy(), None)?;
    let f_star = ol.value(&wstar, None)?;
    let f0 = ol.value(&Tensor::zeros([d], F64), None)?;
    let mut opt_rows = vec![vec![
        "ZO-SGD".into(),
        "quadratic".into(),
        format!("{}", t.queries),
        format!("|x - x*| / |x*| = {quad_err:.2e}"),
    ]];
    let mut opt_json = vec![
        serde_json::json!({"method": "zo-sgd", "problem": "quadratic",
        "queries": t.queries, "relative_distance_to_optimum": quad_err, "f_best": t.f_best}),
    ];
    let mut sign = cfg(rg(10), Update::Sign, 0.2, 1000);
    sign.decay = Decay::InvSqrt;
    let mut svrg = cfg(rg(10), Update::Sgd, 0.2, 1000);
    svrg.batch_size = Some(50);
    svrg.svrg_epoch = Some(20);
    svrg.eval_every = 50;
    let mut cons = cfg(rg(10), Update::Sgd, 0.3, 1000);
    cons.conservative = true;
    for (name, c) in [
        ("ZO-SGD", cfg(rg(10), Update::Sgd, 0.3, 1000)),
        ("ZO-signSGD", sign),
        (
            "ZO-momentum",
            cfg(rg(10), Update::Momentum { beta: 0.5 }, 0.15, 1000),
        ),
        ("ZO-AdaMM", cfg(rg(10), Update::adam(), 0.05, 1000)),
        ("ZO-SVRG", svrg),
        ("ZO-SGD conservative", cons),
        (
            "ZO-SGD, CGE",
            cfg(
                Estimator::Cge(Cge {
                    mu: 1e-4,
                    diff: Diff::Forward,
                    coords: None,
                }),
                Update::Sgd,
                0.3,
                1000 * 11 / (d as usize + 1),
            ),
        ),
    ] {
        let mut o = Oracle::new(lg.copy(), None)?;
        let t = minimize(&mut o, &Tensor::zeros([d], F64), None, &c)?;
        let gap = (t.f_best - f_star) / (f0 - f_star);
        opt_rows.push(vec![
            name.into(),
            "logistic".into(),
            format!("{}", t.queries),
            format!("optimality gap {gap:.2e}"),
        ]);
        opt_json.push(serde_json::json!({"method": name, "problem": "logistic", "queries": t.queries,
            "relative_optimality_gap": gap, "f_best": t.f_best, "f_star": f_star, "rejected_steps": t.rejected}));
    }
    let opt_table = render(&["optimizer", "problem", "queries", "result"], &opt_rows);
    // 3. ZO-Min-Max on distributionally robust regression: the exact duality gap.
    let mut rr = RobustRegression::synthetic(4, 50, 5, 0.5, 1.0, a.seed);
    let x0 = Tensor::zeros([5], F64);
    let w0 = Tensor::full([4], 0.25, F64);
    let gap0 = rr.gap(&x0, &w0);
    let est = Rge {
        dist: Dist::Gaussian,
        q: 10,
        mu: 1e-4,
        diff: Diff::Forward,
    };
    let mm = MinMaxConfig {
        est_x: est,
        est_y: est,
        lr_x: 0.3,
        lr_y: 0.3,
        decay: Decay::InvSqrt,
        steps: 3000,
        inner_steps: 1,
        cons_x: Constraint::Free,
        cons_y: Constraint::Simplex,
        budget: None,
        seed: a.seed,
    };
    let mut curve = Vec::new();
    let probe = RobustRegression::synthetic(4, 50, 5, 0.5, 1.0, a.seed);
    let tr = min_max(&mut rr, &x0, &w0, &mm, |s, x, y| {
        if s % 500 == 0 {
            curve.push((s, probe.gap(x, y)));
        }
    })?;
    let gap = rr.gap(&tr.x, &tr.y);
    let worst_group_erm = {
        let (_, xe) = rr.dual(&w0);
        rr.group_losses(&xe.unsqueeze(0)).max().double_value(&[])
    };
    let worst_group_robust = rr.group_losses(&tr.x.unsqueeze(0)).max().double_value(&[]);
    let mm_rows: Vec<Vec<String>> = curve
        .iter()
        .map(|(s, g)| vec![s.to_string(), format!("{}", s * 22), format!("{g:.2e}")])
        .collect();
    let mm_table = render(&["step", "queries", "duality gap"], &mm_rows);
    let text = format!("RGE moments against closed forms ({n} estimates each, d = {d}):\n{est_table}\nOptimizers (d = {d}):\n{opt_table}\n") + &format!(
        "ZO-Min-Max, distributionally robust regression (4 groups): duality gap {gap0:.3} -> {gap:.2e}; worst-group loss {worst_group_erm:.3} (ERM) -> {worst_group_robust:.3} (robust)\n{mm_table}"
    );
    let mut report = RunReport::new("zo-check", serde_json::to_value(format!("{a:?}"))?, "cpu");
    report.seeds.insert("seed".into(), a.seed);
    report.metrics = serde_json::json!({
        "estimators": json_rows,
        "optimizers": opt_json,
        "min_max": {"gap_initial": gap0, "gap_final": gap, "queries": tr.queries,
            "curve": curve, "worst_group_loss_erm": worst_group_erm,
            "worst_group_loss_robust": worst_group_robust},
    });
    report
        .timings_s
        .insert("total".into(), t0.elapsed().as_secs_f64());
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    let _lock = crate::train_run::lock_out(&a.out)?;
    report.write(&a.out.join("report.json"))?;
    Ok(ZoCheckOutcome { text, report })
}

/// Settings of the CGE throughput benchmark.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchZoConfig {
    /// Architecture (lenet, resnet20, mlp).
    pub arch: Arch,
    /// Batch size.
    pub batch: i64,
    /// Fraction of each weight tensor left out of the coordinate set (biases always in).
    pub sparsity: f64,
    /// Coordinates timed (a stratified sample of the set; the step time is extrapolated).
    pub coords: usize,
    /// Finite-difference radius.
    pub mu: f64,
    /// Device.
    pub device: DeviceSpec,
    /// libtorch threads (0 = default).
    pub threads: usize,
    /// Seed.
    pub seed: u64,
}

/// Times batched CGE on a stratified sample of the coordinate set; returns one JSON object.
pub fn bench_zo(a: &BenchZoConfig) -> Result<serde_json::Value> {
    set_threads(a.threads);
    let device = a.device.resolve()?;
    let arch: Arch = a.arch;
    rustworthy_core::validate::in_half_open("sparsity", a.sparsity, 0.0, 1.0)?;
    tch::manual_seed(a.seed as i64);
    let spec = ModelSpec {
        activation: Default::default(),
        arch,
        in_channels: 1,
        num_classes: 10,
        input_size: (28, 28),
        mean: vec![0.5],
        std: vec![0.25],
    };
    let model = Model::new(spec, device)?;
    let net = ZoNet::new(&model)?;
    let x = Tensor::rand([a.batch, 1, 28, 28], (Kind::Float, device));
    let y = Tensor::randint(10, [a.batch], (Kind::Int64, device));
    let full: Vec<i64> = net
        .slots
        .iter()
        .map(|s| {
            if s.bias {
                s.numel
            } else {
                ((1.0 - a.sparsity) * s.numel as f64).round() as i64
            }
        })
        .collect();
    let total: i64 = full.iter().sum();
    let coords: Vec<Option<Tensor>> = net
        .slots
        .iter()
        .zip(&full)
        .map(|(s, &f)| {
            let k = ((a.coords as f64 * f as f64 / total as f64).round() as i64)
                .max(1)
                .min(f);
            (f > 0).then(|| {
                Tensor::randperm(s.numel, (Kind::Int64, Device::Cpu))
                    .narrow(0, 0, k)
                    .sort(0, false)
                    .0
                    .to_device(device)
            })
        })
        .collect();
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // Warm-up, then the timed estimate.
    let _ = net.cge(&x, &y, &coords, a.mu, true);
    sync();
    let t = Instant::now();
    let (_, _, grads, q) = net.cge(&x, &y, &coords, a.mu, true);
    sync();
    let dt = t.elapsed().as_secs_f64();
    for g in &grads {
        if !bool::try_from(g.isfinite().all())? {
            return Err(Error::Numerical("a CGE estimate is not finite".into()));
        }
    }
    let timed = q - 1;
    let qps = timed as f64 / dt;
    Ok(serde_json::json!({
            "impl": "rustworthy",
            "arch": a.arch.to_string(), "batch": a.batch, "sparsity": a.sparsity,
            "device": device_name(device),
            "threads": tch::get_num_threads(),
            "coords_timed": timed, "coords_per_step": total,
            "seconds": dt, "queries_per_s": qps,
            "step_seconds": total as f64 / qps,
    }))
}
