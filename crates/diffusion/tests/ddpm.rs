//! Training, checkpoints, masks, erasure, the attack's pieces and bad input, on tiny models and
//! synthetic data; the metric sanity checks on real Fashion-MNIST.

use rustworthy_data::synthetic::synthetic;
use rustworthy_data::Dataset;
use rustworthy_diffusion::attack::{project_simplex, wilson};
use rustworthy_diffusion::io::{at_resolution, class_subset, load_unet, save_unet};
use rustworthy_diffusion::metrics::{frechet_distance, sanity};
use rustworthy_diffusion::train::{train_ddpm, DdpmTrainConfig};
use rustworthy_diffusion::unet::{CondUNet, UNetConfig};
use rustworthy_diffusion::unlearn::{
    erase, is_class_pathway, load_mask, mask_density, saliency_mask, save_mask, EraseConfig,
    EraseMethod,
};
use rustworthy_testkit::{fashion_mnist_present, tensor_bits, torch_lock};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

mod common;
use common::{model, tiny};

fn data() -> Dataset {
    synthetic(4, 24, 1, 8, 0.2, 5)
}

fn recipe(steps: u64) -> DdpmTrainConfig {
    DdpmTrainConfig {
        steps,
        batch_size: 16,
        lr: 1e-3,
        ema_rate: 0.9,
        checkpoint_every: 3,
        seed: 4,
        ..Default::default()
    }
}

fn bits(m: &CondUNet) -> BTreeMap<String, Vec<u32>> {
    tensor_bits(m.named_parameters())
}

/// No scalar read-back per training step: the loss and gradient-norm sums are read once per loss
/// point, so 3 steps and 9 steps with one point each count the same synchronizing operators
/// (`.item()` and the like, counted on the CPU, where libtorch dispatches the same operators).
/// The same for class erasure (its loss sums are read per log point too). What this count
/// cannot see: copies to the host. The U-Net's label range check still copies its two ends to
/// the host once per forward pass (a D2H copy on a GPU).
#[test]
fn training_steps_do_not_wait_for_the_host() {
    let _t = torch_lock();
    let d = data();
    let mut counts = Vec::new();
    for steps in [3, 9] {
        let (mut m, mut e) = (model(1), model(2));
        let cfg = DdpmTrainConfig {
            checkpoint_every: 0,
            ..recipe(steps)
        };
        let w = rustworthy_accel::SyncWatch::start();
        let o = train_ddpm(&mut m, &mut e, &d, &cfg, None, 1000, |_| {}).unwrap();
        counts.push(w.stop());
        assert_eq!(o.history.len(), 1);
    }
    assert_eq!(counts[0], counts[1], "{counts:?}");
    // The same for class erasure (RL with its retain term, and ESD-u).
    let (mut m, mut e) = (model(1), model(2));
    train_ddpm(&mut m, &mut e, &d, &recipe(4), None, 4, |_| {}).unwrap();
    let forget = class_subset(&d, 2, false).unwrap();
    let retain = class_subset(&d, 2, true).unwrap();
    for method in [EraseMethod::Rl, EraseMethod::EsdU] {
        let mut counts = Vec::new();
        for steps in [3, 9] {
            let cfg = EraseConfig {
                forget_class: 2,
                steps,
                batch_size: 8,
                lr: 1e-3,
                ..Default::default()
            };
            let mut s = model(5);
            s.copy_from(&m).unwrap();
            let w = rustworthy_accel::SyncWatch::start();
            let o = erase(&mut s, method, &forget, &retain, None, &cfg, 1000).unwrap();
            counts.push(w.stop());
            assert_eq!(o.history.len(), 1);
        }
        assert_eq!(counts[0], counts[1], "{}: {counts:?}", method.name());
    }
}

#[test]
fn training_learns_and_resumes_bit_exactly() {
    let _t = torch_lock();
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    // Uninterrupted: 6 steps.
    let (mut a, mut ea) = (model(1), model(2));
    let o = train_ddpm(
        &mut a,
        &mut ea,
        &d,
        &recipe(6),
        Some(&dir.path().join("a")),
        1,
        |_| {},
    )
    .unwrap();
    assert_eq!(o.history.len(), 6);
    // Interrupted after 3 steps (a checkpoint), then resumed in fresh models to 6.
    let (mut b, mut eb) = (model(1), model(2));
    train_ddpm(
        &mut b,
        &mut eb,
        &d,
        &recipe(3),
        Some(&dir.path().join("b")),
        1,
        |_| {},
    )
    .unwrap();
    let (mut c, mut ec) = (model(9), model(9));
    let o2 = train_ddpm(
        &mut c,
        &mut ec,
        &d,
        &recipe(6),
        Some(&dir.path().join("b")),
        1,
        |_| {},
    )
    .unwrap();
    assert_eq!(o2.resumed_from, 3);
    assert_eq!(
        o2.history.len(),
        6,
        "a resumed run reports the whole history"
    );
    // A checkpoint is not resumed under another recipe, nor past its length.
    let (mut d1, mut d2) = (model(1), model(2));
    let other = DdpmTrainConfig {
        lr: 5e-4,
        ..recipe(6)
    };
    let err = train_ddpm(
        &mut d1,
        &mut d2,
        &d,
        &other,
        Some(&dir.path().join("b")),
        1,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("another model, recipe"), "{err}");
    let err = train_ddpm(
        &mut d1,
        &mut d2,
        &d,
        &recipe(2),
        Some(&dir.path().join("b")),
        1,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("past the 2 steps"), "{err}");
    assert_eq!(
        bits(&a),
        bits(&c),
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(
        bits(&ea),
        bits(&ec),
        "resumed EMA differs from the uninterrupted run"
    );
    // Longer training lowers the loss.
    let (mut m, mut e) = (model(1), model(2));
    let long = train_ddpm(&mut m, &mut e, &d, &recipe(60), None, 20, |_| {}).unwrap();
    let first = long.history.first().unwrap().loss;
    let last = long.history.last().unwrap().loss;
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
}

#[test]
fn saved_models_read_back_and_bad_input_is_refused() {
    let _t = torch_lock();
    let m = model(3);
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &m).unwrap();
    let back = load_unet(dir.path(), Device::Cpu).unwrap();
    assert_eq!(bits(&m), bits(&back));
    // A class out of range.
    let x = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let err = m
        .forward(&x, &t, &Tensor::from_slice(&[0i64, 4]), None, false)
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    // Wrong image size.
    let err = m
        .forward(
            &Tensor::zeros([2, 1, 9, 9], (Kind::Float, Device::Cpu)),
            &t,
            &Tensor::from_slice(&[0i64, 1]),
            None,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("U-Net input"), "{err}");
    // An odd side that cannot be halved.
    let err = CondUNet::new(
        &UNetConfig {
            resolution: 7,
            ..tiny()
        },
        Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("halved"), "{err}");
    // Weights of another model.
    let other = CondUNet::new(&UNetConfig { ch: 12, ..tiny() }, Device::Cpu).unwrap();
    let odir = tempfile::tempdir().unwrap();
    save_unet(odir.path(), &other).unwrap();
    std::fs::copy(dir.path().join("unet.json"), odir.path().join("unet.json")).unwrap();
    let err = load_unet(odir.path(), Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    // NaN weights make training stop with a clear error.
    let (mut n, mut e) = (model(1), model(2));
    tch::no_grad(|| {
        let _ = n.vs.variables()["conv_out.bias"]
            .shallow_clone()
            .fill_(f64::NAN);
    });
    let err = train_ddpm(&mut n, &mut e, &data(), &recipe(2), None, 1, |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("not finite") || err.to_string().contains("NaN"),
        "{err}"
    );
    // A nonsensical image count.
    let err = rustworthy_diffusion::sample::generate(
        &m,
        &rustworthy_diffusion::sample::Sampler::Ddpm { steps: 2 },
        &[0],
        -1,
        2.0,
        8,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("per_class"), "{err}");
    // Out-of-range settings.
    let err = EraseConfig {
        forget_class: 7,
        ..Default::default()
    }
    .validate(4)
    .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = DdpmTrainConfig {
        cond_drop: 1.5,
        ..recipe(2)
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("cond_drop"), "{err}");
}

#[test]
fn saliency_mask_has_exact_sparsity_and_erasure_moves_only_what_it_may() {
    let _t = torch_lock();
    let d = data();
    let (mut m, mut e) = (model(1), model(2));
    train_ddpm(&mut m, &mut e, &d, &recipe(10), None, 10, |_| {}).unwrap();
    let cfg = EraseConfig {
        forget_class: 2,
        steps: 4,
        batch_size: 8,
        lr: 1e-3,
        ..Default::default()
    };
    let forget = class_subset(&d, 2, false).unwrap();
    let retain = class_subset(&d, 2, true).unwrap();
    let mask = saliency_mask(&m, &forget, &cfg).unwrap();
    let total: i64 = m
        .named_parameters()
        .iter()
        .map(|(_, p)| p.numel() as i64)
        .sum();
    let on: f64 = mask
        .values()
        .map(|t| t.sum(Kind::Double).double_value(&[]))
        .sum();
    assert_eq!(
        on as i64,
        (total as f64 * 0.5).floor() as i64,
        "mask must free exactly half"
    );
    assert!((mask_density(&mask) - 0.5).abs() < 1e-3);
    // Saved and read back; refused for another model.
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mask.safetensors");
    save_mask(&mp, &mask).unwrap();
    let back = load_mask(&mp, &m).unwrap();
    assert_eq!(back.len(), mask.len());
    let other = CondUNet::new(&UNetConfig { ch: 12, ..tiny() }, Device::Cpu).unwrap();
    let err = load_mask(&mp, &other).unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
    // SalUn-RL: masked-out entries stay bit-identical, the others move.
    let before: BTreeMap<String, Tensor> = m.state();
    let mut s = model(5);
    s.copy_from(&m).unwrap();
    erase(
        &mut s,
        EraseMethod::SalunRl,
        &forget,
        &retain,
        Some(&back),
        &cfg,
        2,
    )
    .unwrap();
    let mut moved = 0i64;
    for (name, p) in s.named_parameters() {
        let fixed = back[&name].eq(0.0);
        let same = p.eq_tensor(&before[&name]);
        assert!(
            same.logical_or(&fixed.logical_not()).all().int64_value(&[]) == 1,
            "{name}: a masked entry moved"
        );
        moved += p
            .ne_tensor(&before[&name])
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    assert!(moved > 0, "SalUn-RL changed nothing");
    // ESD-x moves only the class pathway; ESD-u only the rest.
    for (method, pathway) in [(EraseMethod::EsdX, true), (EraseMethod::EsdU, false)] {
        let mut s = model(5);
        s.copy_from(&m).unwrap();
        let o = erase(&mut s, method, &forget, &retain, None, &cfg, 2).unwrap();
        assert!(o.trainable_share > 0.0 && o.trainable_share < 1.0);
        let mut changed = false;
        for (name, p) in s.named_parameters() {
            let same = p.equal(&before[&name]);
            if is_class_pathway(&name) != pathway {
                assert!(same, "{}: {name} moved", method.name());
            } else {
                changed |= !same;
            }
        }
        assert!(changed, "{} changed nothing", method.name());
    }
    // GA raises the forget class's denoising loss (the loss it ascends).
    let mut g = model(5);
    g.copy_from(&m).unwrap();
    let o = erase(
        &mut g,
        EraseMethod::Ga,
        &forget,
        &retain,
        None,
        &EraseConfig {
            steps: 8,
            ..cfg.clone()
        },
        1,
    )
    .unwrap();
    assert!(
        o.history.last().unwrap().forget_loss < o.history[0].forget_loss,
        "GA's negated loss must fall"
    );
    // Method/mask mismatches and a wrong forget set are refused.
    let mut s = model(5);
    assert!(erase(
        &mut s,
        EraseMethod::SalunRl,
        &forget,
        &retain,
        None,
        &cfg,
        1
    )
    .is_err());
    assert!(erase(
        &mut s,
        EraseMethod::Rl,
        &forget,
        &retain,
        Some(&back),
        &cfg,
        1
    )
    .is_err());
    let err = erase(&mut s, EraseMethod::Rl, &retain, &forget, None, &cfg, 1).unwrap_err();
    assert!(err.to_string().contains("classes other than"), "{err}");
}

#[test]
fn simplex_projection_and_wilson_interval() {
    let u = Tensor::from_slice(&[
        0.9f32, 0.8, -0.3, 0.1, 5.0, 0.0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25,
    ])
    .view([3, 4]);
    let p = project_simplex(&u);
    let sums = p.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert!(p.min().double_value(&[]) >= 0.0 && p.max().double_value(&[]) <= 1.0);
    // A row already on the simplex stays; the projection is idempotent.
    assert!((p.get(2) - u.get(2)).abs().max().double_value(&[]) < 1e-6);
    assert!((project_simplex(&p) - &p).abs().max().double_value(&[]) < 1e-6);
    // [0.9, 0.8, -0.3, 0.1] projects to [0.55, 0.45, 0, 0].
    let want = Tensor::from_slice(&[0.55f32, 0.45, 0.0, 0.0]);
    assert!((p.get(0) - want).abs().max().double_value(&[]) < 1e-5);
    let (lo, hi) = wilson(5, 10);
    assert!(
        (lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3,
        "{lo} {hi}"
    );
    assert_eq!(wilson(0, 10).0, 0.0);
}

#[test]
fn metric_sanity_on_real_fashion_mnist() {
    let _t = torch_lock();
    if !fashion_mnist_present() {
        return;
    }
    let (train, test) = rustworthy_data::load_dataset("fashion-mnist", None).unwrap();
    let idx: Vec<usize> = (0..6000).collect();
    let train = at_resolution(&train.subset(&idx).unwrap(), 14).unwrap();
    let test = at_resolution(&test, 14).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (judge, acc) = rustworthy_diffusion::bench::judge_classifier(
        dir.path(),
        rustworthy_models::Arch::Mlp,
        &train,
        &test,
        2,
        0,
        Device::Cpu,
    )
    .unwrap();
    assert!(acc > 60.0, "judge accuracy {acc}");
    let real = test.images.narrow(0, 0, 2000);
    let rows = sanity(&judge, &real, 0).unwrap();
    let fd = |name: &str| rows.iter().find(|r| r.degradation == name).unwrap().fd;
    let kid = |name: &str| rows.iter().find(|r| r.degradation == name).unwrap().kid;
    let blur = [fd("none"), fd("blur 0.5"), fd("blur 1"), fd("blur 2")];
    let noise = [
        fd("none"),
        fd("noise 0.1"),
        fd("noise 0.2"),
        fd("noise 0.4"),
    ];
    for s in [blur, noise] {
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "FD must rise with the degradation: {s:?}"
        );
    }
    let kids = [kid("none"), kid("blur 1"), kid("blur 2")];
    assert!(
        kids.windows(2).all(|w| w[0] < w[1]),
        "KID must rise with blur: {kids:?}"
    );
    // Real against real is near zero next to the mildest degradation.
    assert!(fd("none") < 0.2 * fd("blur 1"), "{rows:?}");
    // The same set against itself is zero, up to round-off relative to the covariance's size:
    // eigenvalues near zero come out of `eigh` with an absolute error of about eps times the
    // largest one, and their square roots amplify it (-3.8e-7 here against a trace of 256; it
    // depends on the LAPACK path). A wrong term would be off by about the trace itself.
    let f = rustworthy_diffusion::metrics::features(&judge, &real, 500).unwrap();
    let self_fd = frechet_distance(&f, &f).unwrap();
    let scale = rustworthy_diffusion::metrics::mean_cov(&f)
        .1
        .trace()
        .double_value(&[]);
    eprintln!("FD of a set with itself: {self_fd:.3e} (trace of its covariance {scale:.3e})");
    assert!(self_fd.abs() < 1e-6 * scale, "{self_fd} (trace {scale})");
}
