//! rustworthy training: optimizers (with optional masks), learning-rate schedules, the training
//! loop with seeded, resumable epochs, checkpoints and evaluation.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod ddp;
pub mod eval;
pub mod mask;
pub mod optim;
pub mod schedule;
pub mod speed;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use eval::{evaluate, EvalResult};
pub use mask::{apply_masks, Masks, UpdateMasks};
pub use optim::{OptimConfig, Optimizer};
pub use schedule::{LrSchedule, ScheduleConfig};
pub use trainer::{
    fit, fit_with, DistOptions, EpochRecord, EpochVerdict, FitOptions, FitOutcome, MaskedStep,
    StandardStep, TrainConfig, TrainHook,
};
