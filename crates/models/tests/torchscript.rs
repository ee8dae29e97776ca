//! TorchScript models ([`Model::from_torchscript`]) against PyTorch, driven by the project's
//! Python (`.venv/bin/python`): scripts/ref/export_torchscript.py writes LeNet-5 and ResNet-20
//! twins of the zoo and a small CNN with batch norm and dropout, each scripted and traced, with
//! PyTorch's eval- and train-mode logits, input and parameter gradients, double-backward
//! gradients, batch-norm buffers after a train pass and weights after one SGD step.
//!
//! The Python-driven tests are skipped (with a message) when the interpreter is absent, unless
//! RUSTWORTHY_REQUIRE_PYTHON=1.

mod common;

use rustworthy_core::Error;
use rustworthy_models::{bench, Arch, Model, ModelSpec, ScriptOptions};
use rustworthy_testkit::{small_cnn_fixture, torch_lock};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

/// Absolute tolerance, plus a relative part for large values.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-5;

fn close(name: &str, got: &Tensor, want: &Tensor) {
    let diff = common::max_abs_diff(got, want);
    let scale = common::max_abs(want);
    assert!(
        diff <= ATOL + RTOL * scale,
        "{name}: max abs diff {diff:e} (max |value| {scale:.3e})"
    );
}

/// The exported fixtures, written once per test run; `None` when Python is absent and not
/// required.
fn fixtures(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let python = match common::python() {
            Some(p) => p,
            None if common::python_required() => {
                panic!("RUSTWORTHY_REQUIRE_PYTHON=1 but .venv/bin/python is missing")
            }
            None => return None,
        };
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("torchscript-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(python)
            .args(["scripts/ref/export_torchscript.py", "--out"])
            .arg(&dir)
            .current_dir(common::workspace_root())
            .output()
            .expect("cannot start python");
        assert!(
            out.status.success(),
            "export_torchscript.py failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dir)
    });
    if dir.is_none() {
        eprintln!("{test}: skipped, .venv/bin/python not found (run scripts/setup.sh)");
    }
    dir.as_deref()
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn entry(dir: &Path, name: &str) -> serde_json::Value {
    manifest(dir)
        .into_iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"))
}

fn options(e: &serde_json::Value) -> ScriptOptions {
    let size = e["input_size"].as_array().unwrap();
    ScriptOptions::new(
        e["in_channels"].as_i64().unwrap(),
        (size[0].as_i64().unwrap(), size[1].as_i64().unwrap()),
    )
}

fn load(dir: &Path, name: &str) -> Model {
    let e = entry(dir, name);
    Model::from_torchscript(
        dir.join(e["file"].as_str().unwrap()),
        options(&e),
        Device::Cpu,
    )
    .unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ce(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(y)
}

/// Every check of one exported module against its PyTorch reference.
fn check_against_pytorch(dir: &Path, e: &serde_json::Value) {
    let name = e["name"].as_str().unwrap();
    let model = load(dir, name);
    let r = common::read_map(&dir.join(e["ref"].as_str().unwrap()));
    assert_eq!(model.arch(), Arch::TorchScript);
    assert!(model.is_torchscript() && !model.has_feature_head());
    assert_eq!(model.spec.num_classes, e["num_classes"].as_i64().unwrap());

    // Parameters in named_parameters order, under their TorchScript names; buffers too.
    let params = model.parameters();
    let pnames: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(pnames, names(&e["params"]), "{name}: parameter names");
    let bnames: Vec<String> = model.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        sorted(bnames),
        sorted(names(&e["buffers"])),
        "{name}: buffer names"
    );
    // The optimizer's view: every parameter is a trainable variable of the var store.
    assert_eq!(model.vs.trainable_variables().len(), params.len());

    let (x, y) = (&r["x"], &r["y"]);
    let eval = tch::no_grad(|| model.try_forward_t(x, false).unwrap());
    close(&format!("{name} eval logits"), &eval, &r["eval_logits"]);

    // Gradients of the eval-mode loss w.r.t. the input and every parameter.
    let xg = x.copy().set_requires_grad(true);
    let loss = ce(&model.forward_t(&xg, false), y);
    let mut inputs = vec![xg.shallow_clone()];
    inputs.extend(params.iter().map(|(_, p)| p.shallow_clone()));
    let g = Tensor::run_backward(&[&loss], &inputs, true, true);
    close(&format!("{name} eval d loss/dx"), &g[0], &r["eval_grad_x"]);
    for ((n, _), gp) in params.iter().zip(&g[1..]) {
        close(
            &format!("{name} eval d loss/d {n}"),
            gp,
            &r[&format!("eval_grad.{n}")],
        );
    }
    // Double backward (as GradAlign and input-gradient penalties need), on the weights.
    let penalty = g[0].pow_tensor_scalar(2).sum(Kind::Float);
    let weights: Vec<&(String, Tensor)> = params.iter().filter(|(_, p)| p.dim() >= 2).collect();
    let wt: Vec<Tensor> = weights.iter().map(|(_, p)| p.shallow_clone()).collect();
    let dg = Tensor::run_backward(&[&penalty], &wt, false, false);
    for ((n, _), d) in weights.iter().zip(&dg) {
        close(
            &format!("{name} d|dx|^2/d {n}"),
            d,
            &r[&format!("dbl_grad.{n}")],
        );
    }

    // One train-mode step: logits (dropout drawn from the same seed), gradients, BN running
    // statistics, and SGD through a tch optimizer built on the model's var store.
    let sgd = &e["sgd"];
    let mut opt = nn::Sgd {
        momentum: sgd["momentum"].as_f64().unwrap(),
        dampening: 0.0,
        wd: sgd["weight_decay"].as_f64().unwrap(),
        nesterov: false,
    }
    .build(&model.vs, sgd["lr"].as_f64().unwrap())
    .unwrap();
    tch::manual_seed(e["train_seed"].as_i64().unwrap());
    let xt = x.copy().set_requires_grad(true);
    let logits = model.forward_t(&xt, true);
    close(&format!("{name} train logits"), &logits, &r["train_logits"]);
    opt.zero_grad();
    ce(&logits, y).backward();
    close(
        &format!("{name} train d loss/dx"),
        &xt.grad(),
        &r["train_grad_x"],
    );
    for (n, p) in &params {
        close(
            &format!("{name} train d loss/d {n}"),
            &p.grad(),
            &r[&format!("train_grad.{n}")],
        );
    }
    for (n, b) in model.buffers() {
        let want = &r[&format!("train_buffers.{n}")];
        assert_eq!(b.kind(), want.kind(), "{name}: buffer {n} dtype");
        close(&format!("{name} buffer {n} after a train pass"), &b, want);
    }
    opt.step();
    for (n, p) in &params {
        close(
            &format!("{name} {n} after one SGD step"),
            p,
            &r[&format!("sgd.{n}")],
        );
    }
    // Back in eval mode the module uses the updated running statistics, and an eval pass
    // leaves them alone.
    let before: Vec<Tensor> = model.buffers().iter().map(|(_, b)| b.copy()).collect();
    let _ = tch::no_grad(|| model.forward_t(x, false));
    for ((n, b), old) in model.buffers().iter().zip(&before) {
        assert!(b.equal(old), "{name}: eval pass changed buffer {n}");
    }
}

#[test]
fn torchscript_modules_match_pytorch() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("torchscript_modules_match_pytorch") else {
        return;
    };
    let all = manifest(dir);
    assert_eq!(all.len(), 6);
    for e in &all {
        eprintln!("checking {}", e["name"]);
        check_against_pytorch(dir, e);
    }
}

/// Copies every tensor of `from` (by name) into `to`'s variable of the same name.
fn copy_by_name(from: &Model, to: &Model) {
    let src: HashMap<String, Tensor> = from.state_dict().into_iter().collect();
    tch::no_grad(|| {
        for (n, t) in to.state_dict() {
            let s = src
                .get(&n)
                .unwrap_or_else(|| panic!("script model lacks {n}"));
            t.shallow_clone().copy_(s);
        }
    });
}

#[test]
fn scripted_twins_compute_like_the_zoo() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("scripted_twins_compute_like_the_zoo") else {
        return;
    };
    for (name, spec) in [
        ("lenet-script", ModelSpec::fashion_mnist(Arch::Lenet)),
        ("resnet20-script", ModelSpec::cifar10(Arch::Resnet20)),
        ("resnet20-trace", ModelSpec::cifar10(Arch::Resnet20)),
    ] {
        let script = load(dir, name);
        let zoo = Model::new(spec.clone(), Device::Cpu).unwrap();
        copy_by_name(&script, &zoo);
        let x = common::random_input(&spec, 3);
        let (a, b) = tch::no_grad(|| (zoo.forward_t(&x, false), script.forward_t(&x, false)));
        close(&format!("{name}: zoo vs script eval logits"), &a, &b);
        if name.ends_with("-script") {
            let (a, b) = tch::no_grad(|| (zoo.forward_t(&x, true), script.forward_t(&x, true)));
            close(&format!("{name}: zoo vs script train logits"), &a, &b);
            let zb: HashMap<String, Tensor> = zoo.buffers().into_iter().collect();
            for (n, t) in script.buffers() {
                if let Some(z) = zb.get(&n) {
                    close(&format!("{name}: buffer {n}"), z, &t);
                }
            }
        }
    }
}

#[test]
fn weights_files_clones_and_fresh_copies() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("weights_files_clones_and_fresh_copies") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = load(dir, "cnn-script");
    let x = Tensor::rand([6, 3, 16, 16], (Kind::Float, Device::Cpu));
    // Change weights and buffers from the file's.
    tch::no_grad(|| {
        for (_, p) in model.parameters() {
            let _ = p.shallow_clone().g_add_(&(p.randn_like() * 0.05));
        }
        let _ = model.forward_t(&x, true);
    });
    let eval = tch::no_grad(|| model.forward_t(&x, false));

    // Safetensors state dict, loadable into another instance.
    let st = tmp.path().join("cnn.safetensors");
    model.save(&st).unwrap();
    let keys = sorted(common::read_map(&st).into_keys().collect());
    let ours = sorted(model.state_dict().into_iter().map(|(n, _)| n).collect());
    assert_eq!(keys, ours);
    assert!(keys.contains(&"bn1.running_mean".to_string()), "{keys:?}");
    let mut other = load(dir, "cnn-script");
    other.load(&st).unwrap();
    close(
        "state dict reloaded",
        &tch::no_grad(|| other.forward_t(&x, false)),
        &eval,
    );

    // Clones are equal and independent.
    let clone = model.try_clone().unwrap();
    assert!(clone.is_torchscript());
    assert_eq!(clone.torchscript_path(), model.torchscript_path());
    close("clone", &tch::no_grad(|| clone.forward_t(&x, false)), &eval);
    tch::no_grad(|| {
        let _ = clone.forward_t(&x, true);
        for (_, p) in clone.parameters() {
            let _ = p.shallow_clone().fill_(0.5);
        }
    });
    close(
        "original after the clone changed",
        &tch::no_grad(|| model.forward_t(&x, false)),
        &eval,
    );
    let mut into = load(dir, "cnn-script");
    into.copy_from(&model).unwrap();
    close(
        "copy_from",
        &tch::no_grad(|| into.forward_t(&x, false)),
        &eval,
    );

    // A fresh copy is re-initialised with PyTorch's layer defaults.
    tch::manual_seed(3);
    let fresh = model.fresh_like().unwrap();
    let st: HashMap<String, Tensor> = fresh.state_dict().into_iter().collect();
    assert_eq!(st["bn1.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    assert_eq!(st["bn1.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert_eq!(
        st["bn1.running_var"].mean(Kind::Float).double_value(&[]),
        1.0
    );
    assert_eq!(st["bn1.num_batches_tracked"].int64_value(&[]), 0);
    let bound = 1.0 / (3.0f64 * 9.0).sqrt();
    let w = &st["conv1.weight"];
    assert!(w.abs().max().double_value(&[]) <= bound);
    assert!(
        !w.equal(&model.state_dict()[0].1),
        "conv1.weight was not redrawn"
    );

    // A zoo model's weights cannot be written as TorchScript, a script model's can.
    let zoo = Model::new(ModelSpec::fashion_mnist(Arch::Lenet), Device::Cpu).unwrap();
    let err = zoo.save_torchscript(tmp.path().join("zoo.pt")).unwrap_err();
    assert!(err.to_string().contains("save_torchscript"), "{err}");
}

#[test]
fn saved_torchscript_reloads_here_and_in_pytorch() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("saved_torchscript_reloads_here_and_in_pytorch") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = entry(dir, "cnn-script");
    let model = load(dir, "cnn-script");
    let x = Tensor::rand([5, 3, 16, 16], (Kind::Float, Device::Cpu));
    // Train a little so weights and running statistics differ from the file's.
    let mut opt = nn::Sgd::default().build(&model.vs, 0.1).unwrap();
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4]);
    for _ in 0..2 {
        let loss = ce(&model.forward_t(&x, true), &y);
        opt.backward_step(&loss);
    }
    let path = tmp.path().join("trained.pt");
    model.save_torchscript(&path).unwrap();
    let eval = tch::no_grad(|| model.forward_t(&x, false));

    let back = Model::from_torchscript(&path, options(&e), Device::Cpu).unwrap();
    close(
        "reloaded logits",
        &tch::no_grad(|| back.forward_t(&x, false)),
        &eval,
    );
    let a: BTreeMap<String, Tensor> = model.state_dict().into_iter().collect();
    let b: BTreeMap<String, Tensor> = back.state_dict().into_iter().collect();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (n, t) in &a {
        assert!(t.equal(&b[n]), "{n} changed through save_torchscript");
    }

    // PyTorch sees the same module: buffers listed as buffers again, same logits.
    let io = tmp.path().join("io.safetensors");
    Tensor::write_safetensors(&[("x", &x)], &io).unwrap();
    let script = r#"
import json, sys
import torch
from safetensors.torch import load_file, save_file
m = torch.jit.load(sys.argv[1])
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    y = m(x)
save_file({"logits": y.contiguous()}, sys.argv[3])
json.dump({"training": m.training,
           "params": [n for n, _ in m.named_parameters()],
           "buffers": [n for n, _ in m.named_buffers()]}, open(sys.argv[4], "w"))
"#;
    let out = tmp.path().join("out.safetensors");
    let info = tmp.path().join("info.json");
    let status = Command::new(common::python().unwrap())
        .args(["-c", script])
        .args([&path, &io, &out, &info])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    close(
        "PyTorch logits of the saved module",
        &common::read_map(&out)["logits"],
        &eval,
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
    assert_eq!(info["training"], false);
    assert_eq!(names(&info["params"]), names(&e["params"]));
    assert_eq!(
        sorted(names(&info["buffers"])),
        sorted(names(&e["buffers"]))
    );
}

#[test]
fn train_and_eval_mode_switch_per_call() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("train_and_eval_mode_switch_per_call") else {
        return;
    };
    let model = load(dir, "cnn-script");
    let x = Tensor::rand([8, 3, 16, 16], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        let e1 = model.forward_t(&x, false);
        let e2 = model.forward_t(&x, false);
        assert!(e1.equal(&e2), "eval mode must be deterministic");
        tch::manual_seed(1);
        let t1 = model.forward_t(&x, true);
        let t2 = model.forward_t(&x, true);
        assert!(!t1.equal(&t2), "dropout must draw new masks in train mode");
        let e3 = model.forward_t(&x, false);
        let e4 = model.forward_t(&x, false);
        assert!(e3.equal(&e4), "back in eval mode");
        assert!(
            !e3.equal(&e1),
            "train passes must have updated the running statistics"
        );
        let counters: Vec<i64> = model
            .buffers()
            .iter()
            .filter(|(n, _)| n.ends_with("num_batches_tracked"))
            .map(|(_, t)| t.int64_value(&[]))
            .collect();
        assert_eq!(counters.len(), 2);
        assert!(counters.windows(2).all(|w| w[0] == w[1]));
    });
}

#[test]
fn refuses_what_is_not_a_classifier_module() {
    let _torch = torch_lock();
    let Some(dir) = fixtures("refuses_what_is_not_a_classifier_module") else {
        return;
    };
    let opts = ScriptOptions::new(3, (16, 16));
    let load_err = |file: &str, opts: ScriptOptions| -> Error {
        Model::from_torchscript(dir.join(file), opts, Device::Cpu).unwrap_err()
    };
    let e = load_err("bad-statedict.pt", opts.clone());
    assert!(e.to_string().contains("not a TorchScript module"), "{e}");
    let e = load_err("bad-shape.pt", opts.clone());
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = load_err("bad-tuple.pt", opts.clone());
    assert!(e.to_string().contains("forward"), "{e}");
    // Geometry the module cannot take, and a class count it does not output.
    let e = load_err("cnn-script.pt", ScriptOptions::new(1, (16, 16)));
    assert!(e.to_string().contains("in_channels"), "{e}");
    let e = load_err("cnn-script.pt", opts.clone().with_num_classes(10));
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("5 logits"),
        "{e}"
    );
    let e = load_err(
        "cnn-script.pt",
        opts.clone().with_normalization(vec![0.5], vec![0.2]),
    );
    assert!(matches!(e, Error::Config { .. }), "{e}");
    if !tch::Cuda::is_available() {
        let e = Model::from_torchscript(dir.join("cnn-script.pt"), opts, Device::Cuda(0));
        assert!(e.is_err());
    }

    // Inputs that do not fit are errors through try_forward_t.
    let model = load(dir, "cnn-script");
    let bad = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(
        model.try_forward_t(&bad, false).unwrap_err(),
        Error::Shape { .. }
    ));
    let err = model
        .require_feature_head("unlearning method be")
        .unwrap_err();
    assert!(err.to_string().contains("be") && err.to_string().contains("TorchScript"));
}

#[test]
fn file_errors_need_no_python() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let opts = ScriptOptions::new(3, (32, 32));
    let e = Model::from_torchscript(tmp.path().join("missing.pt"), opts.clone(), Device::Cpu)
        .unwrap_err();
    assert!(e.to_string().contains("file not found"), "{e}");
    let text = tmp.path().join("notes.pt");
    std::fs::write(&text, "not a model").unwrap();
    let e = Model::from_torchscript(&text, opts.clone(), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("not a zip archive"), "{e}");
    // A safetensors file (e.g. our own weights) is not TorchScript either.
    let st = tmp.path().join("w.safetensors");
    Model::new(ModelSpec::cifar10(Arch::Resnet20), Device::Cpu)
        .unwrap()
        .save(&st)
        .unwrap();
    let e = Model::from_torchscript(&st, opts.clone(), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("not a TorchScript module"), "{e}");
    let e = Model::from_torchscript(&st, ScriptOptions::new(0, (32, 32)), Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    // A torchscript spec cannot be built.
    let mut spec = ModelSpec::cifar10(Arch::Resnet20);
    spec.arch = Arch::TorchScript;
    let e = Model::new(spec, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("from_torchscript"), "{e}");
}

#[test]
fn bench_runs_on_zoo_and_script_models() {
    let _torch = torch_lock();
    let zoo = Model::new(ModelSpec::fashion_mnist(Arch::Lenet), Device::Cpu).unwrap();
    let before: Vec<Tensor> = zoo.state_dict().iter().map(|(_, t)| t.copy()).collect();
    let t = bench::forward_backward(&zoo, 4, 2).unwrap();
    assert_eq!((t.batch, t.iters, t.arch.as_str()), (4, 2, "lenet"));
    assert!(t.step_s >= 0.0 && t.samples_per_s >= 0.0);
    for ((n, now), old) in zoo.state_dict().iter().zip(&before) {
        assert!(now.equal(old), "bench changed {n}");
    }
    assert!(bench::forward_backward(&zoo, 0, 1).is_err());
    let Some(dir) = fixtures("bench_runs_on_zoo_and_script_models") else {
        return;
    };
    let script = load(dir, "resnet20-script");
    let before: Vec<Tensor> = script.buffers().iter().map(|(_, t)| t.copy()).collect();
    let t = bench::forward_backward(&script, 4, 1).unwrap();
    assert_eq!(t.arch, "torchscript");
    for ((n, now), old) in script.buffers().iter().zip(&before) {
        assert!(now.equal(old), "bench changed buffer {n}");
    }
}

#[test]
fn committed_fixture_loads_without_python() {
    let _torch = torch_lock();
    // tests/fixtures/torchscript/small-cnn.pt: export_torchscript.py --fixture (1x12x12, 4
    // classes, batch norm and dropout).
    let path = small_cnn_fixture();
    let opts: ScriptOptions =
        serde_json::from_str(r#"{"in_channels": 1, "input_size": [12, 12]}"#).unwrap();
    assert_eq!(opts, ScriptOptions::new(1, (12, 12)));
    assert!(
        serde_json::from_str::<ScriptOptions>(r#"{"in_channels": 1, "size": [1, 1]}"#).is_err()
    );
    let model = Model::from_torchscript(&path, opts.clone(), Device::Cpu).unwrap();
    assert_eq!(model.spec.num_classes, 4);
    assert_eq!(model.torchscript_path(), Some(path.as_path()));
    let params: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        params,
        [
            "conv1.weight",
            "conv1.bias",
            "bn1.weight",
            "bn1.bias",
            "conv2.weight",
            "bn2.weight",
            "bn2.bias",
            "head.weight",
            "head.bias"
        ]
    );
    let buffers: Vec<String> = model.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        buffers,
        [
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "bn2.running_mean",
            "bn2.running_var",
            "bn2.num_batches_tracked"
        ]
    );
    let summary = model.summary();
    assert_eq!(summary.len(), 15);
    assert_eq!(summary.iter().filter(|l| l.trainable).count(), 9);

    // Trains through an optimizer on the var store; running statistics follow train passes.
    let x = Tensor::rand([8, 1, 12, 12], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
    let w0 = model.parameters()[0].1.copy();
    let mut opt = nn::Sgd::default().build(&model.vs, 0.1).unwrap();
    opt.backward_step(&ce(&model.try_forward_t(&x, true).unwrap(), &y));
    assert!(
        !model.parameters()[0].1.equal(&w0),
        "SGD did not move conv1.weight"
    );
    let counter = &model.buffers()[2].1;
    assert_eq!(counter.int64_value(&[]), 1);

    // Written back as TorchScript with the trained state, it loads again.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trained.pt");
    model.save_torchscript(&out).unwrap();
    let back = Model::from_torchscript(&out, opts, Device::Cpu).unwrap();
    for ((n, a), (_, b)) in model.state_dict().iter().zip(back.state_dict()) {
        assert!(a.equal(&b), "{n}");
    }
    let clone = back.try_clone().unwrap();
    let (a, b) = tch::no_grad(|| (back.forward_t(&x, false), clone.forward_t(&x, false)));
    assert!(a.equal(&b));
}

/// An archive made from the committed fixture with `edit` applied to its entries (valid CRCs),
/// written to `dir/name`.
fn edited_fixture(
    dir: &Path,
    name: &str,
    mut edit: impl FnMut(&str, Vec<u8>) -> Vec<u8>,
) -> PathBuf {
    let bytes = std::fs::read(small_cnn_fixture()).unwrap();
    let out =
        rustworthy_models::script::rewrite_archive_entries(&bytes, |n, d| edit(n, d)).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}

/// A line inserted before the `return` of the linear layer's forward.
fn with_line(text: Vec<u8>, line: &str) -> Vec<u8> {
    let t = String::from_utf8(text).unwrap();
    let at = t.find("    return").expect("a return in linear.py");
    format!("{}    {line}\n{}", &t[..at], &t[at..]).into_bytes()
}

#[test]
fn damaged_archives_are_refused_without_aborting() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let opts = ScriptOptions::new(1, (12, 12));
    let refuse = |p: &Path, why: &str| {
        let e = Model::from_torchscript(p, opts.clone(), Device::Cpu).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains(why), "expected `{why}` in: {msg}");
    };
    // Found by the fuzzer: a damaged code entry (its CRC no longer matches). libtorch used to
    // fail to compile it and then, formatting the error, read a source-range table and abort.
    let regress = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fuzz/regress-torchscript-abort.pt");
    refuse(&regress, "CRC mismatch");
    // The same two faults behind valid CRCs: code that does not compile and a garbage table.
    let p = edited_fixture(tmp.path(), "bad-code.pt", |n, d| {
        if n.ends_with("modules/linear.py") {
            with_line(d, "_x = (1 +")
        } else if n.ends_with(".debug_pkl") {
            vec![0x80, 0x02, 0x6f, 0x6f, 0x6f]
        } else {
            d
        }
    });
    refuse(&p, "libtorch cannot load it");
    // Nesting that would overflow any stack in libtorch's recursive compiler.
    let p = edited_fixture(tmp.path(), "deep.pt", |n, d| {
        if n.ends_with("modules/linear.py") {
            with_line(
                d,
                &format!("_x = {}1{}", "[".repeat(50_000), "]".repeat(50_000)),
            )
        } else {
            d
        }
    });
    refuse(&p, "nested deeper than 200");
    // A string length in data.pkl promising 2 GiB: refused before libtorch allocates it.
    let p = edited_fixture(tmp.path(), "long-string.pt", |n, mut d| {
        if n.ends_with("data.pkl") {
            let at = d.iter().position(|&c| c == b'X').unwrap();
            d[at + 1..at + 5].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        }
        d
    });
    refuse(&p, "but");
    // Found by the fuzzer: a tensor record cut short behind a valid CRC (libtorch read past it
    // and crashed).
    let p = edited_fixture(tmp.path(), "short-record.pt", |n, d| {
        if n.ends_with("data/14") {
            Vec::new()
        } else {
            d
        }
    });
    refuse(
        &p,
        "storage `14` declares 4 element(s) of 4 bytes but its record holds 0 bytes",
    );
    // A tensor view reaching past its storage.
    let p = edited_fixture(tmp.path(), "long-view.pt", |n, d| {
        if n.ends_with("data.pkl") {
            // conv1.weight's size (8, 1, 3, 3) becomes (9, 1, 3, 3).
            let pat = [b'K', 8, b'K', 1, b'K', 3, b'K', 3];
            let at = d.windows(8).position(|w| w == pat).expect("conv1's size");
            let mut d = d;
            d[at + 1] = 9;
            d
        } else {
            d
        }
    });
    refuse(&p, "reach past the storage's 72 elements");
    // A 0-dim tensor (a batch-norm step counter) at an offset past its one-element storage.
    let p = edited_fixture(tmp.path(), "scalar-offset.pt", |n, mut d| {
        if n.ends_with("data.pkl") {
            let from = d.windows(11).position(|w| w == b"LongStorage").unwrap();
            let pat = b"K\x00(t(t";
            let at = from + d[from..].windows(pat.len()).position(|w| w == pat).unwrap();
            d[at + 1] = 5;
        }
        d
    });
    refuse(&p, "offset 5 is past the storage's 1 elements");
    // A long but valid expression: 3,000 chained additions overflow a 2 MiB thread stack in
    // libtorch's compiler (this test runs on one); the loader's own thread has room for it.
    let p = edited_fixture(tmp.path(), "long-expr.pt", |n, d| {
        if n.ends_with("modules/linear.py") {
            with_line(d, &format!("_x = 1{}", " + 1".repeat(3_000)))
        } else {
            d
        }
    });
    let m = Model::from_torchscript(&p, opts.clone(), Device::Cpu).unwrap();
    assert_eq!(m.spec.num_classes, 4);
    // Source-range tables are left out of what libtorch loads; the module still works and is
    // written back with tables of its own.
    let saved = tmp.path().join("saved.pt");
    m.save_torchscript(&saved).unwrap();
    let mut tables = 0;
    rustworthy_models::script::rewrite_archive_entries(&std::fs::read(&saved).unwrap(), |n, d| {
        tables += n.ends_with(".debug_pkl") as usize;
        d
    })
    .unwrap();
    assert!(
        tables > 0,
        "libtorch writes source-range tables for the loaded code"
    );
    let back = Model::from_torchscript(&saved, opts, Device::Cpu).unwrap();
    assert_eq!(back.spec.num_classes, 4);
}
