//! Attack attribution and model parsing: a multi-head ConvNet classifies an input derived from
//! an adversarial example into the attack's family, norm and strength bucket (attribution), or
//! into the victim's architecture, activation and sparsity (parsing).

use crate::generate::RedSet;
use crate::nets::{HeadsConfig, MultiHead};
use rustworthy_core::{validate, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

/// What a classifier predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Attack family, norm and strength bucket.
    Attribution,
    /// Victim architecture, activation and sparsity.
    Parsing,
}

impl Task {
    /// The label keys of the task's heads.
    pub fn heads(self) -> [&'static str; 3] {
        match self {
            Task::Attribution => ["family", "norm", "strength"],
            Task::Parsing => ["arch", "activation", "sparsity"],
        }
    }

    /// `attribution` or `parsing`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Attribution => "attribution",
            Task::Parsing => "parsing",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attribution" | "attribute" => Ok(Task::Attribution),
            "parsing" | "parse" => Ok(Task::Parsing),
            o => Err(Error::config(
                "task",
                format!("unknown task `{o}`; valid: attribution, parsing"),
            )),
        }
    }
}

/// What the classifier sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// The adversarial image.
    Adv,
    /// The true perturbation `x_adv - x_clean` (needs the clean image).
    True,
    /// The estimated perturbation `x_adv - D(x_adv)` of a denoiser.
    Estimated,
    /// The adversarial image and the estimated perturbation as two channels.
    AdvEstimated,
}

impl InputKind {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Adv => "adv",
            InputKind::True => "true",
            InputKind::Estimated => "estimated",
            InputKind::AdvEstimated => "adv-estimated",
        }
    }

    /// Whether the input includes a denoiser's estimates.
    pub fn reads_estimates(self) -> bool {
        matches!(self, InputKind::Estimated | InputKind::AdvEstimated)
    }

    /// Channels per image channel the input has.
    pub fn channel_factor(self) -> i64 {
        if self == InputKind::AdvEstimated {
            2
        } else {
            1
        }
    }
}

impl std::str::FromStr for InputKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adv" => Ok(InputKind::Adv),
            "true" | "perturbation" => Ok(InputKind::True),
            "estimated" => Ok(InputKind::Estimated),
            "adv-estimated" => Ok(InputKind::AdvEstimated),
            o => Err(Error::config(
                "input",
                format!("unknown input `{o}`; valid: adv, true, estimated, adv-estimated"),
            )),
        }
    }
}

/// The classifier input of kind `kind` for `set`; `estimate` holds the estimated clean images
/// where the kind needs them.
pub fn inputs(kind: InputKind, set: &RedSet, estimate: Option<&Tensor>) -> Result<Tensor> {
    let need = || {
        estimate.ok_or_else(|| {
            Error::invalid(format!(
                "input `{}` needs a denoiser's estimates",
                kind.name()
            ))
        })
    };
    Ok(match kind {
        InputKind::Adv => set.x_adv.shallow_clone(),
        InputKind::True => set.perturbation(),
        InputKind::Estimated => &set.x_adv - need()?,
        InputKind::AdvEstimated => Tensor::cat(&[&set.x_adv, &(&set.x_adv - need()?)], 1),
    })
}

/// How a classifier is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Width of the first convolution.
    pub width: i64,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam learning rate (cosine-annealed to 0).
    pub lr: f64,
    /// At most this many training examples (a seeded draw; 0: all).
    pub max_examples: usize,
    /// Bins of the soft histogram of each input channel (0: none).
    pub hist_bins: i64,
    /// Exact level statistics of the first input channel, with each image's radius sought in
    /// this many 8-bit levels (0: none).
    #[serde(default)]
    pub levels: i64,
    /// Beside the level statistics, counts of the first input channel's values off the 8-bit
    /// grid (needs `levels`; only meaningful for examples kept in float precision).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub off_grid: bool,
    /// Seed of initialisation, example draw and batch order.
    pub seed: u64,
}

impl ClassifyConfig {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate::positive_int("classify.epochs", self.epochs)?;
        validate::positive_int("classify.batch_size", self.batch_size)?;
        validate::positive("classify.lr", self.lr)?;
        if !(1..=512).contains(&self.width) {
            return Err(Error::config(
                "classify.width",
                format!("must be in [1, 512], got {}", self.width),
            ));
        }
        if !(0..=255).contains(&self.levels) {
            return Err(Error::config(
                "classify.levels",
                format!("must be in [0, 255], got {}", self.levels),
            ));
        }
        if self.off_grid && self.levels == 0 {
            return Err(Error::config(
                "classify.off_grid",
                "the off-grid counts are taken per level class: set levels > 0",
            ));
        }
        Ok(())
    }
}

/// Training record of a classifier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClassifyHistory {
    /// Mean summed head loss per epoch.
    pub loss: Vec<f64>,
    /// Examples trained on.
    pub examples: usize,
    /// Seconds.
    pub seconds: f64,
}

/// Trains a multi-head classifier of `task` on inputs `x` (`[N, C, H, W]`) and the label
/// tensors of `set` (label -1 is ignored). `classes` gives each head's class count.
pub fn train_classifier(
    cfg: &ClassifyConfig,
    task: Task,
    x: &Tensor,
    set: &RedSet,
    classes: &BTreeMap<&'static str, i64>,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<(MultiHead, ClassifyHistory)> {
    cfg.validate()?;
    let n_all = set.len();
    if n_all == 0 || x.size()[0] as usize != n_all {
        return Err(Error::invalid(format!(
            "classifier: {} inputs for {n_all} labelled examples",
            x.size()[0]
        )));
    }
    let t0 = std::time::Instant::now();
    let take = if cfg.max_examples == 0 {
        n_all
    } else {
        cfg.max_examples.min(n_all)
    };
    let sel = crate::denoise::permutation(n_all, cfg.seed).narrow(0, 0, take as i64);
    let xs = x.index_select(0, &sel).to_device(device);
    let mut ys = Vec::new();
    let mut heads = Vec::new();
    for h in task.heads() {
        let k = *classes
            .get(h)
            .ok_or_else(|| Error::invalid(format!("no class count for head `{h}`")))?;
        let y = set
            .label(h)?
            .index_select(0, &sel)
            .to_kind(Kind::Int64)
            .to_device(device);
        if y.numel() > 0 && y.max().int64_value(&[]) >= k {
            return Err(Error::invalid(format!(
                "head `{h}` has {k} classes but a label {}",
                y.max().int64_value(&[])
            )));
        }
        ys.push(y);
        heads.push((h.to_string(), k.max(2)));
    }
    let xf = xs.to_kind(Kind::Double);
    let shift = xf.mean(Kind::Double).double_value(&[]);
    let scale = xf.std(true).double_value(&[]).max(1e-6);
    // The histogram covers each channel's training range, widened by 5% on both sides.
    let mut hist_range = Vec::new();
    for c in 0..xs.size()[1] {
        let ch = xs.select(1, c);
        let (lo, hi) = (ch.min().double_value(&[]), ch.max().double_value(&[]));
        let pad = ((hi - lo) * 0.05).max(1e-3);
        hist_range.push((lo - pad, hi + pad));
    }
    let hc = HeadsConfig {
        width: cfg.width,
        channels: xs.size()[1],
        heads,
        shift,
        scale,
        hist_bins: cfg.hist_bins,
        hist_range,
        levels: cfg.levels,
        off_grid: cfg.off_grid,
    };
    tch::manual_seed(cfg.seed as i64);
    let net = MultiHead::new(&hc, device)?;
    let mut opt = tch::nn::Adam::default().build(&net.vs, cfg.lr)?;
    let mut hist = ClassifyHistory {
        examples: take,
        ..Default::default()
    };
    let steps_per_epoch = take.div_ceil(cfg.batch_size);
    let total = (steps_per_epoch * cfg.epochs) as f64;
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let order = crate::denoise::permutation(take, cfg.seed.wrapping_add(epoch as u64 + 1))
            .to_device(device);
        let (mut sl, mut nb) = (0.0, 0.0);
        for idx in order.split(cfg.batch_size as i64, 0) {
            let lr = cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            opt.set_lr(lr);
            let out = net.forward(&xs.index_select(0, &idx), true);
            let mut loss = Tensor::zeros([], (Kind::Float, device));
            for (o, y) in out.iter().zip(&ys) {
                let y = y.index_select(0, &idx);
                if y.ge(0).any().int64_value(&[]) != 0 {
                    loss += o.log_softmax(-1, Kind::Float).nll_loss_nd::<Tensor>(
                        &y,
                        None,
                        tch::Reduction::Mean,
                        -1,
                    );
                }
            }
            opt.zero_grad();
            loss.backward();
            opt.step();
            sl += loss.double_value(&[]);
            nb += 1.0;
            step += 1;
        }
        let l = sl / nb;
        if !l.is_finite() {
            return Err(Error::invalid(format!(
                "{} classifier training diverged at epoch {}",
                task.name(),
                epoch + 1
            )));
        }
        hist.loss.push(l);
        say(&format!(
            "  {} epoch {}: loss {l:.4}",
            task.name(),
            epoch + 1
        ));
    }
    hist.seconds = t0.elapsed().as_secs_f64();
    Ok((net, hist))
}

/// Predictions `[N]` of every head (eval mode, batches of 1000).
pub fn predict(net: &MultiHead, x: &Tensor) -> Vec<Tensor> {
    let dev = net.vs.device();
    tch::no_grad(|| {
        let mut parts: Vec<Vec<Tensor>> = (0..net.config.heads.len()).map(|_| Vec::new()).collect();
        for c in x.split(1000, 0) {
            for (i, o) in net
                .forward(&c.to_device(dev), false)
                .into_iter()
                .enumerate()
            {
                parts[i].push(o.argmax(-1, false).to_device(Device::Cpu));
            }
        }
        parts.iter().map(|p| Tensor::cat(p, 0)).collect()
    })
}

/// The predicted (attack family, norm) group of each example, `2 * family + norm`, from an
/// attribution network with `family` and `norm` heads (the groups of [`crate::denoise::Shrinkage`]).
pub fn predicted_group(net: &MultiHead, x: &Tensor) -> Result<Tensor> {
    let head = |name: &str| {
        net.config
            .heads
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::invalid(format!("the attribution network has no `{name}` head")))
    };
    let (fam, norm) = (head("family")?, head("norm")?);
    let p = predict(net, x);
    Ok(&p[fam] * 2 + &p[norm])
}

/// Accuracy of one head.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeadScore {
    /// Examples with a known label.
    pub n: usize,
    /// Accuracy in percent.
    pub accuracy: f64,
    /// Chance level in percent (the share of the most common label).
    pub majority: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Scores the heads of `net` on inputs `x` against `set`'s labels (label -1 skipped; a head
/// with no known label is left out).
pub fn score(net: &MultiHead, x: &Tensor, set: &RedSet) -> Result<BTreeMap<String, HeadScore>> {
    if x.size()[0] as usize != set.len() {
        return Err(Error::invalid(format!(
            "{} inputs for {} labelled examples",
            x.size()[0],
            set.len()
        )));
    }
    let preds = predict(net, x);
    let mut out = BTreeMap::new();
    for ((name, k), p) in net.config.heads.iter().zip(preds) {
        let y: Vec<i64> = Vec::try_from(set.label(name)?.to_device(Device::Cpu))?;
        let p: Vec<i64> = Vec::try_from(p)?;
        let k = *k as usize;
        let mut conf = vec![vec![0u64; k]; k];
        let (mut n, mut ok) = (0usize, 0usize);
        for (&t, &q) in y.iter().zip(&p) {
            if t < 0 {
                continue;
            }
            if t as usize >= k {
                return Err(Error::invalid(format!(
                    "head `{name}`: label {t} outside its {k} classes (unknown label)"
                )));
            }
            n += 1;
            ok += usize::from(t == q);
            conf[t as usize][q as usize] += 1;
        }
        if n == 0 {
            continue;
        }
        let majority = conf
            .iter()
            .map(|r| r.iter().sum::<u64>())
            .max()
            .unwrap_or(0) as f64
            / n as f64
            * 100.0;
        out.insert(
            name.clone(),
            HeadScore {
                n,
                accuracy: 100.0 * ok as f64 / n as f64,
                majority,
                confusion: conf,
            },
        );
    }
    Ok(out)
}
