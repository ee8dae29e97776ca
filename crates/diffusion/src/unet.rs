//! The class-conditional U-Net of SalUn's DDPM code (the DDPM U-Net of Ho et al. as the `ddim`
//! code writes it, with a class pathway): a sinusoidal time embedding through a two-layer MLP,
//! a class embedding (or a learned null vector) through its own two-layer MLP, the two joined
//! by concatenation and projected into every residual block, self-attention at the chosen
//! resolutions, and skip connections between the down and up paths.
//!
//! Parameter names follow the reference layout (`temb.dense.0.weight`,
//! `down.0.block.1.norm1.weight`, `mid.attn_1.q.weight`, `classes_emb.weight`,
//! `null_classes_emb`, ...) so weights move between this model and a PyTorch module of the same
//! layout by name.

use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The U-Net's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels (1 for Fashion-MNIST).
    pub in_channels: i64,
    /// Image side in pixels (square images).
    pub resolution: i64,
    /// Base channel count (`ch`; 128 in SalUn's CIFAR-10 model).
    pub ch: i64,
    /// Channel multiplier per resolution level (`[1, 2, 2, 2]` for CIFAR-10).
    pub ch_mult: Vec<i64>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub num_res_blocks: usize,
    /// Resolutions (in pixels) at which blocks are followed by self-attention.
    pub attn_resolutions: Vec<i64>,
    /// Dropout inside residual blocks (0.1 in the reference).
    pub dropout: f64,
    /// Number of classes of the conditioning.
    pub num_classes: i64,
    /// Groups of every GroupNorm (32 in the reference; must divide every channel count).
    pub groups: i64,
}

impl UNetConfig {
    /// The reference CIFAR-10 model's settings at `resolution` with `in_channels` channels and
    /// ten classes: `ch` 128, `ch_mult` [1, 2, 2, 2], two residual blocks per level, attention
    /// at 16 pixels, dropout 0.1, 32 groups.
    pub fn reference(in_channels: i64, resolution: i64) -> Self {
        UNetConfig {
            in_channels,
            resolution,
            ch: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            num_classes: 10,
            groups: 32,
        }
    }

    /// Checks that the settings describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::config(format!("unet.{f}"), m));
        if self.in_channels < 1 {
            return bad(
                "in_channels",
                format!("must be >= 1, got {}", self.in_channels),
            );
        }
        if self.ch < 1 || self.groups < 1 {
            return bad(
                "ch",
                format!("ch {} and groups {} must be >= 1", self.ch, self.groups),
            );
        }
        if self.ch_mult.is_empty() || self.ch_mult.iter().any(|&m| m < 1) {
            return bad(
                "ch_mult",
                format!("must be non-empty and positive, got {:?}", self.ch_mult),
            );
        }
        if self.num_res_blocks < 1 || self.num_res_blocks > 16 {
            return bad(
                "num_res_blocks",
                format!("must be in 1..=16, got {}", self.num_res_blocks),
            );
        }
        // Bounds that keep a corrupt config from asking for absurd allocations.
        if self.ch > 4096 || self.ch_mult.len() > 8 || self.ch_mult.iter().any(|&m| m > 64) {
            return bad(
                "ch",
                format!(
                    "ch {} x ch_mult {:?} is beyond any supported size",
                    self.ch, self.ch_mult
                ),
            );
        }
        if !(2..=4096).contains(&self.resolution)
            || self.in_channels > 64
            || self.num_classes > 1_000_000
        {
            return bad(
                "resolution",
                format!(
                    "resolution {} (2..=4096), in_channels {} (<= 64) or num_classes {} (<= 1e6) out of range",
                    self.resolution, self.in_channels, self.num_classes
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if self.num_classes < 1 {
            return bad(
                "num_classes",
                format!("must be >= 1, got {}", self.num_classes),
            );
        }
        for m in std::iter::once(&1).chain(&self.ch_mult) {
            if (self.ch * m) % self.groups != 0 {
                return bad(
                    "groups",
                    format!(
                        "{} groups do not divide {} channels",
                        self.groups,
                        self.ch * m
                    ),
                );
            }
        }
        // About 2 x 9 c^2 weights per convolution, two per block, down and up.
        let widest = self.ch * self.ch_mult.iter().max().copied().unwrap_or(1);
        let approx = 2.0
            * 9.0
            * (widest as f64).powi(2)
            * 2.0
            * (self.num_res_blocks as f64 + 1.0)
            * self.ch_mult.len() as f64;
        if approx > 1e9 {
            return bad(
                "ch",
                format!("about {approx:.1e} parameters: beyond any supported size"),
            );
        }
        let mut r = self.resolution;
        for level in 0..self.ch_mult.len() - 1 {
            if r < 2 || r % 2 != 0 {
                return bad(
                    "resolution",
                    format!(
                        "{} pixels cannot be halved {} times (level {level} has {r}; each level but the last needs an even side)",
                        self.resolution,
                        self.ch_mult.len() - 1
                    ),
                );
            }
            r /= 2;
        }
        Ok(())
    }

    /// The side at each level: `resolution`, then halved (rounded down) per downsampling.
    pub fn level_sizes(&self) -> Vec<i64> {
        let mut r = self.resolution;
        let mut out = Vec::new();
        for _ in &self.ch_mult {
            out.push(r);
            r /= 2;
        }
        out
    }
}

/// `x * sigmoid(x)`.
fn swish(x: &Tensor) -> Tensor {
    x * x.sigmoid()
}

/// The sinusoidal embedding of the timesteps `t` (float, `[B]`) in `dim` dimensions: sines then
/// cosines of `t * exp(-ln(10000) * i / (dim/2 - 1))`, zero-padded when `dim` is odd.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let scale = (10000f64).ln() / ((half - 1).max(1) as f64);
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * -scale).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.sin(), args.cos()], 1);
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

fn group_norm(p: nn::Path, groups: i64, c: i64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        groups,
        c,
        nn::GroupNormConfig {
            eps: 1e-6,
            ..Default::default()
        },
    )
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        i,
        o,
        k,
        nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, emb: i64, groups: i64, dropout: f64) -> Self {
        ResBlock {
            norm1: group_norm(&p / "norm1", groups, cin),
            conv1: conv(&p / "conv1", cin, cout, 3, 1, 1),
            proj: nn::linear(&p / "temb_cemb_proj", emb, cout, Default::default()),
            norm2: group_norm(&p / "norm2", groups, cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            shortcut: (cin != cout).then(|| conv(&p / "nin_shortcut", cin, cout, 1, 1, 0)),
            dropout,
        }
    }

    /// `emb` is `swish(cat(temb, cemb))`, computed once per forward.
    fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = swish(&x.apply(&self.norm1)).apply(&self.conv1);
        let h = h + self.proj.forward(emb).unsqueeze(-1).unsqueeze(-1);
        let h = swish(&h.apply(&self.norm2))
            .dropout(self.dropout, train)
            .apply(&self.conv2);
        match &self.shortcut {
            Some(s) => x.apply(s) + h,
            None => x + h,
        }
    }
}

#[derive(Debug)]
struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64, groups: i64) -> Self {
        AttnBlock {
            norm: group_norm(&p / "norm", groups, c),
            q: conv(&p / "q", c, c, 1, 1, 0),
            k: conv(&p / "k", c, c, 1, 1, 0),
            v: conv(&p / "v", c, c, 1, 1, 0),
            proj_out: conv(&p / "proj_out", c, c, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap();
        let n = x.apply(&self.norm);
        let q = n.apply(&self.q).reshape([b, c, h * w]).permute([0, 2, 1]);
        let k = n.apply(&self.k).reshape([b, c, h * w]);
        let v = n.apply(&self.v).reshape([b, c, h * w]);
        let att = (q.bmm(&k) * (c as f64).powf(-0.5)).softmax(2, Kind::Float);
        let out = v.bmm(&att.permute([0, 2, 1])).reshape([b, c, h, w]);
        x + out.apply(&self.proj_out)
    }
}

#[derive(Debug)]
struct Level {
    blocks: Vec<ResBlock>,
    attns: Vec<AttnBlock>,
    resample: Option<nn::Conv2D>,
}

/// The class-conditional U-Net.
pub struct CondUNet {
    /// The variables, under the reference names.
    pub vs: nn::VarStore,
    /// The settings it was built with.
    pub config: UNetConfig,
    temb: [nn::Linear; 2],
    cemb: [nn::Linear; 2],
    classes_emb: Tensor,
    null_emb: Tensor,
    conv_in: nn::Conv2D,
    down: Vec<Level>,
    mid: (ResBlock, AttnBlock, ResBlock),
    up: Vec<Level>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl std::fmt::Debug for CondUNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CondUNet")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl CondUNet {
    /// A freshly initialised model (PyTorch's default initialisations; the null class vector
    /// standard normal as in the reference) on `device`, drawn from libtorch's global generator.
    pub fn new(config: &UNetConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let emb_ch = c.ch * 4;
        let g = c.groups;
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let temb = [
            lin(&root / "temb" / "dense" / 0, c.ch, emb_ch),
            lin(&root / "temb" / "dense" / 1, emb_ch, emb_ch),
        ];
        let cemb = [
            lin(&root / "cemb" / "dense" / 0, c.ch, emb_ch),
            lin(&root / "cemb" / "dense" / 1, emb_ch, emb_ch),
        ];
        let classes_emb = (&root / "classes_emb").var(
            "weight",
            &[c.num_classes, c.ch],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let null_emb = root.var(
            "null_classes_emb",
            &[c.ch],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let conv_in = conv(&root / "conv_in", c.in_channels, c.ch, 3, 1, 1);
        let sizes = c.level_sizes();
        let levels = c.ch_mult.len();
        let mut in_mult = vec![1];
        in_mult.extend(&c.ch_mult);
        let joint = 2 * emb_ch;
        let mut down = Vec::new();
        let mut block_in = c.ch;
        for (i, &m) in c.ch_mult.iter().enumerate() {
            let p = &root / "down" / i as i64;
            let block_out = c.ch * m;
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for b in 0..c.num_res_blocks {
                blocks.push(ResBlock::new(
                    &p / "block" / b as i64,
                    block_in,
                    block_out,
                    joint,
                    g,
                    c.dropout,
                ));
                block_in = block_out;
                if c.attn_resolutions.contains(&sizes[i]) {
                    attns.push(AttnBlock::new(&p / "attn" / b as i64, block_in, g));
                }
            }
            let resample = (i + 1 != levels)
                .then(|| conv(&p / "downsample" / "conv", block_in, block_in, 3, 2, 0));
            down.push(Level {
                blocks,
                attns,
                resample,
            });
        }
        let pm = &root / "mid";
        let mid = (
            ResBlock::new(&pm / "block_1", block_in, block_in, joint, g, c.dropout),
            AttnBlock::new(&pm / "attn_1", block_in, g),
            ResBlock::new(&pm / "block_2", block_in, block_in, joint, g, c.dropout),
        );
        let mut up: Vec<Level> = Vec::new();
        for i in (0..levels).rev() {
            let p = &root / "up" / i as i64;
            let block_out = c.ch * c.ch_mult[i];
            let mut skip_in = c.ch * c.ch_mult[i];
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for b in 0..=c.num_res_blocks {
                if b == c.num_res_blocks {
                    skip_in = c.ch * in_mult[i];
                }
                blocks.push(ResBlock::new(
                    &p / "block" / b as i64,
                    block_in + skip_in,
                    block_out,
                    joint,
                    g,
                    c.dropout,
                ));
                block_in = block_out;
                if c.attn_resolutions.contains(&sizes[i]) {
                    attns.push(AttnBlock::new(&p / "attn" / b as i64, block_in, g));
                }
            }
            let resample =
                (i != 0).then(|| conv(&p / "upsample" / "conv", block_in, block_in, 3, 1, 1));
            up.insert(
                0,
                Level {
                    blocks,
                    attns,
                    resample,
                },
            );
        }
        let norm_out = group_norm(&root / "norm_out", g, block_in);
        let conv_out = conv(&root / "conv_out", block_in, c.in_channels, 3, 1, 1);
        Ok(CondUNet {
            vs,
            config: config.clone(),
            temb,
            cemb,
            classes_emb,
            null_emb,
            conv_in,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of scalar parameters.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Every variable by its reference name, sorted.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The class embedding table `[num_classes, ch]` (the attack's vocabulary).
    pub fn class_table(&self) -> &Tensor {
        &self.classes_emb
    }

    /// The learned null class vector `[ch]`.
    pub fn null_vector(&self) -> &Tensor {
        &self.null_emb
    }

    /// The class vectors `[B, ch]` for `labels`, with the null vector where `keep` is false
    /// (`keep` `[B]` bool; `None` keeps every label). Labels out of range are an error.
    pub fn class_vectors(&self, labels: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
        let n = self.config.num_classes;
        if labels.dim() != 1 {
            return Err(Error::Shape {
                op: "class labels".into(),
                expected: "[B]".into(),
                got: labels.size(),
            });
        }
        if labels.numel() > 0 {
            // One copy to the host for both ends (on a GPU, the one synchronization left in a
            // training step).
            let ends: Vec<i64> = Vec::try_from(
                Tensor::stack(&[labels.min(), labels.max()], 0).to_kind(Kind::Int64),
            )?;
            let (lo, hi) = (ends[0], ends[1]);
            if lo < 0 || hi >= n {
                return Err(Error::invalid(format!(
                    "class label out of range: labels span {lo}..={hi}, the model has {n} classes"
                )));
            }
        }
        let v = self.classes_emb.index_select(0, labels);
        Ok(match keep {
            Some(k) => v.where_self(&k.unsqueeze(1), &self.null_emb.unsqueeze(0)),
            None => v,
        })
    }

    /// The null vector repeated `b` times.
    pub fn null_vectors(&self, b: i64) -> Tensor {
        self.null_emb.unsqueeze(0).expand([b, -1], false)
    }

    /// Predicted noise for images `x` `[B, C, H, W]` at (float) timesteps `t` `[B]` under the
    /// class vectors `cvec` `[B, ch]` (rows of the class table, the null vector, or any vector
    /// in that space, as the attack uses). `train` turns dropout on.
    pub fn forward_vec(
        &self,
        x: &Tensor,
        t: &Tensor,
        cvec: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let sz = x.size();
        let b = sz.first().copied().unwrap_or(0);
        if sz != [b, c.in_channels, c.resolution, c.resolution] {
            return Err(Error::Shape {
                op: "U-Net input".into(),
                expected: format!("[B, {}, {}, {}]", c.in_channels, c.resolution, c.resolution),
                got: sz,
            });
        }
        if t.size() != [b] || cvec.size() != [b, c.ch] {
            return Err(Error::Shape {
                op: "U-Net timesteps / class vectors".into(),
                expected: format!("t [{b}] and class vectors [{b}, {}]", c.ch),
                got: [t.size(), cvec.size()].concat(),
            });
        }
        let temb = timestep_embedding(t, c.ch);
        let temb = swish(&self.temb[0].forward(&temb)).apply(&self.temb[1]);
        let cemb = swish(&self.cemb[0].forward(cvec)).apply(&self.cemb[1]);
        let emb = swish(&Tensor::cat(&[temb, cemb], 1));
        let mut hs = vec![x.apply(&self.conv_in)];
        for level in &self.down {
            for (i, block) in level.blocks.iter().enumerate() {
                let mut h = block.forward(hs.last().unwrap(), &emb, train);
                if let Some(a) = level.attns.get(i) {
                    h = a.forward(&h);
                }
                hs.push(h);
            }
            if let Some(r) = &level.resample {
                let h = hs.last().unwrap().constant_pad_nd([0, 1, 0, 1]).apply(r);
                hs.push(h);
            }
        }
        let mut h = hs.last().unwrap().shallow_clone();
        h = self.mid.0.forward(&h, &emb, train);
        h = self.mid.1.forward(&h);
        h = self.mid.2.forward(&h, &emb, train);
        for level in self.up.iter().rev() {
            for (i, block) in level.blocks.iter().enumerate() {
                let skip = hs.pop().unwrap();
                h = block.forward(&Tensor::cat(&[h, skip], 1), &emb, train);
                if let Some(a) = level.attns.get(i) {
                    h = a.forward(&h);
                }
            }
            if let Some(r) = &level.resample {
                let (hh, ww) = (h.size()[2], h.size()[3]);
                h = h.upsample_nearest2d([hh * 2, ww * 2], None, None).apply(r);
            }
        }
        Ok(swish(&h.apply(&self.norm_out)).apply(&self.conv_out))
    }

    /// Predicted noise under class `labels`, with the null vector where `keep` is false.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: &Tensor,
        keep: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let v = self.class_vectors(labels, keep)?;
        self.forward_vec(x, t, &v, train)
    }

    /// The classifier-free-guided prediction `(1 + w) * eps(c) - w * eps(null)` under class
    /// vectors `cvec` (both halves in one batched pass; `w = 0` runs only the conditional one).
    pub fn guided_vec(
        &self,
        x: &Tensor,
        t: &Tensor,
        cvec: &Tensor,
        w: f64,
        train: bool,
    ) -> Result<Tensor> {
        if w == 0.0 {
            return self.forward_vec(x, t, cvec, train);
        }
        let b = x.size()[0];
        let both = self.forward_vec(
            &Tensor::cat(&[x, x], 0),
            &Tensor::cat(&[t, t], 0),
            &Tensor::cat(&[cvec.shallow_clone(), self.null_vectors(b)], 0),
            train,
        )?;
        let parts = both.split(b, 0);
        Ok(&parts[0] * (1.0 + w) - &parts[1] * w)
    }

    /// [`guided_vec`](Self::guided_vec) for class labels.
    pub fn guided(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: &Tensor,
        w: f64,
        train: bool,
    ) -> Result<Tensor> {
        let v = self.class_vectors(labels, None)?;
        self.guided_vec(x, t, &v, w, train)
    }

    /// The variables as a name → tensor map (copies).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    }

    /// Copies every variable of `other` (same config) into this model.
    pub fn copy_from(&mut self, other: &CondUNet) -> Result<()> {
        if other.config != self.config {
            return Err(Error::invalid(
                "copy_from: the two U-Nets have different configs",
            ));
        }
        self.vs.copy(&other.vs)?;
        Ok(())
    }

    /// Sets every variable from `tensors` (name → tensor): each name must exist with its shape,
    /// and every variable must be given, so weights of another model are refused by name.
    pub fn load_tensors(&mut self, tensors: &[(String, Tensor)], what: &str) -> Result<()> {
        let mut vars = self.vs.variables();
        let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, t) in &given {
            let Some(v) = vars.get(*name) else {
                return Err(Error::checkpoint(
                    what,
                    format!("tensor {name} is not a parameter of this U-Net"),
                ));
            };
            if v.size() != t.size() {
                return Err(Error::checkpoint(
                    what,
                    format!(
                        "tensor {name}: shape {:?}, the model has {:?}",
                        t.size(),
                        v.size()
                    ),
                ));
            }
        }
        if let Some(missing) = vars.keys().find(|k| !given.contains_key(k.as_str())) {
            return Err(Error::checkpoint(
                what,
                format!("tensor {missing} is missing"),
            ));
        }
        tch::no_grad(|| {
            for (name, v) in vars.iter_mut() {
                let t = given[name.as_str()];
                if t.isfinite().all().int64_value(&[]) == 0 {
                    return Err(Error::checkpoint(
                        what,
                        format!("tensor {name} holds NaN or inf"),
                    ));
                }
                v.copy_(&t.to_kind(Kind::Float).to_device(v.device()));
            }
            Ok(())
        })
    }
}
