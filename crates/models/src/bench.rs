//! Timing of a model's training step (forward plus backward), e.g. to compare a zoo model with
//! the same network loaded as TorchScript.
//!
//! ```no_run
//! use rustworthy_models::{bench, Arch, Model, ModelSpec, ScriptOptions};
//! # fn main() -> rustworthy_core::Result<()> {
//! let zoo = Model::new(ModelSpec::cifar10(Arch::Resnet20), tch::Device::Cpu)?;
//! let script = Model::from_torchscript("resnet20.pt", ScriptOptions::new(3, (32, 32)), tch::Device::Cpu)?;
//! let a = bench::forward_backward(&zoo, 128, 20)?;
//! let b = bench::forward_backward(&script, 128, 20)?;
//! println!("zoo {:.1} samples/s, torchscript {:.1} samples/s", a.samples_per_s, b.samples_per_s);
//! # Ok(())
//! # }
//! ```

use crate::model::Model;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Warm-up iterations run (and not timed) before the measured ones.
pub const WARMUP: usize = 2;

/// What [`forward_backward`] measured: mean wall-clock seconds per iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// The model's architecture name (`torchscript` for a TorchScript model).
    pub arch: String,
    /// The device, as `Debug` prints it (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// Images per batch.
    pub batch: i64,
    /// Timed iterations.
    pub iters: usize,
    /// Mean seconds of a train-mode forward pass and the cross-entropy loss.
    pub forward_s: f64,
    /// Mean seconds of the backward pass to every parameter.
    pub backward_s: f64,
    /// Mean seconds of a whole step (forward + backward).
    pub step_s: f64,
    /// Images per second through a whole step.
    pub samples_per_s: f64,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `iters` training steps of `model` on a random batch of `batch` images and labels
/// (after [`WARMUP`] untimed ones): a train-mode forward pass with cross-entropy, then the
/// gradients of every parameter (returned, not accumulated into `.grad`). The model is left as
/// it was: batch-norm buffers are restored afterwards. CUDA work is synchronized around each
/// timed section.
pub fn forward_backward(model: &Model, batch: i64, iters: usize) -> Result<Timing> {
    if batch < 1 || iters < 1 {
        return Err(Error::invalid(format!(
            "bench: batch and iters must be >= 1, got {batch} and {iters}"
        )));
    }
    let device = model.device();
    let spec = model.spec();
    let x = Tensor::f_rand(spec.input_shape(batch), (Kind::Float, device))?;
    let y = Tensor::f_randint(spec.num_classes, [batch], (Kind::Int64, device))?;
    let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, p)| p).collect();
    let saved: Vec<(Tensor, Tensor)> = model
        .buffers()
        .into_iter()
        .map(|(_, b)| {
            let mut copy = b.f_detach()?.f_zeros_like()?;
            copy.f_copy_(&b)?;
            Ok((b, copy))
        })
        .collect::<Result<_>>()?;
    let (mut fwd, mut bwd) = (0.0, 0.0);
    for i in 0..WARMUP + iters {
        sync(device);
        let t0 = Instant::now();
        let loss = model
            .try_forward_t(&x, true)?
            .f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0)?;
        sync(device);
        let t1 = Instant::now();
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        sync(device);
        let t2 = Instant::now();
        drop(grads);
        if i >= WARMUP {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (b, copy) in &saved {
            b.shallow_clone().f_copy_(copy)?;
        }
        Ok(())
    })?;
    let n = iters as f64;
    let step = (fwd + bwd) / n;
    Ok(Timing {
        arch: spec.arch.to_string(),
        device: format!("{device:?}"),
        batch,
        iters,
        forward_s: fwd / n,
        backward_s: bwd / n,
        step_s: step,
        samples_per_s: if step > 0.0 { batch as f64 / step } else { 0.0 },
    })
}
