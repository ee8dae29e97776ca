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
pub fn dist_options(local_batch_norm: bool) -> Result<Option<rustworthy::train::DistOptions>> {
    let Some(env) = rustworthy::dist::DistEnv::from_env()? else {
        return Ok(None);
    };
    let group = env.connect()?;
    let mut d = rustworthy::train::DistOptions::new(group);
    d.sync_batch_norm = !local_batch_norm;
    Ok(Some(d))
}
