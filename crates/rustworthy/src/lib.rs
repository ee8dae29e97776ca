//! rustworthy: trustworthy and scalable machine learning on libtorch.
//!
//! This facade re-exports the workspace crates under one name.

pub use rustworthy_core as core;
pub use rustworthy_data as data;
pub use rustworthy_models as models;
pub use rustworthy_prune as prune;
pub use rustworthy_robust as robust;
pub use rustworthy_train as train;
pub use rustworthy_unlearn as unlearn;
pub use rustworthy_zo as zo;
