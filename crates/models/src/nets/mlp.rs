//! MLP: flatten -> fc1 (256) ReLU -> fc2 (256) ReLU -> fc3.

use super::Net;
use crate::layers::{Builder, Linear};
use crate::layout::LayerOp;
use crate::spec::{Activation, ModelSpec};
use rustworthy_core::Result;
use tch::Tensor;

const HIDDEN: i64 = 256;

pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(b: &Builder, spec: &ModelSpec) -> Result<Self> {
        let (h, w) = spec.input_size;
        let in_features = spec.in_channels * h * w;
        Ok(Mlp {
            fc1: Linear::new(&b.sub("fc1"), in_features, HIDDEN)?,
            fc2: Linear::new(&b.sub("fc2"), HIDDEN, HIDDEN)?,
            fc3: Linear::new(&b.sub("fc3"), HIDDEN, spec.num_classes)?,
            act: spec.activation,
        })
    }
}

impl Net for Mlp {
    fn features(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = self.act.apply(&self.fc1.forward(&x.flatten(1, -1)));
        self.act.apply(&self.fc2.forward(&x))
    }
    fn head(&self) -> &Linear {
        &self.fc3
    }
    fn feature_dim(&self) -> i64 {
        HIDDEN
    }
    fn layout(&self) -> Option<Vec<LayerOp>> {
        use LayerOp::{Flatten, Relu};
        if !self.act.is_relu() {
            return None;
        }
        Some(vec![
            Flatten,
            self.fc1.op(),
            Relu,
            self.fc2.op(),
            Relu,
            self.fc3.op(),
        ])
    }
}
