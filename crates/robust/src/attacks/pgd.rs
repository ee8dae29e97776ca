//! FGSM and PGD (Madry et al., 2018) under l_inf or l_2, with random starts, restarts,
//! targeted goals and per-sample early stopping.

use crate::attack::{
    check_batch, loss_and_grad, nonzero_idx, succeeded, Attack, AttackLoss, AttackOutput, Criterion,
};
use crate::threat::ThreatModel;
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Projected gradient ascent on the attack loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pgd {
    /// The perturbation set.
    pub threat: ThreatModel,
    /// Gradient steps per restart.
    pub steps: usize,
    /// Step size; `None` means `eps / 4`.
    #[serde(default)]
    pub step_size: Option<f64>,
    /// Independent runs; each later run attacks only the samples not yet fooled.
    #[serde(default = "one")]
    pub restarts: usize,
    /// Start from a uniformly random point of the ball (otherwise from the clean image).
    #[serde(default = "yes")]
    pub random_start: bool,
    /// The loss maximized (default cross-entropy).
    #[serde(default)]
    pub loss: AttackLoss,
    /// Stop iterating on a sample as soon as it is fooled (keeps the fooling point). Without
    /// it every sample runs all steps and the result is the last iterate, as in torchattacks.
    #[serde(default = "yes")]
    pub early_stop: bool,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl Pgd {
    /// PGD with `steps` steps of size `eps / 4` from a random start, one restart, cross-entropy
    /// loss and early stopping.
    pub fn new(threat: ThreatModel, steps: usize) -> Pgd {
        Pgd {
            threat,
            steps,
            step_size: None,
            restarts: 1,
            random_start: true,
            loss: AttackLoss::Ce,
            early_stop: true,
        }
    }

    /// FGSM (Goodfellow et al., 2015): one step of size eps from the clean image.
    pub fn fgsm(threat: ThreatModel) -> Pgd {
        Pgd {
            threat,
            steps: 1,
            step_size: Some(threat.eps),
            restarts: 1,
            random_start: false,
            loss: AttackLoss::Ce,
            early_stop: false,
        }
    }

    /// The step size in pixel units: `step_size`, or `eps / 4` when unset.
    pub fn alpha(&self) -> f64 {
        self.step_size.unwrap_or(self.threat.eps / 4.0)
    }

    /// Checks the threat model, steps, restarts and step size, and rejects restarts without a
    /// random start.
    pub fn validate(&self) -> Result<()> {
        self.threat.validate()?;
        validate::positive_int("steps", self.steps)?;
        validate::positive_int("restarts", self.restarts)?;
        validate::positive("step_size", self.alpha())?;
        if self.restarts > 1 && !self.random_start {
            return Err(Error::config(
                "restarts",
                "restarts without a random start repeat the same deterministic run",
            ));
        }
        Ok(())
    }

    /// Runs PGD with an explicit success criterion (used by the ensemble).
    pub fn run(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
        criterion: Criterion,
    ) -> Result<AttackOutput> {
        self.validate()?;
        check_batch(model, Some(&self.threat), x, y, target)?;
        crate::attack::check_loss_classes(self.loss, model, target.is_some())?;
        let b = x.size()[0];
        let dev = x.device();
        let alpha = self.alpha();
        let mut x_out = x.copy();
        let mut success = Tensor::zeros([b], (Kind::Bool, dev));
        let mut queries = Tensor::zeros([b], (Kind::Int64, dev));
        for _ in 0..self.restarts {
            let mut active = nonzero_idx(&success.logical_not());
            if active.size()[0] == 0 {
                break;
            }
            let xa = x.index_select(0, &active);
            let mut ya = y.index_select(0, &active);
            let mut ta = target.map(|t| t.index_select(0, &active));
            let mut proj = self.threat.projector(&xa);
            let mut x_adv = if self.random_start {
                self.threat.random_start(&xa)
            } else {
                xa.copy()
            };
            for _ in 0..self.steps {
                // A long attack on one batch still stops promptly on Ctrl-C.
                rustworthy_core::progress::check_interrupt()?;
                let (logits, _, grad) = loss_and_grad(model, &x_adv, &ya, ta.as_ref(), self.loss);
                let _ = queries.index_add_(0, &active, &active.ones_like());
                let mut grad = grad;
                if self.early_stop {
                    let fooled = succeeded(&logits, &ya, ta.as_ref(), criterion);
                    if fooled.any().int64_value(&[]) != 0 {
                        let f = nonzero_idx(&fooled);
                        let pos = active.index_select(0, &f);
                        let _ = x_out.index_copy_(0, &pos, &x_adv.index_select(0, &f));
                        let _ = success.index_fill_(0, &pos, 1);
                        let keep = nonzero_idx(&fooled.logical_not());
                        if keep.size()[0] == 0 {
                            active = keep;
                            break;
                        }
                        active = active.index_select(0, &keep);
                        proj.keep(&keep);
                        ya = ya.index_select(0, &keep);
                        ta = ta.map(|t| t.index_select(0, &keep));
                        x_adv = x_adv.index_select(0, &keep);
                        grad = grad.index_select(0, &keep);
                    }
                }
                let stepped = &x_adv + self.threat.ascent_direction(&grad) * alpha;
                x_adv = proj.project(&stepped);
            }
            if active.size()[0] == 0 {
                continue;
            }
            let logits = tch::no_grad(|| model.forward_t(&x_adv, false));
            let _ = queries.index_add_(0, &active, &active.ones_like());
            let fooled = succeeded(&logits, &ya, ta.as_ref(), criterion);
            // Unfooled samples keep the latest restart's iterate; fooled ones their fooling point.
            let _ = x_out.index_copy_(0, &active, &x_adv);
            let f = nonzero_idx(&fooled);
            let _ = success.index_fill_(0, &active.index_select(0, &f), 1);
        }
        Ok(AttackOutput {
            x_adv: x_out,
            success,
            queries,
        })
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        if self.steps == 1 && !self.random_start && (self.alpha() - self.threat.eps).abs() < 1e-12 {
            return "fgsm".into();
        }
        let mut n = format!("pgd-{}", self.steps);
        if self.restarts > 1 {
            n.push_str(&format!("x{}", self.restarts));
        }
        if self.loss != AttackLoss::Ce {
            n.push_str(&format!("-{:?}", self.loss).to_lowercase());
        }
        n
    }
    fn threat(&self) -> Option<ThreatModel> {
        Some(self.threat)
    }
    fn perturb(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<AttackOutput> {
        self.run(model, x, y, target, Criterion::for_target(target))
    }
}
