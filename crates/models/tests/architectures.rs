//! Shapes, parameter counts and state-dict names of every architecture.

mod common;

use rustworthy_core::Error;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::torch_lock;
use tch::{Device, Kind, Tensor};

fn specs(arch: Arch) -> [ModelSpec; 2] {
    [ModelSpec::fashion_mnist(arch), ModelSpec::cifar10(arch)]
}

#[test]
fn forward_shapes_on_both_geometries() {
    let _torch = torch_lock();
    for arch in Arch::ALL {
        for spec in specs(arch) {
            let model = Model::new(spec.clone().with_num_classes(7), Device::Cpu).unwrap();
            let x = common::random_input(&spec, 2);
            model.check_input(&x).unwrap();
            for train in [false, true] {
                let y = tch::no_grad(|| model.forward_t(&x, train));
                assert_eq!(
                    y.size(),
                    [2, 7],
                    "{arch} {:?} train={train}",
                    spec.input_size
                );
                assert_eq!(y.kind(), Kind::Float);
                assert!(
                    bool::try_from(y.isfinite().all()).unwrap(),
                    "{arch}: non-finite"
                );
            }
            let f = tch::no_grad(|| model.features_t(&x, false));
            assert_eq!(f.size(), [2, model.feature_dim()], "{arch}");
            let y = tch::no_grad(|| model.logits_from_features(&f));
            let direct = tch::no_grad(|| model.forward_t(&x, false));
            assert_eq!(common::max_abs_diff(&y, &direct), 0.0, "{arch}");
        }
    }
}

#[test]
fn parameter_counts_match_the_known_numbers() {
    let _torch = torch_lock();
    // Exact counts of the PyTorch reference models (10 classes).
    let expected = [
        (Arch::Mlp, 269_322, 855_050),
        (Arch::Lenet, 61_706, 83_126),
        (Arch::Resnet18, 11_172_810, 11_173_962),
        (Arch::Resnet20, 269_434, 269_722),
        (Arch::PreactResnet18, 11_171_018, 11_172_170),
        (Arch::Vgg16Bn, 14_727_114, 14_728_266),
    ];
    for (arch, fmnist, cifar) in expected {
        let [f, c] = specs(arch);
        let nf = Model::new(f, Device::Cpu).unwrap().num_params();
        let nc = Model::new(c, Device::Cpu).unwrap().num_params();
        assert_eq!((nf, nc), (fmnist, cifar), "{arch}");
    }
    // The usual headline numbers.
    let approx = |n: i64, target: f64, tol: f64| ((n as f64) - target).abs() <= tol;
    let n = |arch, spec: fn(Arch) -> ModelSpec| {
        Model::new(spec(arch), Device::Cpu).unwrap().num_params()
    };
    assert!(approx(
        n(Arch::Resnet18, ModelSpec::cifar10),
        11.17e6,
        0.01e6
    ));
    assert!(approx(
        n(Arch::Resnet20, ModelSpec::cifar10),
        0.27e6,
        0.005e6
    ));
    assert!(approx(
        n(Arch::PreactResnet18, ModelSpec::cifar10),
        11.17e6,
        0.01e6
    ));
    assert!(approx(n(Arch::Vgg16Bn, ModelSpec::cifar10), 14.7e6, 0.05e6));
    assert!(approx(
        n(Arch::Lenet, ModelSpec::fashion_mnist),
        61.7e3,
        0.1e3
    ));
}

#[test]
fn state_dict_names_follow_pytorch() {
    let _torch = torch_lock();
    let names = |spec: ModelSpec| -> Vec<String> {
        let m = Model::new(spec, Device::Cpu).unwrap();
        m.state_dict().into_iter().map(|(n, _)| n).collect()
    };
    let mlp = names(ModelSpec::fashion_mnist(Arch::Mlp));
    assert_eq!(
        mlp,
        [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias"
        ]
    );
    let lenet = names(ModelSpec::fashion_mnist(Arch::Lenet));
    assert_eq!(lenet.first().unwrap(), "conv1.weight");
    assert_eq!(lenet.last().unwrap(), "fc3.bias");
    assert_eq!(lenet.len(), 10);

    let r18 = names(ModelSpec::cifar10(Arch::Resnet18));
    for n in [
        "conv1.weight",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.1.bn2.bias",
        "fc.weight",
    ] {
        assert!(r18.contains(&n.to_string()), "resnet18 lacks {n}");
    }
    assert!(!r18.iter().any(|n| n.starts_with("layer1.0.downsample")));
    assert!(!r18.iter().any(|n| n.starts_with("conv1.bias")));
    assert_eq!(r18.len(), 122);

    let r20 = names(ModelSpec::cifar10(Arch::Resnet20));
    assert!(r20.contains(&"layer3.2.bn2.running_mean".to_string()));
    assert!(!r20
        .iter()
        .any(|n| n.contains("downsample") || n.contains("shortcut")));
    assert_eq!(r20.len(), 116);

    let pre = names(ModelSpec::cifar10(Arch::PreactResnet18));
    for n in [
        "layer2.0.shortcut.0.weight",
        "layer1.0.bn1.weight",
        "bn.running_var",
        "linear.bias",
    ] {
        assert!(pre.contains(&n.to_string()), "preact lacks {n}");
    }
    assert!(!pre.iter().any(|n| n.starts_with("layer1.0.shortcut")));

    let vgg = names(ModelSpec::cifar10(Arch::Vgg16Bn));
    // Conv indices of cfg D with BN: conv, bn, relu per layer, pools take one index.
    let convs: Vec<usize> = vgg
        .iter()
        .filter_map(|n| n.strip_suffix(".weight")?.strip_prefix("features."))
        .filter_map(|i| i.parse().ok())
        .filter(|i: &usize| !vgg.contains(&format!("features.{i}.running_mean")))
        .collect();
    assert_eq!(convs, [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]);
    assert!(vgg.contains(&"features.41.num_batches_tracked".to_string()));
    assert_eq!(
        &vgg[vgg.len() - 2..],
        ["classifier.weight", "classifier.bias"]
    );
}

#[test]
fn parameters_buffers_and_summary_agree() {
    let _torch = torch_lock();
    let model = Model::new(ModelSpec::cifar10(Arch::Resnet20), Device::Cpu).unwrap();
    let params = model.parameters();
    let buffers = model.buffers();
    let summary = model.summary();
    assert_eq!(params.len() + buffers.len(), summary.len());
    assert!(params.iter().all(|(_, t)| t.requires_grad()));
    assert!(buffers.iter().all(|(_, t)| !t.requires_grad()));
    assert_eq!(params.len(), model.vs.trainable_variables().len());
    assert_eq!(summary.len(), model.vs.variables().len());
    let counted: i64 = summary
        .iter()
        .filter(|l| l.trainable)
        .map(|l| l.numel)
        .sum();
    assert_eq!(counted, model.num_params());
    let counter = summary
        .iter()
        .find(|l| l.name == "bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(
        (counter.shape.len(), counter.numel, counter.trainable),
        (0, 1, false)
    );
    // Stable order: a second model lists the same names.
    let again = Model::new(ModelSpec::cifar10(Arch::Resnet20), Device::Cpu).unwrap();
    let a: Vec<_> = model.summary().into_iter().map(|l| l.name).collect();
    let b: Vec<_> = again.summary().into_iter().map(|l| l.name).collect();
    assert_eq!(a, b);
}

#[test]
fn batch_norm_tracks_batches_only_in_train_mode() {
    let _torch = torch_lock();
    let model = Model::new(ModelSpec::fashion_mnist(Arch::Resnet20), Device::Cpu).unwrap();
    let x = common::random_input(&model.spec, 3);
    let count = |m: &Model| {
        let b: std::collections::HashMap<_, _> = m.buffers().into_iter().collect();
        (
            b["bn1.num_batches_tracked"].int64_value(&[]),
            b["bn1.running_mean"]
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
        )
    };
    assert_eq!(count(&model), (0, 0.0));
    let _ = tch::no_grad(|| model.forward_t(&x, false));
    assert_eq!(count(&model), (0, 0.0));
    let _ = tch::no_grad(|| model.forward_t(&x, true));
    let (n, mean) = count(&model);
    assert_eq!(n, 1);
    assert!(mean > 0.0);
}

#[test]
fn normalization_is_inside_the_model() {
    let _torch = torch_lock();
    let model = Model::new(ModelSpec::cifar10(Arch::Mlp), Device::Cpu).unwrap();
    let mean = Tensor::from_slice(&[0.4914f32, 0.4822, 0.4465]).view([1, 3, 1, 1]);
    let x = mean.expand([1, 3, 32, 32], false).contiguous();
    let z = model.normalize(&x);
    assert!(common::max_abs(&z) < 1e-6, "mean image must normalize to 0");
    // Normalization is not stored in the weights.
    assert!(model
        .state_dict()
        .iter()
        .all(|(n, _)| !n.contains("mean") && !n.contains("std")));
}

#[test]
fn wrong_inputs_give_clear_errors() {
    let _torch = torch_lock();
    let model = Model::new(ModelSpec::cifar10(Arch::Resnet20), Device::Cpu).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    for shape in [
        vec![2, 1, 32, 32],
        vec![2, 3, 28, 28],
        vec![3, 32, 32],
        vec![2, 3, 32, 32, 1],
    ] {
        let e = model
            .check_input(&Tensor::rand(&shape[..], opts))
            .unwrap_err();
        match &e {
            Error::Shape { expected, got, .. } => {
                assert_eq!(got, &shape);
                assert_eq!(expected, "[B, 3, 32, 32]");
            }
            other => panic!("expected a shape error, got {other}"),
        }
        assert!(model
            .try_forward_t(&Tensor::rand(&shape[..], opts), false)
            .is_err());
    }
    let doubles = Tensor::rand([1, 3, 32, 32], (Kind::Double, Device::Cpu));
    let e = model.check_input(&doubles).unwrap_err().to_string();
    assert!(e.contains("float32"), "{e}");
    assert!(model
        .try_forward_t(&common::random_input(&model.spec, 1), false)
        .is_ok());
}

#[test]
fn invalid_specs_are_rejected_by_new() {
    let spec = ModelSpec {
        activation: Default::default(),
        std: vec![0.0],
        ..ModelSpec::fashion_mnist(Arch::Mlp)
    };
    let e = Model::new(spec, Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::Config { ref field, .. } if field == "model.std"),
        "{e}"
    );
}

#[test]
fn models_move_between_threads() {
    let _torch = torch_lock();
    fn assert_send<T: Send>() {}
    assert_send::<Model>();
    let model = Model::new(ModelSpec::fashion_mnist(Arch::Lenet), Device::Cpu).unwrap();
    let x = common::random_input(&model.spec, 2);
    let before = tch::no_grad(|| model.forward_t(&x, false));
    let (model, after) = std::thread::spawn(move || {
        let y = tch::no_grad(|| model.forward_t(&x, false));
        (model, y)
    })
    .join()
    .unwrap();
    assert_eq!(common::max_abs_diff(&before, &after), 0.0);
    assert!(format!("{model:?}").contains("lenet"));
}

#[test]
fn gradients_reach_input_and_parameters() {
    let _torch = torch_lock();
    let model = Model::new(ModelSpec::cifar10(Arch::PreactResnet18), Device::Cpu).unwrap();
    let x = common::random_input(&model.spec, 2).set_requires_grad(true);
    let loss = model
        .forward_t(&x, true)
        .cross_entropy_for_logits(&Tensor::from_slice(&[1i64, 3]));
    loss.backward();
    assert!(common::max_abs(&x.grad()) > 0.0, "no input gradient");
    for (name, p) in model.parameters() {
        assert!(p.grad().defined(), "{name} has no gradient");
    }
}

/// Every described layout, run functionally on the model's variables, is the model's forward
/// pass bit for bit (eval mode, and train mode with the same running-statistics updates).
#[test]
fn layouts_reproduce_the_forward_pass() {
    use rustworthy_models::layout::{run_layout, LayerOp};
    use std::collections::BTreeMap;
    let _torch = torch_lock();
    let described = [Arch::Mlp, Arch::Lenet, Arch::Resnet18, Arch::Resnet20];
    for arch in Arch::ALL {
        let spec = ModelSpec::fashion_mnist(arch);
        tch::manual_seed(3);
        let model = Model::new(spec.clone(), Device::Cpu).unwrap();
        let Some(layout) = model.layout() else {
            assert!(!described.contains(&arch), "{arch} lost its layout");
            continue;
        };
        assert!(
            described.contains(&arch),
            "{arch}: a new layout, add it here"
        );
        assert!(
            matches!(layout.last(), Some(LayerOp::Linear { .. })),
            "{arch}"
        );
        let twin = model.try_clone().unwrap();
        let vars: BTreeMap<String, Tensor> = twin
            .parameters()
            .into_iter()
            .chain(twin.buffers())
            .collect();
        let x = common::random_input(&spec, 3);
        for train in [false, true] {
            let direct = tch::no_grad(|| model.forward_t(&x, train));
            let via =
                tch::no_grad(|| run_layout(&layout, &vars, &model.normalize(&x), train)).unwrap();
            assert_eq!(
                common::max_abs_diff(&direct, &via),
                0.0,
                "{arch} train={train}"
            );
        }
        for (name, t) in model.buffers() {
            assert_eq!(
                common::max_abs_diff(&t.to_kind(Kind::Double), &vars[&name].to_kind(Kind::Double)),
                0.0,
                "{arch}: buffer {name} updated differently"
            );
        }
        // Every variable the layout names exists, and every parameter is named by the layout.
        let mut named = Vec::new();
        fn walk(ops: &[LayerOp], out: &mut Vec<String>) {
            for op in ops {
                if let Some(n) = op.name() {
                    out.push(n.to_string());
                }
                if let LayerOp::Residual { body, shortcut } = op {
                    walk(body, out);
                    if let rustworthy_models::layout::Shortcut::Layers(l) = shortcut {
                        walk(l, out);
                    }
                }
            }
        }
        walk(&layout, &mut named);
        for (name, _) in model.parameters() {
            let prefix = name.rsplit_once('.').unwrap().0;
            assert!(
                named.iter().any(|n| n == prefix),
                "{arch}: {name} not in the layout"
            );
        }
    }
}

/// The lower bound a weights file is checked against before a model is built never exceeds
/// what the architecture really holds, and grows with absurd sizes instead of overflowing.
#[test]
fn min_weight_bytes_is_a_true_lower_bound() {
    let _torch = torch_lock();
    for arch in Arch::ALL {
        for spec in specs(arch) {
            let model = Model::new(spec.clone(), Device::Cpu).unwrap();
            let floats: i64 = model
                .state_dict()
                .iter()
                .filter(|(_, t)| t.is_floating_point())
                .map(|(_, t)| t.numel() as i64)
                .sum();
            assert!(
                spec.min_weight_bytes() <= 4 * floats as u64,
                "{arch}: bound {} > {} bytes",
                spec.min_weight_bytes(),
                4 * floats
            );
            assert!(spec.min_weight_bytes() > 0, "{arch}");
        }
    }
    let huge = ModelSpec::fashion_mnist(Arch::Mlp).with_num_classes(i64::MAX);
    assert_eq!(huge.min_weight_bytes(), u64::MAX);
}
