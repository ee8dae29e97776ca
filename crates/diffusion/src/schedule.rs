//! The noise schedule, the forward process and the training loss of SalUn's DDPM code: linear
//! betas from 1e-4 to 0.02 over T = 1000 steps, antithetic timestep draws, and the epsilon
//! MSE summed over pixels and averaged over the batch.

use crate::unet::CondUNet;
use rustworthy_core::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A linear beta schedule and its cumulative products.
#[derive(Debug)]
pub struct Schedule {
    /// `beta_t`, float32 `[T]`.
    pub betas: Tensor,
    /// `alpha_bar_t = prod_{s <= t} (1 - beta_s)`, float32 `[T]`.
    pub alphas_cumprod: Tensor,
    /// Number of diffusion steps `T`.
    pub steps: i64,
}

impl Schedule {
    /// Linear betas from `start` to `end` over `steps` steps (computed in float64, stored as
    /// float32, with the cumulative product taken in float32, as the reference does).
    pub fn linear(start: f64, end: f64, steps: i64, device: Device) -> Result<Self> {
        if steps < 2 || !(0.0 < start && start <= end && end < 1.0) {
            return Err(Error::config(
                "diffusion.schedule",
                format!(
                    "need 2+ steps and 0 < start <= end < 1, got {steps} steps, {start}..{end}"
                ),
            ));
        }
        let betas =
            Tensor::linspace(start, end, steps, (Kind::Double, device)).to_kind(Kind::Float);
        let alphas_cumprod = one_minus(&betas).cumprod(0, Kind::Float);
        Ok(Schedule {
            betas,
            alphas_cumprod,
            steps,
        })
    }

    /// The reference schedule: linear betas 1e-4 to 0.02, T = 1000.
    pub fn reference(device: Device) -> Self {
        Schedule::linear(1e-4, 0.02, 1000, device).expect("valid reference schedule")
    }

    /// `alpha_bar` at integer timesteps `t` `[B]` as `[B, 1, 1, 1]`; `t = -1` gives 1.
    pub fn alpha_bar(&self, t: &Tensor) -> Tensor {
        let padded = Tensor::cat(
            &[
                Tensor::ones([1], (Kind::Float, self.betas.device())),
                self.alphas_cumprod.shallow_clone(),
            ],
            0,
        );
        padded
            .index_select(0, &(t.to_kind(Kind::Int64) + 1))
            .view([-1, 1, 1, 1])
    }

    /// `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) e`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, e: &Tensor) -> Tensor {
        let a = self.alpha_bar(t);
        x0 * a.sqrt() + e * one_minus(&a).sqrt()
    }

    /// `n` antithetic timesteps: `n/2 + 1` uniform draws `t` and their mirrors `T - t - 1`,
    /// cut to `n` (from libtorch's global generator).
    pub fn antithetic_t(&self, n: i64, device: Device) -> Tensor {
        let t = Tensor::randint(self.steps, [n / 2 + 1], (Kind::Int64, device));
        let mirror = -&t + (self.steps - 1);
        Tensor::cat(&[t, mirror], 0).narrow(0, 0, n)
    }
}

/// `(e - pred)^2` summed over every non-batch dimension and averaged over the batch: the
/// reference's loss reduction.
pub fn sum_mse(e: &Tensor, pred: &Tensor) -> Tensor {
    (e - pred)
        .square()
        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
}

/// A keep mask `[n]` (true = keep the label) with each label dropped with probability `p`.
pub fn keep_mask(n: i64, p: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)).lt(1.0 - p)
}

/// The conditional DDPM loss of the reference (`noise_estimation_loss_conditional`): noise `x0`
/// (in [-1, 1]) to `t` with `e`, predict under `labels` with each label dropped to the null
/// vector with probability `drop`, and reduce with [`sum_mse`].
#[allow(clippy::too_many_arguments)]
pub fn ddpm_loss(
    model: &CondUNet,
    sched: &Schedule,
    x0: &Tensor,
    t: &Tensor,
    e: &Tensor,
    labels: &Tensor,
    drop: f64,
    train: bool,
) -> Result<Tensor> {
    let keep = keep_mask(labels.size()[0], drop, x0.device());
    ddpm_loss_kept(model, sched, x0, t, e, labels, &keep, train)
}

/// [`ddpm_loss`] with the keep mask given (true = keep the label).
#[allow(clippy::too_many_arguments)]
pub fn ddpm_loss_kept(
    model: &CondUNet,
    sched: &Schedule,
    x0: &Tensor,
    t: &Tensor,
    e: &Tensor,
    labels: &Tensor,
    keep: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let xt = sched.q_sample(x0, t, e);
    let pred = model.forward(&xt, &t.to_kind(Kind::Float), labels, Some(keep), train)?;
    Ok(sum_mse(e, &pred))
}

/// `1 - t`.
pub fn one_minus(t: &Tensor) -> Tensor {
    -t + 1.0
}
