//! LeNet-5: conv1 (6, k5, pad 2) ReLU maxpool2 -> conv2 (16, k5) ReLU maxpool2 -> flatten ->
//! fc1 (120) ReLU -> fc2 (84) ReLU -> fc3.

use super::Net;
use crate::layers::{max_pool2, Builder, Conv2d, ConvInit, ConvOpts, Linear};
use crate::layout::LayerOp;
use crate::spec::{Activation, ModelSpec};
use rustworthy_core::Result;
use tch::Tensor;

pub(crate) struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    act: Activation,
}

/// Spatial size after conv1 (same) -> pool -> conv2 (valid, k5) -> pool.
fn flat_side(side: i64) -> i64 {
    (side / 2 - 4) / 2
}

impl LeNet5 {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let conv = |padding| ConvOpts {
            kernel: 5,
            stride: 1,
            padding,
            bias: true,
            init: ConvInit::TorchDefault,
        };
        let (h, w) = spec.input_size;
        let flat = 16 * flat_side(h) * flat_side(w);
        Ok(LeNet5 {
            conv1: Conv2d::new(&b.sub("conv1"), spec.in_channels, 6, conv(2))?,
            conv2: Conv2d::new(&b.sub("conv2"), 6, 16, conv(0))?,
            fc1: Linear::new(&b.sub("fc1"), flat, 120)?,
            fc2: Linear::new(&b.sub("fc2"), 120, 84)?,
            fc3: Linear::new(&b.sub("fc3"), 84, spec.num_classes)?,
            act: spec.activation,
        })
    }
}

impl Net for LeNet5 {
    fn features(&self, x: &Tensor, _train: bool) -> Tensor {
        let a = self.act;
        let x = max_pool2(&a.apply(&self.conv1.forward(x)), false);
        let x = max_pool2(&a.apply(&self.conv2.forward(&x)), false);
        let x = a.apply(&self.fc1.forward(&x.flatten(1, -1)));
        a.apply(&self.fc2.forward(&x))
    }
    fn head(&self) -> &Linear {
        &self.fc3
    }
    fn feature_dim(&self) -> i64 {
        84
    }
    fn layout(&self) -> Option<Vec<LayerOp>> {
        use LayerOp::{Flatten, MaxPool2, Relu};
        if !self.act.is_relu() {
            return None;
        }
        Some(vec![
            self.conv1.op(),
            Relu,
            MaxPool2,
            self.conv2.op(),
            Relu,
            MaxPool2,
            Flatten,
            self.fc1.op(),
            Relu,
            self.fc2.op(),
            Relu,
            self.fc3.op(),
        ])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flatten_sizes() {
        assert_eq!(super::flat_side(28), 5);
        assert_eq!(super::flat_side(32), 6);
    }
}
