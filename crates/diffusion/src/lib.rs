//! rustworthy diffusion: a class-conditional DDPM on small images (the U-Net family of SalUn's
//! DDPM code), its samplers, class erasure (SalUn, RL, GA, ESD, Retrain), generative metrics on
//! features of our own classifier, and the attack that tests whether an erased class really
//! left.

#![warn(missing_docs)]

pub mod attack;
pub mod bench;
pub mod io;
pub mod metrics;
pub mod sample;
pub mod schedule;
pub mod speed;
pub mod train;
pub mod unet;
pub mod unlearn;
pub mod workflow;
