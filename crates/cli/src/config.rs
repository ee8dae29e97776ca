//! Run configuration: a named preset or a TOML file, then command-line overrides, then one
//! validation pass. Unknown keys and invalid values are errors naming the field.

use rustworthy_core::{validate, DeviceSpec, Error, Result};
use rustworthy_models::{Arch, ModelSpec};
use rustworthy_robust::AdvTrainConfig;
use rustworthy_train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which data a run uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// fashion-mnist, mnist, cifar10, cifar100
    pub dataset: String,
    /// Folder holding the dataset files (else RUSTWORTHY_DATA, else the system location).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Share of each training class held out for validation.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the validation split.
    #[serde(default)]
    pub split_seed: u64,
    /// Train on only this many (seeded, class-balanced-at-random) training samples; 0 = all.
    #[serde(default)]
    pub train_subset: usize,
    /// Keep the whole dataset on the training device (avoids host->device copies per batch).
    #[serde(default = "yes")]
    pub on_device: bool,
}

fn default_val_fraction() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}

/// Which model a run builds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Seed of the weight initialisation.
    #[serde(default)]
    pub init_seed: u64,
}

/// Where and how a run executes (does not change results, except the device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    #[serde(default)]
    pub device: DeviceSpec,
    /// Output folder.
    pub out: PathBuf,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[serde(default)]
    pub threads: usize,
}

/// A whole `train` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Adversarial training (absent: standard training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTrainConfig>,
    /// Zeroth-order (DeepZero CGE) training instead of backpropagation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zo: Option<rustworthy_zo::ZoTrainConfig>,
    pub run: RunSection,
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        validate::in_half_open("data.val_fraction", self.data.val_fraction, 0.0, 1.0)?;
        if self.data.dataset.trim().is_empty() {
            return Err(Error::config("data.dataset", "must name a dataset"));
        }
        self.train.validate().map_err(|e| prefix(e, "train."))?;
        if let Some(a) = &self.adv {
            a.validate()?;
        }
        if let Some(z) = &self.zo {
            z.validate()?;
            if self.adv.is_some() {
                return Err(Error::config(
                    "zo",
                    "zeroth-order training and adversarial training cannot be combined",
                ));
            }
        }
        if self.run.out.as_os_str().is_empty() {
            return Err(Error::config("run.out", "must be a folder path"));
        }
        Ok(())
    }

    /// The model spec for this run's dataset.
    pub fn model_spec(
        &self,
        in_channels: i64,
        size: (i64, i64),
        classes: i64,
    ) -> Result<ModelSpec> {
        let ds = self.data.dataset.as_str();
        let mut spec = match ds {
            "cifar10" | "cifar100" => ModelSpec::cifar10(self.model.arch),
            _ => ModelSpec::fashion_mnist(self.model.arch),
        };
        if ds == "mnist" {
            spec.mean = vec![0.1307];
            spec.std = vec![0.3081];
        }
        spec.in_channels = in_channels;
        spec.input_size = size;
        spec.num_classes = classes;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

/// Prefixes the field name of a config error (so `epochs` reads `train.epochs`).
fn prefix(e: Error, p: &str) -> Error {
    match e {
        Error::Config { field, msg } => Error::Config {
            field: format!("{p}{field}"),
            msg,
        },
        other => other,
    }
}

/// Presets shipped with the binary (the files live in `presets/`).
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "fmnist-lenet",
        "LeNet-5 on Fashion-MNIST; >= 90% test accuracy in minutes on 2 CPU cores (the main job)",
        include_str!("../../../presets/fmnist-lenet.toml"),
    ),
    (
        "fmnist-mlp",
        "MLP on Fashion-MNIST; a fast baseline",
        include_str!("../../../presets/fmnist-mlp.toml"),
    ),
    (
        "fmnist-resnet18",
        "ResNet-18 (CIFAR variant) on Fashion-MNIST with crop+flip augmentation; for GPUs",
        include_str!("../../../presets/fmnist-resnet18.toml"),
    ),
    (
        "fmnist-lenet-adv",
        "LeNet-5 on Fashion-MNIST for adversarial training (pick the method with --adv; eps 0.1, cyclic lr)",
        include_str!("../../../presets/fmnist-lenet-adv.toml"),
    ),
    (
        "cifar10-resnet18",
        "ResNet-18 on CIFAR-10, the unlearning literature's original-model recipe (182 epochs)",
        include_str!("../../../presets/cifar10-resnet18.toml"),
    ),
];

/// Loads a preset by name.
pub fn preset(name: &str) -> Result<RunConfig> {
    match PRESETS.iter().find(|(n, _, _)| *n == name) {
        Some((n, _, text)) => RunConfig::from_toml(text, &format!("preset {n}")),
        None => Err(Error::config(
            "preset",
            format!(
                "unknown preset `{name}`; known: {}",
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_validates() {
        for (name, _, _) in PRESETS {
            let c = preset(name).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let mut text = PRESETS[0].2.to_string();
        text = text.replace("[train]", "[train]\nepohcs = 3");
        let e = RunConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("epohcs"), "{e}");
    }

    #[test]
    fn invalid_value_is_named() {
        let mut c = preset("fmnist-lenet").unwrap();
        c.train.lr.lr = f64::NAN;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("train.lr"), "{e}");
        let mut c = preset("fmnist-lenet").unwrap();
        c.data.val_fraction = 1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data.val_fraction"));
        let text = PRESETS[0]
            .2
            .replace("arch = \"lenet\"", "arch = \"lenet9\"");
        let e = RunConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lenet9"), "{e}");
        assert!(preset("nope")
            .unwrap_err()
            .to_string()
            .contains("fmnist-lenet"));
    }
}
