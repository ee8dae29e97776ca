//! Shared set-up of the robustness tests: a small synthetic task and a trained MLP.

#![allow(dead_code)]

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::synthetic::synthetic;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_train::schedule::{LrSchedule, ScheduleConfig};
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{fit, fit_with, OptimConfig, TrainConfig, TrainHook};
use std::sync::Mutex;
use tch::Device;

/// libtorch's generator is global: serialise tests that seed it.
pub static TORCH: Mutex<()> = Mutex::new(());

pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

pub const CLASSES: usize = 4;
pub const SIZE: usize = 12;

pub fn spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::Mlp,
        in_channels: 1,
        num_classes: CLASSES as i64,
        input_size: (SIZE as i64, SIZE as i64),
        mean: vec![0.5],
        std: vec![0.25],
    }
}

pub fn recipe(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        eval_batch_size: 256,
        optim: OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
        },
        lr: ScheduleConfig {
            lr: 0.05,
            schedule: LrSchedule::Cosine { min_lr: 0.0 },
            warmup_epochs: 0.0,
        },
        augment: Default::default(),
        drop_last: false,
        seed: 5,
    }
}

/// Train and test splits of a 4-class 12x12 synthetic task.
pub fn data() -> (Dataset, Dataset) {
    let all = synthetic(CLASSES, 100, 1, SIZE, 0.3, 7);
    let idx: Vec<usize> = (0..all.len()).collect();
    (
        all.subset(&idx[..300]).unwrap(),
        all.subset(&idx[300..]).unwrap(),
    )
}

pub fn fresh_model(seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(spec(), Device::Cpu).unwrap()
}

pub fn quiet() -> FitOptions {
    FitOptions {
        progress: ProgressMode::Quiet,
        ..Default::default()
    }
}

/// A standard (non-robust) model trained on the task.
pub fn trained() -> (Model, Dataset, Dataset) {
    let (train, test) = data();
    let mut m = fresh_model(3);
    fit(&mut m, &train, None, &recipe(6), &quiet()).unwrap();
    (m, train, test)
}

/// A model trained with `hook`.
pub fn trained_with(hook: &mut dyn TrainHook, epochs: usize) -> Model {
    let (train, _) = data();
    let mut m = fresh_model(3);
    fit_with(&mut m, &train, None, &recipe(epochs), &quiet(), hook).unwrap();
    m
}
