//! The tiny U-Net the diffusion tests share.

use rustworthy_diffusion::unet::{CondUNet, UNetConfig};
use tch::Device;

/// A 2-level U-Net on 8x8 one-channel images of 4 classes.
pub fn tiny() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        resolution: 8,
        ch: 8,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.1,
        num_classes: 4,
        groups: 4,
    }
}

/// [`tiny`] initialised after `tch::manual_seed(seed)`.
pub fn model(seed: i64) -> CondUNet {
    tch::manual_seed(seed);
    CondUNet::new(&tiny(), Device::Cpu).unwrap()
}
