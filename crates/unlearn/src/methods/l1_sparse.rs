//! l1-sparse: fine-tune on the retain set with a decaying sparsity penalty,
//! `CE(D_r) + alpha_t * sum |w|` over every trainable parameter (weights, biases and batch-norm
//! affine parameters alike). `alpha_t = alpha * (1 - e / E')` in epoch `e` (0-based) for the
//! first `E' = epochs - no_l1_epochs` epochs, then 0.
//!
//! Reference defaults (CIFAR-10, ResNet-18): 10 epochs, lr 0.01, SGD momentum 0.9, weight decay
//! 5e-4, batch 256, constant learning rate, alpha 5e-4.

use super::common::{sgd_epochs, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of l1-sparse (retain fine-tuning with a decaying l1 penalty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1SparseConfig {
    /// The optimisation recipe on the retain set (reference: 10 epochs at lr 0.01).
    #[serde(flatten)]
    pub run: RunConfig,
    /// Penalty coefficient of the first epoch.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Final epochs run without the penalty.
    #[serde(default)]
    pub no_l1_epochs: usize,
}

fn default_alpha() -> f64 {
    5e-4
}

impl Default for L1SparseConfig {
    fn default() -> Self {
        L1SparseConfig {
            run: RunConfig::new(10, 0.01),
            alpha: default_alpha(),
            no_l1_epochs: 0,
        }
    }
}

impl L1SparseConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<L1Sparse> {
        self.run.validate("l1-sparse.")?;
        validate::non_negative("l1-sparse.alpha", self.alpha)?;
        if self.no_l1_epochs >= self.run.epochs {
            return Err(Error::config(
                "l1-sparse.no_l1_epochs",
                format!(
                    "must be smaller than l1-sparse.epochs ({}), got {}",
                    self.run.epochs, self.no_l1_epochs
                ),
            ));
        }
        Ok(L1Sparse { cfg: self })
    }

    /// The penalty coefficient of epoch `epoch` (0-based).
    pub fn alpha_at(&self, epoch: usize) -> f64 {
        let span = self.run.epochs.saturating_sub(self.no_l1_epochs);
        if epoch < span {
            self.alpha * (1.0 - epoch as f64 / span as f64)
        } else {
            0.0
        }
    }
}

/// The runnable l1-sparse method.
pub struct L1Sparse {
    cfg: L1SparseConfig,
}

/// `sum |w|` over the given parameters.
fn l1_norm(params: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = params.iter().map(|p| p.abs().sum(Kind::Float)).collect();
    Tensor::stack(&parts, 0).sum(Kind::Float)
}

impl Unlearner for L1Sparse {
    fn name(&self) -> &'static str {
        "l1-sparse"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        let run = &cfg.run;
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let before = tch::no_grad(|| l1_norm(&params)).f_double_value(&[])?;
        let mut opt = run.optimizer(model, ctx)?;
        let steps = sgd_epochs(
            model,
            &mut opt,
            &ctx.data.retain,
            run,
            ctx,
            "l1-sparse",
            |m, x, y, epoch| {
                let ce = m.forward_t(x, true).cross_entropy_for_logits(y);
                let a = cfg.alpha_at(epoch);
                if a > 0.0 {
                    ce + l1_norm(&params) * a
                } else {
                    ce
                }
            },
        )?;
        let after = tch::no_grad(|| l1_norm(&params)).f_double_value(&[])?;
        let schedule: Vec<f64> = (0..run.epochs).map(|e| cfg.alpha_at(e)).collect();
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::json!({
                "alpha_per_epoch": schedule,
                "l1_norm_before": before,
                "l1_norm_after": after,
            }),
        })
    }
}
