//! Distributed data-parallel support on libtorch's own c10d engine (the one PyTorch DDP uses):
//! a TCPStore rendezvous and a Gloo process group reached through a small C++ bridge, the rank
//! environment of the usual launchers (`torchrun`, `mpirun`, SLURM, `rustworthy launch`), and a
//! synchronized batch norm. Everything else in rustworthy sees one [`ProcessGroup`] type: rank,
//! world size, all-reduce, broadcast and barrier.

#![warn(missing_docs)]

mod env;
mod group;
pub mod launch;
mod scope;

pub use env::{group_from_env, DistEnv, EnvSource, DEFAULT_PORT};
pub use group::{ProcessGroup, DEFAULT_TIMEOUT_SECS};
pub use scope::{record_failure, sync_batch_norm_group, take_failure, SyncBatchNormScope};
