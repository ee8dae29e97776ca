//! `train`, `eval` and `info`.

use crate::args::{choice, parse_precision, ModelHints, RunOpts, ADV_METHODS, ARCHS};
use crate::print::{emit_summary, print_pairs};
use clap::Args;
use rustworthy::config::{apply_sets, preset, to_toml, RunConfig, TrainOverrides};
use rustworthy::core::Result;
use rustworthy::eval_run::{eval as eval_run, EvalRequest};
use rustworthy::models::Arch;
use rustworthy::table::render;
use rustworthy::train_run::{train as train_run, TrainOptions};
use std::path::PathBuf;

/// Flags of `rustworthy train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A named preset (see `rustworthy info --presets`; default fmnist-lenet).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML config file (same shape as the files in presets/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any config field: `--set train.epochs=5 --set train.optim.momentum=0.8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Training epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base (peak) learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the weight initialisation.
    #[arg(long)]
    pub init_seed: Option<u64>,
    /// Model architecture.
    #[arg(long, value_parser = choice::<Arch>(ARCHS))]
    pub arch: Option<Arch>,
    /// Dataset: fashion-mnist, mnist, cifar10, cifar100.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on this many training samples only (0 = all).
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Evaluate on this many test samples only, drawn at random with the split seed (0 = all).
    #[arg(long)]
    pub test_subset: Option<usize>,
    /// Share of each training class held out for validation.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Continue an interrupted run from its last checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many epochs, keeping the checkpoint (resume later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Adversarial training method (`none`: standard training).
    #[arg(long, value_parser = PossibleValuesParserStr(ADV_METHODS))]
    pub adv: Option<String>,
    /// l_inf radius of adversarial training, in pixel units.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Attack steps of adversarial training (pgd, trades).
    #[arg(long)]
    pub adv_steps: Option<usize>,
    /// Attack step size of adversarial training.
    #[arg(long)]
    pub adv_step_size: Option<f64>,
    /// GradAlign's penalty weight or Fast-BAT's lambda.
    #[arg(long)]
    pub adv_lambda: Option<f64>,
    /// TRADES' beta.
    #[arg(long)]
    pub adv_beta: Option<f64>,
    /// Validation samples attacked after each epoch to detect catastrophic overfitting (0: off).
    #[arg(long)]
    pub monitor_samples: Option<usize>,
    /// On catastrophic overfitting, restore the most robust epoch's weights and stop.
    #[arg(long)]
    pub stop_on_co: bool,
    /// Train without backpropagation: `cge` (DeepZero's sparse coordinate-wise estimates).
    #[arg(long, value_parser = PossibleValuesParserStr(&["cge", "none"]))]
    pub zo: Option<String>,
    /// Zeroth-order training: fraction of the weight coordinates left out of each estimate.
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Zeroth-order training: finite-difference radius.
    #[arg(long)]
    pub zo_mu: Option<f64>,
    /// Zeroth-order training: redraw the coordinate set every this many epochs.
    #[arg(long)]
    pub resample_every: Option<usize>,
    /// Data-parallel runs (started by `rustworthy launch`, torchrun, mpirun or srun): keep
    /// batch norm per rank instead of synchronizing it over the global batch.
    #[arg(long)]
    pub local_batch_norm: bool,
    /// Data-parallel runs: gradient compression with error feedback (none, int8, sign).
    #[arg(long, default_value = "none")]
    pub grad_compression: String,
    /// Precision of forward passes: fp32, or bf16 autocast (as PyTorch AMP; parameters,
    /// gradients and optimizer state stay float32).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<rustworthy::models::Precision>,
    /// Convolution weights and inputs in channels-last (NHWC) memory order.
    #[arg(long)]
    pub channels_last: bool,
    /// How SGD, Adam and AdamW update: auto (fused kernels on CUDA, the loop on the CPU), loop
    /// or fused.
    #[arg(long, value_parser = parse_optim_impl)]
    pub optim_impl: Option<rustworthy::train::optim::OptimImpl>,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Parses `--optim-impl` (auto, loop or fused).
pub fn parse_optim_impl(
    s: &str,
) -> std::result::Result<rustworthy::train::optim::OptimImpl, String> {
    rustworthy::train::optim::OptimImpl::parse(s).map_err(|e| e.to_string())
}

/// `PossibleValuesParser` for plain strings (the value stays a `String`).
#[allow(non_snake_case)]
fn PossibleValuesParserStr(names: &'static [&'static str]) -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(names)
}

impl TrainArgs {
    /// The flags that override fields of the resolved config.
    fn overrides(&self) -> TrainOverrides {
        TrainOverrides {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.run.seed,
            init_seed: self.init_seed,
            arch: self.arch,
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            train_subset: self.train_subset,
            test_subset: self.test_subset,
            val_fraction: self.val_fraction,
            device: self.run.device,
            out: self.run.out.clone(),
            threads: self.run.threads,
            adv: self.adv.clone(),
            eps: self.eps,
            adv_steps: self.adv_steps,
            adv_step_size: self.adv_step_size,
            adv_lambda: self.adv_lambda,
            adv_beta: self.adv_beta,
            monitor_samples: self.monitor_samples,
            stop_on_co: self.stop_on_co,
            zo: self.zo.clone(),
            sparsity: self.sparsity,
            zo_mu: self.zo_mu,
            resample_every: self.resample_every,
            precision: self.precision,
            channels_last: self.channels_last,
            optim_impl: self.optim_impl,
        }
    }

    /// Preset or file, then `--set`, then the flags, then validation.
    pub fn resolve(&self) -> Result<RunConfig> {
        let base = match (&self.config, &self.preset) {
            (Some(p), _) => RunConfig::from_file(p)?,
            (None, Some(name)) => preset(name)?,
            (None, None) => preset("fmnist-lenet")?,
        };
        self.overrides().apply(apply_sets(&base, &self.sets)?)
    }
}

/// Runs `train` (or prints the resolved config) and prints the final metrics.
pub fn train(a: TrainArgs) -> Result<()> {
    let c = a.resolve()?;
    if a.print_config {
        print!("{}", to_toml(&c)?);
        return Ok(());
    }
    let mode = a.run.mode();
    let opts = TrainOptions {
        progress: mode,
        resume: a.resume,
        stop_after: a.stop_after,
        dist: crate::cmd_dist::dist_options(a.local_batch_norm, &a.grad_compression)?,
    };
    let main = opts.dist.as_ref().is_none_or(|d| d.group.is_main());
    let o = train_run(&c, &opts)?;
    if !main {
        return Ok(());
    }
    if let Some(e) = o.stopped_after {
        tracing::info!(
            "stopped after epoch {e}; resume with: rustworthy train ... --out {} --resume",
            o.out.display()
        );
        return Ok(());
    }
    if !emit_summary(mode, &o.report.metrics) {
        print_pairs(&o.summary());
    }
    Ok(())
}

/// Flags of `rustworthy eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model: a run folder or `model.safetensors` with its sidecar, a TorchScript module
    /// (`torch.jit.script`/`trace`), or a state dict (safetensors, `.pt`/`.pth`) with --arch.
    #[arg(long)]
    pub model: PathBuf,
    /// How to read a model file without our sidecar.
    #[command(flatten)]
    pub hints: ModelHints,
    /// Dataset to evaluate on (default: the one the model was trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Write every sample's logits, prediction and label to this safetensors file.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Runs `eval` and prints the test accuracy, loss and per-class accuracy.
pub fn eval(a: EvalArgs) -> Result<()> {
    let req = EvalRequest {
        model: a.hints.source(&a.model),
        dataset: a.dataset.clone(),
        data_dir: a.data_dir.clone(),
        device: a.run.device(),
        batch_size: a.batch_size,
        out: a.run.out.clone(),
        save_logits: a.save_logits.clone(),
    };
    let o = eval_run(&req)?;
    if emit_summary(a.run.mode(), &o.report.metrics) {
        return Ok(());
    }
    let r = &o.result;
    println!(
        "{} test: accuracy {:.2}%  loss {:.4}  (n = {})\n",
        o.dataset, r.accuracy, r.loss, r.n
    );
    let rows: Vec<Vec<String>> = r
        .per_class_accuracy
        .iter()
        .enumerate()
        .map(|(k, acc)| {
            vec![
                k.to_string(),
                o.data.class_names.get(k).cloned().unwrap_or_default(),
                acc.map(|a| format!("{a:.2}%"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!("{}", render(&["class", "name", "accuracy"], &rows));
    println!("report: {}", o.out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Summarise this dataset (train and test splits).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Summarise this model architecture (layers and parameter counts).
    #[arg(long, value_parser = choice::<Arch>(ARCHS))]
    pub arch: Option<Arch>,
    /// List the presets (training and benchmark).
    #[arg(long)]
    pub presets: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `info`: presets, datasets and architectures as tables or JSON.
pub fn info(a: InfoArgs) -> Result<()> {
    let nothing = a.dataset.is_none() && a.arch.is_none();
    let info = rustworthy::info::collect(&rustworthy::info::InfoRequest {
        presets: a.presets || nothing,
        overview: nothing,
        dataset: a.dataset.clone(),
        data_dir: a.data_dir.clone(),
        arch: a.arch,
    })?;
    if a.json {
        println!("{}", info.to_json()?);
        return Ok(());
    }
    if let Some(p) = &info.presets {
        let rows: Vec<Vec<String>> = p
            .iter()
            .map(|p| {
                vec![
                    p.name.to_string(),
                    p.kind_name().into(),
                    p.description.to_string(),
                ]
            })
            .collect();
        println!("{}", render(&["preset", "for", "description"], &rows));
    }
    if let Some(models) = &info.models {
        let rows: Vec<Vec<String>> = models
            .iter()
            .map(|m| {
                vec![
                    m.arch.clone(),
                    m.params_fmnist.to_string(),
                    m.params_cifar.to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            render(
                &[
                    "model",
                    "params (1x28x28, 10 cls)",
                    "params (3x32x32, 10 cls)"
                ],
                &rows
            )
        );
    }
    if let Some(s) = &info.fashion_mnist {
        println!("fashion-mnist: {s}");
    }
    if let Some(d) = &info.dataset {
        println!("{}", rustworthy::info::pretty(d)?);
    }
    if let Some(m) = &info.model {
        let rows: Vec<Vec<String>> = m
            .layers
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    format!("{:?}", l.shape),
                    l.numel.to_string(),
                    if l.trainable { "yes" } else { "buffer" }.to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            render(&["tensor", "shape", "numel", "trainable"], &rows)
        );
        println!("{}: {} trainable parameters", m.arch, m.num_params);
    }
    Ok(())
}

/// Flags of `rustworthy bench train-step`.
#[derive(Args, Debug)]
pub struct BenchTrainStepArgs {
    /// Architecture of the model zoo.
    #[arg(long, value_parser = choice::<Arch>(ARCHS), default_value = "resnet18")]
    pub arch: Arch,
    /// Input shape and classes: cifar10 (3x32x32) or fashion-mnist (1x28x28).
    #[arg(long, default_value = "cifar10", value_parser = PossibleValuesParserStr(&["cifar10", "fashion-mnist"]))]
    pub shape: String,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed steps per block.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed blocks (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Precision of forward passes (fp32 or bf16).
    #[arg(long, value_parser = parse_precision, default_value = "fp32")]
    pub precision: rustworthy::models::Precision,
    /// Channels-last memory layout.
    #[arg(long)]
    pub channels_last: bool,
    /// Optimizer implementation (auto, loop or fused).
    #[arg(long, value_parser = parse_optim_impl, default_value = "auto")]
    pub optim_impl: rustworthy::train::optim::OptimImpl,
    /// Device, threads, seed, output folder (default runs/bench-train-step) and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Runs `bench train-step` and prints seconds per step and images per second.
pub fn bench_train_step(a: BenchTrainStepArgs) -> Result<()> {
    use rustworthy::models::ModelSpec;
    use rustworthy::train::speed::{bench_train_step, TrainStepBench};
    if let Some(t) = a.run.threads.filter(|&t| t > 0) {
        rustworthy::tch::set_num_threads(t as i32);
    }
    let device = a.run.device().resolve()?;
    let spec = if a.shape == "cifar10" {
        ModelSpec::cifar10(a.arch)
    } else {
        ModelSpec::fashion_mnist(a.arch)
    };
    let b = TrainStepBench {
        spec,
        batch: a.batch,
        warmup: a.warmup,
        steps: a.steps,
        repeats: a.repeats,
        precision: a.precision,
        channels_last: a.channels_last,
        optim_impl: a.optim_impl,
        seed: a.run.seed.unwrap_or(0),
        ..TrainStepBench::resnet18(a.batch)
    };
    let out = a
        .run
        .out
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("runs/bench-train-step"));
    let r = bench_train_step(&b, &out, device)?;
    println!(
        "{} batch {} {}{} on {}: {:.4} s per step ({:.0} images/s; blocks {:?}); first loss {:.6}, last {:.4}",
        b.spec.arch,
        b.batch,
        b.precision,
        if b.channels_last { " channels-last" } else { "" },
        r.device,
        r.median_s,
        r.images_per_s,
        r.block_s.iter().map(|s| format!("{s:.4}")).collect::<Vec<_>>(),
        r.first_loss_eval,
        r.last_loss
    );
    Ok(())
}
