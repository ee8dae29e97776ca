//! Opening a model the way a PyTorch user brings it: a run folder or `model.safetensors` with
//! its sidecar, a TorchScript module (`torch.jit.script`/`trace`), or a bare state dict
//! (safetensors or `torch.save` `.pt`/`.pth`, read without executing anything) for one of the
//! zoo's architectures, with foreign names mapped.

use rustworthy_core::{Error, Result};
use rustworthy_models::foreign::{detect_format, infer_spec, MapRules, WeightsFormat};
use rustworthy_models::script::ScriptOptions;
use rustworthy_models::{Arch, Model};
use rustworthy_train::checkpoint::{load_model, sidecar_of, CheckpointMeta};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a model comes from and what to assume about it when the file does not say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSource {
    /// A run folder, a `model.safetensors` with its `model.json` sidecar, a TorchScript file,
    /// or a bare weights file (safetensors, `.pt`/`.pth`).
    pub path: PathBuf,
    /// The zoo architecture of a bare weights file (required for one).
    pub arch: Option<Arch>,
    /// Per-channel mean the model subtracts from [0, 1] inputs (a bare weights file: else
    /// the file's normalization buffers, else the dataset's usual values; TorchScript: else
    /// none).
    pub mean: Option<Vec<f64>>,
    /// Per-channel standard deviation (as for `mean`).
    pub std: Option<Vec<f64>>,
    /// Number of classes the model must have (else read from the file or the module's output).
    pub num_classes: Option<i64>,
    /// Extra rename rules `old=new` for a bare weights file's names.
    pub map: Vec<String>,
}

impl ModelSource {
    /// A model at `path`, nothing assumed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelSource {
            path: path.into(),
            ..Default::default()
        }
    }
}

/// How a model was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A rustworthy model file with its sidecar.
    Sidecar,
    /// A TorchScript module.
    TorchScript,
    /// A bare state dict for a zoo architecture.
    StateDict,
}

/// A model, with its sidecar when it has one.
pub struct OpenedModel {
    /// The model.
    pub model: Model,
    /// Its sidecar (training config, seeds, metrics), if any.
    pub meta: Option<CheckpointMeta>,
    /// How it was opened.
    pub kind: ModelKind,
    /// What was read or assumed (mapping rules that fired, normalization taken, ...).
    pub notes: Vec<String>,
}

/// The model file of a path: `model.safetensors` inside a folder, else the path itself.
pub fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// Whether `path` holds its rustworthy sidecar (`model.json` beside `model.safetensors`).
pub fn has_sidecar(path: &Path) -> bool {
    sidecar_of(&model_file(path)).is_file()
}

/// Whether `path` is a TorchScript archive (a zip holding `code/` and `constants.pkl`), as
/// opposed to a `torch.save` state dict (a zip holding `data.pkl` only).
pub fn is_torchscript(path: &Path) -> Result<bool> {
    if detect_format(path)? != WeightsFormat::TorchZip {
        return Ok(false);
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut z = zip::ZipArchive::new(f)
        .map_err(|e| Error::corrupt(path, format!("unreadable zip archive: {e}")))?;
    let mut code = false;
    let mut constants = false;
    for i in 0..z.len() {
        let Ok(entry) = z.by_index_raw(i) else {
            continue;
        };
        let name = entry.name();
        code |= name.contains("/code/");
        constants |= name.ends_with("/constants.pkl");
    }
    Ok(code && constants)
}

/// Opens the model of `src` on `device`. `input` is the geometry of the data it will see
/// (`channels`, `(height, width)`), which a TorchScript module does not record.
pub fn open_model(
    src: &ModelSource,
    input: (i64, (i64, i64)),
    device: tch::Device,
) -> Result<OpenedModel> {
    let path = model_file(&src.path);
    if !path.is_file() {
        return Err(Error::checkpoint(&path, "no such file"));
    }
    let explicit = src.arch.is_some() || src.mean.is_some() || !src.map.is_empty();
    let script = is_torchscript(&path)?;
    if has_sidecar(&path) && !explicit && !script {
        let (model, meta) = load_model(&path, None, device)?;
        check_classes(src, &model, &path)?;
        return Ok(OpenedModel {
            model,
            meta,
            kind: ModelKind::Sidecar,
            notes: Vec::new(),
        });
    }
    if script {
        if src.arch.is_some() || !src.map.is_empty() {
            return Err(Error::config(
                "arch",
                format!(
                    "{} is a TorchScript module: it carries its own architecture and names (leave out --arch and --map)",
                    path.display()
                ),
            ));
        }
        // A module written by rustworthy (pruned, unlearned) has a sidecar with its spec.
        let meta = match has_sidecar(&path) {
            true => Some(rustworthy_train::checkpoint::read_meta(&sidecar_of(&path))?)
                .filter(|m| m.model_spec.arch == Arch::TorchScript),
            false => None,
        };
        let mut opts = match &meta {
            Some(m) => ScriptOptions::from_spec(&m.model_spec),
            None => ScriptOptions::new(input.0, input.1),
        };
        if src.mean.is_some() {
            opts.mean = src.mean.clone();
            opts.std = src.std.clone();
        }
        opts.num_classes = src.num_classes.or(opts.num_classes);
        let model = Model::from_torchscript(&path, opts, device)?;
        let note = format!(
            "TorchScript module, {} classes, input {}x{}x{}",
            model.spec.num_classes,
            model.spec.in_channels,
            model.spec.input_size.0,
            model.spec.input_size.1
        );
        return Ok(OpenedModel {
            model,
            meta,
            kind: ModelKind::TorchScript,
            notes: vec![note],
        });
    }
    let arch = src.arch.ok_or_else(|| {
        Error::config(
            "arch",
            format!(
                "{} has no rustworthy sidecar: name its architecture with --arch ({})",
                path.display(),
                Arch::ALL.map(|a| a.name()).join(", ")
            ),
        )
    })?;
    let mut rules = MapRules::default().with_renames(&src.map)?;
    let inferred = infer_spec(&path, arch, &rules)?;
    let mut spec = inferred.spec.clone();
    let mut notes = inferred.notes.clone();
    if let Some(m) = &src.mean {
        spec.mean = m.clone();
        rules.read_normalization = false;
        notes.push(format!("normalization mean {m:?} given"));
    }
    if let Some(s) = &src.std {
        spec.std = s.clone();
        rules.read_normalization = false;
    }
    let mut model = Model::new(spec, device)?;
    let report = model.load_foreign(&path, &rules)?;
    notes.push(report.to_string());
    check_classes(src, &model, &path)?;
    Ok(OpenedModel {
        model,
        meta: None,
        kind: ModelKind::StateDict,
        notes,
    })
}

fn check_classes(src: &ModelSource, model: &Model, path: &Path) -> Result<()> {
    if let Some(n) = src.num_classes {
        if n != model.spec.num_classes {
            return Err(Error::invalid(format!(
                "{}: the model has {} outputs but {n} classes were asked for",
                path.display(),
                model.spec.num_classes
            )));
        }
    }
    Ok(())
}

/// A saved model with the test set it is evaluated or attacked on.
pub struct ModelWithData {
    /// The model.
    pub opened: OpenedModel,
    /// The test set (on the CPU), checked against the model's input shape and classes.
    pub test: rustworthy_data::Dataset,
    /// The dataset's name (as given, or as the model's sidecar records it).
    pub dataset: String,
}

/// Opens `src` with the test set of `dataset` (default: what the model's sidecar says it was
/// trained on, else Fashion-MNIST). A TorchScript module takes its input geometry from the
/// data; the model's input shape and class count are checked against the data.
pub fn open_with_test_data(
    src: &ModelSource,
    dataset: Option<&str>,
    data_dir: Option<&Path>,
    device: tch::Device,
) -> Result<ModelWithData> {
    let path = model_file(&src.path);
    let meta = if has_sidecar(&path) {
        Some(rustworthy_train::checkpoint::read_meta(&sidecar_of(&path))?)
    } else {
        None
    };
    let (dataset, dir) = crate::trained::data_of(meta.as_ref(), dataset, data_dir);
    let test = crate::datasets::load_test(&dataset, dir.as_deref(), meta.as_ref())?;
    if test.is_empty() {
        return Err(Error::invalid(format!("{dataset}: the test set is empty")));
    }
    let (c, h, w) = test.image_shape();
    let opened = open_model(src, (c as i64, (h as i64, w as i64)), device)?;
    let model = &opened.model;
    model.check_input(&test.images.narrow(0, 0, 1).to_device(device))?;
    if test.num_classes as i64 != model.spec.num_classes {
        return Err(Error::invalid(format!(
            "model has {} outputs but {dataset} has {} classes",
            model.spec.num_classes, test.num_classes
        )));
    }
    Ok(ModelWithData {
        opened,
        test,
        dataset,
    })
}
