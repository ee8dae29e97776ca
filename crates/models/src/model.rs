//! [`Model`]: a network of the zoo with normalization inside, its variables under PyTorch
//! state-dict names, and safetensors weight IO.

use crate::layers::{Builder, Role, Var};
use crate::nets::{self, Net};
use crate::script::ScriptNet;
use crate::spec::{Arch, ModelSpec};
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// One variable of a model, as listed by [`Model::summary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// State-dict name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Tensor shape (empty for scalars).
    pub shape: Vec<i64>,
    /// Number of elements.
    pub numel: i64,
    /// Whether it is a trainable parameter (else a buffer).
    pub trainable: bool,
}

/// A classifier of the model zoo.
///
/// The model takes images in [0, 1] of shape `[B, C, H, W]` (see [`ModelSpec`]) and normalizes
/// them itself, so gradients and perturbations live in pixel space. Its variables carry the
/// state-dict names of the PyTorch reference models (`scripts/ref/models.py`), and
/// [`Model::save`]/[`Model::load`] read and write safetensors files PyTorch loads with
/// `load_state_dict(strict=True)`.
///
/// Train/eval mode is chosen per call through `train` in [`Model::forward_t`]; batch-norm
/// running statistics are updated by train-mode calls.
pub struct Model {
    /// The variable store holding every parameter and buffer (build optimizers from it).
    /// Use [`Model::to_device`] rather than `vs.set_device` so the normalization constants move
    /// too.
    pub vs: nn::VarStore,
    /// The spec the model was built from. Treat as read-only.
    pub spec: ModelSpec,
    body: Body,
    vars: Vec<Var>,
    mean: Tensor,
    std: Tensor,
    exec: Exec,
}

/// How forward passes execute: precision and memory layout. Neither changes what the model
/// computes beyond rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exec {
    /// bf16 autocast or float32 (default).
    pub precision: rustworthy_accel::Precision,
    /// Inputs and 4-D weights in channels-last (NHWC) memory order (default off).
    pub channels_last: bool,
}

impl Exec {
    /// Whether this is the default (float32, standard layout).
    pub fn is_default(&self) -> bool {
        *self == Exec::default()
    }
}

/// What computes the logits: a zoo network (features + head) or a TorchScript module.
pub(crate) enum Body {
    Zoo(Box<dyn Net>),
    Script(ScriptNet),
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("arch", &format_args!("{}", self.spec.arch))
            .field("in_channels", &self.spec.in_channels)
            .field("num_classes", &self.spec.num_classes)
            .field("input_size", &self.spec.input_size)
            .field("num_params", &self.num_params())
            .field("device", &self.vs.device())
            .finish()
    }
}

impl Model {
    /// Builds the model of `spec` on `device`, initialised as PyTorch initialises the
    /// reference model. Random draws come from libtorch's global generator: seed it first
    /// (`tch::manual_seed`) for reproducible weights.
    pub fn new(spec: ModelSpec, device: Device) -> Result<Model> {
        spec.validate()?;
        let vs = nn::VarStore::new(device);
        let registry = RefCell::new(Vec::new());
        let net = {
            let b = Builder::new(&vs, &registry);
            nets::build(&b, &spec)?
        };
        Model::from_parts(vs, spec, Body::Zoo(net), registry.into_inner())
    }

    /// Assembles a model from its variable store, spec (validated), body and variable list.
    pub(crate) fn from_parts(
        vs: nn::VarStore,
        spec: ModelSpec,
        body: Body,
        vars: Vec<Var>,
    ) -> Result<Model> {
        let (mean, std) = norm_constants(&spec, vs.device())?;
        Ok(Model {
            vs,
            spec,
            body,
            vars,
            mean,
            std,
            exec: Exec::default(),
        })
    }

    /// The TorchScript module of a model loaded by [`Model::from_torchscript`].
    pub(crate) fn script_net(&self) -> Option<&ScriptNet> {
        match &self.body {
            Body::Script(s) => Some(s),
            Body::Zoo(_) => None,
        }
    }

    /// Every variable, in state-dict order.
    pub(crate) fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The zoo network, or a panic naming `what` for a TorchScript model.
    fn zoo_net(&self, what: &str) -> &dyn Net {
        match &self.body {
            Body::Zoo(n) => n.as_ref(),
            Body::Script(_) => panic!(
                "Model::{what}: a TorchScript model has no feature/head split \
                 (check Model::has_feature_head first)"
            ),
        }
    }

    /// The spec the model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.spec.arch
    }

    /// The device holding the variables.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Moves every variable and the normalization constants to `device`. Tensor handles from
    /// [`Model::parameters`] stay valid (they are updated in place).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.vs.set_device(device);
        let (mean, std) = norm_constants(&self.spec, device)?;
        self.mean = mean;
        self.std = std;
        Ok(())
    }

    /// Checks `x` is a float32 batch `[B, C, H, W]` matching the spec, on the model's device.
    /// Shape problems give [`Error::Shape`].
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let size = x.size();
        let (h, w) = self.spec.input_size;
        let c = self.spec.in_channels;
        if size.len() != 4 || size[1] != c || size[2] != h || size[3] != w {
            return Err(Error::Shape {
                op: format!("{} input", self.spec.arch),
                expected: format!("[B, {c}, {h}, {w}]"),
                got: size,
            });
        }
        if x.kind() != Kind::Float {
            return Err(Error::invalid(format!(
                "{} input must be float32 images in [0, 1], got {:?}",
                self.spec.arch,
                x.kind()
            )));
        }
        if x.device() != self.device() {
            return Err(Error::invalid(format!(
                "{} input is on {:?} but the model is on {:?}",
                self.spec.arch,
                x.device(),
                self.device()
            )));
        }
        Ok(())
    }

    /// Logits `[B, num_classes]` for images `x` in [0, 1]. `train` selects batch statistics
    /// in batch norm (and updates the running ones) and, for a TorchScript model, the module's
    /// train/eval mode (dropout too). Panics if `x` does not fit; use [`Model::check_input`] or
    /// [`Model::try_forward_t`] at boundaries.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.with_exec(x, |x| self.forward_plain(x, train))
    }

    /// How forward passes execute (see [`Model::set_exec`]).
    pub fn exec(&self) -> Exec {
        self.exec
    }

    /// Sets the precision and memory layout of every later forward pass, as PyTorch AMP and
    /// `model.to(memory_format=torch.channels_last)` do: with bf16, each forward pass (training,
    /// attacks, unlearning, evaluation) runs inside a bf16 autocast region and its outputs are
    /// cast back to float32 (the loss then runs in float32, as autocast runs losses; the
    /// backward pass runs outside the region); parameters, gradients and optimizer state stay
    /// float32. With channels-last, 4-D weights are stored NHWC now and inputs are converted
    /// on entry.
    pub fn set_exec(&mut self, exec: Exec) -> Result<()> {
        let device = self.vs.device();
        if !exec.precision.is_fp32() && !matches!(device, Device::Cpu | Device::Cuda(_)) {
            return Err(Error::Device(format!(
                "bf16 autocast needs a CPU or CUDA device, the model is on {device:?}"
            )));
        }
        if exec.channels_last {
            let vars: Vec<Tensor> = self.vars.iter().map(|v| v.tensor.shallow_clone()).collect();
            rustworthy_accel::vars_to_channels_last(&vars)?;
        }
        self.exec = exec;
        Ok(())
    }

    /// Runs `f` on `x` under this model's execution settings; outputs come back float32.
    fn with_exec(&self, x: &Tensor, f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        if self.exec == Exec::default() {
            return f(x);
        }
        let x = if self.exec.channels_last {
            rustworthy_accel::to_channels_last(x)
                .unwrap_or_else(|e| panic!("channels-last input: {e}"))
        } else {
            x.shallow_clone()
        };
        let out = match self.exec.precision {
            rustworthy_accel::Precision::Fp32 => f(&x),
            rustworthy_accel::Precision::Bf16 => {
                let _g = rustworthy_accel::AutocastGuard::bf16(self.vs.device())
                    .unwrap_or_else(|e| panic!("{e}"));
                f(&x)
            }
        };
        if out.kind() == Kind::BFloat16 {
            out.to_kind(Kind::Float)
        } else {
            out
        }
    }

    fn forward_plain(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::Zoo(net) => net.head().forward(&net.features(&self.normalize(x), train)),
            Body::Script(s) => s
                .forward(&self.normalize(x), train)
                .unwrap_or_else(|e| panic!("TorchScript forward failed: {e}")),
        }
    }

    /// [`Model::forward_t`] after [`Model::check_input`]; failures of a TorchScript module's
    /// forward (including output that is not `[B, num_classes]`) are errors too.
    pub fn try_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        match &self.body {
            Body::Zoo(_) => Ok(self.forward_t(x, train)),
            Body::Script(s) => {
                let mut res = Ok(());
                let out = self.with_exec(x, |x| match s.forward(&self.normalize(x), train) {
                    Ok(t) => t,
                    Err(e) => {
                        res = Err(e);
                        Tensor::zeros([0], (Kind::Float, x.device()))
                    }
                });
                res?;
                crate::script::check_logits(&out, x.size()[0], self.spec.num_classes)?;
                Ok(out)
            }
        }
    }

    /// Penultimate features `[B, feature_dim]`: the input of the final linear layer. Panics for
    /// a TorchScript model (see [`Model::has_feature_head`]).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let net = self.zoo_net("features_t");
        self.with_exec(x, |x| net.features(&self.normalize(x), train))
    }

    /// Applies the final linear layer to features from [`Model::features_t`]. Panics for a
    /// TorchScript model (see [`Model::has_feature_head`]).
    pub fn logits_from_features(&self, features: &Tensor) -> Tensor {
        let head = self.zoo_net("logits_from_features").head();
        if self.exec.precision.is_fp32() {
            return head.forward(features);
        }
        let _g = rustworthy_accel::AutocastGuard::bf16(self.vs.device())
            .unwrap_or_else(|e| panic!("{e}"));
        head.forward(features).to_kind(Kind::Float)
    }

    /// Width of the penultimate features. Panics for a TorchScript model (see
    /// [`Model::has_feature_head`]).
    pub fn feature_dim(&self) -> i64 {
        self.zoo_net("feature_dim").feature_dim()
    }

    /// The forward pass as a chain of named operations (see [`crate::layout`]), for the zoo
    /// networks that describe one (MLP, LeNet-5, ResNet-18, ResNet-20, with ReLU); `None` for
    /// the others, for other activations and for TorchScript models. The input of the chain is
    /// the normalized image.
    pub fn layout(&self) -> Option<Vec<crate::layout::LayerOp>> {
        match &self.body {
            Body::Zoo(n) => n.layout(),
            Body::Script(_) => None,
        }
    }

    /// `(x - mean) / std` per channel, as done at the start of every forward pass.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }

    /// Trainable parameters with their state-dict names, in state-dict order.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.named(|r| r == Role::Param)
    }

    /// Buffers with their state-dict names, in state-dict order: batch-norm `running_mean` and
    /// `running_var` (float32) and `num_batches_tracked` (int64 scalar).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.named(|r| r != Role::Param)
    }

    /// Every parameter and buffer in state-dict order: what [`Model::save`] writes.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.named(|_| true)
    }

    /// The variables (parameters and float buffers) holding NaN or infinite values, with how
    /// many entries of each are non-finite and its size, in state-dict order.
    pub fn non_finite(&self) -> Vec<(String, i64, i64)> {
        tch::no_grad(|| {
            self.state_dict()
                .into_iter()
                .filter(|(_, t)| t.is_floating_point())
                .filter_map(|(name, t)| {
                    let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
                    (bad > 0).then(|| (name, bad, t.numel() as i64))
                })
                .collect()
        })
    }

    /// An error naming every non-finite variable (see [`Model::non_finite`]) of the model read
    /// from `what`, if there is one: a model with NaN or infinite weights cannot be trained,
    /// unlearned, pruned or attacked meaningfully.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        let bad = self.non_finite();
        if bad.is_empty() {
            return Ok(());
        }
        Err(Error::Numerical(format!(
            "{what}: the model holds non-finite values (NaN or infinity) in {}",
            describe_non_finite(&bad)
        )))
    }

    fn named(&self, keep: impl Fn(Role) -> bool) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .filter(|v| keep(v.role))
            .map(|v| (v.name.clone(), v.tensor.shallow_clone()))
            .collect()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> i64 {
        self.vars
            .iter()
            .filter(|v| v.role == Role::Param)
            .map(|v| v.tensor.numel() as i64)
            .sum()
    }

    /// Name, shape, size and trainability of every variable, in state-dict order.
    pub fn summary(&self) -> Vec<LayerInfo> {
        self.vars
            .iter()
            .map(|v| LayerInfo {
                name: v.name.clone(),
                shape: v.tensor.size(),
                numel: v.tensor.numel() as i64,
                trainable: v.role == Role::Param,
            })
            .collect()
    }

    /// Writes all parameters and buffers to a safetensors file, atomically (temporary file in
    /// the same folder, then rename). PyTorch loads it with `load_state_dict(strict=True)`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::save(&self.vars, path.as_ref())
    }

    /// Loads weights saved by [`Model::save`] or by PyTorch (`safetensors.torch.save_file` of
    /// the reference model's state dict). Strict: every parameter and float buffer must be
    /// present as float32 with the model's shape and no unknown keys may appear
    /// (`num_batches_tracked` entries are optional). Nothing is changed on error.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::load(&self.vars, path.as_ref())
    }

    /// Replaces the per-channel normalization: `spec.mean`/`spec.std` and the constants the
    /// forward pass uses. Both need one finite entry per input channel and `std > 0`; nothing
    /// changes on error.
    pub fn set_normalization(&mut self, mean: &[f64], std: &[f64]) -> Result<()> {
        let mut spec = self.spec.clone();
        spec.mean = mean.to_vec();
        spec.std = std.to_vec();
        spec.validate()?;
        let (m, s) = norm_constants(&spec, self.device())?;
        self.spec = spec;
        self.mean = m;
        self.std = s;
        Ok(())
    }

    /// Copies every parameter and buffer of `other` into this model (without gradient
    /// tracking; this model's device is kept). Both must have the same variables and shapes.
    pub fn copy_from(&mut self, other: &Model) -> Result<()> {
        let mismatch = |msg: String| {
            Error::invalid(format!(
                "copy_from: {} model into {} model: {msg}",
                other.spec.arch, self.spec.arch
            ))
        };
        if self.vars.len() != other.vars.len() {
            return Err(mismatch(format!(
                "{} variables vs {}",
                other.vars.len(),
                self.vars.len()
            )));
        }
        for (dst, src) in self.vars.iter().zip(&other.vars) {
            if dst.name != src.name || dst.tensor.size() != src.tensor.size() {
                return Err(mismatch(format!(
                    "`{}` {:?} does not match `{}` {:?}",
                    src.name,
                    src.tensor.size(),
                    dst.name,
                    dst.tensor.size()
                )));
            }
        }
        tch::no_grad(|| -> Result<()> {
            for (dst, src) in self.vars.iter().zip(&other.vars) {
                dst.tensor.shallow_clone().f_copy_(&src.tensor)?;
            }
            Ok(())
        })
    }
}

impl nn::ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Model::forward_t(self, xs, train)
    }
}

fn norm_constants(spec: &ModelSpec, device: Device) -> Result<(Tensor, Tensor)> {
    let shape = [1, spec.in_channels, 1, 1];
    let make = |v: &[f64]| -> Result<Tensor> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_slice(&v).f_view(shape)?.f_to_device(device)?)
    };
    Ok((make(&spec.mean)?, make(&spec.std)?))
}

/// `conv1.weight (1 of 150 entries), fc.bias (10 of 10 entries)`.
pub fn describe_non_finite(bad: &[(String, i64, i64)]) -> String {
    bad.iter()
        .map(|(n, k, t)| format!("{n} ({k} of {t} entries)"))
        .collect::<Vec<_>>()
        .join(", ")
}
