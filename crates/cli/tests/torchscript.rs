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
        // With random starts (different draws on each side), within sampling noise.
        let ours = pgd(&model, &data, true, &dir.join(format!("pgd-rs-{name}")));
        let theirs = r["pgd_random_start"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 2.0,
            "{name}: PGD {ours} vs torchattacks {theirs}"
        );

        for method in ["ft", "ga", "rl", "salun"] {
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
        let n = if name == "cnn" { "10" } else { "4" };
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
            n,
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
