//! What a model is: its architecture and the geometry/normalization of its input.

use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A network architecture: one of the model zoo, or [`Arch::TorchScript`] for a user's module
/// loaded with [`crate::Model::from_torchscript`].
///
/// Serialized as its kebab-case name (`"mlp"`, `"lenet"`, `"resnet18"`, `"resnet20"`,
/// `"preact-resnet18"`, `"vgg16-bn"`, `"torchscript"`); parsing also accepts `"lenet5"`, any
/// case, and `_` for `-`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    /// Two hidden layers of 256 units with ReLU.
    Mlp,
    /// LeNet-5 (padded first convolution).
    Lenet,
    /// ResNet-18, CIFAR variant (3x3 stem, no max-pool).
    Resnet18,
    /// ResNet-20 for CIFAR with parameter-free (option A) shortcuts.
    Resnet20,
    /// Pre-activation ResNet-18.
    PreactResnet18,
    /// VGG-16 with batch norm and a single linear classifier.
    Vgg16Bn,
    /// A TorchScript module (`torch.jit.script` / `torch.jit.trace`) loaded from a file with
    /// [`crate::Model::from_torchscript`]. Not a zoo architecture: [`crate::Model::new`] cannot
    /// build it from a spec, and it has no feature/head split
    /// ([`crate::Model::has_feature_head`]).
    TorchScript,
}

impl Arch {
    /// Every zoo architecture (those [`crate::Model::new`] builds), in a fixed order;
    /// [`Arch::TorchScript`] is not among them.
    pub const ALL: [Arch; 6] = [
        Arch::Mlp,
        Arch::Lenet,
        Arch::Resnet18,
        Arch::Resnet20,
        Arch::PreactResnet18,
        Arch::Vgg16Bn,
    ];

    /// The canonical (kebab-case) name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Lenet => "lenet",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet20 => "resnet20",
            Arch::PreactResnet18 => "preact-resnet18",
            Arch::Vgg16Bn => "vgg16-bn",
            Arch::TorchScript => "torchscript",
        }
    }

    /// Whether the network has batch-norm layers (train and eval mode then differ). Unknown for
    /// [`Arch::TorchScript`], which answers `true` (train and eval mode may differ).
    pub fn has_batch_norm(self) -> bool {
        !matches!(self, Arch::Mlp | Arch::Lenet)
    }

    /// Whether this is an architecture of the zoo, built from a spec by [`crate::Model::new`]
    /// (everything but [`Arch::TorchScript`]).
    pub fn is_zoo(self) -> bool {
        self != Arch::TorchScript
    }

    fn valid_names() -> String {
        let mut names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        names.push("lenet5");
        names.join(", ")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        let arch = match key.as_str() {
            "mlp" => Arch::Mlp,
            "lenet" | "lenet5" | "lenet-5" => Arch::Lenet,
            "resnet18" | "resnet-18" => Arch::Resnet18,
            "resnet20" | "resnet-20" => Arch::Resnet20,
            "preact-resnet18" | "preactresnet18" | "preact-resnet-18" => Arch::PreactResnet18,
            "vgg16-bn" | "vgg16bn" => Arch::Vgg16Bn,
            "torchscript" | "torch-script" => Arch::TorchScript,
            _ => {
                return Err(Error::config(
                    "model.arch",
                    format!("unknown architecture `{s}`; valid: {}", Arch::valid_names()),
                ))
            }
        };
        Ok(arch)
    }
}

impl TryFrom<String> for Arch {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.name().to_string()
    }
}

/// The hidden-layer nonlinearity of a zoo network. ReLU is the architectures' own; the others
/// exist for studies of models that differ in a known attribute (reverse engineering of
/// deceptions). Serialized as `"relu"`, `"tanh"`, `"elu"`; a spec without the field is ReLU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`.
    #[default]
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `x` for `x > 0`, `exp(x) - 1` otherwise (alpha 1).
    Elu,
}

impl Activation {
    /// Every activation, in a fixed order.
    pub const ALL: [Activation; 3] = [Activation::Relu, Activation::Tanh, Activation::Elu];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Elu => "elu",
        }
    }

    /// Whether this is ReLU (the default, left out of serialized specs).
    pub fn is_relu(&self) -> bool {
        *self == Activation::Relu
    }

    /// Applies the nonlinearity.
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Elu => x.elu(),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "elu" => Ok(Activation::Elu),
            _ => Err(Error::config(
                "model.activation",
                format!("unknown activation `{s}`; valid: relu, tanh, elu"),
            )),
        }
    }
}

/// Fashion-MNIST channel mean (pixels in [0, 1]).
pub const FASHION_MNIST_MEAN: [f64; 1] = [0.2860];
/// Fashion-MNIST channel standard deviation.
pub const FASHION_MNIST_STD: [f64; 1] = [0.3530];
/// CIFAR-10 per-channel mean (RGB, pixels in [0, 1]).
pub const CIFAR10_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation.
pub const CIFAR10_STD: [f64; 3] = [0.2470, 0.2435, 0.2616];

/// Everything needed to build a model: architecture, input geometry, classes and the
/// per-channel normalization applied inside the model.
///
/// Inputs to a model are always images in [0, 1] of shape `[B, in_channels, H, W]` with
/// `(H, W) = input_size`; the model itself computes `(x - mean) / std` per channel. `mean` and
/// `std` are constants of the spec and never stored in weight files.
///
/// Deserializing validates the spec (see [`ModelSpec::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSpec")]
pub struct ModelSpec {
    /// Network architecture.
    pub arch: Arch,
    /// Number of input channels `C`.
    pub in_channels: i64,
    /// Number of output logits.
    pub num_classes: i64,
    /// Input height and width.
    pub input_size: (i64, i64),
    /// Per-channel mean subtracted inside the model (length `in_channels`).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by inside the model (length `in_channels`).
    pub std: Vec<f64>,
    /// Hidden-layer nonlinearity (ReLU unless set; other values for MLP, LeNet and the
    /// CIFAR ResNets only).
    #[serde(default, skip_serializing_if = "Activation::is_relu")]
    pub activation: Activation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    arch: Arch,
    in_channels: i64,
    num_classes: i64,
    input_size: (i64, i64),
    mean: Vec<f64>,
    std: Vec<f64>,
    #[serde(default)]
    activation: Activation,
}

impl TryFrom<RawSpec> for ModelSpec {
    type Error = Error;
    fn try_from(r: RawSpec) -> Result<Self> {
        let spec = ModelSpec {
            arch: r.arch,
            in_channels: r.in_channels,
            num_classes: r.num_classes,
            input_size: r.input_size,
            mean: r.mean,
            std: r.std,
            activation: r.activation,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl ModelSpec {
    /// Fashion-MNIST geometry: 1x28x28 inputs, 10 classes, mean 0.2860, std 0.3530.
    pub fn fashion_mnist(arch: Arch) -> ModelSpec {
        ModelSpec {
            activation: Default::default(),
            arch,
            in_channels: 1,
            num_classes: 10,
            input_size: (28, 28),
            mean: FASHION_MNIST_MEAN.to_vec(),
            std: FASHION_MNIST_STD.to_vec(),
        }
    }

    /// CIFAR-10 geometry: 3x32x32 inputs, 10 classes, the usual CIFAR-10 mean/std.
    pub fn cifar10(arch: Arch) -> ModelSpec {
        ModelSpec {
            activation: Default::default(),
            arch,
            in_channels: 3,
            num_classes: 10,
            input_size: (32, 32),
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
        }
    }

    /// The same spec with another hidden-layer nonlinearity.
    pub fn with_activation(mut self, activation: Activation) -> ModelSpec {
        self.activation = activation;
        self
    }

    /// The same spec with another number of classes.
    pub fn with_num_classes(mut self, num_classes: i64) -> ModelSpec {
        self.num_classes = num_classes;
        self
    }

    /// The expected input shape for a batch of `batch` images: `[batch, C, H, W]`.
    pub fn input_shape(&self, batch: i64) -> [i64; 4] {
        [
            batch,
            self.in_channels,
            self.input_size.0,
            self.input_size.1,
        ]
    }

    /// A lower bound on the bytes of float32 weights a model of this spec has (its classifier
    /// head and, for MLP and LeNet, the first fully connected layer, whose size grows with the
    /// input): what a weights file for it must at least hold. Saturates instead of overflowing;
    /// 0 for TorchScript (the module knows its own size).
    pub fn min_weight_bytes(&self) -> u64 {
        let (c, (h, w)) = (
            self.in_channels.max(0) as u64,
            (
                self.input_size.0.max(0) as u64,
                self.input_size.1.max(0) as u64,
            ),
        );
        let classes = self.num_classes.max(0) as u64;
        let (features, first): (u64, u64) = match self.arch {
            Arch::Mlp => (
                256,
                c.saturating_mul(h).saturating_mul(w).saturating_mul(256),
            ),
            Arch::Lenet => {
                let side = |s: u64| (s / 2).saturating_sub(4) / 2;
                (
                    84,
                    (16 * side(h)).saturating_mul(side(w)).saturating_mul(120),
                )
            }
            Arch::Resnet18 | Arch::PreactResnet18 | Arch::Vgg16Bn => (512, 0),
            Arch::Resnet20 => (64, 0),
            Arch::TorchScript => return 0,
        };
        classes
            .saturating_mul(features + 1)
            .saturating_add(first)
            .saturating_mul(4)
    }

    /// Checks sizes are positive, `mean`/`std` have one finite entry per channel, `std > 0`,
    /// and the input is large enough for the architecture.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels < 1 {
            return Err(Error::config(
                "model.in_channels",
                format!("must be >= 1, got {}", self.in_channels),
            ));
        }
        if self.num_classes < 1 {
            return Err(Error::config(
                "model.num_classes",
                format!("must be >= 1, got {}", self.num_classes),
            ));
        }
        let (h, w) = self.input_size;
        if h < 1 || w < 1 {
            return Err(Error::config(
                "model.input_size",
                format!("height and width must be >= 1, got ({h}, {w})"),
            ));
        }
        for (field, values) in [("model.mean", &self.mean), ("model.std", &self.std)] {
            if values.len() as i64 != self.in_channels {
                return Err(Error::config(
                    field,
                    format!(
                        "needs one entry per input channel ({}), got {}",
                        self.in_channels,
                        values.len()
                    ),
                ));
            }
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                return Err(Error::config(
                    field,
                    format!("entries must be finite, got {v}"),
                ));
            }
        }
        if let Some(s) = self.std.iter().find(|s| **s <= 0.0) {
            return Err(Error::config(
                "model.std",
                format!("entries must be > 0, got {s}"),
            ));
        }
        if !self.activation.is_relu()
            && !matches!(
                self.arch,
                Arch::Mlp | Arch::Lenet | Arch::Resnet18 | Arch::Resnet20
            )
        {
            return Err(Error::config(
                "model.activation",
                format!(
                    "{} is built with ReLU only; {} is available for mlp, lenet, resnet18 and resnet20",
                    self.arch, self.activation
                ),
            ));
        }
        let min = self.min_input_size();
        if h < min || w < min {
            return Err(Error::config(
                "model.input_size",
                format!(
                    "{} needs inputs of at least {min}x{min}, got {h}x{w}",
                    self.arch
                ),
            ));
        }
        Ok(())
    }

    /// Smallest height/width the architecture accepts.
    fn min_input_size(&self) -> i64 {
        match self.arch {
            Arch::Mlp => 1,
            // conv(pad 2) -> pool 2 -> conv(k5) -> pool 2 must leave at least 1x1.
            Arch::Lenet => 12,
            Arch::Resnet18 | Arch::Resnet20 | Arch::PreactResnet18 => 4,
            // Five ceil-mode pools: 16x16 reaches 1x1 exactly at the last one.
            Arch::Vgg16Bn => 16,
            // The module's own requirements are unknown here; its first forward pass checks.
            Arch::TorchScript => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.name()));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), a);
        }
        assert_eq!("LeNet5".parse::<Arch>().unwrap(), Arch::Lenet);
        assert_eq!("vgg16_bn".parse::<Arch>().unwrap(), Arch::Vgg16Bn);
        let e = "resnet50".parse::<Arch>().unwrap_err();
        assert!(matches!(e, Error::Config { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("model.arch") && msg.contains("preact-resnet18"),
            "{msg}"
        );
        assert!(serde_json::from_str::<Arch>("\"alexnet\"").is_err());
        let ts = Arch::TorchScript;
        assert_eq!("TorchScript".parse::<Arch>().unwrap(), ts);
        assert_eq!(serde_json::to_string(&ts).unwrap(), "\"torchscript\"");
        assert!(!Arch::ALL.contains(&ts) && !ts.is_zoo());
        assert!(Arch::ALL.iter().all(|a| a.is_zoo()));
    }

    #[test]
    fn presets_are_valid() {
        for a in Arch::ALL {
            ModelSpec::fashion_mnist(a).validate().unwrap();
            ModelSpec::cifar10(a).validate().unwrap();
        }
    }

    #[test]
    fn validation_names_the_field() {
        let base = ModelSpec::cifar10(Arch::Resnet20);
        let cases: Vec<(ModelSpec, &str)> = vec![
            (
                ModelSpec {
                    activation: Default::default(),
                    in_channels: 0,
                    ..base.clone()
                },
                "model.in_channels",
            ),
            (base.clone().with_num_classes(0), "model.num_classes"),
            (
                ModelSpec {
                    activation: Default::default(),
                    input_size: (32, 0),
                    ..base.clone()
                },
                "model.input_size",
            ),
            (
                ModelSpec {
                    activation: Default::default(),
                    mean: vec![0.5],
                    ..base.clone()
                },
                "model.mean",
            ),
            (
                ModelSpec {
                    activation: Default::default(),
                    std: vec![0.2, 0.0, 0.2],
                    ..base.clone()
                },
                "model.std",
            ),
            (
                ModelSpec {
                    activation: Default::default(),
                    mean: vec![0.1, f64::NAN, 0.1],
                    ..base.clone()
                },
                "model.mean",
            ),
            (
                ModelSpec {
                    activation: Default::default(),
                    input_size: (8, 8),
                    ..ModelSpec::fashion_mnist(Arch::Lenet)
                },
                "model.input_size",
            ),
        ];
        for (spec, field) in cases {
            let e = spec.validate().unwrap_err();
            match &e {
                Error::Config { field: f, .. } => assert_eq!(f, field, "{e}"),
                other => panic!("expected a config error, got {other}"),
            }
        }
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let spec = ModelSpec::cifar10(Arch::PreactResnet18);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"arch\":\"preact-resnet18\""), "{json}");
        assert!(json.contains("\"input_size\":[32,32]"), "{json}");
        let back: ModelSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let bad = json.replace("0.247", "-0.247");
        let e = serde_json::from_str::<ModelSpec>(&bad).unwrap_err();
        assert!(e.to_string().contains("model.std"), "{e}");
    }
}
