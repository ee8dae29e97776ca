//! Adversarial training: the double-backprop terms of GradAlign and Fast-BAT match finite
//! differences, every method raises robustness over standard training, the monitor flags a
//! collapse of PGD accuracy and restores the best weights, and configs are validated.

use rustworthy_core::Error;
use rustworthy_robust::adv_train::{alignment_penalty, differentiable_input_grad, implicit_term};
use rustworthy_robust::{
    attack_dataset, AdvMethod, AdvTrainConfig, AdvTrainer, Pgd, RunOptions, ThreatModel,
};
use rustworthy_testkit::task::{data, trained, trained_with};
use rustworthy_testkit::torch_lock;
use rustworthy_train::TrainHook;
use tch::{Kind, Tensor};

/// Directional derivative of `f` along `v` by central differences, against the autograd
/// gradient of `f` (computed at the unperturbed parameters).
fn check_gradient(model: &rustworthy_models::Model, f: &dyn Fn() -> Tensor, what: &str) {
    let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, t)| t).collect();
    for p in &params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    f().backward();
    tch::manual_seed(99);
    let dirs: Vec<Tensor> = params.iter().map(|p| p.randn_like()).collect();
    let analytic: f64 = params
        .iter()
        .zip(&dirs)
        .map(|(p, d)| (p.grad() * d).sum(Kind::Double).double_value(&[]))
        .sum();
    let h = 1e-6;
    let shift = |s: f64| {
        tch::no_grad(|| {
            for (p, d) in params.iter().zip(&dirs) {
                let _ = p.shallow_clone().g_add_(&(d * s));
            }
        })
    };
    shift(h);
    let up = f().double_value(&[]);
    shift(-2.0 * h);
    let down = f().double_value(&[]);
    shift(h);
    let numeric = (up - down) / (2.0 * h);
    let rel = (analytic - numeric).abs() / numeric.abs().max(1e-6);
    assert!(
        rel < 0.03,
        "{what}: autograd {analytic:.6e} vs finite differences {numeric:.6e} (rel {rel:.3e})"
    );
    assert!(analytic.abs() > 1e-8, "{what}: degenerate (zero) gradient");
}

/// A small model in float64, so that finite differences are accurate.
fn double_model() -> (rustworthy_models::Model, Tensor, Tensor) {
    let (m, _, test) = trained();
    let mut m = m;
    m.vs.double();
    m.to_device(tch::Device::Cpu).unwrap();
    let (x, y) = test.batch(&(0..16).collect::<Vec<_>>());
    (m, x.to_kind(Kind::Double), y)
}

#[test]
fn gradalign_penalty_gradient_matches_finite_differences() {
    let _torch = torch_lock();
    let (m, x, y) = double_model();
    tch::manual_seed(4);
    let eta = x.rand_like() * 0.1 - 0.05;
    let g_clean = differentiable_input_grad(&m, &x, &y, false).detach();
    let f = || alignment_penalty(&m, &x, &y, &g_clean, &eta, false);
    check_gradient(&m, &f, "GradAlign penalty");
}

#[test]
fn fast_bat_implicit_term_gradient_matches_finite_differences() {
    let _torch = torch_lock();
    let (m, x, y) = double_model();
    tch::manual_seed(5);
    let d1 = (&x + x.rand_like() * 0.2 - 0.1).clamp(0.0, 1.0);
    let b = x.randn_like() * 0.1;
    let f = || implicit_term(&-differentiable_input_grad(&m, &d1, &y, false), &b);
    check_gradient(&m, &f, "Fast-BAT implicit-gradient term");
}

fn pgd_accuracy(m: &rustworthy_models::Model, eps: f64) -> f64 {
    let (_, test) = data();
    let opts = RunOptions {
        batch_size: 100,
        seed: 3,
        ..RunOptions::default()
    };
    attack_dataset(
        &Pgd::new(ThreatModel::linf(eps).unwrap(), 10),
        m,
        &test,
        &opts,
    )
    .unwrap()
    .summary
    .robust_accuracy
}

#[test]
fn every_method_raises_pgd_accuracy_over_standard_training() {
    let _torch = torch_lock();
    let eps = 0.1;
    let (std_model, _, _) = trained();
    let base = pgd_accuracy(&std_model, eps);
    for m in [
        AdvMethod::Pgd,
        AdvMethod::Fast,
        AdvMethod::GradAlign,
        AdvMethod::FastBat,
        AdvMethod::Trades,
    ] {
        let mut cfg = AdvTrainConfig::new(m, eps);
        cfg.monitor.samples = 0;
        let mut hook = AdvTrainer::new(cfg, None, 1).unwrap();
        let model = trained_with(&mut hook, 6);
        let acc = pgd_accuracy(&model, eps);
        assert!(
            acc > base + 10.0,
            "{m:?}: PGD accuracy {acc:.1}% vs standard {base:.1}%"
        );
    }
}

#[test]
fn monitor_flags_collapse_and_restores_the_best_weights() {
    let _torch = torch_lock();
    let (train, test) = data();
    let mut cfg = AdvTrainConfig::new(AdvMethod::Pgd, 0.1);
    cfg.monitor.samples = 100;
    cfg.monitor.co_drop = 10.0;
    cfg.monitor.stop_on_co = true;
    let mut hook = AdvTrainer::new(cfg, Some(&test), 2).unwrap();
    let mut robust = trained_with(
        &mut AdvTrainer::new(
            AdvTrainConfig {
                monitor: Default::default(),
                ..hook.cfg.clone()
            },
            None,
            1,
        )
        .unwrap(),
        6,
    );
    let first = hook.end_epoch(&mut robust, 0).unwrap();
    let best = first.extra["val_pgd_accuracy"];
    assert!(first.stop.is_none() && first.extra["catastrophic_overfitting"] == 0.0);
    let saved: Vec<Tensor> = robust.parameters().iter().map(|(_, t)| t.copy()).collect();
    // Swap in non-robust weights: PGD accuracy collapses, which the monitor must flag.
    let (standard, _, _) = trained();
    robust.copy_from(&standard).unwrap();
    let v = hook.end_epoch(&mut robust, 1).unwrap();
    assert_eq!(
        v.extra["catastrophic_overfitting"], 1.0,
        "{:?} (best {best})",
        v.extra
    );
    assert!(v
        .stop
        .as_deref()
        .unwrap_or("")
        .contains("catastrophic overfitting"));
    assert_eq!(hook.co_epochs(), &[2]);
    for ((_, now), then) in robust.parameters().iter().zip(&saved) {
        assert!(now.equal(then), "the most robust weights were not restored");
    }
    let _ = train;
}

#[test]
fn configs_are_validated_by_field() {
    let field = |e: Error| match e {
        Error::Config { field, .. } => field,
        o => panic!("{o}"),
    };
    let mut c = AdvTrainConfig::new(AdvMethod::Pgd, 0.0);
    assert_eq!(field(c.validate().unwrap_err()), "adv.eps");
    c.eps = 0.1;
    c.lambda = Some(1.0);
    assert_eq!(field(c.validate().unwrap_err()), "adv.lambda");
    let mut c = AdvTrainConfig::new(AdvMethod::Fast, 0.1);
    c.steps = Some(3);
    assert_eq!(field(c.validate().unwrap_err()), "adv.steps");
    let mut c = AdvTrainConfig::new(AdvMethod::FastBat, 0.1);
    c.lambda = Some(0.0);
    assert_eq!(field(c.validate().unwrap_err()), "adv.lambda");
    let mut c = AdvTrainConfig::new(AdvMethod::Trades, 0.1);
    c.beta = Some(-1.0);
    assert_eq!(field(c.validate().unwrap_err()), "adv.beta");
    assert_eq!(
        field("bogus".parse::<AdvMethod>().unwrap_err()),
        "adv.method"
    );
    let mut c = AdvTrainConfig::new(AdvMethod::Pgd, 0.1);
    c.step_size = Some(f64::NAN);
    assert!(c.validate().is_err());
}
