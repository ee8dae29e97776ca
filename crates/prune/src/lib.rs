//! rustworthy sparsity: unstructured pruning masks with an exact sparsity (global or per layer)
//! that every optimizer and training loop respects; OMP, IMP with weight rewinding, SNIP, GraSP,
//! SynFlow, random pruning, HYDRA and BiP.

#![warn(missing_docs)]

pub mod methods;
pub mod scores;

pub use methods::{
    prune, train_dense, Dense, PruneConfig, PruneData, PruneMethod, PruneOutcome, RoundRecord,
};
pub use scores::{check_sparsity, masks_from_scores, Scope};
