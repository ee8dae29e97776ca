//! rustworthy data: dataset readers (IDX, CIFAR, `.safetensors`/`.npz` tensor files, image
//! folders), data sources, in-memory datasets, deterministic splits, batching and on-device
//! augmentation.
//!
//! Every reader validates its input before allocating and names the offending file in its
//! errors; every random choice derives from a user seed through named [`SeedRng`] streams.
//!
//! [`SeedRng`]: rustworthy_core::SeedRng

#![warn(missing_docs)]

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod locate;
pub mod npy;
pub mod registry;
pub mod source;
pub mod split;
pub mod synthetic;
pub mod tensorfile;

pub use augment::Augment;
pub use dataset::{epoch_order, Batch, BatchIter, Dataset};
pub use folder::{load_image_folder, FolderReport};
pub use idx::{load_idx_pair, read_idx, write_idx_u8, IdxArray};
pub use npy::{read_npz, DType, NdArray};
pub use registry::{canonical_name, dataset_summary, load_dataset, DatasetSummary, KNOWN_DATASETS};
pub use source::{load_source, load_source_with_notes, DataSource, LoadedSource, SourceOptions};
pub use split::per_class_split;
pub use synthetic::{synthetic, try_synthetic, write_synthetic_idx};
pub use tensorfile::{load_tensor_file, read_tensor_file, TensorFileContents};
