//! Progress reporting for long loops: a bar with ETA and running metrics, a quiet mode, or
//! JSON lines on stdout for scripts.

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::OnceLock;

static INTERRUPT_CHECK: OnceLock<fn() -> bool> = OnceLock::new();

/// Installs the check that long loops call between batches (training, unlearning and attack
/// loops): when it returns `true`, the loop stops with [`crate::Error::Interrupted`]. For
/// applications that embed the library and own the signal handling (the Python package checks
/// for a pending Ctrl-C). The first installed check stays.
pub fn set_interrupt_check(check: fn() -> bool) {
    let _ = INTERRUPT_CHECK.set(check);
}

/// `Err(Interrupted)` if the installed check (if any) asks to stop.
pub fn check_interrupt() -> crate::Result<()> {
    match INTERRUPT_CHECK.get() {
        Some(check) if check() => Err(crate::Error::Interrupted),
        _ => Ok(()),
    }
}

/// How long loops report their progress (`--progress bar|quiet|json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProgressMode {
    /// Progress bars on stderr with ETA, running loss and accuracy.
    Bar,
    /// Nothing but the final summary (the default: library calls draw no bars unless asked).
    #[default]
    Quiet,
    /// One JSON object per event on stdout.
    JsonLines,
}

impl std::str::FromStr for ProgressMode {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "bar" => Ok(ProgressMode::Bar),
            "quiet" => Ok(ProgressMode::Quiet),
            "json" | "json-lines" | "jsonl" => Ok(ProgressMode::JsonLines),
            _ => Err(crate::Error::config(
                "progress",
                format!("`{s}` is not one of bar, quiet, json"),
            )),
        }
    }
}

/// Reports the progress of one phase (e.g. one epoch) of `total` steps.
pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    phase: String,
}

impl Progress {
    /// Starts reporting phase `phase` of `total` steps in the given mode.
    pub fn new(mode: ProgressMode, phase: &str, total: u64) -> Self {
        let bar = match mode {
            ProgressMode::Bar => {
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                b.set_prefix(phase.to_string());
                Some(b)
            }
            _ => None,
        };
        Progress {
            mode,
            bar,
            phase: phase.to_string(),
        }
    }

    /// Advances by `n` steps and shows the running message.
    pub fn inc(&self, n: u64, msg: impl FnOnce() -> String) {
        if let Some(b) = &self.bar {
            b.inc(n);
            b.set_message(msg());
        }
    }

    /// Ends the phase, emitting a JSON event in JSON-lines mode.
    pub fn finish(self, event: serde_json::Value) {
        match self.mode {
            ProgressMode::Bar => {
                if let Some(b) = self.bar {
                    b.finish_and_clear();
                }
            }
            ProgressMode::JsonLines => emit_json(&self.phase, event),
            ProgressMode::Quiet => {}
        }
    }
}

/// Writes one JSON line `{"event": .., ...}` to stdout.
pub fn emit_json(event: &str, mut body: serde_json::Value) {
    if let serde_json::Value::Object(m) = &mut body {
        m.insert("event".into(), serde_json::Value::String(event.into()));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{body}");
    let _ = out.flush();
}
