//! Rank and world size from the environment of the usual launchers.

use crate::group::{ProcessGroup, DEFAULT_TIMEOUT_SECS};
use rustworthy_core::{Error, Result};
use serde::Serialize;
use std::time::Duration;

/// Which launcher's variables named the rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvSource {
    /// `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` (torchrun, `rustworthy launch`).
    Torchrun,
    /// OpenMPI's `OMPI_COMM_WORLD_*` (mpirun).
    OpenMpi,
    /// SLURM's `SLURM_PROCID`/`SLURM_NTASKS` (srun).
    Slurm,
}

/// Where this process sits in a distributed run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DistEnv {
    /// Global rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this machine (picks the GPU on GPU machines).
    pub local_rank: usize,
    /// Address of rank 0's rendezvous store.
    pub master_addr: String,
    /// Port of rank 0's rendezvous store.
    pub master_port: u16,
    /// The launcher whose variables were read.
    pub source: EnvSource,
    /// Seconds every collective waits for its peers (`RUSTWORTHY_DIST_TIMEOUT`).
    pub timeout_secs: u64,
}

/// The default rendezvous port (PyTorch's).
pub const DEFAULT_PORT: u16 = 29500;

fn parse_usize(name: &str, v: &str) -> Result<usize> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| Error::config(name, format!("`{v}` is not a non-negative integer")))
}

/// The first host of a SLURM node list such as `node[03-05,07],gpu1` (here `node03`).
fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let (head, rest) = match list.find('[') {
        Some(i) if !list[..i].contains(',') => (&list[..i], Some(&list[i + 1..])),
        _ => return list.split(',').next().map(str::to_string),
    };
    let first = rest?
        .split([',', ']'])
        .next()?
        .split('-')
        .next()?
        .to_string();
    Some(format!("{head}{first}"))
}

impl DistEnv {
    /// Reads the process's environment; `None` when no launcher variables are set (a plain
    /// single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        DistEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`] with the variables given by `get` (for tests and embedders).
    /// Precedence: torchrun's variables, then OpenMPI's, then SLURM's.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let timeout_secs = match get("RUSTWORTHY_DIST_TIMEOUT") {
            Some(v) => {
                let t = parse_usize("RUSTWORTHY_DIST_TIMEOUT", &v)? as u64;
                if t == 0 {
                    return Err(Error::config(
                        "RUSTWORTHY_DIST_TIMEOUT",
                        "must be >= 1 second",
                    ));
                }
                t
            }
            None => DEFAULT_TIMEOUT_SECS,
        };
        let port = match get("MASTER_PORT") {
            Some(v) => {
                let p = parse_usize("MASTER_PORT", &v)?;
                if p == 0 || p > u16::MAX as usize {
                    return Err(Error::config(
                        "MASTER_PORT",
                        format!("{p} is not a port number"),
                    ));
                }
                p as u16
            }
            None => DEFAULT_PORT,
        };
        let read = |rank: &str, world: &str, local: &str| -> Result<(usize, usize, usize)> {
            let r = parse_usize(rank, &get(rank).unwrap_or_default())?;
            let w = parse_usize(
                world,
                &get(world)
                    .ok_or_else(|| Error::config(world, format!("missing while {rank} is set")))?,
            )?;
            let l = match get(local) {
                Some(v) => parse_usize(local, &v)?,
                None => r,
            };
            if w == 0 {
                return Err(Error::config(world, "must be >= 1"));
            }
            if r >= w {
                return Err(Error::config(rank, format!("{r} is not below {world}={w}")));
            }
            Ok((r, w, l))
        };
        let (source, (rank, world_size, local_rank)) = if get("RANK").is_some() {
            (
                EnvSource::Torchrun,
                read("RANK", "WORLD_SIZE", "LOCAL_RANK")?,
            )
        } else if get("OMPI_COMM_WORLD_RANK").is_some() {
            (
                EnvSource::OpenMpi,
                read(
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                )?,
            )
        } else if get("SLURM_PROCID").is_some() {
            (
                EnvSource::Slurm,
                read("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")?,
            )
        } else {
            return Ok(None);
        };
        let master_addr = match get("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ => match source {
                EnvSource::Torchrun if world_size > 1 => {
                    return Err(Error::config(
                        "MASTER_ADDR",
                        "missing: torchrun-style runs name rank 0's address",
                    ))
                }
                EnvSource::Slurm => get("SLURM_JOB_NODELIST")
                    .and_then(|l| first_slurm_host(&l))
                    .unwrap_or_else(|| "127.0.0.1".to_string()),
                EnvSource::OpenMpi => {
                    let local_size = get("OMPI_COMM_WORLD_LOCAL_SIZE")
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if local_size == Some(world_size) || world_size == 1 {
                        "127.0.0.1".to_string()
                    } else {
                        return Err(Error::config(
                            "MASTER_ADDR",
                            "missing: a multi-node mpirun run must pass rank 0's address (mpirun -x MASTER_ADDR=...)",
                        ));
                    }
                }
                EnvSource::Torchrun => "127.0.0.1".to_string(),
            },
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port: port,
            source,
            timeout_secs,
        }))
    }

    /// Joins the process group this environment describes.
    pub fn connect(&self) -> Result<ProcessGroup> {
        ProcessGroup::connect(
            &self.master_addr,
            self.master_port,
            self.rank,
            self.world_size,
            Duration::from_secs(self.timeout_secs),
        )
    }
}

/// The process group of the launcher environment, or the single-process group when none.
pub fn group_from_env() -> Result<ProcessGroup> {
    match DistEnv::from_env()? {
        Some(env) => env.connect(),
        None => Ok(ProcessGroup::single()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_each_launcher() {
        assert_eq!(env(&[]).unwrap(), None);
        let t = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((t.rank, t.world_size, t.local_rank), (1, 4, 1));
        assert_eq!((t.master_addr.as_str(), t.master_port), ("10.0.0.2", 1234));
        assert_eq!(t.source, EnvSource::Torchrun);
        let m = env(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((m.rank, m.world_size, m.local_rank), (2, 3, 0));
        assert_eq!(
            (m.master_addr.as_str(), m.master_port),
            ("127.0.0.1", DEFAULT_PORT)
        );
        let s = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-08,11]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank), (5, 8, 1));
        assert_eq!(s.master_addr, "gpu07");
        assert_eq!(first_slurm_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_slurm_host("solo").as_deref(), Some("solo"));
    }

    #[test]
    fn rejects_bad_values_by_name() {
        for (pairs, needle) in [
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK"),
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
                "RANK",
            ),
            (vec![("RANK", "0")], "WORLD_SIZE"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "2")], "MASTER_ADDR"),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                vec![
                    ("OMPI_COMM_WORLD_RANK", "0"),
                    ("OMPI_COMM_WORLD_SIZE", "4"),
                    ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
                ],
                "MASTER_ADDR",
            ),
            (
                vec![
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("RUSTWORTHY_DIST_TIMEOUT", "0"),
                ],
                "RUSTWORTHY_DIST_TIMEOUT",
            ),
        ] {
            let e = env(&pairs).unwrap_err().to_string();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }
}
