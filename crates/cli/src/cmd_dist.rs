//! `rustworthy launch`: data-parallel runs on this machine.

use clap::Args;
use rustworthy::core::Result;
use rustworthy::dist::launch::{launch as run_launch, LaunchConfig};

/// Flags of `rustworthy launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Number of ranks (processes).
    #[arg(short = 'n', long = "nproc", default_value_t = 2)]
    pub nproc: usize,
    /// Rendezvous port on 127.0.0.1 (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub master_port: u16,
    /// Seconds the other ranks get after one fails, before they are killed.
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
    /// libtorch threads per rank (default: the cores divided among the ranks).
    #[arg(long)]
    pub threads_per_rank: Option<usize>,
    /// The command each rank runs, after `--` (`rustworthy` means this executable).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Starts the ranks and waits; an error names the rank that failed first.
pub fn launch(a: LaunchArgs) -> Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = a
        .threads_per_rank
        .unwrap_or_else(|| (cores / a.nproc.max(1)).max(1));
    let o = run_launch(&LaunchConfig {
        nproc: a.nproc,
        command: a.command,
        master_port: a.master_port,
        grace_secs: a.grace,
        threads_per_rank: threads,
    })?;
    tracing::info!(
        "{} rank(s) finished in {:.1} s (store port {})",
        o.exit_codes.len(),
        o.seconds,
        o.master_port
    );
    Ok(())
}

/// The data-parallel options of a command run under a launcher (`None` outside one).
pub fn dist_options(
    local_batch_norm: bool,
    compression: &str,
) -> Result<Option<rustworthy::train::DistOptions>> {
    let compression: rustworthy::train::ddp::Compression = compression.parse()?;
    let Some(env) = rustworthy::dist::DistEnv::from_env()? else {
        return Ok(None);
    };
    let group = env.connect()?;
    let mut d = rustworthy::train::DistOptions::new(group);
    d.sync_batch_norm = !local_batch_norm;
    d.compression = compression;
    Ok(Some(d))
}

/// Flags of `rustworthy bench allreduce`.
#[derive(Args, Debug)]
pub struct BenchAllReduceArgs {
    /// Ranks (processes) on this machine.
    #[arg(short = 'n', long = "nproc", default_value_t = 2)]
    pub nproc: usize,
    /// float32 entries of the buffer (default: about ResNet-18's gradient).
    #[arg(long, default_value_t = 11_000_000)]
    pub numel: usize,
    /// Untimed operations first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed operations.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// The Python with torch 2.11.0 that runs the reference (default: .venv/bin/python).
    #[arg(long)]
    pub python: Option<std::path::PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "runs/bench-allreduce")]
    pub out: std::path::PathBuf,
    /// Internal: run as one rank of rustworthy's side and write rank 0's timings here.
    #[arg(long, hide = true)]
    pub worker_out: Option<std::path::PathBuf>,
}

/// Runs both sides and prints the table, or one rank of our side with `--worker-out`.
pub fn bench_all_reduce(a: BenchAllReduceArgs) -> Result<()> {
    use rustworthy::bench_dist::{compare_all_reduce, time_all_reduce, AllReduceBenchConfig};
    if let Some(path) = &a.worker_out {
        let group = rustworthy::dist::group_from_env()?;
        let t = time_all_reduce(&group, a.numel, a.warmup, a.iters)?;
        if group.is_main() {
            rustworthy::core::fsutil::write_json_atomic(path, &t)?;
        }
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| {
        rustworthy::core::Error::invalid(format!("cannot find this executable: {e}"))
    })?;
    let python = a
        .python
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(".venv/bin/python"));
    let cfg = AllReduceBenchConfig {
        nproc: a.nproc,
        numel: a.numel,
        warmup: a.warmup,
        iters: a.iters,
        out: a.out.clone(),
    };
    let worker = vec![
        exe.display().to_string(),
        "bench".to_string(),
        "allreduce".to_string(),
    ];
    let r = compare_all_reduce(&cfg, &worker, &python, std::path::Path::new("."))?;
    println!(
        "all-reduce of {} float32 ({:.1} MB) on {} ranks, Gloo over loopback, median of {}:",
        a.numel,
        4.0 * a.numel as f64 / 1e6,
        a.nproc,
        a.iters
    );
    println!("| side | ms per all-reduce | GB/s |");
    println!("|---|---:|---:|");
    println!(
        "| rustworthy | {:.2} | {:.2} |",
        1e3 * r.rustworthy.median(),
        r.rustworthy_gbps
    );
    println!(
        "| torch.distributed | {:.2} | {:.2} |",
        1e3 * r.torch.median(),
        r.torch_gbps
    );
    println!(
        "speed ratio (torch time / rustworthy time): {:.3}",
        r.speed_ratio
    );
    println!("report: {}", a.out.join("report.json").display());
    Ok(())
}
