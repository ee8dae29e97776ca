//! Saving and loading weights: round trips, strictness and clear errors.

mod common;

use proptest::prelude::*;
use rustworthy_core::Error;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::torch_lock;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn model(spec: ModelSpec) -> Model {
    Model::new(spec, Device::Cpu).unwrap()
}

fn checkpoint_msg(e: Error) -> String {
    match e {
        Error::Checkpoint { msg, .. } => msg,
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        ModelSpec::cifar10(Arch::Resnet20),
        ModelSpec::fashion_mnist(Arch::Lenet),
    ] {
        let a = model(spec.clone());
        common::perturb(&a);
        let path = dir.path().join(format!("{}.safetensors", spec.arch));
        a.save(&path).unwrap();
        let mut b = model(spec.clone());
        b.load(&path).unwrap();
        let x = common::random_input(&spec, 3);
        for train in [false, true] {
            let ya = tch::no_grad(|| a.forward_t(&x, train));
            let yb = tch::no_grad(|| b.forward_t(&x, train));
            assert_eq!(
                common::max_abs_diff(&ya, &yb),
                0.0,
                "{} train={train}",
                spec.arch
            );
        }
        for ((n, ta), (_, tb)) in a.state_dict().iter().zip(b.state_dict()) {
            assert!(ta.equal(&tb), "{n} differs after the round trip");
        }
        // Loaded parameters are still the trainable variables of the store.
        assert!(b.parameters().iter().all(|(_, t)| t.requires_grad()));
    }
    // Only the weight files remain: the temporary files were renamed.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn saved_file_holds_float_weights_and_int64_counters() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(ModelSpec::fashion_mnist(Arch::Resnet20));
    let path = dir.path().join("m.safetensors");
    m.save(&path).unwrap();
    let file = common::read_map(&path);
    assert_eq!(file.len(), m.state_dict().len());
    for (name, t) in &file {
        if name.ends_with("num_batches_tracked") {
            assert_eq!((t.kind(), t.size()), (Kind::Int64, vec![]), "{name}");
        } else {
            assert_eq!(t.kind(), Kind::Float, "{name}");
        }
    }
}

#[test]
fn lenet_file_into_resnet20_names_a_variable() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lenet.safetensors");
    model(ModelSpec::cifar10(Arch::Lenet)).save(&path).unwrap();
    let mut r20 = model(ModelSpec::cifar10(Arch::Resnet20));
    let before = r20.state_dict()[0].1.copy();
    let msg = checkpoint_msg(r20.load(&path).unwrap_err());
    assert!(msg.contains("different architecture"), "{msg}");
    assert!(
        msg.contains("`bn1.weight`"),
        "missing variable not named: {msg}"
    );
    assert!(
        msg.contains("`fc1.weight`"),
        "unexpected key not named: {msg}"
    );
    assert!(
        msg.contains("`conv1.weight`"),
        "shape mismatch not named: {msg}"
    );
    // Nothing was changed.
    assert!(r20.state_dict()[0].1.equal(&before));
}

#[test]
fn shape_mismatch_names_variable_and_both_shapes() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c100.safetensors");
    model(ModelSpec::cifar10(Arch::Resnet20).with_num_classes(100))
        .save(&path)
        .unwrap();
    let mut m = model(ModelSpec::cifar10(Arch::Resnet20));
    let msg = checkpoint_msg(m.load(&path).unwrap_err());
    assert!(msg.contains("`fc.weight`"), "{msg}");
    assert!(
        msg.contains("[10, 64]") && msg.contains("[100, 64]"),
        "{msg}"
    );
}

fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut entries = Tensor::read_safetensors(src).unwrap();
    edit(&mut entries);
    Tensor::write_safetensors(&entries, dst).unwrap();
}

#[test]
fn missing_extra_and_mistyped_entries_are_errors() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::fashion_mnist(Arch::Resnet20);
    let good = dir.path().join("good.safetensors");
    model(spec.clone()).save(&good).unwrap();
    let mut m = model(spec);

    let p = dir.path().join("missing.safetensors");
    rewrite(&good, &p, |e| {
        e.retain(|(n, _)| n != "layer2.1.bn1.running_var")
    });
    let msg = checkpoint_msg(m.load(&p).unwrap_err());
    assert!(
        msg.contains("`layer2.1.bn1.running_var`") && msg.contains("missing"),
        "{msg}"
    );

    let p = dir.path().join("extra.safetensors");
    rewrite(&good, &p, |e| {
        e.push((
            "head.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let msg = checkpoint_msg(m.load(&p).unwrap_err());
    assert!(
        msg.contains("`head.extra.weight`") && msg.contains("unexpected"),
        "{msg}"
    );

    let p = dir.path().join("f64.safetensors");
    rewrite(&good, &p, |e| {
        for (n, t) in e.iter_mut() {
            if n == "fc.bias" {
                *t = t.to_kind(Kind::Double);
            }
        }
    });
    let msg = checkpoint_msg(m.load(&p).unwrap_err());
    assert!(
        msg.contains("`fc.bias`") && msg.contains("float32"),
        "{msg}"
    );

    // Counters are optional: a file without them (older PyTorch) loads.
    let p = dir.path().join("no_counters.safetensors");
    rewrite(&good, &p, |e| {
        e.retain(|(n, _)| !n.ends_with("num_batches_tracked"))
    });
    m.load(&p).unwrap();
    m.load(&good).unwrap();
}

#[test]
fn unreadable_files_are_checkpoint_errors() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(ModelSpec::fashion_mnist(Arch::Lenet));
    let good = dir.path().join("good.safetensors");
    m.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let missing = dir.path().join("nope.safetensors");
    let msg = checkpoint_msg(m.load(&missing).unwrap_err());
    assert!(msg.contains("not found"), "{msg}");

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let msg = checkpoint_msg(m.load(&truncated).unwrap_err());
    assert!(msg.contains("safetensors"), "{msg}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a weight file at all").unwrap();
    assert!(matches!(m.load(&garbage), Err(Error::Checkpoint { .. })));

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(m.load(&empty), Err(Error::Checkpoint { .. })));

    assert!(matches!(m.load(dir.path()), Err(Error::Checkpoint { .. })));
}

#[test]
fn copy_from_copies_everything_and_checks_compatibility() {
    let _torch = torch_lock();
    let spec = ModelSpec::fashion_mnist(Arch::Resnet20);
    let a = model(spec.clone());
    common::perturb(&a);
    let mut b = model(spec.clone());
    b.copy_from(&a).unwrap();
    for ((n, ta), (_, tb)) in a.state_dict().iter().zip(b.state_dict()) {
        assert!(ta.equal(&tb), "{n}");
    }
    assert!(b.parameters().iter().all(|(_, t)| t.requires_grad()));
    // Independent storage: changing the source leaves the copy alone.
    tch::no_grad(|| {
        let _ = a.parameters()[0].1.shallow_clone().fill_(0.0);
    });
    assert!(!b.parameters()[0].1.equal(&a.parameters()[0].1));

    let mut other = model(ModelSpec::fashion_mnist(Arch::Lenet));
    assert!(other.copy_from(&a).is_err());
    let mut wider = model(spec.with_num_classes(5));
    assert!(wider.copy_from(&a).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any truncation or byte flip of a weight file is an error or a clean load, never a panic.
    #[test]
    fn damaged_files_never_panic(cut in 0usize..10_000, flip in 0usize..10_000, byte in any::<u8>()) {
        let _torch = torch_lock();
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(ModelSpec::fashion_mnist(Arch::Mlp).with_num_classes(2));
        let good = dir.path().join("good.safetensors");
        m.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();

        let p = dir.path().join("cut.safetensors");
        let cut = cut * bytes.len() / 10_000;
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let truncated_is_error = matches!(m.load(&p), Err(Error::Checkpoint { .. }));
        prop_assert!(truncated_is_error, "a truncated file must be a checkpoint error");

        // Flip a byte in the header (first ~1 KB), where damage changes the structure.
        let mut damaged = bytes.clone();
        let at = flip % damaged.len().min(1024);
        damaged[at] ^= byte;
        std::fs::write(&p, &damaged).unwrap();
        let _ = m.load(&p);
    }

    /// Any spec that validates builds a model whose forward pass has the right shape.
    #[test]
    fn valid_specs_build_and_run(
        arch in prop::sample::select(vec![Arch::Mlp, Arch::Lenet, Arch::Resnet20]),
        c in 1i64..4, h in 12i64..40, w in 12i64..40, k in 1i64..20,
    ) {
        let _torch = torch_lock();
        let spec = ModelSpec {
            activation: Default::default(),
            arch,
            in_channels: c,
            num_classes: k,
            input_size: (h, w),
            mean: vec![0.5; c as usize],
            std: vec![0.25; c as usize],
        };
        let m = model(spec.clone());
        let y = tch::no_grad(|| m.forward_t(&common::random_input(&spec, 2), false));
        prop_assert_eq!(y.size(), vec![2, k]);
    }

    /// Parsing arbitrary names never panics, and errors name the config field.
    #[test]
    fn arch_parsing_never_panics(s in ".{0,20}") {
        if let Err(e) = s.parse::<Arch>() {
            prop_assert!(e.to_string().contains("model.arch"));
        }
    }
}
