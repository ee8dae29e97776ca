//! Decoding with a KV cache: greedy or sampled (temperature, top-k, top-p), stopping at an
//! end-of-sequence token or after a number of new tokens; one prompt or a left-padded batch.

use crate::llama::{CausalLm, KvCache};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Sampling settings; decoding is greedy without them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Logits are divided by this (> 0).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Seed of the sampler's generator.
    pub seed: u64,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Tokens that end a sequence (kept in the output, as `transformers` keeps them).
    pub eos: Vec<i64>,
    /// Sampling settings; `None` is greedy decoding.
    pub sampling: Option<Sampling>,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_new_tokens`, stopping at `eos`.
    pub fn greedy(max_new_tokens: usize, eos: Option<u32>) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            eos: eos.map(|e| vec![e as i64]).unwrap_or_default(),
            sampling: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if let Some(s) = &self.sampling {
            if !(s.temperature > 0.0 && s.temperature.is_finite()) {
                return Err(Error::config(
                    "sampling.temperature",
                    "must be a positive number",
                ));
            }
            if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                return Err(Error::config("sampling.top_p", "must be in (0, 1]"));
            }
        }
        Ok(())
    }
}

/// Picks the next token of each row of `logits` (`[B, V]`).
fn pick(logits: &Tensor, sampling: Option<&Sampling>, rng: &mut ChaCha8Rng) -> Result<Vec<i64>> {
    if logits.isnan().any().int64_value(&[]) != 0 {
        return Err(Error::Numerical(
            "the model produced NaN logits while decoding".into(),
        ));
    }
    let Some(s) = sampling else {
        return Ok(Vec::<i64>::try_from(logits.argmax(-1, false))?);
    };
    let rows = logits.size()[0];
    let mut out = Vec::with_capacity(rows as usize);
    for r in 0..rows {
        let l = logits.get(r).to_kind(Kind::Double) / s.temperature;
        let mut p: Vec<(usize, f64)> = Vec::<f64>::try_from(l.softmax(-1, Kind::Double))?
            .into_iter()
            .enumerate()
            .collect();
        // Most likely first; ties keep the lower id first, as a stable sort does.
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        if s.top_k > 0 && s.top_k < p.len() {
            p.truncate(s.top_k);
        }
        if s.top_p < 1.0 {
            // Over the distribution renormalized after the top-k cut, as `transformers` does.
            let kept: f64 = p.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let mut keep = p.len();
            for (i, (_, q)) in p.iter().enumerate() {
                acc += q / kept;
                if acc >= s.top_p {
                    keep = i + 1;
                    break;
                }
            }
            p.truncate(keep);
        }
        let total: f64 = p.iter().map(|x| x.1).sum();
        let mut u = rng.gen::<f64>() * total;
        let mut chosen = p[p.len() - 1].0;
        for (id, q) in &p {
            if u < *q {
                chosen = *id;
                break;
            }
            u -= q;
        }
        out.push(chosen as i64);
    }
    Ok(out)
}

/// Generates a continuation of `prompt`; returns the new tokens (the EOS token included when one
/// ended the sequence).
pub fn generate(model: &CausalLm, prompt: &[i64], opts: &GenerateOptions) -> Result<Vec<i64>> {
    Ok(generate_batch(model, &[prompt.to_vec()], opts)?.remove(0))
}

/// Generates continuations of several prompts at once, left-padded into one batch; each row
/// stops at its own EOS. Returns the new tokens of each prompt.
pub fn generate_batch(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    opts: &GenerateOptions,
) -> Result<Vec<Vec<i64>>> {
    opts.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::invalid(format!("prompt {i} is empty")));
    }
    let ctx = model.config.max_position_embeddings as usize;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + opts.max_new_tokens > ctx {
        return Err(Error::invalid(format!(
            "a prompt of {longest} tokens plus {} new ones exceeds the model's context of {ctx}",
            opts.max_new_tokens
        )));
    }
    let dev = model.device();
    let b = prompts.len();
    let mut ids = vec![0i64; b * longest];
    let mut mask = vec![0i64; b * longest];
    for (r, p) in prompts.iter().enumerate() {
        let off = longest - p.len();
        ids[r * longest + off..(r + 1) * longest].copy_from_slice(p);
        mask[r * longest + off..(r + 1) * longest].fill(1);
    }
    let ids = Tensor::from_slice(&ids)
        .view([b as i64, longest as i64])
        .to_device(dev);
    let mut mask = Tensor::from_slice(&mask)
        .view([b as i64, longest as i64])
        .to_device(dev);
    let padded = prompts.iter().any(|p| p.len() != longest);
    // Positions count from each row's first real token, as `transformers` does.
    let pos = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.sampling.as_ref().map_or(0, |s| s.seed));
    let mut out: Vec<Vec<i64>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    tch::no_grad(|| -> Result<()> {
        let mut cache = KvCache::default();
        let logits = model.forward(&ids, padded.then_some(&mask), Some(&pos), Some(&mut cache))?;
        let first_new = pos.select(1, longest as i64 - 1) + 1;
        let mut last = logits.select(1, longest as i64 - 1);
        for n in 0..opts.max_new_tokens as i64 {
            let next = pick(&last, opts.sampling.as_ref(), &mut rng)?;
            for r in 0..b {
                if !done[r] {
                    out[r].push(next[r]);
                    done[r] = opts.eos.contains(&next[r]);
                }
            }
            if done.iter().all(|&d| d) || out.iter().all(|o| o.len() >= opts.max_new_tokens) {
                break;
            }
            let step = Tensor::from_slice(&next).view([b as i64, 1]).to_device(dev);
            mask = Tensor::cat(&[&mask, &mask.ones_like().narrow(1, 0, 1)], 1);
            let logits = model.forward(
                &step,
                padded.then_some(&mask),
                Some(&(&first_new + n).unsqueeze(1)),
                Some(&mut cache),
            )?;
            last = logits.select(1, 0);
        }
        Ok(())
    })?;
    Ok(out)
}
