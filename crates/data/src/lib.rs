//! rustworthy data: dataset readers (IDX, CIFAR), in-memory datasets, deterministic splits,
//! batching and on-device augmentation.
//!
//! Every reader validates its input before allocating and names the offending file in its
//! errors; every random choice derives from a user seed through named [`SeedRng`] streams.
//!
//! [`SeedRng`]: rustworthy_core::SeedRng

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod idx;
pub mod locate;
pub mod registry;
pub mod split;
pub mod synthetic;

pub use augment::Augment;
pub use dataset::{epoch_order, Batch, BatchIter, Dataset};
pub use idx::{load_idx_pair, read_idx, write_idx_u8, IdxArray};
pub use registry::{canonical_name, dataset_summary, load_dataset, DatasetSummary, KNOWN_DATASETS};
pub use split::per_class_split;
pub use synthetic::{synthetic, try_synthetic, write_synthetic_idx};
