//! Initialisation follows PyTorch: module defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) for
//! MLP/LeNet/VGG, torchvision's scheme for the ResNets, and libtorch's global RNG seeds it.

use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::torch_lock;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn params(model: &Model) -> HashMap<String, Tensor> {
    model.parameters().into_iter().collect()
}

fn stats(t: &Tensor) -> (f64, f64, f64) {
    let t = t.detach().to_kind(Kind::Double);
    (
        t.mean(Kind::Double).double_value(&[]),
        t.std(true).double_value(&[]),
        t.abs().max().double_value(&[]),
    )
}

/// U(-bound, bound): every value inside, the extremes reached, std = bound / sqrt(3).
fn assert_uniform(name: &str, t: &Tensor, bound: f64) {
    let (mean, std, max) = stats(t);
    let n = t.numel() as f64;
    assert!(
        max <= bound * (1.0 + 1e-6),
        "{name}: max {max} > bound {bound}"
    );
    assert!(
        max >= bound * 0.97,
        "{name}: max {max} far below bound {bound}"
    );
    let expected_std = bound / 3f64.sqrt();
    // The sample std of n uniform draws has a relative standard error of about 0.45/sqrt(n)
    // (a 640-weight head: 1.8%); allow five of them, and at least 2%.
    let tol = (0.02f64).max(5.0 * 0.45 / n.sqrt());
    assert!(
        (std / expected_std - 1.0).abs() < tol,
        "{name}: std {std}, expected {expected_std} (tolerance {tol})"
    );
    assert!(
        mean.abs() < 5.0 * expected_std / n.sqrt(),
        "{name}: mean {mean}"
    );
}

#[test]
fn default_init_of_mlp_lenet_vgg() {
    let _torch = torch_lock();
    tch::manual_seed(0);
    let mlp = Model::new(ModelSpec::fashion_mnist(Arch::Mlp), Device::Cpu).unwrap();
    let p = params(&mlp);
    assert_uniform("fc1.weight", &p["fc1.weight"], 1.0 / 784f64.sqrt());
    assert_uniform("fc2.weight", &p["fc2.weight"], 1.0 / 16.0);

    let lenet = Model::new(ModelSpec::fashion_mnist(Arch::Lenet), Device::Cpu).unwrap();
    let p = params(&lenet);
    assert_uniform("fc1.weight", &p["fc1.weight"], 1.0 / 400f64.sqrt());
    let (_, _, max) = stats(&p["conv1.bias"]);
    assert!(max <= 1.0 / 5.0, "conv1.bias bound is 1/sqrt(25)");

    let vgg = Model::new(ModelSpec::cifar10(Arch::Vgg16Bn), Device::Cpu).unwrap();
    let p = params(&vgg);
    let bound = 1.0 / (512.0f64 * 9.0).sqrt();
    assert_uniform("features.40.weight", &p["features.40.weight"], bound);
    let (_, _, max) = stats(&p["features.40.bias"]);
    assert!(
        max <= bound && max > 0.8 * bound,
        "features.40.bias max {max}"
    );
    assert_uniform(
        "classifier.weight",
        &p["classifier.weight"],
        1.0 / 512f64.sqrt(),
    );
    assert_batch_norm_defaults(&vgg);
}

fn assert_batch_norm_defaults(model: &Model) {
    let p = params(model);
    let b: HashMap<String, Tensor> = model.buffers().into_iter().collect();
    let mut seen = 0;
    for (name, t) in &p {
        if let Some(prefix) = name.strip_suffix(".weight") {
            if b.contains_key(&format!("{prefix}.running_mean")) {
                seen += 1;
                let ones = t.ones_like();
                assert!(t.equal(&ones), "{name} must start at 1");
                assert!(p[&format!("{prefix}.bias")].equal(&t.zeros_like()));
                assert!(b[&format!("{prefix}.running_mean")].equal(&t.zeros_like()));
                assert!(b[&format!("{prefix}.running_var")].equal(&ones));
                assert_eq!(
                    b[&format!("{prefix}.num_batches_tracked")].int64_value(&[]),
                    0
                );
            }
        }
    }
    assert!(seen > 0, "{}: no batch norm found", model.arch());
}

#[test]
fn torchvision_init_of_resnets() {
    let _torch = torch_lock();
    // Seeded, so the draws do not depend on which tests ran before in this process.
    tch::manual_seed(0);
    for (arch, conv) in [
        (Arch::Resnet18, "layer4.0.conv2.weight"),
        (Arch::PreactResnet18, "layer4.1.conv1.weight"),
        (Arch::Resnet20, "layer3.1.conv1.weight"),
    ] {
        let model = Model::new(ModelSpec::cifar10(arch), Device::Cpu).unwrap();
        let p = params(&model);
        let w = &p[conv];
        let fan_out = (w.size()[0] * w.size()[2] * w.size()[3]) as f64;
        let expected = (2.0 / fan_out).sqrt();
        let (mean, std, _) = stats(w);
        let rel = if w.numel() > 1_000_000 { 0.01 } else { 0.05 };
        assert!(
            (std / expected - 1.0).abs() < rel,
            "{arch} {conv}: std {std}, expected {expected}"
        );
        assert!(mean.abs() < 5.0 * expected / (w.numel() as f64).sqrt());
        // Projection shortcuts follow the same scheme with their 1x1 kernels.
        if let Some(s) = p
            .get("layer4.0.downsample.0.weight")
            .or(p.get("layer4.0.shortcut.0.weight"))
        {
            let (_, std, _) = stats(s);
            let expected = (2.0 / 512.0f64).sqrt();
            assert!(
                (std / expected - 1.0).abs() < 0.02,
                "{arch} shortcut std {std}"
            );
        }
        let head = p.get("fc.weight").or(p.get("linear.weight")).unwrap();
        let fan_in = head.size()[1] as f64;
        assert_uniform("head", head, 1.0 / fan_in.sqrt());
        assert_batch_norm_defaults(&model);
    }
}

#[test]
fn seeding_makes_init_reproducible() {
    let _torch = torch_lock();
    let build = |seed| {
        tch::manual_seed(seed);
        Model::new(ModelSpec::cifar10(Arch::Resnet20), Device::Cpu).unwrap()
    };
    let (a, b, c) = (build(3), build(3), build(4));
    let mut differs = false;
    for (((n, ta), (_, tb)), (_, tc)) in a
        .state_dict()
        .iter()
        .zip(b.state_dict())
        .zip(c.state_dict())
    {
        assert!(ta.equal(&tb), "{n} differs under the same seed");
        differs |= !ta.equal(&tc);
    }
    assert!(differs, "another seed must give other weights");
}
