//! rustworthy core: the pieces every pillar shares.

#![warn(missing_docs)]

pub mod device;
pub mod error;
pub mod fsutil;
pub mod plot;
pub mod progress;
pub mod report;
pub mod seed;
pub mod validate;

pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use seed::SeedRng;
