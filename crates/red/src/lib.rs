//! rustworthy reverse engineering of deceptions (RED): given adversarial examples, infer what
//! happened.
//!
//! - [`family`]: the victim models (architecture x activation x weight sparsity, trained with
//!   the training recipes and pruned with one-shot magnitude pruning) and the attack settings
//!   (family, norm, strength) that generate the data.
//! - [`generate`]: the RED dataset generator, seeded and resumable, writing one safetensors
//!   shard per (split, victim, attack setting) with every label beside the images.
//! - [`nets`]: the denoiser (a DnCNN-style residual network) and the multi-head ConvNet used
//!   for attribution and model parsing.
//! - [`denoise`]: perturbation estimation, plain pixel loss or class-discriminative (the
//!   prediction of a classifier on the estimate must match its prediction on the clean image),
//!   against the identity baseline.
//! - [`classify`]: attack attribution (family, norm, strength bucket) and model parsing
//!   (architecture, activation, sparsity) with per-head accuracy and confusion matrices.
//! - [`bench`]: the presets and the end-to-end study with its table, CSV, JSON and PNG.
//! - [`workflow`]: the procedures of `rustworthy red generate|train|infer`.

#![warn(missing_docs)]

pub mod bench;
pub mod classify;
pub mod denoise;
pub mod family;
pub mod generate;
pub mod nets;
pub mod workflow;
