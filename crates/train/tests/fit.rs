//! End-to-end training on small synthetic data: learning, resume equivalence, failure modes.

use rustworthy_core::progress::ProgressMode;
use rustworthy_core::Error;
use rustworthy_data::augment::Augment;
use rustworthy_data::synthetic::synthetic;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model};
use rustworthy_testkit::{param_bits, quiet, seeded_model, synthetic_split};
use rustworthy_testkit::{tiny_spec, torch_lock};
use rustworthy_train::schedule::{LrSchedule, ScheduleConfig};
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{evaluate, fit, OptimConfig, TrainConfig};

/// A train/test split of one synthetic task (same class prototypes on both sides).
fn data(seed: u64) -> (Dataset, Dataset) {
    synthetic_split(60, 12, 0.35, seed, 160)
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        eval_batch_size: 64,
        optim: OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 5e-4,
        },
        lr: ScheduleConfig {
            lr: 0.05,
            schedule: LrSchedule::Cosine { min_lr: 0.0 },
            warmup_epochs: 1.0,
        },
        augment: Augment {
            crop_padding: 1,
            hflip: true,
        },
        drop_last: false,
        seed: 7,
        precision: Default::default(),
        channels_last: false,
        optim_impl: Default::default(),
    }
}

fn model(init: u64) -> Model {
    seeded_model(tiny_spec(Arch::Mlp, 12), init as i64)
}

#[test]
fn learns_synthetic_task() {
    let _torch = torch_lock();
    let (train, test) = data(1);
    let mut m = model(0);
    let before = evaluate(&m, &test, 64).unwrap().accuracy;
    // The synthetic classes are not flip-invariant: train without augmentation here.
    let mut c = cfg(8);
    c.augment = Augment::default();
    let out = fit(&mut m, &train, Some(&test), &c, &quiet()).unwrap();
    let after = evaluate(&m, &test, 64).unwrap().accuracy;
    assert!(out.completed);
    assert_eq!(out.history.len(), 8);
    assert!(after >= 90.0, "test accuracy {after} (before {before})");
    let first = out.history.first().unwrap().train_loss;
    let last = out.history.last().unwrap().train_loss;
    assert!(last < first * 0.5, "loss {first} -> {last}");
}

#[test]
fn same_seed_same_result() {
    let _torch = torch_lock();
    let (train, _) = data(2);
    let mut a = model(3);
    let mut b = model(3);
    fit(&mut a, &train, None, &cfg(2), &quiet()).unwrap();
    fit(&mut b, &train, None, &cfg(2), &quiet()).unwrap();
    assert_eq!(param_bits(&a), param_bits(&b));
    let mut c = model(3);
    let mut other = cfg(2);
    other.seed = 8;
    fit(&mut c, &train, None, &other, &quiet()).unwrap();
    assert_ne!(param_bits(&a), param_bits(&c), "the seed must matter");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _torch = torch_lock();
    let (train, val) = data(3);
    let dir = tempfile::tempdir().unwrap();
    let full_dir = dir.path().join("full");
    let cut_dir = dir.path().join("cut");

    let mut full = model(5);
    let opts = FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(full_dir),
        ..Default::default()
    };
    let full_out = fit(&mut full, &train, Some(&val), &cfg(4), &opts).unwrap();

    let mut first = model(5);
    let opts = FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(cut_dir.clone()),
        stop_after: Some(2),
        ..Default::default()
    };
    let part = fit(&mut first, &train, Some(&val), &cfg(4), &opts).unwrap();
    assert!(!part.completed);
    assert_eq!(part.history.len(), 2);
    drop(first);

    // A fresh process would build the model with some init; the checkpoint must override it.
    let mut resumed = model(99);
    let opts = FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(cut_dir.clone()),
        resume: true,
        ..Default::default()
    };
    let rest = fit(&mut resumed, &train, Some(&val), &cfg(4), &opts).unwrap();
    assert_eq!(rest.resumed_from, Some(2));
    assert!(rest.completed);
    assert_eq!(param_bits(&full), param_bits(&resumed));
    let strip = |h: &[rustworthy_train::trainer::EpochRecord]| {
        h.iter()
            .map(|r| {
                (
                    r.epoch,
                    r.lr.to_bits(),
                    r.train_loss.to_bits(),
                    r.val_accuracy,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&full_out.history), strip(&rest.history));
    // Only the newest epoch's files and the previous epoch's remain.
    let files: Vec<String> = std::fs::read_dir(&cut_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files.contains(&"model-e0004.safetensors".to_string()),
        "{files:?}"
    );
    assert!(
        files.contains(&"model-e0003.safetensors".to_string()),
        "{files:?}"
    );
    assert!(
        !files.contains(&"model-e0002.safetensors".to_string()),
        "{files:?}"
    );
}

/// A latest checkpoint damaged on disk (a flipped byte in its weights) fails its checksum on
/// resume; the run resumes from the previous checkpoint, says so, and still reaches the
/// uninterrupted result.
#[test]
fn damaged_latest_checkpoint_falls_back_to_the_previous_one() {
    let _torch = torch_lock();
    let (train, val) = data(3);
    let dir = tempfile::tempdir().unwrap();
    let mut full = model(5);
    let quiet_opts = |d: &std::path::Path, stop: Option<usize>, resume: bool| FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(d.to_path_buf()),
        stop_after: stop,
        resume,
        dist: None,
    };
    fit(
        &mut full,
        &train,
        Some(&val),
        &cfg(4),
        &quiet_opts(&dir.path().join("full"), None, false),
    )
    .unwrap();
    let cut = dir.path().join("cut");
    let mut first = model(5);
    fit(
        &mut first,
        &train,
        Some(&val),
        &cfg(4),
        &quiet_opts(&cut, Some(3), false),
    )
    .unwrap();
    let weights = cut.join("model-e0003.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let mut resumed = model(99);
    let rest = fit(
        &mut resumed,
        &train,
        Some(&val),
        &cfg(4),
        &quiet_opts(&cut, None, true),
    )
    .unwrap();
    assert_eq!(
        rest.resumed_from,
        Some(2),
        "resumed from the previous checkpoint"
    );
    assert!(
        rest.resume_notes
            .iter()
            .any(|n| n.contains("checksum mismatch") && n.contains("previous")),
        "{:?}",
        rest.resume_notes
    );
    assert_eq!(param_bits(&full), param_bits(&resumed));
    // Both checkpoints damaged: a clear error, nothing resumed.
    for f in ["model-e0003.safetensors", "model-e0004.safetensors"] {
        if let Ok(mut b) = std::fs::read(cut.join(f)) {
            let k = b.len() - 5;
            b[k] ^= 0x40;
            std::fs::write(cut.join(f), b).unwrap();
        }
    }
    let mut again = model(99);
    let e = fit(
        &mut again,
        &train,
        Some(&val),
        &cfg(4),
        &quiet_opts(&cut, None, true),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("damaged"), "{e}");
}

#[test]
fn resume_with_other_config_is_refused() {
    let _torch = torch_lock();
    let (train, _) = data(4);
    let dir = tempfile::tempdir().unwrap();
    let opts = FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(dir.path().to_path_buf()),
        stop_after: Some(1),
        ..Default::default()
    };
    fit(&mut model(0), &train, None, &cfg(3), &opts).unwrap();
    let mut other = cfg(3);
    other.batch_size = 32;
    let opts = FitOptions {
        resume: true,
        stop_after: None,
        ..opts
    };
    let e = fit(&mut model(0), &train, None, &other, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn diverging_run_reports_numerical_failure() {
    let _torch = torch_lock();
    let (train, _) = data(5);
    let mut c = cfg(3);
    c.optim = OptimConfig::Sgd {
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    c.lr = ScheduleConfig {
        lr: 1e12,
        schedule: LrSchedule::Constant,
        warmup_epochs: 0.0,
    };
    let e = fit(&mut model(0), &train, None, &c, &quiet()).unwrap_err();
    assert!(matches!(e, Error::Numerical(_)), "{e}");
    assert!(e.to_string().contains("learning rate"), "{e}");
}

#[test]
fn invalid_configs_name_their_field() {
    let _torch = torch_lock();
    let (train, _) = data(6);
    let mut c = cfg(2);
    c.epochs = 0;
    let e = fit(&mut model(0), &train, None, &c, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("epochs"), "{e}");
    let mut c = cfg(2);
    c.augment.crop_padding = -1;
    let e = fit(&mut model(0), &train, None, &c, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("crop_padding"), "{e}");
    let mut c = cfg(2);
    c.batch_size = 1000;
    c.drop_last = true;
    let e = fit(&mut model(0), &train, None, &c, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn lenet_and_resnet20_train_a_step() {
    let _torch = torch_lock();
    // Every conv architecture runs forward/backward/step through the loop.
    let train = synthetic(4, 8, 1, 16, 0.3, 9);
    for arch in [Arch::Lenet, Arch::Resnet20] {
        let mut m = seeded_model(tiny_spec(arch, 16), 0);
        let before = param_bits(&m);
        let mut c = cfg(1);
        c.batch_size = 8;
        fit(&mut m, &train, None, &c, &quiet()).unwrap();
        assert_ne!(before, param_bits(&m), "{arch:?} did not update");
    }
}

/// A sidecar naming a file outside its folder (found by fuzzing: an optimizer-state name bent
/// into an absolute path) is refused with the sidecar named.
#[test]
fn a_sidecar_naming_files_outside_its_folder_is_refused() {
    let _torch = torch_lock();
    let (train, _) = data(3);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let mut m = model(5);
    let opts = FitOptions {
        progress: ProgressMode::Quiet,
        checkpoint_dir: Some(ck.clone()),
        stop_after: Some(1),
        resume: false,
        dist: None,
    };
    fit(&mut m, &train, None, &cfg(2), &opts).unwrap();
    let sidecar = ck.join("checkpoint.json");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta["checksums"] = serde_json::json!({});
    for bad in [
        "/ptim-e0001.safetensors",
        "../optim-e0001.safetensors",
        "sub/optim-e0001.safetensors",
    ] {
        meta["optim_file"] = serde_json::json!(bad);
        std::fs::write(&sidecar, serde_json::to_vec(&meta).unwrap()).unwrap();
        let ckpt = rustworthy_train::Checkpoint::new(&ck);
        let mut again = model(5);
        let mut opt = rustworthy_train::Optimizer::new(cfg(2).optim, again.parameters()).unwrap();
        let err = ckpt.restore(&mut again, &mut opt).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.json") && err.contains("not a file name"),
            "{bad}: {err}"
        );
    }
}
