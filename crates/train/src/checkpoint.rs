//! Checkpoints: the model as a PyTorch-compatible safetensors state dict, the optimizer state as
//! a second safetensors file, and a JSON sidecar (config, epoch, metrics, seeds) that is written
//! last and names the files it belongs to. Every file is written atomically and carries the epoch
//! in its name, so an interruption at any point leaves the previous checkpoint intact.

use crate::optim::Optimizer;
use rustworthy_core::fsutil::{atomic_write_with, write_json_atomic};
use rustworthy_core::{Error, Result};
use rustworthy_models::{Model, ModelSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The sidecar of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Sidecar format version; must equal [`FORMAT`] to load.
    pub format: u32,
    /// Architecture and input geometry of the saved model.
    pub model_spec: ModelSpec,
    /// The training configuration that produced this state.
    pub config: serde_json::Value,
    /// Completed epochs.
    pub epoch: usize,
    /// Optimizer steps taken so far (restores Adam's bias correction).
    pub optimizer_steps: u64,
    /// Every seed of the run, by name.
    pub seeds: BTreeMap<String, u64>,
    /// Metrics of the last completed epoch.
    pub metrics: serde_json::Value,
    /// Per-epoch history so far.
    pub history: Vec<serde_json::Value>,
    /// Model weights file, relative to the sidecar.
    pub model_file: String,
    /// Optimizer state file, relative to the sidecar (absent for a final model).
    pub optim_file: Option<String>,
    /// FNV-1a 64 checksums (hex) of the files above, by file name; checked on resume (absent in
    /// checkpoints written before checksums existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// FNV-1a 64 of a file's bytes, as 16 hex digits.
pub fn file_checksum(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// The checkpoint format version this build writes and reads.
pub const FORMAT: u32 = 1;
/// File name of the sidecar inside a checkpoint folder.
pub const SIDECAR: &str = "checkpoint.json";
/// The previous checkpoint's sidecar, kept so a damaged latest checkpoint can be skipped.
pub const PREVIOUS: &str = "checkpoint.prev.json";

/// A checkpoint folder of a training run.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The checkpoint folder `dir` (nothing is read or created yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Checkpoint { dir: dir.into() }
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a checkpoint exists here.
    pub fn exists(&self) -> bool {
        self.dir.join(SIDECAR).is_file()
    }

    /// Saves the state after `meta.epoch` epochs, keeps the previous checkpoint (its sidecar
    /// as [`PREVIOUS`]) and removes older epoch files.
    pub fn save(&self, model: &Model, opt: &Optimizer, mut meta: CheckpointMeta) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let model_file = format!("model-e{:04}.safetensors", meta.epoch);
        let optim_file = format!("optim-e{:04}.safetensors", meta.epoch);
        model.save(self.dir.join(&model_file))?;
        let state = opt.state_tensors();
        atomic_write_with(&self.dir.join(&optim_file), |tmp| {
            let refs: Vec<(&str, &tch::Tensor)> =
                state.iter().map(|(n, t)| (n.as_str(), t)).collect();
            tch::Tensor::write_safetensors(&refs, tmp).map_err(Error::from)
        })?;
        meta.format = FORMAT;
        meta.model_file = model_file.clone();
        meta.optim_file = Some(optim_file.clone());
        meta.optimizer_steps = opt.steps();
        meta.checksums = BTreeMap::new();
        for f in [&model_file, &optim_file] {
            meta.checksums
                .insert(f.clone(), file_checksum(&self.dir.join(f))?);
        }
        // The current checkpoint becomes the previous one, then the new sidecar is written.
        let latest = self.dir.join(SIDECAR);
        let mut keep = vec![model_file.clone(), optim_file.clone()];
        if let Ok(prev) = read_meta(&latest) {
            if prev.epoch != meta.epoch {
                write_json_atomic(&self.dir.join(PREVIOUS), &prev)?;
                keep.push(prev.model_file.clone());
                keep.extend(prev.optim_file.clone());
            }
        }
        write_json_atomic(&latest, &meta)?;
        // The sidecars now point at the new and the previous files: older epoch files can go.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let old = (name.starts_with("model-e") || name.starts_with("optim-e"))
                    && name.ends_with(".safetensors")
                    && !keep.contains(&name);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Reads the sidecar.
    pub fn meta(&self) -> Result<CheckpointMeta> {
        read_meta(&self.dir.join(SIDECAR))
    }

    /// Restores model and optimizer from the latest checkpoint, or, when that one is damaged
    /// (a file fails its checksum or does not load), from the previous one, saying so through
    /// `warn`; returns the sidecar of the checkpoint used.
    pub fn restore_or_previous(
        &self,
        model: &mut Model,
        opt: &mut Optimizer,
        warn: &mut dyn FnMut(String),
    ) -> Result<CheckpointMeta> {
        match self.restore_from(&self.dir.join(SIDECAR), model, opt) {
            Ok(m) => Ok(m),
            Err(e) => {
                let prev = self.dir.join(PREVIOUS);
                if !prev.is_file() {
                    return Err(e);
                }
                let m = self.restore_from(&prev, model, opt).map_err(|e2| {
                    Error::checkpoint(
                        &self.dir,
                        format!("the latest checkpoint is damaged ({e}) and so is the previous one ({e2})"),
                    )
                })?;
                warn(format!(
                    "the latest checkpoint is damaged ({e}); resuming from the previous one (epoch {})",
                    m.epoch
                ));
                Ok(m)
            }
        }
    }

    /// Restores model and optimizer from the latest checkpoint; returns the sidecar.
    pub fn restore(&self, model: &mut Model, opt: &mut Optimizer) -> Result<CheckpointMeta> {
        self.restore_from(&self.dir.join(SIDECAR), model, opt)
    }

    fn restore_from(
        &self,
        sidecar: &Path,
        model: &mut Model,
        opt: &mut Optimizer,
    ) -> Result<CheckpointMeta> {
        let meta = read_meta(sidecar)?;
        // Every file the sidecar names must be a plain file name inside the checkpoint folder.
        let names = std::iter::once(&meta.model_file)
            .chain(meta.optim_file.as_ref())
            .chain(meta.checksums.keys());
        for name in names {
            let p = Path::new(name);
            let plain = p.components().count() == 1
                && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(Error::checkpoint(
                    sidecar,
                    format!("names the file `{name}`, which is not a file name in the checkpoint folder"),
                ));
            }
        }
        for (f, sum) in &meta.checksums {
            let p = self.dir.join(f);
            let got = file_checksum(&p)?;
            if &got != sum {
                return Err(Error::checkpoint(
                    &p,
                    format!("checksum mismatch (expected {sum}, got {got}): the file is damaged"),
                ));
            }
        }
        if meta.model_spec != model.spec {
            return Err(Error::checkpoint(
                self.dir.join(SIDECAR),
                format!(
                    "checkpoint is for model {:?}, the run builds {:?}",
                    meta.model_spec, model.spec
                ),
            ));
        }
        model.load(self.dir.join(&meta.model_file))?;
        let optim_path = match &meta.optim_file {
            Some(f) => self.dir.join(f),
            None => {
                return Err(Error::checkpoint(
                    self.dir.join(SIDECAR),
                    "no optimizer state: this is a final model, not a resumable checkpoint",
                ))
            }
        };
        let tensors = tch::Tensor::read_safetensors(&optim_path)
            .map_err(|e| Error::checkpoint(&optim_path, e.to_string()))?;
        opt.load_state(tensors, meta.optimizer_steps)
            .map_err(|e| Error::checkpoint(&optim_path, e.to_string()))?;
        Ok(meta)
    }
}

/// Reads and validates a checkpoint sidecar.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(path, format!("unreadable sidecar: {e}")))?;
    if meta.format != FORMAT {
        return Err(Error::checkpoint(
            path,
            format!(
                "format {} is not supported (expected {FORMAT})",
                meta.format
            ),
        ));
    }
    Ok(meta)
}

/// Sidecar path of a model weights file: `x.safetensors` -> `x.json`.
pub fn sidecar_of(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Saves a final model: `path` (safetensors state dict) plus `path.with_extension("json")`.
pub fn save_model(path: &Path, model: &Model, mut meta: CheckpointMeta) -> Result<()> {
    model.save(path)?;
    meta.format = FORMAT;
    meta.model_file = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    meta.optim_file = None;
    write_json_atomic(&sidecar_of(path), &meta)
}

/// Loads a model saved by [`save_model`] (or a checkpoint's model file next to its sidecar), on
/// `device`. A weights file without a sidecar needs an explicit `spec`.
pub fn load_model(
    path: &Path,
    spec: Option<ModelSpec>,
    device: tch::Device,
) -> Result<(Model, Option<CheckpointMeta>)> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "no such file"));
    }
    let side = sidecar_of(path);
    let meta = if side.is_file() {
        Some(read_meta(&side)?)
    } else {
        let ck = path.parent().map(|p| p.join(SIDECAR));
        match ck {
            Some(p) if p.is_file() => Some(read_meta(&p)?),
            _ => None,
        }
    };
    let spec = match (spec, &meta) {
        (Some(s), _) => s,
        (None, Some(m)) => m.model_spec.clone(),
        (None, None) => {
            return Err(Error::checkpoint(
                path,
                format!(
                    "no sidecar {} to say which model this is; pass the model spec (--arch ...)",
                    side.display()
                ),
            ))
        }
    };
    let load = || -> Result<Model> {
        // A sidecar that promises more weights than the file can hold is refused before
        // anything that size is allocated.
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let need = spec.min_weight_bytes();
        if need > bytes {
            return Err(Error::corrupt(
                path,
                format!(
                    "the model described by its sidecar needs at least {need} bytes of weights, \
                     but the file has {bytes}"
                ),
            ));
        }
        let mut model = Model::new(spec, device)?;
        model.load(path)?;
        Ok(model)
    };
    let model = load().map_err(|e| e.in_file(path))?;
    Ok((model, meta))
}
