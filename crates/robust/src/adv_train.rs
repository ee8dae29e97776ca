//! Adversarial training as a [`TrainHook`]: PGD-AT (Madry et al., 2018), Fast-AT (Wong et al.,
//! 2020), GradAlign (Andriushchenko & Flammarion, 2020), Fast-BAT (Zhang et al., 2022) and
//! TRADES (Zhang et al., 2019), with a per-epoch robustness monitor that detects catastrophic
//! overfitting (PGD accuracy collapsing while single-step accuracy stays high).

use crate::attacks::Pgd;
use crate::run::{attack_dataset, RunOptions};
use crate::threat::{per_sample_norm, Norm, ThreatModel};
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_train::{EpochRecord, EpochVerdict, TrainHook};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The adversarial training method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvMethod {
    /// PGD-k from a random start.
    Pgd,
    /// FGSM from a uniform random start, step 1.25 eps.
    Fast,
    /// FGSM (zero start, step eps) plus the gradient-alignment penalty.
    #[serde(rename = "gradalign")]
    GradAlign,
    /// Bi-level adversarial training with the implicit-gradient correction.
    FastBat,
    /// Clean cross-entropy plus beta times the KL divergence to the adversarial prediction.
    Trades,
}

impl std::str::FromStr for AdvMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<AdvMethod> {
        match s {
            "pgd" | "pgd-at" => Ok(AdvMethod::Pgd),
            "fast" | "fast-at" => Ok(AdvMethod::Fast),
            "gradalign" | "grad-align" => Ok(AdvMethod::GradAlign),
            "fast-bat" | "fastbat" | "bat" => Ok(AdvMethod::FastBat),
            "trades" => Ok(AdvMethod::Trades),
            o => Err(Error::config(
                "adv.method",
                format!("unknown adversarial training method `{o}` (pgd, fast, gradalign, fast-bat, trades)"),
            )),
        }
    }
}

/// The robustness monitor run after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// Validation samples attacked (the first ones of the validation split); 0 disables it.
    pub samples: usize,
    /// PGD steps (step eps/4, one random start).
    pub steps: usize,
    /// A PGD-accuracy drop of this many points below the best epoch flags catastrophic
    /// overfitting.
    pub co_drop: f64,
    /// On catastrophic overfitting, restore the weights of the most robust epoch and stop.
    pub stop_on_co: bool,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            samples: 1000,
            steps: 10,
            co_drop: 20.0,
            stop_on_co: false,
        }
    }
}

/// Configuration of adversarial training. Method-specific fields left out take the defaults
/// documented on each getter; setting a field the method does not use is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvTrainConfig {
    /// The adversarial training method.
    pub method: AdvMethod,
    /// l_inf radius in pixel units.
    pub eps: f64,
    /// Attack steps (lower-level steps for Fast-BAT); see [`AdvTrainConfig::steps()`] for the
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Attack step size; see [`AdvTrainConfig::step_size()`] for the per-method default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    /// GradAlign's penalty weight or Fast-BAT's lambda; see [`AdvTrainConfig::lambda()`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// TRADES' weight of the KL term; see [`AdvTrainConfig::beta()`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// The per-epoch robustness monitor.
    #[serde(default)]
    pub monitor: Monitor,
}

/// The Fast-BAT lower-level step on per-sample (summed) cross-entropy gradients, as in the
/// reference implementation's non-sign step (5000/255).
pub const FAST_BAT_STEP: f64 = 5000.0 / 255.0;

impl AdvTrainConfig {
    /// The configuration of `method` at radius `eps` with every optional field at its default.
    pub fn new(method: AdvMethod, eps: f64) -> AdvTrainConfig {
        AdvTrainConfig {
            method,
            eps,
            steps: None,
            step_size: None,
            lambda: None,
            beta: None,
            monitor: Monitor::default(),
        }
    }

    /// Attack steps: PGD and TRADES 10; the single-step methods 1; Fast-BAT 2 lower-level steps.
    pub fn steps(&self) -> usize {
        self.steps.unwrap_or(match self.method {
            AdvMethod::Pgd | AdvMethod::Trades => 10,
            AdvMethod::Fast | AdvMethod::GradAlign => 1,
            AdvMethod::FastBat => 2,
        })
    }

    /// Attack step size: eps/4 for PGD and TRADES, 1.25 eps for Fast-AT, eps for GradAlign's
    /// FGSM, [`FAST_BAT_STEP`] for Fast-BAT.
    pub fn step_size(&self) -> f64 {
        self.step_size.unwrap_or(match self.method {
            AdvMethod::Pgd | AdvMethod::Trades => self.eps / 4.0,
            AdvMethod::Fast => 1.25 * self.eps,
            AdvMethod::GradAlign => self.eps,
            AdvMethod::FastBat => FAST_BAT_STEP,
        })
    }

    /// GradAlign's penalty weight (0.2) or Fast-BAT's lambda (10).
    pub fn lambda(&self) -> f64 {
        self.lambda.unwrap_or(match self.method {
            AdvMethod::FastBat => 10.0,
            _ => 0.2,
        })
    }

    /// TRADES' beta (6).
    pub fn beta(&self) -> f64 {
        self.beta.unwrap_or(6.0)
    }

    /// The l_inf threat model of radius `eps` over `[0, 1]`; an invalid `eps` is reported as
    /// `adv.eps`.
    pub fn threat(&self) -> Result<ThreatModel> {
        ThreatModel::linf(self.eps).map_err(|e| match e {
            Error::Config { msg, .. } => Error::config("adv.eps", msg),
            o => o,
        })
    }

    /// Checks every field and rejects fields the method does not use; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.threat()?;
        let m = self.method;
        let unused = |field: &str, set: bool| -> Result<()> {
            if set {
                return Err(Error::config(
                    format!("adv.{field}"),
                    format!("is not used by {m:?} adversarial training"),
                ));
            }
            Ok(())
        };
        unused(
            "steps",
            self.steps.is_some()
                && matches!(
                    m,
                    AdvMethod::Fast | AdvMethod::GradAlign | AdvMethod::FastBat
                ),
        )?;
        unused(
            "lambda",
            self.lambda.is_some() && !matches!(m, AdvMethod::GradAlign | AdvMethod::FastBat),
        )?;
        unused("beta", self.beta.is_some() && m != AdvMethod::Trades)?;
        validate::positive_int("adv.steps", self.steps())?;
        validate::positive("adv.step_size", self.step_size())?;
        validate::non_negative("adv.lambda", self.lambda())?;
        if m == AdvMethod::FastBat && self.lambda() == 0.0 {
            return Err(Error::config("adv.lambda", "Fast-BAT needs lambda > 0"));
        }
        validate::non_negative("adv.beta", self.beta())?;
        validate::non_negative("adv.monitor.co_drop", self.monitor.co_drop)?;
        if self.monitor.samples > 0 {
            validate::positive_int("adv.monitor.steps", self.monitor.steps)?;
        }
        Ok(())
    }
}

/// Cross-entropy per sample, summed (per-sample input gradients independent of the batch size).
fn ce_sum(logits: &Tensor, y: &Tensor) -> Tensor {
    let l = crate::loss::ce(logits, y);
    l.sum(l.kind())
}

/// Input gradient of the summed cross-entropy at `x` (`create_graph` keeps it differentiable
/// with respect to the parameters, for double backprop).
fn input_grad(model: &Model, x: &Tensor, y: &Tensor, train: bool, create_graph: bool) -> Tensor {
    let xr = x.detach().set_requires_grad(true);
    let l = ce_sum(&model.forward_t(&xr, train), y);
    let g = Tensor::run_backward(&[l], &[&xr], create_graph, create_graph);
    if create_graph {
        g[0].shallow_clone()
    } else {
        g[0].detach()
    }
}

/// GradAlign's penalty `1 - mean_i cos(g_clean_i, grad_x l(x_i + eta_i))`, differentiable in the
/// parameters through the second gradient (double backprop). Samples where either gradient is
/// zero are left out of the mean, as in the reference.
pub fn alignment_penalty(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    g_clean: &Tensor,
    eta: &Tensor,
    train: bool,
) -> Tensor {
    let g_rand = input_grad(model, &(x + eta), y, train, true);
    // Norms through a clamped sqrt: a zero gradient (dead units, saturated logits) must not put
    // a 0/0 into the parameter gradients; such samples are left out of the mean below.
    let safe_norm = |g: &Tensor| {
        let f = g.flatten(1, -1);
        f.square()
            .sum_dim_intlist(1, false, g.kind())
            .clamp_min(1e-30)
            .sqrt()
    };
    let n1 = safe_norm(g_clean);
    let n2 = safe_norm(&g_rand);
    let valid = per_sample_norm(g_clean, Norm::L2)
        .gt(0.0)
        .logical_and(&per_sample_norm(&g_rand.detach(), Norm::L2).gt(0.0));
    let cos =
        (g_clean.flatten(1, -1) * g_rand.flatten(1, -1)).sum_dim_intlist(1, false, g_rand.kind())
            / (&n1 * &n2).clamp_min(1e-30);
    let vf = valid.to_kind(Kind::Float);
    let k = vf.sum(Kind::Float).clamp_min(1.0);
    let s = cos * vf.to_kind(g_rand.kind());
    1.0 - s.sum(s.kind()) / k
}

/// Fast-BAT's implicit-gradient term `<g_atk, b>` where `g_atk` is the (parameter-differentiable)
/// input gradient of the attack loss and `b = H * grad_delta l_tr / lambda` is held fixed: its
/// parameter gradient is the correction's Hessian-vector product.
pub fn implicit_term(g_atk: &Tensor, b: &Tensor) -> Tensor {
    let p = g_atk * b.detach();
    p.sum(p.kind())
}

/// The parameter-differentiable input gradient of the summed cross-entropy of `model` at `x`,
/// the quantity both double-backprop terms differentiate (exposed for gradient checks).
pub fn differentiable_input_grad(model: &Model, x: &Tensor, y: &Tensor, train: bool) -> Tensor {
    input_grad(model, x, y, train, true)
}

/// The adversarial training hook.
pub struct AdvTrainer {
    /// The configuration the hook trains with.
    pub cfg: AdvTrainConfig,
    threat: ThreatModel,
    monitor_data: Option<Dataset>,
    best_pgd: f64,
    best_state: Option<Vec<Tensor>>,
    co_epochs: Vec<usize>,
    /// Seed of the monitor's attacks.
    seed: u64,
}

impl AdvTrainer {
    /// `monitor` is the validation split (its first `cfg.monitor.samples` samples are used).
    pub fn new(cfg: AdvTrainConfig, monitor: Option<&Dataset>, seed: u64) -> Result<AdvTrainer> {
        cfg.validate()?;
        let monitor_data = match monitor {
            Some(d) if cfg.monitor.samples > 0 && !d.is_empty() => {
                let k = cfg.monitor.samples.min(d.len());
                Some(d.subset(&(0..k).collect::<Vec<_>>())?)
            }
            _ => None,
        };
        Ok(AdvTrainer {
            threat: cfg.threat()?,
            cfg,
            monitor_data,
            best_pgd: f64::NEG_INFINITY,
            best_state: None,
            co_epochs: Vec::new(),
            seed,
        })
    }

    /// Epochs (1-based) at which catastrophic overfitting was flagged.
    pub fn co_epochs(&self) -> &[usize] {
        &self.co_epochs
    }

    /// The perturbed training batch (no gradients flow into it).
    fn perturb(&self, model: &Model, x: &Tensor, y: &Tensor) -> Tensor {
        let t = &self.threat;
        let a = self.cfg.step_size();
        match self.cfg.method {
            AdvMethod::Pgd => {
                let mut xa = t.random_start(x);
                for _ in 0..self.cfg.steps() {
                    let g = input_grad(model, &xa, y, true, false);
                    xa = t.project(&(&xa + g.sign() * a), x);
                }
                xa
            }
            AdvMethod::Fast => {
                let x0 = t.random_start(x);
                let g = input_grad(model, &x0, y, true, false);
                t.project(&(&x0 + g.sign() * a), x)
            }
            _ => unreachable!("perturb is only used by PGD-AT and Fast-AT"),
        }
    }

    fn gradalign_step(&self, model: &Model, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let t = &self.threat;
        // FGSM from the clean point; its gradient is also the clean-input gradient of the
        // alignment penalty (detached, as in the reference).
        let g_clean = input_grad(model, x, y, true, false);
        let xa = t.project(&(x + g_clean.sign() * self.cfg.step_size()), x);
        let logits = model.forward_t(&xa, true);
        let mut loss = logits.cross_entropy_for_logits(y);
        let lambda = self.cfg.lambda();
        if lambda > 0.0 {
            let eta = x.rand_like() * (2.0 * self.cfg.eps) - self.cfg.eps;
            loss += alignment_penalty(model, x, y, &g_clean, &eta, true) * lambda;
        }
        (loss, logits)
    }

    fn fast_bat_step(&self, model: &Model, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let t = &self.threat;
        let a = self.cfg.step_size();
        let lambda = self.cfg.lambda();
        let b = x.size()[0] as f64;
        // Lower level: two non-sign descent steps on the attack loss -CE (= ascent on CE) from a
        // random start, each projected onto the ball and the box.
        let z = t.random_start(x);
        let g1 = input_grad(model, &z, y, true, false);
        let d1 = t.project(&(&z + g1 * a), x);
        // Gradient of the attack loss -CE at the second point, kept differentiable in theta.
        let g2 = -input_grad(model, &d1, y, true, true);
        let x_star = t.project(&(&d1 - g2.detach() * a), x);
        // Active set: coordinates strictly inside both the ball and the box.
        let delta = &x_star - x;
        let lo = (-x + t.lo).clamp_min(-self.cfg.eps);
        let hi = (-x + t.hi).clamp_max(self.cfg.eps);
        let h = delta
            .gt_tensor(&(&lo + 1e-7))
            .logical_and(&delta.lt_tensor(&(&hi - 1e-7)))
            .to_kind(Kind::Float);
        // Upper level at delta*, with the gradient of the training loss in delta.
        let xs = x_star.detach().set_requires_grad(true);
        let logits = model.forward_t(&xs, true);
        let l_sum = ce_sum(&logits, y);
        let d_out = Tensor::run_backward(&[&l_sum], &[&xs], true, false)[0].detach();
        let bvec = h * d_out / lambda;
        // Implicit-gradient correction -(1/lambda) d/dtheta <grad_delta l_atk, H * grad_delta l_tr>,
        // averaged over the batch like the training loss.
        let loss = l_sum / b - implicit_term(&g2, &bvec) / b;
        (loss, logits)
    }

    fn trades_step(&self, model: &Model, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let t = &self.threat;
        let a = self.cfg.step_size();
        // Attack: maximize KL(p(x) || p(x')) in eval mode, as in the reference.
        let p_nat = tch::no_grad(|| model.forward_t(x, false).softmax(-1, Kind::Float));
        let mut xa = t.clamp_box(&(x + x.randn_like() * 0.001));
        for _ in 0..self.cfg.steps() {
            let xr = xa.detach().set_requires_grad(true);
            let logp = model.forward_t(&xr, false).log_softmax(-1, Kind::Float);
            let kl = (&p_nat * (p_nat.clamp_min(1e-12).log() - logp)).sum(Kind::Float);
            let g = Tensor::run_backward(&[kl], &[&xr], false, false)[0].detach();
            xa = t.project(&(&xa + g.sign() * a), x);
        }
        let logits_nat = model.forward_t(x, true);
        let logits_adv = model.forward_t(&xa.detach(), true);
        let b = x.size()[0] as f64;
        let p = logits_nat.softmax(-1, Kind::Float);
        let kl = (&p
            * (logits_nat.log_softmax(-1, Kind::Float) - logits_adv.log_softmax(-1, Kind::Float)))
        .sum(Kind::Float)
            / b;
        let loss = logits_nat.cross_entropy_for_logits(y) + kl * self.cfg.beta();
        (loss, logits_adv)
    }

    fn snapshot(model: &Model) -> Vec<Tensor> {
        tch::no_grad(|| model.state_dict().iter().map(|(_, t)| t.copy()).collect())
    }

    fn restore(model: &Model, state: &[Tensor]) {
        tch::no_grad(|| {
            for ((_, t), s) in model.state_dict().iter().zip(state) {
                t.shallow_clone().copy_(s);
            }
        });
    }

    /// PGD and FGSM accuracy (percent) on the monitor set.
    pub fn monitor(&self, model: &Model, epoch: usize) -> Result<Option<(f64, f64)>> {
        let Some(d) = &self.monitor_data else {
            return Ok(None);
        };
        let d = d.to_device(model.device());
        let mut pgd = Pgd::new(self.threat, self.cfg.monitor.steps);
        pgd.early_stop = true;
        let opts = RunOptions {
            batch_size: 500,
            seed: rustworthy_core::seed::derive(self.seed, "monitor", epoch as u64),
            ..RunOptions::default()
        };
        let p = attack_dataset(&pgd, model, &d, &opts)?
            .summary
            .robust_accuracy;
        let f = attack_dataset(&Pgd::fgsm(self.threat), model, &d, &opts)?
            .summary
            .robust_accuracy;
        Ok(Some((p, f)))
    }
}

impl TrainHook for AdvTrainer {
    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.cfg).ok()
    }

    fn begin(&mut self, _model: &Model, history: &[EpochRecord]) -> Result<()> {
        for r in history {
            if let Some(p) = r.extra.get("val_pgd_accuracy") {
                self.best_pgd = self.best_pgd.max(*p);
            }
            if r.extra.get("catastrophic_overfitting").copied() == Some(1.0) {
                self.co_epochs.push(r.epoch);
            }
        }
        Ok(())
    }

    fn step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let (loss, logits) = match self.cfg.method {
            AdvMethod::Pgd | AdvMethod::Fast => {
                let xa = self.perturb(model, x, y).detach();
                let logits = model.forward_t(&xa, true);
                (logits.cross_entropy_for_logits(y), logits)
            }
            AdvMethod::GradAlign => self.gradalign_step(model, x, y),
            AdvMethod::FastBat => self.fast_bat_step(model, x, y),
            AdvMethod::Trades => self.trades_step(model, x, y),
        };
        loss.backward();
        Ok((loss.detach(), logits.detach()))
    }

    fn end_epoch(&mut self, model: &mut Model, epoch: usize) -> Result<EpochVerdict> {
        let mut v = EpochVerdict::default();
        let Some((pgd, fgsm)) = self.monitor(model, epoch)? else {
            return Ok(v);
        };
        v.extra.insert("val_pgd_accuracy".into(), pgd);
        v.extra.insert("val_fgsm_accuracy".into(), fgsm);
        let co = self.best_pgd.is_finite() && pgd < self.best_pgd - self.cfg.monitor.co_drop;
        v.extra.insert(
            "catastrophic_overfitting".into(),
            if co { 1.0 } else { 0.0 },
        );
        if co {
            self.co_epochs.push(epoch + 1);
            if self.cfg.monitor.stop_on_co {
                let restored = match &self.best_state {
                    Some(s) => {
                        Self::restore(model, s);
                        "restored the weights of the most robust epoch"
                    }
                    None => "no weights of the most robust epoch are held (a resumed run); kept the current ones",
                };
                v.stop = Some(format!(
                    "catastrophic overfitting in epoch {}: PGD accuracy {pgd:.2}% fell from {:.2}% \
                     (FGSM {fgsm:.2}%); {restored}",
                    epoch + 1,
                    self.best_pgd
                ));
            }
        } else if pgd > self.best_pgd {
            self.best_pgd = pgd;
            if self.cfg.monitor.stop_on_co {
                self.best_state = Some(Self::snapshot(model));
            }
        }
        Ok(v)
    }
}
