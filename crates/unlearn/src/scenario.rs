//! Forgetting scenarios: which training samples to forget. Indices always refer to the dataset's
//! training file (0..N of e.g. Fashion-MNIST's 60,000), so a user's "forget these samples" list
//! means what it says; samples held out for validation were never trained on and cannot be
//! forgotten.

use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::{Error, Result, SeedRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What to forget, as the user states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ForgetSpec {
    /// Every training sample of these classes; the test set then excludes them too.
    Class {
        /// The class numbers to forget.
        classes: Vec<usize>,
    },
    /// A uniformly random share of the training set, without replacement.
    Random {
        /// The share of the training set to forget, in (0, 1).
        fraction: f64,
    },
    /// An explicit list of training-file indices, read from a file (one per line, or a JSON
    /// array, or a saved scenario).
    Indices {
        /// The file holding the indices.
        file: PathBuf,
    },
    /// An explicit list of training-file indices given in memory (the library and Python
    /// calls); checked as a file's would be.
    List {
        /// The indices.
        indices: Vec<usize>,
    },
}

impl FromStr for ForgetSpec {
    type Err = Error;
    /// `class:3`, `class:3,5`, `random:0.1`, `indices:forget.txt`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = s.split_once(':').ok_or_else(|| {
            Error::config(
                "forget",
                format!("`{s}`: expected class:K[,K..], random:FRACTION or indices:FILE"),
            )
        })?;
        match kind {
            "class" => {
                let classes = arg
                    .split(',')
                    .map(|c| {
                        c.trim().parse::<usize>().map_err(|_| {
                            Error::config("forget", format!("`{c}` is not a class number"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(ForgetSpec::Class { classes })
            }
            "random" => {
                let fraction = arg
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| Error::config("forget", format!("`{arg}` is not a fraction")))?;
                Ok(ForgetSpec::Random { fraction })
            }
            "indices" => Ok(ForgetSpec::Indices {
                file: PathBuf::from(arg),
            }),
            _ => Err(Error::config(
                "forget",
                format!("unknown scenario `{kind}`; use class, random or indices"),
            )),
        }
    }
}

impl std::fmt::Display for ForgetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForgetSpec::Class { classes } => write!(
                f,
                "class:{}",
                classes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ForgetSpec::Random { fraction } => write!(f, "random:{fraction}"),
            ForgetSpec::Indices { file } => write!(f, "indices:{}", file.display()),
            ForgetSpec::List { indices } => write!(f, "list of {} indices", indices.len()),
        }
    }
}

/// A resolved scenario: disjoint forget and retain index lists (sorted, training-file indices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// What the user asked to forget.
    pub spec: ForgetSpec,
    /// Seed of the random choice (random scenarios).
    pub seed: u64,
    /// Classes removed entirely (class-wise scenarios): the test set excludes them.
    pub forget_classes: Vec<usize>,
    /// Training-file indices to forget, sorted.
    pub forget: Vec<usize>,
    /// The remaining training indices, sorted.
    pub retain: Vec<usize>,
}

impl Scenario {
    /// Resolves `spec` over the training indices `train_idx` (the model's training set, i.e.
    /// without the validation hold-out) with their `labels` (indexed by training-file index).
    pub fn resolve(
        spec: &ForgetSpec,
        train_idx: &[usize],
        labels: &[i64],
        num_classes: usize,
        seed: u64,
    ) -> Result<Scenario> {
        if train_idx.is_empty() {
            return Err(Error::invalid("the training set is empty"));
        }
        let mut forget_classes = Vec::new();
        let forget: Vec<usize> = match spec {
            ForgetSpec::Class { classes } => {
                if classes.is_empty() {
                    return Err(Error::config("forget", "no class given"));
                }
                let mut set = BTreeSet::new();
                for &c in classes {
                    if c >= num_classes {
                        return Err(Error::config(
                            "forget",
                            format!("class {c} does not exist (the dataset has {num_classes})"),
                        ));
                    }
                    if !set.insert(c) {
                        return Err(Error::config("forget", format!("class {c} listed twice")));
                    }
                }
                forget_classes = set.iter().copied().collect();
                train_idx
                    .iter()
                    .copied()
                    .filter(|&i| set.contains(&(labels[i] as usize)))
                    .collect()
            }
            ForgetSpec::Random { fraction } => {
                let f = *fraction;
                if !(f > 0.0 && f < 1.0) {
                    return Err(Error::config(
                        "forget",
                        format!("random fraction must be in (0, 1), got {f}"),
                    ));
                }
                let k = ((train_idx.len() as f64) * f).round() as usize;
                let mut rng = SeedRng::stream(seed, "forget", 0);
                let mut pick = train_idx.to_vec();
                rng.shuffle(&mut pick);
                pick.truncate(k);
                pick.sort_unstable();
                pick
            }
            ForgetSpec::Indices { file } => {
                let list = read_index_file(file)?;
                checked_indices(&list, train_idx, labels.len(), &file.display().to_string())?
            }
            ForgetSpec::List { indices } => {
                checked_indices(indices, train_idx, labels.len(), "forget list")?
            }
        };
        if forget.is_empty() {
            return Err(Error::config("forget", "the forget set is empty"));
        }
        let fset: BTreeSet<usize> = forget.iter().copied().collect();
        let retain: Vec<usize> = train_idx
            .iter()
            .copied()
            .filter(|i| !fset.contains(i))
            .collect();
        if retain.is_empty() {
            return Err(Error::config(
                "forget",
                "the forget set is the whole training set: nothing would remain (retrain from scratch has no data)",
            ));
        }
        if !forget_classes.is_empty() && forget_classes.len() == num_classes {
            return Err(Error::config("forget", "every class would be forgotten"));
        }
        Ok(Scenario {
            spec: spec.clone(),
            seed,
            forget_classes,
            forget,
            retain,
        })
    }

    /// Writes the scenario (with both index lists) atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }

    /// Reads a saved scenario and checks that its lists are disjoint and sorted.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let s: Scenario = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("not a scenario file: {e}")))?;
        let f: BTreeSet<usize> = s.forget.iter().copied().collect();
        if f.len() != s.forget.len() || s.retain.iter().any(|i| f.contains(i)) {
            return Err(Error::corrupt(
                path,
                "forget and retain lists overlap or repeat",
            ));
        }
        if s.forget.is_empty() || s.retain.is_empty() {
            return Err(Error::corrupt(path, "empty forget or retain list"));
        }
        Ok(s)
    }
}

/// Reads training-file indices: a JSON array, a saved scenario (its forget list), or one
/// integer per line (blank lines and `#` comments ignored).
pub fn read_index_file(path: &Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let t = text.trim_start();
    if t.starts_with('[') {
        return serde_json::from_str::<Vec<usize>>(t)
            .map_err(|e| Error::corrupt(path, format!("not a JSON array of indices: {e}")));
    }
    if t.starts_with('{') {
        return Scenario::load(path).map(|s| s.forget);
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        out.push(l.parse::<usize>().map_err(|_| {
            Error::corrupt(path, format!("line {}: `{l}` is not a sample index", n + 1))
        })?);
    }
    Ok(out)
}

/// `list` sorted, each index checked: inside the training file (`n` samples), in the training
/// split `train_idx`, and listed once. `what` names the list in errors.
fn checked_indices(
    list: &[usize],
    train_idx: &[usize],
    n: usize,
    what: &str,
) -> Result<Vec<usize>> {
    let train: BTreeSet<usize> = train_idx.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for &i in list {
        if i >= n {
            return Err(Error::config(
                "forget",
                format!("{what}: index {i} is out of range (the training file has {n} samples)"),
            ));
        }
        if !train.contains(&i) {
            return Err(Error::config(
                "forget",
                format!(
                    "{what}: sample {i} is in the validation hold-out; the model never trained on it"
                ),
            ));
        }
        if !seen.insert(i) {
            return Err(Error::config(
                "forget",
                format!("{what}: index {i} is listed twice"),
            ));
        }
    }
    Ok(seen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: usize) -> Vec<i64> {
        (0..n).map(|i| (i % classes) as i64).collect()
    }

    #[test]
    fn parses_specs() {
        assert_eq!(
            "class:3,5".parse::<ForgetSpec>().unwrap(),
            ForgetSpec::Class {
                classes: vec![3, 5]
            }
        );
        assert_eq!(
            "random:0.1".parse::<ForgetSpec>().unwrap(),
            ForgetSpec::Random { fraction: 0.1 }
        );
        assert!("random:x".parse::<ForgetSpec>().is_err());
        assert!("bogus:1".parse::<ForgetSpec>().is_err());
        assert!("class".parse::<ForgetSpec>().is_err());
        assert_eq!(
            "class:3,5".parse::<ForgetSpec>().unwrap().to_string(),
            "class:3,5"
        );
    }

    #[test]
    fn random_split_is_disjoint_deterministic_and_sized() {
        let lab = labels(1000, 10);
        let train: Vec<usize> = (0..1000).filter(|i| i % 10 != 7).collect(); // 900
        let spec = ForgetSpec::Random { fraction: 0.1 };
        let a = Scenario::resolve(&spec, &train, &lab, 10, 1).unwrap();
        let b = Scenario::resolve(&spec, &train, &lab, 10, 1).unwrap();
        let c = Scenario::resolve(&spec, &train, &lab, 10, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.forget, c.forget);
        assert_eq!(a.forget.len(), 90);
        assert_eq!(a.retain.len(), 810);
        let f: BTreeSet<_> = a.forget.iter().collect();
        assert!(a.retain.iter().all(|i| !f.contains(i)));
        let mut all: Vec<usize> = a.forget.iter().chain(&a.retain).copied().collect();
        all.sort();
        assert_eq!(all, train);
    }

    #[test]
    fn class_split_takes_whole_classes() {
        let lab = labels(100, 10);
        let train: Vec<usize> = (0..100).collect();
        let s = Scenario::resolve(&ForgetSpec::Class { classes: vec![2] }, &train, &lab, 10, 0)
            .unwrap();
        assert_eq!(s.forget.len(), 10);
        assert!(s.forget.iter().all(|&i| lab[i] == 2));
        assert!(s.retain.iter().all(|&i| lab[i] != 2));
        assert_eq!(s.forget_classes, vec![2]);
        let e = Scenario::resolve(
            &ForgetSpec::Class { classes: vec![10] },
            &train,
            &lab,
            10,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("class 10"), "{e}");
    }

    #[test]
    fn bad_index_files_are_explained() {
        let d = tempfile::tempdir().unwrap();
        let lab = labels(100, 10);
        let train: Vec<usize> = (0..90).collect();
        let write = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            ForgetSpec::Indices { file: p }
        };
        let ok = write("ok.txt", "# forget\n1\n2\n\n3\n");
        let s = Scenario::resolve(&ok, &train, &lab, 10, 0).unwrap();
        assert_eq!(s.forget, vec![1, 2, 3]);
        assert_eq!(s.retain.len(), 87);
        let cases = [
            ("range.txt", "1\n1000\n", "out of range"),
            ("val.txt", "95\n", "validation"),
            ("dup.txt", "4\n4\n", "twice"),
            ("junk.txt", "4\nfour\n", "line 2"),
            ("empty.txt", "\n", "empty"),
            ("json.txt", "[1, 2", "JSON"),
        ];
        for (name, text, want) in cases {
            let spec = write(name, text);
            let e = Scenario::resolve(&spec, &train, &lab, 10, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        let all: String = (0..90).map(|i| format!("{i}\n")).collect();
        let spec = write("all.txt", &all);
        let e = Scenario::resolve(&spec, &train, &lab, 10, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole training set"), "{e}");
    }

    #[test]
    fn saved_scenario_reloads() {
        let d = tempfile::tempdir().unwrap();
        let lab = labels(200, 10);
        let train: Vec<usize> = (0..200).collect();
        let s =
            Scenario::resolve(&ForgetSpec::Random { fraction: 0.5 }, &train, &lab, 10, 3).unwrap();
        let p = d.path().join("scenario.json");
        s.save(&p).unwrap();
        assert_eq!(Scenario::load(&p).unwrap(), s);
        // A saved scenario also works as an index file.
        let spec = ForgetSpec::Indices { file: p };
        let again = Scenario::resolve(&spec, &train, &lab, 10, 0).unwrap();
        assert_eq!(again.forget, s.forget);
        assert_eq!(again.retain, s.retain);
    }
}
