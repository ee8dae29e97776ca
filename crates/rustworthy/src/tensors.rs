//! In-memory calls: models, data and results as values instead of run folders. This is the
//! layer under the Python package (`rustworthy` on PyPI-style `pip install .`): every function
//! takes tensors the caller already holds, checks them, and returns tensors and plain structs;
//! nothing is written to disk.
//!
//! * [`dataset`] checks images and labels and wraps them (no copy);
//! * [`attack`] and [`robust_eval`] attack a model on them;
//! * [`unlearn`] unlearns a forget set from a model trained on them, exactly as
//!   `rustworthy unlearn` does for a model without a training run of ours;
//! * [`prune`] prunes a model in one shot.

use crate::config::preset;
use crate::unlearn_run::{unlearn_once, EVAL_BATCH};
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::{Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_prune::methods::one_shot_masks;
use rustworthy_prune::{PruneMethod, Scope};
use rustworthy_robust::run::{attack_dataset, AttackRun, RunOptions};
use rustworthy_robust::suite::{robust_eval as suite_eval, RobustReport};
use rustworthy_robust::SuiteConfig;
use rustworthy_train::mask::{apply_masks, Masks};
use rustworthy_unlearn::metrics::UnlearnMetrics;
use rustworthy_unlearn::pipeline::{evaluate, MethodResult};
use rustworthy_unlearn::svm::SvcConfig;
use rustworthy_unlearn::{ForgetSpec, MethodConfig, UnlearnCtx};
use tch::{Kind, Tensor};

use crate::robust_run::AttackSpec;
use crate::unlearn_run::UnlearnSetup;

/// Images `x` (`[N, C, H, W]` float32 in [0, 1], finite) and labels `y` (`[N]` int64, or int32,
/// in `0..num_classes`) as a [`Dataset`] named `name`; the tensors are shared, not copied
/// (int32 labels are converted). `num_classes` defaults to the largest label + 1. Errors name
/// the argument and what is wrong with it.
pub fn dataset(name: &str, x: &Tensor, y: &Tensor, num_classes: Option<usize>) -> Result<Dataset> {
    let bad = |what: &str, m: String| Error::invalid(format!("{name}: {what} {m}"));
    let size = x.size();
    if size.len() != 4 || size.iter().any(|&d| d <= 0) {
        return Err(bad(
            "images",
            format!("must be a non-empty [N, C, H, W] batch, got shape {size:?}"),
        ));
    }
    if x.kind() != Kind::Float {
        return Err(bad(
            "images",
            format!("must be float32, got {:?}", x.kind()),
        ));
    }
    let n = size[0];
    // min and max propagate NaN, so no mask the size of the images is needed.
    let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
    if !(lo.is_finite() && hi.is_finite()) {
        let count = x.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
        return Err(bad(
            "images",
            format!("hold {count} NaN or infinite values"),
        ));
    }
    if lo < 0.0 || hi > 1.0 {
        return Err(bad(
            "images",
            format!("must lie in [0, 1] (normalization is the model's job), got [{lo}, {hi}]"),
        ));
    }
    let y = match y.kind() {
        Kind::Int64 => y.shallow_clone(),
        Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => y.to_kind(Kind::Int64),
        k => {
            return Err(bad(
                "labels",
                format!("must be integers (int64), got {k:?}"),
            ))
        }
    };
    if y.size() != [n] {
        return Err(bad(
            "labels",
            format!(
                "must have shape [{n}] to match the images, got {:?}",
                y.size()
            ),
        ));
    }
    let (ymin, ymax) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
    let classes = match num_classes {
        Some(c) => c,
        None => (ymax + 1).max(2) as usize,
    };
    if ymin < 0 || ymax >= classes as i64 {
        return Err(bad(
            "labels",
            format!("must lie in 0..{classes}, got [{ymin}, {ymax}]"),
        ));
    }
    let names = (0..classes).map(|c| c.to_string()).collect();
    Dataset::new(name, x.shallow_clone(), y, classes, names)
}

/// Attacks `data` with `spec` (see [`AttackSpec`]); the adversarial images are kept in the
/// result (`x_adv`, on the host, in data order). `progress` shows a bar over the samples.
pub fn attack(
    model: &Model,
    data: &Dataset,
    spec: &AttackSpec,
    batch_size: usize,
    seed: u64,
    attack_all: bool,
    progress: ProgressMode,
) -> Result<AttackRun> {
    let attack = spec.build()?;
    let data = data.to_device(model.device());
    let opts = RunOptions {
        batch_size,
        seed,
        target: None,
        keep_images: true,
        attack_all,
        progress,
    };
    attack_dataset(attack.as_ref(), model, &data, &opts)
}

/// The robust-evaluation suite `cfg` on `data`.
pub fn robust_eval(model: &Model, data: &Dataset, cfg: &SuiteConfig) -> Result<RobustReport> {
    suite_eval(model, &data.to_device(model.device()), cfg)
}

/// What [`unlearn`] produced.
pub struct Unlearned {
    /// The original model's metrics on the scenario.
    pub before: UnlearnMetrics,
    /// The method's result (metrics after, its report).
    pub result: MethodResult,
    /// The unlearned model.
    pub model: Model,
}

/// Unlearns `forget` (indices into `train`, or any [`ForgetSpec`]) from `model`, trained on
/// `train`: the same scenario, method and evaluation as `rustworthy unlearn --model M
/// --recipe RECIPE` for a model without a training run of ours (the recipe names the original
/// training, which Retrain and the methods that reuse it follow).
#[allow(clippy::too_many_arguments)]
pub fn unlearn(
    model: Model,
    train: &Dataset,
    test: &Dataset,
    forget: &ForgetSpec,
    forget_seed: u64,
    method: &MethodConfig,
    seed: u64,
    recipe: &str,
    progress: ProgressMode,
) -> Result<Unlearned> {
    let device = model.device();
    model.check_finite("the model")?;
    let mut rc = preset(recipe)?;
    rc.model.arch = model.spec.arch;
    rc.data.val_fraction = 0.0;
    let s = UnlearnSetup::from_parts(model, train, test, rc, forget, forget_seed, device)?;
    let before = evaluate(&s.original, &s.data, &SvcConfig::default(), EVAL_BATCH, 0.0)?;
    let ctx = UnlearnCtx {
        data: &s.data,
        seed,
        progress,
        original: &s.train_config,
        masks: None,
        dist: None,
    };
    let (result, model) = unlearn_once(&s.original, method, &ctx, None)?;
    Ok(Unlearned {
        before,
        result,
        model,
    })
}

/// Prunes `model` in place to `sparsity` with a one-shot method (`omp`, `snip`, `grasp`,
/// `synflow`, `random`; `snip` and `grasp` score on `data`) and returns the masks.
pub fn prune(
    model: &Model,
    method: PruneMethod,
    sparsity: f64,
    scope: Scope,
    data: Option<&Dataset>,
    seed: u64,
) -> Result<Masks> {
    rustworthy_prune::check_sparsity(sparsity)?;
    let data = data.map(|d| d.to_device(model.device()));
    let masks = one_shot_masks(method, model, data.as_ref(), sparsity, scope, seed)?;
    apply_masks(model, &masks)?;
    Ok(masks)
}
