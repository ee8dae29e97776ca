//! The order of updates of the first-order methods against plain PyTorch re-statements of the
//! official loops (`scripts/ref/unlearn_loops.py`): FT, GA, RL (forget batches first, and the
//! mixed stream), SalUn (mask and masked updates), l1-sparse (the per-epoch l1 weight) and
//! NegGrad+ (the reference notebook's step), all under the `reference` profile's semantics.
//!
//! Every set fits in one batch, so batch order cannot matter, and the task has two classes with
//! RL's "a label other than the true one", so the random labels are fixed: the comparison is of
//! the updates themselves (which data, in which order, which loss reduction, which optimizer).

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::{copy_of, python_or_skip, sgd_recipe, torch_lock};
use rustworthy_unlearn::{ForgetSpec, MethodConfig, Profile, Scenario, UnlearnCtx, UnlearnData};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

fn cases() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let run = |lr: f64| json!({"epochs": 3, "lr": lr, "batch_size": 64});
    let with = |base: serde_json::Value, extra: serde_json::Value| {
        let mut b = base.as_object().unwrap().clone();
        b.extend(extra.as_object().unwrap().clone());
        serde_json::Value::Object(b)
    };
    vec![
        ("ft", with(run(0.05), json!({"method": "ft"}))),
        ("ga", with(run(0.05), json!({"method": "ga"}))),
        (
            "rl-forget-first",
            with(
                run(0.05),
                json!({"method": "rl", "exclude_true_label": true, "forget_first": true}),
            ),
        ),
        (
            "rl-mixed",
            with(
                run(0.05),
                json!({"method": "rl", "exclude_true_label": true, "forget_first": false}),
            ),
        ),
        (
            "salun",
            with(
                run(0.05),
                json!({"method": "salun", "exclude_true_label": true, "forget_first": true, "mask_ratio": 0.5}),
            ),
        ),
        (
            "l1-sparse",
            with(run(0.05), json!({"method": "l1-sparse", "alpha": 5e-3})),
        ),
        (
            "neggrad-plus",
            json!({"method": "neggrad-plus", "epochs": 3, "lr": 0.05, "batch_size": 64,
                   "forget_batch_size": 64, "beta": 0.95, "l2_to_original": 0.1}),
        ),
    ]
}

#[test]
fn first_order_loops_match_their_pytorch_restatements() {
    let _torch = torch_lock();
    let Some(python) = python_or_skip("first_order_loops_match_their_pytorch_restatements") else {
        return;
    };
    let spec = ModelSpec {
        activation: Default::default(),
        arch: Arch::Mlp,
        in_channels: 1,
        num_classes: 2,
        input_size: (4, 4),
        mean: vec![0.5],
        std: vec![0.25],
    };
    tch::manual_seed(7);
    let model = Model::new(spec.clone(), Device::Cpu).unwrap();
    let n = 52;
    let images = Tensor::rand([n, 1, 4, 4], (Kind::Float, Device::Cpu));
    // Labels follow the mean brightness of the left half, so the model has something to learn.
    let labels = images
        .narrow(3, 0, 2)
        .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
        .gt(0.5)
        .to_kind(Kind::Int64);
    let train = Dataset::new(
        "loops/train",
        images,
        labels,
        2,
        vec!["a".into(), "b".into()],
    )
    .unwrap();
    let idx: Vec<usize> = (0..n as usize).collect();
    let s = Scenario::resolve(
        &ForgetSpec::Random { fraction: 0.25 },
        &idx,
        &train.labels_vec(),
        2,
        3,
    )
    .unwrap();
    let data = UnlearnData {
        forget: train.subset(&s.forget).unwrap(),
        retain: train.subset(&s.retain).unwrap(),
        test: train.shallow_clone(),
        scenario: s,
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    Tensor::write_safetensors(
        &[
            ("x_forget", &data.forget.images),
            ("y_forget", &data.forget.labels),
            ("x_retain", &data.retain.images),
            ("y_retain", &data.retain.labels),
        ],
        root.join("data.safetensors"),
    )
    .unwrap();
    model.save(root.join("init.safetensors")).unwrap();
    std::fs::write(
        root.join("spec.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    let original = sgd_recipe(1, 64, 0.05, 0);
    let mut listed = Vec::new();
    let mut ours: BTreeMap<&str, Model> = BTreeMap::new();
    for (name, settings) in cases() {
        let method_name = settings["method"].as_str().unwrap().to_string();
        let overrides = settings.as_object().unwrap().clone();
        let cfg =
            MethodConfig::with_overrides_for(&method_name, Profile::Reference, &overrides).unwrap();
        let mut m = copy_of(&model);
        let ctx = UnlearnCtx {
            data: &data,
            seed: 0,
            progress: ProgressMode::Quiet,
            original: &original,
            masks: None,
            dist: None,
        };
        cfg.build().unwrap().unlearn(&mut m, &ctx).unwrap();
        let mut c = settings.clone();
        c["name"] = serde_json::json!(name);
        listed.push(c);
        ours.insert(name, m);
    }
    std::fs::write(
        root.join("cases.json"),
        serde_json::to_string(&listed).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(&python)
        .arg(rustworthy_testkit::workspace_root().join("scripts/ref/unlearn_loops.py"))
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unlearn_loops.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, m) in &ours {
        let theirs: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(root.join(format!("py-{name}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let mut moved = 0.0f64;
        for (p, t) in m.parameters() {
            let r = &theirs[&p];
            let diff = f64::try_from((&t - r).abs().max()).unwrap();
            assert!(
                diff < 1e-5,
                "{name}: {p} differs from the PyTorch loop by {diff}"
            );
            moved = moved.max(f64::try_from((&t - model_param(&model, &p)).abs().max()).unwrap());
        }
        // The check means something only if the method moved the weights.
        assert!(moved > 1e-3, "{name}: the weights barely moved ({moved})");
    }
}

fn model_param(m: &Model, name: &str) -> Tensor {
    m.parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap()
}
