//! Padding-aware scoring: batches of (prompt, answer) token sequences, per-token log-probabilities
//! of the answer, and the negative log-likelihoods the unlearning losses and metrics are built on.
//!
//! A batch is right-padded. `labels` holds the token id where the answer is scored and `-100`
//! (ignored) on the prompt and the padding, as Hugging Face's causal-LM loss expects; the logit
//! at position `t` scores the label at `t + 1`.

use crate::llama::CausalLm;
use rustworthy_core::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The label that is not scored.
pub const IGNORE: i64 = -100;

/// A right-padded batch of prompt + answer sequences.
pub struct QaBatch {
    /// Token ids `[B, T]`.
    pub ids: Tensor,
    /// 1 on tokens, 0 on padding `[B, T]`.
    pub mask: Tensor,
    /// Answer token ids, [`IGNORE`] elsewhere `[B, T]`.
    pub labels: Tensor,
}

impl QaBatch {
    /// Packs `(prompt, answer)` pairs. A sequence longer than `max_len` is an error naming it
    /// (answers are never cut silently); `pad` fills the padding.
    pub fn new(
        items: &[(Vec<i64>, Vec<i64>)],
        pad: i64,
        max_len: usize,
        device: Device,
    ) -> Result<QaBatch> {
        if items.is_empty() {
            return Err(Error::invalid("an empty batch"));
        }
        let t = items
            .iter()
            .map(|(p, a)| p.len() + a.len())
            .max()
            .unwrap_or(0);
        if t > max_len {
            let i = items
                .iter()
                .position(|(p, a)| p.len() + a.len() > max_len)
                .unwrap_or(0);
            return Err(Error::invalid(format!(
                "item {i} has {} tokens, more than the {max_len} allowed",
                items[i].0.len() + items[i].1.len()
            )));
        }
        if let Some(i) = items.iter().position(|(_, a)| a.is_empty()) {
            return Err(Error::invalid(format!("item {i} has an empty answer")));
        }
        let b = items.len();
        let (mut ids, mut mask, mut labels) =
            (vec![pad; b * t], vec![0i64; b * t], vec![IGNORE; b * t]);
        for (r, (p, a)) in items.iter().enumerate() {
            let row = r * t;
            ids[row..row + p.len()].copy_from_slice(p);
            ids[row + p.len()..row + p.len() + a.len()].copy_from_slice(a);
            mask[row..row + p.len() + a.len()].fill(1);
            labels[row + p.len()..row + p.len() + a.len()].copy_from_slice(a);
        }
        let shape = [b as i64, t as i64];
        Ok(QaBatch {
            ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            labels: Tensor::from_slice(&labels).view(shape).to_device(device),
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> i64 {
        self.ids.size()[0]
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scored tokens per row `[B]` (float).
    pub fn answer_lengths(&self) -> Tensor {
        self.labels
            .ne(IGNORE)
            .sum_dim_intlist(1, false, Kind::Float)
    }
}

/// Log-probabilities of the labels `[B, T-1]` (0 where ignored) and the mask of scored
/// positions `[B, T-1]` (float), from logits `[B, T, V]`.
pub fn label_logprobs(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let t = logits.size()[1];
    let lg = logits.narrow(1, 0, t - 1);
    let lb = labels.narrow(1, 1, t - 1);
    let scored = lb.ne(IGNORE);
    let safe = lb.where_self(&scored, &lb.zeros_like());
    let lp = lg
        .log_softmax(-1, Kind::Float)
        .gather(-1, &safe.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let m = scored.to_kind(Kind::Float);
    (lp * &m, m)
}

/// Logits of a batch (float32).
pub fn batch_logits(model: &CausalLm, batch: &QaBatch) -> Result<Tensor> {
    model.forward(&batch.ids, Some(&batch.mask), None, None)
}

/// Negative log-likelihood of each row's answer, summed over its tokens `[B]`.
pub fn sequence_nll(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (lp, _) = label_logprobs(logits, labels);
    -lp.sum_dim_intlist(1, false, Kind::Float)
}

/// Cross-entropy averaged over every scored token of the batch (Hugging Face's causal-LM
/// `loss`: long answers weigh more than short ones).
pub fn pooled_nll(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (lp, m) = label_logprobs(logits, labels);
    -lp.sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
}

/// Per-row mean NLL over the answer tokens `[B]` (length-normalized).
pub fn mean_nll(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (lp, m) = label_logprobs(logits, labels);
    -lp.sum_dim_intlist(1, false, Kind::Float)
        / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0)
}

/// The model's next-token log-distributions at the scored positions of a batch only: the
/// output head never sees a prompt or padding position, so no `[B, T, V]` tensor is made.
pub struct ScoredPositions {
    /// Log-softmax over the vocabulary `[N, V]`, one row per scored position, in row-major
    /// (batch, then time) order.
    pub log_probs: Tensor,
    /// The label scored at each row `[N]`.
    pub labels: Tensor,
    /// Each row's flat index into `[B·(T−1)]`.
    pub index: Tensor,
    /// The mask of scored positions `[B, T−1]` (float).
    pub mask: Tensor,
}

/// [`ScoredPositions`] of the model on a batch.
pub fn scored_positions(model: &CausalLm, batch: &QaBatch) -> Result<ScoredPositions> {
    let h = model.hidden(&batch.ids, Some(&batch.mask), None, None, None)?;
    let (_, t, d) = h.size3()?;
    let lb = batch.labels.narrow(1, 1, t - 1);
    let scored = lb.ne(IGNORE);
    let index = scored.reshape([-1]).nonzero().squeeze_dim(-1);
    let hs = h
        .narrow(1, 0, t - 1)
        .reshape([-1, d])
        .index_select(0, &index);
    Ok(ScoredPositions {
        log_probs: model.logits(&hs)?.log_softmax(-1, Kind::Float),
        labels: lb.reshape([-1]).index_select(0, &index),
        index,
        mask: scored.to_kind(Kind::Float),
    })
}

/// [`label_logprobs`] of the model on a batch, computed through [`scored_positions`]. The
/// values are those of the full computation up to floating-point rounding.
pub fn scored_logprobs(model: &CausalLm, batch: &QaBatch) -> Result<(Tensor, Tensor)> {
    let s = scored_positions(model, batch)?;
    let lp_sel = s
        .log_probs
        .gather(-1, &s.labels.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let (b, t1) = s.mask.size2()?;
    let lp = Tensor::zeros([b * t1], (Kind::Float, s.mask.device()))
        .index_put(&[Some(s.index)], &lp_sel, false)
        .view([b, t1]);
    Ok((lp, s.mask))
}

/// [`sequence_nll`] of the model on a batch, with the output head at the scored positions only
/// (equal up to floating-point rounding, and what training steps use).
pub fn sequence_nll_of(model: &CausalLm, batch: &QaBatch) -> Result<Tensor> {
    let (lp, _) = scored_logprobs(model, batch)?;
    Ok(-lp.sum_dim_intlist(1, false, Kind::Float))
}

/// [`pooled_nll`] of the model on a batch, with the output head at the scored positions only.
pub fn pooled_nll_of(model: &CausalLm, batch: &QaBatch) -> Result<Tensor> {
    let s = scored_positions(model, batch)?;
    let n = s.labels.size()[0];
    if n == 0 {
        return Err(Error::invalid("a batch with no answer token to score"));
    }
    let lp = s
        .log_probs
        .gather(-1, &s.labels.unsqueeze(-1), false)
        .squeeze_dim(-1);
    Ok(-lp.sum(Kind::Float) / n as f64)
}
