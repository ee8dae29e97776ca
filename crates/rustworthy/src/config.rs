//! Run configuration: a named preset or a TOML file, then command-line overrides, then one
//! validation pass. Unknown keys and invalid values are errors naming the field.

use rustworthy_core::{validate, DeviceSpec, Error, Result};
use rustworthy_models::{Arch, ModelSpec};
use rustworthy_robust::{AdvMethod, AdvTrainConfig};
use rustworthy_train::TrainConfig;
use rustworthy_zo::ZoTrainConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which data a run uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A named dataset (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`), the user's tensor
    /// files (`file:TRAIN[,TEST]`, `.safetensors` or `.npz` with `x` and `y`) or an image
    /// folder (`folder:ROOT`, one subfolder per class).
    pub dataset: String,
    /// Share of each class held out as the test set when the data has no test split of its
    /// own (user files without a test file; absent: 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
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
    /// Evaluate on only this many (seeded, drawn at random) test samples; 0 = the whole test
    /// split. For quick runs: metrics on a subset are noisier (report which one you used).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_subset: usize,
    /// Keep the whole dataset on the training device (avoids host->device copies per batch).
    #[serde(default = "yes")]
    pub on_device: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
    /// Architecture of the model zoo.
    pub arch: Arch,
    /// Seed of the weight initialisation.
    #[serde(default)]
    pub init_seed: u64,
    /// Per-channel mean the model subtracts from its [0, 1] input. Absent: the published
    /// statistics of a named dataset, or the training data's own mean for user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    /// Per-channel standard deviation the model divides by (absent: as for `mean`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
}

/// Where and how a run executes (does not change results, except the device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Device of the run (`auto`, `cpu`, `cuda`, `cuda:N`).
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
    /// The data.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// The training recipe.
    pub train: TrainConfig,
    /// Adversarial training (absent: standard training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTrainConfig>,
    /// Zeroth-order (DeepZero CGE) training instead of backpropagation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zo: Option<rustworthy_zo::ZoTrainConfig>,
    /// Where and how the run executes.
    pub run: RunSection,
}

impl RunConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        validate::in_half_open("data.val_fraction", self.data.val_fraction, 0.0, 1.0)?;
        if self.data.dataset.trim().is_empty() {
            return Err(Error::config("data.dataset", "must name a dataset"));
        }
        self.data
            .dataset
            .parse::<rustworthy_data::DataSource>()
            .map_err(|e| Error::config("data.dataset", e.to_string()))?;
        if let Some(f) = self.data.test_fraction {
            validate::in_half_open("data.test_fraction", f, 0.0, 1.0)?;
            if f == 0.0 {
                return Err(Error::config("data.test_fraction", "must be above 0"));
            }
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

    /// The model spec for this run's training data: the geometry and classes of `train`, the
    /// normalization of the config, else of the named dataset, else the training data's own
    /// per-channel mean and standard deviation (user data).
    pub fn model_spec_for(&self, train: &rustworthy_data::Dataset) -> Result<ModelSpec> {
        let (ch, h, w) = train.image_shape();
        let mut spec =
            self.spec_unchecked(ch as i64, (h as i64, w as i64), train.num_classes as i64);
        if crate::datasets::is_user_data(&self.data.dataset) {
            let (mean, std) = crate::datasets::channel_stats(train)?;
            spec.mean = self.model.mean.clone().unwrap_or(mean);
            spec.std = self.model.std.clone().unwrap_or(std);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The model spec for this run's dataset.
    pub fn model_spec(
        &self,
        in_channels: i64,
        size: (i64, i64),
        classes: i64,
    ) -> Result<ModelSpec> {
        let spec = self.spec_unchecked(in_channels, size, classes);
        spec.validate()?;
        Ok(spec)
    }

    fn spec_unchecked(&self, in_channels: i64, size: (i64, i64), classes: i64) -> ModelSpec {
        let ds = self.data.dataset.as_str();
        let mut spec = match ds {
            "cifar10" | "cifar100" => ModelSpec::cifar10(self.model.arch),
            _ => ModelSpec::fashion_mnist(self.model.arch),
        };
        if ds == "mnist" {
            spec.mean = vec![0.1307];
            spec.std = vec![0.3081];
        }
        if let Some(m) = &self.model.mean {
            spec.mean = m.clone();
        }
        if let Some(s) = &self.model.std {
            spec.std = s.clone();
        }
        spec.in_channels = in_channels;
        spec.input_size = size;
        spec.num_classes = classes;
        spec
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))
    }

    /// Reads a TOML file and checks it (a config file must be valid on its own); errors name
    /// the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c = Self::from_toml(&text, &path.display().to_string())?;
        c.validate().map_err(|e| e.in_file(path))?;
        Ok(c)
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
        "fmnist-lenet-adv-lamb",
        "fmnist-lenet-adv at 8x the batch (1024) with LAMB and a one-epoch warm-up, for data-parallel runs",
        include_str!("../../../presets/fmnist-lenet-adv-lamb.toml"),
    ),
    (
        "cifar10-resnet18",
        "ResNet-18 on CIFAR-10, the unlearning literature's original-model recipe (182 epochs)",
        include_str!("../../../presets/cifar10-resnet18.toml"),
    ),
];

/// Loads a training preset by name.
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

/// Command-line style overrides of a training config (absent fields keep the config's value).
#[derive(Clone, Debug, Default)]
pub struct TrainOverrides {
    /// Epochs.
    pub epochs: Option<usize>,
    /// Batch size.
    pub batch_size: Option<usize>,
    /// Base (peak) learning rate.
    pub lr: Option<f64>,
    /// Seed of the training randomness.
    pub seed: Option<u64>,
    /// Seed of the weight initialisation.
    pub init_seed: Option<u64>,
    /// Architecture.
    pub arch: Option<Arch>,
    /// Dataset.
    pub dataset: Option<String>,
    /// Dataset folder.
    pub data_dir: Option<PathBuf>,
    /// Training subset size (0 = all).
    pub train_subset: Option<usize>,
    /// Test subset size (0 = all).
    pub test_subset: Option<usize>,
    /// Validation share.
    pub val_fraction: Option<f64>,
    /// Device.
    pub device: Option<DeviceSpec>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// libtorch threads.
    pub threads: Option<usize>,
    /// Adversarial training method, or `none`.
    pub adv: Option<String>,
    /// l_inf radius of adversarial training.
    pub eps: Option<f64>,
    /// Attack steps of adversarial training.
    pub adv_steps: Option<usize>,
    /// Attack step size of adversarial training.
    pub adv_step_size: Option<f64>,
    /// GradAlign's penalty weight or Fast-BAT's lambda.
    pub adv_lambda: Option<f64>,
    /// TRADES' beta.
    pub adv_beta: Option<f64>,
    /// Validation samples attacked per epoch to detect catastrophic overfitting.
    pub monitor_samples: Option<usize>,
    /// Restore the most robust epoch and stop on catastrophic overfitting.
    pub stop_on_co: bool,
    /// Zeroth-order training (`cge`) or `none`.
    pub zo: Option<String>,
    /// Zeroth-order: share of coordinates left out.
    pub sparsity: Option<f64>,
    /// Zeroth-order: finite-difference radius.
    pub zo_mu: Option<f64>,
    /// Zeroth-order: redraw the coordinates every this many epochs.
    pub resample_every: Option<usize>,
    /// Precision of forward passes (fp32 or bf16 autocast).
    pub precision: Option<crate::models::Precision>,
    /// Channels-last memory layout.
    pub channels_last: bool,
    /// Optimizer implementation (auto, loop or fused).
    pub optim_impl: Option<crate::train::optim::OptimImpl>,
}

impl TrainOverrides {
    /// Applies the overrides to `c` (a preset or a file) and validates the result.
    pub fn apply(&self, mut c: RunConfig) -> Result<RunConfig> {
        let a = self;
        if let Some(v) = a.epochs {
            c.train.epochs = v;
        }
        if let Some(v) = a.precision {
            c.train.precision = v;
        }
        if a.channels_last {
            c.train.channels_last = true;
        }
        if let Some(v) = a.optim_impl {
            c.train.optim_impl = v;
        }
        if let Some(v) = a.batch_size {
            c.train.batch_size = v;
        }
        if let Some(v) = a.lr {
            c.train.lr.lr = v;
        }
        if let Some(v) = a.seed {
            c.train.seed = v;
        }
        if let Some(v) = a.init_seed {
            c.model.init_seed = v;
        }
        if let Some(v) = a.arch {
            c.model.arch = v;
        }
        if let Some(v) = &a.dataset {
            c.data.dataset = v.clone();
        }
        if let Some(v) = &a.data_dir {
            c.data.data_dir = Some(v.clone());
        }
        if let Some(v) = a.train_subset {
            c.data.train_subset = v;
        }
        if let Some(v) = a.test_subset {
            c.data.test_subset = v;
        }
        if let Some(v) = a.val_fraction {
            c.data.val_fraction = v;
        }
        if let Some(v) = a.device {
            c.run.device = v;
        }
        if let Some(v) = &a.out {
            c.run.out = v.clone();
        }
        if let Some(v) = a.threads {
            c.run.threads = v;
        }
        if a.adv.as_deref() == Some("none") {
            c.adv = None;
        } else if let Some(m) = &a.adv {
            let method: AdvMethod = m.parse()?;
            let eps = a.eps.or(c.adv.as_ref().map(|x| x.eps)).ok_or_else(|| {
                Error::config(
                    "adv.eps",
                    "adversarial training needs --eps (or adv.eps in the config)",
                )
            })?;
            match &mut c.adv {
                Some(x) if x.method == method => x.eps = eps,
                _ => c.adv = Some(AdvTrainConfig::new(method, eps)),
            }
        } else if let (Some(e), Some(x)) = (a.eps, c.adv.as_mut()) {
            x.eps = e;
        }
        let adv_flags = a.adv_steps.is_some()
            || a.adv_step_size.is_some()
            || a.adv_lambda.is_some()
            || a.adv_beta.is_some()
            || a.monitor_samples.is_some()
            || a.stop_on_co
            || a.eps.is_some();
        match c.adv.as_mut() {
            Some(x) => {
                if a.adv_steps.is_some() {
                    x.steps = a.adv_steps;
                }
                if a.adv_step_size.is_some() {
                    x.step_size = a.adv_step_size;
                }
                if a.adv_lambda.is_some() {
                    x.lambda = a.adv_lambda;
                }
                if a.adv_beta.is_some() {
                    x.beta = a.adv_beta;
                }
                if let Some(m) = a.monitor_samples {
                    x.monitor.samples = m;
                }
                if a.stop_on_co {
                    x.monitor.stop_on_co = true;
                }
            }
            None if adv_flags => return Err(Error::config(
                "adv",
                "adversarial-training flags need --adv METHOD (or an [adv] section in the config)",
            )),
            None => {}
        }
        match a.zo.as_deref() {
            Some("none") => c.zo = None,
            Some("cge") if c.zo.is_none() => c.zo = Some(ZoTrainConfig::new(0.9)),
            Some("cge") => {}
            Some(o) => {
                return Err(Error::config(
                    "zo",
                    format!("unknown zeroth-order training `{o}` (cge, none)"),
                ))
            }
            None => {}
        }
        let zo_flags = a.sparsity.is_some() || a.zo_mu.is_some() || a.resample_every.is_some();
        match c.zo.as_mut() {
            Some(z) => {
                if let Some(v) = a.sparsity {
                    z.sparsity = v;
                }
                if let Some(v) = a.zo_mu {
                    z.mu = v;
                }
                if let Some(v) = a.resample_every {
                    z.resample_every = v;
                }
            }
            None if zo_flags => {
                return Err(Error::config(
                    "zo",
                    "zeroth-order flags need --zo cge (or a [zo] section in the config)",
                ))
            }
            None => {}
        }
        c.validate()?;
        Ok(c)
    }
}

/// What a preset configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PresetKind {
    /// A training run ([`RunConfig`]; `rustworthy train --preset`).
    Train,
    /// An unlearning benchmark ([`crate::bench_unlearn::BenchConfig`];
    /// `rustworthy bench unlearn --preset`).
    BenchUnlearn,
}

/// One shipped preset.
#[derive(Clone, Debug, Serialize)]
pub struct PresetInfo {
    /// Its name.
    pub name: &'static str,
    /// What it configures.
    pub kind: PresetKind,
    /// One line on what it is for.
    pub description: &'static str,
    /// The TOML text.
    #[serde(skip)]
    pub toml: &'static str,
}

/// Every shipped preset, training presets first.
pub fn all_presets() -> Vec<PresetInfo> {
    let train = PRESETS.iter().map(|(n, d, t)| PresetInfo {
        name: n,
        kind: PresetKind::Train,
        description: d,
        toml: t,
    });
    let bench = crate::bench_unlearn::BENCH_PRESETS
        .iter()
        .map(|(n, d, t)| PresetInfo {
            name: n,
            kind: PresetKind::BenchUnlearn,
            description: d,
            toml: t,
        });
    train.chain(bench).collect()
}

/// Applies `key=value` assignments (dotted paths into the config, values in TOML syntax; a
/// value that is not valid TOML is taken as a string) and re-reads the config, so unknown keys
/// and invalid values are errors naming the field. Example: `train.epochs=5`,
/// `train.lr.schedule.name=step`, `data.dataset=mnist`.
pub fn apply_sets<T: Serialize + DeserializeOwned>(cfg: &T, sets: &[String]) -> Result<T> {
    if sets.is_empty() {
        let v = toml::Value::try_from(cfg).map_err(|e| Error::config("config", e.to_string()))?;
        return v
            .try_into()
            .map_err(|e: toml::de::Error| Error::config("config", e.to_string()));
    }
    let mut root =
        toml::Value::try_from(cfg).map_err(|e| Error::config("config", e.to_string()))?;
    for a in sets {
        let (key, raw) = a
            .split_once('=')
            .ok_or_else(|| Error::config("set", format!("`{a}` is not KEY=VALUE")))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(Error::config("set", format!("`{a}`: empty key")));
        }
        let value = parse_toml_value(raw.trim());
        let mut node = &mut root;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let table = node
                .as_table_mut()
                .ok_or_else(|| Error::config(parts[..i].join("."), "is a value, not a table"))?;
            if i + 1 == parts.len() {
                table.insert(part.to_string(), value.clone());
                break;
            }
            node = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
    }
    root.try_into()
        .map_err(|e: toml::de::Error| Error::config("set", e.to_string()))
}

fn parse_toml_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Wrap {
        v: toml::Value,
    }
    match toml::from_str::<Wrap>(&format!("v = {raw}")) {
        Ok(w) => w.v,
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// A config as TOML text (what `--print-config` shows; it reads back to the same config).
pub fn to_toml<T: Serialize>(cfg: &T) -> Result<String> {
    toml::to_string_pretty(cfg).map_err(|e| Error::config("config", e.to_string()))
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
    fn sets_apply_and_name_bad_fields() {
        let c = preset("fmnist-lenet").unwrap();
        let d = apply_sets(
            &c,
            &[
                "train.epochs=3".into(),
                "data.dataset=mnist".into(),
                "model.mean=[0.5]".into(),
            ],
        )
        .unwrap();
        assert_eq!(d.train.epochs, 3);
        assert_eq!(d.data.dataset, "mnist");
        assert_eq!(d.model.mean, Some(vec![0.5]));
        let e = apply_sets(&c, &["train.epohcs=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epohcs"), "{e}");
        let e = apply_sets(&c, &["train.epochs=many".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs") || e.contains("many"), "{e}");
        assert!(apply_sets(&c, &["noequals".into()]).is_err());
        // Printing and reading back gives the same config.
        let back: RunConfig = toml::from_str(&to_toml(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(apply_sets(&c, &[]).unwrap(), c);
    }

    #[test]
    fn every_preset_is_listed() {
        let all = all_presets();
        assert!(all.iter().any(|p| p.name == "fmnist-lenet-random10"));
        assert!(all.iter().any(|p| p.name == "fmnist-lenet"));
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
