//! FF: Fisher forgetting (Golatkar et al., CVPR'20), as the sparsity-unlearning reference code
//! runs it (`fisher_new` in `unlearn/fisher.py`).
//!
//! 1. A diagonal Fisher information `F` is estimated on the retain set in eval mode: for every
//!    batch of `batch_size` samples and every class `y`, the gradient `g_y` of the mean
//!    cross-entropy of the batch against label `y` is squared and weighted by the batch's mean
//!    predicted probability of `y`; the sum over classes is averaged over the batches. Labels
//!    are thus weighted by the model's own predictive distribution (a true Fisher, not an
//!    empirical one), and gradients are per batch, not per sample.
//! 2. Every weight is resampled as `w ~ N(mu, var)` with `mu` the trained weight and
//!    `var = alpha * min(1 / (F + 1e-8), max_inv_fisher)` (`head_max_inv_fisher` for the
//!    classifier layer). For weights with more than one dimension the variance is averaged over
//!    dimension 1 (the input units or channels). The classifier layer and all one-dimensional
//!    parameters (batch-norm affine parameters, biases) get ten times that variance.
//! 3. In class-wise scenarios the classifier rows of the forgotten classes are reset to
//!    `mu = 0` with variance `1e-4` (times ten, as part of the classifier layer).
//!
//! Cost: one forward and `num_classes` backward passes per retain batch. `samples` caps the
//! number of retain samples used (a seeded random subset) when the full pass is too slow;
//! `batch_size = 1` gives per-sample gradients, as in Golatkar et al.'s original code.

use super::common::{check_finite_tensor, head_param_names, sample_indices, standard_normal_like};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::progress::Progress;
use rustworthy_core::{validate, Error, Result, SeedRng};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Added to the Fisher before inverting it.
pub const FISHER_EPS: f64 = 1e-8;
/// Variance multiplier of the classifier layer and of one-dimensional parameters.
pub const BOOST: f64 = 10.0;
/// Variance (before [`BOOST`]) of the reset classifier rows of forgotten classes.
pub const FORGOTTEN_ROW_VAR: f64 = 1e-4;

/// Configuration of FF (Fisher forgetting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FfConfig {
    /// Noise scale: `var = alpha / F` before clamping.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Retain samples per Fisher batch (the reference uses 32; 1 gives per-sample gradients).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Use at most this many retain samples (a seeded random subset) for the Fisher; all by
    /// default.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Upper clamp of `1 / (F + 1e-8)` for every parameter.
    #[serde(default = "default_max_inv")]
    pub max_inv_fisher: f64,
    /// Upper clamp of `1 / (F + 1e-8)` for the classifier layer.
    #[serde(default = "default_head_max_inv")]
    pub head_max_inv_fisher: f64,
    /// Class-wise scenarios: reset the classifier rows of the forgotten classes to zero mean.
    #[serde(default = "default_true")]
    pub zero_forgotten_rows: bool,
}

fn default_alpha() -> f64 {
    1e-8
}
fn default_batch() -> usize {
    32
}
fn default_max_inv() -> f64 {
    1e3
}
fn default_head_max_inv() -> f64 {
    1e2
}
fn default_true() -> bool {
    true
}

impl Default for FfConfig {
    fn default() -> Self {
        FfConfig {
            alpha: default_alpha(),
            batch_size: default_batch(),
            samples: None,
            max_inv_fisher: default_max_inv(),
            head_max_inv_fisher: default_head_max_inv(),
            zero_forgotten_rows: true,
        }
    }
}

impl FfConfig {
    /// Checks every field; errors name the field (`ff.alpha`, ...).
    pub fn validate(&self) -> Result<()> {
        validate::positive("ff.alpha", self.alpha)?;
        validate::positive_int("ff.batch_size", self.batch_size)?;
        if let Some(s) = self.samples {
            validate::positive_int("ff.samples", s)?;
        }
        validate::positive("ff.max_inv_fisher", self.max_inv_fisher)?;
        validate::positive("ff.head_max_inv_fisher", self.head_max_inv_fisher)?;
        Ok(())
    }

    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Ff> {
        self.validate()?;
        Ok(Ff { cfg: self })
    }
}

/// The runnable FF method.
pub struct Ff {
    cfg: FfConfig,
}

/// The diagonal Fisher information of `model` on `ds` (see the module documentation), one
/// tensor per trainable parameter in [`Model::parameters`] order, and the number of batches.
pub fn fisher_diagonal(
    model: &Model,
    ds: &Dataset,
    batch_size: usize,
    progress: rustworthy_core::progress::ProgressMode,
) -> Result<(Vec<(String, Tensor)>, usize)> {
    if ds.is_empty() {
        return Err(Error::invalid(format!("ff: dataset {} is empty", ds.name)));
    }
    validate::positive_int("ff.batch_size", batch_size)?;
    let named = model.parameters();
    let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut acc: Vec<Tensor> = params
        .iter()
        .map(|p| p.f_zeros_like())
        .collect::<std::result::Result<_, _>>()?;
    let c = model.spec.num_classes;
    let idx: Vec<usize> = (0..ds.len()).collect();
    let chunks: Vec<&[usize]> = idx.chunks(batch_size).collect();
    let bar = Progress::new(progress, "ff fisher", chunks.len() as u64);
    for chunk in &chunks {
        let (x, _) = ds.try_batch(chunk)?;
        let logits = model.try_forward_t(&x, false)?;
        let mean_p: Vec<f64> = Vec::<f64>::try_from(
            &logits
                .detach()
                .f_softmax(-1, Kind::Double)?
                .f_mean_dim(0, false, Kind::Double)?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        for y in 0..c {
            let target = Tensor::f_full([chunk.len() as i64], y, (Kind::Int64, x.device()))?;
            let loss =
                logits.f_cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)?;
            let grads = Tensor::f_run_backward(&[&loss], &params, y + 1 < c, false)?;
            let w = mean_p[y as usize];
            tch::no_grad(|| -> Result<()> {
                for (a, g) in acc.iter_mut().zip(&grads) {
                    let _ = a.f_add_(&(g.f_square()? * w))?;
                }
                Ok(())
            })?;
        }
        bar.inc(1, String::new);
    }
    bar.finish(serde_json::json!({"batches": chunks.len()}));
    let nb = chunks.len();
    let out = named
        .into_iter()
        .zip(acc)
        .map(|((n, _), a)| (n, a / nb as f64))
        .collect::<Vec<_>>();
    for (n, f) in &out {
        check_finite_tensor(f, &format!("ff: the Fisher information of `{n}`"))?;
    }
    Ok((out, nb))
}

/// Mean and variance of the resampled value of one parameter.
pub struct NoisePlan {
    /// The parameter's name.
    pub name: String,
    /// Mean of the resampled value, shaped like the parameter.
    pub mean: Tensor,
    /// Variance of the resampled value, shaped like the parameter.
    pub var: Tensor,
}

/// The Gaussian every parameter is resampled from, given the Fisher `fisher` (from
/// [`fisher_diagonal`]) and the classes removed by a class-wise scenario.
pub fn noise_plan(
    model: &Model,
    fisher: &[(String, Tensor)],
    cfg: &FfConfig,
    forget_classes: &[usize],
) -> Result<Vec<NoisePlan>> {
    let (head_w, head_b) = head_param_names(model)?;
    let params = model.parameters();
    if params.len() != fisher.len() {
        return Err(Error::invalid(format!(
            "ff: {} Fisher tensors for {} parameters",
            fisher.len(),
            params.len()
        )));
    }
    let c = model.spec.num_classes;
    if let Some(&bad) = forget_classes.iter().find(|&&k| k as i64 >= c) {
        return Err(Error::invalid(format!(
            "ff: forgotten class {bad} does not exist (the model has {c})"
        )));
    }
    tch::no_grad(|| {
        let mut out = Vec::with_capacity(params.len());
        for ((name, p), (fname, f)) in params.iter().zip(fisher) {
            if name != fname || p.size() != f.size() {
                return Err(Error::invalid(format!(
                    "ff: Fisher tensor `{fname}` {:?} does not match parameter `{name}` {:?}",
                    f.size(),
                    p.size()
                )));
            }
            let head = *name == head_w || *name == head_b;
            let f = f.f_to_kind(Kind::Float)?.f_to_device(p.device())?;
            let mut inv = (f + FISHER_EPS)
                .f_reciprocal()?
                .f_clamp_max(cfg.max_inv_fisher)?;
            if head {
                inv = inv.f_clamp_max(cfg.head_max_inv_fisher)?;
            }
            let mut var = inv * cfg.alpha;
            if p.dim() > 1 {
                var = var
                    .f_mean_dim(1, true, Kind::Float)?
                    .f_expand_as(p)?
                    .f_contiguous()?;
            }
            let mut mean = p.detach().copy();
            if head && cfg.zero_forgotten_rows && !forget_classes.is_empty() {
                let rows: Vec<i64> = forget_classes.iter().map(|&k| k as i64).collect();
                let rows = Tensor::from_slice(&rows).f_to_device(p.device())?;
                let _ = mean.f_index_fill_(0, &rows, 0.0)?;
                let _ = var.f_index_fill_(0, &rows, FORGOTTEN_ROW_VAR)?;
            }
            if head || p.dim() == 1 {
                var *= BOOST;
            }
            check_finite_tensor(&var, &format!("ff: the noise variance of `{name}`"))?;
            out.push(NoisePlan {
                name: name.clone(),
                mean,
                var,
            });
        }
        Ok(out)
    })
}

impl Unlearner for Ff {
    fn name(&self) -> &'static str {
        "ff"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        // The classifier layer gets its own clamp; find it before the Fisher pass.
        head_param_names(model)
            .map_err(|e| Error::invalid(format!("unlearning method ff: {e}")))?;
        let retain = &ctx.data.retain;
        let pick = sample_indices(
            retain.len(),
            cfg.samples.unwrap_or(usize::MAX),
            ctx.seed,
            "ff-samples",
        );
        let subset;
        let data = if pick.len() < retain.len() {
            subset = retain.subset(&pick)?;
            &subset
        } else {
            retain
        };
        let (fisher, batches) = fisher_diagonal(model, data, cfg.batch_size, ctx.progress)?;
        let plan = noise_plan(model, &fisher, cfg, &ctx.data.scenario.forget_classes)?;
        let mut rng = SeedRng::stream(ctx.seed, "ff-noise", 0);
        let mut std_sum = 0.0;
        let mut std_max = 0.0f64;
        let mut count = 0usize;
        let params = model.parameters();
        tch::no_grad(|| -> Result<()> {
            for ((name, p), np) in params.iter().zip(&plan) {
                let z = standard_normal_like(p, &mut rng)?;
                let std = np.var.f_sqrt()?;
                let new = &np.mean + &std * z;
                check_finite_tensor(&new, &format!("ff: the resampled `{name}`"))?;
                p.shallow_clone().f_copy_(&new)?;
                std_sum += std.f_sum(Kind::Double)?.f_double_value(&[])?;
                std_max = std_max.max(std.f_max()?.f_double_value(&[])?);
                count += p.numel();
            }
            Ok(())
        })?;
        Ok(MethodReport {
            epochs: 1,
            steps: 0,
            extra: serde_json::json!({
                "fisher_samples": data.len(),
                "fisher_batches": batches,
                "noise_std_mean": std_sum / count.max(1) as f64,
                "noise_std_max": std_max,
                "zeroed_classes": if cfg.zero_forgotten_rows {
                    ctx.data.scenario.forget_classes.clone()
                } else {
                    Vec::new()
                },
            }),
        })
    }
}
