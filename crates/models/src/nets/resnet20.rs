//! ResNet-20 for CIFAR (He et al. 2016): conv1 3x3 (16), bn1, ReLU, layer1..layer3 of three
//! basic blocks each (16/32/64) with parameter-free option-A shortcuts, global average pool, fc.

use super::basic_block::{BasicBlock, ShortcutKind};
use super::Net;
use crate::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts, Linear};
use crate::spec::ModelSpec;
use rustworthy_core::Result;
use tch::Tensor;

const STAGES: [(i64, i64); 3] = [(16, 1), (32, 2), (64, 2)];
const BLOCKS_PER_STAGE: i64 = 3;

pub(crate) struct ResNet20 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet20 {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let conv1 = Conv2d::new(&b.sub("conv1"), spec.in_channels, 16, ConvOpts::k3(1, init))?;
        let bn1 = BatchNorm2d::new(&b.sub("bn1"), 16)?;
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (i, (width, stride)) in STAGES.into_iter().enumerate() {
            let layer = b.sub(format!("layer{}", i + 1));
            for j in 0..BLOCKS_PER_STAGE {
                let s = if j == 0 { stride } else { 1 };
                let block = BasicBlock::new(&layer.sub(j), cin, width, s, ShortcutKind::ZeroPad)?;
                blocks.push(block);
                cin = width;
            }
        }
        let fc = Linear::new(&b.sub("fc"), 64, spec.num_classes)?;
        Ok(ResNet20 {
            conv1,
            bn1,
            blocks,
            fc,
        })
    }
}

impl Net for ResNet20 {
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
        64
    }
}
