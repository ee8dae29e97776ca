//! The layout of a zoo network: its forward pass as a chain of named operations, the one
//! description other crates build on (DeepZero's coordinate-wise estimator evaluates a network
//! functionally from it). Each network writes its layout from the layers it holds, beside its
//! `forward`, and a test runs every layout through [`run_layout`] and checks it against the
//! network's own forward pass bit for bit.

use rustworthy_core::{Error, Result};
use std::collections::BTreeMap;
use tch::Tensor;

/// One operation of a network's forward pass. Names are state-dict prefixes: a layer `name`
/// owns `name.weight`, `name.bias` (where it has one) and, for batch norm, the running
/// statistics and `name.num_batches_tracked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerOp {
    /// A 2-D convolution (square kernel, dilation 1, one group).
    Conv2d {
        /// State-dict prefix.
        name: String,
        /// Stride in both directions.
        stride: i64,
        /// Zero padding on every side.
        padding: i64,
        /// Whether it has a bias.
        bias: bool,
    },
    /// A fully connected layer with bias.
    Linear {
        /// State-dict prefix.
        name: String,
    },
    /// 2-D batch norm with affine parameters and running statistics (eps 1e-5, momentum 0.1).
    BatchNorm2d {
        /// State-dict prefix.
        name: String,
    },
    /// ReLU.
    Relu,
    /// 2x2 max-pooling with stride 2 (floor mode).
    MaxPool2,
    /// Flatten everything after the batch dimension.
    Flatten,
    /// Global average pooling to `[B, C]`.
    GlobalAvgPool,
    /// A residual block: `relu(body(x) + shortcut(x))`.
    Residual {
        /// The main branch.
        body: Vec<LayerOp>,
        /// The shortcut branch.
        shortcut: Shortcut,
    },
}

/// The shortcut branch of a [`LayerOp::Residual`] block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// The input itself.
    Identity,
    /// A chain of layers (ResNet-18's 1x1 convolution and batch norm).
    Layers(Vec<LayerOp>),
    /// He et al.'s option A: spatial subsampling by `stride`, then `lo`/`hi` zero channels
    /// before/after the input's.
    ZeroPad {
        /// Subsampling stride.
        stride: i64,
        /// Zero channels in front.
        lo: i64,
        /// Zero channels behind.
        hi: i64,
    },
}

impl LayerOp {
    /// The layer's state-dict prefix, for layers with variables.
    pub fn name(&self) -> Option<&str> {
        match self {
            LayerOp::Conv2d { name, .. }
            | LayerOp::Linear { name }
            | LayerOp::BatchNorm2d { name } => Some(name),
            _ => None,
        }
    }
}

/// Runs `ops` on `x` with the variables in `vars` (state-dict names), as the network's
/// forward pass does; batch norm uses batch statistics and updates the running ones when
/// `train`. The input must already be normalized.
pub fn run_layout(
    ops: &[LayerOp],
    vars: &BTreeMap<String, Tensor>,
    x: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let get = |name: &str, what: &str| -> Result<&Tensor> {
        let key = format!("{name}.{what}");
        vars.get(&key)
            .ok_or_else(|| Error::invalid(format!("layout names `{key}`, which the model lacks")))
    };
    let mut h = x.shallow_clone();
    for op in ops {
        h = match op {
            LayerOp::Conv2d {
                name,
                stride,
                padding,
                bias,
            } => {
                let b = if *bias {
                    Some(get(name, "bias")?)
                } else {
                    None
                };
                h.f_conv2d(
                    get(name, "weight")?,
                    b,
                    [*stride, *stride],
                    [*padding, *padding],
                    [1, 1],
                    1,
                )?
            }
            LayerOp::Linear { name } => {
                h.f_linear(get(name, "weight")?, Some(get(name, "bias")?))?
            }
            LayerOp::BatchNorm2d { name } => {
                if train {
                    let mut n = get(name, "num_batches_tracked")?.shallow_clone();
                    let _ = tch::no_grad(|| n.f_add_scalar_(1))?;
                }
                h.f_batch_norm(
                    Some(get(name, "weight")?),
                    Some(get(name, "bias")?),
                    Some(get(name, "running_mean")?),
                    Some(get(name, "running_var")?),
                    train,
                    crate::layers::BN_MOMENTUM,
                    crate::layers::BN_EPS,
                    true,
                )?
            }
            LayerOp::Relu => h.f_relu()?,
            LayerOp::MaxPool2 => h.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            LayerOp::Flatten => h.f_flatten(1, -1)?,
            LayerOp::GlobalAvgPool => h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?,
            LayerOp::Residual { body, shortcut } => {
                let out = run_layout(body, vars, &h, train)?;
                let sc = match shortcut {
                    Shortcut::Identity => h.shallow_clone(),
                    Shortcut::Layers(l) => run_layout(l, vars, &h, train)?,
                    Shortcut::ZeroPad { stride, lo, hi } => {
                        let s = if *stride != 1 {
                            h.slice(2, 0, None, *stride).slice(3, 0, None, *stride)
                        } else {
                            h.shallow_clone()
                        };
                        if lo + hi > 0 {
                            s.f_constant_pad_nd([0, 0, 0, 0, *lo, *hi])?
                        } else {
                            s
                        }
                    }
                };
                (out + sc).f_relu()?
            }
        };
    }
    Ok(h)
}
