//! The `llm` commands as library calls. A model folder holds what every command needs: the
//! weights and `config.json` in Hugging Face's layout, `tokenizer.json` (and
//! `tokenizer_config.json`), and `rustworthy_lm.json` (the prompt layout). Each run reads a model
//! (such a folder, a Hugging Face folder, or a GGUF file) and a benchmark folder, and writes its
//! output folder with `report.json`: the full settings, the environment, the timings and the
//! results. Everything is written atomically, and a run refuses to replace an output folder
//! that already holds a report unless told to.

use crate::bench::{environment, smollm2_gguf};
use crate::eval::{evaluate, forget_quality, priv_leak, TofuEval};
use crate::gguf::Gguf;
use crate::llama::{CausalLm, LoraConfig};
use crate::relearn::{relearn, RelearnConfig, RelearnResult};
use crate::score::scored_logprobs;
use crate::tofu::{self, Benchmark, QaItem};
use crate::tokenizer::Tokenizer;
use crate::tune::{finetune, Encoder, EpochLog, FinetuneConfig, PromptFormat};
use crate::unlearn::{unlearn, LlmUnlearnConfig, UnlearnLog};
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

/// The file beside the weights that records how prompts are laid out.
pub const LM_META: &str = "rustworthy_lm.json";

/// How a model folder's prompts are built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmMeta {
    /// The prompt layout.
    pub format: PromptFormat,
    /// Longest prompt + answer, in tokens.
    pub max_len: usize,
}

impl LmMeta {
    /// The encoder of prompts and answers with `tok` in this layout.
    pub fn encoder<'a>(&self, tok: &'a Tokenizer) -> Encoder<'a> {
        Encoder {
            tok,
            format: self.format,
            max_len: self.max_len,
        }
    }
}

/// A model with its tokenizer and prompt layout.
pub struct LmBundle {
    /// The model.
    pub model: CausalLm,
    /// Its tokenizer.
    pub tok: Tokenizer,
    /// Its prompt layout.
    pub meta: LmMeta,
    /// Where it was read from.
    pub source: PathBuf,
}

/// The default prompt length: 256 tokens, or the model's context if shorter.
fn default_max_len(model: &CausalLm) -> usize {
    (model.config.max_position_embeddings as usize).min(256)
}

impl LmBundle {
    /// Reads a model: a GGUF file, or a folder with `config.json`, safetensors weights and
    /// `tokenizer.json` (a model folder written by [`LmBundle::save`] or a Hugging Face
    /// checkpoint). An empty path or `smollm2` is SmolLM2-135M-Instruct from the venv.
    pub fn load(path: &Path, device: Device) -> Result<LmBundle> {
        let path = resolve_model(path)?;
        let (model, tok) = if path.is_dir() {
            let tj = path.join("tokenizer.json");
            if !tj.exists() {
                return Err(Error::invalid(format!(
                    "{}: no tokenizer.json beside the weights (a model folder needs one)",
                    path.display()
                )));
            }
            let tok = Tokenizer::from_file(&tj)?;
            (CausalLm::from_hf_dir(&path, device, Kind::Float)?, tok)
        } else if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            let g = Gguf::open(&path)?;
            (CausalLm::from_gguf(&g, device)?, Tokenizer::from_gguf(&g)?)
        } else if path.exists() {
            return Err(Error::invalid(format!(
                "{}: a model is a .gguf file or a folder with config.json",
                path.display()
            )));
        } else {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model"),
            ));
        };
        let meta_path = path.join(LM_META);
        let meta = if path.is_dir() && meta_path.exists() {
            let b = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            let m: LmMeta = serde_json::from_slice(&b)
                .map_err(|e| Error::corrupt(&meta_path, format!("not a prompt layout: {e}")))?;
            if m.max_len == 0 || m.max_len > model.config.max_position_embeddings as usize {
                return Err(Error::corrupt(
                    &meta_path,
                    format!(
                        "max_len {} outside 1..={} (the model's context)",
                        m.max_len, model.config.max_position_embeddings
                    ),
                ));
            }
            m
        } else {
            LmMeta {
                format: if tok.chat_template.is_some() {
                    PromptFormat::Chat
                } else {
                    PromptFormat::Plain
                },
                max_len: default_max_len(&model),
            }
        };
        Ok(LmBundle {
            model,
            tok,
            meta,
            source: path,
        })
    }

    /// A bundle from parts (a model trained here, with its tokenizer).
    pub fn new(model: CausalLm, tok: Tokenizer, format: PromptFormat) -> LmBundle {
        let max_len = default_max_len(&model);
        LmBundle {
            model,
            tok,
            meta: LmMeta { format, max_len },
            source: PathBuf::new(),
        }
    }

    /// Writes the model folder: weights (adapters merged), `config.json`, the tokenizer files
    /// and the prompt layout, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model_folder(&self.model, &self.tok, &self.meta, dir)
    }

    /// The encoder of prompts and answers.
    pub fn encoder(&self) -> Encoder<'_> {
        self.meta.encoder(&self.tok)
    }

    /// The model to train and the encoder at once (the encoder borrows only the tokenizer).
    pub fn split_mut(&mut self) -> (&mut CausalLm, Encoder<'_>) {
        (&mut self.model, self.meta.encoder(&self.tok))
    }
}

/// Writes a model folder: weights (adapters merged), `config.json`, the tokenizer files and the
/// prompt layout, each atomically.
pub fn save_model_folder(
    model: &CausalLm,
    tok: &Tokenizer,
    meta: &LmMeta,
    dir: &Path,
) -> Result<()> {
    model.save_hf_dir(dir)?;
    tok.save(&dir.join("tokenizer.json"))?;
    write_json_atomic(&dir.join(LM_META), meta)
}

/// The model file a path names: an empty path or `smollm2` is SmolLM2-135M-Instruct from the
/// venv.
fn resolve_model(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() || path == Path::new("smollm2") {
        smollm2_gguf()
    } else {
        Ok(path.to_path_buf())
    }
}

/// Blocks of the model at `path` (a GGUF file or a model folder), read from its metadata.
pub fn model_layers(path: &Path) -> Result<usize> {
    let path = resolve_model(path)?;
    let cfg = if path.is_dir() {
        crate::llama::LlamaConfig::from_hf_json(&path.join("config.json"))?
    } else {
        crate::llama::LlamaConfig::from_gguf(&Gguf::open(&path)?)?
    };
    Ok(cfg.num_hidden_layers as usize)
}

/// A method's settings for the model at `path`: OpenUnlearning's defaults (RMU's block from the
/// model's depth), then `sets` (`field=value`) in order.
pub fn method_config(
    path: &Path,
    method: crate::unlearn::LlmMethod,
    sets: &[String],
) -> Result<LlmUnlearnConfig> {
    let layers = model_layers(path)?;
    let mut c = LlmUnlearnConfig::defaults(method, layers);
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| Error::config(s.as_str(), "expected field=value"))?;
        c.set(k, v)?;
    }
    c.validate(layers)?;
    Ok(c)
}

/// A run's `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport<C, R> {
    /// `finetune`, `unlearn`, `eval`, `score` or `relearn`.
    pub command: String,
    /// The full settings.
    pub config: C,
    /// Versions, host, CPU and start time.
    pub environment: serde_json::Value,
    /// Seconds in all.
    pub seconds: f64,
    /// What the run measured.
    pub result: R,
}

/// Refuses an output folder that holds a report already, unless `overwrite`.
fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && out.join("report.json").exists() {
        return Err(Error::invalid(format!(
            "{} holds a finished run already (report.json); choose another folder or overwrite",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
}

fn write_report<C: Serialize, R: Serialize>(
    out: &Path,
    command: &str,
    config: &C,
    env: serde_json::Value,
    t0: Instant,
    result: &R,
) -> Result<()> {
    write_json_atomic(
        &out.join("report.json"),
        &RunReport {
            command: command.into(),
            config,
            environment: env,
            seconds: t0.elapsed().as_secs_f64(),
            result,
        },
    )
}

fn load_with_lora(model: &Path, lora: &Option<LoraConfig>, seed: u64) -> Result<LmBundle> {
    let mut b = LmBundle::load(model, Device::Cpu)?;
    if let Some(l) = lora {
        tch::manual_seed(seed as i64);
        b.model.add_lora(l.clone())?;
    }
    Ok(b)
}

/// Items of several splits, in order.
fn items_of(bench: &Benchmark, splits: &[String]) -> Result<Vec<QaItem>> {
    let mut v = Vec::new();
    for s in splits {
        v.extend_from_slice(bench.split(s)?);
    }
    Ok(v)
}

/// `llm finetune`: fine-tunes a model on splits of a benchmark folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneRun {
    /// The model read.
    pub model: PathBuf,
    /// The benchmark folder.
    pub data: PathBuf,
    /// Splits trained on.
    pub splits: Vec<String>,
    /// The optimizer's settings.
    pub finetune: FinetuneConfig,
    /// Train LoRA adapters only (merged into the weights written).
    pub lora: Option<LoraConfig>,
}

/// Runs `llm finetune`, writing the model folder and `report.json` to `out`.
pub fn finetune_run(cfg: &FinetuneRun, out: &Path, overwrite: bool) -> Result<Vec<EpochLog>> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    cfg.finetune.validate()?;
    let bench = Benchmark::read(&cfg.data)?;
    let items = items_of(&bench, &cfg.splits)?;
    let mut b = load_with_lora(&cfg.model, &cfg.lora, cfg.finetune.seed)?;
    let (model, enc) = b.split_mut();
    let logs = finetune(model, &enc, &items, &cfg.finetune)?;
    b.save(out)?;
    write_report(out, "finetune", cfg, env, t0, &logs)?;
    Ok(logs)
}

/// `llm unlearn`: unlearns a forget split from a model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnlearnRun {
    /// The model read.
    pub model: PathBuf,
    /// The benchmark folder.
    pub data: PathBuf,
    /// The forget split.
    pub forget: String,
    /// The retain split.
    pub retain: String,
    /// The method and its settings.
    pub method: LlmUnlearnConfig,
    /// Unlearn through LoRA adapters (merged into the weights written).
    pub lora: Option<LoraConfig>,
}

/// Runs `llm unlearn`, writing the unlearned model folder and `report.json` to `out`.
pub fn unlearn_run(cfg: &UnlearnRun, out: &Path, overwrite: bool) -> Result<Vec<UnlearnLog>> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    let bench = Benchmark::read(&cfg.data)?;
    let mut b = load_with_lora(&cfg.model, &cfg.lora, cfg.method.seed)?;
    let (forget, retain) = (bench.split(&cfg.forget)?, bench.split(&cfg.retain)?);
    let (model, enc) = b.split_mut();
    // `unlearn` checks the settings against the model first.
    let logs = unlearn(model, &enc, forget, retain, &cfg.method)?;
    b.save(out)?;
    write_report(out, "unlearn", cfg, env, t0, &logs)?;
    Ok(logs)
}

/// `llm eval`: the TOFU metrics of a model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRun {
    /// The model read.
    pub model: PathBuf,
    /// The benchmark folder.
    pub data: PathBuf,
    /// The forget split.
    pub forget: String,
    /// The holdout split of the membership statistics (default: `holdoutNN` of the forget
    /// split's percentage).
    pub holdout: Option<String>,
    /// The `report.json` of an earlier `llm eval` of the retain-only model: with it, forget
    /// quality and PrivLeak are computed.
    pub oracle: Option<PathBuf>,
}

/// What `llm eval` measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    /// Every metric, per item too.
    pub eval: TofuEval,
    /// Forget quality against the oracle's report, when one was given.
    pub forget_quality: Option<f64>,
    /// PrivLeak (%) against the oracle's report, when one was given.
    pub priv_leak: Option<f64>,
}

/// The holdout split that goes with `forget` (`forget10` → `holdout10`).
pub fn holdout_of(forget: &str) -> Result<String> {
    forget
        .strip_prefix("forget")
        .map(|p| format!("holdout{p}"))
        .ok_or_else(|| {
            Error::config(
                "holdout",
                format!("no holdout split known for `{forget}`; name one"),
            )
        })
}

/// The retain split that goes with `forget` (`forget10` → `retain90`).
pub fn retain_of(forget: &str) -> Result<String> {
    forget
        .strip_prefix("forget")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p < 100)
        .map(|p| format!("retain{:02}", 100 - p))
        .ok_or_else(|| {
            Error::config(
                "retain",
                format!("no retain split known for `{forget}`; name one"),
            )
        })
}

/// Runs `llm eval`, writing `report.json` to `out`.
pub fn eval_run(cfg: &EvalRun, out: &Path, overwrite: bool) -> Result<EvalResult> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    // The oracle's report is read before minutes of evaluation.
    let oracle: Option<TofuEval> = match &cfg.oracle {
        Some(p) => {
            let b = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            let r: RunReport<serde_json::Value, EvalResult> = serde_json::from_slice(&b)
                .map_err(|e| Error::corrupt(p, format!("not the report of `llm eval`: {e}")))?;
            Some(r.result.eval)
        }
        None => None,
    };
    let bench = Benchmark::read(&cfg.data)?;
    let holdout = match &cfg.holdout {
        Some(h) => h.clone(),
        None => holdout_of(&cfg.forget)?,
    };
    let b = LmBundle::load(&cfg.model, Device::Cpu)?;
    let eval = evaluate(&b.model, &b.encoder(), &bench, &cfg.forget, &holdout)?;
    let (fq, pl) = match &oracle {
        Some(o) => (Some(forget_quality(&eval, o)?), Some(priv_leak(&eval, o))),
        None => (None, None),
    };
    let r = EvalResult {
        eval,
        forget_quality: fq,
        priv_leak: pl,
    };
    write_report(out, "eval", cfg, env, t0, &r)?;
    Ok(r)
}

/// `llm score`: per-token log-probabilities of answers given their questions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreRun {
    /// The model read.
    pub model: PathBuf,
    /// A file of QA items (a JSON array or JSON lines), or a benchmark folder with `split`.
    pub data: PathBuf,
    /// The split, when `data` is a folder.
    pub split: Option<String>,
    /// Items per forward pass.
    pub batch_size: usize,
}

/// One item's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemScore {
    /// The question.
    pub question: String,
    /// The answer scored.
    pub answer: String,
    /// Log-probability of each answer token (the end-of-sequence token included).
    pub logprobs: Vec<f64>,
    /// Negative sum of `logprobs`.
    pub nll: f64,
    /// `nll` per token.
    pub mean_nll: f64,
}

/// What `llm score` measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreResult {
    /// One entry per item, in order.
    pub items: Vec<ItemScore>,
    /// Mean of the items' `mean_nll`.
    pub mean_nll: f64,
    /// Tokens scored in all.
    pub tokens: usize,
}

/// Scores every answer of `items` under `b` (answer tokens only; the prompt is context).
pub fn score_items(b: &LmBundle, items: &[QaItem], batch_size: usize) -> Result<ScoreResult> {
    if batch_size == 0 {
        return Err(Error::config("batch_size", "must be positive"));
    }
    if items.is_empty() {
        return Err(Error::invalid("no items to score"));
    }
    let enc = b.encoder();
    let mut out = Vec::with_capacity(items.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in items.chunks(batch_size) {
            let pairs: Vec<(&str, &str)> = chunk
                .iter()
                .map(|q| (q.question.as_str(), q.answer.as_str()))
                .collect();
            let batch = enc.batch(&pairs, b.model.device())?;
            // The head at the answer positions only, as the metrics compute it.
            let (lp, mask) = scored_logprobs(&b.model, &batch)?;
            let lp = lp.to_kind(Kind::Double);
            for (i, q) in chunk.iter().enumerate() {
                let row = Vec::<f64>::try_from(lp.get(i as i64))?;
                let m = Vec::<f64>::try_from(mask.get(i as i64).to_kind(Kind::Double))?;
                let logprobs: Vec<f64> = row
                    .into_iter()
                    .zip(m)
                    .filter(|(_, m)| *m > 0.0)
                    .map(|(l, _)| l)
                    .collect();
                let nll = -logprobs.iter().sum::<f64>();
                out.push(ItemScore {
                    question: q.question.clone(),
                    answer: q.answer.clone(),
                    mean_nll: nll / logprobs.len().max(1) as f64,
                    nll,
                    logprobs,
                });
            }
        }
        Ok(())
    })?;
    let tokens = out.iter().map(|s| s.logprobs.len()).sum();
    let mean_nll = out.iter().map(|s| s.mean_nll).sum::<f64>() / out.len() as f64;
    Ok(ScoreResult {
        items: out,
        mean_nll,
        tokens,
    })
}

/// Runs `llm score`, writing `report.json` to `out`.
pub fn score_run(cfg: &ScoreRun, out: &Path, overwrite: bool) -> Result<ScoreResult> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    let items = if cfg.data.is_dir() {
        let split = cfg
            .split
            .as_deref()
            .ok_or_else(|| Error::config("split", "a benchmark folder needs the split to score"))?;
        Benchmark::read(&cfg.data)?.split(split)?.to_vec()
    } else {
        tofu::read_items(&cfg.data)?
    };
    let b = LmBundle::load(&cfg.model, Device::Cpu)?;
    let r = score_items(&b, &items, cfg.batch_size)?;
    write_report(out, "score", cfg, env, t0, &r)?;
    Ok(r)
}

/// `llm merge-adapter`: a model folder with a PEFT LoRA adapter merged into its weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeAdapterRun {
    /// The base model read.
    pub model: PathBuf,
    /// The PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
    pub adapter: PathBuf,
}

/// What `llm merge-adapter` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeAdapterResult {
    /// The adapter's settings, as read.
    pub lora: LoraConfig,
    /// Parameters of the adapter.
    pub adapter_parameters: i64,
}

/// Runs `llm merge-adapter`, writing the merged model folder and `report.json` to `out`.
pub fn merge_adapter_run(
    cfg: &MergeAdapterRun,
    out: &Path,
    overwrite: bool,
) -> Result<MergeAdapterResult> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    let mut b = LmBundle::load(&cfg.model, Device::Cpu)?;
    b.model.load_peft_adapter(&cfg.adapter)?;
    let lora = b
        .model
        .lora_config()
        .cloned()
        .ok_or_else(|| Error::invalid("the adapter added no LoRA factors"))?;
    let adapter_parameters = b
        .model
        .trainable()
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    b.save(out)?;
    let r = MergeAdapterResult {
        lora,
        adapter_parameters,
    };
    write_report(out, "merge-adapter", cfg, env, t0, &r)?;
    Ok(r)
}

/// `llm relearn`: the relearning attack on a model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelearnRun {
    /// The model attacked.
    pub model: PathBuf,
    /// The benchmark folder.
    pub data: PathBuf,
    /// The forget split.
    pub forget: String,
    /// The retain split (the attacker's data when the attack trains on retain items).
    pub retain: String,
    /// The attack.
    pub attack: RelearnConfig,
}

/// Runs `llm relearn`, writing the attacked model and `report.json` to `out`.
pub fn relearn_run(cfg: &RelearnRun, out: &Path, overwrite: bool) -> Result<RelearnResult> {
    check_out(out, overwrite)?;
    let (t0, env) = (Instant::now(), environment());
    let bench = Benchmark::read(&cfg.data)?;
    let mut b = LmBundle::load(&cfg.model, Device::Cpu)?;
    let (model, enc) = b.split_mut();
    let r = relearn(
        model,
        &enc,
        bench.split(&cfg.forget)?,
        bench.split(&cfg.retain)?,
        &cfg.attack,
    )?;
    b.save(out)?;
    write_report(out, "relearn", cfg, env, t0, &r)?;
    Ok(r)
}
