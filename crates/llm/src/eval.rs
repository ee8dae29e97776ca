//! TOFU metrics, per item and aggregated, as OpenUnlearning computes them.
//!
//! With `ℓ(y)` the mean NLL of answer `y` over its tokens (the closing EOS included) and
//! `p(y) = exp(−ℓ(y))`:
//! - **Prob**: mean over items of `p(answer)`; on the utility sets (real authors, world facts),
//!   `p(answer) / (p(answer) + Σ p(perturbed) + 1e-10)`.
//! - **Truth ratio** of an item: `exp(−mean_j ℓ(perturbed_j)) / (exp(−ℓ(correct)) + 1e-10)`, with
//!   the paraphrased answer as `correct` on forget and retain, the answer on the utility sets.
//!   Reported as `closer_to_1_better = mean min(tr, 1/tr)` on forget and `true_better = mean
//!   max(0, 1 − tr)` elsewhere.
//! - **ROUGE-L recall** of the greedy answer against the true one (`rouge_score`, stemmed).
//! - **Forget quality**: the p-value of the two-sample KS test between the model's forget truth
//!   ratios and the retain-only model's.
//! - **Model utility**: the harmonic mean of Prob, ROUGE and truth ratio on retain, real authors
//!   and world facts.
//! - **Extraction strength** on forget: `1 − k/n` for the smallest `k` from which the model's
//!   teacher-forced argmax reproduces the rest of the answer (EOS left out).
//! - **Min-K% (k = 0.4) and Min-K%++** membership scores on forget vs holdout, their AUC, and
//!   **PrivLeak** against the retain-only model's AUC.

use crate::generate::{generate_batch, GenerateOptions};
use crate::llama::CausalLm;
use crate::score::{scored_logprobs, scored_positions, QaBatch};
use crate::textmetrics::{hmean, ks_2samp, roc_auc, rouge_l};
use crate::tofu::{Benchmark, QaItem};
use crate::tune::Encoder;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// Items scored per forward pass.
const EVAL_BATCH: usize = 32;

/// Per-item scores of one answer set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AnswerScores {
    /// Mean NLL per token of each answer.
    pub avg_nll: Vec<f64>,
}

/// Mean NLL per token of each `(question, answer)`.
pub fn avg_nll(model: &CausalLm, enc: &Encoder, pairs: &[(&str, &str)]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(pairs.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in pairs.chunks(EVAL_BATCH) {
            let b = enc.batch(chunk, model.device())?;
            let (lp, m) = scored_logprobs(model, &b)?;
            let v = -lp.sum_dim_intlist(1, false, Kind::Double)
                / m.sum_dim_intlist(1, false, Kind::Double);
            out.extend(Vec::<f64>::try_from(v)?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Token log-probabilities of each answer (EOS left out), teacher-forced argmax hits, and
/// Min-K%++'s standardized scores, for membership inference and extraction strength.
struct TokenStats {
    logp: Vec<Vec<f64>>,
    zpp: Vec<Vec<f64>>,
    hit: Vec<Vec<bool>>,
}

fn token_stats(model: &CausalLm, enc: &Encoder, pairs: &[(&str, &str)]) -> Result<TokenStats> {
    let mut s = TokenStats {
        logp: Vec::new(),
        zpp: Vec::new(),
        hit: Vec::new(),
    };
    let eos = enc.tok.eos.map(i64::from);
    tch::no_grad(|| -> Result<()> {
        for chunk in pairs.chunks(EVAL_BATCH) {
            let b: QaBatch = enc.batch(chunk, model.device())?;
            // The head runs on the scored positions only: [N, V], not [B, T, V].
            let sp = scored_positions(model, &b)?;
            let (lsm, lab) = (&sp.log_probs, &sp.labels);
            let lp = lsm.gather(-1, &lab.unsqueeze(-1), false).squeeze_dim(-1);
            let p = lsm.exp();
            let mu = (&p * lsm).sum_dim_intlist(-1, false, Kind::Float);
            let var = ((&p * lsm.square()).sum_dim_intlist(-1, false, Kind::Float) - mu.square())
                .clamp_min(1e-6);
            let z = (&lp - &mu) / var.sqrt();
            let hit = Vec::<bool>::try_from(lsm.argmax(-1, false).eq_tensor(lab))?;
            let lp = Vec::<f64>::try_from(lp.to_kind(Kind::Double))?;
            let z = Vec::<f64>::try_from(z.to_kind(Kind::Double))?;
            let lab = Vec::<i64>::try_from(lab)?;
            let counts = Vec::<i64>::try_from(sp.mask.sum_dim_intlist(1, false, Kind::Int64))?;
            let mut at = 0usize;
            for n in counts {
                let n = n as usize;
                // A closing EOS is not part of the answer's text.
                let keep = if n > 1 && eos == Some(lab[at + n - 1]) {
                    n - 1
                } else {
                    n
                };
                s.logp.push(lp[at..at + keep].to_vec());
                s.zpp.push(z[at..at + keep].to_vec());
                s.hit.push(hit[at..at + keep].to_vec());
                at += n;
            }
        }
        Ok(())
    })?;
    Ok(s)
}

/// Min-K% score: minus the mean of the lowest `max(1, ⌊n·k⌋)` values.
pub fn min_k(values: &[f64], k: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = ((v.len() as f64 * k) as usize).max(1).min(v.len());
    -v[..n].iter().sum::<f64>() / n as f64
}

/// Extraction strength of one answer from its teacher-forced argmax hits.
pub fn extraction_strength(hits: &[bool]) -> f64 {
    let n = hits.len();
    if n == 0 {
        return 0.0;
    }
    let k = (0..=n).find(|&k| hits[k..].iter().all(|&h| h)).unwrap_or(n);
    1.0 - k as f64 / n as f64
}

/// Truth ratio per item: `exp(−mean ℓ(wrong)) / (exp(−ℓ(correct)) + 1e-10)`.
pub fn truth_ratios(correct: &[f64], wrong: &[Vec<f64>]) -> Vec<f64> {
    correct
        .iter()
        .zip(wrong)
        .map(|(c, w)| {
            let m = w.iter().sum::<f64>() / w.len().max(1) as f64;
            (-m).exp() / ((-c).exp() + 1e-10)
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Scores of one split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitEval {
    /// Prob (normalized over the options on the utility sets).
    pub prob: f64,
    /// ROUGE-L recall of the greedy answers.
    pub rouge_l_recall: f64,
    /// Truth-ratio statistic (`closer_to_1_better` on forget, `true_better` elsewhere).
    pub truth_ratio: f64,
    /// Per item: p(answer), ROUGE-L recall, truth ratio, greedy answer.
    pub items: Vec<ItemEval>,
}

/// Scores of one item.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemEval {
    /// `exp(−ℓ(answer))`.
    pub prob: f64,
    /// ROUGE-L recall of the greedy answer.
    pub rouge_l_recall: f64,
    /// The raw truth ratio.
    pub truth_ratio: f64,
    /// The greedy answer.
    pub generated: String,
    /// Whether the greedy answer's tokens are exactly the answer's.
    pub exact: bool,
}

/// Which statistic and which correct answer a split uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SplitKind {
    Forget,
    Retain,
    Utility,
}

/// Greedy answers (text, and whether the tokens equal the true answer's).
pub fn greedy_answers(
    model: &CausalLm,
    enc: &Encoder,
    items: &[QaItem],
    max_new_tokens: usize,
) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(EVAL_BATCH * 2) {
        let prompts: Vec<Vec<i64>> = chunk
            .iter()
            .map(|q| enc.prompt(&q.question))
            .collect::<Result<_>>()?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let room = (model.config.max_position_embeddings as usize).saturating_sub(longest);
        let opts = GenerateOptions::greedy(max_new_tokens.min(room), enc.tok.eos);
        for (g, q) in generate_batch(model, &prompts, &opts)?
            .into_iter()
            .zip(chunk)
        {
            let ids: Vec<u32> = g.iter().map(|&t| t as u32).collect();
            let exact = g == enc.answer(&q.answer)?;
            out.push((enc.tok.decode(&ids, true)?.trim().to_string(), exact));
        }
    }
    Ok(out)
}

fn as_ref(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn eval_split(
    model: &CausalLm,
    enc: &Encoder,
    items: &[QaItem],
    kind: SplitKind,
) -> Result<(SplitEval, Vec<f64>)> {
    if items.is_empty() {
        return Err(Error::invalid("an empty split cannot be evaluated"));
    }
    if let Some(i) = items.iter().position(|q| q.perturbed_answer.is_empty()) {
        return Err(Error::invalid(format!(
            "item {i} has no perturbed answers (the truth ratio needs them)"
        )));
    }
    let pairs = |f: &dyn Fn(&QaItem) -> &str| -> Vec<(String, String)> {
        items
            .iter()
            .map(|q| (q.question.clone(), f(q).to_string()))
            .collect()
    };
    let ans = avg_nll(model, enc, &as_ref(&pairs(&|q| &q.answer)))?;
    let correct = if kind == SplitKind::Utility {
        ans.clone()
    } else {
        if let Some(i) = items.iter().position(|q| q.paraphrased_answer.is_empty()) {
            return Err(Error::invalid(format!(
                "item {i} has no paraphrased answer"
            )));
        }
        avg_nll(model, enc, &as_ref(&pairs(&|q| &q.paraphrased_answer)))?
    };
    let mut flat: Vec<(String, String)> = Vec::new();
    for q in items {
        for w in &q.perturbed_answer {
            flat.push((q.question.clone(), w.clone()));
        }
    }
    let wrong_flat = avg_nll(model, enc, &as_ref(&flat))?;
    let mut wrong = Vec::with_capacity(items.len());
    let mut at = 0;
    for q in items {
        wrong.push(wrong_flat[at..at + q.perturbed_answer.len()].to_vec());
        at += q.perturbed_answer.len();
    }
    let tr = truth_ratios(&correct, &wrong);
    let gens = greedy_answers(model, enc, items, 200)?;
    let mut out_items = Vec::with_capacity(items.len());
    for (i, q) in items.iter().enumerate() {
        let p = (-ans[i]).exp();
        let prob = if kind == SplitKind::Utility {
            let others: f64 = wrong[i].iter().map(|l| (-l).exp()).sum();
            p / (p + others + 1e-10)
        } else {
            p
        };
        out_items.push(ItemEval {
            prob,
            rouge_l_recall: rouge_l(&q.answer, &gens[i].0, true).recall,
            truth_ratio: tr[i],
            generated: gens[i].0.clone(),
            exact: gens[i].1,
        });
    }
    let trs: Vec<f64> = tr
        .iter()
        .map(|&t| match kind {
            SplitKind::Forget => t.min(1.0 / (t + 1e-10)),
            _ => (1.0 - t).max(0.0),
        })
        .collect();
    let e = SplitEval {
        prob: mean(&out_items.iter().map(|x| x.prob).collect::<Vec<_>>()),
        rouge_l_recall: mean(
            &out_items
                .iter()
                .map(|x| x.rouge_l_recall)
                .collect::<Vec<_>>(),
        ),
        truth_ratio: mean(&trs),
        items: out_items,
    };
    Ok((e, tr))
}

/// Membership scores of forget (members) vs holdout (non-members).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MiaEval {
    /// AUC of Min-K% (k = 0.4), forget labelled 0 and holdout 1 (as OpenUnlearning labels them).
    pub min_k_auc: f64,
    /// AUC of Min-K%++ (k = 0.4).
    pub min_k_pp_auc: f64,
}

/// Everything measured on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TofuEval {
    /// The forget split.
    pub forget: SplitEval,
    /// `retain_perturbed`.
    pub retain: SplitEval,
    /// `real_authors`.
    pub real_authors: SplitEval,
    /// `world_facts`.
    pub world_facts: SplitEval,
    /// Raw truth ratios on forget, the input of forget quality.
    pub forget_truth_ratios: Vec<f64>,
    /// Harmonic mean of the nine utility numbers.
    pub model_utility: f64,
    /// Mean extraction strength on forget.
    pub extraction_strength: f64,
    /// Membership inference, forget vs holdout.
    pub mia: MiaEval,
    /// Share of forget answers reproduced exactly by greedy decoding.
    pub forget_exact: f64,
}

/// Evaluates a model on a benchmark's `forget` and `holdout` splits, `retain_perturbed`,
/// `real_authors` and `world_facts`.
pub fn evaluate(
    model: &CausalLm,
    enc: &Encoder,
    bench: &Benchmark,
    forget: &str,
    holdout: &str,
) -> Result<TofuEval> {
    let (f, ftr) = eval_split(model, enc, bench.split(forget)?, SplitKind::Forget)?;
    let (r, _) = eval_split(
        model,
        enc,
        bench.split("retain_perturbed")?,
        SplitKind::Retain,
    )?;
    let (ra, _) = eval_split(model, enc, bench.split("real_authors")?, SplitKind::Utility)?;
    let (wf, _) = eval_split(model, enc, bench.split("world_facts")?, SplitKind::Utility)?;
    let nine = [
        r.prob,
        r.rouge_l_recall,
        r.truth_ratio,
        ra.prob,
        ra.rouge_l_recall,
        ra.truth_ratio,
        wf.prob,
        wf.rouge_l_recall,
        wf.truth_ratio,
    ];
    let utility = hmean(&nine)?;
    let fp: Vec<(&str, &str)> = bench
        .split(forget)?
        .iter()
        .map(|q| (q.question.as_str(), q.answer.as_str()))
        .collect();
    let hp: Vec<(&str, &str)> = bench
        .split(holdout)?
        .iter()
        .map(|q| (q.question.as_str(), q.answer.as_str()))
        .collect();
    let fs = token_stats(model, enc, &fp)?;
    let hs = token_stats(model, enc, &hp)?;
    let es = mean(
        &fs.hit
            .iter()
            .map(|h| extraction_strength(h))
            .collect::<Vec<_>>(),
    );
    let labels: Vec<bool> = std::iter::repeat_n(false, fs.logp.len())
        .chain(std::iter::repeat_n(true, hs.logp.len()))
        .collect();
    let auc = |a: &[Vec<f64>], b: &[Vec<f64>]| -> Result<f64> {
        let s: Vec<f64> = a.iter().chain(b).map(|v| min_k(v, 0.4)).collect();
        roc_auc(&s, &labels)
    };
    let mia = MiaEval {
        min_k_auc: auc(&fs.logp, &hs.logp)?,
        min_k_pp_auc: auc(&fs.zpp, &hs.zpp)?,
    };
    let exact = mean(
        &f.items
            .iter()
            .map(|x| f64::from(u8::from(x.exact)))
            .collect::<Vec<_>>(),
    );
    Ok(TofuEval {
        forget: f,
        retain: r,
        real_authors: ra,
        world_facts: wf,
        forget_truth_ratios: ftr,
        model_utility: utility,
        extraction_strength: es,
        mia,
        forget_exact: exact,
    })
}

/// Forget quality: the KS p-value between a model's forget truth ratios and the retain-only
/// model's.
pub fn forget_quality(model: &TofuEval, oracle: &TofuEval) -> Result<f64> {
    Ok(ks_2samp(&model.forget_truth_ratios, &oracle.forget_truth_ratios)?.pvalue)
}

/// PrivLeak (%): `((1 − auc) − (1 − auc_oracle)) / (1 − auc_oracle + 1e-10) · 100` on Min-K%.
pub fn priv_leak(model: &TofuEval, oracle: &TofuEval) -> f64 {
    let (a, r) = (1.0 - model.mia.min_k_auc, 1.0 - oracle.mia.min_k_auc);
    (a - r) / (r + 1e-10) * 100.0
}
