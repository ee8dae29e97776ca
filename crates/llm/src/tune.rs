//! Fine-tuning a causal LM on question-answer items: how items become token sequences, and a
//! first-order training loop (AdamW, linear warm-up then cosine decay, gradient clipping) that
//! scores the answer only.

use crate::llama::CausalLm;
use crate::score::{pooled_nll_of, QaBatch};
use crate::tofu::QaItem;
use crate::tokenizer::{Message, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;

/// How a question is put to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// `Question: ...` then `Answer:` (models without a chat template).
    Plain,
    /// The model's chat template, one user turn, the assistant's turn opened.
    Chat,
}

/// Turns questions and answers into token ids.
pub struct Encoder<'a> {
    /// The tokenizer.
    pub tok: &'a Tokenizer,
    /// The prompt layout.
    pub format: PromptFormat,
    /// Longest prompt + answer.
    pub max_len: usize,
}

impl Encoder<'_> {
    /// Prompt ids of `question`.
    pub fn prompt(&self, question: &str) -> Result<Vec<i64>> {
        let text = match self.format {
            PromptFormat::Plain => format!("Question: {question}\nAnswer:"),
            PromptFormat::Chat => self
                .tok
                .apply_chat_template(&[Message::new("user", question)], true)?,
        };
        Ok(self
            .tok
            .encode(&text, true)?
            .into_iter()
            .map(i64::from)
            .collect())
    }

    /// Answer ids of `answer`, closed by the end-of-sequence token.
    pub fn answer(&self, answer: &str) -> Result<Vec<i64>> {
        let text = match self.format {
            PromptFormat::Plain => format!(" {answer}"),
            PromptFormat::Chat => answer.to_string(),
        };
        let mut ids: Vec<i64> = self
            .tok
            .encode(&text, false)?
            .into_iter()
            .map(i64::from)
            .collect();
        if let Some(e) = self.tok.eos {
            ids.push(e as i64);
        }
        Ok(ids)
    }

    /// `(prompt, answer)` ids of an item's question and `answer`.
    pub fn pair(&self, question: &str, answer: &str) -> Result<(Vec<i64>, Vec<i64>)> {
        Ok((self.prompt(question)?, self.answer(answer)?))
    }

    /// Pads a batch of `(question, answer)` pairs.
    pub fn batch(&self, pairs: &[(&str, &str)], device: tch::Device) -> Result<QaBatch> {
        let items: Vec<(Vec<i64>, Vec<i64>)> = pairs
            .iter()
            .map(|(q, a)| self.pair(q, a))
            .collect::<Result<_>>()?;
        self.pack(&items, device)
    }

    /// Pads already encoded `(prompt, answer)` ids into a batch, with the tokenizer's padding
    /// token (or its end-of-sequence token) and this encoder's longest sequence.
    pub fn pack(&self, items: &[(Vec<i64>, Vec<i64>)], device: tch::Device) -> Result<QaBatch> {
        let pad = self.tok.pad.or(self.tok.eos).unwrap_or(0) as i64;
        QaBatch::new(items, pad, self.max_len, device)
    }
}

/// Settings of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Passes over the items.
    pub epochs: usize,
    /// Items per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Warm-up steps, as a fraction of all steps.
    pub warmup: f64,
    /// Gradient norm clip (0: none).
    pub clip: f64,
    /// Seed of the item order.
    pub seed: u64,
}

impl FinetuneConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::config(
                "epochs",
                "epochs and batch_size must be positive",
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config("lr", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.warmup) || self.weight_decay < 0.0 || self.clip < 0.0 {
            return Err(Error::config(
                "warmup",
                "warmup in [0, 1), weight_decay and clip non-negative",
            ));
        }
        Ok(())
    }
}

/// Learning rate at `step` of `total`: linear warm-up to `lr`, then cosine decay to 0.
pub fn schedule(lr: f64, warmup: f64, step: usize, total: usize) -> f64 {
    let w = (warmup * total as f64).round() as usize;
    if step < w {
        return lr * (step + 1) as f64 / w as f64;
    }
    let p = (step - w) as f64 / (total - w).max(1) as f64;
    lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// One record per epoch of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean loss over its steps.
    pub loss: f64,
    /// Seconds it took.
    pub seconds: f64,
}

/// Fine-tunes `model` on `items` (answer tokens scored, pooled cross-entropy).
pub fn finetune(
    model: &mut CausalLm,
    enc: &Encoder,
    items: &[QaItem],
    cfg: &FinetuneConfig,
) -> Result<Vec<EpochLog>> {
    cfg.validate()?;
    if items.is_empty() {
        return Err(Error::invalid("no items to fine-tune on"));
    }
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = items
        .iter()
        .map(|it| enc.pair(&it.question, &it.answer))
        .collect::<Result<_>>()?;
    let mut opt = tch::nn::AdamW::default()
        .wd(cfg.weight_decay)
        .build(model.trainable(), cfg.lr)?;
    let steps_per_epoch = items.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut logs = Vec::new();
    let mut step = 0;
    for epoch in 1..=cfg.epochs {
        let t0 = std::time::Instant::now();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(cfg.batch_size) {
            rustworthy_core::progress::check_interrupt()?;
            let batch: Vec<(Vec<i64>, Vec<i64>)> =
                chunk.iter().map(|&i| pairs[i].clone()).collect();
            let b = enc.pack(&batch, model.device())?;
            let loss = pooled_nll_of(model, &b)?;
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                return Err(Error::Numerical(format!(
                    "loss is {l} at epoch {epoch}, step {step}"
                )));
            }
            opt.set_lr(schedule(cfg.lr, cfg.warmup, step, total));
            opt.zero_grad();
            loss.backward();
            if cfg.clip > 0.0 {
                opt.clip_grad_norm(cfg.clip);
            }
            opt.step();
            sum += l;
            step += 1;
        }
        logs.push(EpochLog {
            epoch,
            loss: sum / steps_per_epoch as f64,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(logs)
}
