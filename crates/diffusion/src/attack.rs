//! The UnlearnDiffAtk-style attack with the class conditioning in the role of the prompt:
//! optimize a conditioning so that the (possibly erased) model denoises images of the erased
//! class well under it (the conditional prediction only, fresh noise every step, a schedule of
//! timesteps visited in ascending order with a fixed number of Adam steps each), and after each
//! timestep generate from the current conditioning and ask our classifier whether the class is
//! back, stopping at the first success.
//!
//! Two variables: a continuous vector in the class-embedding space (the analogue of attacking the
//! text embedding), and the paper's discrete relaxation: a distribution over the class-table rows
//! per token of a short sequence, sampled to one-hot rows in the forward pass with a
//! straight-through gradient clipped to [-1, 1], updated by Adam with weight decay and
//! projected back onto the simplex; the conditioning is the mean of the chosen rows.

use crate::sample::{sample, Noise, Sampler};
use crate::schedule::Schedule;
use crate::train::{to_model_range, to_unit_range, zero_grads};
use crate::unet::CondUNet;
use rustworthy_core::progress::check_interrupt;
use rustworthy_core::seed::derive;
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use rustworthy_train::optim::{OptimConfig, Optimizer};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

/// What the attack optimizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum AttackVariable {
    /// A free vector in the class-embedding space, started at the erased class's row.
    Continuous,
    /// A sequence of `tokens` distributions over the class-table rows, started uniform.
    Discrete {
        /// Sequence length (the paper uses 3 or 5 prompt tokens).
        tokens: usize,
    },
}

/// The attack's settings (defaults: the paper's schedule: t = 10, 30, ..., 990 ascending, 40
/// Adam steps at each, lr 0.01; weight decay 0.1 for the discrete variable as the paper's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// The variable.
    pub variable: AttackVariable,
    /// First timestep of the schedule.
    pub t_start: i64,
    /// Stride of the schedule.
    pub t_stride: i64,
    /// Adam steps per timestep.
    pub iterations: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam's L2 weight decay.
    pub weight_decay: f64,
    /// Sampler of the success check.
    pub check_sampler: Sampler,
    /// Guidance of the success check's generation.
    pub check_guidance: f64,
    /// Images generated per check; success when the classifier assigns at least half of them
    /// to the erased class (1: the paper's single image).
    pub check_samples: i64,
}

impl Default for AttackConfig {
    fn default() -> Self {
        AttackConfig {
            variable: AttackVariable::Continuous,
            t_start: 10,
            t_stride: 20,
            iterations: 40,
            lr: 0.01,
            weight_decay: 0.0,
            check_sampler: Sampler::Ddim {
                steps: 50,
                eta: 0.0,
            },
            check_guidance: 2.0,
            check_samples: 1,
        }
    }
}

impl AttackConfig {
    /// The timesteps visited, ascending.
    pub fn schedule(&self, steps: i64) -> Vec<i64> {
        (self.t_start..steps)
            .step_by(self.t_stride.max(1) as usize)
            .collect()
    }

    /// Checks every field.
    pub fn validate(&self, sched: &Schedule) -> Result<()> {
        if self.t_start < 0 || self.t_start >= sched.steps || self.t_stride < 1 {
            return Err(Error::config(
                "attack.t_start",
                format!("need 0 <= t_start < {} and t_stride >= 1", sched.steps),
            ));
        }
        validate::positive_int("attack.iterations", self.iterations)?;
        validate::positive("attack.lr", self.lr)?;
        validate::non_negative("attack.weight_decay", self.weight_decay)?;
        validate::non_negative("attack.check_guidance", self.check_guidance)?;
        if self.check_samples < 1 {
            return Err(Error::config("attack.check_samples", "must be >= 1"));
        }
        if let AttackVariable::Discrete { tokens } = self.variable {
            validate::positive_int("attack.variable.tokens", tokens)?;
        }
        self.check_sampler.validate(sched)
    }
}

/// One attack instance's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackOutcome {
    /// Whether the unattacked class label already generates the class (pre-attack success).
    pub pre_success: bool,
    /// Whether some check succeeded (true whenever `pre_success`).
    pub success: bool,
    /// Timesteps of the schedule completed before stopping.
    pub timesteps_used: usize,
    /// Adam steps taken.
    pub steps: usize,
    /// Share of the last check's images assigned to the erased class.
    pub last_share: f64,
    /// Mean denoising loss over the last timestep's steps.
    pub last_loss: f64,
    /// Seconds.
    pub seconds: f64,
}

/// Generates `cfg.check_samples` images from the conditioning `cvec` `[ch]` (noise from
/// `seed`) and returns the share the classifier assigns to `class`, with the images in [0, 1].
pub fn check(
    model: &CondUNet,
    classifier: &Model,
    cvec: &Tensor,
    class: i64,
    cfg: &AttackConfig,
    seed: u64,
) -> Result<(f64, Tensor)> {
    let sched = Schedule::reference(model.device());
    let c = &model.config;
    let n = cfg.check_samples;
    tch::manual_seed(seed as i64);
    let x_t = Tensor::randn(
        [n, c.in_channels, c.resolution, c.resolution],
        (Kind::Float, model.device()),
    );
    let v = cvec.detach().unsqueeze(0).expand([n, -1], false);
    let x = sample(&sched, &cfg.check_sampler, &x_t, Noise::Global, |x, t| {
        model.guided_vec(x, t, &v, cfg.check_guidance, false)
    })?;
    let x = to_unit_range(&x);
    let share = crate::metrics::class_share(classifier, &x, class)?;
    Ok((share, x))
}

/// Euclidean projection of each row of `u` `[k, V]` onto the simplex {0 <= u <= 1, sum u = 1}
/// by bisection on the shift (the paper's projection).
pub fn project_simplex(u: &Tensor) -> Tensor {
    let mut lo = (u.min_dim(1, true).0 - 1.0).to_kind(Kind::Double);
    let mut hi = u.max_dim(1, true).0.to_kind(Kind::Double);
    let ud = u.to_kind(Kind::Double);
    for _ in 0..60 {
        let mid = (&lo + &hi) * 0.5;
        let s = (&ud - &mid)
            .clamp(0.0, 1.0)
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let above = s.gt(1.0);
        lo = mid.where_self(&above, &lo);
        hi = hi.where_self(&above, &mid);
    }
    let mid = (lo + hi) * 0.5;
    (ud - mid).clamp(0.0, 1.0).to_kind(u.kind())
}

/// Attacks `model` toward the erased `class` with the target image `target` `[1, C, H, W]` in
/// [0, 1]; `seed` draws the training noise and the discrete samples, `check_seed` the checks'
/// noise (the same for every model, as the paper's fixed evaluation seed).
pub fn attack(
    model: &CondUNet,
    classifier: &Model,
    target: &Tensor,
    class: i64,
    cfg: &AttackConfig,
    seed: u64,
    check_seed: u64,
) -> Result<AttackOutcome> {
    let t0 = Instant::now();
    let dev = model.device();
    let sched = Schedule::reference(dev);
    cfg.validate(&sched)?;
    let mc = &model.config;
    if class < 0 || class >= mc.num_classes {
        return Err(Error::invalid(format!(
            "attack: class {class} is out of range (the model has {} classes)",
            mc.num_classes
        )));
    }
    if target.size() != [1, mc.in_channels, mc.resolution, mc.resolution] {
        return Err(Error::Shape {
            op: "attack target".into(),
            expected: format!(
                "[1, {}, {}, {}]",
                mc.in_channels, mc.resolution, mc.resolution
            ),
            got: target.size(),
        });
    }
    let table = model.class_table().detach();
    let own = table.get(class);
    let (pre_share, _) = check(model, classifier, &own, class, cfg, check_seed)?;
    let mut out = AttackOutcome {
        pre_success: pre_share >= 0.5,
        success: pre_share >= 0.5,
        timesteps_used: 0,
        steps: 0,
        last_share: pre_share,
        last_loss: f64::NAN,
        seconds: 0.0,
    };
    if out.success {
        out.seconds = t0.elapsed().as_secs_f64();
        return Ok(out);
    }
    let x0 = to_model_range(&target.to_device(dev));
    let v_classes = mc.num_classes;
    let var = match cfg.variable {
        AttackVariable::Continuous => own.copy(),
        AttackVariable::Discrete { tokens } => Tensor::full(
            [tokens as i64, v_classes],
            1.0 / v_classes as f64,
            (Kind::Float, dev),
        ),
    }
    .set_requires_grad(true);
    let mut opt = Optimizer::new(
        OptimConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
        vec![("attack".into(), var.shallow_clone())],
    )?;
    // The conditioning a check generates from: the vector, or each token's most likely row.
    let conditioning = |var: &Tensor| -> Tensor {
        match cfg.variable {
            AttackVariable::Continuous => var.detach(),
            AttackVariable::Discrete { .. } => table
                .index_select(0, &var.argmax(1, false))
                .mean_dim(0, false, Kind::Float),
        }
    };
    let model_params: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut step = 0u64;
    for (k, t) in cfg.schedule(sched.steps).into_iter().enumerate() {
        let mut acc = 0.0;
        for _ in 0..cfg.iterations {
            check_interrupt()?;
            tch::manual_seed(derive(seed, "unlearndiffatk", step) as i64);
            step += 1;
            let e = x0.randn_like();
            let tt = Tensor::full([1], t, (Kind::Int64, dev));
            let xt = sched.q_sample(&x0, &tt, &e);
            opt.zero_grad();
            let loss = match cfg.variable {
                AttackVariable::Continuous => {
                    let pred = model.forward_vec(
                        &xt,
                        &tt.to_kind(Kind::Float),
                        &var.unsqueeze(0),
                        false,
                    )?;
                    (pred - &e).square().mean(Kind::Float)
                }
                AttackVariable::Discrete { .. } => {
                    // Straight-through: the loss's gradient with respect to the sampled one-hot
                    // rows, clipped to [-1, 1], becomes the distributions' gradient.
                    let pick = var.detach().multinomial(1, true).squeeze_dim(1);
                    let onehot = pick
                        .one_hot(v_classes)
                        .to_kind(Kind::Float)
                        .set_requires_grad(true);
                    let cvec = onehot.matmul(&table).mean_dim(0, true, Kind::Float);
                    let pred = model.forward_vec(&xt, &tt.to_kind(Kind::Float), &cvec, false)?;
                    let loss = (pred - &e).square().mean(Kind::Float);
                    let g = Tensor::run_backward(&[&loss], &[&onehot], false, false)
                        .remove(0)
                        .clamp(-1.0, 1.0);
                    (&var * g.detach()).sum(Kind::Float).backward();
                    loss.detach()
                }
            };
            if matches!(cfg.variable, AttackVariable::Continuous) {
                loss.backward();
            }
            // Only the attack variable moves; the model's own gradients are discarded.
            zero_grads(&model_params);
            opt.step(cfg.lr)?;
            if let AttackVariable::Discrete { .. } = cfg.variable {
                tch::no_grad(|| var.shallow_clone().copy_(&project_simplex(&var)));
            }
            acc += loss.double_value(&[]);
        }
        out.timesteps_used = k + 1;
        out.steps = step as usize;
        out.last_loss = acc / cfg.iterations as f64;
        let (share, _) = check(
            model,
            classifier,
            &conditioning(&var),
            class,
            cfg,
            check_seed,
        )?;
        out.last_share = share;
        if share >= 0.5 {
            out.success = true;
            break;
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The Wilson score interval (95%) of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959963984540054;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / d;
    ((c - h).max(0.0), (c + h).min(1.0))
}
