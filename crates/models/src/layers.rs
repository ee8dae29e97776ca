//! Building blocks: a variable registry that keeps PyTorch state-dict order, and the layers
//! (convolution, linear, batch norm) with PyTorch's initialisation schemes.

use crate::layout::LayerOp;
use rustworthy_core::Result;
use std::cell::RefCell;
use tch::{nn, Device, Kind, Tensor};

/// What a registered variable is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Trainable parameter.
    Param,
    /// Float buffer (BN running statistics).
    Buffer,
    /// Int64 scalar counter (BN `num_batches_tracked`): saved, never required on load.
    Counter,
}

/// One variable of a model under its PyTorch state-dict name.
pub(crate) struct Var {
    pub name: String,
    pub tensor: Tensor,
    pub role: Role,
}

/// Registers variables in a [`nn::VarStore`] and records them in creation order, which is the
/// order of the PyTorch state dict.
#[derive(Clone)]
pub(crate) struct Builder<'a> {
    path: nn::Path<'a>,
    registry: &'a RefCell<Vec<Var>>,
    /// The module's state-dict prefix (`layer1.0.conv1`; empty at the root).
    prefix: String,
}

impl<'a> Builder<'a> {
    pub fn new(vs: &'a nn::VarStore, registry: &'a RefCell<Vec<Var>>) -> Self {
        Builder {
            path: vs.root(),
            registry,
            prefix: String::new(),
        }
    }

    /// A builder for a sub-module: names get the prefix `name.`.
    pub fn sub<T: ToString>(&self, name: T) -> Builder<'a> {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() {
            name.clone()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Builder {
            path: self.path.sub(name),
            registry: self.registry,
            prefix,
        }
    }

    /// The module's state-dict prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> Device {
        self.path.device()
    }

    fn register(&self, name: &str, tensor: Tensor, role: Role) -> Tensor {
        let full = self.path.path(name);
        debug_assert!(
            self.registry.borrow().iter().all(|v| v.name != full),
            "variable {full} registered twice"
        );
        let t = self.path.add(name, tensor, role == Role::Param);
        self.registry.borrow_mut().push(Var {
            name: full,
            tensor: t.shallow_clone(),
            role,
        });
        t
    }

    fn options(&self) -> (Kind, Device) {
        (Kind::Float, self.device())
    }

    /// A parameter drawn from U(-bound, bound).
    pub fn uniform(&self, name: &str, dims: &[i64], bound: f64) -> Result<Tensor> {
        let t = Tensor::f_empty(dims, self.options())?.f_uniform_(-bound, bound)?;
        Ok(self.register(name, t, Role::Param))
    }

    /// A parameter drawn from N(0, std^2).
    pub fn normal(&self, name: &str, dims: &[i64], std: f64) -> Result<Tensor> {
        let t = Tensor::f_empty(dims, self.options())?.f_normal_(0.0, std)?;
        Ok(self.register(name, t, Role::Param))
    }

    /// A parameter filled with a constant.
    pub fn constant(&self, name: &str, dims: &[i64], value: f64) -> Result<Tensor> {
        let t = Tensor::f_full(dims, value, self.options())?;
        Ok(self.register(name, t, Role::Param))
    }

    /// A float buffer filled with a constant.
    pub fn buffer(&self, name: &str, dims: &[i64], value: f64) -> Result<Tensor> {
        let t = Tensor::f_full(dims, value, self.options())?;
        Ok(self.register(name, t, Role::Buffer))
    }

    /// An int64 scalar counter starting at 0.
    pub fn counter(&self, name: &str) -> Result<Tensor> {
        let t = Tensor::f_zeros([], (Kind::Int64, self.device()))?;
        Ok(self.register(name, t, Role::Counter))
    }
}

/// `1 / sqrt(fan_in)`: the bound of PyTorch's default weight and bias init for conv and
/// linear layers (kaiming-uniform with `a = sqrt(5)` for the weight).
pub(crate) fn default_bound(fan_in: i64) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// How a convolution's weight is initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvInit {
    /// PyTorch's module default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    TorchDefault,
    /// torchvision's ResNet scheme: weight ~ N(0, 2 / fan_out) (kaiming normal, fan_out, relu);
    /// a bias, if any, keeps the module default.
    KaimingFanOut,
}

/// A 2-D convolution with square kernel, stride and padding.
pub(crate) struct Conv2d {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

/// Options of [`Conv2d::new`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvOpts {
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub bias: bool,
    pub init: ConvInit,
}

impl ConvOpts {
    /// 3x3, padding 1, no bias: the ResNet convolution.
    pub fn k3(stride: i64, init: ConvInit) -> Self {
        ConvOpts {
            kernel: 3,
            stride,
            padding: 1,
            bias: false,
            init,
        }
    }

    /// 1x1, no padding, no bias: the projection shortcut.
    pub fn k1(stride: i64, init: ConvInit) -> Self {
        ConvOpts {
            kernel: 1,
            stride,
            padding: 0,
            bias: false,
            init,
        }
    }
}

impl Conv2d {
    pub fn new(b: &Builder, cin: i64, cout: i64, o: ConvOpts) -> Result<Self> {
        let dims = [cout, cin, o.kernel, o.kernel];
        let fan_in = cin * o.kernel * o.kernel;
        let weight = match o.init {
            ConvInit::TorchDefault => b.uniform("weight", &dims, default_bound(fan_in))?,
            ConvInit::KaimingFanOut => {
                let fan_out = cout * o.kernel * o.kernel;
                b.normal("weight", &dims, (2.0 / fan_out as f64).sqrt())?
            }
        };
        let bias = if o.bias {
            Some(b.uniform("bias", &[cout], default_bound(fan_in))?)
        } else {
            None
        };
        Ok(Conv2d {
            name: b.prefix().to_string(),
            weight,
            bias,
            stride: o.stride,
            padding: o.padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }

    /// This layer in the network's layout.
    pub fn op(&self) -> LayerOp {
        LayerOp::Conv2d {
            name: self.name.clone(),
            stride: self.stride,
            padding: self.padding,
            bias: self.bias.is_some(),
        }
    }
}

/// A fully connected layer with PyTorch's default init.
pub(crate) struct Linear {
    name: String,
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(b: &Builder, fan_in: i64, fan_out: i64) -> Result<Self> {
        let bound = default_bound(fan_in);
        let weight = b.uniform("weight", &[fan_out, fan_in], bound)?;
        let bias = b.uniform("bias", &[fan_out], bound)?;
        Ok(Linear {
            name: b.prefix().to_string(),
            weight,
            bias,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }

    /// This layer in the network's layout.
    pub fn op(&self) -> LayerOp {
        LayerOp::Linear {
            name: self.name.clone(),
        }
    }
}

/// Batch-norm epsilon (PyTorch default).
pub(crate) const BN_EPS: f64 = 1e-5;
/// Batch-norm running-statistics momentum (PyTorch default).
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// 2-D batch norm with affine parameters and running statistics.
pub(crate) struct BatchNorm2d {
    name: String,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    pub fn new(b: &Builder, channels: i64) -> Result<Self> {
        Ok(BatchNorm2d {
            name: b.prefix().to_string(),
            weight: b.constant("weight", &[channels], 1.0)?,
            bias: b.constant("bias", &[channels], 0.0)?,
            running_mean: b.buffer("running_mean", &[channels], 0.0)?,
            running_var: b.buffer("running_var", &[channels], 1.0)?,
            num_batches_tracked: b.counter("num_batches_tracked")?,
        })
    }

    /// Normalizes with batch statistics (updating the running ones) when `train`, else with the
    /// running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let mut n = self.num_batches_tracked.shallow_clone();
                let _ = n.g_add_scalar_(1);
            });
        }
        if train {
            if let Some(group) = rustworthy_dist::sync_batch_norm_group() {
                match group.sync_batch_norm(
                    x,
                    Some(&self.weight),
                    Some(&self.bias),
                    Some(&self.running_mean),
                    Some(&self.running_var),
                    BN_MOMENTUM,
                    BN_EPS,
                ) {
                    Ok(y) => return y,
                    // The training loop takes the failure after the step; the local batch
                    // norm below only keeps this forward pass well defined until then.
                    Err(e) => rustworthy_dist::record_failure(e),
                }
            }
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }

    /// This layer in the network's layout.
    pub fn op(&self) -> LayerOp {
        LayerOp::BatchNorm2d {
            name: self.name.clone(),
        }
    }
}

/// Global average pooling to `[B, C]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// 2x2 max-pooling with stride 2.
pub(crate) fn max_pool2(x: &Tensor, ceil_mode: bool) -> Tensor {
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], ceil_mode)
}
