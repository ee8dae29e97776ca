//! `rustworthy launch`: starts N ranks of a command on this machine with torchrun's variables
//! (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and watches them.
//! When one rank fails, the others get a grace period to fail on their own (their collectives
//! notice the dead peer) and are then killed, so a launch never hangs on a dead rank.

use rustworthy_core::{Error, Result};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// Number of ranks, >= 1.
    pub nproc: usize,
    /// The program and its arguments; a program named `rustworthy` is this executable.
    pub command: Vec<String>,
    /// Rendezvous port (0: a free one).
    pub master_port: u16,
    /// Seconds the other ranks get to end after one fails, before they are killed.
    pub grace_secs: u64,
    /// libtorch threads per rank (`OMP_NUM_THREADS`); 0 leaves the variable as it is.
    pub threads_per_rank: usize,
}

/// How a launch ended.
#[derive(Clone, Debug)]
pub struct LaunchOutcome {
    /// Every rank's exit code (None: killed by a signal).
    pub exit_codes: Vec<Option<i32>>,
    /// The rendezvous port used.
    pub master_port: u16,
    /// Seconds from start to the last rank's end.
    pub seconds: f64,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Distributed(format!("no free loopback port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::Distributed(format!("no free loopback port: {e}")))?
        .port())
}

fn program(name: &str) -> Result<PathBuf> {
    if name == "rustworthy" {
        return std::env::current_exe()
            .map_err(|e| Error::Distributed(format!("cannot find this executable: {e}")));
    }
    Ok(PathBuf::from(name))
}

fn describe(s: &ExitStatus) -> String {
    match s.code() {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// Runs `cfg.command` as `cfg.nproc` ranks on loopback and waits for all of them.
pub fn launch(cfg: &LaunchConfig) -> Result<LaunchOutcome> {
    if cfg.nproc == 0 {
        return Err(Error::config("nproc", "must be >= 1"));
    }
    let Some(first) = cfg.command.first() else {
        return Err(Error::config(
            "command",
            "missing: give the command to run after --",
        ));
    };
    let exe = program(first)?;
    let port = if cfg.master_port == 0 {
        free_port()?
    } else {
        cfg.master_port
    };
    let t0 = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(cfg.nproc);
    for rank in 0..cfg.nproc {
        let mut c = Command::new(&exe);
        c.args(&cfg.command[1..])
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", cfg.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", cfg.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if cfg.threads_per_rank > 0 {
            c.env("OMP_NUM_THREADS", cfg.threads_per_rank.to_string());
        }
        match c.spawn() {
            Ok(ch) => children.push(ch),
            Err(e) => {
                for mut ch in children {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                return Err(Error::Distributed(format!(
                    "cannot start rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        }
    }
    let mut status: Vec<Option<ExitStatus>> = vec![None; cfg.nproc];
    let mut failed_at: Option<(usize, Instant)> = None;
    loop {
        for (rank, ch) in children.iter_mut().enumerate() {
            if status[rank].is_none() {
                if let Ok(Some(s)) = ch.try_wait() {
                    if !s.success() && failed_at.is_none() {
                        failed_at = Some((rank, Instant::now()));
                    }
                    status[rank] = Some(s);
                }
            }
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        if let Some((_, at)) = failed_at {
            if at.elapsed() >= Duration::from_secs(cfg.grace_secs) {
                for (rank, ch) in children.iter_mut().enumerate() {
                    if status[rank].is_none() {
                        let _ = ch.kill();
                        status[rank] = ch.wait().ok();
                    }
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = LaunchOutcome {
        exit_codes: status
            .iter()
            .map(|s| s.as_ref().and_then(ExitStatus::code))
            .collect(),
        master_port: port,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if let Some((rank, _)) = failed_at {
        let all: Vec<String> = status
            .iter()
            .enumerate()
            .map(|(r, s)| {
                format!(
                    "rank {r}: {}",
                    s.as_ref().map(describe).unwrap_or_else(|| "unknown".into())
                )
            })
            .collect();
        return Err(Error::Distributed(format!(
            "rank {rank} failed first; {}",
            all.join(", ")
        )));
    }
    Ok(outcome)
}
