//! Unlearning methods, one file each. Every method has a validated config with the reference
//! defaults and implements [`Unlearner`]: it receives the original model (already loaded) and the
//! forget / retain data, and changes the model in place.

pub mod common;
pub mod ga;
pub mod l1_sparse;
pub mod neggrad_plus;
pub mod rl;
pub mod salun;
pub mod scrub;

pub mod ft;
pub mod retrain;

pub mod be;
pub mod bs;
pub mod ff;
pub mod iu;

use crate::scenario::Scenario;
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::Result;
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_train::{Masks, TrainConfig};
use serde::{Deserialize, Serialize};

/// The data an unlearning method may use. All datasets live on the model's device.
pub struct UnlearnData {
    /// D_f: the samples to forget (true labels).
    pub forget: Dataset,
    /// D_r: the rest of the training set.
    pub retain: Dataset,
    /// The test set (class-wise scenarios: without the forgotten classes).
    pub test: Dataset,
    /// The resolved scenario the datasets were built from.
    pub scenario: Scenario,
}

/// Everything besides data that a method run needs.
pub struct UnlearnCtx<'a> {
    /// The forget, retain and test sets.
    pub data: &'a UnlearnData,
    /// Seed of the method's randomness (batch order, random labels, noise).
    pub seed: u64,
    /// How the method reports its progress.
    pub progress: ProgressMode,
    /// The recipe that trained the original model (Retrain reuses it).
    pub original: &'a TrainConfig,
    /// Masks of a pruned model (prune, then unlearn): pruned weights stay exactly zero.
    pub masks: Option<&'a Masks>,
    /// Data-parallel run over several processes (Retrain and the single-batch gradient methods
    /// shard every batch; the others compute the same steps on every rank).
    pub dist: Option<rustworthy_train::DistOptions>,
}

/// What a method reports about its own run (metrics are computed by the caller).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MethodReport {
    /// Epochs (or passes) over data the method ran.
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Method-specific facts (e.g. mask density, noise scale).
    pub extra: serde_json::Value,
}

/// An unlearning method.
pub trait Unlearner {
    /// Short name as used on the command line.
    fn name(&self) -> &'static str;
    /// Unlearns `ctx.data.forget` from `model` in place.
    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport>;
}

/// Which published account of a method its defaults follow. Settings a user gives explicitly
/// always win over the profile's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The official code's main path for the paper's main benchmark (Unlearn-Saliency's CIFAR-10
    /// path for FT, GA, RL, SalUn, l1-sparse, BE, BS, FF and IU; the SCRUB repository's notebooks
    /// for SCRUB and NegGrad+), except for the bugs listed in docs/unlearning.md, which are not
    /// copied. The default: published tables were made with this code.
    #[default]
    Reference,
    /// The paper's formulation where it differs from its code: RL and SalUn mix forget and
    /// retain batches in one shuffled stream (one joint objective), BS always takes the nearest
    /// *wrong* class, NegGrad+ trains in train mode and reshuffles its forget batches.
    Paper,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 2] = [Profile::Reference, Profile::Paper];

    /// The name used in configs, on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Reference => "reference",
            Profile::Paper => "paper",
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = rustworthy_core::Error;
    fn from_str(s: &str) -> Result<Profile> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                rustworthy_core::Error::config(
                    "profile",
                    format!("unknown profile `{s}`; known: reference, paper"),
                )
            })
    }
}

/// The configuration of any method, tagged by name (`method = "salun"` in TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum MethodConfig {
    /// Retrain from scratch on the retain set.
    Retrain(retrain::RetrainConfig),
    /// FT: fine-tune on the retain set.
    Ft(ft::FtConfig),
    /// GA: gradient ascent on the forget set.
    Ga(ga::GaConfig),
    /// RL: fine-tune with random labels on the forget set.
    Rl(rl::RlConfig),
    /// SalUn: RL restricted to the most salient weights.
    Salun(salun::SalunConfig),
    /// l1-sparse: fine-tune on the retain set with a decaying l1 penalty.
    L1Sparse(l1_sparse::L1SparseConfig),
    /// NegGrad+: descend the retain loss and ascend the forget loss together.
    #[serde(rename = "neggrad-plus")]
    NegGradPlus(neggrad_plus::NegGradPlusConfig),
    /// SCRUB: distil away from the original model on the forget set and towards it on the retain
    /// set.
    Scrub(scrub::ScrubConfig),
    /// FF: Fisher forgetting (Fisher-scaled Gaussian noise on the weights).
    Ff(ff::FfConfig),
    /// IU: one influence-function step with a WoodFisher inverse Hessian.
    Iu(iu::IuConfig),
    /// BE: boundary expanding through a temporary shadow class.
    Be(be::BeConfig),
    /// BS: boundary shrinking towards each sample's nearest wrong class.
    Bs(bs::BsConfig),
}

impl MethodConfig {
    /// Every method name the CLI accepts.
    pub const NAMES: &'static [&'static str] = &[
        "retrain",
        "ft",
        "ga",
        "rl",
        "salun",
        "l1-sparse",
        "neggrad-plus",
        "scrub",
        "ff",
        "iu",
        "be",
        "bs",
    ];

    /// The defaults of method `name` under `profile`.
    pub fn for_profile(name: &str, profile: Profile) -> Result<MethodConfig> {
        let mut c = Self::default_for(name)?;
        if profile == Profile::Paper {
            match &mut c {
                MethodConfig::Rl(r) => r.forget_first = false,
                MethodConfig::Salun(s) => s.forget_first = false,
                MethodConfig::Bs(b) => b.force_wrong = true,
                MethodConfig::NegGradPlus(n) => {
                    n.bn_eval = false;
                    n.replay_forget = false;
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// The settings of method `name` on which the profiles differ: `(key, reference value,
    /// paper value)`.
    pub fn profile_differences(
        name: &str,
    ) -> Result<Vec<(String, serde_json::Value, serde_json::Value)>> {
        let r = serde_json::to_value(Self::for_profile(name, Profile::Reference)?)?;
        let p = serde_json::to_value(Self::for_profile(name, Profile::Paper)?)?;
        let (r, p) = (
            r.as_object().cloned().unwrap_or_default(),
            p.as_object().cloned().unwrap_or_default(),
        );
        Ok(r.into_iter()
            .filter_map(|(k, v)| {
                let pv = p.get(&k).cloned().unwrap_or(serde_json::Value::Null);
                (pv != v).then_some((k, v, pv))
            })
            .collect())
    }

    /// The reference defaults of method `name` (the [`Profile::Reference`] profile).
    pub fn default_for(name: &str) -> Result<MethodConfig> {
        Ok(match name {
            "retrain" => MethodConfig::Retrain(Default::default()),
            "ft" => MethodConfig::Ft(Default::default()),
            "ga" => MethodConfig::Ga(Default::default()),
            "rl" => MethodConfig::Rl(Default::default()),
            "salun" => MethodConfig::Salun(Default::default()),
            "l1-sparse" => MethodConfig::L1Sparse(Default::default()),
            "neggrad-plus" => MethodConfig::NegGradPlus(Default::default()),
            "scrub" => MethodConfig::Scrub(Default::default()),
            "ff" => MethodConfig::Ff(Default::default()),
            "iu" => MethodConfig::Iu(Default::default()),
            "be" => MethodConfig::Be(Default::default()),
            "bs" => MethodConfig::Bs(Default::default()),
            _ => {
                return Err(rustworthy_core::Error::config(
                    "method",
                    format!("unknown method `{name}`; known: {}", Self::NAMES.join(", ")),
                ))
            }
        })
    }

    /// The method's name as the CLI spells it (one of [`MethodConfig::NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Retrain(_) => "retrain",
            MethodConfig::Ft(_) => "ft",
            MethodConfig::Ga(_) => "ga",
            MethodConfig::Rl(_) => "rl",
            MethodConfig::Salun(_) => "salun",
            MethodConfig::L1Sparse(_) => "l1-sparse",
            MethodConfig::NegGradPlus(_) => "neggrad-plus",
            MethodConfig::Scrub(_) => "scrub",
            MethodConfig::Ff(_) => "ff",
            MethodConfig::Iu(_) => "iu",
            MethodConfig::Be(_) => "be",
            MethodConfig::Bs(_) => "bs",
        }
    }

    /// The step size searched by the lr search: the learning rate, or for FF and IU (which take
    /// no gradient steps) their scale `alpha`.
    pub fn lr(&self) -> Option<f64> {
        match self {
            MethodConfig::Retrain(c) => c.lr,
            MethodConfig::Ft(c) => Some(c.run.lr),
            MethodConfig::Ga(c) => Some(c.run.lr),
            MethodConfig::Rl(c) => Some(c.run.lr),
            MethodConfig::Salun(c) => Some(c.run.lr),
            MethodConfig::L1Sparse(c) => Some(c.run.lr),
            MethodConfig::NegGradPlus(c) => Some(c.lr),
            MethodConfig::Scrub(c) => Some(c.run.lr),
            MethodConfig::Ff(c) => Some(c.alpha),
            MethodConfig::Iu(c) => Some(c.alpha),
            MethodConfig::Be(c) => Some(c.run.lr),
            MethodConfig::Bs(c) => Some(c.run.lr),
        }
    }

    /// A copy with another learning rate (no-op for methods without one).
    pub fn with_lr(&self, lr: f64) -> MethodConfig {
        let mut c = self.clone();
        match &mut c {
            MethodConfig::Retrain(r) => r.lr = Some(lr),
            MethodConfig::Ft(f) => f.run.lr = lr,
            MethodConfig::Ga(x) => x.run.lr = lr,
            MethodConfig::Rl(x) => x.run.lr = lr,
            MethodConfig::Salun(x) => x.run.lr = lr,
            MethodConfig::L1Sparse(x) => x.run.lr = lr,
            MethodConfig::NegGradPlus(x) => x.lr = lr,
            MethodConfig::Scrub(x) => x.run.lr = lr,
            MethodConfig::Ff(x) => x.alpha = lr,
            MethodConfig::Iu(x) => x.alpha = lr,
            MethodConfig::Be(x) => x.run.lr = lr,
            MethodConfig::Bs(x) => x.run.lr = lr,
        }
        c
    }

    /// The defaults of method `name` with `overrides` (e.g. from a TOML table) applied. Unknown
    /// keys are errors naming the method and the key; the result is validated.
    pub fn with_overrides(
        name: &str,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<MethodConfig> {
        Self::with_overrides_for(name, Profile::Reference, overrides)
    }

    /// The defaults of method `name` under `profile` with `overrides` applied (see
    /// [`MethodConfig::with_overrides`]).
    pub fn with_overrides_for(
        name: &str,
        profile: Profile,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<MethodConfig> {
        let base = Self::for_profile(name, profile)?;
        let mut v = serde_json::to_value(&base)?;
        let obj = v
            .as_object_mut()
            .expect("method configs serialize as objects");
        for (k, val) in overrides {
            if k == "method" {
                continue;
            }
            if !obj.contains_key(k) {
                let mut known: Vec<&String> = obj.keys().filter(|k| *k != "method").collect();
                known.sort();
                return Err(rustworthy_core::Error::config(
                    format!("{name}.{k}"),
                    format!(
                        "unknown key for method {name}; known: {}",
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            obj.insert(k.clone(), val.clone());
        }
        let cfg: MethodConfig = serde_json::from_value(v)
            .map_err(|e| rustworthy_core::Error::config(name, e.to_string()))?;
        cfg.build()?;
        Ok(cfg)
    }

    /// Validates and builds the runnable method.
    pub fn build(&self) -> Result<Box<dyn Unlearner>> {
        Ok(match self {
            MethodConfig::Retrain(c) => Box::new(c.clone().build()?),
            MethodConfig::Ft(c) => Box::new(c.clone().build()?),
            MethodConfig::Ga(c) => Box::new(c.clone().build()?),
            MethodConfig::Rl(c) => Box::new(c.clone().build()?),
            MethodConfig::Salun(c) => Box::new(c.clone().build()?),
            MethodConfig::L1Sparse(c) => Box::new(c.clone().build()?),
            MethodConfig::NegGradPlus(c) => Box::new(c.clone().build()?),
            MethodConfig::Scrub(c) => Box::new(c.clone().build()?),
            MethodConfig::Ff(c) => Box::new(c.clone().build()?),
            MethodConfig::Iu(c) => Box::new(c.clone().build()?),
            MethodConfig::Be(c) => Box::new(c.clone().build()?),
            MethodConfig::Bs(c) => Box::new(c.clone().build()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_differ_where_documented() {
        let diff = |n: &str| -> Vec<String> {
            MethodConfig::profile_differences(n)
                .unwrap()
                .into_iter()
                .map(|(k, _, _)| k)
                .collect()
        };
        assert_eq!(diff("rl"), ["forget_first"]);
        assert_eq!(diff("salun"), ["forget_first"]);
        assert_eq!(diff("bs"), ["force_wrong"]);
        assert_eq!(diff("neggrad-plus"), ["bn_eval", "replay_forget"]);
        for n in [
            "retrain",
            "ft",
            "ga",
            "l1-sparse",
            "scrub",
            "ff",
            "iu",
            "be",
        ] {
            assert!(diff(n).is_empty(), "{n}");
        }
        assert_eq!(
            MethodConfig::for_profile("rl", Profile::Reference).unwrap(),
            MethodConfig::default_for("rl").unwrap()
        );
        assert_eq!("paper".parse::<Profile>().unwrap(), Profile::Paper);
        assert!("official"
            .parse::<Profile>()
            .unwrap_err()
            .to_string()
            .contains("reference, paper"));
    }

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let mut o = serde_json::Map::new();
        o.insert("epochs".into(), serde_json::json!(3));
        o.insert("lr".into(), serde_json::json!(0.02));
        let c = MethodConfig::with_overrides("ft", &o).unwrap();
        assert_eq!(c.lr(), Some(0.02));
        o.insert("lrr".into(), serde_json::json!(1));
        let e = MethodConfig::with_overrides("ft", &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ft.lrr"), "{e}");
        let mut bad = serde_json::Map::new();
        bad.insert("lr".into(), serde_json::json!(-1.0));
        let e = MethodConfig::with_overrides("ft", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ft.lr"), "{e}");
        assert!(MethodConfig::default_for("nope").is_err());
        // Overrides win over the profile.
        let mut o = serde_json::Map::new();
        o.insert("forget_first".into(), serde_json::json!(true));
        match MethodConfig::with_overrides_for("rl", Profile::Paper, &o).unwrap() {
            MethodConfig::Rl(r) => assert!(r.forget_first),
            c => panic!("{c:?}"),
        }
        for n in MethodConfig::NAMES {
            let d = MethodConfig::default_for(n).unwrap();
            assert_eq!(d.name(), *n);
            d.build().unwrap();
        }
    }
}
