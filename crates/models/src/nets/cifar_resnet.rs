//! The CIFAR-style ResNet family of basic blocks: conv1 3x3 (stride 1, no bias), bn1, ReLU, no
//! max-pool, stages of basic blocks (the first block of each later stage strides 2), global
//! average pool, fc. One description, two members:
//! - ResNet-18: four stages of two blocks (64/128/256/512), 1x1-conv projection shortcuts.
//! - ResNet-20 (He et al. 2016): three stages of three blocks (16/32/64), parameter-free
//!   option-A (zero-padding) shortcuts.

use super::basic_block::{BasicBlock, ShortcutKind};
use super::Net;
use crate::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts, Linear};
use crate::layout::LayerOp;
use crate::spec::{Activation, ModelSpec};
use rustworthy_core::Result;
use tch::Tensor;

/// The shape of one member of the family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CifarResNetShape {
    /// `(width, stride)` of each stage's first block.
    pub stages: &'static [(i64, i64)],
    /// Basic blocks per stage.
    pub blocks_per_stage: i64,
    /// How a block that changes shape carries its input.
    pub shortcut: ShortcutKind,
}

/// ResNet-18 (CIFAR variant).
pub(crate) const RESNET18: CifarResNetShape = CifarResNetShape {
    stages: &[(64, 1), (128, 2), (256, 2), (512, 2)],
    blocks_per_stage: 2,
    shortcut: ShortcutKind::Projection,
};

/// ResNet-20.
pub(crate) const RESNET20: CifarResNetShape = CifarResNetShape {
    stages: &[(16, 1), (32, 2), (64, 2)],
    blocks_per_stage: 3,
    shortcut: ShortcutKind::ZeroPad,
};

pub(crate) struct CifarResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
    width: i64,
    act: Activation,
}

impl CifarResNet {
    /// Registers the variables in the order of the PyTorch twin: conv1, bn1, the blocks, fc.
    pub fn new(b: &Builder, spec: &ModelSpec, shape: CifarResNetShape) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let stem = shape.stages[0].0;
        let conv1 = Conv2d::new(
            &b.sub("conv1"),
            spec.in_channels,
            stem,
            ConvOpts::k3(1, init),
        )?;
        let bn1 = BatchNorm2d::new(&b.sub("bn1"), stem)?;
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (i, &(width, stride)) in shape.stages.iter().enumerate() {
            let layer = b.sub(format!("layer{}", i + 1));
            for j in 0..shape.blocks_per_stage {
                let s = if j == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(
                    &layer.sub(j),
                    cin,
                    width,
                    s,
                    shape.shortcut,
                    spec.activation,
                )?);
                cin = width;
            }
        }
        let fc = Linear::new(&b.sub("fc"), cin, spec.num_classes)?;
        Ok(CifarResNet {
            conv1,
            bn1,
            blocks,
            fc,
            width: cin,
            act: spec.activation,
        })
    }
}

impl Net for CifarResNet {
    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self
            .act
            .apply(&self.bn1.forward_t(&self.conv1.forward(x), train));
        for block in &self.blocks {
            x = block.forward_t(&x, train);
        }
        global_avg_pool(&x)
    }
    fn head(&self) -> &Linear {
        &self.fc
    }
    fn feature_dim(&self) -> i64 {
        self.width
    }
    fn layout(&self) -> Option<Vec<LayerOp>> {
        if !self.act.is_relu() {
            return None;
        }
        let mut ops = vec![self.conv1.op(), self.bn1.op(), LayerOp::Relu];
        ops.extend(self.blocks.iter().map(BasicBlock::op));
        ops.extend([LayerOp::GlobalAvgPool, self.fc.op()]);
        Some(ops)
    }
}
