//! Atomic file writes: write to a temporary file in the same folder, fsync, rename.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: readers see either the old file or the new one, never a
/// partial write.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
        f.sync_all().map_err(|e| Error::io(tmp, e))?;
        Ok(())
    })
}

/// Fault injection for tests of a full disk: with `RUSTWORTHY_INJECT_ENOSPC_AFTER=N` in the
/// environment, the first N atomic writes of the process succeed and every later one fails as
/// a full disk does (ENOSPC), after its temporary file was written and before the rename.
fn injected_full_disk() -> Option<std::io::Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let limit: u64 = std::env::var("RUSTWORTHY_INJECT_ENOSPC_AFTER")
        .ok()?
        .parse()
        .ok()?;
    let n = WRITES.fetch_add(1, Ordering::SeqCst);
    (n >= limit).then(|| std::io::Error::from_raw_os_error(28))
}

/// Runs `write` on a temporary path beside `path`, then renames it over `path`.
/// The temporary file is removed if `write` fails.
pub fn atomic_write_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} is not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    // Keep the real extension last: some writers pick the format from it.
    let tmp = dir.join(format!(".{name}.{}.tmp{ext}", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The data must be on disk before the rename makes it visible: a sync failure (a full or
    // failing disk) fails the write and leaves the old file in place.
    let synced = std::fs::File::open(&tmp).and_then(|f| f.sync_all());
    let synced = match injected_full_disk() {
        Some(e) => Err(e),
        None => synced,
    };
    if let Err(e) = synced {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    atomic_write(path, s.as_bytes())
}

/// An exclusive claim on a run folder, so two runs given the same output folder do not write
/// into each other: the file `.rustworthy.lock` in the folder holds the owner's process id and
/// is removed when the lock is dropped. A lock left by a process that no longer exists (a killed
/// run) is taken over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Set when a stale lock of a dead process was taken over (say so to the user).
    pub took_over: Option<String>,
}

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".rustworthy.lock";

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        // Without a portable check, assume the owner is alive (never steal a live lock).
        true
    }
}

impl RunLock {
    /// Claims `dir` (created if missing). Fails, naming the other process, while another live
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let me = std::process::id();
        let mut took_over = None;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{me}").map_err(|e| Error::io(&path, e))?;
                    f.sync_all().map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path, took_over });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if pid == me => {
                            return Err(Error::invalid(format!(
                                "{} is already in use by this process",
                                dir.display()
                            )))
                        }
                        Ok(pid) if process_alive(pid) => {
                            return Err(Error::invalid(format!(
                                "{} is in use by another rustworthy run (process {pid}); wait \
                                 for it to finish or choose another output folder",
                                dir.display()
                            )))
                        }
                        _ => {
                            took_over = Some(format!(
                                "{}: took over the lock of a run that no longer exists ({})",
                                dir.display(),
                                if text.trim().is_empty() {
                                    "empty lock file".to_string()
                                } else {
                                    format!("process {}", text.trim())
                                }
                            ));
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::invalid(format!(
            "{}: could not take the run-folder lock {}",
            dir.display(),
            path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_lock_excludes_live_owners_and_takes_over_dead_ones() {
        let d = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(d.path()).unwrap();
        assert!(lock.took_over.is_none());
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
        drop(lock);
        assert!(!d.path().join(LOCK_FILE).exists());
        // A live other process (pid 1 always exists) holds it: refused with its id.
        std::fs::write(d.path().join(LOCK_FILE), "1\n").unwrap();
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains("process 1"), "{e}");
        // A dead process's lock is taken over with a message.
        std::fs::write(d.path().join(LOCK_FILE), "4294967290\n").unwrap();
        let lock = RunLock::acquire(d.path()).unwrap();
        assert!(lock.took_over.as_deref().unwrap().contains("4294967290"));
        assert_eq!(
            std::fs::read_to_string(d.path().join(LOCK_FILE))
                .unwrap()
                .trim(),
            std::process::id().to_string()
        );
    }

    use super::*;
    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let n = std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(n, 1, "temporary file left behind");
    }
    #[test]
    fn failed_write_keeps_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        atomic_write(&p, b"old").unwrap();
        let r = atomic_write_with(&p, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            Err(Error::invalid("interrupted"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
