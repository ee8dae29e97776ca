//! Weight files: safetensors with PyTorch state-dict names.

use crate::layers::{Role, Var};
use rustworthy_core::fsutil::atomic_write_with;
use rustworthy_core::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Suffix of the batch-norm counters PyTorch keeps in its state dicts.
pub(crate) const COUNTER_SUFFIX: &str = "num_batches_tracked";
/// How many names an error message lists before summarizing.
const SHOW: usize = 5;

/// Writes every variable (moved to the CPU, contiguous) atomically to `path`.
pub(crate) fn save(vars: &[Var], path: &Path) -> Result<()> {
    let tensors = tch::no_grad(|| -> Result<Vec<(String, Tensor)>> {
        vars.iter()
            .map(|v| {
                let t = v
                    .tensor
                    .f_detach()?
                    .f_to_device(Device::Cpu)?
                    .f_contiguous()?;
                Ok((v.name.clone(), t))
            })
            .collect()
    })?;
    atomic_write_with(path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp)
            .map_err(|e| Error::checkpoint(path, format!("cannot write weights: {e}")))
    })
}

/// The first few items joined by `sep`, with a count of the rest.
fn list(items: &[String], sep: &str) -> String {
    let mut s = items
        .iter()
        .take(SHOW)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > SHOW {
        let _ = write!(s, " (+{} more)", items.len() - SHOW);
    }
    s
}

fn quoted(names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("`{n}`")).collect()
}

/// Reads a safetensors file, mapping unreadable files to a checkpoint error.
pub(crate) fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::checkpoint(
            path,
            if path.exists() {
                "not a regular file"
            } else {
                "file not found"
            },
        ));
    }
    Tensor::read_safetensors(path).map_err(|e| {
        let why = match e {
            tch::TchError::SafeTensorError { err, .. } => format!("{err:?}"),
            other => other.to_string(),
        };
        Error::checkpoint(
            path,
            format!("not a readable safetensors file (truncated or corrupt?): {why}"),
        )
    })
}

/// Reads `path` and copies it into `vars`, after checking the file matches them exactly.
pub(crate) fn load(vars: &[Var], path: &Path) -> Result<()> {
    let file: HashMap<String, Tensor> = read_safetensors(path)?.into_iter().collect();
    load_map(vars, path, &file)
}

/// Copies the tensors of `file` (read from `path`) into `vars`, after checking they match
/// exactly: every parameter and float buffer present, float32, with the model's shape, and no
/// unknown keys (`num_batches_tracked` entries are optional). Nothing is changed on error.
pub(crate) fn load_map(vars: &[Var], path: &Path, file: &HashMap<String, Tensor>) -> Result<()> {
    let mut missing = Vec::new();
    let mut shape_errors = Vec::new();
    let mut dtype_errors = Vec::new();
    for v in vars.iter().filter(|v| v.role != Role::Counter) {
        match file.get(&v.name) {
            None => missing.push(v.name.clone()),
            Some(t) => {
                if t.size() != v.tensor.size() {
                    shape_errors.push(format!(
                        "`{}`: model has {:?}, file has {:?}",
                        v.name,
                        v.tensor.size(),
                        t.size()
                    ));
                } else if t.kind() != Kind::Float {
                    dtype_errors.push(format!("`{}` is {:?}", v.name, t.kind()));
                }
            }
        }
    }
    let known: HashSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    let mut unexpected: Vec<String> = file
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with(COUNTER_SUFFIX))
        .cloned()
        .collect();
    unexpected.sort();

    if !missing.is_empty() || !unexpected.is_empty() {
        let mut msg = String::from(
            "checkpoint/model mismatch: was this saved from a different architecture?",
        );
        if !missing.is_empty() {
            let _ = write!(
                msg,
                " {} model variable(s) missing from the file: {};",
                missing.len(),
                list(&quoted(&missing), ", ")
            );
        }
        if !unexpected.is_empty() {
            let _ = write!(
                msg,
                " {} unexpected key(s) in the file: {};",
                unexpected.len(),
                list(&quoted(&unexpected), ", ")
            );
        }
        if !shape_errors.is_empty() {
            let _ = write!(msg, " shape mismatch: {};", list(&shape_errors, "; "));
        }
        msg.pop();
        return Err(Error::checkpoint(path, msg));
    }
    if !shape_errors.is_empty() {
        return Err(Error::checkpoint(
            path,
            format!(
                "shape mismatch for {} variable(s): {} (saved for another input size, channel or class count?)",
                shape_errors.len(),
                list(&shape_errors, "; ")
            ),
        ));
    }
    if !dtype_errors.is_empty() {
        return Err(Error::checkpoint(
            path,
            format!(
                "weights must be float32, but {} (convert the file to float32)",
                list(&dtype_errors, ", ")
            ),
        ));
    }

    tch::no_grad(|| -> Result<()> {
        for v in vars {
            let Some(src) = file.get(&v.name) else {
                continue;
            };
            if v.role == Role::Counter
                && (src.kind() != Kind::Int64 || src.size() != v.tensor.size())
            {
                // Counters are informational; a differently typed one is skipped.
                continue;
            }
            v.tensor
                .shallow_clone()
                .f_copy_(src)
                .map_err(|e| Error::checkpoint(path, format!("cannot copy `{}`: {e}", v.name)))?;
        }
        Ok(())
    })
}
