//! Pruning pipelines: OMP, IMP with rewinding, pruning at initialization (SNIP, GraSP, SynFlow,
//! random), HYDRA score learning and BiP. Every pipeline returns the masks, the pruned model and
//! its accuracy; pruned weights are exactly zero and stay so.

use crate::scores::{self, check_sparsity, masks_from_scores, Scope, Scores};
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::seed::{derive, seed_torch};
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::dataset::epoch_order;
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_train::mask::{
    apply_masks, mask_stats, prunable, weight_sparsity, LayerSparsity, Masks,
};
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{
    evaluate, fit_with, EpochVerdict, MaskedStep, StandardStep, TrainConfig, TrainHook,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::Tensor;

/// The pruning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMethod {
    /// One-shot magnitude pruning of the trained model, then a short fine-tune.
    Omp,
    /// Iterative magnitude pruning: prune a share of the remaining weights, rewind, retrain.
    Imp,
    /// Pruning at initialization by connection sensitivity.
    Snip,
    /// Pruning at initialization preserving gradient flow.
    Grasp,
    /// Data-free iterative pruning at initialization by synaptic flow.
    Synflow,
    /// Random pruning at initialization (a baseline).
    Random,
    /// Score learning with frozen trained weights, then fine-tuning.
    Hydra,
    /// Bi-level pruning: mask scores and weights in one loop with the implicit-gradient term.
    Bip,
}

impl PruneMethod {
    /// Every method, in the order tables list them.
    pub const ALL: &'static [PruneMethod] = &[
        PruneMethod::Omp,
        PruneMethod::Imp,
        PruneMethod::Snip,
        PruneMethod::Grasp,
        PruneMethod::Synflow,
        PruneMethod::Random,
        PruneMethod::Hydra,
        PruneMethod::Bip,
    ];
    /// The method's name as the CLI and configs spell it, e.g. `synflow`.
    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Omp => "omp",
            PruneMethod::Imp => "imp",
            PruneMethod::Snip => "snip",
            PruneMethod::Grasp => "grasp",
            PruneMethod::Synflow => "synflow",
            PruneMethod::Random => "random",
            PruneMethod::Hydra => "hydra",
            PruneMethod::Bip => "bip",
        }
    }
    /// Whether the method prunes a given model in one shot (see [`one_shot_masks`]).
    pub fn is_one_shot(self) -> bool {
        matches!(
            self,
            PruneMethod::Omp
                | PruneMethod::Snip
                | PruneMethod::Grasp
                | PruneMethod::Synflow
                | PruneMethod::Random
        )
    }
    /// Whether the method starts from the trained dense model (else from the initialization).
    pub fn needs_trained(self) -> bool {
        matches!(
            self,
            PruneMethod::Omp | PruneMethod::Hydra | PruneMethod::Bip
        )
    }
}

impl std::str::FromStr for PruneMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<PruneMethod> {
        PruneMethod::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "method",
                    format!(
                        "unknown pruning method `{s}` ({})",
                        PruneMethod::ALL
                            .iter()
                            .map(|m| m.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }
}

/// Hyperparameters of a pruning run (the training recipe is passed separately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// The pruning method.
    pub method: PruneMethod,
    /// Fraction of the prunable weights (conv and linear weights) removed, in [0, 1).
    pub sparsity: f64,
    /// Whether the sparsity applies globally or to every layer alike (default global).
    #[serde(default)]
    pub scope: Scope,
    /// OMP and HYDRA: fine-tuning epochs after pruning (cosine from `finetune_lr`).
    #[serde(default = "d_ft_epochs")]
    pub finetune_epochs: usize,
    /// OMP and HYDRA: initial learning rate of the fine-tuning (default 0.01).
    #[serde(default = "d_ft_lr")]
    pub finetune_lr: f64,
    /// IMP: share of the remaining weights removed per round.
    #[serde(default = "d_rate")]
    pub imp_rate: f64,
    /// IMP: rewind to the weights after this many dense epochs (0 = the initialization).
    #[serde(default)]
    pub rewind_epoch: usize,
    /// HYDRA and BiP: epochs of the score (and, for BiP, weight) loop.
    #[serde(default = "d_score_epochs")]
    pub score_epochs: usize,
    /// HYDRA and BiP: learning rate of the mask scores.
    #[serde(default = "d_score_lr")]
    pub score_lr: f64,
    /// BiP: learning rate of the weights in the lower level.
    #[serde(default = "d_bip_lr")]
    pub bip_weight_lr: f64,
    /// BiP: the lower level's l2 regularization gamma; the implicit-gradient term is scaled by
    /// 1/gamma.
    #[serde(default = "d_gamma")]
    pub bip_gamma: f64,
    /// SNIP and GraSP: batch size of the scoring batches.
    #[serde(default = "d_score_batch")]
    pub score_batch_size: usize,
    /// SynFlow: pruning rounds.
    #[serde(default = "d_rounds")]
    pub synflow_rounds: usize,
    /// Structured pruning (OMP and BiP): remove whole output channels (filters, neurons) of every
    /// prunable layer but the classifier; `sparsity` is then the share of channels removed.
    #[serde(default)]
    pub structured: bool,
    /// Seed of the method's own randomness (random scores, scoring batch order, libtorch's generator while scoring).
    #[serde(default)]
    pub seed: u64,
}

fn d_ft_epochs() -> usize {
    3
}
fn d_ft_lr() -> f64 {
    0.01
}
fn d_rate() -> f64 {
    0.2
}
fn d_score_epochs() -> usize {
    10
}
fn d_score_lr() -> f64 {
    0.1
}
fn d_bip_lr() -> f64 {
    0.01
}
fn d_gamma() -> f64 {
    1.0
}
fn d_score_batch() -> usize {
    256
}
fn d_rounds() -> usize {
    100
}

impl PruneConfig {
    /// The configuration of `method` at `sparsity` with every other field at its default.
    pub fn new(method: PruneMethod, sparsity: f64) -> PruneConfig {
        PruneConfig {
            method,
            sparsity,
            scope: Scope::Global,
            finetune_epochs: d_ft_epochs(),
            finetune_lr: d_ft_lr(),
            imp_rate: d_rate(),
            rewind_epoch: 0,
            score_epochs: d_score_epochs(),
            score_lr: d_score_lr(),
            bip_weight_lr: d_bip_lr(),
            bip_gamma: d_gamma(),
            score_batch_size: d_score_batch(),
            synflow_rounds: d_rounds(),
            structured: false,
            seed: 0,
        }
    }

    /// Checks every field against the training recipe (e.g. `rewind_epoch` below its epochs); errors name the field.
    pub fn validate(&self, recipe: &TrainConfig) -> Result<()> {
        check_sparsity(self.sparsity)?;
        validate::positive_int("finetune_epochs", self.finetune_epochs)?;
        validate::positive("finetune_lr", self.finetune_lr)?;
        validate::in_half_open("imp_rate", self.imp_rate, 1e-6, 1.0)?;
        if self.rewind_epoch >= recipe.epochs {
            return Err(Error::config(
                "rewind_epoch",
                format!(
                    "{} must be below the recipe's {} epochs",
                    self.rewind_epoch, recipe.epochs
                ),
            ));
        }
        validate::positive_int("score_epochs", self.score_epochs)?;
        validate::positive("score_lr", self.score_lr)?;
        validate::positive("bip_weight_lr", self.bip_weight_lr)?;
        validate::positive("bip_gamma", self.bip_gamma)?;
        validate::positive_int("score_batch_size", self.score_batch_size)?;
        validate::positive_int("synflow_rounds", self.synflow_rounds)?;
        if self.structured && !matches!(self.method, PruneMethod::Omp | PruneMethod::Bip) {
            return Err(Error::config(
                "structured",
                format!(
                    "structured (channel) pruning is implemented for omp and bip, not {}",
                    self.method.name()
                ),
            ));
        }
        Ok(())
    }
}

/// One point of a pruning trajectory (IMP rounds; one point for the one-shot methods).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// The round number, counted from 1.
    pub round: usize,
    /// Sparsity of the round's masks over the prunable weights, in [0, 1].
    pub sparsity: f64,
    /// Test accuracy of the round's model, in percent.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the method up to and including this round.
    pub seconds: f64,
}

/// What a pruning run returns.
pub struct PruneOutcome {
    /// The final masks (1 = kept, 0 = pruned) by parameter name.
    pub masks: Masks,
    /// The pruned and trained model.
    pub model: Model,
    /// Test accuracy of the pruned model, in percent.
    pub test_accuracy: f64,
    /// Sparsity of the masks over the prunable weights.
    pub sparsity: f64,
    /// Fraction of prunable weights that are exactly zero in the returned model.
    pub zero_fraction: f64,
    /// Per-layer mask statistics.
    pub layers: Vec<LayerSparsity>,
    /// The trajectory: one record per IMP round, a single one for the other methods.
    pub rounds: Vec<RoundRecord>,
    /// Wall-clock seconds of the method (not counting the shared dense training).
    pub seconds: f64,
}

/// The data of a pruning run (all on the model's device).
pub struct PruneData<'a> {
    /// The training set (scoring, fine-tuning and retraining).
    pub train: &'a Dataset,
    /// The test set the accuracies are measured on.
    pub test: &'a Dataset,
}

/// A dense model and its trained counterpart, plus the weights at `rewind_epoch` for IMP.
pub struct Dense {
    /// The initialization the dense run started from.
    pub init: Model,
    /// The dense model after the full training recipe.
    pub trained: Model,
    /// The weights after `rewind_epoch` epochs (the initialization when it is 0).
    pub rewind: Model,
    /// The epoch whose weights `rewind` holds.
    pub rewind_epoch: usize,
    /// Wall-clock seconds of the dense training.
    pub seconds: f64,
}

/// Standard training that keeps a copy of the weights after epoch `at`.
struct Snapshot {
    at: usize,
    weights: Option<Model>,
}

impl TrainHook for Snapshot {
    fn step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        StandardStep.step(model, x, y)
    }
    fn end_epoch(&mut self, model: &mut Model, epoch: usize) -> Result<EpochVerdict> {
        if epoch + 1 == self.at {
            self.weights = Some(model.try_clone()?);
        }
        Ok(EpochVerdict::default())
    }
}

fn quiet() -> FitOptions {
    FitOptions {
        progress: ProgressMode::Quiet,
        ..Default::default()
    }
}

/// Trains the dense model from `init` with `recipe`, keeping the weights after `rewind_epoch`.
pub fn train_dense(
    init: &Model,
    data: &PruneData,
    recipe: &TrainConfig,
    rewind_epoch: usize,
) -> Result<Dense> {
    let t0 = Instant::now();
    let mut trained = init.try_clone()?;
    let mut hook = Snapshot {
        at: rewind_epoch,
        weights: None,
    };
    fit_with(&mut trained, data.train, None, recipe, &quiet(), &mut hook)?;
    let rewind = match hook.weights {
        Some(w) => w,
        None => init.try_clone()?,
    };
    Ok(Dense {
        init: init.try_clone()?,
        trained,
        rewind,
        rewind_epoch,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The IMP restart point of a round: the dense weights saved at the rewind epoch, with the
/// pruned entries zeroed.
pub fn rewound(dense: &Dense, masks: &Masks) -> Result<Model> {
    let m = dense.rewind.try_clone()?;
    apply_masks(&m, masks)?;
    Ok(m)
}

fn train_masked(
    model: &mut Model,
    data: &PruneData,
    recipe: &TrainConfig,
    masks: &Masks,
) -> Result<()> {
    fit_with(
        model,
        data.train,
        None,
        recipe,
        &quiet(),
        &mut MaskedStep(masks),
    )?;
    Ok(())
}

fn accuracy(model: &Model, data: &PruneData, recipe: &TrainConfig) -> Result<f64> {
    Ok(evaluate(model, data.test, recipe.eval_batch_size)?.accuracy)
}

/// The fine-tuning recipe: the training recipe with `epochs` epochs from `lr`, cosine.
fn finetune_recipe(recipe: &TrainConfig, epochs: usize, lr: f64) -> TrainConfig {
    let mut r = recipe.clone();
    r.epochs = epochs;
    r.lr.lr = lr;
    r.lr.schedule = rustworthy_train::schedule::LrSchedule::Cosine { min_lr: 0.0 };
    r.lr.warmup_epochs = 0.0;
    r
}

/// Runs `cfg.method` to `cfg.sparsity`.
pub fn prune(
    cfg: &PruneConfig,
    dense: &Dense,
    data: &PruneData,
    recipe: &TrainConfig,
) -> Result<PruneOutcome> {
    cfg.validate(recipe)?;
    let t0 = Instant::now();
    let s = cfg.sparsity;
    let mut rounds = Vec::new();
    let (model, masks) = match cfg.method {
        PruneMethod::Omp => {
            let mut m = dense.trained.try_clone()?;
            let masks = if cfg.structured {
                let like: BTreeMap<String, Tensor> =
                    scores::channel_layers(&m).into_iter().collect();
                scores::channel_masks(&scores::filter_l1(&m), &like, s, cfg.scope)?
            } else {
                masks_from_scores(&scores::magnitude(&m), s, cfg.scope, None)?
            };
            train_masked(
                &mut m,
                data,
                &finetune_recipe(recipe, cfg.finetune_epochs, cfg.finetune_lr),
                &masks,
            )?;
            (m, masks)
        }
        PruneMethod::Imp => {
            if dense.rewind_epoch != cfg.rewind_epoch {
                return Err(Error::config(
                    "rewind_epoch",
                    format!(
                        "the dense run kept the weights of epoch {}, not {}",
                        dense.rewind_epoch, cfg.rewind_epoch
                    ),
                ));
            }
            let mut current = dense.trained.try_clone()?;
            let mut masks: Option<Masks> = None;
            let mut density = 1.0f64;
            let mut round = 0usize;
            loop {
                round += 1;
                density = (density * (1.0 - cfg.imp_rate)).max(1.0 - s);
                let sp = 1.0 - density;
                let m =
                    masks_from_scores(&scores::magnitude(&current), sp, cfg.scope, masks.as_ref())?;
                let mut next = rewound(dense, &m)?;
                train_masked(&mut next, data, recipe, &m)?;
                rounds.push(RoundRecord {
                    round,
                    sparsity: mask_stats(&m).1,
                    test_accuracy: accuracy(&next, data, recipe)?,
                    seconds: t0.elapsed().as_secs_f64(),
                });
                current = next;
                masks = Some(m);
                if sp >= s - 1e-12 {
                    break;
                }
            }
            (current, masks.unwrap_or_default())
        }
        PruneMethod::Snip | PruneMethod::Grasp | PruneMethod::Synflow | PruneMethod::Random => {
            let mut m = dense.init.try_clone()?;
            seed_torch(derive(cfg.seed, "prune-score", 0));
            let masks = match cfg.method {
                PruneMethod::Snip => masks_from_scores(
                    &scores::snip(&m, data.train, cfg.score_batch_size, 1)?,
                    s,
                    cfg.scope,
                    None,
                )?,
                PruneMethod::Grasp => masks_from_scores(
                    &scores::grasp(&m, data.train, cfg.score_batch_size)?,
                    s,
                    cfg.scope,
                    None,
                )?,
                PruneMethod::Synflow => {
                    scores::synflow_masks(&m, s, cfg.scope, cfg.synflow_rounds)?
                }
                _ => masks_from_scores(&scores::random(&m, cfg.seed)?, s, cfg.scope, None)?,
            };
            train_masked(&mut m, data, recipe, &masks)?;
            (m, masks)
        }
        PruneMethod::Hydra | PruneMethod::Bip => {
            let mut m = dense.trained.try_clone()?;
            let masks = score_loop(cfg, &m, data, recipe)?;
            if cfg.method == PruneMethod::Hydra {
                train_masked(
                    &mut m,
                    data,
                    &finetune_recipe(recipe, cfg.finetune_epochs, cfg.finetune_lr),
                    &masks,
                )?;
            }
            (m, masks)
        }
    };
    apply_masks(&model, &masks)?;
    let test_accuracy = accuracy(&model, data, recipe)?;
    let (layers, sparsity) = mask_stats(&masks);
    if rounds.is_empty() {
        rounds.push(RoundRecord {
            round: 1,
            sparsity,
            test_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(PruneOutcome {
        zero_fraction: weight_sparsity(&model, &masks),
        masks,
        model,
        test_accuracy,
        sparsity,
        layers,
        rounds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// HYDRA and BiP. The model's prunable parameters hold the effective weights `z = m * theta`
/// during each forward and backward pass, with `m` the top-k mask of the scores; `dL/dz` then
/// gives `dL/dtheta = m * dL/dz` and the straight-through score gradient `theta * dL/dz`.
///
/// * HYDRA (Sehwag et al., 2020): weights frozen; scores by SGD on `theta * dL/dz`.
/// * BiP (Zhang et al., 2022): per batch, a lower-level SGD step on the weights (all trainable
///   parameters, l2 weight `gamma`), then an upper-level step on the scores at the new weights
///   with the implicit-gradient term: `theta * g - (1/gamma) g * (m * g)`, `g = dL/dz`, under
///   the paper's Hessian-free approximation; scores stay in [0, 1].
fn score_loop(
    cfg: &PruneConfig,
    model: &Model,
    data: &PruneData,
    recipe: &TrainConfig,
) -> Result<Masks> {
    let bip = cfg.method == PruneMethod::Bip;
    let structured = cfg.structured;
    let prun: Vec<(String, Tensor)> = if structured {
        scores::channel_layers(model)
    } else {
        prunable(model)
    };
    let names: Vec<String> = prun.iter().map(|(k, _)| k.clone()).collect();
    let theta: Vec<Tensor> = prun.iter().map(|(_, t)| t.detach().copy()).collect();
    let others: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .filter(|(k, _)| !names.contains(k))
        .map(|(_, t)| t)
        .collect();
    // Scores start at the magnitudes, scaled into [0, 1] (HYDRA's scaled initialization up to
    // a constant; BiP keeps them in [0, 1]).
    let maxw = theta
        .iter()
        .map(|t| t.abs().max().double_value(&[]))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    // Structured: one score per output channel (its mean magnitude, scaled the same way).
    let mut sc: Vec<Tensor> = theta
        .iter()
        .map(|t| {
            if structured {
                let per = t.numel() as f64 / t.size()[0].max(1) as f64;
                scores::per_channel(&t.abs()) / (per * maxw)
            } else {
                t.abs() / maxw
            }
        })
        .collect();
    let like: BTreeMap<String, Tensor> = prun
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let mask_of = |sc: &[Tensor]| -> Result<Masks> {
        let s: Scores = names
            .iter()
            .cloned()
            .zip(sc.iter().map(|t| t.shallow_clone()))
            .collect();
        if structured {
            scores::channel_masks(&s, &like, cfg.sparsity, cfg.scope)
        } else {
            masks_from_scores(&s, cfg.sparsity, cfg.scope, None)
        }
    };
    // Structured: a channel's score gradient is the mean over its entries (the scores are mean
    // magnitudes, so both live on the same scale).
    let reduce = |t: Tensor| {
        if structured {
            let per = t.numel() as f64 / t.size()[0].max(1) as f64;
            scores::per_channel(&t) / per
        } else {
            t
        }
    };
    let mut mom_theta: Vec<Tensor> = theta.iter().map(|t| t.zeros_like()).collect();
    let mut mom_other: Vec<Tensor> = others.iter().map(|t| t.zeros_like()).collect();
    let mut mom_s: Vec<Tensor> = sc.iter().map(|t| t.zeros_like()).collect();
    let momentum = 0.9;
    let wd = recipe_weight_decay(recipe);
    let n = data.train.len();
    let bs = recipe.batch_size;
    let set_effective = |m: &Masks| {
        tch::no_grad(|| {
            for ((name, p), th) in prun.iter().zip(&theta) {
                p.shallow_clone().copy_(&(th * &m[name]));
            }
        })
    };
    let grads = |x: &Tensor, y: &Tensor| -> Result<Vec<Tensor>> {
        for (_, p) in model.parameters() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
        let loss = model.forward_t(x, true).cross_entropy_for_logits(y);
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            return Err(Error::Numerical(format!(
                "{} loss became {l}; lower score_lr or bip_weight_lr",
                cfg.method.name()
            )));
        }
        loss.backward();
        Ok(prun.iter().map(|(_, p)| p.grad().detach().copy()).collect())
    };
    let total_steps = cfg.score_epochs * n.div_ceil(bs);
    let mut step = 0usize;
    for epoch in 0..cfg.score_epochs {
        let order = epoch_order(n, true, derive(cfg.seed, "prune-scores", 0), epoch as u64);
        for chunk in order.chunks(bs) {
            let lr_frac =
                0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos());
            step += 1;
            let (x, y) = data.train.try_batch(chunk)?;
            let m = mask_of(&sc)?;
            set_effective(&m);
            let g = grads(&x, &y)?;
            if bip {
                // Lower level: one SGD step on the weights (masked gradient) and the others.
                let lr = cfg.bip_weight_lr * lr_frac;
                tch::no_grad(|| {
                    for (i, name) in names.iter().enumerate() {
                        let d = &g[i] * &m[name] + &theta[i] * wd;
                        mom_theta[i] = &mom_theta[i] * momentum + d;
                        let _ = theta[i].shallow_clone().g_sub_(&(&mom_theta[i] * lr));
                    }
                    for (i, p) in others.iter().enumerate() {
                        let gp = p.grad();
                        if gp.defined() {
                            let d = gp + p * wd;
                            mom_other[i] = &mom_other[i] * momentum + d;
                            let _ = p.shallow_clone().g_sub_(&(&mom_other[i] * lr));
                        }
                    }
                });
                // Upper level at the updated weights.
                set_effective(&m);
                let g2 = grads(&x, &y)?;
                tch::no_grad(|| {
                    for (i, name) in names.iter().enumerate() {
                        let ig = &g2[i] * (&m[name] * &g2[i]) / cfg.bip_gamma;
                        let gs = reduce(&theta[i] * &g2[i] - ig);
                        mom_s[i] = &mom_s[i] * momentum + gs;
                        sc[i] = (&sc[i] - &mom_s[i] * (cfg.score_lr * lr_frac)).clamp(0.0, 1.0);
                    }
                });
            } else {
                tch::no_grad(|| {
                    for i in 0..names.len() {
                        let gs = reduce(&theta[i] * &g[i]);
                        mom_s[i] = &mom_s[i] * momentum + gs;
                        sc[i] = &sc[i] - &mom_s[i] * (cfg.score_lr * lr_frac);
                    }
                });
            }
        }
    }
    let masks = mask_of(&sc)?;
    // Leave the model with the learned weights (BiP) or the trained ones (HYDRA), masked.
    set_effective(&masks);
    Ok(masks)
}

fn recipe_weight_decay(recipe: &TrainConfig) -> f64 {
    use rustworthy_train::optim::OptimConfig;
    match &recipe.optim {
        OptimConfig::Sgd { weight_decay, .. } => *weight_decay,
        OptimConfig::Adam { weight_decay, .. } => *weight_decay,
        OptimConfig::Adamw { weight_decay, .. } => *weight_decay,
        OptimConfig::Lamb { weight_decay, .. } => *weight_decay,
        OptimConfig::Lars { weight_decay, .. } => *weight_decay,
    }
}

/// Scores of a method that prunes a given model in one shot (for prune-then-unlearn). SNIP and
/// GraSP score on `train`, which they need; the other methods never read it.
pub fn one_shot_masks(
    method: PruneMethod,
    model: &Model,
    train: Option<&Dataset>,
    sparsity: f64,
    scope: Scope,
    seed: u64,
) -> Result<Masks> {
    let data = || {
        train.ok_or_else(|| {
            Error::config(
                "data",
                format!(
                    "{} scores weights on data; pass the training data",
                    method.name()
                ),
            )
        })
    };
    match method {
        PruneMethod::Omp => masks_from_scores(&scores::magnitude(model), sparsity, scope, None),
        PruneMethod::Snip => masks_from_scores(
            &scores::snip(model, data()?, 256, 1)?,
            sparsity,
            scope,
            None,
        ),
        PruneMethod::Grasp => {
            masks_from_scores(&scores::grasp(model, data()?, 256)?, sparsity, scope, None)
        }
        PruneMethod::Synflow => scores::synflow_masks(model, sparsity, scope, 100),
        PruneMethod::Random => {
            masks_from_scores(&scores::random(model, seed)?, sparsity, scope, None)
        }
        o => Err(Error::config(
            "prune",
            format!(
                "{} is not a one-shot method; use omp, snip, grasp, synflow or random",
                o.name()
            ),
        )),
    }
}

/// Helper for reports: per-layer sparsity as a name -> sparsity map.
pub fn layer_map(layers: &[LayerSparsity]) -> BTreeMap<String, f64> {
    layers
        .iter()
        .map(|l| (l.name.clone(), l.sparsity))
        .collect()
}
