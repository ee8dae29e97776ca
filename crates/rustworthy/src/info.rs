//! What `rustworthy info` shows: presets, the model zoo's sizes, dataset availability and
//! summaries, and an architecture's layers.

use crate::config::{all_presets, PresetInfo, PresetKind};
use rustworthy_core::Result;
use rustworthy_data::registry::{dataset_summary, load_dataset};
use rustworthy_models::{Arch, LayerInfo, Model, ModelSpec};
use serde::Serialize;
use std::path::PathBuf;

/// What to collect.
#[derive(Clone, Debug, Default)]
pub struct InfoRequest {
    /// List the presets.
    pub presets: bool,
    /// The model zoo's sizes and whether Fashion-MNIST is installed.
    pub overview: bool,
    /// Summarise this dataset.
    pub dataset: Option<String>,
    /// Where datasets are read from.
    pub data_dir: Option<PathBuf>,
    /// Summarise this architecture.
    pub arch: Option<Arch>,
}

/// Parameter counts of one architecture on the two input geometries.
#[derive(Clone, Debug, Serialize)]
pub struct ZooEntry {
    /// Architecture name.
    pub arch: String,
    /// Trainable parameters for 1x28x28 inputs and 10 classes.
    pub params_fmnist: i64,
    /// Trainable parameters for 3x32x32 inputs and 10 classes.
    pub params_cifar: i64,
}

/// One architecture's layers.
#[derive(Clone, Debug, Serialize)]
pub struct ArchInfo {
    /// Architecture name.
    pub arch: String,
    /// Every variable.
    pub layers: Vec<LayerInfo>,
    /// Trainable parameters.
    pub num_params: i64,
}

/// The collected information.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Info {
    /// Presets (training and benchmark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presets: Option<Vec<PresetInfo>>,
    /// The model zoo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<ZooEntry>>,
    /// Whether Fashion-MNIST was found (and its sizes), or why not.
    #[serde(rename = "fashion-mnist", skip_serializing_if = "Option::is_none")]
    pub fashion_mnist: Option<String>,
    /// A dataset's summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<serde_json::Value>,
    /// An architecture's layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ArchInfo>,
}

impl Info {
    /// As one line of JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

impl PresetInfo {
    /// `train` or `bench unlearn`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            PresetKind::Train => "train",
            PresetKind::BenchUnlearn => "bench unlearn",
        }
    }
}

/// Pretty JSON of a value.
pub fn pretty(v: &serde_json::Value) -> Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

/// Collects what `req` asks for.
pub fn collect(req: &InfoRequest) -> Result<Info> {
    let mut info = Info::default();
    if req.presets {
        info.presets = Some(all_presets());
    }
    if req.overview {
        let mut rows = Vec::new();
        for arch in Arch::ALL {
            let fm = Model::new(ModelSpec::fashion_mnist(arch), tch::Device::Cpu)?.num_params();
            let cf = Model::new(ModelSpec::cifar10(arch), tch::Device::Cpu)?.num_params();
            rows.push(ZooEntry {
                arch: arch.name().to_string(),
                params_fmnist: fm,
                params_cifar: cf,
            });
        }
        info.models = Some(rows);
        info.fashion_mnist = Some(
            match load_dataset("fashion-mnist", req.data_dir.as_deref()) {
                Ok((tr, te)) => format!("found ({} train, {} test)", tr.len(), te.len()),
                Err(e) => e.to_string(),
            },
        );
    }
    if let Some(name) = &req.dataset {
        let (tr, te) = load_dataset(name, req.data_dir.as_deref())?;
        info.dataset =
            Some(serde_json::json!({"train": dataset_summary(&tr), "test": dataset_summary(&te)}));
    }
    if let Some(arch) = req.arch {
        let spec = match req.dataset.as_deref() {
            Some("cifar10") | Some("cifar100") => ModelSpec::cifar10(arch),
            _ => ModelSpec::fashion_mnist(arch),
        };
        let m = Model::new(spec, tch::Device::Cpu)?;
        info.model = Some(ArchInfo {
            arch: format!("{arch:?}"),
            layers: m.summary(),
            num_params: m.num_params(),
        });
    }
    Ok(info)
}
