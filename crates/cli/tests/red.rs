//! End to end: the red commands on Fashion-MNIST with a small victim family, and their errors.

mod common;

use common::{fashion_mnist_present, json, run, stderr};

#[test]
fn red_commands_run_end_to_end_and_name_bad_input() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let gen = |sparsities: &str| {
        let mut a = vec![
            "red",
            "generate",
            "--archs",
            "mlp",
            "--activations",
            "relu,tanh",
            "--sparsities",
            sparsities,
            "--victim-images",
            "2000",
            "--victim-epochs",
            "1",
            "--train-per-shard",
            "6",
            "--test-per-shard",
            "4",
            "--threads",
            "2",
            "--out",
        ];
        let out = p("data");
        a.push(&out);
        run(&a)
    };
    let o = gen("0");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    // 2 victims x 19 settings in train and test, x 6 held-out strengths, 2 twins x 2 transfers.
    assert!(out.contains("train: 38 shards written, 0 kept"), "{out}");
    assert!(out.contains("transfer: 4 shards written"), "{out}");
    let r = json(&dir.path().join("data/generate_report.json"));
    assert_eq!(r["command"], "red generate");
    assert!(r["versions"].is_object() && r["seeds"]["data"].is_number());
    // A rerun keeps every shard.
    let again = String::from_utf8_lossy(&gen("0").stdout).to_string();
    assert!(
        again.contains("train: 0 shards written, 38 kept"),
        "{again}"
    );
    // Another family in the same folder is refused.
    let o = gen("0,50");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another config"), "{}", stderr(&o));

    ok(&[
        "red",
        "train",
        "--tool",
        "parsing",
        "--data",
        &p("data"),
        "--out",
        &p("parse"),
        "--epochs",
        "1",
        "--threads",
        "2",
    ]);
    assert!(dir.path().join("parse/parsing.safetensors").exists());
    let table = ok(&[
        "red",
        "infer",
        "--tool",
        &p("parse"),
        "--data",
        &p("data"),
        "--split",
        "test",
    ]);
    assert!(
        table.contains("| activation |") && table.contains("confusion"),
        "{table}"
    );
    // It writes its scores and a report beside the tool.
    let rep = json(&dir.path().join("parse/infer-test/report.json"));
    assert_eq!(rep["command"], "red infer");
    assert_eq!(rep["config"]["split"], "test");
    assert!(rep["timings_s"]["infer"].as_f64().unwrap() > 0.0, "{rep}");
    let scores = json(&dir.path().join("parse/infer-test/inference.json"));
    assert!(
        scores["Classifier"]["arch"]["n"].as_u64().unwrap() > 0,
        "{scores}"
    );
    // Attribution from the adversarial images with the off-grid counts, then scored.
    ok(&[
        "red",
        "train",
        "--tool",
        "attribution",
        "--input",
        "adv",
        "--off-grid",
        "--data",
        &p("data"),
        "--out",
        &p("attr"),
        "--epochs",
        "1",
        "--threads",
        "2",
    ]);
    let heads = json(&dir.path().join("attr/attribution.json"));
    assert_eq!(heads["off_grid"], true, "{heads}");
    let table = ok(&[
        "red",
        "infer",
        "--tool",
        &p("attr"),
        "--data",
        &p("data"),
        "--split",
        "test",
    ]);
    assert!(table.contains("| family |"), "{table}");

    // Errors name the problem.
    let bad = |args: &[&str], want: &str| {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    };
    bad(
        &[
            "red",
            "train",
            "--tool",
            "bogus",
            "--data",
            &p("data"),
            "--out",
            &p("x"),
        ],
        "unknown tool",
    );
    bad(
        &["red", "infer", "--tool", &p("data"), "--data", &p("data")],
        "holds no RED tool",
    );
    bad(
        &[
            "red",
            "infer",
            "--tool",
            &p("parse"),
            "--data",
            &p("nothing"),
        ],
        "red.json",
    );
    bad(
        &[
            "red",
            "infer",
            "--tool",
            &p("parse"),
            "--data",
            &p("data"),
            "--split",
            "val",
        ],
        "unknown split",
    );
    bad(
        &[
            "red",
            "train",
            "--tool",
            "attribution",
            "--data",
            &p("data"),
            "--out",
            &p("attr"),
        ],
        "--denoiser",
    );
    bad(
        &[
            "red",
            "generate",
            "--activations",
            "swish",
            "--out",
            &p("d2"),
        ],
        "unknown activation",
    );
    bad(
        &["bench", "red", "--preset", "nope", "--out", &p("b")],
        "unknown RED preset",
    );
}
