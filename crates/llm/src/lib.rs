//! rustworthy language models: the causal-LM stack.
//!
//! - [`gguf`]: GGUF v3 checkpoints (the format llama.cpp writes, and the one the offline
//!   SmolLM2-135M-Instruct ships in), validated and dequantized.
//! - [`llama`]: Llama-family causal LMs (Llama 2/3, SmolLM, Qwen2) built from a config, a GGUF
//!   file or a Hugging Face safetensors folder, with a KV cache.
//! - [`tokenizer`]: byte-level BPE tokenizers from GGUF metadata or `tokenizer.json`, and chat
//!   templates.
//! - [`score`]: padded prompt/answer batches, per-token log-probabilities and NLLs.
//! - [`textmetrics`]: ROUGE (with `rouge_score`'s tokenizer and Porter stemmer), the two-sample
//!   KS test, ROC AUC and the harmonic mean, as the TOFU and MUSE metrics use them.
//! - [`tofu`]: the TOFU-style benchmark (`tofu-synth` generator, TOFU's JSON files).
//! - [`tune`]: prompt formats and fine-tuning on question-answer items.
//! - [`unlearn`]: GA, GradDiff, NPO, SimNPO, IdkDPO and RMU (OpenUnlearning's and WMDP's).
//! - [`eval`]: the TOFU and MUSE-style metrics (forget quality, model utility, truth ratio,
//!   Prob, ROUGE-L, extraction strength, Min-K%, Min-K%++, PrivLeak).
//! - [`muse`]: MUSE's VerbMem and KnowMem (MUSE's and OpenUnlearning's forms), MUSE's data.
//! - [`bench`]: the TOFU-style benchmark as one procedure, with its presets.
//! - [`zo_tune`]: MeZO and other zeroth-order fine-tuning at inference memory.
//! - [`zo_bench`]: zeroth-order fine-tuning measured on a yes/no task (accuracy, memory).
//! - [`relearn`]: the relearning attack (does unlearned knowledge come back after a few steps?).
//! - [`workflow`]: model folders and the `llm` commands as library calls (fine-tune, unlearn,
//!   evaluate, score, relearn), each writing a report.
//! - [`speed`]: one unlearning step on a real model, timed beside a PyTorch reference.
//! - [`generate`]: greedy and sampled decoding with a KV cache, one prompt or a left-padded batch.

#![warn(missing_docs)]

pub mod bench;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod muse;
pub mod relearn;
pub mod score;
pub mod speed;
pub mod textmetrics;
pub mod tofu;
pub mod tokenizer;
pub mod tune;
pub mod unlearn;
pub mod workflow;
pub mod zo_bench;
pub mod zo_tune;
