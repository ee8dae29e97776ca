//! Samplers: DDIM's generalized steps with `eta` (eta = 1 over all 1000 steps is the reference's
//! default evaluation sampler) and the DDPM ancestral sampler (posterior mean from the clipped
//! x0 estimate, variance beta_t), both with classifier-free guidance through the prediction
//! function they are given.

use crate::schedule::{one_minus, Schedule};
use rustworthy_core::progress::check_interrupt;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which sampler, and how many steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum Sampler {
    /// DDIM generalized steps over `steps` uniformly skipped timesteps.
    Ddim {
        /// Number of denoising steps (the timesteps `0, T/steps, 2T/steps, ...`).
        steps: i64,
        /// Stochasticity: 0 is deterministic DDIM, 1 is ancestral with the posterior variance.
        eta: f64,
    },
    /// DDPM ancestral sampling (variance beta_t, x0 clipped to [-1, 1]) over `steps` uniformly
    /// skipped timesteps (T for the full chain).
    Ddpm {
        /// Number of denoising steps.
        steps: i64,
    },
}

impl Sampler {
    /// Checks the step count against the schedule and eta's range.
    pub fn validate(&self, sched: &Schedule) -> Result<()> {
        let steps = match self {
            Sampler::Ddim { steps, eta } => {
                if !eta.is_finite() || *eta < 0.0 {
                    return Err(Error::config(
                        "sampler.eta",
                        format!("must be >= 0, got {eta}"),
                    ));
                }
                *steps
            }
            Sampler::Ddpm { steps } => *steps,
        };
        if steps < 1 || steps > sched.steps {
            return Err(Error::config(
                "sampler.steps",
                format!("must be in 1..={}, got {steps}", sched.steps),
            ));
        }
        Ok(())
    }

    /// The number of model evaluations (each guided one counts once).
    pub fn steps(&self) -> i64 {
        match self {
            Sampler::Ddim { steps, .. } | Sampler::Ddpm { steps } => *steps,
        }
    }
}

/// The timesteps visited, in the reference's uniform skipping: `0, k, 2k, ...` with
/// `k = T / steps`.
pub fn timesteps(sched: &Schedule, steps: i64) -> Vec<i64> {
    let skip = (sched.steps / steps).max(1);
    (0..sched.steps).step_by(skip as usize).collect()
}

/// Where the sampler's Gaussian draws come from.
pub enum Noise<'a> {
    /// libtorch's global generator (seed it first for a reproducible run).
    Global,
    /// One tensor per step, in the order the steps run (for fixtures).
    Given(&'a [Tensor]),
}

/// One step of DDIM's generalized steps from `x_t` with predicted noise `e`, where `at` and
/// `an` are alpha_bar at this and the next visited timestep and `z` the Gaussian draw (unused
/// when `eta` is 0): `sqrt(an) x0 + c1 z + c2 e`.
pub fn ddim_step(x: &Tensor, e: &Tensor, at: &Tensor, an: &Tensor, eta: f64, z: &Tensor) -> Tensor {
    let x0 = (x - e * one_minus(at).sqrt()) / at.sqrt();
    let c1 = (one_minus(&(at / an)) * one_minus(an) / one_minus(at)).sqrt() * eta;
    let c2 = (one_minus(an) - c1.square()).sqrt();
    an.sqrt() * x0 + c1 * z + c2 * e
}

/// Runs `sampler` from `x_T` with `eps(x_t, t)` as the (guided) noise prediction; returns x_0.
pub fn sample<F>(
    sched: &Schedule,
    sampler: &Sampler,
    x_t: &Tensor,
    noise: Noise,
    mut eps: F,
) -> Result<Tensor>
where
    F: FnMut(&Tensor, &Tensor) -> Result<Tensor>,
{
    sampler.validate(sched)?;
    let seq = timesteps(sched, sampler.steps());
    let n = x_t.size()[0];
    let dev = x_t.device();
    let mut x = x_t.shallow_clone();
    let shape = x_t.size();
    let draw = |k: usize| -> Result<Tensor> {
        match &noise {
            Noise::Global => Ok(Tensor::randn(shape.as_slice(), (Kind::Float, dev))),
            Noise::Given(v) => v
                .get(k)
                .map(|t| t.to_device(dev))
                .ok_or_else(|| Error::invalid(format!("sampler: no noise tensor for step {k}"))),
        }
    };
    tch::no_grad(|| {
        for (k, idx) in (0..seq.len()).rev().enumerate() {
            check_interrupt()?;
            let i = seq[idx];
            let j = if idx == 0 { -1 } else { seq[idx - 1] };
            let t = Tensor::full([n], i, (Kind::Int64, dev));
            let tn = Tensor::full([n], j, (Kind::Int64, dev));
            let at = sched.alpha_bar(&t);
            let an = sched.alpha_bar(&tn);
            let e = eps(&x, &t.to_kind(Kind::Float))?;
            x = match sampler {
                Sampler::Ddim { eta, .. } => {
                    let z = if *eta > 0.0 { draw(k)? } else { x.zeros_like() };
                    ddim_step(&x, &e, &at, &an, *eta, &z)
                }
                Sampler::Ddpm { .. } => {
                    let beta = one_minus(&(&at / &an));
                    let x0 = (at.reciprocal().sqrt() * &x - (at.reciprocal() - 1.0).sqrt() * &e)
                        .clamp(-1.0, 1.0);
                    let mean = (an.sqrt() * &beta * x0
                        + one_minus(&beta).sqrt() * one_minus(&an) * &x)
                        / one_minus(&at);
                    if i == 0 {
                        mean
                    } else {
                        mean + (beta.log() * 0.5).exp() * draw(k)?
                    }
                }
            };
        }
        if x.isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::Numerical("sampling produced NaN or inf".into()));
        }
        Ok(x)
    })
}

/// Generates `per_class` images of each class in `classes` (in that order) with guidance `w`,
/// in batches of `batch`, from noise drawn after seeding libtorch with `seed` (the same seed
/// gives every model the same starting noise); returns images in [0, 1] on the CPU.
pub fn generate(
    model: &crate::unet::CondUNet,
    sampler: &Sampler,
    classes: &[i64],
    per_class: i64,
    w: f64,
    batch: i64,
    seed: u64,
) -> Result<Tensor> {
    let sched = Schedule::reference(model.device());
    sampler.validate(&sched)?;
    let c = &model.config;
    if !(1..=100_000).contains(&per_class) {
        return Err(Error::config(
            "per_class",
            format!("must be in 1..=100000, got {per_class}"),
        ));
    }
    for &k in classes {
        if k < 0 || k >= c.num_classes {
            return Err(Error::invalid(format!(
                "generate: class {k} is out of range (the model has {} classes)",
                c.num_classes
            )));
        }
    }
    let labels: Vec<i64> = classes
        .iter()
        .flat_map(|&k| std::iter::repeat_n(k, per_class as usize))
        .collect();
    let dev = model.device();
    let mut out = Vec::new();
    for (bi, chunk) in labels.chunks(batch.max(1) as usize).enumerate() {
        tch::manual_seed(rustworthy_core::seed::derive(seed, "generate", bi as u64) as i64);
        let n = chunk.len() as i64;
        let y = Tensor::from_slice(chunk).to_device(dev);
        let x_t = Tensor::randn(
            [n, c.in_channels, c.resolution, c.resolution],
            (Kind::Float, dev),
        );
        let x = sample(&sched, sampler, &x_t, Noise::Global, |x, t| {
            model.guided(x, t, &y, w, false)
        })?;
        out.push(crate::train::to_unit_range(&x).to_device(tch::Device::Cpu));
    }
    if out.is_empty() {
        return Err(Error::invalid("generate: nothing to generate"));
    }
    Ok(Tensor::cat(&out, 0))
}
