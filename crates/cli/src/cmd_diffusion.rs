//! `diffusion train|sample|unlearn|eval|attack` and `bench diffusion`: thin shells over
//! `rustworthy::diffusion`.

use clap::Args;
use rustworthy::core::{Error, Result};
use rustworthy::diffusion::attack::{AttackConfig, AttackVariable};
use rustworthy::diffusion::bench::{self, EvalConfig};
use rustworthy::diffusion::sample::Sampler;
use rustworthy::diffusion::unlearn::{EraseConfig, EraseMethod};
use rustworthy::diffusion::workflow;
use rustworthy::tch::{self, Device};
use std::path::PathBuf;

/// Flags every diffusion command shares.
#[derive(Args, Debug)]
pub struct Common {
    /// Folder holding Fashion-MNIST's IDX files (default: the usual places).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

impl Common {
    fn apply(&self) -> Device {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        Device::cuda_if_available()
    }
}

/// Sampler flags.
#[derive(Args, Debug)]
pub struct SamplerArgs {
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: i64,
    /// DDIM's eta (0: deterministic; 1 over all 1000 steps: the reference's evaluation).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// DDPM ancestral sampling instead of DDIM.
    #[arg(long)]
    pub ddpm: bool,
    /// Classifier-free guidance w: (1+w) eps(c) - w eps(null).
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f64,
}

impl SamplerArgs {
    fn sampler(&self) -> Sampler {
        if self.ddpm {
            Sampler::Ddpm {
                steps: self.sample_steps,
            }
        } else {
            Sampler::Ddim {
                steps: self.sample_steps,
                eta: self.eta,
            }
        }
    }
}

/// Flags of `rustworthy diffusion train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The preset whose U-Net and recipe to use (fmnist-ddpm-mini, fmnist-ddpm).
    #[arg(long, default_value = "fmnist-ddpm-mini")]
    pub preset: String,
    /// Output model folder (an interrupted run resumes from its checkpoint).
    #[arg(long, default_value = "runs/ddpm")]
    pub out: PathBuf,
    /// Optimizer steps (default: the preset's).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Adam learning rate (default: the preset's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Training seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave this class out (Retrain).
    #[arg(long)]
    pub exclude_class: Option<i64>,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `diffusion train`.
pub fn train(a: TrainArgs) -> Result<()> {
    let dev = a.common.apply();
    let mut run = workflow::TrainRun::from_preset(&a.preset, a.out.clone())?;
    if let Some(s) = a.steps {
        run.train.steps = s;
    }
    if let Some(lr) = a.lr {
        run.train.lr = lr;
    }
    run.train.seed = a.seed;
    run.exclude_class = a.exclude_class;
    let o = workflow::run_train(&run, a.common.data_dir.as_deref(), dev, |m| {
        tracing::info!("{m}")
    })?;
    println!(
        "trained {} steps in {:.0} s (resumed from {}); model {}",
        run.train.steps,
        o.seconds,
        o.resumed_from,
        a.out.display()
    );
    Ok(())
}

/// Flags of `rustworthy diffusion sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Classes, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<i64>,
    /// Images per class.
    #[arg(long, default_value_t = 8)]
    pub per_class: i64,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (samples.png, samples.safetensors, report.json).
    #[arg(long, default_value = "runs/ddpm-samples")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `diffusion sample`.
pub fn sample(a: SampleArgs) -> Result<()> {
    let dev = a.common.apply();
    let classes = if a.classes.is_empty() {
        let m = rustworthy::diffusion::io::load_unet(&a.model, Device::Cpu)?;
        (0..m.config.num_classes).collect()
    } else {
        a.classes.clone()
    };
    let x = workflow::run_sample(
        &a.model,
        &classes,
        a.per_class,
        &a.sampler.sampler(),
        a.sampler.guidance,
        a.seed,
        &a.out,
        dev,
    )?;
    println!(
        "{} images; grid {}",
        x.size()[0],
        a.out.join("samples.png").display()
    );
    Ok(())
}

/// Flags of `rustworthy diffusion unlearn`.
#[derive(Args, Debug)]
pub struct UnlearnArgs {
    /// Model folder to erase the class from.
    #[arg(long)]
    pub model: PathBuf,
    /// Method: salun-rl, salun-ga, rl, ga, esd-u, esd-x.
    #[arg(long, default_value = "salun-rl")]
    pub method: String,
    /// The class to erase.
    #[arg(long)]
    pub class: i64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Forget and retain images per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Weight of the retain term (reference meaning: the retain loss summed over pixels).
    #[arg(long, default_value_t = 1e-3)]
    pub alpha: f64,
    /// Both terms as per-element means (our deviation; see docs/diffusion.md).
    #[arg(long)]
    pub normalized: bool,
    /// ESD's negative guidance.
    #[arg(long, default_value_t = 2.0)]
    pub esd_guidance: f64,
    /// A saliency mask to use (default: computed and saved beside the model).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output model folder.
    #[arg(long, default_value = "runs/ddpm-unlearned")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `diffusion unlearn`.
pub fn unlearn(a: UnlearnArgs) -> Result<()> {
    let dev = a.common.apply();
    let method = EraseMethod::parse(&a.method)?;
    let cfg = EraseConfig {
        forget_class: a.class,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        alpha: a.alpha,
        normalized: a.normalized,
        esd_guidance: a.esd_guidance,
        seed: a.seed,
        ..Default::default()
    };
    let o = workflow::run_unlearn(
        &a.model,
        method,
        &cfg,
        a.mask.as_deref(),
        &a.out,
        a.common.data_dir.as_deref(),
        dev,
    )?;
    println!(
        "{}: {} steps in {:.0} s, {:.1}% of weights free; model {}",
        method.name(),
        a.steps,
        o.seconds,
        100.0 * o.trainable_share,
        a.out.display()
    );
    Ok(())
}

/// Flags of `rustworthy diffusion eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of the judge classifier (trained there on first use).
    #[arg(long, default_value = "runs/ddpm-judge")]
    pub judge: PathBuf,
    /// The erased class (for UA; FD and KID use the others).
    #[arg(long)]
    pub class: i64,
    /// Images per class.
    #[arg(long, default_value_t = 100)]
    pub per_class: i64,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the noise.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/ddpm-eval")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `diffusion eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    let dev = a.common.apply();
    let cfg = EvalConfig {
        sampler: a.sampler.sampler(),
        guidance: a.sampler.guidance,
        per_class: a.per_class,
        batch: 250,
        seed: a.seed,
    };
    let e = workflow::run_eval(
        &a.model,
        &a.judge,
        &cfg,
        a.class,
        &a.out,
        a.common.data_dir.as_deref(),
        dev,
    )?;
    println!("UA {:.3}", e.ua);
    for (c, s) in e.class_share.iter().enumerate() {
        println!("class {c}: {:.1}% of its images recognised", 100.0 * s);
    }
    println!(
        "other classes: FD-fmnist {:.3}, KID-fmnist {:.5} ± {:.5}",
        e.quality.fd, e.quality.kid, e.quality.kid_std
    );
    Ok(())
}

/// Flags of `rustworthy diffusion attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of the judge classifier (trained there on first use).
    #[arg(long, default_value = "runs/ddpm-judge")]
    pub judge: PathBuf,
    /// The erased class to recover.
    #[arg(long)]
    pub class: i64,
    /// The variable: continuous or discrete.
    #[arg(long, default_value = "continuous")]
    pub variable: String,
    /// Tokens of the discrete variable.
    #[arg(long, default_value_t = 3)]
    pub tokens: usize,
    /// Attack instances (target images).
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Stride of the timestep schedule (from t = 10).
    #[arg(long, default_value_t = 20)]
    pub t_stride: i64,
    /// Adam steps per timestep.
    #[arg(long, default_value_t = 40)]
    pub iterations: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Denoising steps of each success check.
    #[arg(long, default_value_t = 50)]
    pub check_steps: i64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/ddpm-attack")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `diffusion attack`.
pub fn attack(a: AttackArgs) -> Result<()> {
    let dev = a.common.apply();
    let variable = match a.variable.as_str() {
        "continuous" => AttackVariable::Continuous,
        "discrete" => AttackVariable::Discrete { tokens: a.tokens },
        v => {
            return Err(Error::config(
                "variable",
                format!("unknown attack variable `{v}`; choose continuous or discrete"),
            ))
        }
    };
    let cfg = AttackConfig {
        variable,
        t_stride: a.t_stride,
        iterations: a.iterations,
        lr: a.lr,
        check_sampler: Sampler::Ddim {
            steps: a.check_steps,
            eta: 0.0,
        },
        ..Default::default()
    };
    let s = workflow::run_attack(
        &a.model,
        &a.judge,
        &cfg,
        a.class,
        a.instances,
        a.seed,
        &a.out,
        a.common.data_dir.as_deref(),
        dev,
    )?;
    println!(
        "ASR {}/{} ({:.1}%, 95% CI {:.2}-{:.2}); {} succeeded before any step",
        s.successes,
        s.instances,
        100.0 * s.asr,
        s.ci.0,
        s.ci.1,
        s.pre_successes
    );
    Ok(())
}

/// Flags of `rustworthy bench diffusion`.
#[derive(Args, Debug)]
pub struct BenchDiffusionArgs {
    /// The preset (fmnist-ddpm-mini, fmnist-ddpm).
    #[arg(long, default_value = "fmnist-ddpm-mini")]
    pub preset: String,
    /// Output folder (a rerun resumes what is missing).
    #[arg(long, default_value = "runs/bench-diffusion")]
    pub out: PathBuf,
    /// Methods, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// The class to erase (default: the preset's).
    #[arg(long)]
    pub class: Option<i64>,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `bench diffusion` and prints the table.
pub fn bench_diffusion(a: BenchDiffusionArgs) -> Result<()> {
    let dev = a.common.apply();
    let mut cfg = bench::preset(&a.preset)?;
    if !a.methods.is_empty() {
        cfg.methods = a
            .methods
            .iter()
            .map(|m| EraseMethod::parse(m))
            .collect::<Result<_>>()?;
    }
    if let Some(c) = a.class {
        cfg.erase.forget_class = c;
    }
    let r = bench::run_bench(&cfg, &a.out, a.common.data_dir.as_deref(), dev, |m| {
        tracing::info!("{m}")
    })?;
    println!(
        "judge classifier: {:.2}% test accuracy",
        r.classifier_accuracy
    );
    println!("{}", bench::markdown(&r));
    println!("report {}", a.out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy bench ddpm-step`.
#[derive(Args, Debug)]
pub struct BenchDdpmStepArgs {
    /// The preset whose U-Net to time (fmnist-ddpm-mini, fmnist-ddpm).
    #[arg(long, default_value = "fmnist-ddpm-mini")]
    pub preset: String,
    /// Images per step (default: the preset's).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 21)]
    pub steps: usize,
    /// Output folder (weights, batches and the timings for the PyTorch side).
    #[arg(long, default_value = "runs/bench-ddpm-step")]
    pub out: PathBuf,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `bench ddpm-step`.
pub fn bench_ddpm_step(a: BenchDdpmStepArgs) -> Result<()> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let p = bench::preset(&a.preset)?;
    let b = rustworthy::diffusion::speed::StepBench {
        unet: p.unet,
        batch: a.batch.unwrap_or(p.train.batch_size as i64),
        warmup: a.warmup,
        steps: a.steps,
        lr: p.train.lr,
        ema_rate: p.train.ema_rate,
        seed: 0,
    };
    let r =
        rustworthy::diffusion::speed::bench_train_step(&b, &a.out, Device::cuda_if_available())?;
    println!(
        "median {:.4} s per step over {} steps (batch {}, {} threads); first loss {:.6}",
        r.median_s, b.steps, b.batch, r.threads, r.first_loss_eval
    );
    Ok(())
}
