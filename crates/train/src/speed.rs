//! `bench train-step`: seconds per training step of a zoo model (forward, cross-entropy,
//! backward, SGD with Nesterov momentum and weight decay) on fixed batches resident on the
//! device, under each execution setting (precision, channels-last, optimizer implementation).
//! `scripts/bench-train-step.sh` runs `scripts/ref/train_step_ref.py` on the weights and batches
//! written here: eager PyTorch and `torch.compile`, the same steps.
//!
//! Steps are timed as blocks: one synchronization with the device before and after each block
//! of `steps` steps, none inside (the loop runs ahead of the device as a training loop would).

use crate::optim::{OptimConfig, OptimImpl, Optimizer};
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_models::{Arch, Exec, Model, ModelSpec, Precision};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The benchmark's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainStepBench {
    /// The model: a zoo architecture with its input shape and classes.
    pub spec: ModelSpec,
    /// Images per step.
    pub batch: i64,
    /// Distinct batches, used in turn.
    pub batches: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps per block.
    pub steps: usize,
    /// Timed blocks (the median block is reported).
    pub repeats: usize,
    /// Precision of the forward pass.
    pub precision: Precision,
    /// Channels-last layout.
    pub channels_last: bool,
    /// Optimizer implementation.
    pub optim_impl: OptimImpl,
    /// Learning rate of SGD (momentum 0.9, Nesterov, weight decay 5e-4).
    pub lr: f64,
    /// Seed of the weights and batches.
    pub seed: u64,
}

impl TrainStepBench {
    /// ResNet-18 on CIFAR-10-shaped inputs at `batch`, fp32, 5 warm-up steps, 3 blocks of 20.
    pub fn resnet18(batch: i64) -> TrainStepBench {
        TrainStepBench {
            spec: ModelSpec::cifar10(Arch::Resnet18),
            batch,
            batches: 4,
            warmup: 5,
            steps: 20,
            repeats: 3,
            precision: Precision::Fp32,
            channels_last: false,
            optim_impl: OptimImpl::Auto,
            lr: 0.05,
            seed: 0,
        }
    }

    /// Checks the counts.
    pub fn validate(&self) -> Result<()> {
        rustworthy_core::validate::positive_int("steps", self.steps)?;
        rustworthy_core::validate::positive_int("repeats", self.repeats)?;
        rustworthy_core::validate::positive_int("batches", self.batches)?;
        rustworthy_core::validate::positive("lr", self.lr)?;
        if self.batch < 1 {
            return Err(Error::config("batch", "must be >= 1"));
        }
        if !self.spec.arch.is_zoo() {
            return Err(Error::config("arch", "a zoo architecture is needed"));
        }
        self.spec.validate()
    }
}

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainStepResult {
    /// The settings.
    pub bench: TrainStepBench,
    /// Median over blocks of the mean seconds per step.
    pub median_s: f64,
    /// Mean seconds per step of each block.
    pub block_s: Vec<f64>,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Loss of the first batch in eval mode before any step, in float32 (both sides agree).
    pub first_loss_eval: f64,
    /// Loss after the last step (a finite, falling value shows the steps train).
    pub last_loss: f64,
    /// The device.
    pub device: String,
    /// libtorch threads.
    pub threads: i32,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Writes the initial weights (`weights.safetensors`), the batches (`batches.safetensors`) and
/// the settings (`bench.json`) into `out`, times the steps and writes `rustworthy.json`.
pub fn bench_train_step(b: &TrainStepBench, out: &Path, device: Device) -> Result<TrainStepResult> {
    b.validate()?;
    tch::manual_seed(b.seed as i64);
    let mut model = Model::new(b.spec.clone(), device)?;
    let shape = b.spec.input_shape(b.batch);
    let mut named = Vec::new();
    for k in 0..b.batches {
        named.push((
            format!("x_{k}"),
            Tensor::rand(shape, (Kind::Float, Device::Cpu)),
        ));
        named.push((
            format!("y_{k}"),
            Tensor::randint(b.spec.num_classes, [b.batch], (Kind::Int64, Device::Cpu)),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    model.save(out.join("weights.safetensors"))?;
    fsutil::atomic_write_with(&out.join("batches.safetensors"), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    fsutil::write_json_atomic(&out.join("bench.json"), b)?;
    let data: Vec<(Tensor, Tensor)> = named
        .chunks(2)
        .map(|c| (c[0].1.to_device(device), c[1].1.to_device(device)))
        .collect();
    let first_loss_eval = tch::no_grad(|| {
        model
            .forward_t(&data[0].0, false)
            .cross_entropy_for_logits(&data[0].1)
    })
    .double_value(&[]);
    model.set_exec(Exec {
        precision: b.precision,
        channels_last: b.channels_last,
    })?;
    let mut opt = Optimizer::new(
        OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 5e-4,
        },
        model.parameters(),
    )?;
    opt.set_impl(b.optim_impl);
    let mut k = 0usize;
    let mut step = |model: &Model, opt: &mut Optimizer| -> Result<Tensor> {
        let (x, y) = &data[k % data.len()];
        k += 1;
        opt.zero_grad();
        let loss = model.forward_t(x, true).cross_entropy_for_logits(y);
        loss.f_backward()?;
        opt.step(b.lr)?;
        Ok(loss.detach())
    };
    let mut last = Tensor::zeros([], (Kind::Float, device));
    for _ in 0..b.warmup {
        last = step(&model, &mut opt)?;
    }
    let mut block_s = Vec::new();
    for _ in 0..b.repeats {
        sync(device);
        let t0 = Instant::now();
        for _ in 0..b.steps {
            last = step(&model, &mut opt)?;
        }
        sync(device);
        block_s.push(t0.elapsed().as_secs_f64() / b.steps as f64);
    }
    let mut sorted = block_s.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median_s = sorted[sorted.len() / 2];
    let r = TrainStepResult {
        bench: b.clone(),
        median_s,
        block_s,
        images_per_s: b.batch as f64 / median_s,
        first_loss_eval,
        last_loss: last.double_value(&[]),
        device: rustworthy_core::device::device_name(device),
        threads: tch::get_num_threads(),
    };
    if !r.last_loss.is_finite() {
        return Err(Error::Numerical(format!(
            "train-step bench: the loss became {}",
            r.last_loss
        )));
    }
    fsutil::write_json_atomic(&out.join("rustworthy.json"), &r)?;
    Ok(r)
}
