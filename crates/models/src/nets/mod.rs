//! The architectures, one per file. Each one registers its variables under the state-dict names
//! of its PyTorch twin in `scripts/ref/models.py`, in the same order.

mod basic_block;
mod cifar_resnet;
mod lenet;
mod mlp;
mod preact_resnet18;
mod vgg16_bn;

use crate::layers::{Builder, Linear};
use crate::layout::LayerOp;
use crate::spec::{Arch, ModelSpec};
use rustworthy_core::{Error, Result};
use tch::Tensor;

/// A network body plus its final linear layer. Inputs are already normalized.
pub(crate) trait Net: Send {
    /// Penultimate features `[B, feature_dim]` (the input of the final linear layer).
    fn features(&self, x: &Tensor, train: bool) -> Tensor;
    /// The final linear layer mapping features to logits.
    fn head(&self) -> &Linear;
    /// Width of the penultimate features.
    fn feature_dim(&self) -> i64;
    /// The whole forward pass (head included) as a chain of operations, for networks that
    /// describe one.
    fn layout(&self) -> Option<Vec<LayerOp>> {
        None
    }
}

/// Builds the network of `spec` (already validated), registering its variables in `b`.
pub(crate) fn build(b: &Builder, spec: &ModelSpec) -> Result<Box<dyn Net>> {
    Ok(match spec.arch {
        Arch::Mlp => Box::new(mlp::Mlp::new(b, spec)?),
        Arch::Lenet => Box::new(lenet::LeNet5::new(b, spec)?),
        Arch::Resnet18 => Box::new(cifar_resnet::CifarResNet::new(
            b,
            spec,
            cifar_resnet::RESNET18,
        )?),
        Arch::Resnet20 => Box::new(cifar_resnet::CifarResNet::new(
            b,
            spec,
            cifar_resnet::RESNET20,
        )?),
        Arch::PreactResnet18 => Box::new(preact_resnet18::PreActResNet18::new(b, spec)?),
        Arch::Vgg16Bn => Box::new(vgg16_bn::Vgg16Bn::new(b, spec)?),
        Arch::TorchScript => {
            return Err(Error::config(
                "model.arch",
                "a torchscript model is loaded from its file with Model::from_torchscript; \
                 it cannot be built from a spec",
            ))
        }
    })
}
