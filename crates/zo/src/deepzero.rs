//! DeepZero-style training (Chen et al., ICLR'24): coordinate-wise gradient estimates (CGE,
//! forward differences) of the training loss over a sparse coordinate set, with
//!
//! - **feature reuse**: the network is run once per step on the batch and the input and
//!   pre-activation of every layer are kept; a perturbed coordinate of layer `l` restarts the
//!   forward pass at layer `l` from those activations;
//! - **batched perturbations**: the perturbed copies of a layer's output for many coordinates are
//!   stacked along the batch and the rest of the network runs once on the stack (batch-norm
//!   statistics are computed per copy, as `K` separate forward passes would);
//! - **exact affine updates**: a layer's output with weight `W + mu e_c` is its cached output
//!   plus `mu` times one input feature (linear) or one shifted input channel (convolution),
//!   so the perturbed layer itself costs no matrix product;
//! - **ZO-GraSP**: layer-wise densities from GraSP scores `theta * Hg` whose gradient and
//!   Hessian-gradient product are themselves ZO estimates (RGE, and a finite difference of two
//!   RGEs with common directions); the coordinates of each layer are drawn at random at its
//!   density and redrawn every few epochs.
//!
//! Queries: one per network evaluation on the batch, so a step costs `1 + |S|` queries.

use crate::estimate::{Dist, Rge};
use crate::objective::{Objective, Oracle};
use rustworthy_core::seed::{derive, SeedRng};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::layout::{self, LayerOp};
use rustworthy_models::spec::Arch;
use rustworthy_models::Model;
use rustworthy_train::{EpochRecord, EpochVerdict, TrainHook};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AffOp {
    Conv { stride: i64, pad: i64 },
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pre {
    None,
    Flatten,
    AvgPool,
}

struct Bn {
    w: Tensor,
    b: Tensor,
    rm: Tensor,
    rv: Tensor,
    count: Tensor,
}

enum Post {
    Bn(Bn),
    Relu,
    MaxPool2,
}

struct Affine {
    op: AffOp,
    pre: Pre,
    w: Tensor,
    b: Option<Tensor>,
    post: Vec<Post>,
}

enum Shortcut {
    Identity,
    ZeroPad { stride: i64, lo: i64, hi: i64 },
}

struct Block {
    c1: Affine,
    c2: Affine,
    sc: Shortcut,
}

enum Unit {
    Affine(Affine),
    Block(Block),
}

/// Activations of one unit kept from the base forward pass.
enum Cache {
    Affine {
        a: Tensor,
        z: Tensor,
    },
    Block {
        x: Tensor,
        pre1: Tensor,
        h1: Tensor,
        pre2: Tensor,
        sc: Tensor,
    },
}

/// A parameter tensor whose coordinates CGE can perturb.
#[derive(Clone, Debug)]
pub struct Slot {
    /// State-dict name.
    pub name: String,
    /// Number of coordinates of the tensor.
    pub numel: i64,
    unit: usize,
    /// 0: the unit's affine layer (or a block's first convolution), 1: a block's second.
    part: u8,
    /// A bias (always estimated in full) rather than a weight.
    pub bias: bool,
}

/// A network of the zoo as a chain of units, evaluated functionally on the model's own
/// parameter tensors (updates by the optimizer are seen at once).
pub struct ZoNet {
    units: Vec<Unit>,
    /// Every parameter tensor of the chain, in order.
    pub slots: Vec<Slot>,
    /// Stack perturbed copies of batch-norm networks on the host too (off by default: one copy
    /// per chunk with the fused kernel is faster there; tests turn it on to check the stacked
    /// path).
    pub stack_on_host: bool,
    mean: Tensor,
    std: Tensor,
}

fn aff_forward(f: &Affine, a: &Tensor) -> Tensor {
    match f.op {
        AffOp::Conv { stride, pad } => {
            a.conv2d(&f.w, f.b.as_ref(), [stride, stride], [pad, pad], [1, 1], 1)
        }
        AffOp::Linear => a.linear(&f.w, f.b.as_ref()),
    }
}

fn pre(p: Pre, x: &Tensor) -> Tensor {
    match p {
        Pre::None => x.shallow_clone(),
        Pre::Flatten => x.flatten(1, -1),
        Pre::AvgPool => x.adaptive_avg_pool2d([1, 1]).flatten(1, -1),
    }
}

/// Batch norm over `k` stacked copies of a batch, each with its own statistics (train), or with
/// the running statistics (eval). `update` (k = 1 only) updates the running statistics.
fn bn(n: &Bn, x: &Tensor, k: i64, train: bool, update: bool) -> Tensor {
    if !train || update {
        if update {
            let mut c = n.count.shallow_clone();
            let _ = c.g_add_scalar_(1);
        }
        return x.batch_norm(
            Some(&n.w),
            Some(&n.b),
            Some(&n.rm),
            Some(&n.rv),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        );
    }
    if k == 1 {
        // One copy: the fused kernel, batch statistics, running statistics untouched.
        return x.batch_norm(
            Some(&n.w),
            Some(&n.b),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            BN_MOMENTUM,
            BN_EPS,
            true,
        );
    }
    let s = x.size();
    let c = s[1];
    let g = x.view([k, s[0] / k, c, -1]);
    let mean = g.mean_dim([1, 3].as_slice(), true, None);
    let var = g.var_correction([1, 3].as_slice(), 0, true);
    let y = (g - mean) / (var + BN_EPS).sqrt();
    let y = y * n.w.view([1, 1, c, 1]) + n.b.view([1, 1, c, 1]);
    y.view(s.as_slice())
}

/// Applies post-operations. `owned`: `x` may be overwritten (ReLU then runs in place); after
/// the first operation that allocates, the result is owned either way.
fn post(ops: &[Post], x: Tensor, k: i64, train: bool, update: bool, owned: bool) -> Tensor {
    let mut x = x;
    let mut owned = owned;
    for op in ops {
        x = match op {
            Post::Bn(n) => bn(n, &x, k, train, update),
            Post::Relu if owned => x.relu_(),
            Post::Relu => x.relu(),
            Post::MaxPool2 => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
        };
        owned = true;
    }
    x
}

fn shortcut(s: &Shortcut, x: &Tensor) -> Tensor {
    match *s {
        Shortcut::Identity => x.shallow_clone(),
        Shortcut::ZeroPad { stride, lo, hi } => {
            let t = if stride != 1 {
                x.slice(2, 0, None, stride).slice(3, 0, None, stride)
            } else {
                x.shallow_clone()
            };
            if lo + hi > 0 {
                t.constant_pad_nd([0, 0, 0, 0, lo, hi])
            } else {
                t
            }
        }
    }
}

/// Repeats a `[B, ...]` tensor `k` times along the batch (copy-major).
fn rep(x: &Tensor, k: i64) -> Tensor {
    let mut shape = vec![k];
    shape.extend(std::iter::repeat_n(1, x.dim()));
    x.unsqueeze(0).repeat(shape.as_slice()).flatten(0, 1)
}

/// The output channel `o_k` of each coordinate and the change `[K, B or 1, L or 1]` that moving
/// it by `mu` makes to that channel of the layer's pre-activation (`L` = spatial size), read
/// from the unfolded layer input `cols` (see [`unfold`]; unused for a bias).
fn coord_change(
    f: &Affine,
    cols: &Tensor,
    z: &Tensor,
    bias: bool,
    coords: &Tensor,
    mu: f64,
) -> (Tensor, Tensor) {
    let k = coords.size()[0];
    let cout = z.size()[1];
    let fan = if bias { 1 } else { f.w.numel() as i64 / cout };
    let o = coords.divide_scalar_mode(fan, "floor");
    let dv = if bias {
        Tensor::full([k, 1, 1], mu, (z.kind(), z.device()))
    } else {
        // [B, K, L] -> [K, B, L]
        cols.index_select(1, &coords.remainder(fan))
            .permute([1, 0, 2])
            * mu
    };
    (o, dv)
}

/// Channels `o` (`[K]`) of a `[B, C, ...]` tensor as `[K, B, S]`.
fn channels(t: &Tensor, o: &Tensor) -> Tensor {
    let s = t.size();
    t.view([s[0], s[1], -1])
        .index_select(1, o)
        .permute([1, 0, 2])
}

/// The change of an affine layer's output `[K, B, ...]` when coordinate `coords[k]` of its
/// weight (or bias) moves by `mu`.
fn delta(f: &Affine, cols: &Tensor, z: &Tensor, coords: &Tensor, bias: bool, mu: f64) -> Tensor {
    let k = coords.size()[0];
    let zs = z.size();
    let cout = zs[1];
    let (o, dv) = coord_change(f, cols, z, bias, coords, mu);
    // [K, 1, Cout, 1] one-hot of the output channel of each coordinate.
    let onehot = Tensor::zeros([k, cout], (z.kind(), z.device()))
        .scatter_value(1, &o.unsqueeze(1), 1.0)
        .view([k, 1, cout, 1]);
    let d = onehot * dv.unsqueeze(2);
    let mut shape = vec![k, if bias { 1 } else { zs[0] }, cout];
    shape.extend(zs[2..].iter().map(|&n| if bias { 1 } else { n }));
    d.view(shape.as_slice())
}

/// A layer input unfolded so that row `r` of `[B, fan, L]` is what weight `r` of an output
/// channel multiplies (the input features of a linear layer, `L = 1`; im2col of a convolution).
fn unfold(f: &Affine, a: &Tensor) -> Tensor {
    match f.op {
        AffOp::Linear => a.unsqueeze(2),
        AffOp::Conv { stride, pad } => {
            let ws = f.w.size();
            a.im2col([ws[2], ws[3]], [1, 1], [pad, pad], [stride, stride])
        }
    }
}

/// Channel `o_k` of an affine layer's post-activation output with coordinate `coords[k]` moved
/// by `mu`, for every k: the channel indices `[K]` and the channel `[K, B, S']`. The layer's
/// post-operations run on that channel alone (batch norm with the channel's own parameters and,
/// in training, its statistics over the copy).
fn perturbed_channel(
    f: &Affine,
    cols: &Tensor,
    z: &Tensor,
    bias: bool,
    coords: &Tensor,
    mu: f64,
    train: bool,
) -> (Tensor, Tensor) {
    let k = coords.size()[0];
    let zs = z.size();
    let b = zs[0];
    let (o, dv) = coord_change(f, cols, z, bias, coords, mu);
    let mut x = channels(z, &o) + dv; // [K, B, S]
    let mut spatial: Vec<i64> = zs[2..].to_vec();
    for op in &f.post {
        x = match op {
            Post::Relu => x.relu(),
            Post::MaxPool2 => {
                let y = x.reshape([k * b, 1, spatial[0], spatial[1]]).max_pool2d(
                    [2, 2],
                    [2, 2],
                    [0, 0],
                    [1, 1],
                    false,
                );
                spatial = y.size()[2..].to_vec();
                y.view([k, b, -1])
            }
            Post::Bn(n) => {
                let (w, bb) = (
                    n.w.index_select(0, &o).view([k, 1, 1]),
                    n.b.index_select(0, &o).view([k, 1, 1]),
                );
                let (mean, var) = if train {
                    (
                        x.mean_dim([1, 2].as_slice(), true, None),
                        x.var_correction([1, 2].as_slice(), 0, true),
                    )
                } else {
                    (
                        n.rm.index_select(0, &o).view([k, 1, 1]),
                        n.rv.index_select(0, &o).view([k, 1, 1]),
                    )
                };
                (x - mean) / (var + BN_EPS).sqrt() * w + bb
            }
        };
    }
    (o, x)
}

/// The change of a convolution's output `[K, B, Cout, Ho, Wo]` when only input channel `o_k`
/// changes, by `dh[k]` (`[K, B, H * W]`): each copy's change, unfolded, times its channel's
/// slice of the weight.
fn conv_one_channel(g: &Affine, dh: &Tensor, o: &Tensor, hw: (i64, i64)) -> Tensor {
    let AffOp::Conv { stride, pad } = g.op else {
        unreachable!("a convolution")
    };
    let (k, b) = (dh.size()[0], dh.size()[1]);
    let ws = g.w.size();
    let cols = dh.reshape([k * b, 1, hw.0, hw.1]).im2col(
        [ws[2], ws[3]],
        [1, 1],
        [pad, pad],
        [stride, stride],
    );
    let l = cols.size()[2];
    let cols = cols
        .view([k, b, ws[2] * ws[3], l])
        .permute([0, 2, 1, 3])
        .reshape([k, ws[2] * ws[3], b * l]);
    let wsl =
        g.w.index_select(1, o)
            .permute([1, 0, 2, 3])
            .reshape([k, ws[0], ws[2] * ws[3]]);
    let side = |n: i64, kk: i64| (n + 2 * pad - kk) / stride + 1;
    let (ho, wo) = (side(hw.0, ws[2]), side(hw.1, ws[3]));
    wsl.bmm(&cols)
        .view([k, ws[0], b, ho, wo])
        .permute([0, 2, 1, 3, 4])
}

/// Mean cross-entropy of each of the `k` stacked copies: `[k]`.
fn group_loss(logits: &Tensor, y: &Tensor, k: i64) -> Tensor {
    let yk = rep(y, k);
    logits
        .cross_entropy_loss::<Tensor>(&yk, None, tch::Reduction::None, -100, 0.0)
        .view([k, -1])
        .mean_dim(1, false, Some(Kind::Double))
}

/// Activation floats that the perturbed copies of one chunk of coordinates may hold at once.
/// On the host a chunk's tensors should stay cache-sized (16 MB here: larger chunks were
/// 1.5-2.4x slower on LeNet-5, smaller ones pay per-chunk overhead); on a GPU, large chunks fill
/// the device.
const CHUNK_FLOATS_CPU: i64 = 1 << 22;
const CHUNK_FLOATS_CUDA: i64 = 1 << 26;

/// The model's variables by state-dict name, turned into the chain's layers.
struct VarLookup(BTreeMap<String, Tensor>);

impl VarLookup {
    fn new(model: &Model) -> Self {
        VarLookup(
            model
                .parameters()
                .into_iter()
                .chain(model.buffers())
                .collect(),
        )
    }

    fn get(&self, name: &str, what: &str) -> Result<Tensor> {
        self.0
            .get(&format!("{name}.{what}"))
            .map(|t| t.shallow_clone())
            .ok_or_else(|| Error::invalid(format!("model has no variable `{name}.{what}`")))
    }

    /// A convolution or linear layer of the layout, with the state-dict prefix of its slots.
    fn affine(&self, op: &LayerOp, pre: Pre) -> Result<(Affine, String)> {
        let (aff, name, bias) = match op {
            LayerOp::Conv2d {
                name,
                stride,
                padding,
                bias,
            } if pre == Pre::None => (
                AffOp::Conv {
                    stride: *stride,
                    pad: *padding,
                },
                name,
                *bias,
            ),
            LayerOp::Linear { name } => (AffOp::Linear, name, true),
            _ => {
                return Err(Error::invalid(format!(
                    "{op:?} is not an affine layer here"
                )))
            }
        };
        Ok((
            Affine {
                op: aff,
                pre,
                w: self.get(name, "weight")?,
                b: if bias {
                    Some(self.get(name, "bias")?)
                } else {
                    None
                },
                post: Vec::new(),
            },
            name.clone(),
        ))
    }

    /// Batch norm, ReLU or max-pooling after an affine layer.
    fn post(&self, op: &LayerOp) -> Result<Post> {
        Ok(match op {
            LayerOp::BatchNorm2d { name } => Post::Bn(Bn {
                w: self.get(name, "weight")?,
                b: self.get(name, "bias")?,
                rm: self.get(name, "running_mean")?,
                rv: self.get(name, "running_var")?,
                count: self.get(name, "num_batches_tracked")?,
            }),
            LayerOp::Relu => Post::Relu,
            LayerOp::MaxPool2 => Post::MaxPool2,
            _ => return Err(Error::invalid(format!("{op:?} cannot follow a layer here"))),
        })
    }
}

impl ZoNet {
    /// Builds the chain of `model` from its layout ([`Model::layout`]): convolutions and
    /// linear layers, each followed by batch norm, ReLU or 2x2 max-pooling, and residual blocks
    /// of two convolutions with a parameter-free shortcut (LeNet-5, MLP, ResNet-20).
    pub fn new(model: &Model) -> Result<ZoNet> {
        let Some(layout) = model.layout() else {
            return Err(Error::config(
                "model.arch",
                format!(
                    "zeroth-order (DeepZero) training rebuilds the network layer by layer from \
                     its layout; {} has none (use lenet, mlp or resnet20 with ReLU)",
                    if model.arch() == Arch::TorchScript {
                        "a TorchScript model".to_string()
                    } else if !model.spec().activation.is_relu() {
                        format!(
                            "{} with {} activations",
                            model.arch(),
                            model.spec().activation
                        )
                    } else {
                        model.arch().to_string()
                    }
                ),
            ));
        };
        let unsupported = |what: &str| {
            Error::config(
                "model.arch",
                format!(
                    "zeroth-order (DeepZero) training supports lenet, mlp and resnet20, not {} \
                     ({what})",
                    model.arch()
                ),
            )
        };
        let vars = VarLookup::new(model);
        let mut units = Vec::new();
        let mut names = Vec::new();
        let mut pre = Pre::None;
        for op in &layout {
            match op {
                LayerOp::Conv2d { .. } | LayerOp::Linear { .. } => {
                    let (f, n) = vars.affine(op, pre).map_err(|_| unsupported("layer"))?;
                    units.push(Unit::Affine(f));
                    names.push(vec![n]);
                    pre = Pre::None;
                }
                LayerOp::Flatten | LayerOp::GlobalAvgPool if pre == Pre::None => {
                    pre = if *op == LayerOp::Flatten {
                        Pre::Flatten
                    } else {
                        Pre::AvgPool
                    };
                }
                LayerOp::BatchNorm2d { .. } | LayerOp::Relu | LayerOp::MaxPool2
                    if pre == Pre::None =>
                {
                    let Some(Unit::Affine(last)) = units.last_mut() else {
                        return Err(unsupported("an activation after a residual block"));
                    };
                    last.post.push(vars.post(op)?);
                }
                LayerOp::Residual { body, shortcut } if pre == Pre::None => {
                    let [c1 @ LayerOp::Conv2d { .. }, b1 @ LayerOp::BatchNorm2d { .. }, LayerOp::Relu, c2 @ LayerOp::Conv2d { .. }, b2 @ LayerOp::BatchNorm2d { .. }] =
                        body.as_slice()
                    else {
                        return Err(unsupported(
                            "a residual block other than conv-bn-relu-conv-bn",
                        ));
                    };
                    let sc = match shortcut {
                        layout::Shortcut::Identity => Shortcut::Identity,
                        layout::Shortcut::ZeroPad { stride, lo, hi } => Shortcut::ZeroPad {
                            stride: *stride,
                            lo: *lo,
                            hi: *hi,
                        },
                        layout::Shortcut::Layers(_) => {
                            return Err(unsupported("a projection shortcut"))
                        }
                    };
                    let (mut c1, n1) = vars.affine(c1, Pre::None)?;
                    c1.post = vec![vars.post(b1)?, Post::Relu];
                    let (mut c2, n2) = vars.affine(c2, Pre::None)?;
                    c2.post = vec![vars.post(b2)?];
                    units.push(Unit::Block(Block { c1, c2, sc }));
                    names.push(vec![n1, n2]);
                }
                _ => return Err(unsupported("two pooling or flattening steps in a row")),
            }
        }
        if pre != Pre::None || !matches!(units.last(), Some(Unit::Affine(_))) {
            return Err(unsupported("a network that does not end in a linear layer"));
        }
        let mut slots = Vec::new();
        for (u, (unit, ns)) in units.iter().zip(&names).enumerate() {
            let parts: Vec<&Affine> = match unit {
                Unit::Affine(f) => vec![f],
                Unit::Block(b) => vec![&b.c1, &b.c2],
            };
            for (part, (f, n)) in parts.into_iter().zip(ns).enumerate() {
                slots.push(Slot {
                    name: format!("{n}.weight"),
                    numel: f.w.numel() as i64,
                    unit: u,
                    part: part as u8,
                    bias: false,
                });
                if let Some(b) = &f.b {
                    slots.push(Slot {
                        name: format!("{n}.bias"),
                        numel: b.numel() as i64,
                        unit: u,
                        part: part as u8,
                        bias: true,
                    });
                }
            }
        }
        let dev = model.device();
        let (mean, std) = (
            model.normalize(&Tensor::zeros(
                [1, model.spec.in_channels, 1, 1],
                (Kind::Float, dev),
            )),
            model.normalize(&Tensor::ones(
                [1, model.spec.in_channels, 1, 1],
                (Kind::Float, dev),
            )),
        );
        // normalize(x) = (x - m) / s = x * (n1 - n0) + n0
        Ok(ZoNet {
            units,
            slots,
            stack_on_host: false,
            mean,
            std,
        })
    }

    fn normalize(&self, x: &Tensor) -> Tensor {
        x * (&self.std - &self.mean) + &self.mean
    }

    fn affine(&self, s: &Slot) -> &Affine {
        match (&self.units[s.unit], s.part) {
            (Unit::Affine(f), _) => f,
            (Unit::Block(b), 0) => &b.c1,
            (Unit::Block(b), _) => &b.c2,
        }
    }

    /// The parameter tensor of a slot.
    pub fn tensor(&self, s: &Slot) -> Tensor {
        let f = self.affine(s);
        if s.bias {
            f.b.as_ref().expect("bias slot").shallow_clone()
        } else {
            f.w.shallow_clone()
        }
    }

    fn unit_forward(
        &self,
        u: usize,
        x: &Tensor,
        k: i64,
        train: bool,
        update: bool,
    ) -> (Tensor, Cache) {
        match &self.units[u] {
            Unit::Affine(f) => {
                let a = pre(f.pre, x);
                let z = aff_forward(f, &a);
                let out = post(&f.post, z.shallow_clone(), k, train, update, k > 1);
                (out, Cache::Affine { a, z })
            }
            Unit::Block(b) => {
                let pre1 = aff_forward(&b.c1, x);
                let h1 = post(&b.c1.post, pre1.shallow_clone(), k, train, update, k > 1);
                let pre2 = aff_forward(&b.c2, &h1);
                let sc = shortcut(&b.sc, x);
                let out =
                    (post(&b.c2.post, pre2.shallow_clone(), k, train, update, k > 1) + &sc).relu();
                (
                    out,
                    Cache::Block {
                        x: x.shallow_clone(),
                        pre1,
                        h1,
                        pre2,
                        sc,
                    },
                )
            }
        }
    }

    /// Logits of the unperturbed network (train: batch statistics, updating the running ones when
    /// `update`) and the per-unit caches.
    fn forward_cached(&self, x: &Tensor, train: bool, update: bool) -> (Tensor, Vec<Cache>) {
        let mut h = self.normalize(x);
        let mut caches = Vec::with_capacity(self.units.len());
        for u in 0..self.units.len() {
            let (out, c) = self.unit_forward(u, &h, 1, train, update);
            caches.push(c);
            h = out;
        }
        (h, caches)
    }

    /// Logits of the network, no caches kept (used by the reference path and tests).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        tch::no_grad(|| self.forward_cached(x, train, false).0)
    }

    fn tail(&self, from: usize, mut h: Tensor, k: i64, train: bool) -> Tensor {
        for u in from..self.units.len() {
            h = self.unit_forward(u, &h, k, train, false).0;
        }
        h
    }

    /// Whether any unit normalizes with batch statistics.
    fn has_bn(&self) -> bool {
        let bn = |f: &Affine| f.post.iter().any(|p| matches!(p, Post::Bn(_)));
        self.units.iter().any(|u| match u {
            Unit::Affine(f) => bn(f),
            Unit::Block(b) => bn(&b.c1) || bn(&b.c2),
        })
    }

    /// Largest per-sample activation size from unit `u` on.
    fn act_floats(&self, caches: &[Cache], u: usize) -> i64 {
        caches[u..]
            .iter()
            .map(|c| match c {
                Cache::Affine { z, .. } => z.numel() as i64 / z.size()[0],
                Cache::Block { pre1, .. } => pre1.numel() as i64 / pre1.size()[0],
            })
            .max()
            .unwrap_or(1)
    }

    /// Losses with coordinate `coords[k]` of `slot` moved by `mu`, for every k: `[K]` (f64).
    fn perturbed_losses(
        &self,
        caches: &[Cache],
        y: &Tensor,
        slot: &Slot,
        coords: &Tensor,
        mu: f64,
        train: bool,
    ) -> Tensor {
        let b = y.size()[0];
        let floats = if y.device().is_cuda() {
            CHUNK_FLOATS_CUDA
        } else {
            CHUNK_FLOATS_CPU
        };
        // On the host, batch norm over stacked copies (per-copy statistics, unfused) costs more
        // than it saves: networks with batch norm run one coordinate per chunk there, with the
        // fused kernel (measured 1.9x faster on ResNet-20).
        let per = if !y.device().is_cuda() && self.has_bn() && !self.stack_on_host {
            1
        } else {
            (floats / (b * self.act_floats(caches, slot.unit).max(1))).max(1)
        };
        let n = coords.size()[0];
        let f = self.affine(slot);
        // The perturbed layer's input, unfolded once for all chunks.
        let input = match &caches[slot.unit] {
            Cache::Affine { a, .. } => a,
            Cache::Block { x, .. } if slot.part == 0 => x,
            Cache::Block { h1, .. } => h1,
        };
        let cols = if slot.bias {
            input.shallow_clone()
        } else {
            unfold(f, input)
        };
        let mut out = Vec::new();
        let mut s = 0;
        while s < n {
            let k = per.min(n - s);
            let c = coords.narrow(0, s, k);
            // The output of the first unit not yet run, and that unit's index.
            let (h, next) =
                if let Some(h) = self.next_affine_fast(caches, slot, &cols, &c, mu, train) {
                    (h, slot.unit + 2)
                } else if let Some(h) = self.block_conv1_fast(caches, slot, &cols, &c, mu, train) {
                    (h, slot.unit + 1)
                } else {
                    (
                        self.perturbed_unit(caches, slot, &cols, &c, mu, train),
                        slot.unit + 1,
                    )
                };
            let logits = self.tail(next, h, k, train);
            out.push(group_loss(&logits, y, k));
            s += k;
        }
        Tensor::cat(&out, 0)
    }

    /// The perturbed unit's output for each coordinate where no shortcut applies: its perturbed
    /// pre-activation from the cache, then the rest of the unit on the stacked copies.
    fn perturbed_unit(
        &self,
        caches: &[Cache],
        slot: &Slot,
        cols: &Tensor,
        c: &Tensor,
        mu: f64,
        train: bool,
    ) -> Tensor {
        let k = c.size()[0];
        let f = self.affine(slot);
        match (&self.units[slot.unit], &caches[slot.unit]) {
            (Unit::Affine(_), Cache::Affine { z, .. }) => {
                let zk = (z.unsqueeze(0) + delta(f, cols, z, c, slot.bias, mu)).flatten(0, 1);
                post(&f.post, zk, k, train, false, true)
            }
            // A block's first convolution always takes `block_conv1_fast`; this is its second.
            (Unit::Block(bl), Cache::Block { pre2, sc, .. }) if slot.part == 1 => {
                let pre2k =
                    (pre2.unsqueeze(0) + delta(f, cols, pre2, c, slot.bias, mu)).flatten(0, 1);
                (post(&bl.c2.post, pre2k, k, train, false, true) + rep(sc, k)).relu_()
            }
            _ => unreachable!("caches follow the units; block conv1 has its own path"),
        }
    }

    /// The output of unit `u + 1` for each perturbed coordinate of an affine unit `u` whose
    /// successor is affine: only output channel `o` of unit `u` changes, so the change of the
    /// successor's pre-activation is the successor applied to that one channel's change (a
    /// rank-one product for a linear layer, a one-channel convolution for a convolution).
    /// `None` where the shortcut does not apply.
    fn next_affine_fast(
        &self,
        caches: &[Cache],
        slot: &Slot,
        cols: &Tensor,
        coords: &Tensor,
        mu: f64,
        train: bool,
    ) -> Option<Tensor> {
        let u = slot.unit;
        let (Unit::Affine(f), Some(Unit::Affine(g))) = (&self.units[u], self.units.get(u + 1))
        else {
            return None;
        };
        if g.pre == Pre::AvgPool {
            return None;
        }
        let (Cache::Affine { z, .. }, Cache::Affine { a: a2, z: z2 }) =
            (&caches[u], &caches[u + 1])
        else {
            return None;
        };
        let k = coords.size()[0];
        let (b, cout) = (z.size()[0], z.size()[1]);
        let (o, h_new) = perturbed_channel(f, cols, z, slot.bias, coords, mu, train);
        // The base channel after the post-operations, from the successor's cached input.
        let h_base = channels(&a2.view([b, cout, -1]), &o);
        let dh = h_new - h_base; // [K, B, S']
        let s2 = dh.size()[2];
        if g.op == AffOp::Linear && s2 == 1 {
            // Rank one: z2 + dh * W2[:, o], in one pass.
            let wcol = g.w.index_select(1, &o).tr().unsqueeze(1); // [K, 1, out2]
            let z2k = z2.unsqueeze(0).addcmul(&dh, &wcol).flatten(0, 1);
            return Some(post(&g.post, z2k, k, train, false, true));
        }
        let dz2 = match g.op {
            AffOp::Linear => {
                let out2 = g.w.size()[0];
                let wsl =
                    g.w.view([out2, cout, s2])
                        .index_select(1, &o)
                        .permute([1, 2, 0]);
                dh.bmm(&wsl)
            }
            AffOp::Conv { .. } => {
                let hw = a2.size();
                conv_one_channel(g, &dh, &o, (hw[2], hw[3]))
            }
        };
        let z2k =
            (z2.unsqueeze(0) + dz2.view([vec![k], z2.size()].concat().as_slice())).flatten(0, 1);
        Some(post(&g.post, z2k, k, train, false, true))
    }

    /// A residual block's output for each perturbed coordinate of its first convolution: only
    /// channel `o` of the first pre-activation changes, through batch norm (its statistics are
    /// per channel) and ReLU, so the second convolution's change is a one-channel convolution.
    fn block_conv1_fast(
        &self,
        caches: &[Cache],
        slot: &Slot,
        cols: &Tensor,
        coords: &Tensor,
        mu: f64,
        train: bool,
    ) -> Option<Tensor> {
        let (
            Unit::Block(bl),
            Cache::Block {
                pre1, h1, pre2, sc, ..
            },
        ) = (&self.units[slot.unit], &caches[slot.unit])
        else {
            return None;
        };
        if slot.part != 0 {
            return None;
        }
        let k = coords.size()[0];
        let (o, h_new) = perturbed_channel(&bl.c1, cols, pre1, slot.bias, coords, mu, train);
        let dh = h_new - channels(h1, &o);
        let hw = h1.size();
        let d2 = conv_one_channel(&bl.c2, &dh, &o, (hw[2], hw[3]));
        let pre2k = (pre2.unsqueeze(0) + d2).flatten(0, 1);
        Some((post(&bl.c2.post, pre2k, k, train, false, true) + rep(sc, k)).relu_())
    }

    /// One CGE estimate of the batch loss's gradient on the coordinates `coords` (per slot,
    /// flat int64 indices; slots without an entry get zeros): forward differences with radius
    /// `mu`, feature reuse and batched perturbations. Returns the base loss and logits, the
    /// estimates (one `[numel]` tensor per slot) and the queries spent.
    pub fn cge(
        &self,
        x: &Tensor,
        y: &Tensor,
        coords: &[Option<Tensor>],
        mu: f64,
        train: bool,
    ) -> (Tensor, Tensor, Vec<Tensor>, u64) {
        tch::no_grad(|| {
            let (logits, caches) = self.forward_cached(x, train, train);
            let base = group_loss(&logits, y, 1);
            let mut queries = 1u64;
            let grads = self
                .slots
                .iter()
                .zip(coords)
                .map(|(s, c)| {
                    let dev = x.device();
                    let g = Tensor::zeros([s.numel], (Kind::Float, dev));
                    if let Some(c) = c {
                        if c.numel() > 0 {
                            let l = self.perturbed_losses(&caches, y, s, c, mu, train);
                            queries += c.numel() as u64;
                            let d = ((l - &base) / mu).to_kind(Kind::Float);
                            return g.index_copy(0, c, &d);
                        }
                    }
                    g
                })
                .collect();
            (base.to_kind(Kind::Float).squeeze(), logits, grads, queries)
        })
    }

    /// The same estimate one coordinate at a time, each a full forward pass with the parameter
    /// moved in place (the loop of the published implementation; the test and benchmark
    /// reference). Batch-norm statistics are not updated.
    pub fn cge_naive(
        &self,
        x: &Tensor,
        y: &Tensor,
        coords: &[Option<Tensor>],
        mu: f64,
        train: bool,
    ) -> Vec<Tensor> {
        tch::no_grad(|| {
            let base = group_loss(&self.forward_cached(x, train, false).0, y, 1).double_value(&[0]);
            self.slots
                .iter()
                .zip(coords)
                .map(|(s, c)| {
                    let mut g = vec![0f32; s.numel as usize];
                    let t = self.tensor(s).view([-1]);
                    if let Some(c) = c {
                        for i in Vec::<i64>::try_from(c).unwrap_or_default() {
                            let old = t.double_value(&[i]);
                            let _ = t.get(i).fill_(old + mu);
                            let l = group_loss(&self.forward_cached(x, train, false).0, y, 1)
                                .double_value(&[0]);
                            let _ = t.get(i).fill_(old);
                            g[i as usize] = ((l - base) / mu) as f32;
                        }
                    }
                    Tensor::from_slice(&g).to_device(x.device())
                })
                .collect()
        })
    }
}

/// DeepZero training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoTrainConfig {
    /// Fraction of the weight coordinates left out of each estimate (biases are always in).
    pub sparsity: f64,
    /// Forward-difference radius (5e-3 in DeepZero).
    #[serde(default = "default_mu")]
    pub mu: f64,
    /// Redraw the coordinate set every this many epochs (5 in DeepZero).
    #[serde(default = "default_resample")]
    pub resample_every: usize,
    /// RGE directions of ZO-GraSP.
    #[serde(default = "default_grasp_q")]
    pub grasp_q: usize,
    /// Training samples in the ZO-GraSP batch.
    #[serde(default = "default_grasp_batch")]
    pub grasp_batch: usize,
}

fn default_mu() -> f64 {
    5e-3
}
fn default_resample() -> usize {
    5
}
fn default_grasp_q() -> usize {
    64
}
fn default_grasp_batch() -> usize {
    256
}

impl ZoTrainConfig {
    /// DeepZero's settings at `sparsity` (mu 5e-3, resampling every 5 epochs, ZO-GraSP with 64
    /// directions on 256 samples).
    pub fn new(sparsity: f64) -> Self {
        ZoTrainConfig {
            sparsity,
            mu: default_mu(),
            resample_every: default_resample(),
            grasp_q: default_grasp_q(),
            grasp_batch: default_grasp_batch(),
        }
    }
    /// Checks every field; errors name the field (`zo.sparsity`, ...).
    pub fn validate(&self) -> Result<()> {
        validate::in_half_open("zo.sparsity", self.sparsity, 0.0, 1.0)?;
        validate::finite("zo.mu", self.mu)?;
        if self.mu <= 0.0 {
            return Err(Error::config(
                "zo.mu",
                format!("must be > 0, got {}", self.mu),
            ));
        }
        validate::positive_int("zo.resample_every", self.resample_every)?;
        validate::positive_int("zo.grasp_q", self.grasp_q)?;
        validate::positive_int("zo.grasp_batch", self.grasp_batch)?;
        Ok(())
    }
}

/// The loss of a batch as a function of the flat vector of all weights in `slots` (one forward
/// pass per query point; used by ZO-GraSP).
struct WeightObjective<'a> {
    net: &'a ZoNet,
    slots: Vec<Slot>,
    x: Tensor,
    y: Tensor,
}

impl WeightObjective<'_> {
    fn flat(&self) -> Tensor {
        Tensor::cat(
            &self
                .slots
                .iter()
                .map(|s| self.net.tensor(s).view([-1]))
                .collect::<Vec<_>>(),
            0,
        )
    }
    fn set(&self, v: &Tensor) {
        let mut o = 0;
        for s in &self.slots {
            let mut t = self.net.tensor(s);
            t.copy_(&v.narrow(0, o, s.numel).view(t.size().as_slice()));
            o += s.numel;
        }
    }
}

impl Objective for WeightObjective<'_> {
    fn dim(&self) -> i64 {
        self.slots.iter().map(|s| s.numel).sum()
    }
    fn eval(&mut self, xs: &Tensor, _b: Option<&Tensor>) -> Result<Tensor> {
        tch::no_grad(|| {
            let keep = self.flat();
            let vals: Vec<Tensor> = (0..xs.size()[0])
                .map(|i| {
                    self.set(&xs.get(i));
                    group_loss(&self.net.forward(&self.x, true), &self.y, 1).to_kind(Kind::Float)
                })
                .collect();
            self.set(&keep);
            Ok(Tensor::cat(&vals, 0))
        })
    }
}

/// Layer-wise densities from ZO-GraSP: scores `theta * Hg` with `g` an RGE of the batch loss
/// and `Hg ~ (g(theta + delta g) - g(theta)) / delta` (common directions), kept globally at
/// `1 - sparsity`. Returns `(weight slot name, density)` and the queries spent.
pub fn zo_grasp_densities(
    net: &ZoNet,
    x: &Tensor,
    y: &Tensor,
    sparsity: f64,
    q: usize,
    seed: u64,
) -> Result<(BTreeMap<String, f64>, u64)> {
    let slots: Vec<Slot> = net.slots.iter().filter(|s| !s.bias).cloned().collect();
    let obj = WeightObjective {
        net,
        slots: slots.clone(),
        x: x.shallow_clone(),
        y: y.shallow_clone(),
    };
    let theta = obj.flat();
    let mut o = Oracle::new(obj, None)?;
    let rge = Rge {
        dist: Dist::Gaussian,
        q,
        mu: 5e-3,
        diff: crate::estimate::Diff::Forward,
    };
    let g = rge.estimate(&mut o, &theta, None, seed)?.grad;
    let delta = 1e-2 / g.norm().double_value(&[]).max(1e-12);
    let g2 = rge
        .estimate(&mut o, &(&theta + &g * delta), None, seed)?
        .grad;
    let hg = (g2 - &g) / delta;
    let score = (&theta * hg).to_kind(Kind::Double);
    let n = score.numel() as i64;
    let keep = ((1.0 - sparsity) * n as f64).round() as i64;
    let mut mask = Tensor::zeros([n], (Kind::Double, x.device()));
    if keep > 0 {
        let (_, top) = score.topk(keep, 0, true, false);
        mask = mask.index_fill(0, &top, 1.0);
    }
    let mut out = BTreeMap::new();
    let mut off = 0;
    for s in &slots {
        let d = mask
            .narrow(0, off, s.numel)
            .mean(Kind::Double)
            .double_value(&[]);
        out.insert(s.name.clone(), d);
        off += s.numel;
    }
    Ok((out, o.queries()))
}

/// A training hook that replaces backpropagation by DeepZero's sparse CGE: per step, the
/// estimates are written into the parameters' gradients and the configured optimizer steps.
pub struct DeepZeroStep {
    /// The settings the hook trains with.
    pub cfg: ZoTrainConfig,
    net: Option<ZoNet>,
    densities: BTreeMap<String, f64>,
    coords: Vec<Option<Tensor>>,
    grasp_batch: (Tensor, Tensor),
    densities_file: Option<PathBuf>,
    seed: u64,
    /// Queries (network evaluations on a batch) so far, ZO-GraSP's included.
    pub queries: u64,
    epoch: usize,
}

impl DeepZeroStep {
    /// `grasp_batch`: the training batch ZO-GraSP scores on. `densities_file`: where the
    /// layer densities are kept so that a resumed run reuses them.
    pub fn new(
        cfg: ZoTrainConfig,
        grasp_batch: (Tensor, Tensor),
        densities_file: Option<PathBuf>,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        Ok(DeepZeroStep {
            cfg,
            net: None,
            densities: BTreeMap::new(),
            coords: Vec::new(),
            grasp_batch,
            densities_file,
            seed,
            queries: 0,
            epoch: 0,
        })
    }

    /// The density (share of coordinates estimated) of every weight tensor by name, from ZO-GraSP;
    /// empty before training begins.
    pub fn densities(&self) -> &BTreeMap<String, f64> {
        &self.densities
    }

    /// Coordinates estimated per step.
    pub fn coordinates(&self) -> i64 {
        self.coords.iter().flatten().map(|c| c.numel() as i64).sum()
    }

    fn draw(&mut self, epoch: usize) {
        let net = self.net.as_ref().expect("net built in begin");
        let round = (epoch / self.cfg.resample_every) as u64;
        let mut rng = SeedRng::stream(self.seed, "deepzero-coords", round);
        self.coords = net
            .slots
            .iter()
            .map(|s| {
                let dev = net.tensor(s).device();
                if s.bias {
                    return Some(Tensor::arange(s.numel, (Kind::Int64, dev)));
                }
                let d = self.densities.get(&s.name).copied().unwrap_or(0.0);
                let k = (d * s.numel as f64).round() as usize;
                if k == 0 {
                    return None;
                }
                let mut perm = rng.permutation(s.numel as usize);
                perm.truncate(k);
                perm.sort_unstable();
                let v: Vec<i64> = perm.into_iter().map(|i| i as i64).collect();
                Some(Tensor::from_slice(&v).to_device(dev))
            })
            .collect();
    }
}

impl TrainHook for DeepZeroStep {
    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.cfg).ok()
    }

    fn begin(&mut self, model: &Model, history: &[EpochRecord]) -> Result<()> {
        let net = ZoNet::new(model)?;
        let stored = match (&self.densities_file, history.is_empty()) {
            (Some(f), false) => {
                let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
                Some(
                    serde_json::from_slice::<BTreeMap<String, f64>>(&bytes)
                        .map_err(|e| Error::corrupt(f, format!("layer densities: {e}")))?,
                )
            }
            _ => None,
        };
        self.densities = match stored {
            Some(d) => d,
            None => {
                let dev = model.device();
                let (x, y) = (
                    self.grasp_batch.0.to_device(dev),
                    self.grasp_batch.1.to_device(dev),
                );
                let (d, q) = zo_grasp_densities(
                    &net,
                    &x,
                    &y,
                    self.cfg.sparsity,
                    self.cfg.grasp_q,
                    derive(self.seed, "zo-grasp", 0),
                )?;
                self.queries += q;
                if let Some(f) = &self.densities_file {
                    rustworthy_core::fsutil::write_json_atomic(f, &d)?;
                }
                d
            }
        };
        if let Some(last) = history.last() {
            self.queries = last.extra.get("queries_total").copied().unwrap_or(0.0) as u64;
        }
        self.epoch = history.len();
        self.net = Some(net);
        self.draw(self.epoch);
        Ok(())
    }

    fn step(&mut self, _model: &Model, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let net = self
            .net
            .as_ref()
            .ok_or_else(|| Error::invalid("DeepZero step before begin"))?;
        let (loss, logits, grads, q) = net.cge(x, y, &self.coords, self.cfg.mu, true);
        self.queries += q;
        if !bool::try_from(loss.isfinite())? {
            return Err(Error::Numerical(
                "the zeroth-order training loss is not finite".into(),
            ));
        }
        // Write the estimates into the gradients: d/dp sum(p * g) = g. The net's tensors are
        // the model's own variables.
        let mut surrogate = Tensor::zeros([], (Kind::Float, x.device()));
        for (s, g) in net.slots.iter().zip(&grads) {
            let p = net.tensor(s);
            surrogate += (&p * g.view(p.size().as_slice())).sum(Kind::Float);
        }
        surrogate.backward();
        Ok((loss, logits))
    }

    fn end_epoch(&mut self, _model: &mut Model, epoch: usize) -> Result<EpochVerdict> {
        let mut v = EpochVerdict::default();
        v.extra.insert("queries_total".into(), self.queries as f64);
        v.extra
            .insert("coordinates".into(), self.coordinates() as f64);
        self.epoch = epoch + 1;
        if self.epoch.is_multiple_of(self.cfg.resample_every) {
            self.draw(self.epoch);
        }
        Ok(v)
    }
}
