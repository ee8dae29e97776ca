//! DeepZero: the batched, feature-reusing CGE equals the one-coordinate-at-a-time loop and the
//! true gradient, counts its queries exactly, and trains a network without backpropagation.

use rustworthy_models::{Arch, Model};
use rustworthy_testkit::{quiet, synthetic_split, tiny_spec, torch_lock};
use rustworthy_train::schedule::{LrSchedule, ScheduleConfig};
use rustworthy_train::{evaluate, fit_with, OptimConfig, TrainConfig};
use rustworthy_zo::{zo_grasp_densities, DeepZeroStep, ZoNet, ZoTrainConfig};
use tch::{Device, Kind, Tensor};

/// A random subset (about `frac`) of every slot's coordinates.
fn some_coords(net: &ZoNet, frac: f64, seed: i64) -> Vec<Option<Tensor>> {
    tch::manual_seed(seed);
    net.slots
        .iter()
        .map(|s| {
            let keep = Tensor::rand([s.numel], (Kind::Float, Device::Cpu)).lt(frac);
            let idx = keep.nonzero().squeeze_dim(1);
            (idx.numel() > 0).then_some(idx)
        })
        .collect()
}

fn autograd(model: &Model, net: &ZoNet, x: &Tensor, y: &Tensor) -> Vec<Tensor> {
    let logits = net_forward_grad(model, x);
    let loss = logits.cross_entropy_for_logits(y);
    let params: std::collections::BTreeMap<String, Tensor> =
        model.parameters().into_iter().collect();
    let ts: Vec<&Tensor> = net.slots.iter().map(|s| &params[&s.name]).collect();
    Tensor::run_backward(&[loss], &ts, false, false)
        .into_iter()
        .map(|g| g.view([-1]))
        .collect()
}

fn net_forward_grad(model: &Model, x: &Tensor) -> Tensor {
    model.forward_t(x, true)
}

fn check_arch(arch: Arch, size: i64, tol_naive: f64) {
    let _torch = torch_lock();
    tch::manual_seed(3);
    let model = Model::new(tiny_spec(arch, size), Device::Cpu).unwrap();
    let net = ZoNet::new(&model).unwrap();
    let x = Tensor::rand([6, 1, size, size], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1]);
    let frac = if arch == Arch::Resnet20 { 0.004 } else { 0.1 };
    let coords = some_coords(&net, frac, 4);
    let mu = 1e-2;
    let (loss, _, fast, q) = net.cge(&x, &y, &coords, mu, true);
    let slow = net.cge_naive(&x, &y, &coords, mu, true);
    // Stacked copies (the GPU path) and one copy per chunk give the same estimates.
    let mut stacked = ZoNet::new(&model).unwrap();
    stacked.stack_on_host = true;
    let (_, _, fast2, _) = stacked.cge(&x, &y, &coords, mu, true);
    for (a, b) in fast.iter().zip(&fast2) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(
            d <= 1e-2 * tol_naive,
            "{arch}: stacked and single copies differ by {d}"
        );
    }
    let want_q = 1 + coords
        .iter()
        .flatten()
        .map(|c| c.numel() as u64)
        .sum::<u64>();
    assert_eq!(q, want_q, "one query per coordinate plus the base point");
    let full = |v: &[Tensor]| Tensor::cat(v, 0);
    let (f, s) = (full(&fast), full(&slow));
    let err = (&f - &s).abs().max().double_value(&[]);
    let scale = s.abs().max().double_value(&[]);
    assert!(
        err <= tol_naive * scale.max(1e-3),
        "{arch}: batched CGE differs from the per-coordinate loop by {err} (scale {scale})"
    );
    // Coordinates outside the set stay zero.
    for (g, c) in fast.iter().zip(&coords) {
        let mut m = Tensor::ones([g.numel() as i64], (Kind::Bool, Device::Cpu));
        if let Some(c) = c {
            m = m.index_fill(0, c, 0);
        }
        assert_eq!(
            g.masked_select(&m)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
    }
    // Against backpropagation on the same coordinates: the forward difference is within O(mu).
    let ag = autograd(&model, &net, &x, &y);
    let sel = |v: &[Tensor]| {
        Tensor::cat(
            &v.iter()
                .zip(&coords)
                .filter_map(|(g, c)| c.as_ref().map(|c| g.index_select(0, c)))
                .collect::<Vec<_>>(),
            0,
        )
    };
    let (a, b) = (sel(&fast), sel(&ag));
    let cos = (&a * &b).sum(Kind::Double).double_value(&[])
        / (a.norm().double_value(&[]) * b.norm().double_value(&[]));
    assert!(cos > 0.99, "{arch}: cosine to the true gradient {cos}");
    assert!(loss.double_value(&[]).is_finite());
}

#[test]
fn batched_cge_matches_the_coordinate_loop_and_the_gradient_lenet() {
    check_arch(Arch::Lenet, 16, 2e-2);
}

#[test]
fn batched_cge_matches_the_coordinate_loop_and_the_gradient_resnet20() {
    check_arch(Arch::Resnet20, 8, 2e-2);
}

#[test]
fn batched_cge_matches_the_coordinate_loop_and_the_gradient_mlp() {
    check_arch(Arch::Mlp, 8, 2e-2);
}

#[test]
fn zo_grasp_densities_meet_the_sparsity() {
    let _torch = torch_lock();
    tch::manual_seed(1);
    let model = Model::new(tiny_spec(Arch::Lenet, 16), Device::Cpu).unwrap();
    let net = ZoNet::new(&model).unwrap();
    let x = Tensor::rand([32, 1, 16, 16], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(4, [32], (Kind::Int64, Device::Cpu));
    let before: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .map(|(_, t)| t.copy())
        .collect();
    let (d, q) = zo_grasp_densities(&net, &x, &y, 0.9, 8, 0).unwrap();
    assert_eq!(q, 2 * 9, "two forward RGEs of 8 directions");
    let mut kept = 0.0;
    let mut total = 0.0;
    for s in net.slots.iter().filter(|s| !s.bias) {
        let v = d[&s.name];
        assert!((0.0..=1.0).contains(&v));
        kept += v * s.numel as f64;
        total += s.numel as f64;
    }
    assert!(
        (kept / total - 0.1).abs() < 1e-3,
        "overall density {}",
        kept / total
    );
    // Scoring leaves the weights as they were.
    for ((_, t), b) in model.parameters().into_iter().zip(before) {
        assert!(t.equal(&b));
    }
    assert!(ZoTrainConfig::new(1.0).validate().is_err());
    let mut bad = ZoTrainConfig::new(0.9);
    bad.mu = 0.0;
    assert!(bad.validate().unwrap_err().to_string().contains("zo.mu"));
}

#[test]
fn deepzero_trains_without_backpropagation() {
    let _torch = torch_lock();
    let (train, test) = synthetic_split(120, 16, 0.3, 7, 400);
    tch::manual_seed(2);
    let mut model = Model::new(tiny_spec(Arch::Lenet, 16), Device::Cpu).unwrap();
    let before = evaluate(&model, &test, 256).unwrap().accuracy;
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 32,
        eval_batch_size: 256,
        optim: OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        lr: ScheduleConfig {
            lr: 0.05,
            schedule: LrSchedule::Constant,
            warmup_epochs: 0.0,
        },
        augment: Default::default(),
        drop_last: false,
        seed: 1,
        precision: Default::default(),
        channels_last: false,
        optim_impl: Default::default(),
    };
    let (gx, gy) = train.batch(&(0..64).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let mut hook = DeepZeroStep::new(
        ZoTrainConfig {
            resample_every: 2,
            ..ZoTrainConfig::new(0.5)
        },
        (gx, gy),
        Some(dir.path().join("densities.json")),
        9,
    )
    .unwrap();
    let out = fit_with(&mut model, &train, None, &cfg, &quiet(), &mut hook).unwrap();
    let after = evaluate(&model, &test, 256).unwrap().accuracy;
    assert!(
        after > 80.0 && after > before + 30.0,
        "accuracy {before} -> {after}"
    );
    let per_step = 1 + hook.coordinates() as u64;
    let steps = 4 * 400u64.div_ceil(32);
    let grasp = 2 * 65;
    assert_eq!(hook.queries, grasp + steps * per_step);
    let q_hist = out.history.last().unwrap().extra["queries_total"];
    assert_eq!(q_hist as u64, hook.queries);
    assert!(dir.path().join("densities.json").exists());
}

/// The chain is built from the model's layout: every described network with parameter-free
/// shortcuts is accepted with one slot per parameter in state-dict order; the others are
/// refused with the reason.
#[test]
fn chain_comes_from_the_models_layout() {
    let _torch = torch_lock();
    for arch in [Arch::Lenet, Arch::Mlp, Arch::Resnet20] {
        let model = Model::new(tiny_spec(arch, 16), Device::Cpu).unwrap();
        let net = ZoNet::new(&model).unwrap();
        let names: Vec<String> = net.slots.iter().map(|s| s.name.clone()).collect();
        let params: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
        let weights_and_biases: Vec<String> =
            params.into_iter().filter(|n| !n.contains("bn")).collect();
        assert_eq!(names, weights_and_biases, "{arch}");
        let x = Tensor::rand([2, 1, 16, 16], (Kind::Float, Device::Cpu));
        let a = tch::no_grad(|| net.forward(&x, false));
        let b = tch::no_grad(|| model.forward_t(&x, false));
        // The chain normalizes as x * (1/s) - m/s, the model as (x - m) / s: float rounding only.
        assert!(f64::try_from((a - b).abs().max()).unwrap() < 1e-5, "{arch}");
    }
    let err = |arch| {
        let model = Model::new(tiny_spec(arch, 16), Device::Cpu).unwrap();
        ZoNet::new(&model).err().unwrap().to_string()
    };
    assert!(err(Arch::Resnet18).contains("projection shortcut"));
    assert!(err(Arch::Vgg16Bn).contains("has none"));
}
