//! Where a dataset comes from: a known dataset by name, tensor files the user brings, or an
//! image folder. A [`DataSource`] is written as a string:
//!
//! - `fashion-mnist` (or another name [`canonical_name`] accepts), optionally `NAME@DIR` to
//!   read it from folder `DIR`;
//! - `file:TRAIN[,TEST]`: a `.safetensors` or `.npz` file for training and optionally one for
//!   testing (see [`crate::tensorfile`]);
//! - `folder:ROOT`: an image folder (see [`crate::folder`]).
//!
//! Datasets carry no normalization; it comes from the model or the run's configuration.

use crate::dataset::Dataset;
use crate::folder::load_image_folder;
use crate::registry::{canonical_name, load_dataset};
use crate::tensorfile::{
    dataset_from_parts, images_from_array, labels_from_array, load_tensor_file, read_tensor_file,
    IMAGES_KEY, LABELS_KEY,
};
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// Where a dataset comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A dataset known by name (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`), from `dir`
    /// when given, else from the usual places (see [`crate::registry::locate_dataset`]).
    Named {
        /// Canonical dataset name.
        name: String,
        /// Folder to read it from.
        dir: Option<PathBuf>,
    },
    /// A `.safetensors` or `.npz` training file and an optional test file.
    File {
        /// Training file.
        train: PathBuf,
        /// Test file.
        test: Option<PathBuf>,
    },
    /// An image folder (one subfolder per class, optionally under `train/` and `test/`).
    ImageFolder {
        /// Root folder.
        root: PathBuf,
    },
}

impl DataSource {
    /// A named dataset read from the usual places.
    pub fn named(name: &str) -> Result<Self> {
        Ok(DataSource::Named {
            name: canonical_name(name)?.to_string(),
            dir: None,
        })
    }

    /// Whether loading this source gives a test set.
    pub fn has_test(&self) -> bool {
        match self {
            DataSource::Named { .. } => true,
            DataSource::File { test, .. } => test.is_some(),
            // Known only after looking at the folder.
            DataSource::ImageFolder { root } => {
                crate::folder::split_dirs(root).is_ok_and(|(_, t, _)| t.is_some())
            }
        }
    }

    /// A short name for the dataset: the canonical name, the training file's stem (its folder's
    /// name when the stem is `train`), or the image folder's name.
    pub fn dataset_name(&self) -> String {
        let stem = |p: &Path| {
            p.file_stem()
                .or_else(|| p.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        match self {
            DataSource::Named { name, .. } => name.clone(),
            DataSource::File { train, .. } => {
                // `data/cats/train.npz` is better named `cats` than `train`.
                let parent = train
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|s| s.to_string_lossy().into_owned());
                match (stem(train).as_str(), parent) {
                    ("train", Some(p)) => p,
                    (s, _) => s.to_string(),
                }
            }
            DataSource::ImageFolder { root } => {
                let abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                abs.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "images".to_string())
            }
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Named { name, dir: None } => write!(f, "{name}"),
            DataSource::Named { name, dir: Some(d) } => write!(f, "{name}@{}", d.display()),
            DataSource::File { train, test: None } => write!(f, "file:{}", train.display()),
            DataSource::File {
                train,
                test: Some(t),
            } => write!(f, "file:{},{}", train.display(), t.display()),
            DataSource::ImageFolder { root } => write!(f, "folder:{}", root.display()),
        }
    }
}

impl std::str::FromStr for DataSource {
    type Err = Error;

    /// Parses `NAME`, `NAME@DIR`, `file:TRAIN[,TEST]` or `folder:ROOT`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |msg: String| Error::config("data", msg);
        if let Some(rest) = s.strip_prefix("file:") {
            let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
            return match parts.as_slice() {
                [train] if !train.is_empty() => Ok(DataSource::File {
                    train: PathBuf::from(train),
                    test: None,
                }),
                [train, test] if !train.is_empty() && !test.is_empty() => Ok(DataSource::File {
                    train: PathBuf::from(train),
                    test: Some(PathBuf::from(test)),
                }),
                _ => Err(bad(format!(
                    "`{s}`: expected file:TRAIN or file:TRAIN,TEST (a .safetensors or .npz file each)"
                ))),
            };
        }
        if let Some(rest) = s.strip_prefix("folder:") {
            let root = rest.trim();
            if root.is_empty() {
                return Err(bad(format!("`{s}`: expected folder:PATH")));
            }
            return Ok(DataSource::ImageFolder {
                root: PathBuf::from(root),
            });
        }
        let (name, dir) = match s.split_once('@') {
            Some((n, d)) if !d.trim().is_empty() => (n, Some(PathBuf::from(d.trim()))),
            Some(_) => return Err(bad(format!("`{s}`: expected NAME@DIR with a folder"))),
            None => (s, None),
        };
        let name = canonical_name(name).map_err(|_| {
            bad(format!(
                "`{s}` is not a data source: use a dataset name (fashion-mnist, mnist, cifar10, \
                 cifar100; NAME@DIR to read it from DIR), file:TRAIN[,TEST] for .safetensors/.npz \
                 files, or folder:PATH for an image folder"
            ))
        })?;
        Ok(DataSource::Named {
            name: name.to_string(),
            dir,
        })
    }
}

impl Serialize for DataSource {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DataSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Options for loading a user's data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceOptions {
    /// The number of classes. Tensor files: labels must lie below it (default: the number of
    /// class names, else the largest training label plus one). Folders and named datasets: it
    /// must match what they hold.
    pub num_classes: Option<usize>,
    /// Class names for tensor files (overriding names stored in the file or its sidecar).
    /// Folders and named datasets name their classes themselves; giving names for them is an
    /// error.
    pub class_names: Option<Vec<String>>,
    /// Tensor files: accept a training set in which some class has no example (noted instead
    /// of an error).
    pub allow_empty_classes: bool,
}

/// A loaded data source.
#[derive(Debug)]
pub struct LoadedSource {
    /// The training set.
    pub train: Dataset,
    /// The test set, when the source provides one; when not, the caller decides whether to
    /// split one off the training set.
    pub test: Option<Dataset>,
    /// Remarks worth showing to the user: no test set, skipped files, classes without
    /// examples in the test set, an unused `val/` folder.
    pub notes: Vec<String>,
}

/// Loads `source` as (train, test); `test` is `None` when the source has no test set (the
/// caller decides whether to split one off). See [`load_source_with_notes`] for the remarks.
pub fn load_source(
    source: &DataSource,
    opts: &SourceOptions,
) -> Result<(Dataset, Option<Dataset>)> {
    let l = load_source_with_notes(source, opts)?;
    Ok((l.train, l.test))
}

fn empty_classes(d: &Dataset) -> Vec<String> {
    d.class_counts()
        .iter()
        .enumerate()
        .filter(|(_, &n)| n == 0)
        .map(|(c, _)| format!("{c} ({:?})", d.class_names[c]))
        .collect()
}

fn check_num_classes(src: &DataSource, got: usize, opts: &SourceOptions) -> Result<()> {
    if let Some(k) = opts.num_classes {
        if k != got {
            return Err(Error::config(
                "num_classes",
                format!("{src} holds {got} classes, but num_classes = {k} was given"),
            ));
        }
    }
    if opts.class_names.is_some() {
        return Err(Error::config(
            "class_names",
            format!("{src} names its own classes; class names can be given for tensor files only"),
        ));
    }
    Ok(())
}

/// Loads `source` as (train, test) with remarks for the user (see [`LoadedSource::notes`]).
///
/// Tensor files: the test file uses the training file's class count and names (names stored
/// with the test file must agree) and must have the same image shape. A training set with a
/// class that has no example is an error naming the classes, unless
/// [`SourceOptions::allow_empty_classes`]; for a test set it is a note.
pub fn load_source_with_notes(source: &DataSource, opts: &SourceOptions) -> Result<LoadedSource> {
    let mut notes = Vec::new();
    let name = source.dataset_name();
    let (train, test) = match source {
        DataSource::Named { name, dir } => {
            let (train, test) = load_dataset(name, dir.as_deref())?;
            check_num_classes(source, train.num_classes, opts)?;
            (train, Some(test))
        }
        DataSource::ImageFolder { root } => {
            let (train, test, report) = load_image_folder(root, &name)?;
            check_num_classes(source, train.num_classes, opts)?;
            notes.extend(report.notes);
            (train, test)
        }
        DataSource::File { train, test } => {
            let tr = load_tensor_file(
                train,
                &format!("{name}/train"),
                opts.num_classes,
                opts.class_names.clone(),
            )?;
            let empty = empty_classes(&tr);
            if !empty.is_empty() {
                let msg = format!(
                    "{}: class(es) {} have no training example (num_classes = {})",
                    train.display(),
                    empty.join(", "),
                    tr.num_classes
                );
                if opts.allow_empty_classes {
                    notes.push(msg);
                } else {
                    return Err(Error::corrupt(
                        train,
                        format!(
                            "class(es) {} have no training example (num_classes = {}); fix the labels or num_classes, or allow empty classes",
                            empty.join(", "),
                            tr.num_classes
                        ),
                    ));
                }
            }
            let te = match test {
                None => None,
                Some(tpath) => {
                    let te = load_test_file(tpath, &format!("{name}/test"), &tr, train)?;
                    let empty = empty_classes(&te);
                    if !empty.is_empty() {
                        notes.push(format!(
                            "{}: class(es) {} have no test example",
                            tpath.display(),
                            empty.join(", ")
                        ));
                    }
                    Some(te)
                }
            };
            (tr, te)
        }
    };
    if test.is_none() {
        notes.push(format!(
            "{source} provides no test set; split one off the training set if needed"
        ));
    }
    Ok(LoadedSource { train, test, notes })
}

/// Loads a test file against its training set: same class count and names, same image shape.
fn load_test_file(path: &Path, name: &str, train: &Dataset, train_path: &Path) -> Result<Dataset> {
    let c = read_tensor_file(path)?;
    if let Some(names) = &c.class_names {
        if *names != train.class_names {
            return Err(Error::corrupt(
                path,
                format!(
                    "class names {names:?} differ from the training set's {:?} ({})",
                    train.class_names,
                    train_path.display()
                ),
            ));
        }
    }
    let x = images_from_array(path, IMAGES_KEY, &c.x)?;
    let s = x.size();
    let shape = (s[1] as usize, s[2] as usize, s[3] as usize);
    if shape != train.image_shape() {
        return Err(Error::corrupt(
            path,
            format!(
                "test images `{IMAGES_KEY}` are [C, H, W] = {:?} but training images ({}) are {:?}",
                [shape.0, shape.1, shape.2],
                train_path.display(),
                {
                    let (c, h, w) = train.image_shape();
                    [c, h, w]
                }
            ),
        ));
    }
    let y = labels_from_array(path, LABELS_KEY, &c.y)?;
    dataset_from_parts(
        path,
        name,
        x,
        &y,
        Some(train.num_classes),
        Some(train.class_names.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "fashion-mnist",
            "cifar10@/data/sets",
            "file:train.safetensors",
            "file:a/train.npz,b/test.npz",
            "folder:/data/images",
        ] {
            let d: DataSource = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            let back: DataSource = serde_json::from_str(&json).unwrap();
            assert_eq!(back, d);
        }
        let d: DataSource = "fmnist".parse().unwrap();
        assert_eq!(
            d,
            DataSource::Named {
                name: "fashion-mnist".into(),
                dir: None
            }
        );
        assert_eq!(
            "file: x.npz , y.npz".parse::<DataSource>().unwrap(),
            DataSource::File {
                train: "x.npz".into(),
                test: Some("y.npz".into())
            }
        );
    }

    #[test]
    fn parse_errors_explain_the_syntax() {
        for bad in [
            "imagenet",
            "file:",
            "file:a,b,c",
            "file:a,",
            "folder:",
            "mnist@",
            "",
        ] {
            let e = bad.parse::<DataSource>().unwrap_err().to_string();
            assert!(e.contains("data") && e.contains('`'), "{bad}: {e}");
        }
        let e = "imagenet".parse::<DataSource>().unwrap_err().to_string();
        assert!(e.contains("file:TRAIN") && e.contains("folder:PATH"), "{e}");
        assert!(serde_json::from_str::<DataSource>("\"nope\"").is_err());
    }

    #[test]
    fn names_of_sources() {
        let d: DataSource = "file:/x/my-data.npz".parse().unwrap();
        assert_eq!(d.dataset_name(), "my-data");
        assert!(!d.has_test());
        assert_eq!(DataSource::named("mnist").unwrap().dataset_name(), "mnist");
        let d: DataSource = "file:data/cats/train.npz,data/cats/test.npz"
            .parse()
            .unwrap();
        assert_eq!(d.dataset_name(), "cats");
        assert!(d.has_test());
        assert!(DataSource::named("mnist").unwrap().has_test());
    }
}
