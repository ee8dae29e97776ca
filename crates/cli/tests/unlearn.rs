//! `rustworthy unlearn` and `rustworthy bench unlearn` end to end on small synthetic data.

mod common;

use common::{bin, json, run, stderr, train_args};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Synthetic data in Fashion-MNIST's layout and an MLP trained on it through the CLI.
fn trained(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    rustworthy::data::synthetic::write_synthetic_idx(&data, 4, 60, 25, 28, 0.3, 5).unwrap();
    let out = root.join("orig");
    let o = bin()
        .args(train_args("fmnist-mlp", &data, 4, Some(32), &out))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (data, out.join("model.safetensors"))
}

#[test]
fn unlearn_writes_model_scenario_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = trained(tmp.path());
    let out = tmp.path().join("ul");
    let o = run(&[
        "unlearn",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "rl",
        "--forget",
        "class:1",
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--data-dir",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--progress",
        "quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&out.join("report.json"));
    let before = &r["metrics"]["original"];
    let after = &r["metrics"]["unlearned"];
    // The original model knows class 1; after RL the class is forgotten.
    assert!(before["ua"].as_f64().unwrap() < 20.0, "{before}");
    assert!(after["ua"].as_f64().unwrap() > 80.0, "{after}");
    assert!(after["ra"].as_f64().unwrap() > 80.0, "{after}");
    assert!(after["rte_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["config"]["method"]["method"], "rl");
    assert_eq!(r["config"]["method"]["epochs"], 3);
    // Class-wise: the test set excludes the forgotten class (4 classes x 25 -> 75).
    assert_eq!(r["metrics"]["test_size"], 75);
    let sc = json(&out.join("scenario.json"));
    let forget = sc["forget"].as_array().unwrap();
    assert!(!forget.is_empty());
    assert_eq!(sc["forget_classes"], serde_json::json!([1]));
    assert!(out.join("model.safetensors").is_file() && out.join("model.json").is_file());

    // The saved scenario reloads as an explicit index list and gives the same split.
    let out2 = tmp.path().join("ul2");
    let spec = format!("indices:{}", out.join("scenario.json").display());
    let o = run(&[
        "unlearn",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "ga",
        "--forget",
        &spec,
        "--data-dir",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--progress",
        "quiet",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&out2.join("scenario.json"))["forget"], sc["forget"]);
}

#[test]
fn bad_unlearning_inputs_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = trained(tmp.path());
    let base = |forget: &str, method: &str| -> Output {
        run(&[
            "unlearn",
            "--model",
            model.to_str().unwrap(),
            "--method",
            method,
            "--forget",
            forget,
            "--data-dir",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--progress",
            "quiet",
            "--out",
            tmp.path().join("bad").to_str().unwrap(),
        ])
    };
    let idx = tmp.path().join("idx.txt");
    std::fs::write(&idx, "3\n999999\n").unwrap();
    let cases = [
        (format!("indices:{}", idx.display()), "ft", "out of range"),
        ("random:0".to_string(), "ft", "(0, 1)"),
        ("random:1".to_string(), "ft", "(0, 1)"),
        ("class:0,1,2,3".to_string(), "ft", "whole training set"),
        ("class:12".to_string(), "ft", "class 12"),
        // The synthetic data fills 4 of Fashion-MNIST's 10 classes: class 9 has no sample.
        ("class:9".to_string(), "ft", "forget set is empty"),
        ("random:0.1".to_string(), "forgetful", "forgetful"),
        ("sometimes".to_string(), "ft", "random:FRACTION"),
    ];
    for (forget, method, want) in cases {
        let o = base(&forget, method);
        assert_eq!(o.status.code(), Some(2), "{forget} {method}");
        assert!(stderr(&o).contains(want), "{forget}: {}", stderr(&o));
    }
    // A weights file without its sidecar cannot say what it is: its architecture is asked for
    // (a usage error).
    let bare = tmp.path().join("bare.safetensors");
    std::fs::copy(&model, &bare).unwrap();
    let o = run(&[
        "unlearn",
        "--model",
        bare.to_str().unwrap(),
        "--method",
        "ft",
        "--forget",
        "random:0.1",
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("sidecar") && stderr(&o).contains("--arch"),
        "{}",
        stderr(&o)
    );
    // A method setting that does not exist is named.
    let cfg = tmp.path().join("m.toml");
    std::fs::write(&cfg, "lr = 0.01\nmomentom = 0.9\n").unwrap();
    let o = run(&[
        "unlearn",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "ft",
        "--forget",
        "random:0.1",
        "--method-config",
        cfg.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ft.momentom"), "{}", stderr(&o));
}

#[test]
fn bench_writes_tables_plot_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    rustworthy::data::synthetic::write_synthetic_idx(&data, 4, 50, 20, 28, 0.3, 6).unwrap();
    let out = tmp.path().join("bench");
    let cfg = tmp.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
original = "fmnist-mlp"
original_epochs = 3
original_sets = ["data.train_subset=100"]
forget = "random:0.2"
methods = ["retrain", "ft", "salun"]
device = "cpu"
out = "{}"
[method.ft]
epochs = 1
batch_size = 32
[method.salun]
epochs = 1
batch_size = 32
"#,
            out.display()
        ),
    )
    .unwrap();
    let args = [
        "bench",
        "unlearn",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--progress",
        "quiet",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let res = json(&out.join("results.json"));
    let rows = res["results"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["retrain", "ft", "salun"]);
    assert!(rows[0]["gap"].is_null());
    for r in &rows[1..] {
        let g = r["gap"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&g), "{r}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| salun |") && md.contains("Avg. Gap"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    let png = std::fs::read(out.join("gap_vs_time.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // `original_sets` trained the original on a 100-image subset, and the scenario is drawn
    // from that subset: 20% forgotten, the rest retained.
    let sc = json(&out.join("scenario.json"));
    let (f, r) = (
        sc["forget"].as_array().unwrap().len(),
        sc["retain"].as_array().unwrap().len(),
    );
    assert_eq!((f, r), (20, 80), "forget {f}, retain {r}");
    let orig = json(&out.join("original").join("report.json"));
    assert_eq!(orig["config"]["data"]["train_subset"], 100);
    // A second run reuses the original model and every finished method.
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("reusing the original model"), "{e}");
    assert!(e.contains("salun: reusing"), "{e}");
    assert!(md.contains("method profile `reference`"), "{md}");
    assert_eq!(res["profile"], "reference");
    // The paper profile: its own folder, the same original model, SalUn's mixed stream.
    let mut paper_args = args.to_vec();
    paper_args.extend(["--profile", "paper", "--methods", "salun"]);
    let o = run(&paper_args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("reusing the original model"),
        "{}",
        stderr(&o)
    );
    let paper_out = tmp.path().join("bench-paper");
    let md = std::fs::read_to_string(paper_out.join("results.md")).unwrap();
    assert!(md.contains("method profile `paper`"), "{md}");
    let res = json(&paper_out.join("results.json"));
    assert_eq!(res["profile"], "paper");
    let salun = json(&paper_out.join("methods").join("salun.json"));
    assert_eq!(salun["result"]["config"]["forget_first"], false, "{salun}");
    // Unknown method settings in the bench file are named.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[method.ft]", "[method.ft]\nlrr = 1"),
    )
    .unwrap();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ft.lrr"), "{}", stderr(&o));
}

/// A model with one NaN weight: `eval` warns (terminal and report), every command that would
/// train, unlearn or attack it refuses, naming the tensor and the count.
#[test]
fn non_finite_weights_are_refused_or_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = trained(tmp.path());
    let weights: Vec<(String, rustworthy::tch::Tensor)> =
        rustworthy::tch::Tensor::read_safetensors(&model).unwrap();
    let poisoned: Vec<(String, rustworthy::tch::Tensor)> = weights
        .into_iter()
        .map(|(n, t)| {
            if n == "fc2.weight" {
                let t = t.copy();
                let _ = t.flatten(0, -1).get(3).fill_(f64::NAN);
                (n, t)
            } else {
                (n, t)
            }
        })
        .collect();
    rustworthy::tch::Tensor::write_safetensors(&poisoned, &model).unwrap();
    let d = data.to_str().unwrap();
    let m = model.to_str().unwrap();
    let o = run(&["eval", "--model", m, "--data-dir", d, "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("fc2.weight (1 of"), "{}", stderr(&o));
    let report = json(&model.parent().unwrap().join("eval").join("report.json"));
    assert_eq!(report["metrics"]["non_finite_weights"]["fc2.weight"], 1);
    for args in [
        vec!["unlearn", "--method", "ft", "--forget", "class:1"],
        vec!["attack", "--attack", "pgd", "--eps", "0.1", "--n", "10"],
        vec!["prune", "--method", "omp", "--sparsity", "0.5"],
    ] {
        let mut a = args.clone();
        a.extend(["--model", m, "--data-dir", d, "--device", "cpu"]);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("non-finite") && e.contains("fc2.weight (1 of"),
            "{args:?}: {e}"
        );
    }
}
