//! Perturbation estimation: a denoiser maps an adversarial image to an estimate of its clean
//! image; the estimated perturbation is `x_adv - estimate`.
//!
//! Two training objectives, as in class-discriminative denoising for reverse engineering
//! (CDD-RED, ICLR 2022):
//! - [`DenoiseMode::Pixel`]: image alignment only, the mean absolute pixel error to the clean
//!   image;
//! - [`DenoiseMode::ClassDiscriminative`]: image alignment plus `lambda` times prediction
//!   alignment, the cross-entropy of a classifier on the (randomly shifted) estimate against
//!   its prediction on the clean image under the same shift.
//!
//! The identity (the adversarial image taken as the clean one) is the baseline.

use crate::generate::RedSet;
use crate::nets::{Denoiser, DenoiserConfig};
use rustworthy_core::{validate, Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

/// The training objective of a denoiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenoiseMode {
    /// Pixel (image alignment) loss only.
    Pixel,
    /// Pixel loss plus the class-discriminative prediction-alignment term.
    ClassDiscriminative,
}

impl DenoiseMode {
    /// `pixel` or `cdd`.
    pub fn name(self) -> &'static str {
        match self {
            DenoiseMode::Pixel => "pixel",
            DenoiseMode::ClassDiscriminative => "cdd",
        }
    }
}

impl std::str::FromStr for DenoiseMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pixel" => Ok(DenoiseMode::Pixel),
            "cdd" | "class-discriminative" => Ok(DenoiseMode::ClassDiscriminative),
            o => Err(Error::config(
                "denoise.mode",
                format!("unknown denoiser objective `{o}`; valid: pixel, cdd"),
            )),
        }
    }
}

/// How a denoiser is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiseConfig {
    /// The network.
    pub net: DenoiserConfig,
    /// Epochs over the training examples.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Weight of the prediction-alignment term (class-discriminative mode).
    pub lambda: f64,
    /// Largest shift in pixels of the prediction-alignment augmentation (0: none).
    pub shift: i64,
    /// At most this many training examples (a seeded draw; 0: all).
    pub max_examples: usize,
    /// Draw each epoch's examples with probability inversely proportional to their attack
    /// family's share (with replacement), so rare families (C&W, NES) weigh as much as common
    /// ones; otherwise every example once per epoch.
    pub balance_families: bool,
    /// Seed of initialisation, example draw and batch order.
    pub seed: u64,
}

impl DenoiseConfig {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.net.validate()?;
        validate::positive_int("denoise.epochs", self.epochs)?;
        validate::positive_int("denoise.batch_size", self.batch_size)?;
        validate::positive("denoise.lr", self.lr)?;
        validate::non_negative("denoise.lambda", self.lambda)?;
        if !(0..=8).contains(&self.shift) {
            return Err(Error::config(
                "denoise.shift",
                format!("must be in [0, 8], got {}", self.shift),
            ));
        }
        Ok(())
    }
}

/// Loss per epoch of a denoiser's training.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DenoiseHistory {
    /// Mean pixel loss per epoch.
    pub pixel: Vec<f64>,
    /// Mean prediction-alignment loss per epoch (class-discriminative mode).
    pub align: Vec<f64>,
    /// Examples trained on.
    pub examples: usize,
    /// Seconds.
    pub seconds: f64,
}

/// A seeded permutation of `0..n` as an int64 tensor.
pub fn permutation(n: usize, seed: u64) -> Tensor {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut v: Vec<i64> = (0..n as i64).collect();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    Tensor::from_slice(&v)
}

/// Shifts `x` by `(dy, dx)` pixels with zero fill.
fn shift(x: &Tensor, dy: i64, dx: i64) -> Tensor {
    if dy == 0 && dx == 0 {
        return x.shallow_clone();
    }
    let p = dy.abs().max(dx.abs());
    let sz = x.size();
    let (h, w) = (sz[2], sz[3]);
    x.constant_pad_nd([p, p, p, p])
        .narrow(2, p - dy, h)
        .narrow(3, p - dx, w)
}

/// Whose predictions the class-discriminative term aligns.
pub enum Aligner<'a> {
    /// One classifier for every example (a surrogate: the victim is unknown).
    Surrogate(&'a Model),
    /// Each example's own victim, by its `victim` label (the models the data was made on).
    Victims(&'a BTreeMap<i64, Model>),
}

impl Aligner<'_> {
    fn models(&self) -> Vec<&Model> {
        match self {
            Aligner::Surrogate(m) => vec![*m],
            Aligner::Victims(v) => v.values().collect(),
        }
    }

    /// The prediction-alignment loss of estimates `est` against clean images `clean`, both
    /// shifted by `(dy, dx)`; `victims` holds the examples' victim labels.
    fn loss(
        &self,
        est: &Tensor,
        clean: &Tensor,
        victims: &Tensor,
        dy: i64,
        dx: i64,
    ) -> Result<Tensor> {
        let term = |m: &Model, e: &Tensor, c: &Tensor| {
            let target = tch::no_grad(|| m.forward_t(&shift(c, dy, dx), false).argmax(-1, false));
            m.forward_t(&shift(e, dy, dx), false)
                .cross_entropy_for_logits(&target)
        };
        match self {
            Aligner::Surrogate(m) => Ok(term(m, est, clean)),
            Aligner::Victims(map) => {
                let n = est.size()[0] as f64;
                let labels: Vec<i64> = Vec::try_from(victims.unique_dim(0, true, false, false).0)?;
                let mut total = Tensor::zeros([], (Kind::Float, est.device()));
                for v in labels {
                    let m = map.get(&v).ok_or_else(|| {
                        Error::invalid(format!("no victim model for victim label {v}"))
                    })?;
                    let idx = victims.eq(v).nonzero().squeeze_dim(1);
                    let k = idx.size()[0] as f64;
                    total +=
                        term(m, &est.index_select(0, &idx), &clean.index_select(0, &idx)) * (k / n);
                }
                Ok(total)
            }
        }
    }
}

/// Trains a denoiser on `set` (its adversarial and clean images). The class-discriminative
/// mode needs an [`Aligner`], whose prediction on the clean image the estimate must keep.
pub fn train_denoiser(
    cfg: &DenoiseConfig,
    mode: DenoiseMode,
    set: &RedSet,
    classifier: Option<&Aligner>,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<(Denoiser, DenoiseHistory)> {
    cfg.validate()?;
    if set.is_empty() {
        return Err(Error::invalid("denoiser: no training examples"));
    }
    let c = set.x_adv.size()[1];
    if c != cfg.net.channels {
        return Err(Error::config(
            "denoise.net.channels",
            format!(
                "the denoiser takes {} channels, the images have {c}",
                cfg.net.channels
            ),
        ));
    }
    let clf =
        match (mode, classifier) {
            (DenoiseMode::ClassDiscriminative, None) => return Err(Error::invalid(
                "the class-discriminative denoiser needs a classifier (the victim or a surrogate)",
            )),
            (DenoiseMode::ClassDiscriminative, Some(m)) => Some(m),
            (DenoiseMode::Pixel, _) => None,
        };
    let t0 = std::time::Instant::now();
    let n_all = set.len();
    let take = if cfg.max_examples == 0 {
        n_all
    } else {
        cfg.max_examples.min(n_all)
    };
    let sel = permutation(n_all, cfg.seed).narrow(0, 0, take as i64);
    let xa = set.x_adv.index_select(0, &sel).to_device(device);
    let xc = set.x_clean.index_select(0, &sel).to_device(device);
    // Victim labels, needed when aligning with each example's victim.
    let xv = match (clf, set.labels.get("victim")) {
        (Some(Aligner::Victims(_)), None) => {
            return Err(Error::invalid(
                "aligning with the victims needs the examples' `victim` labels",
            ))
        }
        (_, Some(v)) => v.index_select(0, &sel).to_device(device),
        (_, None) => Tensor::zeros([take as i64], (Kind::Int64, device)),
    };
    tch::manual_seed(cfg.seed as i64);
    let d = Denoiser::new(&cfg.net, device)?;
    let mut opt = tch::nn::Adam::default().build(&d.vs, cfg.lr)?;
    let mut hist = DenoiseHistory {
        examples: take,
        ..Default::default()
    };
    let mut shifts = {
        use rand::SeedableRng;
        rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed)
    };
    // Per-example draw weights: 1 / (examples of the same family), or uniform.
    let weights = if cfg.balance_families {
        let fam = set.label("family")?.index_select(0, &sel);
        let counts = fam.bincount::<Tensor>(None, 0).to_kind(Kind::Double);
        Some(counts.index_select(0, &fam).reciprocal())
    } else {
        None
    };
    for epoch in 0..cfg.epochs {
        let order = match &weights {
            None => permutation(take, cfg.seed.wrapping_add(epoch as u64 + 1)),
            Some(w) => {
                tch::manual_seed(cfg.seed.wrapping_add(epoch as u64 + 1) as i64);
                w.multinomial(take as i64, true)
            }
        }
        .to_device(device);
        let (mut sp, mut sa, mut nb) = (0.0, 0.0, 0.0);
        for idx in order.split(cfg.batch_size as i64, 0) {
            let a = xa.index_select(0, &idx);
            let cl = xc.index_select(0, &idx);
            let est = d.estimate(&a, true);
            let pix = (&est - &cl).abs().mean(Kind::Float);
            let mut loss = pix.shallow_clone();
            if let Some(al) = clf {
                let (dy, dx) = shift_pair(&mut shifts, cfg.shift);
                let align = al.loss(&est, &cl, &xv.index_select(0, &idx), dy, dx)?;
                sa += align.double_value(&[]);
                loss += align * cfg.lambda;
            }
            opt.zero_grad();
            loss.backward();
            opt.step();
            sp += pix.double_value(&[]);
            nb += 1.0;
        }
        let lp = sp / nb;
        if !lp.is_finite() {
            return Err(Error::invalid(format!(
                "denoiser training diverged at epoch {} (pixel loss {lp})",
                epoch + 1
            )));
        }
        hist.pixel.push(lp);
        if clf.is_some() {
            hist.align.push(sa / nb);
        }
        say(&format!(
            "  denoiser ({}) epoch {}: pixel {:.5}{}",
            mode.name(),
            epoch + 1,
            lp,
            if clf.is_some() {
                format!(", align {:.4}", sa / nb)
            } else {
                String::new()
            }
        ));
    }
    if let Some(al) = clf {
        // The classifiers are only read; leave no gradients on them.
        for m in al.models() {
            for (_, p) in m.parameters() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        }
    }
    hist.seconds = t0.elapsed().as_secs_f64();
    Ok((d, hist))
}

fn shift_pair(rng: &mut rand_chacha::ChaCha8Rng, max: i64) -> (i64, i64) {
    use rand::Rng;
    if max == 0 {
        return (0, 0);
    }
    (rng.gen_range(-max..=max), rng.gen_range(-max..=max))
}

/// Estimated clean images of `x_adv` (in batches, eval mode); the identity when `d` is None.
pub fn estimate(d: Option<&Denoiser>, x_adv: &Tensor) -> Tensor {
    match d {
        None => x_adv.shallow_clone(),
        Some(d) => tch::no_grad(|| {
            let dev = d.vs.device();
            let parts: Vec<Tensor> = x_adv
                .split(1000, 0)
                .iter()
                .map(|c| {
                    d.estimate(&c.to_device(dev), false)
                        .to_device(x_adv.device())
                })
                .collect();
            Tensor::cat(&parts, 0)
        }),
    }
}

/// Per-example PSNR in dB of `est` to `clean` (pixels in [0, 1]; MSE floored at 1e-10).
pub fn psnr(est: &Tensor, clean: &Tensor) -> Tensor {
    let mse = (est - clean)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Double)
        .clamp_min(1e-10);
    mse.reciprocal().log10() * 10.0
}

/// The shrinkage search's resolution: factors are multiples of `1/SHRINK_STEPS` in `[0, 1]`.
/// The search first tries every tenth (steps of 0.05), then every step within 0.05 of the best.
pub const SHRINK_STEPS: i64 = 200;

/// The estimate with its perturbation shrunk by a factor per group:
/// `x_adv - s[group] (x_adv - est)`, a point between the adversarial image (`s = 0`, the
/// identity) and the denoiser's estimate (`s = 1`), so it stays in `[0, 1]`. `group` is an int64
/// `[N]` tensor of indices into `factors`.
pub fn shrink(x_adv: &Tensor, est: &Tensor, group: &Tensor, factors: &[f64]) -> Result<Tensor> {
    if est.size() != x_adv.size() || group.size() != [x_adv.size()[0]] {
        return Err(Error::invalid(format!(
            "shrinkage: estimates {:?}, adversarial images {:?} and groups {:?} disagree",
            est.size(),
            x_adv.size(),
            group.size()
        )));
    }
    if group.numel() > 0 {
        let (lo, hi) = (group.min().int64_value(&[]), group.max().int64_value(&[]));
        if lo < 0 || hi >= factors.len() as i64 {
            return Err(Error::invalid(format!(
                "shrinkage: group {} outside the {} fitted factors",
                if lo < 0 { lo } else { hi },
                factors.len()
            )));
        }
    }
    let s = Tensor::from_slice(factors)
        .to_kind(x_adv.kind())
        .to_device(x_adv.device())
        .index_select(0, &group.to_device(x_adv.device()))
        .view([-1, 1, 1, 1]);
    Ok(x_adv - s * (x_adv - est))
}

/// `x` rounded to the nearest of `levels + 1` evenly spaced values in `[0, 1]` (`levels` 255:
/// the 8-bit grid `k/255`). Clean images read from 8-bit files lie on that grid, so an estimate
/// of one can be projected onto it. Values within half a step of a grid value land on it; this
/// helps where an adversarial image was kept in float precision and its perturbation is small
/// (minimum-norm attacks such as C&W) and does nothing to an image already on the grid.
pub fn to_grid(x: &Tensor, levels: i64) -> Result<Tensor> {
    check_grid(levels)?;
    Ok(round_to_grid(x, levels))
}

/// [`to_grid`] for levels already checked.
fn round_to_grid(x: &Tensor, levels: i64) -> Tensor {
    let l = levels as f64;
    (x.clamp(0.0, 1.0) * l).round() / l
}

/// Refuses a grid size outside `[1, 65535]`.
pub fn check_grid(levels: i64) -> Result<()> {
    if !(1..=65_535).contains(&levels) {
        return Err(Error::invalid(format!(
            "grid projection: levels must be in [1, 65535], got {levels}"
        )));
    }
    Ok(())
}

/// Shrinkage factors as a file: one factor per predicted (attack family, norm) group, the
/// groups named `family-norm` in label order (`fgsm-linf`, `fgsm-l2`, `pgd-linf`, ...: group
/// `2 * family + norm`), and the grid the shrunk estimates are projected onto (if any).
/// `bench red` writes one beside each denoiser (`shrinkage.json`, and `shrinkage-grid.json`
/// with the grid); `red infer --shrink` applies it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Shrinkage {
    /// The group names, in group order.
    pub groups: Vec<String>,
    /// The factor per group, in `[0, 1]`.
    pub factors: Vec<f64>,
    /// Levels of the grid the shrunk estimates are rounded to (`None`: not projected).
    pub grid: Option<i64>,
}

impl Shrinkage {
    /// The group names of a dataset's attack families: `family-linf`, `family-l2` per family.
    pub fn group_names(families: &[crate::family::AttackFamily]) -> Vec<String> {
        families
            .iter()
            .flat_map(|f| [format!("{}-linf", f.name()), format!("{}-l2", f.name())])
            .collect()
    }

    /// Checks the factors against a dataset's attack families.
    pub fn check(&self, families: &[crate::family::AttackFamily]) -> Result<()> {
        let want = Self::group_names(families);
        if self.groups != want {
            return Err(Error::invalid(format!(
                "shrinkage groups {:?} are not this dataset's {:?}",
                self.groups, want
            )));
        }
        if self.factors.len() != want.len() || self.factors.iter().any(|f| !(0.0..=1.0).contains(f))
        {
            return Err(Error::invalid(format!(
                "shrinkage needs {} factors in [0, 1], got {:?}",
                want.len(),
                self.factors
            )));
        }
        if let Some(l) = self.grid {
            check_grid(l)?;
        }
        Ok(())
    }

    /// [`shrink`] with these factors, then [`to_grid`] when a grid is set.
    pub fn apply(&self, x_adv: &Tensor, est: &Tensor, group: &Tensor) -> Result<Tensor> {
        let e = shrink(x_adv, est, group, &self.factors)?;
        match self.grid {
            Some(l) => to_grid(&e, l),
            None => Ok(e),
        }
    }
}

/// Fits the factors of [`shrink`]: per group `g` in `0..groups`, the factor in `[0, 1]` (to
/// `1/SHRINK_STEPS`) that maximises the mean per-example PSNR to the clean images of the
/// examples in `g` (ties go to the smaller factor, the one nearer the identity). With `grid`,
/// the PSNR is that of the shrunk estimate projected by [`to_grid`] with those levels, the
/// estimate that is then reported.
/// A group with no example keeps the denoiser's estimate (factor 1).
///
/// The groups are meant to be predicted ones (an attribution classifier's family), so that a
/// forensic tool can apply the factors without the clean image: it shrinks the estimate where
/// the denoiser is known to overshoot (minimum-norm attacks such as C&W, whose perturbations
/// are smaller than the denoiser's error on an image it cannot tell from a clean one).
pub fn fit_shrinkage(
    x_adv: &Tensor,
    est: &Tensor,
    clean: &Tensor,
    group: &Tensor,
    groups: usize,
    grid: Option<i64>,
) -> Result<Vec<f64>> {
    if let Some(l) = grid {
        check_grid(l)?;
    }
    if clean.size() != x_adv.size() {
        return Err(Error::invalid(format!(
            "shrinkage: clean images {:?} for adversarial images {:?}",
            clean.size(),
            x_adv.size()
        )));
    }
    let mut out = Vec::with_capacity(groups);
    for g in 0..groups {
        let idx = group.eq(g as i64).nonzero().squeeze_dim(1);
        if idx.numel() == 0 {
            out.push(1.0);
            continue;
        }
        let (xa, e, c) = (
            x_adv.index_select(0, &idx),
            est.index_select(0, &idx),
            clean.index_select(0, &idx),
        );
        let d = &xa - &e;
        let mean_psnr = |k: i64| {
            let e = &xa - &d * (k as f64 / SHRINK_STEPS as f64);
            let e = match grid {
                Some(l) => round_to_grid(&e, l),
                None => e,
            };
            psnr(&e, &c).mean(Kind::Double).double_value(&[])
        };
        let coarse = SHRINK_STEPS / 20;
        let mut best = (f64::NEG_INFINITY, SHRINK_STEPS);
        for k in (0..=SHRINK_STEPS).step_by(coarse as usize) {
            let p = mean_psnr(k);
            if p > best.0 {
                best = (p, k);
            }
        }
        let centre = best.1;
        for k in (centre - coarse).max(0)..=(centre + coarse).min(SHRINK_STEPS) {
            if k == centre {
                continue;
            }
            let p = mean_psnr(k);
            if p > best.0 || (p == best.0 && k < best.1) {
                best = (p, k);
            }
        }
        out.push(best.1 as f64 / SHRINK_STEPS as f64);
    }
    Ok(out)
}

/// Per-example cosine similarity of two perturbations (0 where either is zero).
pub fn cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let a = a.flatten(1, -1).to_kind(Kind::Double);
    let b = b.flatten(1, -1).to_kind(Kind::Double);
    let dot = (&a * &b).sum_dim_intlist(1, false, None);
    let na = a.square().sum_dim_intlist(1, false, None).sqrt();
    let nb = b.square().sum_dim_intlist(1, false, None).sqrt();
    let den = &na * &nb;
    dot.where_self(&den.gt(0.0), &Tensor::zeros_like(&den)) / den.clamp_min(1e-30)
}

/// Quality of one perturbation estimator on a group of examples.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EstimateScore {
    /// Examples.
    pub n: usize,
    /// Mean PSNR (dB) of the estimate to the clean image.
    pub psnr: f64,
    /// Mean cosine similarity of the estimated to the true perturbation.
    pub cosine: f64,
    /// Percent of examples whose victim predicts on the estimate what it predicts on the
    /// clean image.
    pub restored: f64,
}

/// Scores estimates `est` of `set`'s clean images, grouped by `group` (a label key): PSNR,
/// cosine and the share where the victim (`victims[victim label]`) predicts on the estimate
/// what it predicted on the clean image. Key `"all"` holds every example.
pub fn score_estimates(
    est: &Tensor,
    set: &RedSet,
    victims: &BTreeMap<i64, Model>,
    group: &str,
) -> Result<BTreeMap<i64, EstimateScore>> {
    if est.size() != set.x_clean.size() {
        return Err(Error::invalid(format!(
            "estimates of shape {:?} for clean images of shape {:?}",
            est.size(),
            set.x_clean.size()
        )));
    }
    let ps = psnr(est, &set.x_clean);
    let cs = cosine(&(&set.x_adv - est), &set.perturbation());
    let vic = set.label("victim")?;
    let pred_clean = set.label("pred_clean")?;
    let mut restored = Tensor::zeros([set.len() as i64], (Kind::Int64, est.device()));
    let vs: Vec<i64> = Vec::try_from(vic.unique_dim(0, true, false, false).0)?;
    for v in vs {
        let model = victims
            .get(&v)
            .ok_or_else(|| Error::invalid(format!("no victim model for victim label {v}")))?;
        let idx = vic.eq(v).nonzero().squeeze_dim(1);
        let x = est.index_select(0, &idx).to_device(model.device());
        let p =
            tch::no_grad(|| model.forward_t(&x, false).argmax(-1, false)).to_device(est.device());
        let ok = p
            .eq_tensor(&pred_clean.index_select(0, &idx))
            .to_kind(Kind::Int64);
        let _ = restored.index_copy_(0, &idx, &ok);
    }
    let g = set.label(group)?;
    let mut keys: Vec<i64> = Vec::try_from(g.unique_dim(0, true, false, false).0)?;
    keys.push(i64::MIN);
    let mut out = BTreeMap::new();
    for k in keys {
        let mask = if k == i64::MIN {
            Tensor::ones([set.len() as i64], (Kind::Bool, est.device()))
        } else {
            g.eq(k)
        };
        let n = mask.sum(Kind::Int64).int64_value(&[]);
        if n == 0 {
            continue;
        }
        let mean = |t: &Tensor| {
            t.masked_select(&mask)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        };
        out.insert(
            k,
            EstimateScore {
                n: n as usize,
                psnr: mean(&ps),
                cosine: mean(&cs),
                restored: 100.0 * mean(&restored),
            },
        );
    }
    Ok(out)
}
