//! ResNet-18, CIFAR variant: conv1 3x3 (stride 1, no bias), bn1, ReLU, no max-pool,
//! layer1..layer4 of two basic blocks each (64/128/256/512), global average pool, fc.

use super::basic_block::{BasicBlock, ShortcutKind};
use super::Net;
use crate::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts, Linear};
use crate::spec::ModelSpec;
use rustworthy_core::Result;
use tch::Tensor;

const STAGES: [(i64, i64); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

pub(crate) struct ResNet18 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet18 {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let conv1 = Conv2d::new(&b.sub("conv1"), spec.in_channels, 64, ConvOpts::k3(1, init))?;
        let bn1 = BatchNorm2d::new(&b.sub("bn1"), 64)?;
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (i, (width, stride)) in STAGES.into_iter().enumerate() {
            let layer = b.sub(format!("layer{}", i + 1));
            for j in 0..2 {
                let s = if j == 0 { stride } else { 1 };
                let block =
                    BasicBlock::new(&layer.sub(j), cin, width, s, ShortcutKind::Projection)?;
                blocks.push(block);
                cin = width;
            }
        }
        let fc = Linear::new(&b.sub("fc"), 512, spec.num_classes)?;
        Ok(ResNet18 {
            conv1,
            bn1,
            blocks,
            fc,
        })
    }
}

impl Net for ResNet18 {
    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward_t(&self.conv1.forward(x), train).relu();
        for block in &self.blocks {
            x = block.forward_t(&x, train);
        }
        global_avg_pool(&x)
    }
    fn head(&self) -> &Linear {
        &self.fc
    }
    fn feature_dim(&self) -> i64 {
        512
    }
}
