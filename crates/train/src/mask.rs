//! Unstructured weight masks: which entries of which parameters exist. Pruned entries are exactly
//! zero in the model and stay so: the optimizer leaves masked entries untouched (also under
//! momentum and weight decay), and [`apply_masks`] zeroes them after any update that does not go
//! through the optimizer.

use rustworthy_core::{Error, Result};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Pruning masks by parameter name: float 0/1 tensors of the parameter's shape, 1 where the
/// entry exists. **A parameter without an entry is dense** (nothing of it is pruned). Reads and
/// edits like the map it wraps.
#[derive(Debug, Default)]
pub struct Masks(BTreeMap<String, Tensor>);

/// Which entries an optimizer may change, by parameter name: 0/1 (or boolean) tensors of the
/// parameter's shape, non-zero where the entry may move. **A parameter without an entry is
/// frozen** (see [`crate::optim::Optimizer::set_masks`]). SalUn's saliency mask is one; pruning
/// masks become one through [`Masks::for_update`].
#[derive(Debug, Default)]
pub struct UpdateMasks(BTreeMap<String, Tensor>);

macro_rules! mask_map {
    ($t:ident) => {
        impl $t {
            /// No entries.
            pub fn new() -> Self {
                $t(BTreeMap::new())
            }
            /// The entries by parameter name.
            pub fn into_inner(self) -> BTreeMap<String, Tensor> {
                self.0
            }
        }
        impl std::ops::Deref for $t {
            type Target = BTreeMap<String, Tensor>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
        impl From<BTreeMap<String, Tensor>> for $t {
            fn from(m: BTreeMap<String, Tensor>) -> Self {
                $t(m)
            }
        }
        impl FromIterator<(String, Tensor)> for $t {
            fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
                $t(iter.into_iter().collect())
            }
        }
        impl<'a> IntoIterator for &'a $t {
            type Item = (&'a String, &'a Tensor);
            type IntoIter = std::collections::btree_map::Iter<'a, String, Tensor>;
            fn into_iter(self) -> Self::IntoIter {
                self.0.iter()
            }
        }
    };
}
mask_map!(Masks);
mask_map!(UpdateMasks);

impl Masks {
    /// The update masks for `params` that keep pruned entries fixed: each parameter's pruning
    /// mask, and all-ones (free) for every parameter without one (dense here, so free to move,
    /// where a missing entry of [`UpdateMasks`] would freeze it).
    pub fn for_update(&self, params: &[(String, Tensor)]) -> UpdateMasks {
        params
            .iter()
            .map(|(name, p)| {
                let m = match self.get(name) {
                    Some(m) => m.shallow_clone(),
                    None => p.ones_like(),
                };
                (name.clone(), m)
            })
            .collect()
    }
}

/// The parameters that pruning applies to: the weights of convolutions and linear layers
/// (tensors of rank >= 2). Biases and batch-norm parameters stay dense.
pub fn prunable(model: &Model) -> Vec<(String, Tensor)> {
    model
        .parameters()
        .into_iter()
        .filter(|(_, t)| t.dim() >= 2)
        .collect()
}

/// Checks that every mask names a parameter of `model` and has its shape and device.
pub fn check_masks(model: &Model, masks: &Masks) -> Result<()> {
    let params: BTreeMap<String, Tensor> = model.parameters().into_iter().collect();
    for (name, m) in masks {
        let Some(p) = params.get(name) else {
            let known: Vec<&String> = params.keys().collect();
            return Err(Error::invalid(format!(
                "mask for unknown layer `{name}`; the model's parameters are {known:?}"
            )));
        };
        if m.size() != p.size() {
            return Err(Error::Shape {
                op: format!("mask for {name}"),
                expected: format!("{:?}", p.size()),
                got: m.size(),
            });
        }
        if m.device() != p.device() {
            return Err(Error::Device(format!(
                "mask for {name} is on {:?} but the parameter is on {:?}",
                m.device(),
                p.device()
            )));
        }
    }
    Ok(())
}

/// Zeroes the pruned entries of the model's parameters.
pub fn apply_masks(model: &Model, masks: &Masks) -> Result<()> {
    check_masks(model, masks)?;
    let params: BTreeMap<String, Tensor> = model.parameters().into_iter().collect();
    tch::no_grad(|| {
        for (name, m) in masks {
            let p = &params[name];
            let _ = p.shallow_clone().g_mul_(&m.to_kind(p.kind()));
        }
    });
    Ok(())
}

/// Per-layer mask statistics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerSparsity {
    /// Parameter name, e.g. `conv1.weight`.
    pub name: String,
    /// Number of entries in the mask.
    pub total: i64,
    /// Number of unpruned (non-zero) entries.
    pub kept: i64,
    /// Fraction of entries pruned, in [0, 1].
    pub sparsity: f64,
}

/// Per-layer statistics and the overall sparsity over the masked layers.
pub fn mask_stats(masks: &Masks) -> (Vec<LayerSparsity>, f64) {
    let mut rows = Vec::new();
    let (mut total, mut kept) = (0i64, 0i64);
    for (name, m) in masks {
        let t = m.numel() as i64;
        let k = m.ne(0.0).sum(Kind::Int64).int64_value(&[]);
        total += t;
        kept += k;
        rows.push(LayerSparsity {
            name: name.clone(),
            total: t,
            kept: k,
            sparsity: 1.0 - k as f64 / t.max(1) as f64,
        });
    }
    (rows, 1.0 - kept as f64 / total.max(1) as f64)
}

/// Fraction of exactly-zero entries of the masked parameters of `model` (what the masks promise).
pub fn weight_sparsity(model: &Model, masks: &Masks) -> f64 {
    let params: BTreeMap<String, Tensor> = model.parameters().into_iter().collect();
    let (mut total, mut zeros) = (0i64, 0i64);
    for name in masks.keys() {
        if let Some(p) = params.get(name) {
            total += p.numel() as i64;
            zeros += p.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        }
    }
    zeros as f64 / total.max(1) as f64
}

/// Writes masks as safetensors (atomically).
pub fn save_masks(path: &Path, masks: &Masks) -> Result<()> {
    let named: Vec<(&str, Tensor)> = masks
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.to_kind(Kind::Uint8).to_device(tch::Device::Cpu),
            )
        })
        .collect();
    rustworthy_core::fsutil::atomic_write_with(path, |tmp| {
        Tensor::write_safetensors(&named, tmp)?;
        Ok(())
    })
}

/// Reads masks written by [`save_masks`] onto `device`; entries must be 0 or 1.
pub fn load_masks(path: &Path, device: tch::Device) -> Result<Masks> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "no such mask file"));
    }
    let named = Tensor::read_safetensors(path)
        .map_err(|e| Error::corrupt(path, format!("not a safetensors mask file: {e}")))?;
    let mut out = Masks::new();
    for (k, v) in named {
        let bad = v.ne(0).logical_and(&v.ne(1)).any().int64_value(&[]);
        if bad != 0 {
            return Err(Error::corrupt(
                path,
                format!("mask `{k}` has entries other than 0 and 1"),
            ));
        }
        out.insert(k, v.to_kind(Kind::Float).to_device(device));
    }
    Ok(out)
}
