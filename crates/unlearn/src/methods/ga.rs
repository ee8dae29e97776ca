//! GA: gradient ascent on the forget set, i.e. SGD on `-CE(D_f)` starting from the original
//! model. Reference defaults (CIFAR-10, ResNet-18): 5 epochs, lr 1e-4, SGD momentum 0.9, weight
//! decay 5e-4, batch 256, constant learning rate, batch norm in training mode.

use super::common::{sgd_epochs, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::Result;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};

/// Configuration of GA (gradient ascent on the forget set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaConfig {
    /// The optimisation recipe (reference: 5 epochs at lr 1e-4).
    #[serde(flatten)]
    pub run: RunConfig,
}

impl Default for GaConfig {
    fn default() -> Self {
        GaConfig {
            run: RunConfig::new(5, 1e-4),
        }
    }
}

impl GaConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Ga> {
        self.run.validate("ga.")?;
        Ok(Ga { cfg: self })
    }
}

/// The runnable GA method.
pub struct Ga {
    cfg: GaConfig,
}

impl Unlearner for Ga {
    fn name(&self) -> &'static str {
        "ga"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let run = &self.cfg.run;
        let mut opt = run.optimizer(model, ctx)?;
        let steps = sgd_epochs(
            model,
            &mut opt,
            &ctx.data.forget,
            run,
            ctx,
            "ga",
            |m, x, y, _| -m.forward_t(x, true).cross_entropy_for_logits(y),
        )?;
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::Value::Null,
        })
    }
}
