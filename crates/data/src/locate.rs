//! Finding dataset files on disk. Nothing is downloaded at run time: datasets come from an
//! explicit folder, the `RUSTWORTHY_DATA` environment variable, or a system package.

use rustworthy_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Environment variable naming a folder of datasets.
pub const DATA_ENV: &str = "RUSTWORTHY_DATA";

/// Folder where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The four files of an MNIST-style dataset, by their canonical stems.
pub const IDX_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Resolved paths of an MNIST-style dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxFiles {
    /// Folder holding the files.
    pub dir: PathBuf,
    /// Training images.
    pub train_images: PathBuf,
    /// Training labels.
    pub train_labels: PathBuf,
    /// Test images.
    pub test_images: PathBuf,
    /// Test labels.
    pub test_labels: PathBuf,
}

/// Accepted spellings of a file stem: `train-images-idx3-ubyte`, `train-images.idx3-ubyte`,
/// each with or without `.gz`.
pub fn idx_spellings(stem: &str) -> Vec<String> {
    let mut out = vec![stem.to_string(), format!("{stem}.gz")];
    if let Some(pos) = stem.rfind("-idx") {
        let dotted = format!("{}.{}", &stem[..pos], &stem[pos + 1..]);
        out.push(dotted.clone());
        out.push(format!("{dotted}.gz"));
    }
    out
}

/// The first existing spelling of `stem` in `dir`.
pub fn find_idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    idx_spellings(stem)
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The four IDX files in `dir`, or the stems that are missing.
pub fn idx_files_in(dir: &Path) -> std::result::Result<IdxFiles, Vec<&'static str>> {
    let found: Vec<Option<PathBuf>> = IDX_STEMS.iter().map(|s| find_idx_file(dir, s)).collect();
    let missing: Vec<&'static str> = IDX_STEMS
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(s, _)| *s)
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut it = found.into_iter().flatten();
    let mut next = || it.next().expect("four files");
    Ok(IdxFiles {
        dir: dir.to_path_buf(),
        train_images: next(),
        train_labels: next(),
        test_images: next(),
        test_labels: next(),
    })
}

/// Where to look: each base folder contributes its subfolders named in `subdirs` (first), then
/// itself. Bases are the explicit folder, then `env`, then `system` folders, in that order.
pub fn candidate_dirs(
    data_dir: Option<&Path>,
    env: Option<&Path>,
    subdirs: &[&str],
    system: &[&Path],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for base in data_dir.into_iter().chain(env) {
        for s in subdirs {
            push(base.join(s));
        }
        push(base.to_path_buf());
    }
    for s in system {
        push(s.to_path_buf());
    }
    out
}

/// The value of `RUSTWORTHY_DATA`, when set and non-empty.
pub fn env_data_dir() -> Option<PathBuf> {
    std::env::var_os(DATA_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Searches `candidates` for a folder where `probe` succeeds. The error lists every folder
/// searched (with what was missing from folders that exist) and carries `hint`.
pub fn search<T>(
    name: &str,
    candidates: &[PathBuf],
    hint: &str,
    probe: impl Fn(&Path) -> std::result::Result<T, String>,
) -> Result<T> {
    let mut searched = Vec::new();
    for dir in candidates {
        if !dir.is_dir() {
            searched.push(format!("{} (no such folder)", dir.display()));
            continue;
        }
        match probe(dir) {
            Ok(t) => return Ok(t),
            Err(why) => searched.push(format!("{} ({why})", dir.display())),
        }
    }
    let searched = if searched.is_empty() {
        "no folder to search: pass --data-dir or set RUSTWORTHY_DATA".to_string()
    } else {
        format!("searched {}", searched.join(", "))
    };
    Err(Error::DatasetNotFound {
        name: name.to_string(),
        searched,
        hint: hint.to_string(),
    })
}

/// Probe for an MNIST-style folder.
pub fn probe_idx(dir: &Path) -> std::result::Result<IdxFiles, String> {
    idx_files_in(dir).map_err(|missing| {
        if missing.len() == IDX_STEMS.len() {
            "no IDX files".to_string()
        } else {
            format!("incomplete: missing {}[.gz]", missing.join("[.gz], "))
        }
    })
}

/// Probe for a folder holding all of `files`.
pub fn probe_files<'a>(
    files: &'a [&'a str],
) -> impl Fn(&Path) -> std::result::Result<PathBuf, String> + 'a {
    move |dir: &Path| {
        let missing: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if missing.is_empty() {
            Ok(dir.to_path_buf())
        } else if missing.len() == files.len() {
            Err(format!("none of {}", files.join(", ")))
        } else {
            Err(format!("incomplete: missing {}", missing.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let s = idx_spellings("train-images-idx3-ubyte");
        assert_eq!(
            s,
            vec![
                "train-images-idx3-ubyte",
                "train-images-idx3-ubyte.gz",
                "train-images.idx3-ubyte",
                "train-images.idx3-ubyte.gz"
            ]
        );
    }

    #[test]
    fn candidates_order_and_dedup() {
        let c = candidate_dirs(
            Some(Path::new("/a")),
            Some(Path::new("/b")),
            &["fashion-mnist"],
            &[Path::new("/sys/fm"), Path::new("/a")],
        );
        let want: Vec<PathBuf> = [
            "/a/fashion-mnist",
            "/a",
            "/b/fashion-mnist",
            "/b",
            "/sys/fm",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(c, want);
        assert_eq!(
            candidate_dirs(None, None, &["x"], &[]),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn finds_mixed_spellings_and_reports_missing() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("fashion-mnist");
        std::fs::create_dir(&sub).unwrap();
        for n in [
            "train-images-idx3-ubyte.gz",
            "train-labels.idx1-ubyte",
            "t10k-images-idx3-ubyte",
        ] {
            std::fs::write(sub.join(n), b"x").unwrap();
        }
        let c = candidate_dirs(Some(d.path()), None, &["fashion-mnist"], &[]);
        let e = search("fashion-mnist", &c, "HINT", probe_idx)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("incomplete: missing t10k-labels-idx1-ubyte"),
            "{e}"
        );
        assert!(e.contains("no IDX files") && e.contains("HINT"), "{e}");
        std::fs::write(sub.join("t10k-labels-idx1-ubyte.gz"), b"x").unwrap();
        let f = search("fashion-mnist", &c, "HINT", probe_idx).unwrap();
        assert_eq!(f.dir, sub);
        assert_eq!(f.train_labels, sub.join("train-labels.idx1-ubyte"));
        assert_eq!(f.test_labels, sub.join("t10k-labels-idx1-ubyte.gz"));
    }

    #[test]
    fn probe_files_reports() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"x").unwrap();
        let p = probe_files(&["a.bin", "b.bin"]);
        assert_eq!(p(d.path()).unwrap_err(), "incomplete: missing b.bin");
        std::fs::write(d.path().join("b.bin"), b"x").unwrap();
        assert_eq!(p(d.path()).unwrap(), d.path());
        let e = search("x", &[d.path().join("nope")], "H", probe_files(&["a.bin"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such folder"), "{e}");
    }
}
