//! Robust evaluation: clean accuracy, FGSM, PGD with restarts and an AutoAttack-style ensemble
//! (APGD-CE, APGD-T, Square) with the worst case per sample, an accuracy-vs-eps curve, and
//! checks for the usual signs of gradient masking.

use crate::attack::Attack;
use crate::attacks::{Apgd, ApgdTargeted, Pgd, Square};
use crate::run::{attack_dataset, AttackSummary, RunOptions};
use crate::threat::{Norm, ThreatModel};
use crate::AttackLoss;
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Attack budgets of an evaluation suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// The suite's name (`quick`, `standard`, or a custom one).
    pub name: String,
    /// The threat model every attack of the suite uses.
    pub threat: ThreatModel,
    /// PGD steps (step size eps/4).
    pub pgd_steps: usize,
    /// PGD random restarts.
    pub pgd_restarts: usize,
    /// Iterations of APGD-CE and of APGD-T per target.
    pub apgd_steps: usize,
    /// Target classes of APGD-T (0 leaves it out; it also needs at least 4 classes).
    pub apgd_targets: usize,
    /// Square queries per sample (0 leaves the Square attack out, e.g. for l2).
    pub square_queries: usize,
    /// Radii of the accuracy-vs-eps curve (PGD with `curve_steps` steps at each).
    pub curve: Vec<f64>,
    /// PGD steps at each radius of the curve.
    pub curve_steps: usize,
    /// Samples per attacked batch (500 in the presets).
    pub batch_size: usize,
    /// Seed of the attacks' random starts and searches.
    pub seed: u64,
}

impl SuiteConfig {
    /// `quick`: PGD-20, APGD-CE 50, APGD-T 50 x 3 targets, Square 1000.
    /// `standard`: PGD-50 x 10 restarts (step eps/4), APGD-CE 100, APGD-T 100 x 9, Square 5000.
    pub fn preset(name: &str, threat: ThreatModel) -> Result<SuiteConfig> {
        let (ps, pr, a, at, sq) = match name {
            "quick" => (20, 1, 50, 3, 1000),
            "standard" => (50, 10, 100, 9, 5000),
            o => {
                return Err(Error::config(
                    "suite",
                    format!("unknown suite `{o}` (quick, standard)"),
                ))
            }
        };
        let mut curve: Vec<f64> = [0.25, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|m| m * threat.eps)
            .filter(|e| threat.norm != Norm::Linf || *e <= threat.hi - threat.lo)
            .collect();
        let half = 0.5 * (threat.hi - threat.lo);
        if threat.norm == Norm::Linf && curve.last().is_some_and(|e| *e < half) {
            curve.push(half);
        }
        Ok(SuiteConfig {
            name: name.into(),
            threat,
            pgd_steps: ps,
            pgd_restarts: pr,
            apgd_steps: a,
            apgd_targets: at,
            square_queries: if threat.norm == Norm::Linf { sq } else { 0 },
            curve,
            curve_steps: 20,
            batch_size: 500,
            seed: 0,
        })
    }

    /// Checks the threat model, the attack budgets and every radius of the curve; errors name the
    /// field.
    pub fn validate(&self) -> Result<()> {
        self.threat.validate()?;
        validate::positive_int("pgd_steps", self.pgd_steps)?;
        validate::positive_int("pgd_restarts", self.pgd_restarts)?;
        validate::positive_int("apgd_steps", self.apgd_steps)?;
        validate::positive_int("batch_size", self.batch_size)?;
        for e in &self.curve {
            ThreatModel {
                eps: *e,
                ..self.threat
            }
            .validate()
            .map_err(|_| Error::config("curve", format!("radius {e} is not a valid eps")))?;
        }
        if !self.curve.is_empty() {
            validate::positive_int("curve_steps", self.curve_steps)?;
        }
        Ok(())
    }
}

/// One step of the ensemble, AutoAttack-style: run on the samples still robust.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EnsembleStep {
    /// The attack's name.
    pub attack: String,
    /// Samples still robust before this attack, all of which it attacked.
    pub attacked: usize,
    /// Samples this attack fooled.
    pub newly_fooled: usize,
    /// Robust accuracy (%) after this attack.
    pub robust_accuracy: f64,
    /// Wall-clock seconds of this attack.
    pub seconds: f64,
}

/// One sample's outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SampleOutcome {
    /// Position of the sample in the dataset.
    pub index: usize,
    /// The sample's true class.
    pub label: i64,
    /// Whether the model classifies the clean sample correctly.
    pub clean_correct: bool,
    /// Attacks that fooled it.
    pub fooled_by: Vec<String>,
}

/// Result of [`robust_eval`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RobustReport {
    /// The suite that was run.
    pub suite: SuiteConfig,
    /// Number of samples evaluated.
    pub n: usize,
    /// Clean accuracy, in percent.
    pub clean_accuracy: f64,
    /// FGSM on every sample.
    pub fgsm: AttackSummary,
    /// PGD with restarts on every sample.
    pub pgd: AttackSummary,
    /// The ensemble's attacks in order (APGD-CE, APGD-T, Square), each on the samples still robust.
    pub ensemble: Vec<EnsembleStep>,
    /// Robust accuracy under the ensemble alone.
    pub ensemble_accuracy: f64,
    /// Robust accuracy under every attack together (worst case per sample).
    pub worst_case_accuracy: f64,
    /// `(eps, PGD accuracy %)`.
    pub curve: Vec<(f64, f64)>,
    /// Signs of gradient masking or of a weak evaluation.
    pub flags: Vec<String>,
    /// Every sample's outcome, in dataset order.
    pub samples: Vec<SampleOutcome>,
    /// Wall-clock seconds of the whole evaluation, the curve included.
    pub seconds: f64,
}

fn count(v: &[bool]) -> usize {
    v.iter().filter(|b| **b).count()
}

/// Runs the suite on `data`.
pub fn robust_eval(model: &Model, data: &Dataset, cfg: &SuiteConfig) -> Result<RobustReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let n = data.len();
    let opts = RunOptions {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        ..RunOptions::default()
    };
    let labels = data.labels_vec();
    let fg = attack_dataset(&Pgd::fgsm(cfg.threat), model, data, &opts)?;
    let clean = fg.per_sample.clean_correct.clone();
    let mut fooled_by: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut note = |name: &str, hits: &[bool], idx: &[usize]| {
        for (k, hit) in hits.iter().enumerate() {
            if *hit {
                fooled_by[idx[k]].push(name.to_string());
            }
        }
    };
    let all: Vec<usize> = (0..n).collect();
    note("fgsm", &fg.per_sample.success, &all);
    let mut pgd_attack = Pgd::new(cfg.threat, cfg.pgd_steps);
    pgd_attack.restarts = cfg.pgd_restarts;
    let pgd = attack_dataset(&pgd_attack, model, data, &opts)?;
    let pgd_name = pgd_attack.name();
    note(&pgd_name, &pgd.per_sample.success, &all);

    // Ensemble on the clean-correct samples, each attack on those still robust.
    let mut robust: Vec<usize> = (0..n).filter(|i| clean[*i]).collect();
    let mut attacks: Vec<Box<dyn Attack>> = vec![Box::new(Apgd::new(
        cfg.threat,
        cfg.apgd_steps,
        AttackLoss::Ce,
    ))];
    let mut flags = Vec::new();
    if model.spec.num_classes >= 4 && cfg.apgd_targets > 0 {
        attacks.push(Box::new(ApgdTargeted::new(
            cfg.threat,
            cfg.apgd_steps,
            cfg.apgd_targets,
        )));
    } else {
        flags.push(format!(
            "APGD-T left out: the targeted DLR loss needs at least 4 classes (the model has {})",
            model.spec.num_classes
        ));
    }
    if cfg.square_queries > 0 {
        attacks.push(Box::new(Square::new(cfg.threat, cfg.square_queries)));
    }
    let mut ensemble = Vec::new();
    let mut white_box_fooled = vec![false; n];
    let mut square_only = 0usize;
    for (ai, a) in attacks.iter().enumerate() {
        let t = Instant::now();
        let attacked = robust.len();
        let mut newly = 0;
        if !robust.is_empty() {
            let sub = data.subset(&robust)?;
            let o = RunOptions {
                seed: rustworthy_core::seed::derive(cfg.seed, "ensemble", ai as u64),
                ..opts.clone()
            };
            let r = attack_dataset(a.as_ref(), model, &sub, &o)?;
            note(&a.name(), &r.per_sample.success, &robust);
            let mut still = Vec::new();
            for (k, i) in robust.iter().enumerate() {
                if r.per_sample.success[k] {
                    newly += 1;
                    if a.name().starts_with("square") {
                        if !pgd.per_sample.success[*i] {
                            square_only += 1;
                        }
                    } else {
                        white_box_fooled[*i] = true;
                    }
                } else {
                    still.push(*i);
                }
            }
            robust = still;
        }
        ensemble.push(EnsembleStep {
            attack: a.name(),
            attacked,
            newly_fooled: newly,
            robust_accuracy: 100.0 * robust.len() as f64 / n as f64,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let ensemble_accuracy = 100.0 * robust.len() as f64 / n as f64;
    let worst: Vec<bool> = (0..n)
        .map(|i| clean[i] && fooled_by[i].is_empty())
        .collect();
    let worst_case_accuracy = 100.0 * count(&worst) as f64 / n as f64;

    // Accuracy vs eps.
    let mut curve = Vec::new();
    for (k, e) in cfg.curve.iter().enumerate() {
        let th = ThreatModel {
            eps: *e,
            ..cfg.threat
        };
        let o = RunOptions {
            seed: rustworthy_core::seed::derive(cfg.seed, "curve", k as u64),
            ..opts.clone()
        };
        let r = attack_dataset(&Pgd::new(th, cfg.curve_steps), model, data, &o)?;
        curve.push((*e, r.summary.robust_accuracy));
    }

    // Signs of gradient masking.
    let slack = (0.005 * n as f64).max(1.0);
    if square_only as f64 > slack {
        flags.push(format!(
            "black-box stronger than white-box: Square fooled {square_only} samples that PGD and \
             APGD did not (gradient masking?)"
        ));
    }
    let fgsm_only = (0..n)
        .filter(|i| fg.per_sample.success[*i] && !pgd.per_sample.success[*i])
        .count();
    if fgsm_only as f64 > slack {
        flags.push(format!(
            "single-step stronger than multi-step: FGSM fooled {fgsm_only} samples that {pgd_name} \
             did not (gradient masking?)"
        ));
    }
    if fg.summary.robust_accuracy > pgd.summary.robust_accuracy + 30.0 {
        flags.push(format!(
            "FGSM accuracy ({:.2}%) is far above PGD accuracy ({:.2}%): the single-step signature \
             of catastrophic overfitting",
            fg.summary.robust_accuracy, pgd.summary.robust_accuracy
        ));
    }
    if ensemble_accuracy > pgd.summary.robust_accuracy + 100.0 * slack / n as f64 {
        flags.push(format!(
            "the ensemble ({ensemble_accuracy:.2}%) is weaker than PGD alone ({:.2}%): the \
             attacks disagree; investigate",
            pgd.summary.robust_accuracy
        ));
    }
    for w in curve.windows(2) {
        if w[1].1 > w[0].1 + 100.0 * slack / n as f64 {
            flags.push(format!(
                "accuracy rises with eps ({:.2}% at {} vs {:.2}% at {}): the attack is failing",
                w[1].1, w[1].0, w[0].1, w[0].0
            ));
        }
    }
    if let Some((e, acc)) = curve.last() {
        let chance = 100.0 / model.spec.num_classes as f64;
        let big = cfg.threat.norm == Norm::Linf && *e >= 0.5 * (cfg.threat.hi - cfg.threat.lo);
        if big && *acc > chance + 5.0 {
            flags.push(format!(
                "accuracy {acc:.2}% at eps {e} stays above chance ({chance:.0}%): at this radius \
                 every image can be moved to the same point, so the attack is failing"
            ));
        }
    }
    let samples = (0..n)
        .map(|i| SampleOutcome {
            index: i,
            label: labels[i],
            clean_correct: clean[i],
            fooled_by: std::mem::take(&mut fooled_by[i]),
        })
        .collect();
    let _ = white_box_fooled;
    Ok(RobustReport {
        suite: cfg.clone(),
        n,
        clean_accuracy: fg.summary.clean_accuracy,
        fgsm: fg.summary,
        pgd: pgd.summary,
        ensemble,
        ensemble_accuracy,
        worst_case_accuracy,
        curve,
        flags,
        samples,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
