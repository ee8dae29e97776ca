//! Running an attack over a dataset: batching, seeding, success and query statistics, and a
//! check that every output respects the threat model.

use crate::attack::{choose_targets, nonzero_idx, Attack, TargetSpec};
use crate::threat::{per_sample_norm, Norm, TOL};
use rustworthy_core::seed::{derive, seed_torch};
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Aggregate result of one attack on a dataset. Accuracies and rates are in percent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttackSummary {
    /// The attack's name, e.g. `pgd-50x10` or `fgsm`.
    pub attack: String,
    /// The attack's threat model (`None` for an unbounded minimum-norm attack).
    pub threat: Option<crate::ThreatModel>,
    /// How targets were chosen; `None` for an untargeted run.
    pub targeted: Option<TargetSpec>,
    /// Number of samples in the dataset.
    pub n: usize,
    /// Accuracy on the clean samples, in percent.
    pub clean_accuracy: f64,
    /// Samples classified correctly (untargeted) or not pushed to their target (targeted) after
    /// the attack, over all `n` samples.
    pub robust_accuracy: f64,
    /// Successes over the samples attacked (the clean-correct ones).
    pub success_rate: f64,
    /// Number of clean-correct samples attacked.
    pub attacked: usize,
    /// Number of verified successes among the clean-correct samples.
    pub successes: usize,
    /// Median queries over successful samples (None without successes).
    pub median_queries_success: Option<f64>,
    /// Mean queries per attacked sample.
    pub mean_queries: f64,
    /// Queries spent over all samples.
    pub total_queries: i64,
    /// Median l_inf and l_2 norms of successful perturbations.
    pub median_linf_success: Option<f64>,
    /// Median l_2 norm of the successful perturbations (None without successes).
    pub median_l2_success: Option<f64>,
    /// Successes an attack claimed that the model did not confirm on the returned images (not
    /// counted; anything but 0 is a bug).
    pub unverified_successes: i64,
    /// Largest violation of the threat model over all outputs (0 up to rounding).
    pub max_violation: f64,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// Throughput: samples of the dataset per second.
    pub examples_per_second: f64,
}

/// Per-sample outcome, in dataset order.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PerSample {
    /// Whether the model classifies the clean sample correctly.
    pub clean_correct: Vec<bool>,
    /// Attacked and fooled.
    pub success: Vec<bool>,
    /// Queries spent on the sample (0 if it was not attacked).
    pub queries: Vec<i64>,
    /// l_inf norm of the sample's final perturbation.
    pub linf: Vec<f64>,
    /// l_2 norm of the sample's final perturbation.
    pub l2: Vec<f64>,
}

/// Options of [`attack_dataset`].
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Samples per attacked batch (default 500).
    pub batch_size: usize,
    /// Seed of the run; each batch draws from its own stream (default 0).
    pub seed: u64,
    /// Run the attack targeted, with targets chosen this way (default untargeted).
    pub target: Option<TargetSpec>,
    /// Keep the adversarial images (on the host) in the result.
    pub keep_images: bool,
    /// Attack misclassified samples too (they count as successes at once); by default only
    /// the clean-correct samples are attacked.
    pub attack_all: bool,
    /// Progress display, one step per sample (default quiet).
    pub progress: rustworthy_core::progress::ProgressMode,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_size: 500,
            seed: 0,
            target: None,
            keep_images: false,
            attack_all: false,
            progress: rustworthy_core::progress::ProgressMode::Quiet,
        }
    }
}

/// Result of [`attack_dataset`].
pub struct AttackRun {
    /// The aggregate statistics.
    pub summary: AttackSummary,
    /// Per-sample outcomes, in dataset order.
    pub per_sample: PerSample,
    /// The adversarial images on the host, in dataset order (only with
    /// [`RunOptions::keep_images`]).
    pub x_adv: Option<Tensor>,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

/// Attacks the clean-correct samples of `data` batch by batch. Each batch seeds libtorch's
/// generator from `(seed, batch index)`, so results do not depend on earlier batches.
pub fn attack_dataset(
    attack: &dyn Attack,
    model: &Model,
    data: &Dataset,
    opts: &RunOptions,
) -> Result<AttackRun> {
    validate::positive_int("batch_size", opts.batch_size)?;
    if data.is_empty() {
        return Err(Error::invalid(format!("dataset {} is empty", data.name)));
    }
    if data.num_classes as i64 != model.spec.num_classes {
        return Err(Error::invalid(format!(
            "dataset {} has {} classes but the model has {}",
            data.name, data.num_classes, model.spec.num_classes
        )));
    }
    let dev = model.device();
    let n = data.len();
    let t0 = Instant::now();
    let mut ps = PerSample::default();
    // The adversarial images, written batch by batch into one host tensor (no second copy at
    // the end).
    let kept = if opts.keep_images && n > 0 {
        Some(Tensor::f_empty(
            data.images.size(),
            (tch::Kind::Float, tch::Device::Cpu),
        )?)
    } else {
        None
    };
    let mut max_violation = 0f64;
    let mut attacked = 0usize;
    let mut attacked_total = 0usize;
    let mut attacked_queries = 0i64;
    let mut unverified = 0i64;
    let bar = rustworthy_core::progress::Progress::new(opts.progress, &attack.name(), n as u64);
    for (bi, lo) in (0..n).step_by(opts.batch_size).enumerate() {
        rustworthy_core::progress::check_interrupt()?;
        let hi = (lo + opts.batch_size).min(n);
        let idx: Vec<usize> = (lo..hi).collect();
        let (x, y) = data.try_batch(&idx)?;
        let (x, y) = (x.to_device(dev), y.to_device(dev));
        seed_torch(derive(opts.seed, "attack", bi as u64));
        let clean = tch::no_grad(|| model.try_forward_t(&x, false))?;
        let correct = clean.argmax(-1, false).eq_tensor(&y);
        let targets = opts
            .target
            .map(|s| choose_targets(s, model, &x, &y))
            .transpose()?;
        // Attack clean-correct samples (and, when targeted, those with a valid target).
        let mut eligible = if opts.attack_all {
            correct.ones_like()
        } else {
            correct.copy()
        };
        if let Some(t) = &targets {
            // No target (a fixed class equal to the label) or a target equal to the label
            // (possible for least-likely on tied logits): nothing to attack.
            eligible = eligible.logical_and(&t.ge(0)).logical_and(&t.ne_tensor(&y));
        }
        let sel = nonzero_idx(&eligible);
        let m = sel.size()[0];
        attacked += eligible
            .logical_and(&correct)
            .sum(Kind::Int64)
            .int64_value(&[]) as usize;
        attacked_total += m as usize;
        let b = (hi - lo) as i64;
        let mut success = Tensor::zeros([b], (Kind::Bool, dev));
        let mut queries = Tensor::zeros([b], (Kind::Int64, dev));
        let mut x_adv = x.copy();
        if m > 0 {
            let xs = x.index_select(0, &sel);
            let ys = y.index_select(0, &sel);
            let ts = targets.as_ref().map(|t| t.index_select(0, &sel));
            let out = attack.perturb(model, &xs, &ys, ts.as_ref())?;
            // Successes are verified on the returned images: a claimed success the model does
            // not confirm is not counted (and is reported, since it means an attack bug).
            let pred = tch::no_grad(|| model.forward_t(&out.x_adv, false)).argmax(-1, false);
            let real = match &ts {
                Some(t) => pred.eq_tensor(t),
                None => pred.ne_tensor(&ys),
            };
            unverified += out
                .success
                .logical_and(&real.logical_not())
                .sum(Kind::Int64)
                .int64_value(&[]);
            let verified = out.success.logical_and(&real);
            attacked_queries += out.queries.sum(Kind::Int64).int64_value(&[]);
            let _ = success.index_copy_(0, &sel, &verified);
            if opts.attack_all {
                // Misclassified samples are not counted as successes of the attack.
                let _ = success.logical_and_(&correct);
            }
            let _ = queries.index_copy_(0, &sel, &out.queries);
            let _ = x_adv.index_copy_(0, &sel, &out.x_adv);
            if let Some(t) = attack.threat() {
                let v = t.violation(&out.x_adv, &xs).max().double_value(&[]);
                max_violation = max_violation.max(v);
                if v.is_nan() || v > TOL {
                    return Err(Error::Numerical(format!(
                        "{} produced a perturbation outside its threat model ({t}) by {v:.3e}",
                        attack.name()
                    )));
                }
            }
        }
        let d = &x_adv - &x;
        ps.clean_correct
            .extend(Vec::<bool>::try_from(&correct.to_device(tch::Device::Cpu))?);
        ps.success
            .extend(Vec::<bool>::try_from(&success.to_device(tch::Device::Cpu))?);
        ps.queries
            .extend(Vec::<i64>::try_from(&queries.to_device(tch::Device::Cpu))?);
        let li = per_sample_norm(&d, Norm::Linf)
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu);
        let l2 = per_sample_norm(&d, Norm::L2)
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu);
        ps.linf.extend(Vec::<f64>::try_from(&li)?);
        ps.l2.extend(Vec::<f64>::try_from(&l2)?);
        if let Some(k) = &kept {
            k.narrow(0, lo as i64, (hi - lo) as i64).f_copy_(&x_adv)?;
        }
        bar.inc((hi - lo) as u64, || {
            let fooled = ps.success.iter().filter(|&&s| s).count();
            format!("fooled {fooled}/{}", ps.success.len())
        });
    }
    bar.finish(serde_json::json!({"n": n}));
    let seconds = t0.elapsed().as_secs_f64();
    let successes = ps.success.iter().filter(|s| **s).count();
    let clean = ps.clean_correct.iter().filter(|c| **c).count();
    let robust = ps
        .clean_correct
        .iter()
        .zip(&ps.success)
        .filter(|(c, s)| **c && !**s)
        .count();
    let succ_idx: Vec<usize> = (0..n).filter(|i| ps.success[*i]).collect();
    let mut q: Vec<f64> = succ_idx.iter().map(|i| ps.queries[*i] as f64).collect();
    let mut li: Vec<f64> = succ_idx.iter().map(|i| ps.linf[*i]).collect();
    let mut l2: Vec<f64> = succ_idx.iter().map(|i| ps.l2[*i]).collect();
    let total_queries: i64 = ps.queries.iter().sum();
    let summary = AttackSummary {
        attack: attack.name(),
        threat: attack.threat(),
        targeted: opts.target,
        n,
        clean_accuracy: 100.0 * clean as f64 / n as f64,
        robust_accuracy: 100.0 * robust as f64 / n as f64,
        success_rate: if attacked > 0 {
            100.0 * successes as f64 / attacked as f64
        } else {
            0.0
        },
        attacked,
        successes,
        median_queries_success: median(&mut q),
        mean_queries: if attacked_total > 0 {
            attacked_queries as f64 / attacked_total as f64
        } else {
            0.0
        },
        unverified_successes: unverified,
        total_queries,
        median_linf_success: median(&mut li),
        median_l2_success: median(&mut l2),
        max_violation,
        seconds,
        examples_per_second: n as f64 / seconds.max(1e-9),
    };
    Ok(AttackRun {
        summary,
        per_sample: ps,
        x_adv: kept,
    })
}
