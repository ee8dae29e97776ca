//! The attacks.

pub mod apgd;
pub mod cw;
pub mod pgd;
pub mod square;

pub use apgd::{Apgd, ApgdTargeted};
pub use cw::CarliniWagner;
pub use pgd::Pgd;
pub use square::Square;
