//! Execution settings of training: the step loop keeps to the device (no host synchronization
//! per step), and the fused optimizer kernels, bf16 autocast and channels-last layout give the
//! result of the default path within their rounding.

use rustworthy_accel::{is_channels_last, SyncWatch};
use rustworthy_data::augment::Augment;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Exec, Model, Precision};
use rustworthy_testkit::{quiet, seeded_model, sgd_recipe, synthetic_split, tiny_spec, torch_lock};
use rustworthy_train::optim::OptimImpl;
use rustworthy_train::{evaluate, fit, OptimConfig, TrainConfig};
use tch::Kind;

fn data() -> (Dataset, Dataset) {
    synthetic_split(60, 16, 0.35, 3, 200)
}

/// The testkit's SGD recipe with Nesterov momentum and a 1-pixel random crop.
fn cfg(epochs: usize, batch_size: usize) -> TrainConfig {
    let mut c = sgd_recipe(epochs, batch_size, 0.05, 5);
    c.optim = OptimConfig::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 5e-4,
    };
    c.augment = Augment {
        crop_padding: 1,
        hflip: false,
    };
    c
}

fn lenet() -> Model {
    seeded_model(tiny_spec(Arch::Lenet, 16), 1)
}

/// Largest absolute parameter difference relative to the largest parameter magnitude.
fn rel_diff(a: &Model, b: &Model) -> f64 {
    let mut worst: f64 = 0.0;
    for ((na, ta), (nb, tb)) in a.parameters().iter().zip(b.parameters().iter()) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        let s = ta.abs().max().double_value(&[]).max(1e-6);
        worst = worst.max(d / s);
    }
    worst
}

#[test]
fn the_step_loop_never_synchronizes_with_the_device() {
    let _torch = torch_lock();
    let (train, _) = data();
    // The same epoch in 25 steps and in 4: the number of synchronizing operators must not
    // depend on the number of steps (they are the per-epoch reads only).
    let mut counts = Vec::new();
    for bs in [8usize, 50] {
        for optim in [
            cfg(1, bs).optim,
            OptimConfig::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        ] {
            let mut c = cfg(1, bs);
            // libtorch's CPU fused Adam reads its step count on the host (its CUDA kernel
            // reads it on the device): run Adam through the loop here.
            c.optim_impl = if matches!(optim, OptimConfig::Sgd { .. }) {
                OptimImpl::Fused
            } else {
                OptimImpl::Loop
            };
            c.optim = optim;
            let mut m = lenet();
            let w = SyncWatch::start();
            fit(&mut m, &train, None, &c, &quiet()).unwrap();
            counts.push(w.stop());
        }
    }
    assert_eq!(counts[0], counts[2], "{counts:?}");
    assert_eq!(counts[1], counts[3], "{counts:?}");
    assert!(counts[0] <= 4, "{counts:?}");
}

#[test]
fn fused_optimizer_training_equals_the_loop() {
    let _torch = torch_lock();
    let (train, _) = data();
    for optim in [
        cfg(1, 20).optim,
        OptimConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        },
    ] {
        // SGD over two epochs (20 steps); Adam over two steps: libtorch's fused Adam computes
        // its bias corrections in float32 (1 - 0.999 in float32 is 1.3e-5 off), a difference
        // that training then amplifies like any rounding.
        let adam = matches!(optim, OptimConfig::Adam { .. });
        let (epochs, bs, tol) = if adam { (1, 100, 1e-4) } else { (2, 20, 1e-5) };
        let mut runs = Vec::new();
        for imp in [OptimImpl::Loop, OptimImpl::Fused] {
            let mut c = cfg(epochs, bs);
            c.optim = optim.clone();
            c.optim_impl = imp;
            let mut m = lenet();
            fit(&mut m, &train, None, &c, &quiet()).unwrap();
            runs.push(m);
        }
        let d = rel_diff(&runs[0], &runs[1]);
        assert!(d < tol, "{optim:?}: {d}");
    }
}

#[test]
fn bf16_autocast_trains_like_fp32_and_is_restored() {
    let _torch = torch_lock();
    let (train, test) = data();
    let mut runs = Vec::new();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let mut c = cfg(6, 20);
        c.augment = Augment::default();
        c.precision = precision;
        let mut m = lenet();
        fit(&mut m, &train, None, &c, &quiet()).unwrap();
        assert_eq!(
            m.exec(),
            Exec::default(),
            "fit restores the model's settings"
        );
        runs.push((evaluate(&m, &test, 100).unwrap().accuracy, m));
    }
    let (acc32, m32) = &runs[0];
    let (acc16, m16) = &runs[1];
    // bf16 rounding moves the weights (autocast was on) but not the outcome.
    let d = rel_diff(m32, m16);
    assert!(
        d > 1e-6,
        "bf16 training equals fp32 bit for bit: autocast was off"
    );
    assert!(*acc32 > 60.0, "fp32 {acc32}");
    assert!(
        (acc32 - acc16).abs() <= 10.0,
        "fp32 {acc32} vs bf16 {acc16}"
    );
    // Under autocast the logits still come back float32, within bf16 rounding of fp32.
    let mut m = lenet();
    let x = test.images.narrow(0, 0, 32);
    let want = m.forward_t(&x, false);
    m.set_exec(Exec {
        precision: Precision::Bf16,
        channels_last: false,
    })
    .unwrap();
    let got = m.forward_t(&x, false);
    assert_eq!(got.kind(), Kind::Float);
    let err = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(err > 0.0 && err < 0.05 * scale, "{err} vs {scale}");
}

#[test]
fn channels_last_training_equals_the_default_layout() {
    let _torch = torch_lock();
    let (train, _) = data();
    let mut c = cfg(1, 20);
    let mut a = lenet();
    fit(&mut a, &train, None, &c, &quiet()).unwrap();
    c.channels_last = true;
    let mut b = lenet();
    fit(&mut b, &train, None, &c, &quiet()).unwrap();
    let conv = b
        .parameters()
        .into_iter()
        .find(|(_, t)| t.dim() == 4)
        .unwrap()
        .1;
    assert!(is_channels_last(&conv), "conv weights are NHWC");
    let d = rel_diff(&a, &b);
    assert!(d < 1e-4, "{d}");
}
