//! rustworthy: trustworthy and scalable machine learning on libtorch.
//!
//! The library behind the `rustworthy` command: machine unlearning, adversarial robustness,
//! sparsity and zeroth-order optimization, with the experiment procedures (training runs,
//! opening a trained run with its verified split, unlearning runs and the unlearning benchmark,
//! attacks and robust evaluation, pruning runs, zeroth-order checks) as plain functions that
//! take typed requests and return typed outcomes. Every run writes a folder with a
//! `report.json` holding its full config, seeds, versions and timings.
//!
//! The building blocks are re-exported as modules ([`core`], [`data`], [`models`], [`train`],
//! [`unlearn`], [`robust`], [`prune`], [`zo`], and [`accel`] for the fused optimizer kernels,
//! bf16 autocast, channels-last and the host-synchronization counter); [`prelude`] brings the
//! common names into scope.
//! Library calls draw no progress bar unless asked (`ProgressMode::Bar`), and report what they
//! do through `tracing` (silent unless the application installs a subscriber).
//!
//! # Example: SalUn on a saved run
//!
//! ```no_run
//! use rustworthy::prelude::*;
//!
//! # fn main() -> rustworthy::core::Result<()> {
//! // A model trained by `rustworthy train --preset fmnist-lenet` (or `train_run::train`).
//! let method = MethodConfig::default_for("salun")?;
//! let forget: ForgetSpec = "random:0.1".parse()?;
//! let mut req = UnlearnRequest::new("runs/fmnist-lenet/model.safetensors", method, forget);
//! req.out = "runs/salun".into();
//! let done = unlearn_run::unlearn(&req)?;
//! let m = &done.result.metrics;
//! println!("UA {:.2} RA {:.2} TA {:.2} MIA {:.2}", m.ua, m.ra, m.ta, m.mia_efficacy);
//! # Ok(())
//! # }
//! ```
//!
//! # Example: a config from a preset, changed and checked
//!
//! ```
//! use rustworthy::config::{apply_sets, preset};
//!
//! let base = preset("fmnist-lenet").unwrap();
//! let cfg = apply_sets(&base, &["train.epochs=2".into(), "train.batch_size=64".into()]).unwrap();
//! cfg.validate().unwrap();
//! assert_eq!(cfg.train.epochs, 2);
//! // An unknown field is an error naming it.
//! let err = apply_sets(&base, &["train.epohcs=2".into()]).unwrap_err();
//! assert!(err.to_string().contains("epohcs"));
//! ```
#![warn(missing_docs)]

pub use rustworthy_accel as accel;
pub use rustworthy_core as core;
pub use rustworthy_data as data;
pub use rustworthy_diffusion as diffusion;
pub use rustworthy_dist as dist;
pub use rustworthy_llm as llm;
pub use rustworthy_models as models;
pub use rustworthy_prune as prune;
pub use rustworthy_red as red;
pub use rustworthy_robust as robust;
pub use rustworthy_train as train;
pub use rustworthy_unlearn as unlearn;
pub use rustworthy_zo as zo;

pub mod bench_dist;
pub mod bench_script;
pub mod bench_unlearn;
pub mod config;
pub mod datasets;
pub mod eval_run;
pub mod info;
pub mod model_source;
pub mod prune_run;
pub mod robust_run;
pub mod table;
pub mod tensors;
pub mod train_run;
pub mod trained;
pub mod unlearn_run;
pub mod zo_run;

pub use serde_json;
pub use tch;

/// The names most programs need.
pub mod prelude {
    pub use crate::bench_unlearn::{bench_preset, bench_unlearn, BenchConfig, BenchOptions};
    pub use crate::config::{apply_sets, preset, RunConfig};
    pub use crate::eval_run::{eval, EvalRequest};
    pub use crate::prune_run::{bench_prune, prune_run, PruneCommon};
    pub use crate::robust_run::{
        attack, robust_eval_run, AttackKind, AttackRequest, AttackSpec, ModelData,
    };
    pub use crate::train_run::{train, TrainOptions};
    pub use crate::trained::TrainedRun;
    pub use crate::unlearn_run::{self, PruneSpec, UnlearnRequest, UnlearnSetup};
    pub use crate::zo_run::{zo_check, ZoCheckConfig};
    pub use rustworthy_core::progress::ProgressMode;
    pub use rustworthy_core::{DeviceSpec, Error, Result};
    pub use rustworthy_data::Dataset;
    pub use rustworthy_models::{Arch, Model, ModelSpec};
    pub use rustworthy_prune::{PruneMethod, Scope};
    pub use rustworthy_robust::{Attack, AttackLoss, Norm, SuiteConfig, TargetSpec, ThreatModel};
    pub use rustworthy_train::DistOptions;
    pub use rustworthy_unlearn::{ForgetSpec, MethodConfig, Profile};
}
