//! Datasets by name: locating and loading them, and summarising a loaded dataset.

use crate::cifar::{
    load_cifar10, load_cifar100, CIFAR100_DIR, CIFAR100_TEST_FILE, CIFAR100_TRAIN_FILE,
    CIFAR10_DIR, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES,
};
use crate::dataset::{Dataset, FASHION_MNIST_CLASSES, MNIST_CLASSES};
use crate::idx::load_idx_pair;
use crate::locate::{
    candidate_dirs, env_data_dir, probe_files, probe_idx, search, IdxFiles, DEBIAN_FASHION_MNIST,
};
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Kind;

/// Canonical names of the datasets `load_dataset` knows.
pub const KNOWN_DATASETS: [&str; 4] = ["fashion-mnist", "mnist", "cifar10", "cifar100"];

/// The canonical name of a dataset (accepts aliases such as `fmnist`, case-insensitive).
pub fn canonical_name(name: &str) -> Result<&'static str> {
    let n = name.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "fashion-mnist" | "fmnist" | "fashion_mnist" | "fashionmnist" => "fashion-mnist",
        "mnist" => "mnist",
        "cifar10" | "cifar-10" => "cifar10",
        "cifar100" | "cifar-100" => "cifar100",
        _ => {
            return Err(Error::config(
                "dataset",
                format!(
                    "unknown dataset `{name}`; known datasets: fashion-mnist (alias fmnist), mnist, cifar10, cifar100"
                ),
            ))
        }
    })
}

/// Subfolders of a data folder that may hold the dataset, most specific first.
fn subdirs(name: &str) -> &'static [&'static str] {
    match name {
        "fashion-mnist" => &["fashion-mnist", "fashion_mnist"],
        "mnist" => &["mnist"],
        "cifar10" => &[CIFAR10_DIR, "cifar10/cifar-10-batches-bin", "cifar10"],
        "cifar100" => &[CIFAR100_DIR, "cifar100/cifar-100-binary", "cifar100"],
        _ => &[],
    }
}

/// How to obtain a dataset that was not found.
pub fn not_found_hint(name: &str) -> String {
    const IDX: &str = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                       t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz";
    match name {
        "fashion-mnist" => format!(
            "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), \
             or pass --data-dir / set RUSTWORTHY_DATA to a folder holding {IDX} \
             (directly or in a fashion-mnist/ subfolder); the files are published at \
             https://github.com/zalandoresearch/fashion-mnist (nothing is downloaded at run time)"
        ),
        "mnist" => format!(
            "download {IDX} from https://yann.lecun.com/exdb/mnist/ \
             (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/) into <folder>/mnist/, then \
             pass --data-dir <folder> or set RUSTWORTHY_DATA=<folder> (nothing is downloaded at run time)"
        ),
        "cifar10" => "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extract \
             it into <folder> so that <folder>/cifar-10-batches-bin/ holds data_batch_1.bin .. \
             data_batch_5.bin and test_batch.bin, then pass --data-dir <folder> or set \
             RUSTWORTHY_DATA=<folder> (nothing is downloaded at run time)"
            .to_string(),
        "cifar100" => "download https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz and \
             extract it into <folder> so that <folder>/cifar-100-binary/ holds train.bin and \
             test.bin, then pass --data-dir <folder> or set RUSTWORTHY_DATA=<folder> \
             (nothing is downloaded at run time)"
            .to_string(),
        _ => String::new(),
    }
}

/// Where a located dataset lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// An MNIST-style folder of four IDX files.
    Idx(IdxFiles),
    /// A CIFAR binary folder.
    Cifar(PathBuf),
}

/// Finds dataset `name` with an explicit environment value and optional system folders
/// (`load_dataset` uses the real `RUSTWORTHY_DATA` and the system folders).
pub fn locate_with(
    name: &str,
    data_dir: Option<&Path>,
    env: Option<&Path>,
    use_system: bool,
) -> Result<Located> {
    let name = canonical_name(name)?;
    let system: Vec<&Path> = if use_system && name == "fashion-mnist" {
        vec![Path::new(DEBIAN_FASHION_MNIST)]
    } else {
        vec![]
    };
    let dirs = candidate_dirs(data_dir, env, subdirs(name), &system);
    let hint = not_found_hint(name);
    match name {
        "fashion-mnist" | "mnist" => search(name, &dirs, &hint, probe_idx).map(Located::Idx),
        "cifar10" => {
            let mut files: Vec<&str> = CIFAR10_TRAIN_FILES.to_vec();
            files.push(CIFAR10_TEST_FILE);
            search(name, &dirs, &hint, probe_files(&files)).map(Located::Cifar)
        }
        _ => search(
            name,
            &dirs,
            &hint,
            probe_files(&[CIFAR100_TRAIN_FILE, CIFAR100_TEST_FILE]),
        )
        .map(Located::Cifar),
    }
}

/// Finds dataset `name`. An explicit `data_dir` is authoritative: the dataset must be in it (or
/// its subfolder named after the dataset), so a typo never silently falls back to other data.
/// Otherwise `$RUSTWORTHY_DATA` (same rule), then, for Fashion-MNIST, Debian's package folder.
pub fn locate_dataset(name: &str, data_dir: Option<&Path>) -> Result<Located> {
    if data_dir.is_some() {
        return locate_with(name, data_dir, None, false);
    }
    let env = env_data_dir();
    locate_with(name, data_dir, env.as_deref(), true)
}

/// Loads a located dataset as (train, test).
pub fn load_located(name: &str, located: &Located) -> Result<(Dataset, Dataset)> {
    let name = canonical_name(name)?;
    match (name, located) {
        ("fashion-mnist" | "mnist", Located::Idx(f)) => {
            let classes: &[&str] = if name == "mnist" {
                &MNIST_CLASSES
            } else {
                &FASHION_MNIST_CLASSES
            };
            let train = load_idx_pair(
                &f.train_images,
                &f.train_labels,
                &format!("{name}/train"),
                10,
                classes,
            )?;
            let test = load_idx_pair(
                &f.test_images,
                &f.test_labels,
                &format!("{name}/test"),
                10,
                classes,
            )?;
            check_same_shape(&train, &test, &f.test_images)?;
            Ok((train, test))
        }
        ("cifar10", Located::Cifar(dir)) => load_cifar10(dir),
        ("cifar100", Located::Cifar(dir)) => load_cifar100(dir),
        _ => Err(Error::invalid(format!(
            "dataset {name} cannot be loaded from {located:?}"
        ))),
    }
}

fn check_same_shape(train: &Dataset, test: &Dataset, test_file: &Path) -> Result<()> {
    if train.image_shape() != test.image_shape() {
        return Err(Error::corrupt(
            test_file,
            format!(
                "test images are {:?} but training images are {:?}",
                test.image_shape(),
                train.image_shape()
            ),
        ));
    }
    Ok(())
}

/// Loads dataset `name` (`fashion-mnist`/`fmnist`, `mnist`, `cifar10`, `cifar100`) as
/// (train, test) on the CPU. See [`locate_dataset`] for where it looks.
pub fn load_dataset(name: &str, data_dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let located = locate_dataset(name, data_dir)?;
    load_located(name, &located)
}

/// A short description of a dataset, for an `info` command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatasetSummary {
    /// Dataset name.
    pub name: String,
    /// Number of examples.
    pub n: usize,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Class names.
    pub class_names: Vec<String>,
    /// Examples per class.
    pub class_counts: Vec<usize>,
    /// Mean pixel value.
    pub pixel_mean: f64,
    /// Standard deviation of pixel values.
    pub pixel_std: f64,
    /// Mean pixel value per channel.
    pub channel_mean: Vec<f64>,
    /// Standard deviation of pixel values per channel.
    pub channel_std: Vec<f64>,
}

/// Summarises a dataset: size, shape, classes and pixel statistics.
pub fn dataset_summary(d: &Dataset) -> DatasetSummary {
    let (c, h, w) = d.image_shape();
    let (pixel_mean, pixel_std, channel_mean, channel_std) = if d.images.numel() == 0 {
        (0.0, 0.0, vec![0.0; c], vec![0.0; c])
    } else {
        let x = d.images.to_kind(Kind::Double);
        let per_channel = x.transpose(0, 1).reshape([c as i64, -1]);
        let cm =
            Vec::<f64>::try_from(per_channel.mean_dim(1, false, Kind::Double)).unwrap_or_default();
        let cs = Vec::<f64>::try_from(per_channel.std_dim(1, false, false)).unwrap_or_default();
        (
            x.mean(Kind::Double).double_value(&[]),
            x.std(false).double_value(&[]),
            cm,
            cs,
        )
    };
    DatasetSummary {
        name: d.name.clone(),
        n: d.len(),
        shape: [c, h, w],
        num_classes: d.num_classes,
        class_names: d.class_names.clone(),
        class_counts: d.class_counts(),
        pixel_mean,
        pixel_std,
        channel_mean,
        channel_std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn names_and_aliases() {
        assert_eq!(canonical_name("fmnist").unwrap(), "fashion-mnist");
        assert_eq!(canonical_name("Fashion-MNIST").unwrap(), "fashion-mnist");
        assert_eq!(canonical_name("cifar-10").unwrap(), "cifar10");
        for k in KNOWN_DATASETS {
            assert_eq!(canonical_name(k).unwrap(), k);
        }
        let e = canonical_name("imagenet").unwrap_err().to_string();
        assert!(
            e.contains("imagenet") && e.contains("cifar100") && e.contains("fmnist"),
            "{e}"
        );
    }

    #[test]
    fn not_found_errors_carry_hints() {
        let d = tempfile::tempdir().unwrap();
        let e = locate_with("fmnist", Some(d.path()), None, false).unwrap_err();
        assert!(matches!(e, Error::DatasetNotFound { .. }));
        let s = e.to_string();
        assert!(s.contains("apt-get install dataset-fashion-mnist"), "{s}");
        assert!(
            s.contains("RUSTWORTHY_DATA") && s.contains("train-images-idx3-ubyte.gz"),
            "{s}"
        );
        assert!(
            s.contains(&d.path().join("fashion-mnist").display().to_string()),
            "{s}"
        );
        let s = locate_with("cifar10", Some(d.path()), None, false)
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("cifar-10-binary.tar.gz") && s.contains("cifar-10-batches-bin"),
            "{s}"
        );
        let s = locate_with("cifar100", None, Some(d.path()), false)
            .unwrap_err()
            .to_string();
        assert!(s.contains("cifar-100-binary.tar.gz"), "{s}");
        assert!(s.contains(&d.path().display().to_string()), "{s}");
        let s = locate_with("mnist", None, None, false)
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("yann.lecun.com") && s.contains("no folder to search"),
            "{s}"
        );
        let e = locate_with("svhn", None, None, false).unwrap_err();
        assert!(matches!(e, Error::Config { .. }));
    }

    #[test]
    fn summary_of_small_dataset() {
        let x =
            Tensor::from_slice(&[0.0f32, 1.0, 0.5, 0.5, 0.25, 0.75, 0.0, 1.0]).view([2, 2, 1, 2]);
        let d = Dataset::new("s", x, Tensor::from_slice(&[1i64, 1]), 3, vec![]).unwrap();
        let s = dataset_summary(&d);
        assert_eq!(s.n, 2);
        assert_eq!(s.shape, [2, 1, 2]);
        assert_eq!(s.class_counts, vec![0, 2, 0]);
        assert!((s.pixel_mean - 0.5).abs() < 1e-9);
        // channel 0 holds 0, 1, 0.25, 0.75; channel 1 holds 0.5, 0.5, 0, 1.
        assert!((s.channel_mean[0] - 0.5).abs() < 1e-9);
        assert!((s.channel_mean[1] - 0.5).abs() < 1e-9);
        assert!((s.channel_std[1] - (0.125f64).sqrt()).abs() < 1e-9);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["n"], 2);
        let empty = d.subset(&[]).unwrap();
        assert_eq!(dataset_summary(&empty).n, 0);
    }
}
