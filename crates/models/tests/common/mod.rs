//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use rustworthy_models::{Model, ModelSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The workspace root and the project's Python come from the test kit.
pub use rustworthy_testkit::{python, python_or_skip, python_required, workspace_root};

/// The committed PyTorch fixtures.
pub fn fixture_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/models")
}

/// Reads a safetensors file into a map.
pub fn read_map(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (a - b).abs().max().double_value(&[])
}

/// Largest absolute value.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// A random batch in [0, 1] for `spec`.
pub fn random_input(spec: &ModelSpec, batch: i64) -> Tensor {
    Tensor::rand(spec.input_shape(batch), (Kind::Float, Device::Cpu))
}

/// Gives a model a non-trivial state: parameters jittered and batch-norm running statistics
/// from a few train-mode passes.
pub fn perturb(model: &Model) {
    tch::no_grad(|| {
        for (_, p) in model.parameters() {
            let noise = p.randn_like() * 0.01;
            let _ = p.shallow_clone().g_add_(&noise);
        }
        for _ in 0..2 {
            let _ = model.forward_t(&random_input(&model.spec, 4), true);
        }
    });
}

/// What one fixture comparison found.
#[derive(Debug)]
pub struct FixtureReport {
    pub name: String,
    pub eval_diff: f64,
    pub train_diff: f64,
    pub buffer_diff: f64,
    pub logit_scale: f64,
}

/// Loads one exported model (manifest entry) and compares eval/train logits and the BN
/// buffers after one train-mode pass with the PyTorch values.
pub fn check_fixture(dir: &Path, entry: &serde_json::Value) -> FixtureReport {
    let spec: ModelSpec = serde_json::from_value(entry["spec"].clone()).expect("spec");
    let weights = dir.join(entry["weights"].as_str().unwrap());
    let io = read_map(&dir.join(entry["io"].as_str().unwrap()));
    let mut model = Model::new(spec.clone(), Device::Cpu).unwrap();
    model.load(&weights).unwrap();

    // The file holds exactly our state dict, counters included.
    let mut file_keys: Vec<String> = read_map(&weights).into_keys().collect();
    file_keys.sort();
    let mut ours: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    ours.sort();
    assert_eq!(ours, file_keys, "{}: state-dict names differ", spec.arch);
    if let Some(n) = entry.get("num_params").and_then(|v| v.as_i64()) {
        assert_eq!(model.num_params(), n, "{}: parameter count", spec.arch);
    }

    let x = &io["input"];
    model.check_input(x).unwrap();
    let eval = tch::no_grad(|| model.forward_t(x, false));
    let eval_diff = max_abs_diff(&eval, &io["logits_eval"]);
    let train = tch::no_grad(|| model.forward_t(x, true));
    let train_diff = max_abs_diff(&train, &io["logits_train"]);
    let mut buffer_diff: f64 = 0.0;
    let buffers: HashMap<String, Tensor> = model.buffers().into_iter().collect();
    for (name, expected) in &io {
        if let Some(buf) = name.strip_prefix("after_train.") {
            let got = &buffers[buf];
            buffer_diff = buffer_diff.max(max_abs_diff(got, expected));
        }
    }
    FixtureReport {
        name: spec.arch.to_string(),
        eval_diff,
        train_diff,
        buffer_diff,
        logit_scale: max_abs(&io["logits_eval"]),
    }
}

/// Checks every model of a fixture folder's manifest; returns the reports.
pub fn check_fixture_dir(dir: &Path) -> Vec<FixtureReport> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| check_fixture(dir, e))
        .collect()
}
