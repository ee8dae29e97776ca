//! Which data a run reads: the named datasets, or the user's own tensor files and image
//! folders (see [`rustworthy_data::DataSource`]), with a seeded per-class test split when the
//! user's data has none.

use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::registry::load_dataset;
use rustworthy_data::{load_source, DataSource, Dataset, SourceOptions};
use rustworthy_train::checkpoint::CheckpointMeta;
use std::path::Path;
use tch::Kind;

/// Default share of each class held out as the test set of user data without one.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

/// Whether `dataset` names the user's own data (`file:` or `folder:`).
pub fn is_user_data(dataset: &str) -> bool {
    let d = dataset.trim();
    d.starts_with("file:") || d.starts_with("folder:")
}

/// The training and test sets of `dataset`. Named datasets are read as always (from `dir`,
/// else the usual places). User data without a test split of its own is split per class:
/// `test_fraction` of each class (seeded by `split_seed`) becomes the test set.
pub fn load_pair(
    dataset: &str,
    dir: Option<&Path>,
    test_fraction: Option<f64>,
    split_seed: u64,
) -> Result<(Dataset, Dataset)> {
    let source: DataSource = dataset.parse()?;
    if let DataSource::Named { name, dir: own } = &source {
        return load_dataset(name, own.as_deref().or(dir));
    }
    let (train, test) = load_source(&source, &SourceOptions::default())?;
    match test {
        Some(t) => {
            if t.num_classes != train.num_classes || t.image_shape() != train.image_shape() {
                return Err(Error::invalid(format!(
                    "{dataset}: the test set ({} classes, {:?}) does not match the training set ({} classes, {:?})",
                    t.num_classes,
                    t.image_shape(),
                    train.num_classes,
                    train.image_shape()
                )));
            }
            Ok((train, t))
        }
        None => {
            let f = test_fraction.unwrap_or(DEFAULT_TEST_FRACTION);
            let labels = train.labels_vec();
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); train.num_classes];
            for (i, &y) in labels.iter().enumerate() {
                by_class[y as usize].push(i);
            }
            let mut rng = SeedRng::stream(split_seed, "user-test-split", 0);
            let (mut keep, mut held) = (Vec::new(), Vec::new());
            for mut idx in by_class {
                rng.shuffle(&mut idx);
                let k = ((idx.len() as f64) * f).round() as usize;
                let k = k.min(idx.len().saturating_sub(1));
                held.extend_from_slice(&idx[..k]);
                keep.extend_from_slice(&idx[k..]);
            }
            if held.is_empty() {
                return Err(Error::config(
                    "data.test_fraction",
                    format!("{dataset}: too few samples to hold out a test set; give a test file"),
                ));
            }
            keep.sort_unstable();
            held.sort_unstable();
            Ok((train.subset(&keep)?, train.subset(&held)?))
        }
    }
}

/// The test set a saved model is evaluated or attacked on: `dataset` with the test fraction
/// and split seed of the model's training config (so held-out user data is the same samples).
pub fn load_test(
    dataset: &str,
    dir: Option<&Path>,
    meta: Option<&CheckpointMeta>,
) -> Result<Dataset> {
    let cfg = meta.map(|m| &m.config);
    let test_fraction = cfg
        .and_then(|c| c.pointer("/data/test_fraction"))
        .and_then(|v| v.as_f64());
    let split_seed = cfg
        .and_then(|c| c.pointer("/data/split_seed"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    Ok(load_pair(dataset, dir, test_fraction, split_seed)?.1)
}

/// Per-channel mean and standard deviation of a dataset's images.
pub fn channel_stats(ds: &Dataset) -> Result<(Vec<f64>, Vec<f64>)> {
    let x = ds.images.to_kind(Kind::Double);
    let mean = x.f_mean_dim(&[0i64, 2, 3][..], false, Kind::Double)?;
    let std = x.f_std_dim(&[0i64, 2, 3][..], false, false)?;
    let mean: Vec<f64> = Vec::<f64>::try_from(mean)?;
    let std: Vec<f64> = Vec::<f64>::try_from(std)?;
    if std.iter().any(|s| s.is_nan() || *s <= 1e-6) {
        return Err(Error::invalid(format!(
            "{}: a channel is constant (std {std:?}); give model.mean and model.std",
            ds.name
        )));
    }
    Ok((mean, std))
}
