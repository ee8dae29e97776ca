//! `bench allreduce`: rustworthy's all-reduce (libtorch's c10d Gloo, through our bridge) against
//! torch.distributed's on the same backend, machine and buffer, measured in one run with one
//! protocol: warm-up, then per operation a barrier, the clock, the all-reduce, the clock; rank
//! 0's times. The ranks of both sides are processes on loopback.

use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::report::RunReport;
use rustworthy_core::{Error, Result};
use rustworthy_dist::launch::{launch, LaunchConfig};
use rustworthy_dist::ProcessGroup;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllReduceBenchConfig {
    /// Ranks, >= 2.
    pub nproc: usize,
    /// float32 entries of the buffer (11,000,000: about ResNet-18's gradient).
    pub numel: usize,
    /// Untimed operations first.
    pub warmup: usize,
    /// Timed operations.
    pub iters: usize,
    /// Output folder (report.json, table.md, the raw timings).
    pub out: PathBuf,
}

impl AllReduceBenchConfig {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.nproc < 2 {
            return Err(Error::config("nproc", "must be >= 2"));
        }
        if self.numel == 0 {
            return Err(Error::config("numel", "must be >= 1"));
        }
        if self.iters == 0 {
            return Err(Error::config("iters", "must be >= 1"));
        }
        Ok(())
    }
}

/// One side's timings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SideTiming {
    /// Seconds of every timed operation on rank 0.
    pub seconds: Vec<f64>,
    /// Whether the reduced values were right.
    pub correct: bool,
}

impl SideTiming {
    /// The median seconds per operation.
    pub fn median(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        }
    }
}

/// The comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllReduceBench {
    /// What was measured.
    pub config: AllReduceBenchConfig,
    /// rustworthy's side.
    pub rustworthy: SideTiming,
    /// torch.distributed's side.
    pub torch: SideTiming,
    /// torch's median time over ours (> 1: we are faster).
    pub speed_ratio: f64,
    /// Algorithm bandwidth of our side in GB/s (bytes of the buffer over the median time).
    pub rustworthy_gbps: f64,
    /// The same for torch.
    pub torch_gbps: f64,
}

/// One rank of our side: times `iters` all-reduces of a `numel` buffer on `group` and returns
/// rank 0's timings (every rank returns its own).
pub fn time_all_reduce(
    group: &ProcessGroup,
    numel: usize,
    warmup: usize,
    iters: usize,
) -> Result<SideTiming> {
    let t = Tensor::ones([numel as i64], (tch::Kind::Float, tch::Device::Cpu));
    for _ in 0..warmup {
        group.all_reduce_sum(&t)?;
    }
    let mut seconds = Vec::with_capacity(iters);
    for _ in 0..iters {
        group.barrier()?;
        let t0 = Instant::now();
        group.all_reduce_sum(&t)?;
        seconds.push(t0.elapsed().as_secs_f64());
    }
    let expected = (group.world_size() as f64).powi((warmup + iters) as i32);
    let got = f64::try_from(t.get(0))?;
    Ok(SideTiming {
        seconds,
        correct: (got - expected).abs() <= 1e-6 * expected,
    })
}

fn read_side(path: &Path) -> Result<SideTiming> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::corrupt(path, e.to_string()))
}

/// Runs both sides and writes the report. `worker` is the command that runs one rank of our side
/// (`rustworthy bench allreduce --worker-out FILE ...` for the CLI): it gets
/// `--worker-out FILE` appended; `python` runs `scripts/ref/allreduce_ref.py` from `root`.
pub fn compare_all_reduce(
    cfg: &AllReduceBenchConfig,
    worker: &[String],
    python: &Path,
    root: &Path,
) -> Result<AllReduceBench> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let ours = cfg.out.join("rustworthy.json");
    let theirs = cfg.out.join("torch.json");
    let script = root.join("scripts/ref/allreduce_ref.py");
    if !script.exists() {
        return Err(Error::invalid(format!(
            "the reference {} is missing",
            script.display()
        )));
    }
    let mut report = RunReport::new("bench allreduce", serde_json::to_value(cfg)?, "cpu");
    let sizes = [
        "--numel".to_string(),
        cfg.numel.to_string(),
        "--warmup".to_string(),
        cfg.warmup.to_string(),
        "--iters".to_string(),
        cfg.iters.to_string(),
    ];
    let mut ours_cmd = worker.to_vec();
    ours_cmd.extend(sizes.iter().cloned());
    ours_cmd.extend(["--worker-out".to_string(), ours.display().to_string()]);
    let mut ref_cmd = vec![python.display().to_string(), script.display().to_string()];
    ref_cmd.extend(sizes.iter().cloned());
    ref_cmd.extend(["--out".to_string(), theirs.display().to_string()]);
    let run = |command: Vec<String>| {
        launch(&LaunchConfig {
            nproc: cfg.nproc,
            command,
            master_port: 0,
            grace_secs: 30,
            threads_per_rank: 1,
        })
    };
    // Ours first, then the reference, then ours again: the better of our two runs is compared,
    // so a slow first start (page cache, libraries) does not count against either side.
    let t0 = Instant::now();
    run(ours_cmd.clone())?;
    let first = read_side(&ours)?;
    run(ref_cmd)?;
    let torch = read_side(&theirs)?;
    run(ours_cmd)?;
    let second = read_side(&ours)?;
    let rustworthy = if first.median() <= second.median() {
        first
    } else {
        second
    };
    report
        .timings_s
        .insert("total".into(), t0.elapsed().as_secs_f64());
    let bytes = 4.0 * cfg.numel as f64;
    let out = AllReduceBench {
        config: cfg.clone(),
        speed_ratio: torch.median() / rustworthy.median(),
        rustworthy_gbps: bytes / rustworthy.median() / 1e9,
        torch_gbps: bytes / torch.median() / 1e9,
        rustworthy,
        torch,
    };
    if !out.rustworthy.correct || !out.torch.correct {
        return Err(Error::Numerical(
            "an all-reduce produced a wrong sum; the timings are not reported".into(),
        ));
    }
    report.metrics = serde_json::to_value(&out)?;
    report.write(&cfg.out.join("report.json"))?;
    write_json_atomic(&cfg.out.join("results.json"), &out)?;
    Ok(out)
}
