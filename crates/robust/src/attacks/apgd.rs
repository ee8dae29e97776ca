//! APGD (Croce & Hein, 2020): step-size-free PGD with momentum 0.75, halving the step size at
//! checkpoints when the loss stops improving, with the CE or DLR loss; and APGD-T, the targeted
//! DLR version run against the top-k other classes in turn.

use crate::attack::{
    check_batch, loss_and_grad, nonzero_idx, succeeded, Attack, AttackLoss, AttackOutput, Criterion,
};
use crate::threat::{broadcast_to, per_sample_norm, Norm, ThreatModel};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Auto-PGD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apgd {
    /// The perturbation set.
    pub threat: ThreatModel,
    /// Iterations per restart (100 in AutoAttack).
    pub steps: usize,
    /// Runs from independent random starts (default 1); each later run attacks only the samples not
    /// yet fooled.
    #[serde(default = "one")]
    pub restarts: usize,
    /// The loss maximized (CE or DLR in AutoAttack).
    pub loss: AttackLoss,
    /// Fraction of loss increases below which the step size is halved (0.75).
    #[serde(default = "rho")]
    pub rho: f64,
    /// Momentum (0.75).
    #[serde(default = "rho")]
    pub momentum: f64,
    /// Drop samples from the batch once fooled.
    #[serde(default = "yes")]
    pub early_stop: bool,
}

fn one() -> usize {
    1
}
fn rho() -> f64 {
    0.75
}
fn yes() -> bool {
    true
}

/// Per-sample state of one APGD run; rows are dropped as samples are fooled.
struct State {
    active: Tensor,
    y: Tensor,
    t: Option<Tensor>,
    proj: crate::threat::Projector,
    x_adv: Tensor,
    x_old: Tensor,
    grad: Tensor,
    x_best: Tensor,
    grad_best: Tensor,
    loss_best: Tensor,
    loss_prev: Tensor,
    loss_best_last: Tensor,
    reduced_last: Tensor,
    increases: Tensor,
    step: Tensor,
}

impl State {
    fn keep(&mut self, k: &Tensor) {
        let sel = |t: &Tensor| t.index_select(0, k);
        self.active = sel(&self.active);
        self.proj.keep(k);
        self.y = sel(&self.y);
        self.t = self.t.as_ref().map(sel);
        self.x_adv = sel(&self.x_adv);
        self.x_old = sel(&self.x_old);
        self.grad = sel(&self.grad);
        self.x_best = sel(&self.x_best);
        self.grad_best = sel(&self.grad_best);
        self.loss_best = sel(&self.loss_best);
        self.loss_prev = sel(&self.loss_prev);
        self.loss_best_last = sel(&self.loss_best_last);
        self.reduced_last = sel(&self.reduced_last);
        self.increases = sel(&self.increases);
        self.step = sel(&self.step);
    }
}

impl Apgd {
    /// APGD with `steps` iterations on `loss`, one restart and the published defaults (rho and
    /// momentum 0.75, early stopping).
    pub fn new(threat: ThreatModel, steps: usize, loss: AttackLoss) -> Apgd {
        Apgd {
            threat,
            steps,
            restarts: 1,
            loss,
            rho: 0.75,
            momentum: 0.75,
            early_stop: true,
        }
    }

    /// Checks the threat model, steps, restarts, `rho` and `momentum`; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.threat.validate()?;
        validate::positive_int("steps", self.steps)?;
        validate::positive_int("restarts", self.restarts)?;
        validate::in_range("rho", self.rho, 0.0, 1.0)?;
        validate::in_range("momentum", self.momentum, 0.0, 1.0)?;
        Ok(())
    }

    fn start(&self, x: &Tensor) -> Tensor {
        let t = match self.threat.norm {
            Norm::Linf => {
                let t = x.rand_like() * 2.0 - 1.0;
                let m = per_sample_norm(&t, Norm::Linf).clamp_min(1e-12);
                t / broadcast_to(&m, x)
            }
            Norm::L2 => {
                let t = x.randn_like();
                let m = per_sample_norm(&t, Norm::L2).clamp_min(1e-12);
                t / broadcast_to(&m, x)
            }
        };
        self.threat.clamp_box(&(x + t * self.threat.eps))
    }

    /// Runs APGD with an explicit success criterion (APGD-T counts any misclassification).
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
        let mut x_out = x.copy();
        let success = Tensor::zeros([b], (Kind::Bool, dev));
        let mut queries = Tensor::zeros([b], (Kind::Int64, dev));
        let mut best_loss_out = Tensor::full([b], f64::NEG_INFINITY, (Kind::Float, dev));
        let n = self.steps;
        let n2 = ((0.22 * n as f64) as usize).max(1);
        let n_min = ((0.06 * n as f64) as usize).max(1);
        let decr = ((0.03 * n as f64) as usize).max(1);
        for _ in 0..self.restarts {
            let active = nonzero_idx(&success.logical_not());
            if active.size()[0] == 0 {
                break;
            }
            let xs = x.index_select(0, &active);
            let ys = y.index_select(0, &active);
            let ts = target.map(|t| t.index_select(0, &active));
            let x_adv = self.start(&xs);
            let (logits, loss, grad) = loss_and_grad(model, &x_adv, &ys, ts.as_ref(), self.loss);
            let _ = queries.index_add_(0, &active, &active.ones_like());
            let m = active.size()[0];
            let mut s = State {
                proj: self.threat.projector(&xs),
                step: Tensor::full([m], 2.0 * self.threat.eps, (Kind::Float, dev)),
                active,
                y: ys,
                t: ts,
                x_old: x_adv.copy(),
                x_best: x_adv.copy(),
                grad_best: grad.copy(),
                loss_best: loss.copy(),
                loss_prev: loss.copy(),
                loss_best_last: loss.copy(),
                reduced_last: Tensor::zeros([m], (Kind::Bool, dev)),
                increases: Tensor::zeros([m], (Kind::Int64, dev)),
                x_adv,
                grad,
            };
            // Records the samples fooled at the current iterate (and drops them with early
            // stopping); returns the rows kept, or None when every row is kept.
            let record = |s: &mut State, fooled: &Tensor| -> Option<Tensor> {
                if !self.early_stop {
                    // On the device, without reading anything back: each fooled row takes
                    // its latest fooling iterate.
                    let f4 = broadcast_to(fooled, &s.x_adv);
                    let kept = s.x_adv.where_self(&f4, &x_out.index_select(0, &s.active));
                    let _ = x_out.shallow_clone().index_copy_(0, &s.active, &kept);
                    let was = success.index_select(0, &s.active);
                    let _ =
                        success
                            .shallow_clone()
                            .index_copy_(0, &s.active, &was.logical_or(fooled));
                    return None;
                }
                if fooled.any().int64_value(&[]) == 0 {
                    return None;
                }
                let f = nonzero_idx(fooled);
                let pos = s.active.index_select(0, &f);
                let _ = x_out
                    .shallow_clone()
                    .index_copy_(0, &pos, &s.x_adv.index_select(0, &f));
                let _ = success.shallow_clone().index_fill_(0, &pos, 1);
                let keep = nonzero_idx(&fooled.logical_not());
                s.keep(&keep);
                Some(keep)
            };
            let f0 = succeeded(&logits, &s.y, s.t.as_ref(), criterion);
            let _ = record(&mut s, &f0);
            let mut k = n2;
            let mut counter = 0usize;
            for i in 0..n {
                if s.active.size()[0] == 0 {
                    break;
                }
                let a = if i == 0 { 1.0 } else { self.momentum };
                let step = broadcast_to(&s.step, &s.x_adv);
                let momentum_term = &s.x_adv - &s.x_old;
                let z = s
                    .proj
                    .project(&(&s.x_adv + self.threat.ascent_direction(&s.grad) * &step));
                let next = s.x_adv.lerp(&z, a) + momentum_term * (1.0 - a);
                // The new iterate replaces x_adv; the old one becomes x_old (no copy).
                s.x_old = std::mem::replace(&mut s.x_adv, s.proj.project(&next));
                let (logits, mut loss, grad) =
                    loss_and_grad(model, &s.x_adv, &s.y, s.t.as_ref(), self.loss);
                let _ = queries.index_add_(0, &s.active, &s.active.ones_like());
                s.grad = grad;
                // Successes are recorded at the iterate that achieved them, before any reset.
                let fooled = succeeded(&logits, &s.y, s.t.as_ref(), criterion);
                if let Some(keep) = record(&mut s, &fooled) {
                    loss = loss.index_select(0, &keep);
                    if s.active.size()[0] == 0 {
                        break;
                    }
                }
                s.increases = &s.increases + loss.gt_tensor(&s.loss_prev).to_kind(Kind::Int64);
                s.loss_prev = loss.shallow_clone();
                let improved = loss.gt_tensor(&s.loss_best);
                let imp4 = broadcast_to(&improved, &s.x_adv);
                s.x_best = s.x_adv.where_self(&imp4, &s.x_best);
                s.grad_best = s.grad.where_self(&imp4, &s.grad_best);
                s.loss_best = loss.where_self(&improved, &s.loss_best);
                counter += 1;
                if counter == k {
                    let osc = s.increases.to_kind(Kind::Float).le(k as f64 * self.rho);
                    let no_impr = s
                        .reduced_last
                        .logical_not()
                        .logical_and(&s.loss_best_last.ge_tensor(&s.loss_best));
                    let fl = osc.logical_or(&no_impr);
                    s.reduced_last = fl.copy();
                    s.loss_best_last = s.loss_best.copy();
                    s.step = (&s.step * 0.5).where_self(&fl, &s.step);
                    let fl4 = broadcast_to(&fl, &s.x_adv);
                    s.x_adv = s.x_best.where_self(&fl4, &s.x_adv);
                    s.grad = s.grad_best.where_self(&fl4, &s.grad);
                    s.increases = s.increases.zeros_like();
                    counter = 0;
                    k = k.saturating_sub(decr).max(n_min);
                }
            }
            if s.active.size()[0] > 0 {
                // Unfooled samples: keep the highest-loss point over the restarts.
                // Unfooled samples only: a fooled sample keeps its fooling point.
                let prev = best_loss_out.index_select(0, &s.active);
                let open = success.index_select(0, &s.active).logical_not();
                let better = nonzero_idx(&s.loss_best.gt_tensor(&prev).logical_and(&open));
                let pos = s.active.index_select(0, &better);
                let _ = x_out.index_copy_(0, &pos, &s.x_best.index_select(0, &better));
                let _ = best_loss_out.index_copy_(0, &pos, &s.loss_best.index_select(0, &better));
            }
        }
        Ok(AttackOutput {
            x_adv: x_out,
            success,
            queries,
        })
    }
}

impl Attack for Apgd {
    fn name(&self) -> String {
        format!("apgd-{:?}", self.loss).to_lowercase()
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

/// APGD-T: targeted DLR APGD against the 2nd, 3rd, ... most likely classes in turn (9 targets
/// in AutoAttack), each on the samples still correctly classified. Success is misclassification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApgdTargeted {
    /// The underlying APGD run (its loss is the targeted DLR).
    pub apgd: Apgd,
    /// How many of the most likely other classes are targeted in turn.
    pub targets: usize,
}

impl ApgdTargeted {
    /// APGD-T with `steps` iterations per target against the top `targets` other classes.
    pub fn new(threat: ThreatModel, steps: usize, targets: usize) -> ApgdTargeted {
        ApgdTargeted {
            apgd: Apgd::new(threat, steps, AttackLoss::Dlr),
            targets,
        }
    }
}

impl Attack for ApgdTargeted {
    fn name(&self) -> String {
        "apgd-t".into()
    }
    fn threat(&self) -> Option<ThreatModel> {
        Some(self.apgd.threat)
    }
    fn perturb(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<AttackOutput> {
        if target.is_some() {
            return Err(Error::invalid(
                "apgd-t chooses its own targets; use apgd with a target instead",
            ));
        }
        validate::positive_int("targets", self.targets)?;
        check_batch(model, Some(&self.apgd.threat), x, y, None)?;
        let c = model.spec.num_classes;
        let n_t = self.targets.min((c as usize).saturating_sub(1));
        let b = x.size()[0];
        let dev = x.device();
        let mut x_out = x.copy();
        let mut success = Tensor::zeros([b], (Kind::Bool, dev));
        let mut queries = Tensor::zeros([b], (Kind::Int64, dev));
        let order = tch::no_grad(|| model.forward_t(x, false)).argsort(1, true);
        for j in 0..n_t {
            let active = nonzero_idx(&success.logical_not());
            if active.size()[0] == 0 {
                break;
            }
            let xs = x.index_select(0, &active);
            let ys = y.index_select(0, &active);
            let rank = order.index_select(0, &active);
            // The (j+2)-th most likely class, or the most likely one if it is not the label.
            let t1 = rank.select(1, (j + 1) as i64);
            let top = rank.select(1, 0);
            let t = top.where_self(&(top.ne_tensor(&ys).logical_and(&t1.eq_tensor(&ys))), &t1);
            let out = self
                .apgd
                .run(model, &xs, &ys, Some(&t), Criterion::Misclassify)?;
            let _ = queries.index_add_(0, &active, &out.queries);
            let f = nonzero_idx(&out.success);
            let pos = active.index_select(0, &f);
            let _ = x_out.index_copy_(0, &pos, &out.x_adv.index_select(0, &f));
            let _ = success.index_fill_(0, &pos, 1);
            if j == 0 {
                let nf = nonzero_idx(&out.success.logical_not());
                let _ = x_out.index_copy_(
                    0,
                    &active.index_select(0, &nf),
                    &out.x_adv.index_select(0, &nf),
                );
            }
        }
        Ok(AttackOutput {
            x_adv: x_out,
            success,
            queries,
        })
    }
}
