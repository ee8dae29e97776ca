//! VGG-16 (configuration D) with batch norm. `features.{i}` follows the numbering of the
//! torchvision `Sequential` (conv, bn, relu per convolution; each max-pool takes one index).
//! Pools use ceil mode so 28x28 inputs work (same as floor mode for 32x32). Then adaptive
//! average pooling to 1x1, flatten, and `classifier`, a single Linear(512 -> classes).

use super::Net;
use crate::layers::{
    global_avg_pool, max_pool2, BatchNorm2d, Builder, Conv2d, ConvInit, ConvOpts, Linear,
};
use crate::spec::ModelSpec;
use rustworthy_core::Result;
use tch::Tensor;

/// Output widths of the convolutions; `None` is a max-pool.
const CFG_D: [Option<i64>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

enum Layer {
    ConvBnRelu(Conv2d, BatchNorm2d),
    MaxPool,
}

pub(crate) struct Vgg16Bn {
    features: Vec<Layer>,
    classifier: Linear,
}

impl Vgg16Bn {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let f = b.sub("features");
        let mut features = Vec::new();
        let mut index = 0;
        let mut cin = spec.in_channels;
        for entry in CFG_D {
            match entry {
                Some(width) => {
                    let opts = ConvOpts {
                        kernel: 3,
                        stride: 1,
                        padding: 1,
                        bias: true,
                        init: ConvInit::TorchDefault,
                    };
                    let conv = Conv2d::new(&f.sub(index), cin, width, opts)?;
                    let bn = BatchNorm2d::new(&f.sub(index + 1), width)?;
                    features.push(Layer::ConvBnRelu(conv, bn));
                    index += 3;
                    cin = width;
                }
                None => {
                    features.push(Layer::MaxPool);
                    index += 1;
                }
            }
        }
        let classifier = Linear::new(&b.sub("classifier"), 512, spec.num_classes)?;
        Ok(Vgg16Bn {
            features,
            classifier,
        })
    }
}

impl Net for Vgg16Bn {
    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.features {
            x = match layer {
                Layer::ConvBnRelu(conv, bn) => bn.forward_t(&conv.forward(&x), train).relu(),
                Layer::MaxPool => max_pool2(&x, true),
            };
        }
        global_avg_pool(&x)
    }
    fn head(&self) -> &Linear {
        &self.classifier
    }
    fn feature_dim(&self) -> i64 {
        512
    }
}
