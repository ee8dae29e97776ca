//! Causal language models of two families.
//!
//! - Llama (Llama 2/3, SmolLM, Qwen2): RMSNorm, rotary position embeddings in Hugging Face's
//!   rotate-half layout (with llama3 frequency scaling), grouped-query attention, a SwiGLU MLP,
//!   and a tied or untied head; optional q/k/v (Qwen2) and output (Llama `attention_bias`)
//!   biases.
//! - GPT-2: learned absolute positions, LayerNorm with biases, fused q/k/v in Conv1D layout
//!   (`[in, out]` weights), a tanh-approximated GELU MLP, and a (usually tied) head.
//!
//! Parameters live in a [`tch::nn::VarStore`] under Hugging Face's names
//! (`model.layers.3.self_attn.q_proj.weight`, `transformer.h.3.attn.c_attn.weight`, ...), so a
//! safetensors checkpoint maps one to one and every parameter can be trained, masked or
//! perturbed by name.

use crate::gguf::{unpermute_qk, Gguf, Value};
use rustworthy_core::fsutil::{atomic_write, atomic_write_with};
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// llama3 rotary frequency scaling (Llama 3.1 and later).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    /// Overall factor applied to the low frequencies.
    pub factor: f64,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length the model was trained on before scaling.
    pub original_max_position_embeddings: f64,
}

/// The architecture family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Llama, SmolLM, Qwen2.
    #[default]
    Llama,
    /// GPT-2.
    Gpt2,
}

/// Hyperparameters of a causal LM (Hugging Face's Llama `config.json` names; a GPT-2 config is
/// mapped onto them: `n_embd` is `hidden_size`, `n_inner` `intermediate_size`, `n_layer`
/// `num_hidden_layers`, `n_head` both head counts, `layer_norm_epsilon` `rms_norm_eps`,
/// `n_positions` `max_position_embeddings`; the RoPE fields are unused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// The architecture family.
    #[serde(default)]
    pub arch: Arch,
    /// Tokens in the vocabulary.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Transformer blocks.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// llama3 frequency scaling, if any.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Longest sequence (prompt and generated tokens) the model accepts.
    pub max_position_embeddings: i64,
    /// The output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
}

impl LlamaConfig {
    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in pos {
            if v <= 0 || v > 1 << 24 {
                return Err(Error::config(k, format!("must be in 1..=2^24, got {v}")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.arch == Arch::Gpt2 {
            if self.num_key_value_heads != self.num_attention_heads
                || self.head_dim * self.num_attention_heads != self.hidden_size
            {
                return Err(Error::config(
                    "n_head",
                    "GPT-2 needs n_embd = n_head x head width and no grouped-query attention",
                ));
            }
        } else if self.head_dim % 2 != 0 {
            return Err(Error::config(
                "head_dim",
                "must be even for rotary embeddings",
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::config("rms_norm_eps", "must be in (0, 1)"));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return Err(Error::config(
                "rope_theta",
                "must be a finite number above 1",
            ));
        }
        if let Some(s) = &self.rope_scaling {
            let ok = s.factor >= 1.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.original_max_position_embeddings > 0.0;
            if !ok {
                return Err(Error::config(
                    "rope_scaling",
                    "llama3 scaling needs factor >= 1, 0 < low_freq_factor < high_freq_factor and a positive original length",
                ));
            }
        }
        Ok(())
    }

    /// Parameters a model of this config has (what a checkpoint must hold at least).
    pub fn parameter_count(&self) -> i128 {
        let (v, d, f) = (
            self.vocab_size as i128,
            self.hidden_size as i128,
            self.intermediate_size as i128,
        );
        let l = self.num_hidden_layers as i128;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        match self.arch {
            Arch::Gpt2 => {
                let block = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * f + f + d;
                v * d + self.max_position_embeddings as i128 * d + l * block + 2 * d + head
            }
            Arch::Llama => {
                let qd = (self.num_attention_heads * self.head_dim) as i128;
                let kvd = (self.num_key_value_heads * self.head_dim) as i128;
                let bias =
                    if self.qkv_bias { qd + 2 * kvd } else { 0 } + if self.o_bias { d } else { 0 };
                let block = 2 * d + 2 * d * qd + 2 * d * kvd + 3 * d * f + bias;
                v * d + l * block + d + head
            }
        }
    }

    /// Reads a Hugging Face `config.json` (model types `llama` and `qwen2`; old `rope_theta` /
    /// `rope_scaling` keys and the newer `rope_parameters`).
    pub fn from_hf_json(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("config.json does not parse: {e}")))?;
        Self::from_hf_value(&v).map_err(|e| e.in_file(path))
    }

    /// [`LlamaConfig::from_hf_json`] on a parsed value.
    pub fn from_hf_value(v: &serde_json::Value) -> Result<LlamaConfig> {
        let model_type = v["model_type"].as_str().unwrap_or("llama");
        if model_type == "gpt2" {
            return Self::from_gpt2_value(v);
        }
        if !matches!(model_type, "llama" | "qwen2") {
            return Err(Error::config(
                "model_type",
                format!("`{model_type}` is not a supported model (llama, qwen2, gpt2)"),
            ));
        }
        let int = |k: &str| -> Result<i64> {
            v[k].as_i64()
                .ok_or_else(|| Error::config(k, "missing or not an integer"))
        };
        if let Some(act) = v["hidden_act"].as_str() {
            if act != "silu" {
                return Err(Error::config(
                    "hidden_act",
                    format!("`{act}` is not supported (silu)"),
                ));
            }
        }
        if v["mlp_bias"].as_bool() == Some(true) {
            return Err(Error::config("mlp_bias", "MLP biases are not supported"));
        }
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling"));
        let theta = v["rope_theta"]
            .as_f64()
            .or_else(|| rope.and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10000.0);
        let scaling = match rope.filter(|r| !r.is_null()) {
            None => None,
            Some(r) => {
                let kind = r["rope_type"]
                    .as_str()
                    .or(r["type"].as_str())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            r[k].as_f64().ok_or_else(|| {
                                Error::config(
                                    format!("rope_scaling.{k}"),
                                    "missing or not a number",
                                )
                            })
                        };
                        Some(Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(Error::config(
                            "rope_scaling",
                            format!("rope type `{other}` is not supported (default, llama3)"),
                        ))
                    }
                }
            }
        };
        let qwen = model_type == "qwen2";
        let attention_bias = v["attention_bias"].as_bool().unwrap_or(false);
        let cfg = LlamaConfig {
            arch: Arch::Llama,
            vocab_size: int("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v["num_key_value_heads"].as_i64().unwrap_or(heads),
            head_dim: v["head_dim"]
                .as_i64()
                .unwrap_or(if heads > 0 { hidden / heads } else { 0 }),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: theta,
            rope_scaling: scaling,
            max_position_embeddings: v["max_position_embeddings"].as_i64().unwrap_or(2048),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: qwen || attention_bias,
            o_bias: !qwen && attention_bias,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A GPT-2 `config.json` (`gelu_new` activation, Conv1D weights; the settings that change
    /// the function, such as `scale_attn_by_inverse_layer_idx`, are refused when set).
    fn from_gpt2_value(v: &serde_json::Value) -> Result<LlamaConfig> {
        let int = |k: &str| -> Result<i64> {
            v[k].as_i64()
                .ok_or_else(|| Error::config(k, "missing or not an integer"))
        };
        if let Some(act) = v["activation_function"].as_str() {
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                return Err(Error::config(
                    "activation_function",
                    format!("`{act}` is not supported (gelu_new)"),
                ));
            }
        }
        for k in [
            "scale_attn_by_inverse_layer_idx",
            "reorder_and_upcast_attn",
            "add_cross_attention",
        ] {
            if v[k].as_bool() == Some(true) {
                return Err(Error::config(k, "is not supported"));
            }
        }
        if v["scale_attn_weights"].as_bool() == Some(false) {
            return Err(Error::config(
                "scale_attn_weights",
                "unscaled attention is not supported",
            ));
        }
        let (d, heads) = (int("n_embd")?, int("n_head")?);
        let cfg = LlamaConfig {
            arch: Arch::Gpt2,
            vocab_size: int("vocab_size")?,
            hidden_size: d,
            intermediate_size: v["n_inner"].as_i64().unwrap_or(4 * d),
            num_hidden_layers: int("n_layer")?,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            head_dim: if heads > 0 { d / heads } else { 0 },
            rms_norm_eps: v["layer_norm_epsilon"].as_f64().unwrap_or(1e-5),
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: int("n_positions")?,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(true),
            qkv_bias: true,
            o_bias: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` this model saves, readable by Hugging Face `transformers`.
    pub fn to_hf_value(&self) -> serde_json::Value {
        if self.arch == Arch::Gpt2 {
            return serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden_size,
                "n_inner": self.intermediate_size,
                "n_layer": self.num_hidden_layers,
                "n_head": self.num_attention_heads,
                "n_positions": self.max_position_embeddings,
                "layer_norm_epsilon": self.rms_norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": self.tie_word_embeddings,
                "torch_dtype": "float32",
            });
        }
        let qwen = self.qkv_bias && !self.o_bias;
        let mut v = serde_json::json!({
            "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if qwen { "qwen2" } else { "llama" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if !qwen {
            v["attention_bias"] = serde_json::json!(self.qkv_bias);
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        v
    }

    /// Reads the hyperparameters of a `llama` GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if arch != "llama" && arch != "qwen2" {
            return Err(Error::corrupt(
                g.path(),
                format!("GGUF architecture `{arch}` is not a Llama-family model (llama, qwen2)"),
            ));
        }
        let int = |k: &str| -> Result<i64> {
            g.get(&format!("{arch}.{k}"))
                .and_then(Value::as_u64)
                .map(|x| x as i64)
                .ok_or_else(|| Error::corrupt(g.path(), format!("GGUF: missing `{arch}.{k}`")))
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len() as i64)
                .ok_or_else(|| Error::corrupt(g.path(), "GGUF: no vocabulary size"))?,
        };
        let f = |k: &str, d: f64| {
            g.get(&format!("{arch}.{k}"))
                .and_then(Value::as_f64)
                .unwrap_or(d)
        };
        let cfg = LlamaConfig {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim: int("attention.key_length").unwrap_or(if heads > 0 {
                hidden / heads
            } else {
                0
            }),
            rms_norm_eps: f("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: f("rope.freq_base", 10000.0),
            rope_scaling: None,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: g.info("output.weight").is_none(),
            qkv_bias: arch == "qwen2",
            o_bias: false,
        };
        cfg.validate().map_err(|e| e.in_file(g.path()))?;
        Ok(cfg)
    }
}

struct Block {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_b: Option<Tensor>,
    k_b: Option<Tensor>,
    v_b: Option<Tensor>,
    o_b: Option<Tensor>,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    /// LoRA factors `(A [r, in], B [out, r])` per projection, in [`LORA_TARGETS`] order.
    lora: Vec<Option<(Tensor, Tensor)>>,
}

/// One GPT-2 block: LayerNorms with biases, Conv1D (`[in, out]`) weights.
struct Gpt2Block {
    ln1: (Tensor, Tensor),
    c_attn: (Tensor, Tensor),
    attn_proj: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
    /// LoRA factors `(A [r, in], B [out, r])` per Conv1D, in [`GPT2_LORA_TARGETS`] order.
    lora: Vec<Option<(Tensor, Tensor)>>,
}

/// The projections LoRA can adapt, by their Hugging Face names.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The module a Llama projection sits in: `self_attn` for q/k/v/o, `mlp` for the rest.
fn llama_parent(proj: &str) -> &'static str {
    if LORA_TARGETS[..4].contains(&proj) {
        "self_attn"
    } else {
        "mlp"
    }
}

/// The Conv1D modules of a GPT-2 block LoRA can adapt, by their Hugging Face names below
/// `transformer.h.N.`. A target `c_proj` names both `attn.c_proj` and `mlp.c_proj`, as PEFT's
/// suffix match does; `c_attn` adapts the fused q/k/v projection as one (PEFT's default for
/// GPT-2).
pub const GPT2_LORA_TARGETS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// Whether LoRA `target` names GPT-2 module `module` (one of [`GPT2_LORA_TARGETS`]): the whole
/// name or its last dot-separated part(s).
fn gpt2_target_matches(target: &str, module: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// LoRA adapters: `W x + (α/r)·B A x` on the target projections, `A` initialized as PEFT does
/// (Kaiming-uniform) and `B` at zero, so an adapted model starts as the base model. On GPT-2's
/// Conv1D weights (`[in, out]`) the update is the same, `x Aᵀ Bᵀ`, and merging adds `(B A)ᵀ`, as
/// PEFT's `fan_in_fan_out` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: i64,
    /// Scale numerator `α`.
    pub alpha: f64,
    /// Target projections: names of [`LORA_TARGETS`] for Llama-family models, of
    /// [`GPT2_LORA_TARGETS`] (or their last part: `c_attn`, `c_proj`, `c_fc`) for GPT-2. Empty:
    /// PEFT's default for the architecture (`q_proj`, `v_proj`; GPT-2: `c_attn`).
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Rank 8, α 16, on the query and value projections (PEFT's common setting).
    pub fn default_qv() -> LoraConfig {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
        }
    }

    /// Checks the settings for a model of `arch` and fills in the default targets.
    fn resolve(mut self, arch: Arch) -> Result<LoraConfig> {
        if self.rank <= 0 || !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(Error::config("lora", "rank and alpha must be positive"));
        }
        if self.targets.is_empty() {
            self.targets = match arch {
                Arch::Llama => vec!["q_proj".into(), "v_proj".into()],
                Arch::Gpt2 => vec!["c_attn".into()],
            };
        }
        for t in &self.targets {
            let known = match arch {
                Arch::Llama => LORA_TARGETS.contains(&t.as_str()),
                Arch::Gpt2 => GPT2_LORA_TARGETS.iter().any(|m| gpt2_target_matches(t, m)),
            };
            if !known {
                let (what, names) = match arch {
                    Arch::Llama => ("a Llama projection", LORA_TARGETS.join(", ")),
                    Arch::Gpt2 => (
                        "a GPT-2 module",
                        format!("{}, c_attn, c_proj, c_fc", GPT2_LORA_TARGETS.join(", ")),
                    ),
                };
                return Err(Error::config(
                    "lora.targets",
                    format!("`{t}` is not {what} ({names})"),
                ));
            }
        }
        Ok(self)
    }
}

/// Keys and values of the positions seen so far, per block, for incremental decoding.
#[derive(Default)]
pub struct KvCache {
    kv: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama-family causal language model.
pub struct CausalLm {
    /// Its hyperparameters.
    pub config: LlamaConfig,
    /// Its parameters, under Hugging Face's names.
    pub vs: nn::VarStore,
    embed: Tensor,
    blocks: Vec<Block>,
    /// GPT-2's blocks (then `blocks` is empty), learned positions and final-norm bias.
    gpt2: Vec<Gpt2Block>,
    wpe: Option<Tensor>,
    norm_b: Option<Tensor>,
    norm: Tensor,
    head: Option<Tensor>,
    inv_freq: Tensor,
    /// LoRA adapters, when added: their settings and their own parameters.
    lora: Option<(LoraConfig, nn::VarStore)>,
}

/// Buffers Hugging Face checkpoints may carry that are not parameters (GPT-2's causal mask is
/// `h.N.attn.bias`; its projections' biases are `h.N.attn.c_attn.bias` and the like).
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || name.ends_with(".masked_bias")
        || (name.ends_with(".attn.bias") && !name.ends_with("self_attn.bias"))
}

impl CausalLm {
    /// A freshly initialized model (normal weights with std 0.02, unit norms, zero biases, as
    /// Hugging Face initializes Llama), drawn from libtorch's generator: call
    /// `tch::manual_seed` first for a reproducible model.
    pub fn new(config: LlamaConfig, device: Device) -> Result<CausalLm> {
        config.validate()?;
        if config.arch == Arch::Gpt2 {
            return Self::new_gpt2(config, device);
        }
        let vs = nn::VarStore::new(device);
        let c = &config;
        let root = vs.root();
        let m = &root / "model";
        let w = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let embed = (&m / "embed_tokens").f_var("weight", &[c.vocab_size, d], w)?;
        let mut blocks = Vec::new();
        for i in 0..c.num_hidden_layers {
            let l = &m / "layers" / i;
            let a = &l / "self_attn";
            let bias = |name: &str, n: i64, on: bool| -> Result<Option<Tensor>> {
                Ok(if on {
                    Some((&a / name).f_var("bias", &[n], nn::Init::Const(0.0))?)
                } else {
                    None
                })
            };
            blocks.push(Block {
                attn_norm: (&l / "input_layernorm").f_var("weight", &[d], nn::Init::Const(1.0))?,
                q: (&a / "q_proj").f_var("weight", &[qd, d], w)?,
                k: (&a / "k_proj").f_var("weight", &[kvd, d], w)?,
                v: (&a / "v_proj").f_var("weight", &[kvd, d], w)?,
                o: (&a / "o_proj").f_var("weight", &[d, qd], w)?,
                q_b: bias("q_proj", qd, c.qkv_bias)?,
                k_b: bias("k_proj", kvd, c.qkv_bias)?,
                v_b: bias("v_proj", kvd, c.qkv_bias)?,
                o_b: bias("o_proj", d, c.o_bias)?,
                mlp_norm: (&l / "post_attention_layernorm").f_var(
                    "weight",
                    &[d],
                    nn::Init::Const(1.0),
                )?,
                gate: (&l / "mlp" / "gate_proj").f_var("weight", &[c.intermediate_size, d], w)?,
                up: (&l / "mlp" / "up_proj").f_var("weight", &[c.intermediate_size, d], w)?,
                down: (&l / "mlp" / "down_proj").f_var("weight", &[d, c.intermediate_size], w)?,
                lora: (0..LORA_TARGETS.len()).map(|_| None).collect(),
            });
        }
        let norm = (&m / "norm").f_var("weight", &[d], nn::Init::Const(1.0))?;
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some((&root / "lm_head").f_var("weight", &[c.vocab_size, d], w)?)
        };
        let inv_freq = rope_inv_freq(c).to_device(device);
        Ok(CausalLm {
            config,
            vs,
            embed,
            blocks,
            gpt2: Vec::new(),
            wpe: None,
            norm_b: None,
            norm,
            head,
            inv_freq,
            lora: None,
        })
    }

    /// A freshly initialized GPT-2 (normal weights with std 0.02, unit LayerNorms, zero biases).
    fn new_gpt2(config: LlamaConfig, device: Device) -> Result<CausalLm> {
        let vs = nn::VarStore::new(device);
        let c = &config;
        let root = vs.root();
        let tr = &root / "transformer";
        let w = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let ln = |p: nn::Path| -> Result<(Tensor, Tensor)> {
            Ok((
                p.f_var("weight", &[d], nn::Init::Const(1.0))?,
                p.f_var("bias", &[d], nn::Init::Const(0.0))?,
            ))
        };
        let conv = |p: nn::Path, i: i64, o: i64| -> Result<(Tensor, Tensor)> {
            Ok((
                p.f_var("weight", &[i, o], w)?,
                p.f_var("bias", &[o], nn::Init::Const(0.0))?,
            ))
        };
        let embed = (&tr / "wte").f_var("weight", &[c.vocab_size, d], w)?;
        let wpe = (&tr / "wpe").f_var("weight", &[c.max_position_embeddings, d], w)?;
        let mut gpt2 = Vec::new();
        for i in 0..c.num_hidden_layers {
            let h = &tr / "h" / i;
            gpt2.push(Gpt2Block {
                ln1: ln(&h / "ln_1")?,
                c_attn: conv(&h / "attn" / "c_attn", d, 3 * d)?,
                attn_proj: conv(&h / "attn" / "c_proj", d, d)?,
                ln2: ln(&h / "ln_2")?,
                c_fc: conv(&h / "mlp" / "c_fc", d, f)?,
                mlp_proj: conv(&h / "mlp" / "c_proj", f, d)?,
                lora: (0..GPT2_LORA_TARGETS.len()).map(|_| None).collect(),
            });
        }
        let (norm, norm_b) = ln(&tr / "ln_f")?;
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some((&root / "lm_head").f_var("weight", &[c.vocab_size, d], w)?)
        };
        Ok(CausalLm {
            config,
            vs,
            embed,
            blocks: Vec::new(),
            gpt2,
            wpe: Some(wpe),
            norm_b: Some(norm_b),
            norm,
            head,
            inv_freq: Tensor::zeros([1], (Kind::Float, device)),
            lora: None,
        })
    }

    /// The name of block `l`'s MLP output weight (what WMDP's RMU trains).
    pub fn mlp_out_weight_name(&self, l: usize) -> String {
        match self.config.arch {
            Arch::Llama => format!("model.layers.{l}.mlp.down_proj.weight"),
            Arch::Gpt2 => format!("transformer.h.{l}.mlp.c_proj.weight"),
        }
    }

    /// Adds LoRA adapters (drawn from libtorch's generator: call `tch::manual_seed` first). The
    /// base parameters are frozen; [`CausalLm::trainable`] is then the adapters' store.
    pub fn add_lora(&mut self, cfg: LoraConfig) -> Result<()> {
        let cfg = cfg.resolve(self.config.arch)?;
        if self.lora.is_some() {
            return Err(Error::invalid("the model already has LoRA adapters"));
        }
        let lvs = nn::VarStore::new(self.device());
        let root = lvs.root();
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        // A (Kaiming-uniform with a = sqrt(5): bound 1/sqrt(fan_in)) and B (zeros) under `p`.
        let factors = |p: nn::Path, fan_in: i64, out: i64| -> Result<(Tensor, Tensor)> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a = (&p / "lora_A").f_var(
                "weight",
                &[cfg.rank, fan_in],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?;
            let b = (&p / "lora_B").f_var("weight", &[out, cfg.rank], nn::Init::Const(0.0))?;
            Ok((a, b))
        };
        for (i, blk) in self.gpt2.iter_mut().enumerate() {
            let f = c.intermediate_size;
            for (j, module) in GPT2_LORA_TARGETS.iter().enumerate() {
                if !cfg.targets.iter().any(|t| gpt2_target_matches(t, module)) {
                    continue;
                }
                let (fan_in, out) = match *module {
                    "attn.c_attn" => (d, 3 * d),
                    "attn.c_proj" => (d, d),
                    "mlp.c_fc" => (d, f),
                    _ => (f, d),
                };
                let mut p = &root / "transformer" / "h" / i as i64;
                for part in module.split('.') {
                    p = &p / part;
                }
                blk.lora[j] = Some(factors(p, fan_in, out)?);
            }
        }
        let dims = |name: &str| -> (i64, i64) {
            match name {
                "q_proj" => (d, c.num_attention_heads * hd),
                "k_proj" | "v_proj" => (d, c.num_key_value_heads * hd),
                "o_proj" => (c.num_attention_heads * hd, d),
                "gate_proj" | "up_proj" => (d, c.intermediate_size),
                _ => (c.intermediate_size, d),
            }
        };
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            for (j, name) in LORA_TARGETS.iter().enumerate() {
                if !cfg.targets.iter().any(|t| t == name) {
                    continue;
                }
                let (fan_in, out) = dims(name);
                let p = &root / "model" / "layers" / i as i64 / *name;
                blk.lora[j] = Some(factors(p, fan_in, out)?);
            }
        }
        self.vs.freeze();
        self.lora = Some((cfg, lvs));
        // Adapters take the model's kind.
        let kind = self.kind();
        if kind != Kind::Float {
            self.set_kind(kind);
        }
        Ok(())
    }

    /// The store of the parameters training updates: the LoRA adapters when there are some,
    /// else every parameter.
    pub fn trainable(&self) -> &nn::VarStore {
        self.lora.as_ref().map_or(&self.vs, |(_, v)| v)
    }

    /// The LoRA settings, if adapters were added.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|(c, _)| c)
    }

    /// A projection, with its LoRA update when adapted.
    fn proj(&self, blk: &Block, j: usize, h: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        self.with_lora(h.linear(w, b), h, &blk.lora[j])
    }

    /// `y` plus the LoRA update `(α/r) x Aᵀ Bᵀ` of `factors`, when adapted.
    fn with_lora(&self, y: Tensor, x: &Tensor, factors: &Option<(Tensor, Tensor)>) -> Tensor {
        match (factors, &self.lora) {
            (Some((a, bb)), Some((c, _))) => {
                let scale = c.alpha / c.rank as f64;
                y + x.linear::<&Tensor>(a, None).linear::<&Tensor>(bb, None) * scale
            }
            _ => y,
        }
    }

    /// Copies `tensors` (Hugging Face names; a `model.` or `transformer.` prefix may be missing
    /// or extra) into the parameters. Every parameter must be given with its exact shape;
    /// unknown tensors are refused, so a checkpoint of another architecture is not half-loaded.
    /// `source` names the checkpoint in errors.
    pub fn load_named(&mut self, tensors: HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in tensors {
            if is_buffer(&name) {
                continue;
            }
            // Llama keeps its body under `model.`, GPT-2 under `transformer.`; either prefix
            // may be missing or be the other one.
            let prefix = match self.config.arch {
                Arch::Llama => "model.",
                Arch::Gpt2 => "transformer.",
            };
            let canon = if name.starts_with(prefix) || name.starts_with("lm_head.") {
                name
            } else if let Some(rest) = name
                .strip_prefix("transformer.")
                .or_else(|| name.strip_prefix("model."))
            {
                format!("{prefix}{rest}")
            } else {
                format!("{prefix}{name}")
            };
            given.insert(canon, t);
        }
        if self.config.tie_word_embeddings {
            // A tied checkpoint may still store the head; it must then be the embedding.
            if let Some(h) = given.remove("lm_head.weight") {
                let embed = match self.config.arch {
                    Arch::Llama => "model.embed_tokens.weight",
                    Arch::Gpt2 => "transformer.wte.weight",
                };
                if let Some(e) = given.get(embed) {
                    if h.size() != e.size()
                        || !h.to_kind(Kind::Float).equal(&e.to_kind(Kind::Float))
                    {
                        return Err(Error::corrupt(
                            source,
                            "the config ties the head to the embedding, but lm_head.weight differs from it",
                        ));
                    }
                }
            }
        }
        copy_exact(&self.vs.variables(), given, source, "checkpoint")
    }

    /// Loads a Hugging Face model folder: `config.json` and `model.safetensors`, or the shards
    /// listed in `model.safetensors.index.json`; fp32, fp16 and bf16 tensors, converted to `kind`.
    pub fn from_hf_dir(dir: &Path, device: Device, kind: Kind) -> Result<CausalLm> {
        let cfg = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
        let tensors = read_safetensors_dir(dir)?;
        // A config that asks for more parameters than the checkpoint holds is refused before
        // the model is allocated (a damaged size would otherwise allocate without bound).
        let held: i128 = tensors.values().map(|t| t.numel() as i128).sum();
        if cfg.parameter_count() > held {
            return Err(Error::corrupt(
                dir,
                format!(
                    "config.json describes {} parameters, the checkpoint holds {held}",
                    cfg.parameter_count()
                ),
            ));
        }
        let mut model = CausalLm::new(cfg, device)?;
        model.load_named(tensors, dir)?;
        model.set_kind(kind);
        Ok(model)
    }

    /// Loads a `llama` (or `qwen2`) GGUF checkpoint, dequantized, with llama.cpp's q/k row
    /// permutation undone.
    pub fn from_gguf(g: &Gguf, device: Device) -> Result<CausalLm> {
        let cfg = LlamaConfig::from_gguf(g)?;
        if g.info("rope_freqs.weight").is_some() {
            return Err(Error::corrupt(
                g.path(),
                "GGUF: rotary frequency factors (`rope_freqs.weight`, llama3 scaling) are not \
                 supported from GGUF; load the Hugging Face safetensors checkpoint instead",
            ));
        }
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut t = HashMap::new();
        t.insert(
            "model.embed_tokens.weight".into(),
            g.tensor("token_embd.weight")?,
        );
        t.insert("model.norm.weight".into(), g.tensor("output_norm.weight")?);
        if !cfg.tie_word_embeddings {
            t.insert("lm_head.weight".into(), g.tensor("output.weight")?);
        }
        let names = [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
        ];
        for i in 0..cfg.num_hidden_layers {
            let hf = |n: &str| format!("model.layers.{i}.{n}");
            for (gn, hn) in names {
                t.insert(hf(hn), g.tensor(&format!("blk.{i}.{gn}"))?);
            }
            let q = g.tensor(&format!("blk.{i}.attn_q.weight"))?;
            let k = g.tensor(&format!("blk.{i}.attn_k.weight"))?;
            // llama.cpp's converter permutes q/k rows for Llama only; Qwen2 keeps HF's order.
            let (q, k) = if cfg.qkv_bias && !cfg.o_bias {
                (q, k)
            } else {
                (unpermute_qk(&q, h)?, unpermute_qk(&k, kvh)?)
            };
            t.insert(hf("self_attn.q_proj.weight"), q);
            t.insert(hf("self_attn.k_proj.weight"), k);
            if cfg.qkv_bias {
                for (gn, hn) in [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")] {
                    t.insert(
                        hf(&format!("self_attn.{hn}.bias")),
                        g.tensor(&format!("blk.{i}.attn_{gn}.bias"))?,
                    );
                }
            }
        }
        let mut model = CausalLm::new(cfg, device)?;
        model.load_named(t, g.path())?;
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` (fp32, Hugging Face names; the head left out
    /// when tied; LoRA adapters merged into their weights), each atomically.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        // LoRA adapters are merged into the weights they adapt: W + (α/r)·B·A.
        // On GPT-2's Conv1D weights (`[in, out]`) the update is transposed.
        if let Some((cfg, _)) = &self.lora {
            let scale = cfg.alpha / cfg.rank as f64;
            let mut adapted: Vec<(String, &(Tensor, Tensor), bool)> = Vec::new();
            for (i, blk) in self.blocks.iter().enumerate() {
                for (j, name) in LORA_TARGETS.iter().enumerate() {
                    if let Some(f) = &blk.lora[j] {
                        let part = llama_parent(name);
                        adapted.push((format!("model.layers.{i}.{part}.{name}.weight"), f, false));
                    }
                }
            }
            for (i, blk) in self.gpt2.iter().enumerate() {
                for (j, module) in GPT2_LORA_TARGETS.iter().enumerate() {
                    if let Some(f) = &blk.lora[j] {
                        adapted.push((format!("transformer.h.{i}.{module}.weight"), f, true));
                    }
                }
            }
            for (key, (a, b), transposed) in adapted {
                let w = vars.get(&key).ok_or_else(|| {
                    Error::invalid(format!("no weight `{key}` to merge an adapter into"))
                })?;
                let merged = tch::no_grad(|| {
                    let delta = b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * scale;
                    let delta = if transposed { delta.tr() } else { delta };
                    w.to_kind(Kind::Float) + delta
                });
                vars.insert(key, merged);
            }
        }
        let named: Vec<(String, Tensor)> = vars
            .into_iter()
            .map(|(n, t)| {
                (
                    n,
                    t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous(),
                )
            })
            .collect();
        atomic_write_with(&dir.join("model.safetensors"), |tmp| {
            Tensor::write_safetensors(&named, tmp).map_err(Error::from)
        })?;
        let cfg = serde_json::to_vec_pretty(&self.config.to_hf_value())?;
        atomic_write(&dir.join("config.json"), &cfg)
    }

    /// Converts every parameter to `kind` (float32, float16 or bfloat16).
    pub fn set_kind(&mut self, kind: Kind) {
        let convert = |vs: &mut nn::VarStore| match kind {
            Kind::Half => vs.half(),
            Kind::BFloat16 => vs.bfloat16(),
            _ => vs.float(),
        };
        convert(&mut self.vs);
        if let Some((_, lvs)) = &mut self.lora {
            convert(lvs);
        }
    }

    /// The parameters' kind.
    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// The device the parameters are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits `[B, T, vocab]` (float32) of token ids `[B, T]`.
    ///
    /// `mask` (`[B, S]`, 1 for a token, 0 for padding; `S` counts cached positions too) keeps
    /// padding out of attention; `positions` (`[B, T]`) overrides the default `past..past+T`
    /// (left-padded generation counts positions from each row's first token); `cache` makes
    /// this an incremental step that reads and extends it.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        positions: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, mask, positions, cache, None)?;
        self.logits(&h)
    }

    /// The output head on final hidden states.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let w = self.head.as_ref().unwrap_or(&self.embed);
        Ok(h.f_linear::<&Tensor>(w, None)?.f_to_kind(Kind::Float)?)
    }

    /// Hidden states `[B, T, D]`: after the final norm, or, with `stop_after = Some(l)`, the
    /// residual stream leaving block `l` (0-based; what RMU steers).
    pub fn hidden(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        positions: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        stop_after: Option<usize>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let size = ids.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "token ids must be [batch, time], got {size:?}"
            )));
        }
        let (b, t) = (size[0], size[1]);
        let past = cache.as_ref().map_or(0, |c| c.len);
        let s = past + t;
        if s > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "{s} positions exceed the model's context of {}",
                c.max_position_embeddings
            )));
        }
        if let Some(m) = mask {
            if m.size() != [b, s] {
                return Err(Error::invalid(format!(
                    "attention mask must be [{b}, {s}], got {:?}",
                    m.size()
                )));
            }
        }
        let max_id = ids.max().int64_value(&[]);
        let min_id = ids.min().int64_value(&[]);
        if min_id < 0 || max_id >= c.vocab_size {
            return Err(Error::invalid(format!(
                "token id {} is outside the vocabulary of {}",
                if min_id < 0 { min_id } else { max_id },
                c.vocab_size
            )));
        }
        let dev = ids.device();
        let kind = self.kind();
        let pos = match positions {
            Some(p) => p.to_kind(Kind::Float),
            None => Tensor::arange_start(past, s, (Kind::Float, dev))
                .unsqueeze(0)
                .expand([b, t], true),
        };
        // Attention mask [B, 1, T, S] (true: attend), or plain causal when nothing is padded.
        let attn_mask = match mask {
            // Nothing padded: plain causal attention (a one-token step sees every cached key).
            None => None,
            Some(m) => {
                let j = Tensor::arange(s, (Kind::Int64, dev));
                let i = Tensor::arange_start(past, s, (Kind::Int64, dev));
                let causal = j.unsqueeze(0).le_tensor(&i.unsqueeze(1));
                let own = j.unsqueeze(0).eq_tensor(&i.unsqueeze(1));
                let keys = m.to_kind(Kind::Bool).view([b, 1, 1, s]);
                let allowed = causal.unsqueeze(0).unsqueeze(0).logical_and(&keys);
                // A query that may see no key at all (a left-padded row's padding) attends to
                // itself instead of producing NaN; its output is never used.
                let empty = allowed.any_dim(-1, true).logical_not();
                Some(allowed.logical_or(&own.unsqueeze(0).unsqueeze(0).logical_and(&empty)))
            }
        };
        let causal = attn_mask.is_none() && past == 0 && t > 1;
        if past > 0 && mask.is_none() && t > 1 {
            return Err(Error::invalid(
                "several new tokens on a cache need an attention mask",
            ));
        }
        let (hn, kvn, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = hn / kvn;
        let mut x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?;
        if let Some(cache) = cache.as_deref_mut() {
            if cache.kv.is_empty() {
                cache.kv = Vec::with_capacity(self.blocks.len().max(self.gpt2.len()));
            }
        }
        // Keys and values joined with the cache (and stored back), then attention.
        let attend = |l: usize,
                      q: Tensor,
                      mut k: Tensor,
                      mut v: Tensor,
                      cache: Option<&mut KvCache>|
         -> Result<Tensor> {
            if let Some(cache) = cache {
                if let Some((pk, pv)) = cache.kv.get(l) {
                    k = Tensor::cat(&[pk, &k], 2);
                    v = Tensor::cat(&[pv, &v], 2);
                }
                if cache.kv.len() > l {
                    cache.kv[l] = (k.shallow_clone(), v.shallow_clone());
                } else {
                    cache.kv.push((k.shallow_clone(), v.shallow_clone()));
                }
            }
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None),
                    v.repeat_interleave_self_int(rep, 1, None),
                )
            } else {
                (k, v)
            };
            let a = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                attn_mask.as_ref(),
                0.0,
                causal,
                None,
                false,
            )?;
            Ok(a.transpose(1, 2).reshape([b, t, hn * hd]))
        };
        if let Some(wpe) = &self.wpe {
            // GPT-2: learned absolute positions, LayerNorm, fused Conv1D q/k/v, GELU (tanh).
            x = &x + Tensor::f_embedding(wpe, &pos.to_kind(Kind::Int64), -1, false, false)?;
            let eps = c.rms_norm_eps;
            let d = c.hidden_size;
            let ln = |x: &Tensor, (w, bias): &(Tensor, Tensor)| {
                x.layer_norm([d], Some(w), Some(bias), eps, false)
            };
            // A Conv1D (`x W + b`, W `[in, out]`) with its LoRA update, by slot of
            // `GPT2_LORA_TARGETS`.
            let conv =
                |x: &Tensor, (w, bias): &(Tensor, Tensor), lora: &Option<(Tensor, Tensor)>| {
                    self.with_lora(x.matmul(w) + bias, x, lora)
                };
            for (l, blk) in self.gpt2.iter().enumerate() {
                let qkv = conv(&ln(&x, &blk.ln1), &blk.c_attn, &blk.lora[0]).split(d, -1);
                let heads = |t: &Tensor| t.view([b, t.size()[1], hn, hd]).transpose(1, 2);
                let a = attend(
                    l,
                    heads(&qkv[0]),
                    heads(&qkv[1]),
                    heads(&qkv[2]),
                    cache.as_deref_mut(),
                )?;
                x = &x + conv(&a, &blk.attn_proj, &blk.lora[1]);
                let m = conv(&ln(&x, &blk.ln2), &blk.c_fc, &blk.lora[2]).gelu("tanh");
                x = &x + conv(&m, &blk.mlp_proj, &blk.lora[3]);
                if stop_after == Some(l) {
                    return Ok(x);
                }
            }
            if let Some(cache) = cache {
                cache.len = s;
            }
            return Ok(x.layer_norm([d], Some(&self.norm), self.norm_b.as_ref(), eps, false));
        }
        let freqs = pos.unsqueeze(-1) * self.inv_freq.unsqueeze(0).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().unsqueeze(1).to_kind(kind);
        let sin = emb.sin().unsqueeze(1).to_kind(kind);
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &blk.attn_norm, c.rms_norm_eps);
            let q = self
                .proj(blk, 0, &h, &blk.q, blk.q_b.as_ref())
                .view([b, t, hn, hd])
                .transpose(1, 2);
            let k = self
                .proj(blk, 1, &h, &blk.k, blk.k_b.as_ref())
                .view([b, t, kvn, hd])
                .transpose(1, 2);
            let v = self
                .proj(blk, 2, &h, &blk.v, blk.v_b.as_ref())
                .view([b, t, kvn, hd])
                .transpose(1, 2);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let k = &k * &cos + rotate_half(&k) * &sin;
            let a = attend(l, q, k, v, cache.as_deref_mut())?;
            // Not `+=`: `x` may be saved for the backward pass.
            x = &x + self.proj(blk, 3, &a, &blk.o, blk.o_b.as_ref());
            let h = rms_norm(&x, &blk.mlp_norm, c.rms_norm_eps);
            let m = self.proj(blk, 4, &h, &blk.gate, None).silu()
                * self.proj(blk, 5, &h, &blk.up, None);
            x = &x + self.proj(blk, 6, &m, &blk.down, None);
            if stop_after == Some(l) {
                return Ok(x);
            }
        }
        if let Some(cache) = cache {
            cache.len = s;
        }
        Ok(rms_norm(&x, &self.norm, c.rms_norm_eps))
    }

    /// A copy of the model, LoRA adapters included, with every parameter frozen (the reference
    /// model of NPO, DPO, KL retain losses and RMU).
    pub fn frozen_copy(&self) -> Result<CausalLm> {
        let mut m = CausalLm::new(self.config.clone(), self.device())?;
        m.set_kind(self.kind());
        m.vs.copy(&self.vs)?;
        if let Some((cfg, lvs)) = &self.lora {
            m.add_lora(cfg.clone())?;
            if let Some((_, mine)) = &mut m.lora {
                mine.copy(lvs)?;
                mine.freeze();
            }
        }
        m.vs.freeze();
        Ok(m)
    }

    /// Parameters by Hugging Face name.
    pub fn named_parameters(&self) -> HashMap<String, Tensor> {
        self.vs.variables()
    }

    /// Parameter count.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// Adds the LoRA adapters a PEFT `save_pretrained` folder holds (`adapter_config.json` and
    /// `adapter_model.safetensors`), with their trained factors: the same adapted model PEFT
    /// computes, here trainable further or merged by [`CausalLm::save_hf_dir`]. Settings this
    /// stack does not implement (rsLoRA, DoRA, trained biases, per-module ranks, extra saved
    /// modules, a subset of layers, regular-expression targets) are refused by name.
    pub fn load_peft_adapter(&mut self, dir: &Path) -> Result<()> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&cfg_path, format!("does not parse: {e}")))?;
        let bad = |msg: String| Error::corrupt(&cfg_path, msg);
        let peft_type = v["peft_type"].as_str().unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type is `{peft_type}`; only LoRA adapters (LORA) are read"
            )));
        }
        let set = |k: &str| match &v[k] {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::Object(m) => !m.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::String(s) => s != "none",
            _ => true,
        };
        for (k, what) in [
            ("use_rslora", "rank-stabilized scaling"),
            ("use_dora", "DoRA"),
            ("bias", "trained biases"),
            ("lora_bias", "trained biases"),
            ("rank_pattern", "per-module ranks"),
            ("alpha_pattern", "per-module alphas"),
            ("modules_to_save", "fully trained extra modules"),
            ("layers_to_transform", "adapters on a subset of layers"),
            ("trainable_token_indices", "trained token embeddings"),
            ("target_parameters", "adapters on parameters"),
            ("layer_replication", "layer replication"),
        ] {
            if set(k) {
                return Err(bad(format!(
                    "`{k}` asks for {what}, which is not supported"
                )));
            }
        }
        let rank = v["r"]
            .as_i64()
            .ok_or_else(|| bad("no integer rank `r`".into()))?;
        let alpha = v["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad("no number `lora_alpha`".into()))?;
        let targets: Vec<String> = match &v["target_modules"] {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("target module {t} is not a name")))
                })
                .collect::<Result<_>>()?,
            serde_json::Value::String(s) => {
                return Err(bad(format!(
                    "target_modules `{s}` is a pattern; only a list of module names is read"
                )))
            }
            _ => return Err(bad("no `target_modules` list".into())),
        };
        // Llama targets may be named with their parent (`self_attn.q_proj`); the adapters are
        // keyed by the projection.
        let targets = match self.config.arch {
            Arch::Llama => targets
                .iter()
                .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
                .collect(),
            Arch::Gpt2 => targets,
        };
        let weights = dir.join("adapter_model.safetensors");
        if !weights.exists() {
            return Err(Error::corrupt(
                dir,
                "no adapter_model.safetensors (adapters saved as .bin are not read; save them \
                 with safe_serialization=True)",
            ));
        }
        let tensors = Tensor::read_safetensors(&weights)
            .map_err(|e| Error::corrupt(&weights, format!("safetensors: {e}")))?;
        self.add_lora(LoraConfig {
            rank,
            alpha,
            targets,
        })
        .map_err(|e| e.in_file(&cfg_path))?;
        // PEFT's names: `base_model.model.` + the module path (+ `.default` in some versions);
        // ours leave Llama's `self_attn.` / `mlp.` out.
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in tensors {
            let n = name.strip_prefix("base_model.model.").unwrap_or(&name);
            let n = n.replace(".default.", ".");
            let n = match self.config.arch {
                Arch::Llama => n.replace(".self_attn.", ".").replace(".mlp.", "."),
                Arch::Gpt2 => n,
            };
            if given.insert(n, t).is_some() {
                return Err(Error::corrupt(
                    &weights,
                    format!("tensor `{name}` is given twice"),
                ));
            }
        }
        let filled = match &self.lora {
            Some((_, lvs)) => copy_exact(&lvs.variables(), given, &weights, "adapter"),
            None => Err(Error::invalid("the adapters were not added")),
        };
        if filled.is_err() {
            // Nothing half-loaded: the model goes back to having no adapters.
            self.drop_lora();
        }
        filled
    }

    /// Writes the LoRA adapters as PEFT's `save_pretrained` does (`adapter_config.json` and
    /// `adapter_model.safetensors`, float32, PEFT's tensor names), each atomically, so PEFT
    /// (and [`CausalLm::load_peft_adapter`]) reads them onto the same base model.
    pub fn save_peft_adapter(&self, dir: &Path) -> Result<()> {
        let Some((cfg, lvs)) = &self.lora else {
            return Err(Error::invalid("the model has no LoRA adapters to save"));
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut named: Vec<(String, Tensor)> = lvs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                // Our Llama names leave the projection's parent out.
                let n = match self.config.arch {
                    Arch::Llama => {
                        // model.layers.I.PROJ.lora_X.weight: q/k/v/o under `self_attn`, the
                        // rest under `mlp`.
                        let mut parts: Vec<&str> = n.split('.').collect();
                        if let Some(proj) = parts.get(3) {
                            parts.insert(3, llama_parent(proj));
                        }
                        parts.join(".")
                    }
                    Arch::Gpt2 => n,
                };
                (
                    format!("base_model.model.{n}"),
                    t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous(),
                )
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        atomic_write_with(&dir.join("adapter_model.safetensors"), |tmp| {
            Tensor::write_safetensors(&named, tmp).map_err(Error::from)
        })?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "target_modules": cfg.targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": self.config.arch == Arch::Gpt2,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "init_lora_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": null,
        });
        atomic_write(
            &dir.join("adapter_config.json"),
            &serde_json::to_vec_pretty(&config)?,
        )
    }

    /// Removes LoRA adapters and unfreezes the base parameters.
    fn drop_lora(&mut self) {
        for blk in &mut self.blocks {
            blk.lora.iter_mut().for_each(|f| *f = None);
        }
        for blk in &mut self.gpt2 {
            blk.lora.iter_mut().for_each(|f| *f = None);
        }
        self.lora = None;
        self.vs.unfreeze();
    }
}

/// Copies `given` into `vars` by name: every variable must be given, with its exact shape and
/// finite values, and nothing else may be (`what` names the source in errors: `checkpoint`,
/// `adapter`).
fn copy_exact(
    vars: &HashMap<String, Tensor>,
    mut given: HashMap<String, Tensor>,
    source: &Path,
    what: &str,
) -> Result<()> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let src = given
            .remove(name.as_str())
            .ok_or_else(|| Error::corrupt(source, format!("{what} has no tensor `{name}`")))?;
        if src.size() != var.size() {
            return Err(Error::corrupt(
                source,
                format!(
                    "`{name}` has shape {:?}, the model needs {:?}",
                    src.size(),
                    var.size()
                ),
            ));
        }
        let src = src.to_kind(var.kind()).to_device(var.device());
        if src.isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::corrupt(
                source,
                format!("`{name}` holds NaN or infinite values"),
            ));
        }
        tch::no_grad(|| var.shallow_clone().copy_(&src));
    }
    if let Some(extra) = given.keys().min() {
        return Err(Error::corrupt(
            source,
            format!(
                "{what} has {} tensor(s) the model does not, e.g. `{extra}`",
                given.len()
            ),
        ));
    }
    Ok(())
}

/// Reads every tensor of a Hugging Face folder's safetensors checkpoint (single file or shards
/// listed in `model.safetensors.index.json`).
pub fn read_safetensors_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&index, format!("does not parse: {e}")))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::corrupt(&index, "no `weight_map` object"))?;
        let mut shards: Vec<String> = Vec::new();
        for (name, f) in map {
            let f = f
                .as_str()
                .ok_or_else(|| Error::corrupt(&index, format!("`{name}` maps to no file name")))?;
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(Error::corrupt(
                    &index,
                    format!("shard name `{f}` leaves the folder"),
                ));
            }
            if !shards.iter().any(|s| s == f) {
                shards.push(f.to_string());
            }
        }
        shards.sort();
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else {
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::corrupt(
                dir,
                "no model.safetensors or model.safetensors.index.json in the folder",
            ));
        }
        vec![single]
    };
    let mut out = HashMap::new();
    for f in files {
        let tensors = Tensor::read_safetensors(&f)
            .map_err(|e| Error::corrupt(&f, format!("safetensors: {e}")))?;
        for (name, t) in tensors {
            if out.insert(name.clone(), t).is_some() {
                return Err(Error::corrupt(
                    &f,
                    format!("tensor `{name}` is in two shards"),
                ));
            }
        }
    }
    Ok(out)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.square().mean_dim(-1, true, Kind::Float);
    let y = xf * (var + eps).rsqrt();
    w * y.to_kind(kind)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x2.neg(), &x1], 3)
}

/// RoPE inverse frequencies, with llama3 scaling when configured (float32, CPU).
pub fn rope_inv_freq(c: &LlamaConfig) -> Tensor {
    let d = c.head_dim;
    let exps = Tensor::arange_start_step(0, d, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
        / d as f64;
    let inv = Tensor::from(c.rope_theta as f32).pow(&exps).reciprocal();
    let Some(s) = &c.rope_scaling else {
        return inv;
    };
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
    let scaled = inv.where_self(&wavelen.le(low_wavelen), &(&inv / s.factor));
    let smooth = (wavelen.reciprocal() * s.original_max_position_embeddings - s.low_freq_factor)
        / (s.high_freq_factor - s.low_freq_factor);
    let smoothed: Tensor = (1.0 - &smooth) * &scaled / s.factor + &smooth * &scaled;
    let medium = wavelen
        .ge(high_wavelen)
        .logical_and(&wavelen.le(low_wavelen));
    smoothed.where_self(&medium, &scaled)
}
