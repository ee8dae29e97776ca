//! Zeroth-order minimization of a black-box function: only function values are queried, every
//! query is counted, and the run stops before it would exceed its budget.
use rustworthy::prelude::*;
use rustworthy::tch::{Device, Kind, Tensor};
use rustworthy::zo::{minimize, Diff, Dist, Estimator, FnObjective, Oracle, Rge, Update, ZoConfig};

fn main() -> Result<()> {
    let d = 10;
    // A black box: a shifted, badly scaled quadratic we pretend not to know.
    let target = Tensor::linspace(-1.0, 1.0, d, (Kind::Double, Device::Cpu));
    let scale = Tensor::logspace(0.0, 1.0, d, 10.0, (Kind::Double, Device::Cpu));
    let f = move |xs: &Tensor| {
        ((xs - &target).square() * &scale).sum_dim_intlist(1, false, Kind::Double)
    };
    let mut oracle = Oracle::new(FnObjective { dim: d, f }, Some(20_000))?;
    let rge = Rge {
        dist: Dist::Sphere,
        q: 10,
        mu: 1e-3,
        diff: Diff::Forward,
    };
    let cfg = ZoConfig::new(Estimator::Rge(rge), Update::adam(), 0.05, 2000);
    let x0 = Tensor::zeros([d], (Kind::Double, Device::Cpu));
    let f0 = oracle.value(&x0, None)?;
    let trace = minimize(&mut oracle, &x0, None, &cfg)?;
    println!(
        "f(x0) = {f0:.4} -> f(x*) = {:.2e} after {} steps and {} queries (budget 20000){}",
        trace.f_best,
        trace.steps,
        oracle.queries(),
        trace
            .stopped
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default()
    );
    assert!(trace.f_best < 1e-2 * f0, "the black box was not minimized");
    Ok(())
}
