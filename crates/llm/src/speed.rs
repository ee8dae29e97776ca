//! The speed of one unlearning step on a real model, measured beside a PyTorch/`transformers`
//! reference (`scripts/ref/llm_step_ref.py`, run by `scripts/bench-llm-step.sh`).
//!
//! A step is what [`crate::unlearn::unlearn`] does per batch: the method's loss on a forget
//! and a retain batch (with the frozen reference model's forward pass where the method needs
//! one), backward, gradient clipping at 1, and an AdamW update. The batches are built from
//! tofu-synth items in a fixed order and written to `batches.json` with the exact token ids,
//! masks and labels, so the reference runs the same sequences; each side reports the loss of
//! its first step, which must agree, and its seconds per step after warm-up steps.

use crate::bench::environment;
use crate::score::QaBatch;
use crate::tofu::{self, SynthConfig};
use crate::unlearn::{method_aids, method_loss, Batches, LlmMethod, LlmUnlearnConfig};
use crate::workflow::LmBundle;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Settings of the step benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepBenchConfig {
    /// The model (GGUF file or model folder; empty: SmolLM2-135M-Instruct).
    pub model: PathBuf,
    /// The method (npo, grad-diff, sim-npo, ga, ...).
    pub method: LlmMethod,
    /// Items per forget batch (and per retain batch).
    pub batch_size: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// A batch as plain numbers, for the reference script.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchDump {
    /// Token ids `[B][T]`.
    pub ids: Vec<Vec<i64>>,
    /// Attention mask `[B][T]`.
    pub mask: Vec<Vec<i64>>,
    /// Labels `[B][T]` (-100 where not scored).
    pub labels: Vec<Vec<i64>>,
}

fn dump(b: &QaBatch) -> Result<BatchDump> {
    let rows = |t: &tch::Tensor| -> Result<Vec<Vec<i64>>> {
        Ok(Vec::<Vec<i64>>::try_from(t.to_device(Device::Cpu))?)
    };
    Ok(BatchDump {
        ids: rows(&b.ids)?,
        mask: rows(&b.mask)?,
        labels: rows(&b.labels)?,
    })
}

/// What the step benchmark measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepBenchReport {
    /// The settings.
    pub config: StepBenchConfig,
    /// The method's full settings (OpenUnlearning's defaults for the model).
    pub method: LlmUnlearnConfig,
    /// Versions, host, CPU.
    pub environment: serde_json::Value,
    /// CPU threads libtorch used.
    pub threads: i32,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Seconds of each timed step.
    pub step_seconds: Vec<f64>,
    /// Their median.
    pub median_step_s: f64,
    /// Tokens per forget batch (padded), per step.
    pub forget_tokens: Vec<usize>,
}

/// Runs the steps; writes `batches.json` (every step's batches) and `rustworthy.json` (the
/// report) to `out`.
pub fn step_bench(cfg: &StepBenchConfig, out: &Path) -> Result<StepBenchReport> {
    if cfg.batch_size == 0 || cfg.steps == 0 {
        return Err(Error::config(
            "steps",
            "batch_size and steps must be positive",
        ));
    }
    if cfg.method == LlmMethod::RmuWmdp || cfg.method == LlmMethod::IdkDpo {
        return Err(Error::config(
            "method",
            "the step benchmark covers ga, grad-diff, npo, sim-npo and rmu",
        ));
    }
    let env = environment();
    let mut b = LmBundle::load(&cfg.model, Device::Cpu)?;
    let layers = b.model.config.num_hidden_layers as usize;
    let method = LlmUnlearnConfig::defaults(cfg.method, layers);
    method.validate(layers)?;
    let n = (cfg.warmup + cfg.steps) * cfg.batch_size;
    let data = tofu::generate(&SynthConfig::tofu())?;
    let (forget, retain) = (data.split("forget10")?, data.split("retain90")?);
    if n > forget.len() {
        return Err(Error::config(
            "steps",
            format!("{n} forget items needed, {} there", forget.len()),
        ));
    }
    let mut batches = Vec::new();
    let mut dumps = Vec::new();
    {
        let enc = b.encoder();
        for s in 0..cfg.warmup + cfg.steps {
            let pick = |items: &[tofu::QaItem]| -> Result<QaBatch> {
                let pairs: Vec<(&str, &str)> = items[s * cfg.batch_size..(s + 1) * cfg.batch_size]
                    .iter()
                    .map(|q| (q.question.as_str(), q.answer.as_str()))
                    .collect();
                enc.batch(&pairs, Device::Cpu)
            };
            let (fb, rb) = (pick(forget)?, pick(retain)?);
            dumps.push(serde_json::json!({"forget": dump(&fb)?, "retain": dump(&rb)?}));
            batches.push((fb, rb));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_json_atomic(
        &out.join("batches.json"),
        &serde_json::json!({"method": method, "warmup": cfg.warmup, "steps": dumps}),
    )?;
    let model = &mut b.model;
    let (reference, control) = method_aids(model, &method)?;
    use tch::nn::OptimizerConfig;
    let mut opt = tch::nn::AdamW::default()
        .wd(method.weight_decay)
        .build(model.trainable(), method.lr)?;
    let mut first_loss = f64::NAN;
    let mut secs = Vec::new();
    for (s, (fb, rb)) in batches.iter().enumerate() {
        rustworthy_core::progress::check_interrupt()?;
        let t = Instant::now();
        let (loss, _, _) = method_loss(
            &method,
            model,
            reference.as_ref(),
            control.as_ref(),
            &Batches {
                forget: fb,
                retain: rb,
                idk: None,
            },
        )?;
        let l = loss.double_value(&[]);
        if s == 0 {
            first_loss = l;
        }
        opt.zero_grad();
        loss.backward();
        opt.clip_grad_norm(method.clip);
        opt.step();
        if s >= cfg.warmup {
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    let report = StepBenchReport {
        config: cfg.clone(),
        method,
        environment: env,
        threads: tch::get_num_threads(),
        first_loss,
        median_step_s: sorted[sorted.len() / 2],
        step_seconds: secs,
        forget_tokens: batches.iter().map(|(f, _)| f.ids.numel()).collect(),
    };
    write_json_atomic(&out.join("rustworthy.json"), &report)?;
    Ok(report)
}
