//! Model folders (`model.safetensors` + `unet.json`), Fashion-MNIST at the model's resolution,
//! and PNG sample grids.

use crate::unet::{CondUNet, UNetConfig};
pub use rustworthy_core::plot::write_grid;
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_data::Dataset;
use std::path::Path;
use tch::{Device, Tensor};

/// Writes `model`'s weights and config into `dir` (atomically, file by file; the config last).
pub fn save_unet(dir: &Path, model: &CondUNet) -> Result<()> {
    let named = model.named_parameters();
    fsutil::atomic_write_with(&dir.join("model.safetensors"), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    fsutil::write_json_atomic(&dir.join("unet.json"), &model.config)
}

/// Whether `dir` holds a saved U-Net.
pub fn has_unet(dir: &Path) -> bool {
    dir.join("unet.json").exists() && dir.join("model.safetensors").exists()
}

/// Reads a model folder written by [`save_unet`] onto `device`.
pub fn load_unet(dir: &Path, device: Device) -> Result<CondUNet> {
    let cfg_path = dir.join("unet.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg: UNetConfig =
        serde_json::from_str(&text).map_err(|e| Error::corrupt(&cfg_path, e.to_string()))?;
    let mut m = CondUNet::new(&cfg, device).map_err(|e| e.in_file(&cfg_path))?;
    let w = dir.join("model.safetensors");
    if !w.exists() {
        return Err(Error::checkpoint(
            &w,
            "missing (the folder has unet.json but no weights)",
        ));
    }
    let t = Tensor::read_safetensors(&w).map_err(|e| Error::checkpoint(&w, e.to_string()))?;
    m.load_tensors(&t, &w.display().to_string())?;
    Ok(m)
}

/// `ds` at `side` x `side` pixels: unchanged at its own size, average-pooled by an integer
/// factor otherwise (28 -> 14 for the mini preset).
pub fn at_resolution(ds: &Dataset, side: i64) -> Result<Dataset> {
    let (_, h, w) = ds.image_shape();
    let (h, w) = (h as i64, w as i64);
    if h == side && w == side {
        return Ok(ds.shallow_clone());
    }
    if h != w || h % side != 0 {
        return Err(Error::invalid(format!(
            "{}: {h}x{w} images cannot be pooled to {side}x{side}",
            ds.name
        )));
    }
    let f = h / side;
    let x = ds
        .images
        .avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>);
    Dataset::new(
        format!("{}@{side}", ds.name),
        x,
        ds.labels.shallow_clone(),
        ds.num_classes,
        ds.class_names.clone(),
    )
}

/// The images of `ds` with label `class` (or, with `exclude`, all other images).
pub fn class_subset(ds: &Dataset, class: i64, exclude: bool) -> Result<Dataset> {
    let labels = ds.labels_vec();
    let idx: Vec<usize> = (0..labels.len())
        .filter(|&i| (labels[i] == class) != exclude)
        .collect();
    ds.subset(&idx)
}
