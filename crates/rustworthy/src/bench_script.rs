//! The cost of bringing a model as TorchScript: training steps (forward and backward) of a
//! TorchScript module against the same architecture built from the zoo, timed alternately in
//! one run on the same device, batch and thread count.

use rustworthy_core::device::device_name;
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_models::bench::{forward_backward, Timing};
use rustworthy_models::{Arch, Model, ModelSpec, ScriptOptions};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptBenchConfig {
    /// The TorchScript module (the same network as `arch`).
    pub script: PathBuf,
    /// The zoo architecture it is compared with (its Fashion-MNIST geometry for `mlp` and
    /// `lenet`, CIFAR-10's for the others).
    pub arch: Arch,
    /// Images per step.
    pub batch: i64,
    /// Timed steps per measurement.
    pub iters: usize,
    /// Measurements per side, alternating zoo and TorchScript; medians are reported.
    pub repeats: usize,
    /// Device.
    pub device: DeviceSpec,
}

/// What the comparison measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScriptBenchOutcome {
    /// The settings.
    pub config: ScriptBenchConfig,
    /// Device name.
    pub device: String,
    /// libtorch threads.
    pub threads: i32,
    /// Every measurement of the zoo model.
    pub zoo: Vec<Timing>,
    /// Every measurement of the TorchScript module.
    pub script: Vec<Timing>,
    /// Median seconds per step, zoo.
    pub zoo_step_s: f64,
    /// Median seconds per step, TorchScript.
    pub script_step_s: f64,
    /// TorchScript's median step time over the zoo's, minus one (0.05 = 5% slower).
    pub overhead: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times both models `repeats` times each, alternating.
pub fn bench_torchscript(cfg: &ScriptBenchConfig) -> Result<ScriptBenchOutcome> {
    if cfg.repeats == 0 || !cfg.arch.is_zoo() {
        return Err(Error::config(
            "arch",
            "needs a zoo architecture and at least one repeat",
        ));
    }
    let device = cfg.device.resolve()?;
    let spec = match cfg.arch {
        Arch::Mlp | Arch::Lenet => ModelSpec::fashion_mnist(cfg.arch),
        a => ModelSpec::cifar10(a),
    };
    rustworthy_core::seed::seed_torch(0);
    let zoo = Model::new(spec.clone(), device)?;
    let script = Model::from_torchscript(
        &cfg.script,
        ScriptOptions::new(spec.in_channels, spec.input_size),
        device,
    )?;
    if script.num_params() != zoo.num_params() {
        return Err(Error::invalid(format!(
            "{} has {} parameters but the zoo's {} has {}: not the same network",
            cfg.script.display(),
            script.num_params(),
            cfg.arch,
            zoo.num_params()
        )));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeats {
        a.push(forward_backward(&zoo, cfg.batch, cfg.iters)?);
        b.push(forward_backward(&script, cfg.batch, cfg.iters)?);
    }
    let zoo_step_s = median(a.iter().map(|t| t.step_s).collect());
    let script_step_s = median(b.iter().map(|t| t.step_s).collect());
    Ok(ScriptBenchOutcome {
        config: cfg.clone(),
        device: device_name(device),
        threads: tch::get_num_threads(),
        zoo: a,
        script: b,
        zoo_step_s,
        script_step_s,
        overhead: script_step_s / zoo_step_s - 1.0,
    })
}
