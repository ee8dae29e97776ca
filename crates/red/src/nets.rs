//! The two networks of the RED tools: a DnCNN-style denoiser and a multi-head ConvNet.

use rustworthy_core::{fsutil, validate, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Tensor};

/// The denoiser's shape: `depth` 3x3 convolutions of `width` channels (batch norm and ReLU
/// between them), predicting the perturbation, so that the estimate of the clean image is
/// `clamp(x_adv - D(x_adv), 0, 1)` (DnCNN's residual learning). Two additions of ours: an
/// image-level gate on the residual, and a last convolution that starts at zero, so an
/// untrained denoiser is the identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserConfig {
    /// Convolutions in all (>= 2).
    pub depth: usize,
    /// Channels of the hidden convolutions.
    pub width: i64,
    /// Image channels.
    pub channels: i64,
}

impl DenoiserConfig {
    /// Checks the sizes; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if !(2..=64).contains(&self.depth) {
            return Err(Error::config(
                "denoiser.depth",
                format!("must be in [2, 64], got {}", self.depth),
            ));
        }
        if !(1..=1024).contains(&self.width) {
            return Err(Error::config(
                "denoiser.width",
                format!("must be in [1, 1024], got {}", self.width),
            ));
        }
        if !(1..=16).contains(&self.channels) {
            return Err(Error::config(
                "denoiser.channels",
                format!("must be in [1, 16], got {}", self.channels),
            ));
        }
        Ok(())
    }
}

/// The DnCNN-style denoiser.
pub struct Denoiser {
    /// Its variables.
    pub vs: nn::VarStore,
    /// Its shape.
    pub config: DenoiserConfig,
    first: nn::Conv2D,
    mid: Vec<(nn::Conv2D, nn::BatchNorm)>,
    last: nn::Conv2D,
    gate: nn::Linear,
}

fn conv(p: nn::Path, cin: i64, cout: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        3,
        nn::ConvConfig {
            padding: 1,
            bias,
            ..Default::default()
        },
    )
}

impl Denoiser {
    /// A freshly initialised denoiser (seed libtorch's generator first for reproducible
    /// weights).
    pub fn new(config: &DenoiserConfig, device: Device) -> Result<Denoiser> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w = config.width;
        let first = conv(&root / "first", config.channels, w, true);
        let mid = (0..config.depth - 2)
            .map(|i| {
                let p = &root / "mid" / i;
                (
                    conv(&p / "conv", w, w, false),
                    nn::batch_norm2d(&p / "bn", w, Default::default()),
                )
            })
            .collect();
        let mut last = conv(&root / "last", w, config.channels, false);
        // A zero last layer: training starts from the identity (no perturbation removed).
        tch::no_grad(|| {
            let _ = last.ws.zero_();
        });
        let gate = nn::linear(
            &root / "gate",
            w,
            1,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Ok(Denoiser {
            vs,
            config: config.clone(),
            first,
            mid,
            last,
            gate,
        })
    }

    /// The predicted perturbation of `x_adv` (`[B, C, H, W]` in [0, 1]): the last
    /// convolution's output times an image-level gate in (0, 1), a sigmoid of the pooled
    /// hidden features (so the network can leave an image it finds unperturbed alone).
    pub fn residual(&self, x_adv: &Tensor, train: bool) -> Tensor {
        let mut h = self.first.forward(&(x_adv * 2.0 - 1.0)).relu();
        for (c, b) in &self.mid {
            h = b.forward_t(&c.forward(&h), train).relu();
        }
        let g = self
            .gate
            .forward(&h.mean_dim(&[2i64, 3][..], false, None))
            .sigmoid()
            .view([-1, 1, 1, 1]);
        self.last.forward(&h) * g
    }

    /// The estimated clean image `clamp(x_adv - residual, 0, 1)`.
    pub fn estimate(&self, x_adv: &Tensor, train: bool) -> Tensor {
        (x_adv - self.residual(x_adv, train)).clamp(0.0, 1.0)
    }

    /// Writes `dir/denoiser.safetensors` and `dir/denoiser.json` (atomically, config last).
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_vs(&self.vs, &dir.join("denoiser.safetensors"))?;
        fsutil::write_json_atomic(&dir.join("denoiser.json"), &self.config)
    }

    /// Reads a denoiser written by [`Denoiser::save`].
    pub fn load(dir: &Path, device: Device) -> Result<Denoiser> {
        let cfg: DenoiserConfig = read_json(&dir.join("denoiser.json"))?;
        let mut d = Denoiser::new(&cfg, device)?;
        load_vs(&mut d.vs, &dir.join("denoiser.safetensors"))?;
        Ok(d)
    }
}

/// The multi-head classifier's shape: four 3x3 convolutions (the second and fourth stride 2)
/// with batch norm and ReLU and global average pooling, beside two optional sets of value
/// statistics a pooled ConvNet cannot form: a soft histogram of each input channel's raw values,
/// and exact 8-bit level counts of the first channel (how many pixels sit exactly at a radius,
/// how many in between, which levels neighbour each other). Everything goes through one hidden
/// layer of 128 units, then one linear head per task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsConfig {
    /// Width of the first convolution (the others 2x and 4x).
    pub width: i64,
    /// Image channels.
    pub channels: i64,
    /// The heads: name and number of classes.
    pub heads: Vec<(String, i64)>,
    /// Input shift and scale: the network sees `(x - shift) / scale`.
    pub shift: f64,
    /// See `shift`.
    pub scale: f64,
    /// Bins of the soft histogram per input channel (0: no histogram).
    pub hist_bins: i64,
    /// The histogram's range per input channel, `(lo, hi)` of the raw values.
    pub hist_range: Vec<(f64, f64)>,
    /// Level statistics of the first channel, with the image's radius sought in this many 8-bit
    /// levels (0: none); see [`MultiHead::level_features`].
    #[serde(default)]
    pub levels: i64,
    /// Beside the level statistics, counts of the first channel's values that lie off the
    /// 8-bit grid (needs `levels`); see [`MultiHead::level_features`].
    #[serde(default)]
    pub off_grid: bool,
}

impl HeadsConfig {
    /// Checks sizes, heads and the input scaling.
    pub fn validate(&self) -> Result<()> {
        if !(1..=512).contains(&self.width) {
            return Err(Error::config(
                "heads.width",
                format!("must be in [1, 512], got {}", self.width),
            ));
        }
        if !(1..=16).contains(&self.channels) {
            return Err(Error::config(
                "heads.channels",
                format!("must be in [1, 16], got {}", self.channels),
            ));
        }
        if self.heads.is_empty() {
            return Err(Error::config("heads", "needs at least one head"));
        }
        for (n, k) in &self.heads {
            if *k < 2 {
                return Err(Error::config(
                    "heads",
                    format!("head `{n}` needs at least 2 classes, got {k}"),
                ));
            }
        }
        validate::finite("heads.shift", self.shift)?;
        validate::positive("heads.scale", self.scale)?;
        if !(0..=1024).contains(&self.hist_bins) {
            return Err(Error::config(
                "heads.hist_bins",
                format!("must be in [0, 1024], got {}", self.hist_bins),
            ));
        }
        if self.hist_bins > 0 {
            if self.hist_range.len() as i64 != self.channels {
                return Err(Error::config(
                    "heads.hist_range",
                    format!(
                        "needs one range per input channel ({}), got {}",
                        self.channels,
                        self.hist_range.len()
                    ),
                ));
            }
            for (lo, hi) in &self.hist_range {
                if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                    return Err(Error::config(
                        "heads.hist_range",
                        format!("needs finite lo < hi, got ({lo}, {hi})"),
                    ));
                }
            }
        }
        if !(0..=255).contains(&self.levels) {
            return Err(Error::config(
                "heads.levels",
                format!("must be in [0, 255], got {}", self.levels),
            ));
        }
        if self.off_grid && self.levels == 0 {
            return Err(Error::config(
                "heads.off_grid",
                "the off-grid counts are taken per level class: set levels > 0",
            ));
        }
        Ok(())
    }

    /// Width of the level statistics (0 when they are off).
    pub fn level_width(&self) -> i64 {
        if self.levels == 0 {
            0
        } else {
            2 * (4 * LEVEL_STEPS + 1) + 16 + if self.off_grid { OFF_GRID_WIDTH } else { 0 }
        }
    }
}

/// Width of the off-grid counts: level class x on/off the grid (8), neighbour pairs on/off the
/// grid (4), and the histogram of the offsets from the grid (8).
pub const OFF_GRID_WIDTH: i64 = 20;

/// A value is off the 8-bit grid when `255 x` is farther than this from an integer (float32
/// arithmetic on grid values such as `k/255 + 8/255` stays within about 1e-5).
pub const OFF_GRID_TOL: f64 = 1e-3;

/// Steps per radius of the level statistics' relative histograms.
pub const LEVEL_STEPS: i64 = 8;

/// Units of the hidden layer before the heads.
const HIDDEN: i64 = 128;

/// A ConvNet with one linear head per task.
pub struct MultiHead {
    /// Its variables.
    pub vs: nn::VarStore,
    /// Its shape.
    pub config: HeadsConfig,
    body: nn::SequentialT,
    hidden: nn::Linear,
    heads: Vec<nn::Linear>,
    level_bn: Option<nn::BatchNorm>,
}

impl MultiHead {
    /// A freshly initialised network (seed libtorch's generator first).
    pub fn new(config: &HeadsConfig, device: Device) -> Result<MultiHead> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w = config.width;
        let chans = [
            (config.channels, w, 1),
            (w, 2 * w, 2),
            (2 * w, 2 * w, 1),
            (2 * w, 4 * w, 2),
        ];
        let mut body = nn::seq_t();
        for (i, (cin, cout, stride)) in chans.into_iter().enumerate() {
            let p = &root / "body" / i;
            body = body
                .add(nn::conv2d(
                    &p / "conv",
                    cin,
                    cout,
                    3,
                    nn::ConvConfig {
                        padding: 1,
                        stride,
                        bias: false,
                        ..Default::default()
                    },
                ))
                .add(nn::batch_norm2d(&p / "bn", cout, Default::default()))
                .add_fn(|x| x.relu());
        }
        let feat = 4 * w + config.channels * config.hist_bins + config.level_width();
        let level_bn = (config.levels > 0).then(|| {
            nn::batch_norm1d(&root / "level_bn", config.level_width(), Default::default())
        });
        let hidden = nn::linear(&root / "hidden", feat, HIDDEN, Default::default());
        let heads = config
            .heads
            .iter()
            .map(|(n, k)| nn::linear(&root / "head" / n.as_str(), HIDDEN, *k, Default::default()))
            .collect();
        Ok(MultiHead {
            vs,
            config: config.clone(),
            body,
            hidden,
            heads,
            level_bn,
        })
    }

    /// Logits of every head for inputs `x` (`[B, C, H, W]`, unscaled).
    pub fn forward(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let z = (x - self.config.shift) / self.config.scale;
        let mut f = self
            .body
            .forward_t(&z, train)
            .mean_dim(&[2i64, 3][..], false, None);
        if self.config.hist_bins > 0 {
            f = Tensor::cat(&[f, self.histogram(x)], 1);
        }
        if let Some(bn) = &self.level_bn {
            let l = self.level_features(x).log1p();
            f = Tensor::cat(&[f, l.apply_t(bn, train)], 1);
        }
        let h = self.hidden.forward(&f).relu();
        self.heads.iter().map(|l| l.forward(&h)).collect()
    }

    /// The soft histogram `[B, C * bins]`: per channel and bin centre `b`, the mean over pixels
    /// of `exp(-((x - b) / w)^2 / 2)` with `w` the bin width, times 10.
    pub fn histogram(&self, x: &Tensor) -> Tensor {
        let k = self.config.hist_bins;
        let parts: Vec<Tensor> = self
            .config
            .hist_range
            .iter()
            .enumerate()
            .map(|(c, &(lo, hi))| {
                let w = (hi - lo) / k as f64;
                let centres =
                    Tensor::arange(k, (tch::Kind::Float, x.device())) * w + (lo + w / 2.0);
                let v = x.select(1, c as i64).flatten(1, -1).unsqueeze(1);
                let d = (v - centres.view([1, k, 1])) / w;
                (d.square() * -0.5).exp().mean_dim(2, false, None) * 10.0
            })
            .collect();
        Tensor::cat(&parts, 1)
    }

    /// Exact level statistics of the first channel, as counts `[B, level_width]`, relative to
    /// each image's own radius so that they carry over to radii never trained on. With `q` the
    /// channel's values in 8-bit levels (`round(255 x)`), `m` the image's most common level in
    /// `1..=levels` (the radius an l_inf attack leaves a black background pixel at) and
    /// `K = LEVEL_STEPS`:
    ///
    /// - the histogram of `round(K q / m)` clamped to `[-2K, 2K]` (`4K + 1` counts);
    /// - the same of the differences between horizontal and vertical neighbours (`4K + 1`);
    /// - the co-occurrences of neighbours' classes `|q| = 0`, `0 < |q| < m`, `|q| = m` and
    ///   `|q| > m` (16).
    ///
    /// FGSM and Square leave a background pixel of a clean image at 0 or exactly at the radius;
    /// iterated attacks leave some in between, in patterns of their own; these counts see that
    /// where a pooled ConvNet averages it away. The values are taken on the 8-bit grid, so
    /// adversarial images saved as 8-bit files give the same features.
    ///
    /// With `off_grid`, 20 more counts see the float values themselves: a pixel is off the grid
    /// when `255 x` is not an integer (within [`OFF_GRID_TOL`]). Clean Fashion-MNIST images and
    /// every radius `k/255` lie on the grid, so FGSM and Square (steps of exactly the radius)
    /// leave none off it, while a uniform random start (PGD, APGD) or fractional steps leave
    /// many. Counted are: each level class above on and off the grid (8), neighbour pairs on and
    /// off the grid (4), and the histogram of the offsets `255 x - q` of the off-grid pixels in 8
    /// bins over `[-0.5, 0.5]`. These counts are only as good as the examples' precision: an
    /// example saved as an 8-bit image has none off the grid.
    pub fn level_features(&self, x: &Tensor) -> Tensor {
        let l = self.config.levels;
        let k = LEVEL_STEPS;
        let b = x.size()[0];
        let dev = x.device();
        let int = tch::Kind::Int64;
        let v255 = x.select(1, 0) * 255.0;
        let q = v255.round().to_kind(int);
        // Per-row histograms through one bincount: row r's value v lands at r * n + v.
        let counts = |v: &Tensor, n: i64| -> Tensor {
            let v = v.flatten(1, -1);
            let rows = Tensor::arange(b, (int, dev)).unsqueeze(1) * n;
            (v + rows)
                .flatten(0, -1)
                .bincount::<Tensor>(None, b * n)
                .view([b, n])
                .to_kind(tch::Kind::Float)
        };
        // The radius: the most common level in 1..=L (1 where no pixel is there).
        let low = counts(&q.abs().clamp_max(l + 1), l + 2).narrow(1, 1, l);
        let m = (low.argmax(1, false) + 1).view([b, 1, 1]);
        let rel = |v: &Tensor| -> Tensor {
            let r = (v * k).to_kind(tch::Kind::Double) / m.to_kind(tch::Kind::Double);
            r.round().to_kind(int).clamp(-2 * k, 2 * k) + 2 * k
        };
        let levels = counts(&rel(&q), 4 * k + 1);
        let (h, w) = (q.size()[1], q.size()[2]);
        let dx = q.narrow(2, 1, w - 1) - q.narrow(2, 0, w - 1);
        let dy = q.narrow(1, 1, h - 1) - q.narrow(1, 0, h - 1);
        let diffs = counts(&rel(&dx), 4 * k + 1) + counts(&rel(&dy), 4 * k + 1);
        let a = q.abs();
        let c = a.gt(0).to_kind(int) + a.ge_tensor(&m).to_kind(int) + a.gt_tensor(&m).to_kind(int);
        let px = c.narrow(2, 0, w - 1) * 4 + c.narrow(2, 1, w - 1);
        let py = c.narrow(1, 0, h - 1) * 4 + c.narrow(1, 1, h - 1);
        let pairs = counts(&px, 16) + counts(&py, 16);
        if !self.config.off_grid {
            return Tensor::cat(&[levels, diffs, pairs], 1);
        }
        let frac = &v255 - v255.round();
        let off = frac.abs().gt(OFF_GRID_TOL).to_kind(int);
        let by_class = counts(&(&c * 2 + &off), 8);
        let ox = off.narrow(2, 0, w - 1) * 2 + off.narrow(2, 1, w - 1);
        let oy = off.narrow(1, 0, h - 1) * 2 + off.narrow(1, 1, h - 1);
        let off_pairs = counts(&ox, 4) + counts(&oy, 4);
        // Bins 0..8 of the offsets of off-grid pixels; on-grid pixels land in bin 8, dropped.
        let bin = ((frac + 0.5) * 8.0).floor().to_kind(int).clamp(0, 7);
        let bin = &bin * &off + (1i64 - &off) * 8i64;
        let offsets = counts(&bin, 9).narrow(1, 0, 8);
        Tensor::cat(&[levels, diffs, pairs, by_class, off_pairs, offsets], 1)
    }

    /// Writes `dir/<name>.safetensors` and `dir/<name>.json`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<()> {
        save_vs(&self.vs, &dir.join(format!("{name}.safetensors")))?;
        fsutil::write_json_atomic(&dir.join(format!("{name}.json")), &self.config)
    }

    /// Reads a network written by [`MultiHead::save`].
    pub fn load(dir: &Path, name: &str, device: Device) -> Result<MultiHead> {
        let cfg: HeadsConfig = read_json(&dir.join(format!("{name}.json")))?;
        let mut m = MultiHead::new(&cfg, device)?;
        load_vs(&mut m.vs, &dir.join(format!("{name}.safetensors")))?;
        Ok(m)
    }
}

/// Reads a JSON file, naming it in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::corrupt(path, e.to_string()))
}

fn save_vs(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(Device::Cpu)))
        .collect();
    let mut named = named;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    fsutil::atomic_write_with(path, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })
}

fn load_vs(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    let named =
        Tensor::read_safetensors(path).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let map: std::collections::BTreeMap<String, Tensor> = named.into_iter().collect();
    let vars = vs.variables();
    if map.len() != vars.len() {
        return Err(Error::checkpoint(
            path,
            format!(
                "holds {} tensors, the network has {}",
                map.len(),
                vars.len()
            ),
        ));
    }
    tch::no_grad(|| -> Result<()> {
        for (k, mut v) in vars {
            let t = map
                .get(&k)
                .ok_or_else(|| Error::checkpoint(path, format!("missing tensor `{k}`")))?;
            if t.size() != v.size() {
                return Err(Error::checkpoint(
                    path,
                    format!("`{k}` has shape {:?}, the network {:?}", t.size(), v.size()),
                ));
            }
            if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
                return Err(Error::checkpoint(
                    path,
                    format!("`{k}` holds NaN or infinite values"),
                ));
            }
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
        Ok(())
    })
}
