//! rustworthy language models: the causal-LM stack.
//!
//! - [`gguf`]: GGUF v3 checkpoints (the format llama.cpp writes, and the one the offline
//!   SmolLM2-135M-Instruct ships in), validated and dequantized.
//! - [`llama`]: Llama-family causal LMs (Llama 2/3, SmolLM, Qwen2) built from a config, a GGUF
//!   file or a Hugging Face safetensors folder, with a KV cache.
//! - [`tokenizer`]: byte-level BPE tokenizers from GGUF metadata or `tokenizer.json`, and chat
//!   templates.
//! - [`generate`]: greedy and sampled decoding with a KV cache, one prompt or a left-padded batch.

#![warn(missing_docs)]

pub mod generate;
pub mod gguf;
pub mod llama;
pub mod tokenizer;
