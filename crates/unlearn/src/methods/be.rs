//! BE: boundary expanding (Chen et al., "Boundary Unlearning", CVPR'23).
//!
//! The classifier gets one extra "shadow" output: a row of `feature_dim` weights and a bias
//! drawn as PyTorch initialises a linear layer (`U(-1/sqrt(d), 1/sqrt(d))`). Every forget
//! sample is relabelled to the shadow class and the whole network (shadow row included) is
//! fine-tuned on the forget set with cross-entropy, so the forget samples move into the shadow
//! region. The shadow output is then dropped: the model keeps its original shape, and the
//! forget samples fall to whichever real class lies nearest.
//!
//! Reference recipe: 10 epochs of SGD (momentum 0.9) at lr 1e-5 on the forget set.

use super::common::{check_finite_tensor, sgd_epochs, uniform_tensor, RunConfig};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::{Result, SeedRng};
use rustworthy_models::Model;
use rustworthy_train::optim::{OptimConfig, Optimizer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of BE (boundary expanding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeConfig {
    /// The fine-tuning recipe on the forget set (reference: 10 epochs at lr 1e-5).
    #[serde(flatten)]
    pub run: RunConfig,
}

impl Default for BeConfig {
    fn default() -> Self {
        BeConfig {
            run: RunConfig::new(10, 1e-5),
        }
    }
}

impl BeConfig {
    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Be> {
        self.run.validate("be.")?;
        Ok(Be { cfg: self })
    }
}

/// The runnable BE method.
pub struct Be {
    cfg: BeConfig,
}

/// Logits of the widened classifier: the model's classes followed by the shadow class.
fn widened_logits(model: &Model, x: &Tensor, train: bool, w: &Tensor, b: &Tensor) -> Tensor {
    let f = model.features_t(x, train);
    let real = model.logits_from_features(&f);
    let shadow = f.linear(w, Some(b));
    Tensor::cat(&[real, shadow], 1)
}

impl Unlearner for Be {
    fn name(&self) -> &'static str {
        "be"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        // The shadow class extends the final linear layer, on the penultimate features.
        model.require_feature_head("unlearning method be (boundary expanding)")?;
        let run = &self.cfg.run;
        let forget = &ctx.data.forget;
        let c = model.spec.num_classes;
        let d = model.feature_dim();
        let device = model.device();
        let bound = 1.0 / (d as f64).sqrt();
        let mut rng = SeedRng::stream(ctx.seed, "be-shadow", 0);
        let w = uniform_tensor(&[1, d], bound, &mut rng, device)?.set_requires_grad(true);
        let b = uniform_tensor(&[1], bound, &mut rng, device)?.set_requires_grad(true);

        let mut params = model.parameters();
        params.push(("shadow.weight".to_string(), w.shallow_clone()));
        params.push(("shadow.bias".to_string(), b.shallow_clone()));
        let mut opt = Optimizer::new(
            OptimConfig::Sgd {
                momentum: run.momentum,
                dampening: 0.0,
                nesterov: false,
                weight_decay: run.weight_decay,
            },
            params,
        )?;
        if ctx.masks.is_some() {
            let mut own = rustworthy_train::mask::UpdateMasks::new();
            own.insert("shadow.weight".to_string(), w.ones_like());
            own.insert("shadow.bias".to_string(), b.ones_like());
            for (name, p) in model.parameters() {
                own.insert(name, p.ones_like());
            }
            super::common::restrict_to_masks(&mut opt, model, ctx, Some(&own))?;
        }
        let steps = sgd_epochs(model, &mut opt, forget, run, ctx, "be", |m, x, _y, _| {
            let target = Tensor::full([x.size()[0]], c, (Kind::Int64, x.device()));
            widened_logits(m, x, true, &w, &b).cross_entropy_for_logits(&target)
        })?;
        check_finite_tensor(&w, "be: the shadow weights")?;

        // Share of forget samples the widened model assigns to the shadow class, before the
        // shadow output is dropped.
        let mut hits = 0i64;
        tch::no_grad(|| -> Result<()> {
            let idx: Vec<usize> = (0..forget.len()).collect();
            for chunk in idx.chunks(run.batch_size) {
                let (x, _) = forget.try_batch(chunk)?;
                let pred = widened_logits(model, &x, false, &w, &b).f_argmax(-1, false)?;
                hits += pred.f_eq(c)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            }
            Ok(())
        })?;
        Ok(MethodReport {
            epochs: run.epochs,
            steps,
            extra: serde_json::json!({
                "shadow_class": c,
                "forget_to_shadow": hits as f64 / forget.len().max(1) as f64,
            }),
        })
    }
}
