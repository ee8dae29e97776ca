//! MUSE's memorization metrics (Shi et al., 2024): VerbMem (does the model continue forget text
//! verbatim?) and KnowMem (does it answer questions about it?), as MUSE's release computes them,
//! with OpenUnlearning's variant as an option; and MUSE's data folders.
//!
//! - **VerbMem.** Each item is a `prompt` (the start of a forget passage) and its true
//!   continuation `gt`. The model continues the prompt greedily for up to 128 tokens; the score
//!   is ROUGE-L F1 between `gt` and the continuation, averaged over items. MUSE cuts `gt` to its
//!   first 128 tokens (BOS counted) and scores without stemming; OpenUnlearning keeps the whole
//!   `gt` and stems.
//! - **KnowMem.** Each question is asked after MUSE's in-context examples, all in one prompt
//!   `Question: {q}\nAnswer: {a}\n\n...Question: {q}\nAnswer: `; the model answers greedily
//!   for up to 32 tokens, cut before the first `\n\n`, `\nQuestion` or `Question:`; the score is
//!   ROUGE-L F1 against the answer.
//! - **PrivLeak** is [`crate::eval::priv_leak`] (Min-K% with k = 0.4, forget vs holdout).
//!
//! MUSE's corpora cannot be downloaded here; [`read_muse_dir`] reads them where a user has
//! them (the layout `load_data.py` writes), and [`synth_muse`] builds MUSE-shaped items from a
//! tofu-synth benchmark.

use crate::generate::{generate_batch, GenerateOptions};
use crate::llama::CausalLm;
use crate::textmetrics::rouge_l;
use crate::tofu::{Benchmark, QaItem};
use crate::tokenizer::Tokenizer;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Whose choices the metrics follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MuseFlavor {
    /// MUSE's release: `gt` cut to 128 tokens, no stemming.
    #[default]
    Muse,
    /// OpenUnlearning: the whole `gt`, Porter stemming.
    OpenUnlearning,
}

/// One VerbMem item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerbItem {
    /// The start of a passage.
    pub prompt: String,
    /// Its true continuation.
    pub gt: String,
}

/// A metric's mean and per-item scores, with the generated texts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemScore {
    /// Mean ROUGE-L F1 (0 to 1; MUSE's tables print it × 100).
    pub rouge_l_f1: f64,
    /// Per item.
    pub items: Vec<f64>,
    /// The model's continuations or answers.
    pub generated: Vec<String>,
}

/// Prompts per generation batch.
const BATCH: usize = 8;

fn ids(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    Ok(tok.encode(text, true)?.into_iter().map(i64::from).collect())
}

fn greedy(
    model: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    max_new_tokens: usize,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(BATCH) {
        let p: Vec<Vec<i64>> = chunk.iter().map(|t| ids(tok, t)).collect::<Result<_>>()?;
        let longest = p.iter().map(Vec::len).max().unwrap_or(0);
        let ctx = model.config.max_position_embeddings as usize;
        if longest >= ctx {
            return Err(Error::invalid(format!(
                "a prompt of {longest} tokens leaves no room in the model's context of {ctx}"
            )));
        }
        let opts = GenerateOptions::greedy(max_new_tokens.min(ctx - longest), tok.eos);
        for g in generate_batch(model, &p, &opts)? {
            let g: Vec<u32> = g.into_iter().map(|t| t as u32).collect();
            out.push(tok.decode(&g, true)?);
        }
    }
    Ok(out)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The reference VerbMem scores against: MUSE's first `max_new_tokens` tokens of `gt` (BOS
/// counted, as its tokenizer call adds one), or the whole `gt`.
pub fn verbmem_reference(
    tok: &Tokenizer,
    gt: &str,
    max_new_tokens: usize,
    flavor: MuseFlavor,
) -> Result<String> {
    match flavor {
        MuseFlavor::OpenUnlearning => Ok(gt.to_string()),
        MuseFlavor::Muse => {
            let mut t = tok.encode(gt, true)?;
            t.truncate(max_new_tokens);
            tok.decode(&t, true)
        }
    }
}

/// VerbMem: greedy continuations of each prompt (`max_new_tokens`, MUSE's 128) scored by
/// ROUGE-L F1 against the true continuation.
pub fn verbmem(
    model: &CausalLm,
    tok: &Tokenizer,
    items: &[VerbItem],
    max_new_tokens: usize,
    flavor: MuseFlavor,
) -> Result<MemScore> {
    if items.is_empty() || max_new_tokens == 0 {
        return Err(Error::invalid(
            "VerbMem needs items and a positive max_new_tokens",
        ));
    }
    let prompts: Vec<String> = items.iter().map(|i| i.prompt.clone()).collect();
    let generated = greedy(model, tok, &prompts, max_new_tokens)?;
    let stem = flavor == MuseFlavor::OpenUnlearning;
    let scores = items
        .iter()
        .zip(&generated)
        .map(|(it, g)| {
            let r = verbmem_reference(tok, &it.gt, max_new_tokens, flavor)?;
            Ok(rouge_l(&r, g, stem).fmeasure)
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(MemScore {
        rouge_l_f1: mean(&scores),
        items: scores,
        generated,
    })
}

/// MUSE's KnowMem prompt: every in-context example, then the question.
pub fn knowmem_prompt(icl: &[QaItem], question: &str) -> String {
    let mut s = String::new();
    for e in icl {
        s += &format!("Question: {}\nAnswer: {}\n\n", e.question, e.answer);
    }
    s + &format!("Question: {question}\nAnswer: ")
}

/// The answer up to the first of MUSE's stop strings (`\n\n`, `\nQuestion`, `Question:`).
pub fn cut_answer(text: &str) -> &str {
    let end = ["\n\n", "\nQuestion", "Question:"]
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// KnowMem: each question asked after the in-context examples, answered greedily
/// (`max_new_tokens`, MUSE's 32), cut at the stop strings, scored by ROUGE-L F1.
pub fn knowmem(
    model: &CausalLm,
    tok: &Tokenizer,
    qa: &[QaItem],
    icl: &[QaItem],
    max_new_tokens: usize,
    flavor: MuseFlavor,
) -> Result<MemScore> {
    if qa.is_empty() || max_new_tokens == 0 {
        return Err(Error::invalid(
            "KnowMem needs questions and a positive max_new_tokens",
        ));
    }
    let prompts: Vec<String> = qa
        .iter()
        .map(|q| knowmem_prompt(icl, &q.question))
        .collect();
    let raw = greedy(model, tok, &prompts, max_new_tokens)?;
    let stem = flavor == MuseFlavor::OpenUnlearning;
    let generated: Vec<String> = raw
        .iter()
        .map(|g| {
            let c = cut_answer(g);
            match flavor {
                MuseFlavor::Muse => c.to_string(),
                MuseFlavor::OpenUnlearning => c.trim().to_string(),
            }
        })
        .collect();
    let scores: Vec<f64> = qa
        .iter()
        .zip(&generated)
        .map(|(q, g)| rouge_l(&q.answer, g, stem).fmeasure)
        .collect();
    Ok(MemScore {
        rouge_l_f1: mean(&scores),
        items: scores,
        generated,
    })
}

/// MUSE's evaluation data for one corpus.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MuseData {
    /// `verbmem/forget.json`.
    pub verbmem_forget: Vec<VerbItem>,
    /// `knowmem/forget_qa.json`.
    pub knowmem_forget: Vec<QaItem>,
    /// `knowmem/retain_qa.json`.
    pub knowmem_retain: Vec<QaItem>,
    /// `knowmem/forget_qa_icl.json`.
    pub knowmem_forget_icl: Vec<QaItem>,
    /// `knowmem/retain_qa_icl.json`.
    pub knowmem_retain_icl: Vec<QaItem>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::corrupt(path, format!("not MUSE's format: {e}")))
}

/// Reads a MUSE corpus folder as `load_data.py` writes it (`data/news`): `verbmem/forget.json`
/// (`prompt`, `gt`) and `knowmem/{forget,retain}_qa{,_icl}.json` (`question`, `answer`). The
/// Books corpus has no KnowMem files; they are then empty.
pub fn read_muse_dir(dir: &Path) -> Result<MuseData> {
    let verb = dir.join("verbmem/forget.json");
    if !verb.exists() {
        return Err(Error::DatasetNotFound {
            name: "MUSE".into(),
            searched: verb.display().to_string(),
            hint: "MUSE's corpora are on the Hugging Face hub (muse-bench/MUSE-News, MUSE-Books); \
                   write them with MUSE's load_data.py where a network is available"
                .into(),
        });
    }
    let kn = |name: &str| -> Result<Vec<QaItem>> {
        let p = dir.join("knowmem").join(name);
        if p.exists() {
            read_json(&p)
        } else {
            Ok(Vec::new())
        }
    };
    Ok(MuseData {
        verbmem_forget: read_json(&verb)?,
        knowmem_forget: kn("forget_qa.json")?,
        knowmem_retain: kn("retain_qa.json")?,
        knowmem_forget_icl: kn("forget_qa_icl.json")?,
        knowmem_retain_icl: kn("retain_qa_icl.json")?,
    })
}

/// MUSE-shaped items from a tofu-synth benchmark: each forget author's answers joined into one
/// passage, its first `prefix_words` words the VerbMem prompt and the rest the continuation;
/// KnowMem on the forget and retain questions, with `icl` in-context examples from the
/// utility set `world_facts`.
pub fn synth_muse(
    bench: &Benchmark,
    forget: &str,
    retain: &str,
    items_per_author: usize,
    prefix_words: usize,
    icl: usize,
) -> Result<MuseData> {
    if items_per_author == 0 || prefix_words == 0 {
        return Err(Error::config(
            "muse",
            "items_per_author and prefix_words must be positive",
        ));
    }
    let f = bench.split(forget)?;
    let mut verb = Vec::new();
    for group in f.chunks(items_per_author) {
        let words: Vec<&str> = group
            .iter()
            .flat_map(|q| q.answer.split_whitespace())
            .collect();
        if words.len() > prefix_words {
            verb.push(VerbItem {
                prompt: words[..prefix_words].join(" "),
                gt: words[prefix_words..].join(" "),
            });
        }
    }
    let wf = bench.split("world_facts")?;
    let examples: Vec<QaItem> = wf.iter().take(icl).cloned().collect();
    Ok(MuseData {
        verbmem_forget: verb,
        knowmem_forget: f.to_vec(),
        knowmem_retain: bench.split(retain)?.iter().take(f.len()).cloned().collect(),
        knowmem_forget_icl: examples.clone(),
        knowmem_retain_icl: examples,
    })
}
