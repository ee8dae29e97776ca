//! The RED dataset generator: victims trained (or read back), adversarial examples of every
//! (victim, attack setting) pair written as one safetensors shard each, with every label.
//!
//! Splits:
//! - `train`: the victims of instance 0 under the in-distribution settings, on Fashion-MNIST
//!   training images;
//! - `test`: the same victims and settings on Fashion-MNIST test images (in-distribution);
//! - `ood-strength`: the same victims under strengths the tools never train on;
//! - `transfer`: attacks crafted on the unseen twins (instance 1: same attributes, another seed
//!   and disjoint training images), with the seen sibling's prediction recorded (whether the
//!   example transfers).
//!
//! Unseen attack types are a split of the parser's training, not of the data: the parser trains
//! on the `train` shards of some families and is tested on the others (see [`crate::classify`]).
//!
//! Shards are written atomically under deterministic names, so a generator stopped midway
//! resumes where it stopped, without duplicating or losing a shard.

use crate::family::{
    mix_seed, train_victim, AttackBudget, AttackFamily, AttackSetting, Victim, VictimFamily,
    VictimRecipe, VictimRecord,
};
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_robust::Norm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A split of the RED dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Seen victims, in-distribution settings, training images.
    Train,
    /// Seen victims, in-distribution settings, test images.
    Test,
    /// Seen victims, held-out strengths, test images.
    OodStrength,
    /// Unseen twins, transfer settings, test images.
    Transfer,
}

impl Split {
    /// Every split.
    pub const ALL: [Split; 4] = [
        Split::Train,
        Split::Test,
        Split::OodStrength,
        Split::Transfer,
    ];

    /// The kebab-case name (the shard folder).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::OodStrength => "ood-strength",
            Split::Transfer => "transfer",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "split",
                    format!("unknown split `{s}`; valid: train, test, ood-strength, transfer"),
                )
            })
    }
}

/// Everything that defines a RED dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenConfig {
    /// The victims (every combination, instance 0; the twins are instance 1).
    pub family: VictimFamily,
    /// How victims are trained.
    pub recipe: VictimRecipe,
    /// Steps and query budgets of the attacks.
    pub budget: AttackBudget,
    /// l_inf attack families (in-distribution).
    pub linf_families: Vec<AttackFamily>,
    /// l_2 attack families (C&W is one setting; the others one per l_2 radius).
    pub l2_families: Vec<AttackFamily>,
    /// In-distribution l_inf radii (their order defines the strength buckets).
    pub linf_eps: Vec<f64>,
    /// In-distribution l_2 radii (their order defines the strength buckets).
    pub l2_eps: Vec<f64>,
    /// Held-out l_inf radii (the `ood-strength` split, every l_inf family).
    pub ood_linf_eps: Vec<f64>,
    /// Held-out l_2 radii (the `ood-strength` split, every l_2 family but C&W).
    pub ood_l2_eps: Vec<f64>,
    /// Settings run on the unseen twins (the `transfer` split).
    pub transfer: Vec<AttackSetting>,
    /// Examples per training shard.
    pub train_per_shard: usize,
    /// Examples per shard of the test splits.
    pub test_per_shard: usize,
    /// Base seed of image draws and attacks.
    pub seed: u64,
}

impl GenConfig {
    /// Checks lists, radii, budgets and sizes; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.family.validate()?;
        self.recipe.validate()?;
        self.budget.validate()?;
        if self.linf_families.is_empty() && self.l2_families.is_empty() {
            return Err(Error::config("attacks", "no attack family listed"));
        }
        for s in self.settings(Split::Train) {
            s.validate()?;
        }
        for s in self.settings(Split::OodStrength) {
            s.validate()?;
        }
        for s in &self.transfer {
            s.validate()?;
        }
        for (f, v) in [
            ("linf_eps", &self.linf_eps),
            ("l2_eps", &self.l2_eps),
            ("ood_linf_eps", &self.ood_linf_eps),
            ("ood_l2_eps", &self.ood_l2_eps),
        ] {
            for (i, e) in v.iter().enumerate() {
                if !(e.is_finite() && *e > 0.0) {
                    return Err(Error::config(f, format!("radii must be > 0, got {e}")));
                }
                if v[..i].contains(e) {
                    return Err(Error::config(f, format!("{e} is listed twice")));
                }
            }
        }
        for e in &self.ood_linf_eps {
            if self.linf_eps.contains(e) {
                return Err(Error::config(
                    "ood_linf_eps",
                    format!("{e} is also an in-distribution radius"),
                ));
            }
        }
        for e in &self.ood_l2_eps {
            if self.l2_eps.contains(e) {
                return Err(Error::config(
                    "ood_l2_eps",
                    format!("{e} is also an in-distribution radius"),
                ));
            }
        }
        if self.l2_families.iter().any(|f| *f != AttackFamily::Cw) && self.l2_eps.is_empty() {
            return Err(Error::config(
                "l2_eps",
                "l2 families need at least one radius",
            ));
        }
        if !self.linf_families.is_empty() && self.linf_eps.is_empty() {
            return Err(Error::config(
                "linf_eps",
                "l_inf families need at least one radius",
            ));
        }
        rustworthy_core::validate::positive_int("train_per_shard", self.train_per_shard)?;
        rustworthy_core::validate::positive_int("test_per_shard", self.test_per_shard)?;
        Ok(())
    }

    /// The attack families of the study, in [`AttackFamily::ALL`] order (the family labels).
    pub fn families(&self) -> Vec<AttackFamily> {
        let mut v: Vec<AttackFamily> = AttackFamily::ALL
            .into_iter()
            .filter(|f| self.linf_families.contains(f) || self.l2_families.contains(f))
            .collect();
        for s in &self.transfer {
            if !v.contains(&s.family) {
                v.push(s.family);
            }
        }
        v
    }

    /// The attack settings of a split.
    pub fn settings(&self, split: Split) -> Vec<AttackSetting> {
        let (linf, l2): (&[f64], &[f64]) = match split {
            Split::Train | Split::Test => (&self.linf_eps, &self.l2_eps),
            Split::OodStrength => (&self.ood_linf_eps, &self.ood_l2_eps),
            Split::Transfer => return self.transfer.clone(),
        };
        let mut v = Vec::new();
        for &family in &self.linf_families {
            for &eps in linf {
                v.push(AttackSetting {
                    family,
                    norm: Norm::Linf,
                    eps,
                });
            }
        }
        for &family in &self.l2_families {
            if family == AttackFamily::Cw {
                if split != Split::OodStrength {
                    v.push(AttackSetting {
                        family,
                        norm: Norm::L2,
                        eps: 0.0,
                    });
                }
                continue;
            }
            for &eps in l2 {
                v.push(AttackSetting {
                    family,
                    norm: Norm::L2,
                    eps,
                });
            }
        }
        v
    }

    /// The victims whose examples make up `split`.
    pub fn split_victims(&self, split: Split) -> Vec<Victim> {
        self.family
            .victims(if split == Split::Transfer { 1 } else { 0 })
    }

    /// The strength bucket of a setting: the index of its radius among the in-distribution
    /// radii of its norm, or -1 (a held-out radius, or C&W).
    pub fn strength_bucket(&self, s: &AttackSetting) -> i64 {
        let list = match s.norm {
            Norm::Linf => &self.linf_eps,
            Norm::L2 => &self.l2_eps,
        };
        if s.family == AttackFamily::Cw {
            return -1;
        }
        list.iter()
            .position(|e| (e - s.eps).abs() <= 1e-12)
            .map(|p| p as i64)
            .unwrap_or(-1)
    }

    /// The most strength buckets of either norm (the width of the strength head).
    pub fn strength_classes(&self) -> i64 {
        self.linf_eps.len().max(self.l2_eps.len()).max(1) as i64
    }
}

/// The label tensors every shard holds, one entry per example.
pub const LABEL_KEYS: [&str; 13] = [
    "y",
    "pred_clean",
    "pred_adv",
    "success",
    "family",
    "norm",
    "strength",
    "arch",
    "activation",
    "sparsity",
    "victim",
    "index",
    "transfer_pred",
];

/// The manifest of a RED dataset folder (`red.json`): its config and the label vocabularies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The generator config.
    pub config: GenConfig,
    /// Attack family labels, in order.
    pub families: Vec<AttackFamily>,
    /// Image geometry `[C, H, W]`.
    pub image_shape: [i64; 3],
    /// Classes of the images.
    pub num_classes: i64,
    /// Every victim: index `v` is the `victim` label `v`.
    pub victims: Vec<Victim>,
}

impl Manifest {
    /// The manifest of `cfg` on data of `image_shape` and `num_classes` classes.
    pub fn new(cfg: &GenConfig, image_shape: [i64; 3], num_classes: i64) -> Manifest {
        let mut victims = cfg.family.victims(0);
        victims.extend(cfg.family.victims(1));
        Manifest {
            config: cfg.clone(),
            families: cfg.families(),
            image_shape,
            num_classes,
            victims,
        }
    }

    /// Reads `dir/red.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let p = dir.join("red.json");
        let text = std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::invalid(format!(
                    "{} is not a RED dataset folder (no red.json); run `rustworthy red generate` first",
                    dir.display()
                ))
            } else {
                Error::io(&p, e)
            }
        })?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&p, e.to_string()))?;
        m.config.validate().map_err(|e| e.in_file(&p))?;
        Ok(m)
    }

    /// The path of the shard of (split, victim, setting) under `dir`.
    pub fn shard_path(dir: &Path, split: Split, v: &Victim, s: &AttackSetting) -> PathBuf {
        dir.join("shards")
            .join(split.name())
            .join(format!("{}__{}.safetensors", v.id(), s.id()))
    }

    /// The class counts of every label head: family, norm, strength, arch, activation,
    /// sparsity.
    pub fn head_classes(&self) -> BTreeMap<&'static str, i64> {
        BTreeMap::from([
            ("family", self.families.len() as i64),
            ("norm", 2),
            ("strength", self.config.strength_classes()),
            ("arch", self.config.family.archs.len() as i64),
            ("activation", self.config.family.activations.len() as i64),
            ("sparsity", self.config.family.sparsities.len() as i64),
        ])
    }
}

/// What one generator run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GenSummary {
    /// Shards written by this run, per split.
    pub written: BTreeMap<String, usize>,
    /// Shards found complete and kept, per split.
    pub kept: BTreeMap<String, usize>,
    /// Attack success rate (percent) per split and setting id: the share of the images the
    /// victim classified correctly whose prediction the attack changed.
    pub success: BTreeMap<String, BTreeMap<String, f64>>,
    /// The victims' records.
    pub victims: Vec<VictimRecord>,
    /// Seconds spent training victims and attacking.
    pub seconds: BTreeMap<String, f64>,
}

/// Images and labels of one split (or a subset of it): every field has one row per example.
pub struct RedSet {
    /// Clean images `[N, C, H, W]`.
    pub x_clean: Tensor,
    /// Adversarial images `[N, C, H, W]`.
    pub x_adv: Tensor,
    /// Label tensors (`[N]` int64) by key (see [`LABEL_KEYS`]).
    pub labels: BTreeMap<String, Tensor>,
    /// The radius of each example's attack `[N]` (float; 0 for C&W).
    pub eps: Tensor,
}

impl RedSet {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x_adv.size()[0] as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label tensor `key` (an error naming the key when absent).
    pub fn label(&self, key: &str) -> Result<&Tensor> {
        self.labels
            .get(key)
            .ok_or_else(|| Error::invalid(format!("RED set has no `{key}` labels")))
    }

    /// The true perturbations `x_adv - x_clean`.
    pub fn perturbation(&self) -> Tensor {
        &self.x_adv - &self.x_clean
    }

    /// The examples at `idx` (an int64 index tensor).
    pub fn select(&self, idx: &Tensor) -> RedSet {
        RedSet {
            x_clean: self.x_clean.index_select(0, idx),
            x_adv: self.x_adv.index_select(0, idx),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.index_select(0, idx)))
                .collect(),
            eps: self.eps.index_select(0, idx),
        }
    }

    /// The examples where `keep` (a `[N]` bool tensor) holds.
    pub fn filter(&self, keep: &Tensor) -> RedSet {
        self.select(&keep.nonzero().squeeze_dim(1))
    }

    /// Concatenates sets (their label keys must agree).
    pub fn cat(parts: &[RedSet]) -> Result<RedSet> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("no RED shards to concatenate"))?;
        let mut labels = BTreeMap::new();
        for k in first.labels.keys() {
            let ts: Vec<&Tensor> = parts
                .iter()
                .map(|p| {
                    p.labels
                        .get(k)
                        .ok_or_else(|| Error::invalid(format!("a shard lacks the `{k}` labels")))
                })
                .collect::<Result<_>>()?;
            labels.insert(k.clone(), Tensor::cat(&ts, 0));
        }
        let cat =
            |f: fn(&RedSet) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
        Ok(RedSet {
            x_clean: cat(|p| &p.x_clean),
            x_adv: cat(|p| &p.x_adv),
            labels,
            eps: cat(|p| &p.eps),
        })
    }

    /// Moves every tensor to `device`.
    pub fn to_device(&self, device: Device) -> RedSet {
        RedSet {
            x_clean: self.x_clean.to_device(device),
            x_adv: self.x_adv.to_device(device),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.to_device(device)))
                .collect(),
            eps: self.eps.to_device(device),
        }
    }
}

/// Reads one shard, checking its keys, shapes and label ranges against the manifest.
pub fn read_shard(path: &Path, m: &Manifest) -> Result<RedSet> {
    let named = Tensor::read_safetensors(path).map_err(|e| Error::corrupt(path, e.to_string()))?;
    let mut map: BTreeMap<String, Tensor> = named.into_iter().collect();
    let mut take = |k: &str, what: &str| {
        map.remove(k)
            .ok_or_else(|| Error::corrupt(path, format!("missing tensor `{k}` ({what})")))
    };
    let x_adv = take("x_adv", "the adversarial images")?;
    let x_clean = take(
        "x_clean",
        "the clean images; perturbations and denoisers need them",
    )?;
    let eps = take("eps", "the attack radii")?.to_kind(Kind::Float);
    let mut labels = BTreeMap::new();
    for k in LABEL_KEYS {
        labels.insert(k.to_string(), take(k, "labels")?.to_kind(Kind::Int64));
    }
    let sz = x_adv.size();
    let want = m.image_shape;
    if sz.len() != 4 || sz[1..] != want {
        return Err(Error::corrupt(
            path,
            format!(
                "adversarial images of shape {sz:?}; the dataset's images are [N, {}, {}, {}] (mixed image sizes)",
                want[0], want[1], want[2]
            ),
        ));
    }
    if x_clean.size() != sz {
        return Err(Error::corrupt(
            path,
            format!(
                "clean images of shape {:?} beside adversarial images of shape {sz:?}",
                x_clean.size()
            ),
        ));
    }
    let n = sz[0];
    for (k, t) in labels
        .iter()
        .chain(std::iter::once((&"eps".to_string(), &eps)))
    {
        if t.size() != [n] {
            return Err(Error::corrupt(
                path,
                format!("`{k}` has shape {:?}, expected [{n}]", t.size()),
            ));
        }
    }
    let classes = m.head_classes();
    let ranges: [(&str, i64, i64); 10] = [
        ("y", 0, m.num_classes),
        ("pred_clean", 0, m.num_classes),
        ("pred_adv", 0, m.num_classes),
        ("success", 0, 2),
        ("family", 0, classes["family"]),
        ("norm", 0, 2),
        ("strength", -1, classes["strength"]),
        ("arch", 0, classes["arch"]),
        ("activation", 0, classes["activation"]),
        ("sparsity", 0, classes["sparsity"]),
    ];
    for (k, lo, hi) in ranges {
        let t = &labels[k];
        if n > 0 {
            let (mn, mx) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
            if mn < lo || mx >= hi {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "unknown `{k}` label: values span [{mn}, {mx}], valid [{lo}, {}]",
                        hi - 1
                    ),
                ));
            }
        }
    }
    let vmax = labels["victim"].max().int64_value(&[]);
    if n > 0 && (labels["victim"].min().int64_value(&[]) < 0 || vmax >= m.victims.len() as i64) {
        return Err(Error::corrupt(path, "unknown `victim` label"));
    }
    for (what, t) in [("x_adv", &x_adv), ("x_clean", &x_clean)] {
        let bad = t.isfinite().logical_not().any().int64_value(&[]) != 0;
        if bad {
            return Err(Error::corrupt(
                path,
                format!("`{what}` holds NaN or infinite values"),
            ));
        }
    }
    Ok(RedSet {
        x_clean: x_clean.to_kind(Kind::Float),
        x_adv: x_adv.to_kind(Kind::Float),
        labels,
        eps,
    })
}

/// Every shard of `split` under `dir`, in the manifest's order; an error names a missing one.
pub fn load_split(dir: &Path, split: Split) -> Result<RedSet> {
    let m = Manifest::read(dir)?;
    let mut parts = Vec::new();
    for v in m.config.split_victims(split) {
        for s in m.config.settings(split) {
            let p = Manifest::shard_path(dir, split, &v, &s);
            if !p.exists() {
                return Err(Error::invalid(format!(
                    "shard {} is missing; run `rustworthy red generate` on {} to finish the dataset",
                    p.display(),
                    dir.display()
                )));
            }
            parts.push(read_shard(&p, &m)?);
        }
    }
    RedSet::cat(&parts)
}

/// A seeded draw of `n` distinct indices below `len`, sorted.
pub fn draw_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::index::sample;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = sample(&mut rng, len, n.min(len)).into_vec();
    v.sort_unstable();
    v
}

fn predict(model: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let mut out = Vec::new();
        for c in x.split(500, 0) {
            out.push(model.forward_t(&c, false).argmax(-1, false));
        }
        Tensor::cat(&out, 0)
    })
}

/// Generates (or completes) the RED dataset of `cfg` in `dir` from the training and test
/// images. Victims are trained or read back, then every missing shard is attacked and written.
/// `say` receives progress lines.
pub fn generate(
    cfg: &GenConfig,
    dir: &Path,
    train: &Dataset,
    test: &Dataset,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<GenSummary> {
    cfg.validate()?;
    let (c, h, w) = train.image_shape();
    if test.image_shape() != (c, h, w) {
        return Err(Error::invalid(format!(
            "training images are {c}x{h}x{w} but test images {:?} (mixed image sizes)",
            test.image_shape()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = fsutil::RunLock::acquire(dir)?;
    let manifest = Manifest::new(
        cfg,
        [c as i64, h as i64, w as i64],
        train.num_classes as i64,
    );
    let mpath = dir.join("red.json");
    if mpath.exists() {
        let old = Manifest::read(dir)?;
        if old != manifest {
            return Err(Error::invalid(format!(
                "{} holds a RED dataset of another config; use another folder",
                dir.display()
            )));
        }
    } else {
        fsutil::write_json_atomic(&mpath, &manifest)?;
    }
    let mut summary = GenSummary::default();
    let t = std::time::Instant::now();
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let needs_twins = !cfg.transfer.is_empty();
    for inst in 0..=u32::from(needs_twins) {
        for v in cfg.family.victims(inst) {
            let vdir = dir.join("victims").join(v.id());
            let fresh = !vdir.join("victim.json").exists();
            if fresh {
                say(&format!("train victim {}", v.id()));
            }
            let (m, rec) = train_victim(&vdir, &v, &cfg.recipe, train, test, device)?;
            if fresh {
                say(&format!(
                    "  {}: test accuracy {:.2}%, sparsity {:.1}%, {:.1} s",
                    v.id(),
                    rec.test_accuracy,
                    rec.measured_sparsity * 100.0,
                    rec.seconds
                ));
            }
            summary.victims.push(rec);
            models.insert(v.id(), m);
        }
    }
    summary
        .seconds
        .insert("victims".into(), t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let families = manifest.families.clone();
    for split in Split::ALL {
        let settings = cfg.settings(split);
        if settings.is_empty() {
            continue;
        }
        summary.written.insert(split.name().into(), 0);
        summary.kept.insert(split.name().into(), 0);
        let source = if split == Split::Train { train } else { test };
        let per = if split == Split::Train {
            cfg.train_per_shard
        } else {
            cfg.test_per_shard
        };
        let mut rates: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for v in cfg.split_victims(split) {
            let model = &models[&v.id()];
            let vidx = manifest
                .victims
                .iter()
                .position(|x| x == &v)
                .expect("manifest lists every victim") as i64;
            let attrs = cfg.family.labels(&v.attrs)?;
            for s in &settings {
                let path = Manifest::shard_path(dir, split, &v, s);
                let kept = if path.exists() {
                    match read_shard(&path, &manifest) {
                        Ok(set) => Some(set),
                        Err(e) => {
                            say(&format!(
                                "  rewriting unreadable shard {}: {e}",
                                path.display()
                            ));
                            None
                        }
                    }
                } else {
                    None
                };
                let set = match kept {
                    Some(set) => {
                        *summary.kept.entry(split.name().into()).or_default() += 1;
                        set
                    }
                    None => {
                        *summary.written.entry(split.name().into()).or_default() += 1;
                        write_shard(
                            &path, cfg, &manifest, split, &v, vidx, attrs, s, source, per, model,
                            &models, &families,
                        )?
                    }
                };
                let ok = set.labels["success"].sum(Kind::Double).double_value(&[]);
                let correct = set.labels["pred_clean"]
                    .eq_tensor(&set.labels["y"])
                    .sum(Kind::Double)
                    .double_value(&[]);
                let e = rates.entry(s.id()).or_insert((0.0, 0.0));
                e.0 += ok;
                e.1 += correct;
            }
            say(&format!(
                "  {} {}: {} shards written, {} kept so far",
                split.name(),
                v.id(),
                summary.written.get(split.name()).copied().unwrap_or(0),
                summary.kept.get(split.name()).copied().unwrap_or(0)
            ));
        }
        summary.success.insert(
            split.name().into(),
            rates
                .into_iter()
                .map(|(k, (ok, n))| (k, 100.0 * ok / n.max(1.0)))
                .collect(),
        );
    }
    summary
        .seconds
        .insert("attacks".into(), t.elapsed().as_secs_f64());
    fsutil::write_json_atomic(&dir.join("generate_summary.json"), &summary)?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn write_shard(
    path: &Path,
    cfg: &GenConfig,
    manifest: &Manifest,
    split: Split,
    v: &Victim,
    vidx: i64,
    attrs: [i64; 3],
    s: &AttackSetting,
    source: &Dataset,
    per: usize,
    model: &Model,
    models: &BTreeMap<String, Model>,
    families: &[AttackFamily],
) -> Result<RedSet> {
    let shard_id = format!("{}/{}/{}", split.name(), v.id(), s.id());
    let seed = mix_seed(cfg.seed, &shard_id);
    let idx = draw_indices(source.len(), per, seed);
    let (x, y) = source.try_batch(&idx)?;
    let x = x.to_device(model.device());
    let y = y.to_device(model.device());
    let attack = s.build(&cfg.budget)?;
    tch::manual_seed(seed as i64);
    let mut advs = Vec::new();
    for (xc, yc) in x.split(250, 0).iter().zip(y.split(250, 0).iter()) {
        let out = attack.perturb(model, xc, yc, None)?;
        advs.push(out.x_adv.detach());
    }
    let x_adv = Tensor::cat(&advs, 0).clamp(0.0, 1.0);
    let pred_clean = predict(model, &x);
    let pred_adv = predict(model, &x_adv);
    // Success: the attack changed a correct prediction (an image the victim already
    // misclassifies is no success, whatever the attack did to it).
    let success = pred_adv
        .ne_tensor(&y)
        .logical_and(&pred_clean.eq_tensor(&y))
        .to_kind(Kind::Int64);
    // For the transfer split: the prediction of the seen sibling (instance 0, same attributes).
    let transfer_pred = if split == Split::Transfer {
        let sib = Victim {
            attrs: v.attrs,
            instance: 0,
        };
        match models.get(&sib.id()) {
            Some(m) => predict(m, &x_adv),
            None => Tensor::full([per as i64], -1, (Kind::Int64, x.device())),
        }
    } else {
        Tensor::full([x.size()[0]], -1, (Kind::Int64, x.device()))
    };
    let n = x.size()[0];
    let dev = x.device();
    let full = |v: i64| Tensor::full([n], v, (Kind::Int64, dev));
    let fam = families
        .iter()
        .position(|f| *f == s.family)
        .ok_or_else(|| Error::invalid(format!("attack family {} not in the study", s.family)))?;
    let idx_t = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let named: Vec<(&str, Tensor)> = vec![
        ("x_clean", x.to_kind(Kind::Float)),
        ("x_adv", x_adv.to_kind(Kind::Float)),
        ("eps", Tensor::full([n], s.eps, (Kind::Float, dev))),
        ("y", y.to_kind(Kind::Int64)),
        ("pred_clean", pred_clean),
        ("pred_adv", pred_adv),
        ("success", success),
        ("family", full(fam as i64)),
        ("norm", full(if s.norm == Norm::Linf { 0 } else { 1 })),
        ("strength", full(cfg.strength_bucket(s))),
        ("arch", full(attrs[0])),
        ("activation", full(attrs[1])),
        ("sparsity", full(attrs[2])),
        ("victim", full(vidx)),
        ("index", idx_t.to_device(dev)),
        ("transfer_pred", transfer_pred),
    ];
    let named: Vec<(&str, Tensor)> = named
        .into_iter()
        .map(|(k, t)| (k, t.to_device(Device::Cpu).contiguous()))
        .collect();
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    fsutil::atomic_write_with(path, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    read_shard(path, manifest)
}
