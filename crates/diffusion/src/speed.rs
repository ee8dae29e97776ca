//! `bench ddpm-step`: seconds per DDPM training step (forward, backward, gradient clipping,
//! Adam and the EMA update) on fixed batches, for the comparison with the same steps in PyTorch
//! (`scripts/bench-ddpm-step.sh` runs `scripts/ref/ddpm_step_ref.py` on the files written here).

use crate::schedule::{ddpm_loss_kept, Schedule};
use crate::train::{adam_for, clip_grad_norm, ema_update};
use crate::unet::{CondUNet, UNetConfig};
use rustworthy_core::{fsutil, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The benchmark's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepBench {
    /// The U-Net.
    pub unet: UNetConfig,
    /// Images per step.
    pub batch: i64,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// EMA rate.
    pub ema_rate: f64,
    /// Seed of the weights and batches.
    pub seed: u64,
}

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepResult {
    /// The settings.
    pub bench: StepBench,
    /// Median seconds per timed step.
    pub median_s: f64,
    /// Every timed step's seconds.
    pub step_s: Vec<f64>,
    /// The loss of the first batch with dropout off, before any step (both sides must agree).
    pub first_loss_eval: f64,
    /// libtorch threads.
    pub threads: i32,
}

/// Writes the initial weights and the batches into `out` and times the steps.
pub fn bench_train_step(b: &StepBench, out: &Path, device: Device) -> Result<StepResult> {
    if b.steps == 0 || b.batch < 1 {
        return Err(Error::config("steps", "need steps >= 1 and batch >= 1"));
    }
    tch::manual_seed(b.seed as i64);
    let m = CondUNet::new(&b.unet, device)?;
    let mut ema = CondUNet::new(&b.unet, device)?;
    ema.copy_from(&m)?;
    let c = &b.unet;
    let n = b.warmup + b.steps;
    let mut batches = Vec::new();
    for k in 0..n {
        let x0 = Tensor::rand(
            [b.batch, c.in_channels, c.resolution, c.resolution],
            (Kind::Float, Device::Cpu),
        ) * 2.0
            - 1.0;
        batches.push((format!("x0_{k}"), x0));
        batches.push((
            format!("labels_{k}"),
            Tensor::randint(c.num_classes, [b.batch], (Kind::Int64, Device::Cpu)),
        ));
        batches.push((
            format!("t_{k}"),
            Tensor::randint(1000, [b.batch], (Kind::Int64, Device::Cpu)),
        ));
        batches.push((
            format!("e_{k}"),
            Tensor::randn(
                [b.batch, c.in_channels, c.resolution, c.resolution],
                (Kind::Float, Device::Cpu),
            ),
        ));
        batches.push((
            format!("keep_{k}"),
            Tensor::rand([b.batch], (Kind::Float, Device::Cpu))
                .lt(0.9)
                .to_kind(Kind::Uint8),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let named = m.named_parameters();
    fsutil::atomic_write_with(&out.join("weights.safetensors"), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    fsutil::atomic_write_with(&out.join("batches.safetensors"), |tmp| {
        Tensor::write_safetensors(&batches, tmp).map_err(Error::from)
    })?;
    fsutil::write_json_atomic(&out.join("bench.json"), b)?;
    // Each step's x0, labels, t, e and keep mask (in the order written above), on the device
    // before any timing.
    let steps: Vec<Vec<Tensor>> = batches
        .chunks(5)
        .map(|c| c.iter().map(|(_, t)| t.to_device(device)).collect())
        .collect();
    let sched = Schedule::reference(device);
    let mut opt = adam_for(&m)?;
    let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let step = |k: usize, train: bool| -> Result<Tensor> {
        let s = &steps[k];
        let keep = s[4].to_kind(Kind::Bool);
        ddpm_loss_kept(&m, &sched, &s[0], &s[2], &s[3], &s[1], &keep, train)
    };
    let first_loss_eval = tch::no_grad(|| step(0, false))?.double_value(&[]);
    let mut times = Vec::new();
    for k in 0..n {
        let t0 = Instant::now();
        opt.zero_grad();
        let loss = step(k, true)?;
        loss.backward();
        clip_grad_norm(&params, 1.0);
        opt.step(b.lr)?;
        ema_update(&ema, &m, b.ema_rate);
        let _ = loss.double_value(&[]);
        if k >= b.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let r = StepResult {
        bench: b.clone(),
        median_s: sorted[sorted.len() / 2],
        step_s: times,
        first_loss_eval,
        threads: tch::get_num_threads(),
    };
    fsutil::write_json_atomic(&out.join("rustworthy.json"), &r)?;
    Ok(r)
}
