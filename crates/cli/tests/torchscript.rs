//! Models users bring from PyTorch: torchvision's ResNet-18 and a custom CNN, trained briefly on
//! Fashion-MNIST and saved with `torch.jit.script` by scripts/ref/torchscript_attack_ref.py, are
//! attacked with `rustworthy attack --attack pgd` and agree with torchattacks' PGD on the same
//! images and settings; `unlearn` (ft, ga, rl, salun) and `robust-eval` run on them.
//!
//! Needs the project's Python with torchvision and torchattacks (scripts/setup.sh installs
//! them): skipped without it unless RUSTWORTHY_REQUIRE_PYTHON=1.

mod common;

use common::{fashion_mnist_present, json, run, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let ok = p.is_file()
        && Command::new(&p)
            .args(["-c", "import torchvision, torchattacks"])
            .status()
            .is_ok_and(|s| s.success());
    match (
        ok,
        std::env::var("RUSTWORTHY_REQUIRE_PYTHON").as_deref() == Ok("1"),
    ) {
        (true, _) => Some(p),
        (false, true) => {
            panic!("RUSTWORTHY_REQUIRE_PYTHON=1 but .venv lacks torchvision/torchattacks")
        }
        (false, false) => {
            eprintln!(
                "skipped: .venv with torchvision and torchattacks not found (scripts/setup.sh)"
            );
            None
        }
    }
}

fn pgd(model: &Path, data: &str, random_start: bool, out: &Path) -> f64 {
    let mut args = vec![
        "attack",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data,
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "10",
        "--n",
        "300",
        "--no-early-stop",
        "--attack-all",
        "--device",
        "cpu",
        "--progress",
        "quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    if !random_start {
        args.push("--no-random-start");
    }
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&out.join("report.json"))["metrics"]["robust_accuracy"]
        .as_f64()
        .unwrap()
}

#[test]
fn scripted_pytorch_models_are_attacked_unlearned_and_evaluated() {
    if !fashion_mnist_present() {
        return;
    }
    let Some(py) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = Command::new(&py)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/ref/torchscript_attack_ref.py"),
        )
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = json(&dir.join("reference.json"));
    let data = format!(
        "file:{},{}",
        dir.join("train.npz").display(),
        dir.join("test.npz").display()
    );
    for name in ["cnn", "resnet18"] {
        let model = dir.join(format!("{name}.pt"));
        let r = &reference[name];
        // Deterministic PGD (no random start): the same attack, so the same robust accuracy.
        let ours = pgd(&model, &data, false, &dir.join(format!("pgd-{name}")));
        let theirs = r["pgd_no_random_start"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 0.5,
            "{name}: PGD {ours} vs torchattacks {theirs}"
        );
        let rep = json(&dir.join(format!("pgd-{name}/report.json")));
        let clean = rep["metrics"]["clean_accuracy"].as_f64().unwrap();
        assert!(
            (clean - r["clean_accuracy"].as_f64().unwrap()).abs() < 1e-3,
            "{name}: {clean}"
        );
        assert!(
            clean > 60.0 && ours < clean - 20.0,
            "{name}: clean {clean}, PGD {ours}"
        );
        // With random starts (different draws on each side), within sampling noise; on the
        // CNN only (the costly ResNet-18 runs the deterministic comparison above).
        if name == "cnn" {
            let ours = pgd(&model, &data, true, &dir.join(format!("pgd-rs-{name}")));
            let theirs = r["pgd_random_start"].as_f64().unwrap();
            assert!(
                (ours - theirs).abs() <= 2.0,
                "{name}: PGD {ours} vs torchattacks {theirs}"
            );
        }

        // Every method on the CNN; on ResNet-18 (the costly one on CPU) SalUn, which runs the
        // saliency pass and the relabelled loop of RL on top of the shared machinery.
        let methods: &[&str] = if name == "cnn" {
            &["ft", "ga", "rl", "salun"]
        } else {
            &["salun"]
        };
        for &method in methods {
            let out = dir.join(format!("{name}-{method}"));
            let o = run(&[
                "unlearn",
                "--model",
                model.to_str().unwrap(),
                "--dataset",
                &data,
                "--method",
                method,
                "--forget",
                "random:0.1",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--progress",
                "quiet",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{name} {method}: {}", stderr(&o));
            let m = &json(&out.join("report.json"))["metrics"];
            assert_eq!(m["forget_size"], 300, "{name} {method}");
            let ta = m["unlearned"]["ta"].as_f64().unwrap();
            assert!(ta > 40.0, "{name} {method}: TA {ta}");
            // The unlearned module is written back as TorchScript too.
            assert!(out.join("model.pt").is_file());
        }
        // The robust-evaluation suite on the CNN (on ResNet-18 its Square queries alone take
        // 8 s of CPU for nothing the CNN does not already show).
        if name != "cnn" {
            continue;
        }
        let out = dir.join(format!("robust-{name}"));
        let o = run(&[
            "robust-eval",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            &data,
            "--eps",
            "0.1",
            "--suite",
            "quick",
            "--n",
            "10",
            "--curve",
            "0.2",
            "--device",
            "cpu",
            "--progress",
            "quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let m = &json(&out.join("report.json"))["metrics"];
        assert!(
            m["worst_case_accuracy"].as_f64().unwrap()
                <= m["pgd"]["robust_accuracy"].as_f64().unwrap()
        );
    }
    // A model file that is neither ours nor TorchScript needs its architecture.
    let o = run(&[
        "eval",
        "--model",
        dir.join("train.npz").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
}

/// A ResNet-18 checkpoint written by PyTorch in the Unlearn-Saliency layout (1-channel input,
/// `normalize.mean/std` buffers, a `{'state_dict', 'epoch', 'optimizer', ...}` dict) is
/// evaluated with `--arch resnet18` alone and gives PyTorch's eval-mode logits; a `.pth` whose
/// pickle calls `os.system` is refused and nothing runs.
#[test]
fn pytorch_checkpoints_load_unchanged_and_malicious_ones_are_refused() {
    let Some(py) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let marker = dir.join("pwned");
    let o = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ref/export_foreign.py"))
        .args(["--out", dir.to_str().unwrap(), "--parts", "saliency"])
        .args(["--malicious", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The exported inputs as a dataset file (labels are irrelevant to the logits).
    let io =
        rustworthy::tch::Tensor::read_safetensors(dir.join("saliency.io.safetensors")).unwrap();
    let get = |k: &str| io.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    let (x, want) = (get("input"), get("logits"));
    // Repeated ten times, so that every one of the 10 classes has a (dummy) label.
    let n = x.size()[0];
    let x10 = x.repeat([10, 1, 1, 1]);
    let y = rustworthy::tch::Tensor::arange(
        10 * n,
        (rustworthy::tch::Kind::Int64, rustworthy::tch::Device::Cpu),
    )
    .remainder(10);
    let data_file = dir.join("inputs.safetensors");
    rustworthy::tch::Tensor::write_safetensors(&[("x", &x10), ("y", &y)], &data_file).unwrap();
    let data = format!("file:{},{}", data_file.display(), data_file.display());
    let logits = dir.join("logits.safetensors");
    let o = run(&[
        "eval",
        "--model",
        dir.join("saliency_ckpt.pth.tar").to_str().unwrap(),
        "--arch",
        "resnet18",
        "--dataset",
        &data,
        "--save-logits",
        logits.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        dir.join("eval").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = rustworthy::tch::Tensor::read_safetensors(&logits).unwrap();
    let got = got
        .iter()
        .find(|(k, _)| k == "logits")
        .unwrap()
        .1
        .narrow(0, 0, n);
    let diff = (&got - &want).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "logits differ from PyTorch's by {diff}");
    // A pickle that names os.system is refused by name; the command it carries never runs.
    for evil in ["evil_os.pth", "evil_eval.pth", "evil_os_legacy.pth"] {
        let o = run(&[
            "eval",
            "--model",
            dir.join(evil).to_str().unwrap(),
            "--arch",
            "resnet18",
            "--dataset",
            &data,
            "--device",
            "cpu",
            "--out",
            dir.join("eval-evil").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{evil}");
        let e = stderr(&o);
        assert!(e.contains("refused global"), "{evil}: {e}");
        assert!(!marker.exists(), "{evil} ran its payload");
    }
}
