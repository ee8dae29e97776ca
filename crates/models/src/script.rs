//! TorchScript models: a module saved with `torch.jit.script` or `torch.jit.trace` as a
//! [`Model`], so attacks, adversarial training, unlearning, pruning and evaluation use it like a
//! zoo model.
//!
//! * **Variables.** Every parameter of the module is registered in the model's
//!   [`tch::nn::VarStore`] (as `tch::TrainableCModule::load` does, under its name with `.`
//!   replaced by `_`, since var-store names cannot hold dots) and listed by
//!   [`Model::parameters`] under its TorchScript name (`layer1.0.conv1.weight`). The tensors
//!   are the module's own: an optimizer built from [`Model::vs`] or [`Model::parameters`]
//!   trains the module, and gradients reach them through its forward.
//! * **Buffers.** libtorch's C API as `tch` exposes it lists a module's parameters but not its
//!   buffers. So that the batch-norm running statistics are live tensors too (listed by
//!   [`Model::buffers`], saved, copied and moved with the model), the archive's class code is
//!   edited before loading: tensor buffers are listed with the parameters (they keep
//!   `requires_grad = false` and the module computes exactly as before). Which names are
//!   buffers is known from a load of the unedited file. [`Model::save_torchscript`] undoes the
//!   edit, so written files list them as buffers again. Buffers are followed as the tensors
//!   the module holds: one that the forward replaces by a new tensor (instead of updating it in
//!   place, as batch norm does) is not followed.
//! * **Damaged archives.** Every entry is read and CRC-checked before libtorch sees the file,
//!   so a damaged archive is refused with the entry named. The source-range tables
//!   (`code/*.py.debug_pkl`, which map the archive's code back to the original Python lines)
//!   are left out of what libtorch loads: libtorch reads them lazily while it formats an error
//!   message, where an exception from a damaged table cannot be caught and aborts the process.
//!   Errors in a module's code are therefore reported against the archive's code, and a module
//!   written back by [`Model::save_torchscript`] carries tables for that code. libtorch also
//!   compiles the code recursively, so the code is scanned first: brackets nested deeper than
//!   200 levels (Python's own limit) are refused, and the loader runs on a thread whose stack
//!   is sized from the code's operator and bracket count (real modules need 70 to 80 MiB of
//!   reserved, mostly untouched, stack; absurdly long code is refused).
//! * **Copies.** The archive as loaded is kept in memory (about the file's size), so
//!   [`Model::try_clone`] does not depend on the file still being there.
//! * **Modes.** [`Model::forward_t`] switches the module to train or eval mode (recursively, as
//!   `module.train()` / `.eval()` do) whenever `train` differs from the previous call, so
//!   batch norm and dropout behave as in PyTorch (dropout draws from libtorch's global
//!   generator, as in PyTorch). A module made with `torch.jit.trace` computes in the mode it
//!   was traced in whatever the flag says, since tracing records `self.training` as a constant:
//!   exactly what PyTorch does with that module. Script it to keep both modes.
//! * **Normalization.** Inputs are images in [0, 1]; `(x - mean) / std` from
//!   [`ScriptOptions`] is applied before the module (mean 0, std 1 by default, for modules that
//!   normalize themselves).
//! * **Not available:** the feature/head split ([`Model::features_t`],
//!   [`Model::logits_from_features`], [`Model::feature_dim`]); check
//!   [`Model::has_feature_head`] or call [`Model::require_feature_head`].
//! * **Devices.** The module is loaded onto the requested device; [`Model::to_device`] moves
//!   its parameters and buffers in place. Other tensors a module holds (plain tensor
//!   attributes, constants baked in by tracing) stay where they were loaded: load on the
//!   device you run on.

mod archive;

use crate::layers::{Role, Var};
use crate::model::{Body, Model};
use crate::spec::{Arch, ModelSpec};
use rustworthy_core::fsutil::atomic_write_with;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn, CModule, Device, Kind, Tensor};

/// How to wrap a TorchScript module as a [`Model`]: the input geometry it expects and the
/// normalization applied before it. Deserializes from e.g. `{"in_channels": 3, "input_size":
/// [32, 32]}` (the optional fields may be left out; unknown keys are errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptOptions {
    /// Input channels `C` of the `[B, C, H, W]` images.
    pub in_channels: i64,
    /// Input height and width.
    pub input_size: (i64, i64),
    /// Per-channel mean subtracted before the module; `None` = 0 (no normalization).
    #[serde(default)]
    pub mean: Option<Vec<f64>>,
    /// Per-channel standard deviation divided by before the module; `None` = 1.
    #[serde(default)]
    pub std: Option<Vec<f64>>,
    /// Number of classes; `None` infers it from one eval-mode forward pass on zeros. When
    /// given, the module's output must match it.
    #[serde(default)]
    pub num_classes: Option<i64>,
}

impl ScriptOptions {
    /// Images of `in_channels x input_size`, no normalization, classes inferred.
    pub fn new(in_channels: i64, input_size: (i64, i64)) -> ScriptOptions {
        ScriptOptions {
            in_channels,
            input_size,
            mean: None,
            std: None,
            num_classes: None,
        }
    }

    /// The geometry, normalization and classes of `spec` (e.g.
    /// `ModelSpec::cifar10(Arch::Resnet18)` for a module that expects normalized CIFAR-10
    /// inputs).
    pub fn from_spec(spec: &ModelSpec) -> ScriptOptions {
        ScriptOptions {
            in_channels: spec.in_channels,
            input_size: spec.input_size,
            mean: Some(spec.mean.clone()),
            std: Some(spec.std.clone()),
            num_classes: Some(spec.num_classes),
        }
    }

    /// The same options with a per-channel normalization applied before the module.
    pub fn with_normalization(mut self, mean: Vec<f64>, std: Vec<f64>) -> ScriptOptions {
        self.mean = Some(mean);
        self.std = Some(std);
        self
    }

    /// The same options with a fixed number of classes.
    pub fn with_num_classes(mut self, num_classes: i64) -> ScriptOptions {
        self.num_classes = Some(num_classes);
        self
    }

    /// The spec of the model (with `num_classes` a placeholder when it is to be inferred).
    fn spec(&self) -> ModelSpec {
        let c = self.in_channels.max(0) as usize;
        ModelSpec {
            activation: Default::default(),
            arch: Arch::TorchScript,
            in_channels: self.in_channels,
            num_classes: self.num_classes.unwrap_or(1),
            input_size: self.input_size,
            mean: self.mean.clone().unwrap_or_else(|| vec![0.0; c]),
            std: self.std.clone().unwrap_or_else(|| vec![1.0; c]),
        }
    }
}

/// The file a script model came from, as loaded (after the buffer edit).
struct Source {
    path: PathBuf,
    archive: Vec<u8>,
    /// The stack libtorch's loader needs for this archive's code.
    stack_bytes: usize,
    edits: archive::Edits,
    buffers: HashSet<String>,
}

/// A loaded TorchScript module and the mode it is in.
pub(crate) struct ScriptNet {
    module: RefCell<CModule>,
    /// The module's current mode (`Some(true)` = train); `None` until first set.
    mode: Cell<Option<bool>>,
    source: Arc<Source>,
}

impl ScriptNet {
    /// Runs `f` on the module after switching it to train or eval mode.
    fn with_mode<T>(
        &self,
        train: bool,
        f: impl FnOnce(&CModule) -> std::result::Result<T, tch::TchError>,
    ) -> Result<T> {
        let mut m = self.module.try_borrow_mut().map_err(|_| {
            Error::invalid("TorchScript module used again from inside its own forward pass")
        })?;
        if self.mode.get() != Some(train) {
            self.mode.set(None);
            if train {
                m.f_set_train()?;
            } else {
                m.f_set_eval()?;
            }
            self.mode.set(Some(train));
        }
        Ok(f(&m)?)
    }

    /// The module's output for normalized inputs `x`, in train or eval mode.
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.with_mode(train, |m| m.forward_ts(&[x]))
    }
}

/// Rewrites every entry of the zip archive `bytes` (a TorchScript module, say) with `edit`,
/// which gets each entry's name and contents; the result has valid CRCs, so a reader sees the
/// edited contents as intact. For tests and the fuzzer, which damage an archive's files behind
/// its checksums. Errors for an archive that cannot be read (or is damaged already).
#[doc(hidden)]
pub fn rewrite_archive_entries(
    bytes: &[u8],
    mut edit: impl FnMut(&str, Vec<u8>) -> Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    let mut files = Vec::new();
    for e in archive::entries(bytes)? {
        let data = archive::contents(bytes, &e)?;
        let data = edit(&e.name, data);
        files.push(archive::NewEntry { name: e.name, data });
    }
    archive::write(&files)
}

/// Checks that `out` holds float32 logits `[batch, classes]`.
pub(crate) fn check_logits(out: &Tensor, batch: i64, classes: i64) -> Result<()> {
    let size = out.size();
    if size != [batch, classes] {
        return Err(Error::Shape {
            op: "TorchScript module output".into(),
            expected: format!("logits [{batch}, {classes}]"),
            got: size,
        });
    }
    if out.kind() != Kind::Float {
        return Err(Error::invalid(format!(
            "TorchScript module output must be float32 logits, got {:?}",
            out.kind()
        )));
    }
    Ok(())
}

/// Checks the pickles libtorch reads when it loads a module (`<root>/data.pkl`,
/// `<root>/constants.pkl`, as [`archive::sanitize`] read them) with the restricted pickle
/// interpreter: tensor views inside their storages, storages the size of their records
/// (`<root>/data/<key>`, `<root>/constants/<key>`). libtorch checks neither.
fn check_pickles(path: &Path, s: &archive::Sanitized) -> Result<()> {
    for p in &s.pickles {
        let record = |key: &str| s.sizes.get(&format!("{}/{key}", p.records)).copied();
        crate::pth::check_script_pickle(path, &p.name, &p.data, &record)?;
    }
    Ok(())
}

/// Loads the sanitized archive `bytes` with libtorch, on a thread with `stack` bytes of stack
/// (libtorch compiles the module's code recursively; see `archive::sanitize`).
fn load_module(
    bytes: &[u8],
    stack: usize,
    device: Device,
) -> std::result::Result<CModule, tch::TchError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("torchscript-load".into())
            .stack_size(stack)
            .spawn_scoped(s, || {
                CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            })
            .map_err(|e| tch::TchError::Torch(format!("cannot start the loader thread: {e}")))?
            .join()
            .map_err(|_| tch::TchError::Torch("the loader thread panicked".into()))?
    })
}

/// Registers the module's tensors in a new var store and assembles the model.
fn assemble(
    module: CModule,
    source: Arc<Source>,
    spec: ModelSpec,
    device: Device,
) -> Result<Model> {
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let mut vars = Vec::new();
    for (name, t) in module.named_parameters()? {
        let role = if !source.buffers.contains(&name) {
            Role::Param
        } else if t.kind() == Kind::Float {
            Role::Buffer
        } else {
            Role::Counter
        };
        if role == Role::Param && t.kind() != Kind::Float {
            return Err(Error::checkpoint(
                &source.path,
                format!(
                    "parameter `{name}` is {:?}; models here are float32 (save the module after \
                     `.float()`)",
                    t.kind()
                ),
            ));
        }
        let tensor = root.add(&name.replace('.', "_"), t, role == Role::Param);
        vars.push(Var { name, tensor, role });
    }
    let net = ScriptNet {
        module: RefCell::new(module),
        mode: Cell::new(None),
        source,
    };
    Model::from_parts(vs, spec, Body::Script(net), vars)
}

impl Model {
    /// Loads a TorchScript module (`torch.jit.script(m).save(path)` or
    /// `torch.jit.trace(m, x).save(path)`) as a model on `device`.
    ///
    /// The module must map a float32 batch `[B, C, H, W]` (normalized by `opts.mean`/`opts.std`)
    /// to float32 logits `[B, classes]`, hold float32 parameters, and be loadable by this
    /// libtorch. Every parameter becomes trainable. One eval-mode forward pass on zeros checks
    /// the output (and infers the class count when `opts.num_classes` is `None`); it leaves the
    /// module in eval mode. See the [module documentation](crate::script) for how buffers are
    /// reached.
    ///
    /// Errors (never panics) for a missing or unreadable file, a file that is not TorchScript
    /// (e.g. a `torch.save` checkpoint), invalid options, a module whose forward fails on the
    /// given geometry, or output that is not `[B, classes]` float32.
    pub fn from_torchscript(
        path: impl AsRef<Path>,
        opts: ScriptOptions,
        device: Device,
    ) -> Result<Model> {
        let path = path.as_ref();
        opts.spec().validate()?;
        if !path.is_file() {
            let why = if path.exists() {
                "not a regular file"
            } else {
                "file not found"
            };
            return Err(Error::checkpoint(path, why));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Model::from_torchscript_bytes(bytes, path, opts, device)
    }

    /// [`Model::from_torchscript`] for an archive already in memory (what `torch.jit.save`
    /// writes to a `BytesIO`); `name` stands for the file in errors and in
    /// [`Model::torchscript_path`].
    pub fn from_torchscript_bytes(
        bytes: Vec<u8>,
        name: impl AsRef<Path>,
        opts: ScriptOptions,
        device: Device,
    ) -> Result<Model> {
        let path = name.as_ref();
        let mut spec = opts.spec();
        spec.validate()?;
        let not_script = |why: &str| {
            Error::checkpoint(
                path,
                format!(
                    "not a TorchScript module ({why}); write one with \
                     `torch.jit.script(model).save(path)` or `torch.jit.trace(model, x).save(path)`"
                ),
            )
        };
        if !archive::looks_like_zip(&bytes) {
            return Err(not_script("not a zip archive"));
        }
        let entries = archive::entries(&bytes).map_err(|e| not_script(&e))?;
        if !archive::has_code(&entries) {
            return Err(not_script(
                "a zip archive without TorchScript code, e.g. a torch.save checkpoint",
            ));
        }
        let sanitized = archive::sanitize(&bytes, &entries)
            .map_err(|e| Error::checkpoint(path, format!("damaged TorchScript archive: {e}")))?;
        check_pickles(path, &sanitized)?;
        let archive::Sanitized {
            bytes, stack_bytes, ..
        } = sanitized;
        let torch_err = |what: &str, e: tch::TchError| {
            Error::checkpoint(path, format!("libtorch cannot {what}: {e}"))
        };
        let plain =
            load_module(&bytes, stack_bytes, device).map_err(|e| torch_err("load it", e))?;
        let params: HashSet<String> = plain
            .named_parameters()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let patched = archive::patch(&bytes)
            .map_err(|e| Error::checkpoint(path, format!("cannot read the archive: {e}")))?;
        let (module, archive, edits) = match patched {
            None => (plain, bytes, archive::Edits::new()),
            Some((archive, edits)) => {
                drop(plain);
                let m = load_module(&archive, stack_bytes, device)
                    .map_err(|e| torch_err("load it with its buffers listed", e))?;
                (m, archive, edits)
            }
        };
        let all: Vec<String> = module
            .named_parameters()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if let Some(lost) = params.iter().find(|p| !all.contains(p)) {
            return Err(Error::checkpoint(
                path,
                format!("parameter `{lost}` is missing after listing the buffers"),
            ));
        }
        let buffers = all.into_iter().filter(|n| !params.contains(n)).collect();
        let source = Arc::new(Source {
            path: path.to_path_buf(),
            archive,
            stack_bytes,
            edits,
            buffers,
        });
        let mut model = assemble(module, source, spec.clone(), device)?;

        let probe = {
            let net = model.script_net().expect("a script model");
            let x = Tensor::f_zeros(spec.input_shape(2), (Kind::Float, device))?;
            tch::no_grad(|| net.forward(&model.normalize(&x), false))
        }
        .map_err(|e| {
            Error::checkpoint(
                path,
                format!(
                    "the module's forward pass fails on a {:?} float32 batch (check in_channels \
                     and input_size): {e}",
                    spec.input_shape(2)
                ),
            )
        })?;
        let size = probe.size();
        if size.len() != 2 || size[0] != 2 {
            return Err(Error::Shape {
                op: format!("TorchScript module {} output", path.display()),
                expected: "logits [B, classes] for an input batch of B = 2".into(),
                got: size,
            });
        }
        check_logits(&probe, 2, size[1])?;
        if let Some(n) = opts.num_classes {
            if n != size[1] {
                return Err(Error::config(
                    "model.num_classes",
                    format!("{n} given, but the module outputs {} logits", size[1]),
                ));
            }
        }
        spec.num_classes = size[1];
        spec.validate()?;
        model.spec = spec;
        Ok(model)
    }

    /// Whether this model wraps a TorchScript module ([`Model::from_torchscript`]).
    pub fn is_torchscript(&self) -> bool {
        self.script_net().is_some()
    }

    /// The file a TorchScript model was loaded from (`None` for zoo models).
    pub fn torchscript_path(&self) -> Option<&Path> {
        self.script_net().map(|s| s.source.path.as_path())
    }

    /// Whether [`Model::features_t`], [`Model::logits_from_features`] and
    /// [`Model::feature_dim`] are available: true for zoo models, false for TorchScript ones.
    pub fn has_feature_head(&self) -> bool {
        !self.is_torchscript()
    }

    /// `Ok` if the model has a feature/head split; otherwise an [`Error::Invalid`] saying that
    /// `what` (e.g. `"unlearning method be"`) needs it. Call before doing any work.
    pub fn require_feature_head(&self, what: &str) -> Result<()> {
        if self.has_feature_head() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{what} needs the model's penultimate features and its final linear layer \
             (features_t / logits_from_features), which a TorchScript model does not expose; \
             use a zoo architecture"
        )))
    }

    /// Writes a TorchScript model's module, with its current weights and buffers and in eval
    /// mode, as a TorchScript file (`torch.jit.load` reads it), atomically. Errors for zoo
    /// models (their weights are saved with [`Model::save`]).
    pub fn save_torchscript(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let net = self.script_net().ok_or_else(|| {
            Error::invalid(format!(
                "save_torchscript: a {} model is not a TorchScript module; save its weights \
                 with Model::save",
                self.spec.arch
            ))
        })?;
        atomic_write_with(path, |tmp| {
            net.with_mode(false, |m| m.save(tmp))?;
            let bytes = std::fs::read(tmp).map_err(|e| Error::io(tmp, e))?;
            let out = archive::unpatch(bytes, &net.source.edits)
                .map_err(|e| Error::checkpoint(path, format!("cannot rewrite the archive: {e}")))?;
            std::fs::write(tmp, out).map_err(|e| Error::io(tmp, e))
        })
    }

    /// A new, independent model with the same spec, variables, values and execution settings
    /// (and, for a TorchScript model, the same module, reloaded from the archive kept in
    /// memory), on the same device.
    pub fn try_clone(&self) -> Result<Model> {
        let mut m = match self.script_net() {
            None => Model::new(self.spec.clone(), self.device())?,
            Some(net) => {
                let device = self.device();
                let module = load_module(&net.source.archive, net.source.stack_bytes, device)
                    .map_err(|e| {
                        Error::checkpoint(
                            &net.source.path,
                            format!("cannot reload the module: {e}"),
                        )
                    })?;
                assemble(module, net.source.clone(), self.spec.clone(), device)?
            }
        };
        m.copy_from(self)?;
        m.set_exec(self.exec())?;
        Ok(m)
    }

    /// A new model of the same architecture, freshly initialised from libtorch's global
    /// generator (seed it first). Zoo models: [`Model::new`]. TorchScript models: the module
    /// reloaded with PyTorch's default initialisation of convolution/linear/batch-norm layers,
    /// inferred from names and shapes: weights of rank >= 2 ~ U(-1/sqrt(fan_in), +) with
    /// `fan_in` = size(1) x kernel size, the `bias` beside such a weight ~ U with the same
    /// bound, other one-dimensional `weight`s = 1 and `bias`es = 0, `running_mean` = 0,
    /// `running_var` = 1, `num_batches_tracked` = 0; any other variable keeps its loaded value.
    pub fn fresh_like(&self) -> Result<Model> {
        if !self.is_torchscript() {
            return Model::new(self.spec.clone(), self.device());
        }
        let m = self.try_clone()?;
        reinit(m.vars())?;
        Ok(m)
    }
}

/// PyTorch's default layer initialisation, inferred from names and shapes (see
/// [`Model::fresh_like`]).
fn reinit(vars: &[Var]) -> Result<()> {
    let by_name: HashMap<&str, &Var> = vars.iter().map(|v| (v.name.as_str(), v)).collect();
    let split = |n: &str| -> (String, String) {
        match n.rsplit_once('.') {
            Some((p, l)) => (format!("{p}."), l.to_string()),
            None => (String::new(), n.to_string()),
        }
    };
    let fan_in = |t: &Tensor| -> i64 { t.size().iter().skip(1).product::<i64>().max(1) };
    tch::no_grad(|| -> Result<()> {
        for v in vars {
            let mut t = v.tensor.shallow_clone();
            let (prefix, leaf) = split(&v.name);
            match (v.role, leaf.as_str()) {
                (Role::Param, _) if t.dim() >= 2 => {
                    let b = 1.0 / (fan_in(&t) as f64).sqrt();
                    let _ = t.f_uniform_(-b, b)?;
                }
                (Role::Param, "bias") => {
                    let w = by_name
                        .get(format!("{prefix}weight").as_str())
                        .filter(|w| w.tensor.dim() >= 2);
                    match w {
                        Some(w) => {
                            let b = 1.0 / (fan_in(&w.tensor) as f64).sqrt();
                            let _ = t.f_uniform_(-b, b)?;
                        }
                        None => {
                            let _ = t.f_zero_()?;
                        }
                    }
                }
                (Role::Param, "weight") => {
                    let _ = t.f_fill_(1.0)?;
                }
                (Role::Buffer, "running_mean") | (Role::Counter, "num_batches_tracked") => {
                    let _ = t.f_zero_()?;
                }
                (Role::Buffer, "running_var") => {
                    let _ = t.f_fill_(1.0)?;
                }
                _ => {}
            }
        }
        Ok(())
    })
}
