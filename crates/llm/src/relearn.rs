//! The relearning attack: does unlearning remove knowledge, or only hide it?
//!
//! After unlearning, an attacker fine-tunes the model for a few hundred first-order or
//! zeroth-order steps on a small slice of data (some of the forget items, or retain items), then
//! asks the forget questions it did *not* train on. If their answers come back, the knowledge was
//! still in the weights (Hu et al., 2024, "Jogging the memory of unlearned LLMs"; Deeb & Roger,
//! 2024). The held-out forget items are what is measured: the answers of the relearned slice
//! come back for any model, even one that never saw them. The retain-only oracle, attacked the
//! same way, is the control: what the slice alone teaches about the held-out items.

use crate::eval::greedy_answers;
use crate::llama::CausalLm;
use crate::textmetrics::rouge_l;
use crate::tofu::QaItem;
use crate::tune::{finetune, Encoder, FinetuneConfig};
use crate::zo_tune::{zo_tune, ZoTuneConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What the attacker trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelearnSource {
    /// A slice of the forget split itself (the rest of it is measured).
    Forget,
    /// Retain items (benign data the attacker has).
    Retain,
}

/// How the attacker trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelearnOptimizer {
    /// AdamW at a constant rate, gradient norm clipped at 1.
    FirstOrder {
        /// Learning rate.
        lr: f64,
    },
    /// A zeroth-order optimizer (MeZO or a variant); its `steps` are replaced by the attack's.
    ZerothOrder(ZoTuneConfig),
}

/// Settings of the attack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelearnConfig {
    /// Items the attacker trains on.
    pub items: usize,
    /// Where they come from.
    pub source: RelearnSource,
    /// Optimizer steps.
    pub steps: usize,
    /// Items per step.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: RelearnOptimizer,
    /// Seed of the slice and the data order.
    pub seed: u64,
}

impl RelearnConfig {
    /// Checks the ranges against the forget split's size.
    pub fn validate(&self, forget_len: usize) -> Result<()> {
        if self.items == 0 || self.steps == 0 || self.batch_size == 0 {
            return Err(Error::config(
                "relearn",
                "items, steps and batch_size must be positive",
            ));
        }
        if self.source == RelearnSource::Forget && self.items >= forget_len {
            return Err(Error::config(
                "relearn.items",
                format!(
                    "{} forget items leave none of the {forget_len} to measure",
                    self.items
                ),
            ));
        }
        match &self.optimizer {
            RelearnOptimizer::FirstOrder { lr } if !(*lr > 0.0 && lr.is_finite()) => Err(
                Error::config("relearn.lr", format!("must be positive, got {lr}")),
            ),
            RelearnOptimizer::ZerothOrder(z) => z.validate(),
            _ => Ok(()),
        }
    }
}

/// What the attack did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelearnResult {
    /// Indices (into the forget split) of the held-out items measured.
    pub measured: Vec<usize>,
    /// Mean ROUGE-L recall of the greedy answers on the measured items, before the attack.
    pub rouge_before: f64,
    /// The same after the attack.
    pub rouge_after: f64,
    /// Share of the measured items answered exactly, before and after.
    pub exact_before: f64,
    /// See `exact_before`.
    pub exact_after: f64,
    /// Steps taken.
    pub steps: usize,
    /// Seconds of training.
    pub seconds: f64,
}

/// Which forget items are measured (the ones the attacker does not train on), given the split's
/// size: the same for every model attacked with `cfg`, so their numbers compare.
pub fn measured_items(cfg: &RelearnConfig, forget_len: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..forget_len).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed));
    match cfg.source {
        RelearnSource::Forget => {
            let mut m = idx[cfg.items..].to_vec();
            m.sort_unstable();
            m
        }
        RelearnSource::Retain => (0..forget_len).collect(),
    }
}

fn rouge_and_exact(model: &CausalLm, enc: &Encoder, items: &[QaItem]) -> Result<(f64, f64)> {
    let gens = greedy_answers(model, enc, items, 64)?;
    let n = items.len().max(1) as f64;
    let rouge = items
        .iter()
        .zip(&gens)
        .map(|(q, g)| rouge_l(&q.answer, &g.0, true).recall)
        .sum::<f64>()
        / n;
    let exact = gens.iter().filter(|g| g.1).count() as f64 / n;
    Ok((rouge, exact))
}

/// Attacks `model` (changing its weights): trains on the slice `cfg` names, and measures the
/// held-out forget items before and after.
pub fn relearn(
    model: &mut CausalLm,
    enc: &Encoder,
    forget: &[QaItem],
    retain: &[QaItem],
    cfg: &RelearnConfig,
) -> Result<RelearnResult> {
    cfg.validate(forget.len())?;
    let measured = measured_items(cfg, forget.len());
    let slice: Vec<QaItem> = match cfg.source {
        RelearnSource::Forget => {
            let keep: std::collections::BTreeSet<usize> = measured.iter().copied().collect();
            (0..forget.len())
                .filter(|i| !keep.contains(i))
                .map(|i| forget[i].clone())
                .collect()
        }
        RelearnSource::Retain => {
            if retain.len() < cfg.items {
                return Err(Error::config(
                    "relearn.items",
                    format!("{} retain items asked, {} there", cfg.items, retain.len()),
                ));
            }
            let mut idx: Vec<usize> = (0..retain.len()).collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed));
            idx[..cfg.items]
                .iter()
                .map(|&i| retain[i].clone())
                .collect()
        }
    };
    let held: Vec<QaItem> = measured.iter().map(|&i| forget[i].clone()).collect();
    let (rouge_before, exact_before) = rouge_and_exact(model, enc, &held)?;
    let t = Instant::now();
    let steps = match &cfg.optimizer {
        RelearnOptimizer::FirstOrder { lr } => {
            // Whole passes over the slice: as many as the steps asked for.
            let per_epoch = slice.len().div_ceil(cfg.batch_size);
            let epochs = cfg.steps.div_ceil(per_epoch);
            finetune(
                model,
                enc,
                &slice,
                &FinetuneConfig {
                    epochs,
                    batch_size: cfg.batch_size,
                    lr: *lr,
                    weight_decay: 0.0,
                    warmup: 0.0,
                    clip: 1.0,
                    seed: cfg.seed,
                },
            )?;
            epochs * per_epoch
        }
        RelearnOptimizer::ZerothOrder(z) => {
            let mut z = z.clone();
            z.steps = cfg.steps;
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            let dev = model.device();
            let mut batch = |_step: usize| {
                let pairs: Vec<(&str, &str)> = (0..cfg.batch_size.min(slice.len()))
                    .map(|_| {
                        let q = &slice[rng.gen_range(0..slice.len())];
                        (q.question.as_str(), q.answer.as_str())
                    })
                    .collect();
                enc.batch(&pairs, dev)
            };
            zo_tune(model, &mut batch, &z, 0, None)?.1
        }
    };
    let seconds = t.elapsed().as_secs_f64();
    let (rouge_after, exact_after) = rouge_and_exact(model, enc, &held)?;
    Ok(RelearnResult {
        measured,
        rouge_before,
        rouge_after,
        exact_before,
        exact_after,
        steps,
        seconds,
    })
}
