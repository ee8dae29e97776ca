//! rustworthy-models: the model zoo (MLP, LeNet-5, ResNet-18/20, PreAct ResNet-18,
//! VGG-16-BN) on libtorch, and TorchScript modules wrapped as models.
//!
//! * Every [`Model`] takes images in [0, 1] and normalizes them itself with the per-channel
//!   mean/std of its [`ModelSpec`], so attacks and unlearning work in pixel space.
//! * Variables carry the state-dict names of the PyTorch reference models in
//!   `scripts/ref/models.py`; weights round-trip through safetensors in both directions.
//! * A module saved with `torch.jit.script`/`torch.jit.trace` loads as a [`Model`] too
//!   ([`Model::from_torchscript`], see [`script`]), trainable through the same `VarStore`.
//! * Weights from other code bases load too ([`Model::load_foreign`], see [`foreign`]): state
//!   dicts in safetensors or `torch.save` files (read by the restricted, non-executing reader
//!   of [`pth`]) with other names, prefixes and normalization buffers.
//! * Initialisation follows PyTorch: module defaults for MLP, LeNet and VGG, the torchvision
//!   scheme (kaiming-normal fan-out convolutions, BN weight 1 / bias 0) for the ResNets.
//!
//! ```no_run
//! use rustworthy_models::{Arch, Model, ModelSpec};
//! # fn main() -> rustworthy_core::Result<()> {
//! tch::manual_seed(0);
//! let model = Model::new(ModelSpec::cifar10(Arch::Resnet20), tch::Device::Cpu)?;
//! let x = tch::Tensor::rand([8, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
//! let logits = model.try_forward_t(&x, false)?;
//! assert_eq!(logits.size(), [8, 10]);
//! model.save("resnet20.safetensors")?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod foreign;
mod io;
mod layers;
pub mod layout;
pub mod model;
mod nets;
pub mod pth;
pub mod script;
pub mod spec;

pub use foreign::{LoadReport, MapRules, Rename};
pub use layout::LayerOp;
pub use model::{Exec, LayerInfo, Model};
pub use rustworthy_accel::Precision;
pub use script::ScriptOptions;
pub use spec::{
    Activation, Arch, ModelSpec, CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
};
