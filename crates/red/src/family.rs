//! The family of victim models and the attack settings that generate a RED dataset.

use rustworthy_core::{fsutil, validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::{Activation, Arch, Model, ModelSpec};
use rustworthy_prune::scores;
use rustworthy_robust::{Apgd, Attack, AttackLoss, CarliniWagner, Norm, Pgd, Square, ThreatModel};
use rustworthy_train::mask::{apply_masks, weight_sparsity, Masks};
use rustworthy_train::trainer::{fit, fit_with, FitOptions, MaskedStep, TrainConfig};
use rustworthy_zo::attacks::ZoAttack;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The attributes a victim model differs in: what model parsing predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VictimAttrs {
    /// Network architecture (MLP, LeNet or ResNet-20 in the presets).
    pub arch: Arch,
    /// Hidden-layer nonlinearity.
    pub activation: Activation,
    /// Weight sparsity in percent (0 for a dense model), reached by global one-shot magnitude
    /// pruning of the dense model and masked fine-tuning.
    pub sparsity_pct: u32,
}

impl VictimAttrs {
    /// A file-name-safe identifier, e.g. `lenet-tanh-s50`.
    pub fn id(&self) -> String {
        format!("{}-{}-s{}", self.arch, self.activation, self.sparsity_pct)
    }
}

/// One victim instance: its attributes and the seed of its training (two instances of the same
/// attributes with different seeds are different models).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Victim {
    /// What the model is.
    pub attrs: VictimAttrs,
    /// Which instance: 0 for the models the tools learn from, 1 for the unseen twins that
    /// source the transfer attacks.
    pub instance: u32,
}

impl Victim {
    /// A file-name-safe identifier, e.g. `lenet-tanh-s50-i0`.
    pub fn id(&self) -> String {
        format!("{}-i{}", self.attrs.id(), self.instance)
    }
}

/// How every victim is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VictimRecipe {
    /// Training images per victim (drawn from the Fashion-MNIST training split; instance 0 and
    /// instance 1 draw disjoint halves when the split allows).
    pub train_images: usize,
    /// Epochs of dense training.
    pub epochs: usize,
    /// Epochs of masked fine-tuning after pruning.
    pub finetune_epochs: usize,
    /// Adam learning rate (dense training and fine-tuning).
    pub lr: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Base seed (mixed with the victim's attributes and instance).
    pub seed: u64,
}

impl VictimRecipe {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate::positive_int("victims.train_images", self.train_images)?;
        validate::positive_int("victims.epochs", self.epochs)?;
        validate::positive_int("victims.finetune_epochs", self.finetune_epochs)?;
        validate::positive("victims.lr", self.lr)?;
        validate::positive_int("victims.batch_size", self.batch_size)?;
        Ok(())
    }

    fn train_config(&self, epochs: usize, seed: u64) -> TrainConfig {
        TrainConfig::adam_constant(epochs, self.batch_size, self.lr, seed)
    }
}

/// A 64-bit mix of a base seed and a label (FNV-1a over the label, then splitmix).
pub fn mix_seed(base: u64, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = base ^ h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a trained victim folder records beside its weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VictimRecord {
    /// The victim.
    pub victim: Victim,
    /// The model spec (architecture, geometry, activation).
    pub spec: ModelSpec,
    /// Test accuracy in percent on the Fashion-MNIST test images.
    pub test_accuracy: f64,
    /// Measured share of pruned weights among the prunable ones.
    pub measured_sparsity: f64,
    /// Seconds spent training (dense, pruning and fine-tuning).
    pub seconds: f64,
}

/// The subset of `train` a victim instance learns from: instance `i` takes a seeded draw of
/// `n` images from the `i`-th half of the split (the whole split when `n` exceeds a half).
pub fn victim_images(train: &Dataset, n: usize, instance: u32, seed: u64) -> Result<Dataset> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let len = train.len();
    let half = len / 2;
    let pool: Vec<usize> = if n <= half && instance <= 1 {
        let lo = half * instance as usize;
        (lo..lo + half).collect()
    } else {
        (0..len).collect()
    };
    let mut pool = pool;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    pool.truncate(n.min(pool.len()));
    pool.sort_unstable();
    train.subset(&pool)
}

fn dense_spec(v: &Victim, train: &Dataset) -> ModelSpec {
    let (c, h, w) = train.image_shape();
    let mut spec = ModelSpec::fashion_mnist(v.attrs.arch).with_activation(v.attrs.activation);
    spec.in_channels = c as i64;
    spec.input_size = (h as i64, w as i64);
    spec.num_classes = train.num_classes as i64;
    spec
}

/// Trains one victim (dense training, then for a sparse victim global magnitude pruning of the
/// prunable weights and masked fine-tuning), or reads it back when `dir` already holds it.
/// Writes `dir/model.safetensors` and `dir/victim.json` (the record, last).
pub fn train_victim(
    dir: &Path,
    victim: &Victim,
    recipe: &VictimRecipe,
    train: &Dataset,
    test: &Dataset,
    device: tch::Device,
) -> Result<(Model, VictimRecord)> {
    let record_path = dir.join("victim.json");
    let weights = dir.join("model.safetensors");
    if record_path.exists() && weights.exists() {
        let text = std::fs::read_to_string(&record_path).map_err(|e| Error::io(&record_path, e))?;
        let rec: VictimRecord =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&record_path, e.to_string()))?;
        if rec.victim != *victim {
            return Err(Error::corrupt(
                &record_path,
                format!(
                    "holds victim {} where {} was expected",
                    rec.victim.id(),
                    victim.id()
                ),
            ));
        }
        let mut m = Model::new(rec.spec.clone(), device)?;
        m.load(&weights)?;
        return Ok((m, rec));
    }
    recipe.validate()?;
    if victim.attrs.sparsity_pct >= 100 {
        return Err(Error::config(
            "victims.sparsities",
            format!(
                "sparsity must be below 100%, got {}",
                victim.attrs.sparsity_pct
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let t = std::time::Instant::now();
    let seed = mix_seed(recipe.seed, &victim.id());
    let data = victim_images(train, recipe.train_images, victim.instance, seed)?;
    let spec = dense_spec(victim, train);
    tch::manual_seed(seed as i64);
    let mut model = Model::new(spec.clone(), device)?;
    fit(
        &mut model,
        &data,
        None,
        &recipe.train_config(recipe.epochs, seed),
        &FitOptions::default(),
    )?;
    let mut measured = 0.0;
    if victim.attrs.sparsity_pct > 0 {
        let s = victim.attrs.sparsity_pct as f64 / 100.0;
        let masks: Masks = rustworthy_prune::masks_from_scores(
            &scores::magnitude(&model),
            s,
            rustworthy_prune::Scope::Global,
            None,
        )?;
        apply_masks(&model, &masks)?;
        fit_with(
            &mut model,
            &data,
            None,
            &recipe.train_config(recipe.finetune_epochs, seed ^ 1),
            &FitOptions::default(),
            &mut MaskedStep(&masks),
        )?;
        measured = weight_sparsity(&model, &masks);
    }
    model.check_finite(&format!("victim {}", victim.id()))?;
    let acc = rustworthy_train::eval::evaluate(&model, test, 1000)?.accuracy;
    model.save(&weights)?;
    let rec = VictimRecord {
        victim: *victim,
        spec,
        test_accuracy: acc,
        measured_sparsity: measured,
        seconds: t.elapsed().as_secs_f64(),
    };
    fsutil::write_json_atomic(&record_path, &rec)?;
    Ok((model, rec))
}

/// An attack family of the RED study.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackFamily {
    /// One signed-gradient step of size eps (l_inf) or one normalized-gradient step (l_2).
    Fgsm,
    /// PGD, every step kept (no early stop), from a random start.
    Pgd,
    /// APGD-CE, every iteration kept.
    Apgd,
    /// Carlini-Wagner l_2 (minimum norm; no eps).
    Cw,
    /// Square (score-based, l_inf).
    Square,
    /// NES (zeroth-order, antithetic Gaussian estimates, signed steps).
    Nes,
}

impl AttackFamily {
    /// Every family in a fixed order.
    pub const ALL: [AttackFamily; 6] = [
        AttackFamily::Fgsm,
        AttackFamily::Pgd,
        AttackFamily::Apgd,
        AttackFamily::Cw,
        AttackFamily::Square,
        AttackFamily::Nes,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            AttackFamily::Fgsm => "fgsm",
            AttackFamily::Pgd => "pgd",
            AttackFamily::Apgd => "apgd",
            AttackFamily::Cw => "cw",
            AttackFamily::Square => "square",
            AttackFamily::Nes => "nes",
        }
    }
}

impl fmt::Display for AttackFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttackFamily {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AttackFamily::ALL
            .into_iter()
            .find(|a| a.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::config(
                    "attack.family",
                    format!("unknown attack family `{s}`; valid: fgsm, pgd, apgd, cw, square, nes"),
                )
            })
    }
}

/// One attack setting: family, norm and strength.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackSetting {
    /// The attack family.
    pub family: AttackFamily,
    /// The norm of the perturbation set (C&W: l_2).
    pub norm: Norm,
    /// The radius in pixel units (0 for C&W, which minimizes the norm instead).
    pub eps: f64,
}

/// The effort of each family (steps and query budgets), shared by every setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackBudget {
    /// PGD steps (step size eps/4).
    pub pgd_steps: usize,
    /// APGD iterations.
    pub apgd_steps: usize,
    /// C&W Adam steps per binary-search step.
    pub cw_steps: usize,
    /// C&W binary-search steps.
    pub cw_search: usize,
    /// Square queries per image.
    pub square_queries: usize,
    /// NES iterations per image (each costs the samples plus one query).
    pub nes_iterations: usize,
    /// NES antithetic samples per estimate (even).
    pub nes_samples: usize,
}

impl AttackBudget {
    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate::positive_int("attacks.pgd_steps", self.pgd_steps)?;
        validate::positive_int("attacks.apgd_steps", self.apgd_steps)?;
        validate::positive_int("attacks.cw_steps", self.cw_steps)?;
        validate::positive_int("attacks.cw_search", self.cw_search)?;
        validate::positive_int("attacks.square_queries", self.square_queries)?;
        validate::positive_int("attacks.nes_iterations", self.nes_iterations)?;
        if self.nes_samples < 2 || !self.nes_samples.is_multiple_of(2) {
            return Err(Error::config(
                "attacks.nes_samples",
                format!("must be even and >= 2, got {}", self.nes_samples),
            ));
        }
        Ok(())
    }
}

impl AttackSetting {
    /// A file-name-safe identifier, e.g. `pgd-linf-0.0314`.
    pub fn id(&self) -> String {
        match self.family {
            AttackFamily::Cw => "cw-l2".into(),
            f => format!("{}-{}-{:.4}", f, norm_name(self.norm), self.eps),
        }
    }

    /// Checks the combination: C&W is l_2 with eps 0, Square l_inf, the others a valid radius.
    pub fn validate(&self) -> Result<()> {
        match self.family {
            AttackFamily::Cw => {
                if self.norm != Norm::L2 || self.eps != 0.0 {
                    return Err(Error::config(
                        "attack",
                        "cw is a minimum-norm l2 attack: norm l2 and eps 0",
                    ));
                }
                return Ok(());
            }
            AttackFamily::Square if self.norm != Norm::Linf => {
                return Err(Error::config("attack", "square is an l_inf attack here"))
            }
            _ => {}
        }
        ThreatModel::new(self.norm, self.eps).map(|_| ())
    }

    /// The attack object of this setting under `budget`.
    pub fn build(&self, budget: &AttackBudget) -> Result<Box<dyn Attack>> {
        self.validate()?;
        budget.validate()?;
        if self.family == AttackFamily::Cw {
            return Ok(Box::new(CarliniWagner {
                steps: budget.cw_steps,
                binary_search_steps: budget.cw_search,
                ..CarliniWagner::default()
            }));
        }
        let threat = ThreatModel::new(self.norm, self.eps)?;
        Ok(match self.family {
            AttackFamily::Fgsm => Box::new(Pgd::fgsm(threat)),
            AttackFamily::Pgd => Box::new(Pgd {
                early_stop: false,
                ..Pgd::new(threat, budget.pgd_steps)
            }),
            AttackFamily::Apgd => Box::new(Apgd {
                early_stop: false,
                ..Apgd::new(threat, budget.apgd_steps, AttackLoss::Ce)
            }),
            AttackFamily::Square => Box::new(Square::new(threat, budget.square_queries)),
            AttackFamily::Nes => {
                let mut a = ZoAttack::nes(threat, 0);
                a.kind = rustworthy_zo::attacks::ZoAttackKind::Nes {
                    q: budget.nes_samples,
                    sigma: 1e-3,
                };
                a.lr = self.eps / 4.0;
                a.queries = budget.nes_iterations * a.cost_per_iteration() as usize;
                a.validate()?;
                Box::new(a)
            }
            AttackFamily::Cw => unreachable!("handled above"),
        })
    }
}

/// `linf` or `l2`.
pub fn norm_name(n: Norm) -> &'static str {
    match n {
        Norm::Linf => "linf",
        Norm::L2 => "l2",
    }
}

/// The study's architectures, activations and sparsities: every combination is one victim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VictimFamily {
    /// Architectures.
    pub archs: Vec<Arch>,
    /// Activations.
    pub activations: Vec<Activation>,
    /// Weight sparsities in percent.
    pub sparsities: Vec<u32>,
}

impl VictimFamily {
    /// Checks the lists are non-empty and free of duplicates, and the sparsities below 100.
    pub fn validate(&self) -> Result<()> {
        fn distinct<T: PartialEq + fmt::Debug>(field: &str, v: &[T]) -> Result<()> {
            if v.is_empty() {
                return Err(Error::config(field, "needs at least one entry"));
            }
            for (i, a) in v.iter().enumerate() {
                if v[..i].contains(a) {
                    return Err(Error::config(field, format!("{a:?} is listed twice")));
                }
            }
            Ok(())
        }
        distinct("family.archs", &self.archs)?;
        distinct("family.activations", &self.activations)?;
        distinct("family.sparsities", &self.sparsities)?;
        if let Some(s) = self.sparsities.iter().find(|s| **s >= 100) {
            return Err(Error::config(
                "family.sparsities",
                format!("percent below 100, got {s}"),
            ));
        }
        for a in &self.archs {
            if !matches!(a, Arch::Mlp | Arch::Lenet | Arch::Resnet20 | Arch::Resnet18) {
                return Err(Error::config(
                    "family.archs",
                    format!("{a} has no activation choice; use mlp, lenet, resnet20 or resnet18"),
                ));
            }
        }
        Ok(())
    }

    /// Every victim of instance `instance`, architecture-major.
    pub fn victims(&self, instance: u32) -> Vec<Victim> {
        let mut v = Vec::new();
        for &arch in &self.archs {
            for &activation in &self.activations {
                for &sparsity_pct in &self.sparsities {
                    v.push(Victim {
                        attrs: VictimAttrs {
                            arch,
                            activation,
                            sparsity_pct,
                        },
                        instance,
                    });
                }
            }
        }
        v
    }

    /// The class indices of `a` for the three parsing heads (architecture, activation,
    /// sparsity), or an error naming the attribute the family does not list.
    pub fn labels(&self, a: &VictimAttrs) -> Result<[i64; 3]> {
        let find = |pos: Option<usize>, what: &str| {
            pos.map(|p| p as i64).ok_or_else(|| {
                Error::invalid(format!(
                    "victim attribute {what} is not in the study's family"
                ))
            })
        };
        Ok([
            find(self.archs.iter().position(|x| *x == a.arch), a.arch.name())?,
            find(
                self.activations.iter().position(|x| *x == a.activation),
                a.activation.name(),
            )?,
            find(
                self.sparsities.iter().position(|x| *x == a.sparsity_pct),
                &format!("sparsity {}%", a.sparsity_pct),
            )?,
        ])
    }
}
