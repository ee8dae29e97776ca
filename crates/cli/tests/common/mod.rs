//! Helpers shared by the end-to-end tests of the `rustworthy` binary.

#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::{Command, Output};

/// Whether Fashion-MNIST is installed (from the test kit; panics when it is required).
pub use rustworthy_testkit::fashion_mnist_present;

/// The binary, run in a working folder of its own (under cargo's scratch folder for tests), so a
/// command that falls back on a default output folder such as `runs/unlearn-ft` neither writes into
/// the source tree nor meets another test running the same command at the same time.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rustworthy"));
    c.env_remove("RUSTWORTHY_DATA");
    let cwd = tempfile::Builder::new()
        .prefix("cwd")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a working folder for the binary")
        .keep();
    c.current_dir(cwd);
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The arguments of a CPU `train` run of `preset` on `data` into `out`, quiet progress.
pub fn train_args(
    preset: &str,
    data: &Path,
    epochs: u32,
    batch: Option<u32>,
    out: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--preset", preset, "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(data.display().to_string());
    a.extend(["--epochs".to_string(), epochs.to_string()]);
    if let Some(b) = batch {
        a.extend(["--batch-size".to_string(), b.to_string()]);
    }
    a.extend(["--device", "cpu", "--progress", "quiet", "--out"].map(String::from));
    a.push(out.display().to_string());
    a
}
