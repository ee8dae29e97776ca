//! Run reports: every run writes `report.json` with its full config, seeds, versions, device,
//! timings and metrics, so any number it prints can be reproduced.

use crate::error::Result;
use crate::fsutil::write_json_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Versions of everything that can change a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Versions {
    /// This crate's version.
    pub rustworthy: String,
    /// The `tch` bindings' version.
    pub tch: String,
    /// The libtorch version linked at build time (`unknown` if it could not be read).
    pub libtorch: String,
    /// Whether a CUDA device was usable.
    pub cuda_available: bool,
    /// Whether cuDNN was usable.
    pub cudnn_available: bool,
    /// libtorch's intra-op thread count.
    pub torch_threads: i32,
}

impl Versions {
    /// The versions of this build and of the running libtorch.
    pub fn current() -> Self {
        Versions {
            rustworthy: env!("CARGO_PKG_VERSION").to_string(),
            tch: "0.24.0".to_string(),
            libtorch: env!("RUSTWORTHY_LIBTORCH_VERSION").to_string(),
            cuda_available: tch::Cuda::is_available(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            torch_threads: tch::get_num_threads(),
        }
    }
}

/// The machine a run happened on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// Contents of `/etc/hostname` (empty if unreadable).
    pub hostname: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// Number of CPUs available to the process.
    pub cpus: usize,
}

impl Host {
    /// The machine this process runs on.
    pub fn current() -> Self {
        Host {
            hostname: std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// A complete, self-describing record of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// The subcommand, e.g. `train`.
    pub command: String,
    /// The exact command line.
    pub argv: Vec<String>,
    /// Start time, as `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_utc: String,
    /// End time in the same format; `None` while the run is in progress.
    pub finished_utc: Option<String>,
    /// The fully resolved configuration (after presets, TOML and flags).
    pub config: serde_json::Value,
    /// Every seed the run used, by name.
    pub seeds: BTreeMap<String, u64>,
    /// Versions of the code and of libtorch.
    pub versions: Versions,
    /// The machine the run happened on.
    pub host: Host,
    /// The resolved device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Wall-clock timings in seconds, by phase.
    pub timings_s: BTreeMap<String, f64>,
    /// Final metrics.
    pub metrics: serde_json::Value,
    /// Per-epoch (or per-phase) history.
    pub history: Vec<serde_json::Value>,
    /// Files the run wrote, relative to the run folder.
    pub artifacts: Vec<String>,
    /// Anything worth knowing (e.g. resumed from epoch N).
    pub notes: Vec<String>,
}

impl RunReport {
    /// A report for `command` started now, with the process's argv, the resolved `config`, the
    /// current versions and host, and the device name `device`.
    pub fn new(command: &str, config: serde_json::Value, device: &str) -> Self {
        RunReport {
            command: command.to_string(),
            argv: std::env::args().collect(),
            started_utc: utc_now(),
            finished_utc: None,
            config,
            seeds: BTreeMap::new(),
            versions: Versions::current(),
            host: Host::current(),
            device: device.to_string(),
            timings_s: BTreeMap::new(),
            metrics: serde_json::Value::Null,
            history: Vec::new(),
            artifacts: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Writes the report atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_known_timestamps() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_700_000), "2026-11-26T13:33:20Z");
    }
    #[test]
    fn report_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RunReport::new("train", serde_json::json!({"epochs": 3}), "cpu");
        r.seeds.insert("seed".into(), 42);
        r.timings_s.insert("train".into(), 1.5);
        let p = d.path().join("report.json");
        r.write(&p).unwrap();
        let back: RunReport = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back.seeds["seed"], 42);
        assert_eq!(back.config["epochs"], 3);
        assert_eq!(back.versions.tch, "0.24.0");
        assert!(
            back.versions.libtorch.starts_with("2.11.0"),
            "{}",
            back.versions.libtorch
        );
    }
}
