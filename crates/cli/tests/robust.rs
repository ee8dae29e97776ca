//! `rustworthy train --adv`, `attack` and `robust-eval` end to end on real Fashion-MNIST, and the
//! errors a user sees for bad robustness settings.

mod common;

use common::{fashion_mnist_present, json, run, stderr};
use std::path::Path;

fn train(out: &Path, adv: &str) {
    let mut args = vec![
        "train",
        "--preset",
        "fmnist-lenet-adv",
        "--adv",
        adv,
        "--train-subset",
        "6000",
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--progress",
        "quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    if adv != "none" {
        args.extend(["--monitor-samples", "200"]);
    }
    let o = run(&args);
    assert!(o.status.success(), "train --adv {adv}: {}", stderr(&o));
}

fn pgd_accuracy(model: &Path, out: &Path) -> f64 {
    let o = run(&[
        "attack",
        "--model",
        model.to_str().unwrap(),
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "20",
        "--n",
        "300",
        "--device",
        "cpu",
        "--progress",
        "quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&out.join("report.json"));
    assert_eq!(r["command"], "attack");
    assert!(r["metrics"]["max_violation"].as_f64().unwrap() <= 1e-5);
    r["metrics"]["robust_accuracy"].as_f64().unwrap()
}

#[test]
fn adversarial_training_attack_and_robust_eval_on_fashion_mnist() {
    if !fashion_mnist_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let std_dir = tmp.path().join("standard");
    let adv_dir = tmp.path().join("fast");
    train(&std_dir, "none");
    train(&adv_dir, "fast");
    let r = json(&adv_dir.join("report.json"));
    assert_eq!(r["config"]["adv"]["method"], "fast");
    let hist = r["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3);
    for h in hist {
        let p = h["extra"]["val_pgd_accuracy"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&p));
    }
    assert!(json(&std_dir.join("report.json"))["config"]["adv"].is_null());

    let standard = pgd_accuracy(&std_dir.join("model.safetensors"), &tmp.path().join("a1"));
    let robust = pgd_accuracy(&adv_dir.join("model.safetensors"), &tmp.path().join("a2"));
    assert!(
        robust > standard + 15.0,
        "Fast-AT PGD accuracy {robust}% vs standard {standard}%"
    );

    let ev = tmp.path().join("eval");
    let o = run(&[
        "robust-eval",
        "--model",
        adv_dir.join("model.safetensors").to_str().unwrap(),
        "--eps",
        "0.1",
        "--suite",
        "quick",
        "--n",
        "100",
        "--curve",
        "0.05,0.1,0.5",
        "--device",
        "cpu",
        "--out",
        ev.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&ev.join("report.json"));
    let m = &r["metrics"];
    let clean = m["clean_accuracy"].as_f64().unwrap();
    let pgd = m["pgd"]["robust_accuracy"].as_f64().unwrap();
    let ens = m["ensemble_accuracy"].as_f64().unwrap();
    let worst = m["worst_case_accuracy"].as_f64().unwrap();
    assert!(clean > 60.0 && pgd > 10.0 && pgd < clean, "{m}");
    assert!(worst <= pgd && worst <= ens, "{m}");
    let curve = m["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 3);
    assert!(
        curve[2][1].as_f64().unwrap() < 15.0,
        "accuracy at eps 0.5: {curve:?}"
    );
    let csv = std::fs::read_to_string(ev.join("per_sample.csv")).unwrap();
    assert_eq!(csv.lines().count(), 101);
    assert!(ev.join("accuracy_vs_eps.png").is_file());
    assert_eq!(r["config"]["suite"]["name"], "quick");
}

#[test]
fn bad_robustness_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.safetensors");
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--eps", "0.1"], "--adv"),
        (&["train", "--adv", "fast", "--eps=-1"], "adv.eps"),
        (
            &["train", "--adv", "pgd", "--eps", "0.1", "--adv-lambda", "1"],
            "adv.lambda",
        ),
        (&["train", "--adv", "magic", "--eps", "0.1"], "magic"),
        (
            &["attack", "--model", "m", "--attack", "pgd", "--eps", "0"],
            "eps",
        ),
        (&["attack", "--model", "m", "--attack", "pgd"], "--eps"),
        (
            &[
                "attack", "--model", "m", "--attack", "pgd", "--eps", "0.1", "--steps", "0",
            ],
            "steps",
        ),
        (
            &[
                "attack", "--model", "m", "--attack", "teleport", "--eps", "0.1",
            ],
            "teleport",
        ),
        (&["attack", "--model", "m", "--attack", "cw"], "l2"),
        (
            &[
                "attack", "--model", "m", "--attack", "pgd", "--eps", "0.1", "--norm", "l7",
            ],
            "l7",
        ),
        (
            &[
                "robust-eval",
                "--model",
                "m",
                "--eps",
                "0.1",
                "--suite",
                "huge",
            ],
            "huge",
        ),
        (
            &[
                "robust-eval",
                "--model",
                "m",
                "--eps",
                "0.1",
                "--curve=0.1,-2",
            ],
            "curve",
        ),
    ];
    for (args, needle) in cases {
        let mut a: Vec<&str> = args.to_vec();
        if a[0] == "train" {
            a.extend(["--out", tmp.path().to_str().unwrap(), "--device", "cpu"]);
        }
        let o = run(&a);
        assert!(!o.status.success(), "{a:?} should fail");
        let e = stderr(&o);
        assert!(
            e.contains(needle),
            "{a:?}: error should mention {needle}: {e}"
        );
        assert!(!e.contains("panicked"), "{a:?} panicked: {e}");
    }
    let o = run(&[
        "attack",
        "--model",
        missing.to_str().unwrap(),
        "--eps",
        "0.1",
    ]);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn prune_command_on_fashion_mnist() {
    if !fashion_mnist_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("omp");
    let o = run(&[
        "prune",
        "--method",
        "omp",
        "--sparsity",
        "0.9",
        "--epochs",
        "2",
        "--train-subset",
        "6000",
        "--finetune-epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&out.join("report.json"));
    let res = &r["metrics"]["result"];
    assert!(
        (res["sparsity"].as_f64().unwrap() - 0.9).abs() < 1e-4,
        "{res}"
    );
    assert!(res["zero_fraction"].as_f64().unwrap() >= res["sparsity"].as_f64().unwrap() - 1e-12);
    assert!(res["test_accuracy"].as_f64().unwrap() > 55.0, "{res}");
    assert_eq!(
        res["layers"].as_object().unwrap().len(),
        5,
        "LeNet has 5 prunable layers"
    );
    assert!(out.join("masks.safetensors").is_file());
    for (args, needle) in [
        (
            vec!["prune", "--method", "omp", "--sparsity", "1.0"],
            "sparsity",
        ),
        (
            vec!["prune", "--method", "magic", "--sparsity", "0.5"],
            "method",
        ),
        (
            vec![
                "prune",
                "--method",
                "imp",
                "--sparsity",
                "0.5",
                "--rewind-epoch",
                "99",
            ],
            "rewind_epoch",
        ),
        (
            vec![
                "unlearn",
                "--model",
                "m",
                "--method",
                "ft",
                "--forget",
                "random:0.1",
                "--prune",
                "omp:1.5",
            ],
            "prune",
        ),
        (
            vec![
                "unlearn",
                "--model",
                "m",
                "--method",
                "ft",
                "--forget",
                "random:0.1",
                "--prune",
                "imp:0.5",
            ],
            "one-shot",
        ),
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}
