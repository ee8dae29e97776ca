//! The ResNet basic block (two 3x3 convolutions with BN), shared by the CIFAR ResNets (ResNet-18 and ResNet-20);
//! they differ only in the shortcut used when the stride or width changes.

use crate::layers::{BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts};
use crate::layout::{self, LayerOp};
use crate::spec::Activation;
use rustworthy_core::Result;
use tch::Tensor;

/// Which shortcut a block uses when its input and output shapes differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShortcutKind {
    /// torchvision: `downsample.0` conv1x1 (no bias) + `downsample.1` BN.
    Projection,
    /// He et al. option A: stride subsampling and zero channel padding, no parameters.
    ZeroPad,
}

enum Shortcut {
    Identity,
    Projection {
        conv: Conv2d,
        bn: BatchNorm2d,
    },
    ZeroPad {
        stride: i64,
        pad_lo: i64,
        pad_hi: i64,
    },
}

pub(crate) struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Shortcut,
    act: Activation,
}

impl BasicBlock {
    pub fn new(
        b: &Builder,
        cin: i64,
        cout: i64,
        stride: i64,
        kind: ShortcutKind,
        act: Activation,
    ) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let conv1 = Conv2d::new(&b.sub("conv1"), cin, cout, ConvOpts::k3(stride, init))?;
        let bn1 = BatchNorm2d::new(&b.sub("bn1"), cout)?;
        let conv2 = Conv2d::new(&b.sub("conv2"), cout, cout, ConvOpts::k3(1, init))?;
        let bn2 = BatchNorm2d::new(&b.sub("bn2"), cout)?;
        let shortcut = if stride == 1 && cin == cout {
            Shortcut::Identity
        } else {
            match kind {
                ShortcutKind::Projection => {
                    let d = b.sub("downsample");
                    Shortcut::Projection {
                        conv: Conv2d::new(&d.sub(0), cin, cout, ConvOpts::k1(stride, init))?,
                        bn: BatchNorm2d::new(&d.sub(1), cout)?,
                    }
                }
                ShortcutKind::ZeroPad => {
                    let extra = (cout - cin).max(0);
                    Shortcut::ZeroPad {
                        stride,
                        pad_lo: extra / 2,
                        pad_hi: extra - extra / 2,
                    }
                }
            }
        };
        Ok(BasicBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
            act,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self
            .act
            .apply(&self.bn1.forward_t(&self.conv1.forward(x), train));
        let out = self.bn2.forward_t(&self.conv2.forward(&out), train);
        let shortcut = match &self.shortcut {
            Shortcut::Identity => x.shallow_clone(),
            Shortcut::Projection { conv, bn } => bn.forward_t(&conv.forward(x), train),
            Shortcut::ZeroPad {
                stride,
                pad_lo,
                pad_hi,
            } => {
                let s = if *stride != 1 {
                    x.slice(2, 0, None, *stride).slice(3, 0, None, *stride)
                } else {
                    x.shallow_clone()
                };
                if pad_lo + pad_hi > 0 {
                    s.constant_pad_nd([0, 0, 0, 0, *pad_lo, *pad_hi])
                } else {
                    s
                }
            }
        };
        self.act.apply(&(out + shortcut))
    }

    /// This block in the network's layout.
    pub fn op(&self) -> LayerOp {
        let body = vec![
            self.conv1.op(),
            self.bn1.op(),
            LayerOp::Relu,
            self.conv2.op(),
            self.bn2.op(),
        ];
        let shortcut = match &self.shortcut {
            Shortcut::Identity => layout::Shortcut::Identity,
            Shortcut::Projection { conv, bn } => layout::Shortcut::Layers(vec![conv.op(), bn.op()]),
            Shortcut::ZeroPad {
                stride,
                pad_lo,
                pad_hi,
            } => layout::Shortcut::ZeroPad {
                stride: *stride,
                lo: *pad_lo,
                hi: *pad_hi,
            },
        };
        LayerOp::Residual { body, shortcut }
    }
}
