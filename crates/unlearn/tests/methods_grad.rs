//! The gradient-based unlearning methods (GA, RL, SalUn, l1-sparse, NegGrad+, SCRUB) on a small
//! synthetic task: each forgets in the expected direction, SalUn's mask keeps the requested share
//! and freezes everything else bit for bit, and every config rejects bad values by field name.

use std::collections::BTreeMap;

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model};
use rustworthy_testkit::{copy_of, param_bits, sgd_recipe, synthetic_split, tiny_spec};
use rustworthy_testkit::{torch_lock, trained_model, CLASSES};
use rustworthy_train::{evaluate, TrainConfig};
use rustworthy_unlearn::methods::common::RunConfig;
use rustworthy_unlearn::methods::ga::GaConfig;
use rustworthy_unlearn::methods::l1_sparse::L1SparseConfig;
use rustworthy_unlearn::methods::neggrad_plus::NegGradPlusConfig;
use rustworthy_unlearn::methods::rl::RlConfig;
use rustworthy_unlearn::methods::salun::{
    mask_count, mask_from_scores, saliency_mask, SalunConfig,
};
use rustworthy_unlearn::methods::scrub::ScrubConfig;
use rustworthy_unlearn::{ForgetSpec, MethodReport, Scenario, UnlearnCtx, UnlearnData, Unlearner};
use tch::{Kind, Tensor};

fn recipe() -> TrainConfig {
    sgd_recipe(4, 16, 0.02, 11)
}

/// A trained original model and the train / test split of its task.
struct Task {
    model: Model,
    train: Dataset,
    test: Dataset,
}

fn task() -> Task {
    let (train, test) = synthetic_split(60, 12, 0.35, 5, 180);
    let model = trained_model(tiny_spec(Arch::Mlp, 12), 3, &train, &recipe());
    let acc = evaluate(&model, &train, 256).unwrap().accuracy;
    assert!(acc >= 97.0, "the original model must fit its data: {acc}");
    Task { model, train, test }
}

/// The forget / retain / test data of `spec` over the task's training set.
fn data(t: &Task, spec: ForgetSpec) -> UnlearnData {
    let train_idx: Vec<usize> = (0..t.train.len()).collect();
    let labels = t.train.labels_vec();
    let s = Scenario::resolve(&spec, &train_idx, &labels, CLASSES, 9).unwrap();
    let test = if s.forget_classes.is_empty() {
        t.test.shallow_clone()
    } else {
        let keep: Vec<usize> = t
            .test
            .labels_vec()
            .iter()
            .enumerate()
            .filter(|(_, &l)| !s.forget_classes.contains(&(l as usize)))
            .map(|(i, _)| i)
            .collect();
        t.test.subset(&keep).unwrap()
    };
    UnlearnData {
        forget: t.train.subset(&s.forget).unwrap(),
        retain: t.train.subset(&s.retain).unwrap(),
        test,
        scenario: s,
    }
}

fn class0() -> ForgetSpec {
    ForgetSpec::Class { classes: vec![0] }
}

fn random20() -> ForgetSpec {
    ForgetSpec::Random { fraction: 0.2 }
}

/// Forget / retain / test accuracy (percent).
#[derive(Debug, Clone, Copy)]
struct Acc {
    forget: f64,
    retain: f64,
    test: f64,
}

fn acc(m: &Model, d: &UnlearnData) -> Acc {
    Acc {
        forget: evaluate(m, &d.forget, 256).unwrap().accuracy,
        retain: evaluate(m, &d.retain, 256).unwrap().accuracy,
        test: evaluate(m, &d.test, 256).unwrap().accuracy,
    }
}

/// Runs `method` on a copy of the task's model; returns accuracies before and after, the report
/// and the unlearned model.
fn unlearn(
    t: &Task,
    d: &UnlearnData,
    method: &dyn Unlearner,
    seed: u64,
) -> (Acc, Acc, MethodReport, Model) {
    let mut m = copy_of(&t.model);
    let before = acc(&m, d);
    let original = recipe();
    let ctx = UnlearnCtx {
        data: d,
        seed,
        progress: ProgressMode::Quiet,
        original: &original,
        masks: None,
        dist: None,
    };
    let report = method.unlearn(&mut m, &ctx).unwrap();
    let after = acc(&m, d);
    (before, after, report, m)
}

fn run(epochs: usize, lr: f64, batch_size: usize) -> RunConfig {
    RunConfig {
        batch_size,
        ..RunConfig::new(epochs, lr)
    }
}

fn grad_bits(p: &Tensor) -> Vec<u32> {
    let g = p.grad();
    if !g.defined() {
        return Vec::new();
    }
    let v: Vec<f32> = Vec::try_from(&g.flatten(0, -1)).unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

fn mask_vec(masks: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<f32>> {
    masks
        .iter()
        .map(|(n, m)| (n.clone(), Vec::try_from(&m.flatten(0, -1)).unwrap()))
        .collect()
}

fn forget_loss(m: &Model, d: &UnlearnData) -> f64 {
    evaluate(m, &d.forget, 256).unwrap().loss
}

fn retain_loss(m: &Model, d: &UnlearnData) -> f64 {
    evaluate(m, &d.retain, 256).unwrap().loss
}

fn ga() -> GaConfig {
    GaConfig {
        run: run(3, 0.01, 16),
    }
}

fn rl() -> RlConfig {
    RlConfig {
        run: run(3, 0.01, 16),
        ..Default::default()
    }
}

fn salun(ratio: f64) -> SalunConfig {
    SalunConfig::with_rl(ratio, rl())
}

fn l1_sparse() -> L1SparseConfig {
    L1SparseConfig {
        run: run(3, 0.05, 16),
        alpha: 5e-3,
        ..Default::default()
    }
}

fn neggrad_plus() -> NegGradPlusConfig {
    NegGradPlusConfig {
        epochs: 3,
        lr: 0.1,
        batch_size: 16,
        forget_batch_size: 16,
        ..Default::default()
    }
}

fn scrub() -> ScrubConfig {
    ScrubConfig {
        run: run(3, 0.01, 16),
        forget_batch_size: 16,
        ..Default::default()
    }
}

/// Class-wise forgetting: the forgotten class is no longer recognised (UA near 100%); methods
/// that train on the retain set keep it.
fn check_class_wise(method: &dyn Unlearner, uses_retain: bool) {
    let t = task();
    let d = data(&t, class0());
    let (before, after, report, _) = unlearn(&t, &d, method, 1);
    let name = method.name();
    assert!(report.steps > 0, "{name}: {report:?}");
    assert!(before.forget >= 95.0, "{name}: {before:?}");
    assert!(
        after.forget <= 20.0,
        "{name}: forget accuracy {before:?} -> {after:?}"
    );
    if uses_retain {
        assert!(after.retain >= 90.0, "{name}: {before:?} -> {after:?}");
        assert!(after.test >= 85.0, "{name}: {before:?} -> {after:?}");
    }
}

#[test]
fn ga_forgets_a_class() {
    let _torch = torch_lock();
    check_class_wise(&ga().build().unwrap(), false);
}

#[test]
fn rl_forgets_a_class() {
    let _torch = torch_lock();
    check_class_wise(&rl().build().unwrap(), true);
}

#[test]
fn salun_forgets_a_class() {
    let _torch = torch_lock();
    check_class_wise(&salun(0.5).build().unwrap(), true);
}

#[test]
fn l1_sparse_forgets_a_class_and_shrinks_weights() {
    let _torch = torch_lock();
    let m = l1_sparse().build().unwrap();
    check_class_wise(&m, true);
    let t = task();
    let d = data(&t, class0());
    let (_, _, report, _) = unlearn(&t, &d, &m, 1);
    let before = report.extra["l1_norm_before"].as_f64().unwrap();
    let after = report.extra["l1_norm_after"].as_f64().unwrap();
    assert!(after < before, "{report:?}");
    let c = l1_sparse();
    assert_eq!(c.alpha_at(0), 5e-3);
    assert!((c.alpha_at(2) - 5e-3 / 3.0).abs() < 1e-12);
    let c = L1SparseConfig {
        no_l1_epochs: 2,
        ..L1SparseConfig::default()
    };
    assert_eq!(c.alpha_at(0), c.alpha);
    assert!((c.alpha_at(4) - c.alpha * 0.5).abs() < 1e-12);
    assert_eq!(c.alpha_at(8), 0.0);
    assert_eq!(c.alpha_at(9), 0.0);
}

#[test]
fn neggrad_plus_forgets_a_class() {
    let _torch = torch_lock();
    check_class_wise(&neggrad_plus().build().unwrap(), true);
}

#[test]
fn scrub_forgets_a_class() {
    let _torch = torch_lock();
    check_class_wise(&scrub().build().unwrap(), true);
}

/// Random forgetting on a task that generalises: the forget set stays largely predictable, but
/// it comes to look less like training data than the retain set does (its loss rises relative to
/// the retain loss), and the retain set is kept.
#[test]
fn random_forgetting_raises_the_relative_forget_loss() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, random20());
    let gap0 = forget_loss(&t.model, &d) / retain_loss(&t.model, &d);
    // NegGrad+ with the reference beta is dominated by its retain term on a task where the
    // retain set predicts the forget set; give the forget term more weight here.
    let ng = NegGradPlusConfig {
        beta: 0.6,
        lr: 0.05,
        ..neggrad_plus()
    };
    let methods: Vec<(Box<dyn Unlearner>, bool)> = vec![
        (Box::new(ga().build().unwrap()), false),
        (Box::new(rl().build().unwrap()), true),
        (Box::new(salun(0.5).build().unwrap()), true),
        (Box::new(ng.build().unwrap()), true),
        (Box::new(scrub().build().unwrap()), true),
    ];
    for (m, uses_retain) in methods {
        let (before, after, _, model) = unlearn(&t, &d, m.as_ref(), 2);
        let gap1 = forget_loss(&model, &d) / retain_loss(&model, &d);
        assert!(
            gap1 > gap0,
            "{}: forget / retain loss {gap0} -> {gap1}",
            m.name()
        );
        assert!(
            after.forget <= before.forget,
            "{}: {before:?} -> {after:?}",
            m.name()
        );
        if uses_retain {
            assert!(
                after.retain >= 95.0,
                "{}: {before:?} -> {after:?}",
                m.name()
            );
        }
    }
}

#[test]
fn rl_options_and_determinism() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, class0());
    let base = rl().build().unwrap();
    let (_, _, _, a) = unlearn(&t, &d, &base, 4);
    let (_, _, _, b) = unlearn(&t, &d, &base, 4);
    let (_, _, _, c) = unlearn(&t, &d, &base, 5);
    assert_eq!(param_bits(&a), param_bits(&b), "same seed, same result");
    assert_ne!(param_bits(&a), param_bits(&c), "the seed must matter");
    for cfg in [
        RlConfig {
            exclude_true_label: true,
            ..rl()
        },
        RlConfig {
            relabel_each_epoch: false,
            ..rl()
        },
        RlConfig {
            forget_first: false,
            ..rl()
        },
    ] {
        let (_, after, report, _) = unlearn(&t, &d, &cfg.clone().build().unwrap(), 4);
        assert!(after.forget <= 20.0, "{cfg:?}: {after:?}");
        assert!(after.retain >= 90.0, "{cfg:?}: {after:?}");
        // One pass over the union per epoch, whatever the order.
        let per_epoch = if cfg.forget_first {
            d.forget.len().div_ceil(16) + d.retain.len().div_ceil(16)
        } else {
            (d.forget.len() + d.retain.len()).div_ceil(16)
        };
        assert_eq!(report.steps, 3 * per_epoch as u64, "{cfg:?}");
    }
}

#[test]
fn other_labels_differ_from_the_true_ones() {
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 3, 2, 1, 0]).repeat([50]);
    let mut rng = rustworthy_core::SeedRng::new(1);
    let r = rustworthy_unlearn::methods::common::try_random_other_labels(&y, 4, &mut rng).unwrap();
    let yv: Vec<i64> = Vec::try_from(&y).unwrap();
    let rv: Vec<i64> = Vec::try_from(&r).unwrap();
    assert!(yv
        .iter()
        .zip(&rv)
        .all(|(a, b)| a != b && (0..4).contains(b)));
    // Every other class is drawn.
    for c in 0..4 {
        assert!(rv.contains(&c));
    }
    let mut rng = rustworthy_core::SeedRng::new(1);
    assert!(rustworthy_unlearn::methods::common::try_random_other_labels(&y, 1, &mut rng).is_err());
    assert!(rustworthy_unlearn::methods::common::try_random_other_labels(&y, 3, &mut rng).is_err());
}

#[test]
fn salun_mask_keeps_the_requested_share_of_the_most_salient_weights() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, class0());
    let grads_before: Vec<Vec<u32>> = t
        .model
        .parameters()
        .iter()
        .map(|(_, p)| grad_bits(p))
        .collect();
    let sal = rustworthy_unlearn::methods::salun::saliency(&t.model, &d.forget, 16).unwrap();
    let sal = mask_vec(&sal);
    for ratio in [0.5, 0.1, 1.0] {
        let masks = saliency_mask(&t.model, &d.forget, 16, ratio).unwrap();
        let (kept, total) = mask_count(&masks).unwrap();
        assert_eq!(total, t.model.num_params() as u64);
        let want = ratio * total as f64;
        assert!(
            (kept as f64 - want).abs() <= 1.0,
            "ratio {ratio}: kept {kept} of {total}"
        );
        let mv = mask_vec(&masks);
        assert_eq!(mv.len(), t.model.parameters().len());
        let mut lowest_kept = f32::INFINITY;
        let mut highest_dropped = f32::NEG_INFINITY;
        for (name, m) in &mv {
            for (&mi, &si) in m.iter().zip(&sal[name]) {
                assert!(mi == 0.0 || mi == 1.0);
                if mi == 1.0 {
                    lowest_kept = lowest_kept.min(si);
                } else {
                    highest_dropped = highest_dropped.max(si);
                }
            }
        }
        assert!(
            lowest_kept >= highest_dropped,
            "ratio {ratio}: kept {lowest_kept} < dropped {highest_dropped}"
        );
    }
    // The saliency pass leaves the parameters' gradient fields alone.
    let grads_after: Vec<Vec<u32>> = t
        .model
        .parameters()
        .iter()
        .map(|(_, p)| grad_bits(p))
        .collect();
    assert_eq!(grads_before, grads_after);
}

#[test]
fn salun_mask_is_exact_under_ties() {
    let _torch = torch_lock();
    let t = task();
    let params = t.model.parameters();
    let n = t.model.num_params() as u64;
    // All scores equal.
    let flat: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(k, p)| (k.clone(), p.zeros_like()))
        .collect();
    for ratio in [0.5, 0.1, 0.3333] {
        let m = mask_from_scores(&t.model, &flat, ratio).unwrap();
        let (kept, _) = mask_count(&m).unwrap();
        assert!(
            (kept as f64 - ratio * n as f64).abs() <= 1.0,
            "{ratio}: {kept}"
        );
    }
    // A block of clear winners, then a tie across the threshold.
    let mut left = (n as f64 * 0.2) as i64;
    let two_level: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(k, p)| {
            let s = p.ones_like().flatten(0, -1);
            let top = left.min(s.numel() as i64);
            let _ = s.narrow(0, 0, top).fill_(2.0);
            left -= top;
            (k.clone(), s.reshape(p.size()))
        })
        .collect();
    let m = mask_from_scores(&t.model, &two_level, 0.5).unwrap();
    let (kept, _) = mask_count(&m).unwrap();
    assert!((kept as f64 - 0.5 * n as f64).abs() <= 1.0, "{kept}");
    let sv = mask_vec(&two_level);
    for (k, mv) in mask_vec(&m) {
        for (mi, si) in mv.iter().zip(&sv[&k]) {
            if *si == 2.0 {
                assert_eq!(*mi, 1.0, "a top entry of {k} was dropped");
            }
        }
    }
    // Bad inputs.
    assert!(mask_from_scores(&t.model, &BTreeMap::new(), 0.5).is_err());
    assert!(mask_from_scores(&t.model, &flat, 0.0).is_err());
}

#[test]
fn salun_leaves_unmasked_weights_bit_for_bit_unchanged() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, class0());
    for ratio in [0.5, 0.1] {
        let cfg = SalunConfig {
            mask_ratio: ratio,
            run: RunConfig {
                batch_size: 16,
                momentum: 0.9,
                weight_decay: 5e-4,
                ..RunConfig::new(3, 0.01)
            },
            ..Default::default()
        };
        let masks = mask_vec(&saliency_mask(&t.model, &d.forget, 16, ratio).unwrap());
        let before = param_bits(&t.model);
        let (_, _, report, after) = unlearn(&t, &d, &cfg.build().unwrap(), 3);
        let after = param_bits(&after);
        let density = report.extra["mask_density"].as_f64().unwrap();
        assert!((density - ratio).abs() <= 1.0 / t.model.num_params() as f64 + 1e-12);
        let (mut frozen, mut moved, mut free) = (0u64, 0u64, 0u64);
        for (name, m) in &masks {
            for ((mi, b), a) in m.iter().zip(&before[name]).zip(&after[name]) {
                if *mi == 0.0 {
                    assert_eq!(a, b, "{name}: a frozen entry moved (ratio {ratio})");
                    frozen += 1;
                } else {
                    free += 1;
                    moved += (a != b) as u64;
                }
            }
        }
        assert!(frozen > 0 && free > 0);
        assert!(
            moved * 2 > free,
            "ratio {ratio}: only {moved} of {free} free entries moved"
        );
    }
}

#[test]
fn scrub_and_neggrad_plus_step_counts() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, class0());
    let (nf, nr) = (d.forget.len(), d.retain.len());
    let (_, _, r, _) = unlearn(&t, &d, &scrub().build().unwrap(), 1);
    assert_eq!(r.steps as usize, 2 * nf.div_ceil(16) + 3 * nr.div_ceil(16));
    let no_max = ScrubConfig {
        msteps: 0,
        ..scrub()
    };
    let (_, _, r, _) = unlearn(&t, &d, &no_max.build().unwrap(), 1);
    assert_eq!(r.steps as usize, 3 * nr.div_ceil(16));
    let (_, _, r, _) = unlearn(&t, &d, &neggrad_plus().build().unwrap(), 1);
    assert_eq!(r.steps as usize, 3 * nr.div_ceil(16));
}

#[test]
fn distillation_divergence() {
    use rustworthy_unlearn::methods::common::distill_kl;
    let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5]).view([2, 3]);
    let b = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 0.0, 1.0, 0.5]).view([2, 3]);
    assert!(distill_kl(&a, &a, 4.0).double_value(&[]).abs() < 1e-6);
    let kl = distill_kl(&a, &b, 2.0).double_value(&[]);
    // By hand: T^2 * mean over rows of sum p_t (log p_t - log p_s).
    let (sa, sb) = (
        (&a / 2.0).softmax(-1, Kind::Double),
        (&b / 2.0).softmax(-1, Kind::Double),
    );
    let want = (&sb * (sb.log() - sa.log()))
        .sum(Kind::Double)
        .double_value(&[])
        * 4.0
        / 2.0;
    assert!((kl - want).abs() < 1e-5, "{kl} vs {want}");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, class0());
    let cfg = GaConfig {
        run: run(20, 1e6, 16),
    };
    let original = recipe();
    let ctx = UnlearnCtx {
        data: &d,
        seed: 1,
        progress: ProgressMode::Quiet,
        original: &original,
        masks: None,
        dist: None,
    };
    let mut m = copy_of(&t.model);
    let e = cfg.build().unwrap().unlearn(&mut m, &ctx).unwrap_err();
    assert!(matches!(e, rustworthy_core::Error::Numerical(_)), "{e}");
    let e = e.to_string();
    assert!(e.contains("ga") && e.contains("loss became"), "{e}");
}

fn err_of<T>(r: rustworthy_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected a config error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn configs_reject_bad_values_by_field_name() {
    for r in [0.0, 1.5, -0.1, f64::NAN] {
        let e = err_of(salun(r).build());
        assert!(e.contains("salun.mask_ratio"), "{r}: {e}");
    }
    let e = err_of(
        GaConfig {
            run: RunConfig::new(5, f64::NAN),
        }
        .build(),
    );
    assert!(e.contains("ga.lr"), "{e}");
    let e = err_of(
        RlConfig {
            run: RunConfig::new(0, 0.01),
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("rl.epochs"), "{e}");
    let e = err_of(
        SalunConfig {
            run: RunConfig::new(3, -1.0),
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("salun.lr"), "{e}");
    let e = err_of(
        SalunConfig {
            saliency_batch_size: Some(0),
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("salun.saliency_batch_size"), "{e}");
    for t in [0.0, -1.0, f64::INFINITY] {
        let e = err_of(
            ScrubConfig {
                temperature: t,
                ..Default::default()
            }
            .build(),
        );
        assert!(e.contains("scrub.temperature"), "{t}: {e}");
    }
    let e = err_of(
        ScrubConfig {
            msteps: 4,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("scrub.msteps"), "{e}");
    let e = err_of(
        ScrubConfig {
            alpha: 0.0,
            gamma: 0.0,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("scrub."), "{e}");
    let e = err_of(
        ScrubConfig {
            alpha: -1.0,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("scrub.alpha"), "{e}");
    let e = err_of(
        NegGradPlusConfig {
            beta: 1.5,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("neggrad-plus.beta"), "{e}");
    let e = err_of(
        NegGradPlusConfig {
            forget_batch_size: 0,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("neggrad-plus.forget_batch_size"), "{e}");
    let e = err_of(
        NegGradPlusConfig {
            momentum: 1.0,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("neggrad-plus.momentum"), "{e}");
    let e = err_of(
        L1SparseConfig {
            alpha: -1e-4,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("l1-sparse.alpha"), "{e}");
    let e = err_of(
        L1SparseConfig {
            no_l1_epochs: 10,
            ..Default::default()
        }
        .build(),
    );
    assert!(e.contains("l1-sparse.no_l1_epochs"), "{e}");
}

#[test]
fn reference_defaults() {
    let g = GaConfig::default();
    assert_eq!((g.run.epochs, g.run.lr), (5, 1e-4));
    let r = RlConfig::default();
    assert_eq!((r.run.epochs, r.run.lr, r.run.batch_size), (10, 0.013, 256));
    assert!(!r.exclude_true_label && r.relabel_each_epoch && r.forget_first);
    let s = SalunConfig::default();
    assert_eq!(s.mask_ratio, 0.5);
    assert_eq!(s.rl(), r);
    let l = L1SparseConfig::default();
    assert_eq!((l.run.epochs, l.run.lr, l.alpha), (10, 0.01, 5e-4));
    let n = NegGradPlusConfig::default();
    assert_eq!((n.epochs, n.lr, n.beta, n.momentum), (10, 0.01, 0.95, 0.0));
    let c = ScrubConfig::default();
    assert_eq!((c.run.epochs, c.run.lr, c.msteps), (3, 5e-4, 2));
    assert_eq!((c.temperature, c.alpha, c.gamma), (4.0, 0.001, 0.99));
    for v in [0.9, 5e-4] {
        assert!(c.run.momentum == v || c.run.weight_decay == v);
    }
    g.build().unwrap();
    r.build().unwrap();
    s.build().unwrap();
    l.build().unwrap();
    n.build().unwrap();
    c.build().unwrap();
}

/// Serialised defaults read back equal; an unknown key is rejected, also behind nested
/// flattening (SalUn embeds RL which embeds the run recipe).
fn check_keys<T>(default: T, partial: serde_json::Value)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v = serde_json::to_value(&default).unwrap();
    assert_eq!(serde_json::from_value::<T>(v.clone()).unwrap(), default);
    let mut bad = v.clone();
    bad.as_object_mut()
        .unwrap()
        .insert("bogus_key".into(), serde_json::json!(1));
    let e = serde_json::from_value::<T>(bad).unwrap_err().to_string();
    assert!(e.contains("bogus_key"), "{e}");
    let mut bad = partial.clone();
    bad.as_object_mut()
        .unwrap()
        .insert("lr_typo".into(), serde_json::json!(1));
    assert!(serde_json::from_value::<T>(bad).is_err());
    serde_json::from_value::<T>(partial).unwrap();
}

#[test]
fn unknown_keys_are_rejected() {
    let recipe = serde_json::json!({"epochs": 2, "lr": 0.01});
    check_keys(GaConfig::default(), recipe.clone());
    check_keys(RlConfig::default(), recipe.clone());
    check_keys(SalunConfig::default(), recipe.clone());
    check_keys(L1SparseConfig::default(), recipe.clone());
    check_keys(ScrubConfig::default(), recipe.clone());
    check_keys(NegGradPlusConfig::default(), serde_json::json!({}));
    // A partial SalUn config keeps the method's defaults.
    let s: SalunConfig =
        serde_json::from_value(serde_json::json!({"epochs": 10, "lr": 0.013})).unwrap();
    assert_eq!(s, SalunConfig::default());
    let n: NegGradPlusConfig = serde_json::from_value(serde_json::json!({"beta": 0.9})).unwrap();
    assert_eq!(
        n,
        NegGradPlusConfig {
            beta: 0.9,
            ..Default::default()
        }
    );
}

/// The first-order methods' step loops never make the host wait for the device: the number of
/// synchronizing operators (counted on the CPU) does not depend on the number of steps.
#[test]
fn step_loops_do_not_synchronize() {
    let _torch = torch_lock();
    let t = task();
    let d = data(&t, random20());
    let methods = |bs: usize| -> Vec<(&'static str, Box<dyn Unlearner>)> {
        vec![
            (
                "ga",
                Box::new(
                    GaConfig {
                        run: run(1, 0.01, bs),
                    }
                    .build()
                    .unwrap(),
                ),
            ),
            (
                "rl",
                Box::new(
                    RlConfig {
                        run: run(1, 0.01, bs),
                        ..Default::default()
                    }
                    .build()
                    .unwrap(),
                ),
            ),
            (
                "l1-sparse",
                Box::new(
                    L1SparseConfig {
                        run: run(1, 0.01, bs),
                        ..Default::default()
                    }
                    .build()
                    .unwrap(),
                ),
            ),
            (
                "scrub",
                Box::new(
                    ScrubConfig {
                        run: run(2, 0.01, bs),
                        forget_batch_size: bs,
                        ..Default::default()
                    }
                    .build()
                    .unwrap(),
                ),
            ),
        ]
    };
    for (k, ((name, few), (_, many))) in methods(64).into_iter().zip(methods(4)).enumerate() {
        let count = |m: &dyn Unlearner| {
            let w = rustworthy_accel::SyncWatch::start();
            let _ = unlearn(&t, &d, m, k as u64);
            w.stop()
        };
        let (a, b) = (count(few.as_ref()), count(many.as_ref()));
        assert_eq!(
            a, b,
            "{name}: {a} synchronizations in few steps, {b} in many"
        );
    }
}
