//! rustworthy adversarial robustness: typed threat models with checked inputs, white-box
//! (FGSM, PGD, APGD-CE/DLR, APGD-T, C&W-l2) and score-based (Square) attacks behind one
//! interface with query accounting, adversarial training (PGD-AT, Fast-AT, GradAlign, Fast-BAT,
//! TRADES) with catastrophic-overfitting detection, and a robust evaluation suite.

#![warn(missing_docs)]

pub mod adv_train;
pub mod attack;
pub mod attacks;
pub mod loss;
pub mod run;
pub mod suite;
pub mod threat;

pub use adv_train::{AdvMethod, AdvTrainConfig, AdvTrainer, Monitor};
pub use attack::{Attack, AttackLoss, AttackOutput, Criterion, ScoreOracle, TargetSpec};
pub use attacks::{Apgd, ApgdTargeted, CarliniWagner, Pgd, Square};
pub use run::{attack_dataset, AttackRun, AttackSummary, PerSample, RunOptions};
pub use suite::{robust_eval, RobustReport, SuiteConfig};
pub use threat::{Norm, ThreatModel};
