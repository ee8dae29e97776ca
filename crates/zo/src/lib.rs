//! rustworthy zeroth-order optimization: black-box objectives with exact query accounting and
//! budgets, random (RGE) and coordinate-wise (CGE) gradient estimators with seed replay,
//! ZO-SGD/signSGD/momentum/Adam(AdaMM)/SVRG and the conservative variant with projections,
//! ZO-Min-Max, score-based black-box attacks (ZOO, ZO-signSGD, NES) on the attack interface of
//! `rustworthy-robust`, and DeepZero-style training of networks from forward passes only.

#![warn(missing_docs)]

pub mod attacks;
pub mod deepzero;
pub mod estimate;
pub mod minmax;
pub mod objective;
pub mod optim;

pub use attacks::{ZoAttack, ZoAttackKind};
pub use deepzero::{zo_grasp_densities, DeepZeroStep, ZoNet, ZoTrainConfig};
pub use estimate::{Cge, Diff, Dist, Estimate, Estimator, Replay, Rge};
pub use minmax::{min_max, MinMaxConfig, MinMaxObjective, RobustRegression};
pub use objective::{FnObjective, Logistic, Objective, Oracle, Quadratic};
pub use optim::{minimize, Constraint, Decay, Trace, Update, ZoConfig};
