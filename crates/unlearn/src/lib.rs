//! rustworthy machine unlearning: forgetting scenarios, unlearning methods (one file each) and
//! the field's evaluation (UA, RA, TA, MIA-Efficacy, RTE, Avg. Gap to Retrain).

#![warn(missing_docs)]

pub mod methods;
pub mod metrics;
pub mod pipeline;
pub mod scenario;
pub mod svm;

pub use methods::{MethodConfig, MethodReport, Profile, UnlearnCtx, UnlearnData, Unlearner};
pub use scenario::{ForgetSpec, Scenario};
