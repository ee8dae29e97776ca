//! Retrain: train from scratch on the retain set with the original model's recipe — the gold
//! standard every approximate method is measured against.

use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{validate, Result};
use rustworthy_models::Model;
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{fit, fit_with, MaskedStep, TrainConfig};
use serde::{Deserialize, Serialize};

/// Configuration of Retrain; unset fields follow the original model's recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Epochs (default: the original recipe's).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Peak learning rate (default: the original recipe's).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Seed of the fresh initialisation (default: derived from the run seed).
    #[serde(default)]
    pub init_seed: Option<u64>,
}

impl RetrainConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Retrain> {
        if let Some(e) = self.epochs {
            validate::positive_int("retrain.epochs", e)?;
        }
        if let Some(lr) = self.lr {
            validate::positive("retrain.lr", lr)?;
        }
        Ok(Retrain { cfg: self })
    }

    /// The training recipe Retrain uses.
    pub fn recipe(&self, original: &TrainConfig, seed: u64) -> TrainConfig {
        let mut t = original.clone();
        if let Some(e) = self.epochs {
            t.epochs = e;
            t.lr.warmup_epochs = t.lr.warmup_epochs.min(e as f64);
        }
        if let Some(lr) = self.lr {
            t.lr.lr = lr;
        }
        t.seed = rustworthy_core::seed::derive(seed, "retrain", 0);
        t
    }
}

/// The runnable Retrain method.
pub struct Retrain {
    cfg: RetrainConfig,
}

impl Unlearner for Retrain {
    fn name(&self) -> &'static str {
        "retrain"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let recipe = self.cfg.recipe(ctx.original, ctx.seed);
        let init = self
            .cfg
            .init_seed
            .unwrap_or_else(|| rustworthy_core::seed::derive(ctx.seed, "retrain-init", 0));
        rustworthy_core::seed::seed_torch(init);
        let fresh = model.fresh_like()?;
        model.copy_from(&fresh)?;
        let opts = FitOptions {
            progress: ctx.progress,
            dist: ctx.dist.clone(),
            ..Default::default()
        };
        let out = match ctx.masks {
            // A pruned model is retrained with the same mask, from a fresh initialization.
            Some(m) => fit_with(
                model,
                &ctx.data.retain,
                None,
                &recipe,
                &opts,
                &mut MaskedStep(m),
            )?,
            None => fit(model, &ctx.data.retain, None, &recipe, &opts)?,
        };
        Ok(MethodReport {
            epochs: out.history.len(),
            steps: 0,
            extra: serde_json::json!({"recipe": recipe, "init_seed": init}),
        })
    }
}
