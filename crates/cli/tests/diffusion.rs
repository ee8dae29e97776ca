//! End to end: the diffusion commands on Fashion-MNIST with tiny settings, and their errors.

mod common;

use common::{fashion_mnist_present, json, run, stderr};

#[test]
fn diffusion_commands_run_end_to_end_and_name_bad_input() {
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
    ok(&[
        "diffusion",
        "train",
        "--steps",
        "3",
        "--out",
        &p("m"),
        "--threads",
        "2",
    ]);
    let r = json(&dir.path().join("m/report.json"));
    assert_eq!(r["config"]["train"]["steps"], 3);
    assert!(
        dir.path().join("m/model.safetensors").exists()
            && dir.path().join("m/ema/unet.json").exists()
    );
    let out = ok(&[
        "diffusion",
        "sample",
        "--model",
        &p("m"),
        "--classes",
        "0,3",
        "--per-class",
        "2",
        "--sample-steps",
        "2",
        "--out",
        &p("s"),
    ]);
    assert!(out.contains("4 images"), "{out}");
    assert!(dir.path().join("s/samples.png").exists());
    ok(&[
        "diffusion",
        "unlearn",
        "--model",
        &p("m"),
        "--method",
        "salun-rl",
        "--class",
        "0",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        &p("u"),
    ]);
    assert!(dir.path().join("u/mask.safetensors").exists());
    // The mask computed for that model is refused for a model of another size.
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut cfg: serde_json::Value = json(&dir.path().join("m/unet.json"));
    cfg["ch"] = serde_json::json!(24);
    tch_free_model(&big, &cfg);
    let o = run(&[
        "diffusion",
        "unlearn",
        "--model",
        &big.display().to_string(),
        "--method",
        "salun-rl",
        "--class",
        "0",
        "--steps",
        "1",
        "--mask",
        &p("u/mask.safetensors"),
        "--out",
        &p("u2"),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("another model"),
        "{}",
        stderr(&o)
    );
    let out = ok(&[
        "diffusion",
        "eval",
        "--model",
        &p("u"),
        "--judge",
        &p("j"),
        "--class",
        "0",
        "--per-class",
        "4",
        "--sample-steps",
        "2",
        "--out",
        &p("e"),
    ]);
    assert!(out.contains("UA") && out.contains("FD-fmnist"), "{out}");
    let out = ok(&[
        "diffusion",
        "attack",
        "--model",
        &p("u"),
        "--judge",
        &p("j"),
        "--class",
        "0",
        "--instances",
        "1",
        "--t-stride",
        "600",
        "--iterations",
        "2",
        "--check-steps",
        "2",
        "--out",
        &p("a"),
    ]);
    assert!(out.contains("ASR"), "{out}");
    let a = json(&dir.path().join("a/report.json"));
    assert_eq!(a["metrics"]["instances"], 1);
    // Bad input is named.
    let o = run(&[
        "diffusion",
        "unlearn",
        "--model",
        &p("m"),
        "--class",
        "12",
        "--out",
        &p("x"),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("out of range"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "diffusion",
        "unlearn",
        "--model",
        &p("m"),
        "--class",
        "1",
        "--method",
        "erase-all",
        "--out",
        &p("x"),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("salun-rl"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "diffusion",
        "sample",
        "--model",
        &p("nothing"),
        "--out",
        &p("x"),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("unet.json"),
        "{}",
        stderr(&o)
    );
}

/// Writes a fresh model of config `cfg` into `dir` through the library.
fn tch_free_model(dir: &std::path::Path, cfg: &serde_json::Value) {
    let c: rustworthy::diffusion::unet::UNetConfig = serde_json::from_value(cfg.clone()).unwrap();
    let m = rustworthy::diffusion::unet::CondUNet::new(&c, rustworthy::tch::Device::Cpu).unwrap();
    rustworthy::diffusion::io::save_unet(dir, &m).unwrap();
}
