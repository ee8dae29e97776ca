//! The evaluation of machine unlearning, all in percent (SalUn; "Model sparsity can simplify
//! machine unlearning"):
//!
//! - **UA** (unlearning accuracy) = 100 - accuracy on the forget set;
//! - **RA** = accuracy on the retain set; **TA** = accuracy on the test set (for class-wise
//!   forgetting, the test set without the forgotten classes: the caller passes that set);
//! - **MIA-Efficacy**: a membership-inference attack on the true-label confidence `p[y]`. An RBF
//!   C-SVC ([`SvcConfig::default`]: C = 3, gamma = 1 / n_features = 1) is trained with members =
//!   the first |test| retain samples (label 1) and non-members = the test set (label 0), then
//!   applied to the forget set; MIA-Efficacy = share of forget samples predicted non-member.
//!   Retrain is the reference value, not 100;
//! - two threshold-free companions ([`MiaResult`]): ROC AUCs of the confidence itself;
//! - **RTE** = wall-clock of the unlearning run, in seconds ([`UnlearnMetrics::rte_min`] in the
//!   reference's minutes);
//! - **Avg. Gap** = mean over {UA, RA, TA, MIA-Efficacy} of |method - Retrain|; lower is better.

use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::svm::{Svc, SvcConfig};

/// `100 * correct / total`. Errors when `total` is 0 or `correct > total`.
pub fn accuracy_pct(correct: usize, total: usize) -> Result<f64> {
    if total == 0 {
        return Err(Error::invalid("accuracy of an empty set is undefined"));
    }
    if correct > total {
        return Err(Error::invalid(format!(
            "accuracy: {correct} correct out of {total}"
        )));
    }
    Ok(100.0 * correct as f64 / total as f64)
}

/// One method's evaluation. All values in percent except `rte_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlearnMetrics {
    /// Unlearning accuracy: 100 - forget-set accuracy.
    pub ua: f64,
    /// Retain-set accuracy.
    pub ra: f64,
    /// Test accuracy (without the forgotten classes in class-wise forgetting).
    pub ta: f64,
    /// Share of forget samples the SVM attack calls non-members.
    pub mia_efficacy: f64,
    /// See [`MiaResult::auc_members_vs_test`].
    pub mia_auc_members_vs_test: f64,
    /// See [`MiaResult::auc_forget_vs_test`].
    pub mia_auc_forget_vs_test: f64,
    /// Run-time efficiency: wall-clock seconds of the unlearning run.
    pub rte_s: f64,
}

impl UnlearnMetrics {
    /// RTE in minutes, the unit the reference tables use.
    pub fn rte_min(&self) -> f64 {
        self.rte_s / 60.0
    }
}

/// Avg. Gap: mean of |method - retrain| over UA, RA, TA and MIA-Efficacy (percentage points).
/// The AUCs and RTE do not enter it.
pub fn avg_gap(method: &UnlearnMetrics, retrain: &UnlearnMetrics) -> f64 {
    let d = [
        method.ua - retrain.ua,
        method.ra - retrain.ra,
        method.ta - retrain.ta,
        method.mia_efficacy - retrain.mia_efficacy,
    ];
    d.iter().map(|v| v.abs()).sum::<f64>() / 4.0
}

/// Softmax probability of the true label, `p[y] = exp(logit_y - logsumexp(logits))`, per row of
/// `logits` `[N, K]` with `labels` `[N]` (integer class ids), computed in f64 on the logits'
/// device. In f64 a confident prediction gives e.g. 1 - 1e-12 where a float32 softmax saturates
/// at exactly 1.0; the SVM sees both as the same point up to its tolerance.
///
/// Panics on shapes or labels that do not fit (see [`try_true_label_confidence`]).
pub fn true_label_confidence(logits: &Tensor, labels: &Tensor) -> Vec<f64> {
    match try_true_label_confidence(logits, labels) {
        Ok(v) => v,
        Err(e) => panic!("true_label_confidence: {e}"),
    }
}

/// [`true_label_confidence`] returning an error instead of panicking: `logits` must be `[N, K]`,
/// `labels` `[N]` with ids in `0..K`.
pub fn try_true_label_confidence(logits: &Tensor, labels: &Tensor) -> Result<Vec<f64>> {
    let size = logits.size();
    if size.len() != 2 {
        return Err(Error::Shape {
            op: "true_label_confidence".into(),
            expected: "logits [N, K]".into(),
            got: size,
        });
    }
    let (n, k) = (size[0], size[1]);
    if labels.size() != [n] {
        return Err(Error::Shape {
            op: "true_label_confidence".into(),
            expected: format!("labels [{n}]"),
            got: labels.size(),
        });
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    if k == 0 {
        return Err(Error::invalid(
            "true_label_confidence: logits have 0 classes",
        ));
    }
    let labels = labels.to_device(logits.device()).to_kind(Kind::Int64);
    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
    if lo < 0 || hi >= k {
        return Err(Error::invalid(format!(
            "true_label_confidence: labels must be in 0..{k}, got range [{lo}, {hi}]"
        )));
    }
    let p = logits
        .to_kind(Kind::Double)
        .log_softmax(-1, Kind::Double)
        .gather(1, &labels.unsqueeze(1), false)
        .squeeze_dim(1)
        .exp()
        .to_device(tch::Device::Cpu)
        .contiguous();
    Ok(Vec::<f64>::try_from(&p)?)
}

/// Result of [`mia_efficacy`]. Values in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MiaResult {
    /// Share of forget samples the SVM predicts non-member (label 0).
    pub efficacy: f64,
    /// ROC AUC, in percent, of the confidence `p[y]` as a membership score: the probability that
    /// a member (one of the SVM's `n_train` retain samples) has a higher confidence than a
    /// non-member (one of the SVM's `n_train` test samples), ties counting 1/2. 50 = the model
    /// leaks no membership through its confidence; 100 = perfectly separable.
    pub auc_members_vs_test: f64,
    /// The same AUC with the forget set in place of the members: the probability that a forget
    /// sample is more confident than a test sample (ties 1/2), over all forget and all test
    /// samples. 50 = the forget set looks like unseen data; above 50 it still looks like
    /// training data; below 50 it is less confident than unseen data (over-forgetting, itself a
    /// membership signal).
    pub auc_forget_vs_test: f64,
    /// Samples per class in the SVM's training set (`min(|retain|, |test|)`).
    pub n_train: usize,
    /// Support vectors of the fitted SVM (non-members, members).
    pub n_support: [usize; 2],
}

/// The MIA-Efficacy attack on true-label confidences.
///
/// Members (label 1) = the first `n_train` retain confidences, non-members (label 0) = the first
/// `n_train` test confidences, `n_train = min(|retain|, |test|)`. When the retain set is at
/// least as large as the test set (the usual case) this is exactly the reference construction:
/// the first |test| retain samples against the whole test set. With fewer retain than test
/// samples, all retain samples and as many test samples (the first ones) are used, so the
/// classes stay balanced. An RBF C-SVC ([`Svc`], `cfg`) is fitted on this one-feature set and
/// applied to the forget confidences; efficacy = 100 * (forget samples predicted 0) / |forget|.
///
/// Errors: empty retain, test or forget set, a non-finite confidence, an invalid `cfg`.
pub fn mia_efficacy(
    retain_conf: &[f64],
    test_conf: &[f64],
    forget_conf: &[f64],
    cfg: &SvcConfig,
) -> Result<MiaResult> {
    for (name, v) in [
        ("retain", retain_conf),
        ("test", test_conf),
        ("forget", forget_conf),
    ] {
        if v.is_empty() {
            return Err(Error::invalid(format!(
                "MIA-Efficacy: the {name} set is empty"
            )));
        }
        if let Some(i) = v.iter().position(|c| !c.is_finite()) {
            return Err(Error::invalid(format!(
                "MIA-Efficacy: {name} confidence {i} is {}",
                v[i]
            )));
        }
    }
    let n_train = retain_conf.len().min(test_conf.len());
    let members = &retain_conf[..n_train];
    let non_members = &test_conf[..n_train];
    let x: Vec<f64> = members.iter().chain(non_members).copied().collect();
    let y: Vec<bool> = (0..2 * n_train).map(|i| i < n_train).collect();
    let svc = Svc::fit(&x, 1, &y, cfg)?;
    let pred = svc.predict(forget_conf)?;
    let non_member = pred.iter().filter(|&&m| !m).count();
    Ok(MiaResult {
        efficacy: 100.0 * non_member as f64 / forget_conf.len() as f64,
        auc_members_vs_test: 100.0 * roc_auc(members, non_members),
        auc_forget_vs_test: 100.0 * roc_auc(forget_conf, test_conf),
        n_train,
        n_support: svc.n_support(),
    })
}

/// ROC AUC of `pos` against `neg` as a fraction in [0, 1], in the Mann-Whitney form:
/// `P(s_pos > s_neg) + P(s_pos = s_neg) / 2` over all pairs. NaN when either list is empty or
/// holds a NaN. O((n + m) log m).
pub fn roc_auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() || pos.iter().chain(neg).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let mut sorted = neg.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Twice the Mann-Whitney U, as an exact integer.
    let mut twice_u: u128 = 0;
    for &p in pos {
        let below = sorted.partition_point(|&v| v < p);
        let not_above = sorted.partition_point(|&v| v <= p);
        twice_u += (2 * below + (not_above - below)) as u128;
    }
    twice_u as f64 / (2.0 * pos.len() as f64 * neg.len() as f64)
}
