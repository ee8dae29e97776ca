//! Cross-checks against PyTorch driven by the project's Python (`.venv/bin/python`):
//! all six architectures exported by scripts/ref/export_fixtures.py load here and give
//! PyTorch's logits, and weights saved here load in PyTorch with `strict=True` and give ours.
//!
//! Skipped (with a message) when the interpreter is absent, unless RUSTWORTHY_REQUIRE_PYTHON=1.

mod common;

use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::torch_lock;
use std::path::Path;
use std::process::Command;
use tch::{Device, Tensor};

/// Absolute tolerance on logits, plus a relative part for large logits.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-5;

fn run_python(python: &Path, args: &[&str]) {
    let out = Command::new(python)
        .args(args)
        .current_dir(common::workspace_root())
        .output()
        .expect("cannot start python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn within(diff: f64, scale: f64) -> bool {
    diff <= ATOL + RTOL * scale
}

#[test]
fn pytorch_exports_of_all_archs_load_and_match() {
    let _torch = torch_lock();
    let Some(python) = common::python_or_skip("pytorch_exports_of_all_archs_load_and_match") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    run_python(
        &python,
        &[
            "scripts/ref/export_fixtures.py",
            "--out",
            out,
            "--arch",
            "all",
            "--batch",
            "2",
        ],
    );
    let reports = common::check_fixture_dir(dir.path());
    assert_eq!(reports.len(), Arch::ALL.len());
    for r in &reports {
        eprintln!("{r:?}");
        assert!(within(r.eval_diff, r.logit_scale), "{r:?}: eval logits");
        assert!(within(r.train_diff, r.logit_scale), "{r:?}: train logits");
        assert!(
            r.buffer_diff <= ATOL,
            "{r:?}: BN buffers after a train pass"
        );
    }
}

/// Loads each job's weights into the reference model with strict=True and writes its eval
/// logits on the job's input.
const PYTORCH_EVAL: &str = r#"
import json, sys
import torch
from safetensors.torch import load_file, save_file
sys.path.insert(0, "scripts/ref")
import models
for job in json.load(open(sys.argv[1])):
    model = models.build_model(job["spec"])
    model.load_state_dict(load_file(job["weights"]), strict=True)
    model.eval()
    x = load_file(job["io"])["input"]
    with torch.no_grad():
        logits = model(x)
    save_file({"logits": logits.contiguous()}, job["out"])
"#;

#[test]
fn rust_weights_load_in_pytorch_strict_and_match() {
    let _torch = torch_lock();
    let Some(python) = common::python_or_skip("rust_weights_load_in_pytorch_strict_and_match")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(5);
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for arch in Arch::ALL {
        // The geometry the PyTorch export does not use for this architecture.
        let spec = match arch {
            Arch::Resnet20 | Arch::Resnet18 => ModelSpec::fashion_mnist(arch),
            _ => ModelSpec::cifar10(arch),
        };
        let model = Model::new(spec.clone(), Device::Cpu).unwrap();
        common::perturb(&model);
        let x = common::random_input(&spec, 2);
        let logits = tch::no_grad(|| model.forward_t(&x, false));
        let weights = dir.path().join(format!("{arch}.safetensors"));
        let io = dir.path().join(format!("{arch}.io.safetensors"));
        let out = dir.path().join(format!("{arch}.out.safetensors"));
        model.save(&weights).unwrap();
        Tensor::write_safetensors(&[("input", &x)], &io).unwrap();
        jobs.push(serde_json::json!({
            "spec": spec,
            "weights": weights,
            "io": io,
            "out": out,
        }));
        expected.push((arch, logits, out));
    }
    let jobs_path = dir.path().join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_string(&jobs).unwrap()).unwrap();
    run_python(&python, &["-c", PYTORCH_EVAL, jobs_path.to_str().unwrap()]);
    for (arch, ours, out) in expected {
        let theirs = &common::read_map(&out)["logits"];
        let diff = common::max_abs_diff(&ours, theirs);
        let scale = common::max_abs(theirs);
        eprintln!("{arch}: PyTorch vs Rust logits max abs diff {diff:e} (max |logit| {scale:.3})");
        assert!(within(diff, scale), "{arch}: logits differ by {diff}");
    }
}
