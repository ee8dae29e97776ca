//! FT: fine-tune the original model on the retain set only (catastrophic forgetting of D_f).
//! Reference defaults: 10 epochs, lr 0.01, SGD momentum 0.9, weight decay 5e-4.

use super::common::{sgd_epochs, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::Result;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};

/// Configuration of FT (fine-tuning on the retain set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtConfig {
    /// The optimisation recipe (reference: 10 epochs at lr 0.01).
    #[serde(flatten)]
    pub run: RunConfig,
}

impl Default for FtConfig {
    fn default() -> Self {
        FtConfig {
            run: RunConfig::new(10, 0.01),
        }
    }
}

impl FtConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Ft> {
        self.run.validate("ft.")?;
        Ok(Ft { cfg: self })
    }
}

/// The runnable FT method.
pub struct Ft {
    cfg: FtConfig,
}

impl Unlearner for Ft {
    fn name(&self) -> &'static str {
        "ft"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let run = &self.cfg.run;
        let mut opt = run.optimizer(model, ctx)?;
        let steps = sgd_epochs(
            model,
            &mut opt,
            &ctx.data.retain,
            run,
            ctx,
            "ft",
            |m, x, y, _| m.forward_t(x, true).cross_entropy_for_logits(y),
        )?;
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::Value::Null,
        })
    }
}
