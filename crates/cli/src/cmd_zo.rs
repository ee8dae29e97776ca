//! `zo-check`, `bench zo` and `bench torchscript`.

use crate::args::{choice, RunOpts, ARCHS};
use clap::Args;
use rustworthy::core::Result;
use rustworthy::models::Arch;
use rustworthy::zo_run::{
    bench_zo as bench_run, zo_check as check_run, BenchZoConfig, ZoCheckConfig,
};

/// Flags of `rustworthy zo-check`.
#[derive(Args, Debug)]
pub struct ZoCheckArgs {
    /// Independent estimates per row of the estimator table.
    #[arg(long, default_value_t = 4000)]
    pub samples: usize,
    /// Dimension of the test problems.
    #[arg(long, default_value_t = 20)]
    pub dim: i64,
    /// Run options, of which the checks use the seed and the output folder.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Runs `zo-check` and prints its tables.
pub fn zo_check(a: ZoCheckArgs) -> Result<()> {
    let d = ZoCheckConfig::default();
    let cfg = ZoCheckConfig {
        samples: a.samples,
        dim: a.dim,
        seed: a.run.seed.unwrap_or(d.seed),
        out: a.run.out.clone().unwrap_or(d.out),
    };
    let o = check_run(&cfg)?;
    println!("{}", o.text);
    println!("report {}", cfg.out.join("report.json").display());
    Ok(())
}

/// Flags of `rustworthy bench zo`.
#[derive(Args, Debug)]
pub struct BenchZoArgs {
    /// Architecture (lenet, resnet20, mlp).
    #[arg(long, value_parser = choice::<Arch>(ARCHS), default_value = "resnet20")]
    pub arch: Arch,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch: i64,
    /// Fraction of each weight tensor left out of the coordinate set (biases always in).
    #[arg(long, default_value_t = 0.9)]
    pub sparsity: f64,
    /// Coordinates timed (a stratified sample of the set; the step time is extrapolated).
    #[arg(long, default_value_t = 2000)]
    pub coords: usize,
    /// Finite-difference radius.
    #[arg(long, default_value_t = 5e-3)]
    pub mu: f64,
    /// Run options, of which the benchmark uses the device (default CPU), threads and seed.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Prints one JSON object (the benchmark script reads it).
pub fn bench_zo(a: BenchZoArgs) -> Result<()> {
    let cfg = BenchZoConfig {
        arch: a.arch,
        batch: a.batch,
        sparsity: a.sparsity,
        coords: a.coords,
        mu: a.mu,
        device: a.run.device.unwrap_or(rustworthy::core::DeviceSpec::Cpu),
        threads: a.run.threads.unwrap_or(0),
        seed: a.run.seed.unwrap_or(0),
    };
    println!("{}", bench_run(&cfg)?);
    Ok(())
}

/// Flags of `rustworthy bench torchscript`.
#[derive(Args, Debug)]
pub struct BenchScriptArgs {
    /// The TorchScript module (the same network as --arch, e.g. from
    /// scripts/ref/export_torchscript.py).
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// The zoo architecture it is compared with.
    #[arg(long, value_parser = choice::<Arch>(ARCHS))]
    pub arch: Arch,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    /// Timed steps per measurement.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Measurements per side (alternating); medians are compared.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Run options, of which the benchmark uses the device (default CPU) and threads.
    #[command(flatten)]
    pub run: RunOpts,
}

/// Prints the comparison as one JSON object and a summary line.
pub fn bench_script(a: BenchScriptArgs) -> Result<()> {
    rustworthy::train_run::set_threads(a.run.threads.unwrap_or(0));
    let cfg = rustworthy::bench_script::ScriptBenchConfig {
        script: a.model.clone(),
        arch: a.arch,
        batch: a.batch,
        iters: a.iters,
        repeats: a.repeats,
        device: a.run.device.unwrap_or(rustworthy::core::DeviceSpec::Cpu),
    };
    let o = rustworthy::bench_script::bench_torchscript(&cfg)?;
    println!("{}", rustworthy::serde_json::to_string(&o)?);
    println!(
        "{} forward+backward, batch {}, {} ({} threads): zoo {:.4} s/step, TorchScript {:.4} s/step, overhead {:+.1}%",
        a.arch,
        a.batch,
        o.device,
        o.threads,
        o.zoo_step_s,
        o.script_step_s,
        100.0 * o.overhead
    );
    Ok(())
}
