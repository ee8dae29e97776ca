//! The attack interface shared by white-box, score-based and (later) zeroth-order attacks, with
//! per-sample success masks and exact query accounting.

use crate::threat::ThreatModel;
use rustworthy_core::{Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What an attack returns for a batch.
pub struct AttackOutput {
    /// Adversarial images `[B, C, H, W]`; for samples the attack did not fool, its best attempt.
    pub x_adv: Tensor,
    /// `[B]` bool: the attack reached its goal (misclassification, or the target class).
    pub success: Tensor,
    /// `[B]` int64: model evaluations spent on each sample (a forward pass, or a forward and
    /// backward pass for gradient attacks, counts as one query).
    pub queries: Tensor,
}

/// A batched adversarial attack. Inputs are images in the threat model's pixel box.
pub trait Attack {
    /// A short name with the key settings, e.g. `pgd-50x10`.
    fn name(&self) -> String;
    /// The threat model the outputs satisfy (`None` for minimum-norm attacks such as C&W).
    fn threat(&self) -> Option<ThreatModel>;
    /// Attacks `model` on `x` with true labels `y`; with `target`, the goal is to make the model
    /// predict `target[i]` for sample `i` instead of merely misclassifying it.
    fn perturb(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<AttackOutput>;
}

/// The goal that counts as success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// The prediction differs from the true label.
    Misclassify,
    /// The prediction equals the target label.
    HitTarget,
}

impl Criterion {
    /// The goal of a user's attack: hit the target when there is one, else misclassify.
    pub fn for_target(target: Option<&Tensor>) -> Criterion {
        if target.is_some() {
            Criterion::HitTarget
        } else {
            Criterion::Misclassify
        }
    }
}

/// Per-sample success of logits under a criterion.
pub fn succeeded(logits: &Tensor, y: &Tensor, target: Option<&Tensor>, c: Criterion) -> Tensor {
    let pred = logits.argmax(-1, false);
    match (c, target) {
        (Criterion::HitTarget, Some(t)) => pred.eq_tensor(t),
        _ => pred.ne_tensor(y),
    }
}

/// Loss maximized by gradient attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttackLoss {
    /// Cross-entropy (targeted: minus the cross-entropy of the target class).
    #[default]
    Ce,
    /// Difference of logits ratio (targeted: the targeted DLR).
    Dlr,
    /// Logit margin (the C&W loss; targeted: `z_t - max_{j != t} z_j`).
    Margin,
}

impl std::str::FromStr for AttackLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<AttackLoss> {
        match s {
            "ce" => Ok(AttackLoss::Ce),
            "dlr" => Ok(AttackLoss::Dlr),
            "margin" | "cw" => Ok(AttackLoss::Margin),
            o => Err(Error::config(
                "loss",
                format!("unknown attack loss `{o}` (ce, dlr, margin)"),
            )),
        }
    }
}

impl AttackLoss {
    /// Per-sample loss `[B]` to maximize.
    pub fn eval(self, logits: &Tensor, y: &Tensor, target: Option<&Tensor>) -> Tensor {
        use crate::loss;
        match (self, target) {
            (AttackLoss::Ce, None) => loss::ce(logits, y),
            (AttackLoss::Ce, Some(t)) => -loss::ce(logits, t),
            (AttackLoss::Dlr, None) => loss::dlr(logits, y),
            (AttackLoss::Dlr, Some(t)) => loss::dlr_targeted(logits, y, t),
            (AttackLoss::Margin, None) => -loss::margin(logits, y),
            (AttackLoss::Margin, Some(t)) => loss::margin(logits, t),
        }
    }
}

/// Logits, per-sample loss and the input gradient of the summed loss at `x_adv` (model in eval
/// mode; parameter gradients are neither computed nor accumulated).
pub fn loss_and_grad(
    model: &Model,
    x_adv: &Tensor,
    y: &Tensor,
    target: Option<&Tensor>,
    loss: AttackLoss,
) -> (Tensor, Tensor, Tensor) {
    let xa = x_adv.detach().set_requires_grad(true);
    let logits = model.forward_t(&xa, false);
    let l = loss.eval(&logits, y, target);
    let g = Tensor::run_backward(&[l.sum(Kind::Float)], &[&xa], false, false);
    (logits.detach(), l.detach(), g[0].detach())
}

/// Checks a batch and its labels before an attack.
pub fn check_batch(
    model: &Model,
    threat: Option<&ThreatModel>,
    x: &Tensor,
    y: &Tensor,
    target: Option<&Tensor>,
) -> Result<()> {
    model.check_input(x)?;
    match threat {
        Some(t) => t.check_images(x)?,
        None => ThreatModel {
            norm: crate::threat::Norm::L2,
            eps: 1.0,
            lo: 0.0,
            hi: 1.0,
        }
        .check_images(x)?,
    }
    let b = x.size()[0];
    let c = model.spec.num_classes;
    for (what, t) in [("labels", Some(y)), ("targets", target)] {
        let Some(t) = t else { continue };
        if t.size() != [b] || t.kind() != Kind::Int64 {
            return Err(Error::Shape {
                op: format!("attack {what}"),
                expected: format!("[{b}] int64"),
                got: t.size(),
            });
        }
        let (mn, mx) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        if mn < 0 || mx >= c {
            return Err(Error::invalid(format!(
                "attack {what} span [{mn}, {mx}], outside the model's {c} classes"
            )));
        }
    }
    if let Some(t) = target {
        if t.eq_tensor(y).any().int64_value(&[]) != 0 {
            return Err(Error::invalid(
                "a target equals the true label; a targeted attack needs a different class",
            ));
        }
    }
    Ok(())
}

/// How targets are chosen for targeted attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSpec {
    /// A uniformly random class other than the true one (libtorch's generator).
    Random,
    /// The class the model finds least likely on the clean input.
    LeastLikely,
    /// A fixed class (samples of that class are left out).
    Class(i64),
}

impl std::str::FromStr for TargetSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<TargetSpec> {
        match s {
            "random" => Ok(TargetSpec::Random),
            "least-likely" | "ll" => Ok(TargetSpec::LeastLikely),
            k => k.parse::<i64>().map(TargetSpec::Class).map_err(|_| {
                Error::config(
                    "target",
                    format!("`{k}` is not random, least-likely or a class index"),
                )
            }),
        }
    }
}

/// Targets for a batch; entries without a target (a fixed target equal to the label) come back
/// as -1.
pub fn choose_targets(spec: TargetSpec, model: &Model, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let c = model.spec.num_classes;
    if c < 2 {
        return Err(Error::invalid("a targeted attack needs at least 2 classes"));
    }
    if let TargetSpec::Class(k) = spec {
        if k < 0 || k >= c {
            return Err(Error::config(
                "target",
                format!("class {k} is outside the model's {c} classes"),
            ));
        }
    }
    Ok(match spec {
        TargetSpec::Random => {
            let off = Tensor::randint_low(1, c, [y.size()[0]], (Kind::Int64, y.device()));
            (y + off).remainder(c)
        }
        TargetSpec::LeastLikely => tch::no_grad(|| model.forward_t(x, false).argmin(-1, false)),
        TargetSpec::Class(k) => {
            let t = y.full_like(k);
            t.where_self(&y.ne(k), &y.full_like(-1))
        }
    })
}

/// Checks the model has enough classes for `loss` (DLR needs the 3rd largest logit, the
/// targeted DLR the 4th).
pub fn check_loss_classes(loss: AttackLoss, model: &Model, targeted: bool) -> Result<()> {
    let need = if targeted { 4 } else { 3 };
    if loss == AttackLoss::Dlr && model.spec.num_classes < need {
        return Err(Error::config(
            "loss",
            format!(
                "the {}DLR loss needs at least {need} classes; the model has {}",
                if targeted { "targeted " } else { "" },
                model.spec.num_classes
            ),
        ));
    }
    Ok(())
}

/// A score-only view of a model for black-box attacks: logits without gradients, with each
/// queried sample's count incremented and an optional per-sample budget enforced.
pub struct ScoreOracle<'a> {
    model: &'a Model,
    /// Queries per sample of the batch, `[B]` int64.
    pub queries: Tensor,
    budget: Option<i64>,
}

impl<'a> ScoreOracle<'a> {
    /// An oracle over `model` for a batch of `batch` samples, with no query spent yet and at most
    /// `budget` queries per sample (`None`: unlimited).
    pub fn new(model: &'a Model, batch: i64, budget: Option<i64>) -> Self {
        ScoreOracle {
            model,
            queries: Tensor::zeros([batch], (Kind::Int64, model.device())),
            budget,
        }
    }

    /// Logits of the samples `idx` (positions in the batch) evaluated at `x` (`[len(idx), ...]`).
    /// Fails if a sample would exceed its budget.
    pub fn scores(&mut self, x: &Tensor, idx: &Tensor) -> Result<Tensor> {
        if let Some(b) = self.budget {
            let used = self.queries.index_select(0, idx).max().int64_value(&[]);
            if used >= b {
                return Err(Error::invalid(format!(
                    "query budget of {b} per sample exhausted"
                )));
            }
        }
        let _ = self.queries.index_add_(0, idx, &idx.ones_like());
        Ok(tch::no_grad(|| self.model.forward_t(x, false)))
    }

    /// Remaining budget of the most-queried sample among `idx` (None without a budget).
    pub fn remaining(&self, idx: &Tensor) -> Option<i64> {
        self.budget
            .map(|b| b - self.queries.index_select(0, idx).max().int64_value(&[]))
    }
}

/// Positions where a bool mask is true, as an int64 index tensor.
pub fn nonzero_idx(mask: &Tensor) -> Tensor {
    mask.nonzero().squeeze_dim(1)
}
