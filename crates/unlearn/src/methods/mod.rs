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

    /// The reference defaults of method `name`.
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
        let base = Self::default_for(name)?;
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
        for n in MethodConfig::NAMES {
            let d = MethodConfig::default_for(n).unwrap();
            assert_eq!(d.name(), *n);
            d.build().unwrap();
        }
    }
}
