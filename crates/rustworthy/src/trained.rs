//! Opening a trained run: its model, the config it was trained with, and its training split
//! reproduced from the seeds and verified against the saved `split.json`.

use crate::config::RunConfig;
use crate::train_run::{load_splits, SplitFile, Splits};
use rustworthy_core::{Error, Result};
use rustworthy_models::Model;
use rustworthy_train::checkpoint::{load_model, sidecar_of, CheckpointMeta};
use rustworthy_unlearn::pipeline::build_data;
use rustworthy_unlearn::{ForgetSpec, Scenario, UnlearnData};
use std::path::{Path, PathBuf};

/// A model written by a training run, with the run's config and verified split.
pub struct TrainedRun {
    /// The model file.
    pub model_path: PathBuf,
    /// The model, on the requested device.
    pub model: Model,
    /// Its sidecar.
    pub meta: CheckpointMeta,
    /// The config it was trained with (its data folder possibly overridden).
    pub config: RunConfig,
    /// The train / validation / test splits, reproduced and checked.
    pub splits: Splits,
    /// The device the model lives on.
    pub device: tch::Device,
}

impl TrainedRun {
    /// Opens `path`: a run folder (holding `model.safetensors`) or a model file with its
    /// `model.json` sidecar. `data_dir` overrides where the dataset is read from. The training
    /// split is reproduced from the config and compared with the folder's `split.json` (when
    /// present); a mismatch is an error, never a silently different split.
    pub fn open(
        path: impl AsRef<Path>,
        data_dir: Option<&Path>,
        device: tch::Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let model_path = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.to_path_buf()
        };
        let (model, meta) = load_model(&model_path, None, device)?;
        model.check_finite(&model_path.display().to_string())?;
        let meta = meta.ok_or_else(|| {
            Error::checkpoint(
                &model_path,
                "no sidecar with the training config: cannot reproduce the training split",
            )
        })?;
        let mut config: RunConfig = serde_json::from_value(meta.config.clone()).map_err(|e| {
            Error::checkpoint(
                sidecar_of(&model_path),
                format!("not a `rustworthy train` model sidecar ({e})"),
            )
        })?;
        if let Some(d) = data_dir {
            config.data.data_dir = Some(d.to_path_buf());
        }
        let splits = load_splits(&config)?;
        let saved = model_path.parent().map(|p| p.join("split.json"));
        if let Some(p) = saved.filter(|p| p.is_file()) {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let train: Vec<usize> = serde_json::from_value(v["train"].clone())
                .map_err(|e| Error::corrupt(&p, e.to_string()))?;
            if train != splits.train_idx {
                return Err(Error::corrupt(
                    &p,
                    "the saved training split differs from the one reproduced from the config (different dataset files?)",
                ));
            }
        }
        Ok(TrainedRun {
            model_path,
            model,
            meta,
            config,
            splits,
            device,
        })
    }

    /// The saved split file of the run folder, if any.
    pub fn split_file(&self) -> Result<Option<SplitFile>> {
        let Some(p) = self.model_path.parent().map(|p| p.join("split.json")) else {
            return Ok(None);
        };
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::corrupt(&p, e.to_string()))
    }

    /// Resolves a forgetting scenario on this run's training split and builds its forget,
    /// retain and test sets on the run's device.
    pub fn scenario(&self, forget: &ForgetSpec, forget_seed: u64) -> Result<UnlearnData> {
        let labels = self.splits.full_train.labels_vec();
        let scenario = Scenario::resolve(
            forget,
            &self.splits.train_idx,
            &labels,
            self.splits.full_train.num_classes,
            forget_seed,
        )?;
        build_data(
            &self.splits.full_train,
            &self.splits.test,
            scenario,
            self.device,
        )
    }
}

/// The dataset to evaluate a saved model on, and its folder: the arguments if given, else what
/// the model's sidecar says it was trained on, else Fashion-MNIST from the default locations.
pub fn data_of(
    meta: Option<&CheckpointMeta>,
    dataset: Option<&str>,
    data_dir: Option<&Path>,
) -> (String, Option<PathBuf>) {
    let from_meta = |key: &str| {
        meta.and_then(|m| m.config.pointer(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let dataset = dataset
        .map(str::to_string)
        .or_else(|| from_meta("/data/dataset"))
        .unwrap_or_else(|| "fashion-mnist".to_string());
    let dir = data_dir
        .map(Path::to_path_buf)
        .or_else(|| from_meta("/data/data_dir").map(PathBuf::from));
    (dataset, dir)
}
