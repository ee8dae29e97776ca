//! Pre-activation ResNet-18 as used in the fast adversarial training literature: conv1 3x3 (64),
//! layer1..layer4 of two pre-activation blocks each, final `bn`, ReLU, global average pool,
//! `linear`.

use super::Net;
use crate::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts, Linear};
use crate::spec::ModelSpec;
use rustworthy_core::Result;
use tch::Tensor;

const STAGES: [(i64, i64); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

/// bn1 -> ReLU -> conv1 -> bn2 -> ReLU -> conv2, plus a shortcut; the projection shortcut
/// (`shortcut.0`, conv1x1) takes the activated input, the identity one the raw input.
struct PreActBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl PreActBlock {
    fn new(b: &Builder, cin: i64, cout: i64, stride: i64) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let bn1 = BatchNorm2d::new(&b.sub("bn1"), cin)?;
        let conv1 = Conv2d::new(&b.sub("conv1"), cin, cout, ConvOpts::k3(stride, init))?;
        let bn2 = BatchNorm2d::new(&b.sub("bn2"), cout)?;
        let conv2 = Conv2d::new(&b.sub("conv2"), cout, cout, ConvOpts::k3(1, init))?;
        let shortcut = if stride != 1 || cin != cout {
            let s = b.sub("shortcut").sub(0);
            Some(Conv2d::new(&s, cin, cout, ConvOpts::k1(stride, init))?)
        } else {
            None
        };
        Ok(PreActBlock {
            bn1,
            conv1,
            bn2,
            conv2,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_t(x, train).relu();
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(&out),
            None => x.shallow_clone(),
        };
        let out = self.conv1.forward(&out);
        let out = self.conv2.forward(&self.bn2.forward_t(&out, train).relu());
        out + shortcut
    }
}

pub(crate) struct PreActResNet18 {
    conv1: Conv2d,
    blocks: Vec<PreActBlock>,
    bn: BatchNorm2d,
    linear: Linear,
}

impl PreActResNet18 {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let conv1 = Conv2d::new(&b.sub("conv1"), spec.in_channels, 64, ConvOpts::k3(1, init))?;
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (i, (width, stride)) in STAGES.into_iter().enumerate() {
            let layer = b.sub(format!("layer{}", i + 1));
            for j in 0..2 {
                let s = if j == 0 { stride } else { 1 };
                blocks.push(PreActBlock::new(&layer.sub(j), cin, width, s)?);
                cin = width;
            }
        }
        let bn = BatchNorm2d::new(&b.sub("bn"), 512)?;
        let linear = Linear::new(&b.sub("linear"), 512, spec.num_classes)?;
        Ok(PreActResNet18 {
            conv1,
            blocks,
            bn,
            linear,
        })
    }
}

impl Net for PreActResNet18 {
    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.conv1.forward(x);
        for block in &self.blocks {
            x = block.forward_t(&x, train);
        }
        global_avg_pool(&self.bn.forward_t(&x, train).relu())
    }
    fn head(&self) -> &Linear {
        &self.linear
    }
    fn feature_dim(&self) -> i64 {
        512
    }
}
