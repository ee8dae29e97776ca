//! Datasets from tensor files: a `.safetensors` or `.npz` file holding images `x` and labels
//! `y`.
//!
//! - `x`: `[N, C, H, W]`, or `[N, H, W]` for one-channel images; `uint8` (0-255, scaled by
//!   1/255) or `float32`/`float64` already in `[0, 1]` (finite).
//! - `y`: `[N]`, any integer type (stored as `int64`), each in `0..num_classes`.
//! - Class names (optional): in an `.npz`, a string array `classes`; in a `.safetensors` file,
//!   the header metadata field `classes` holding a JSON list of strings; for either, a sidecar
//!   file next to it with the extension replaced by `classes.json` (`train.npz` ->
//!   `train.classes.json`) holding a JSON list of strings.
//!
//! The number of classes is the one given, else the number of class names, else the largest
//! label plus one. Every error names the file and, where it applies, the array and the first
//! offending index.

use crate::dataset::Dataset;
use crate::npy::{read_npz, DType, NdArray};
use rustworthy_core::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Name of the image array.
pub const IMAGES_KEY: &str = "x";
/// Name of the label array.
pub const LABELS_KEY: &str = "y";
/// Name of the optional class-name entry (`.npz` string array, `.safetensors` metadata field).
pub const CLASSES_KEY: &str = "classes";

/// Largest class count accepted, given or inferred from the labels (a larger one is taken as a
/// corrupt label rather than allocated for).
pub const MAX_CLASSES: usize = 1 << 20;

/// Container format of a tensor file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorFormat {
    /// A safetensors file.
    Safetensors,
    /// A NumPy `.npz` archive.
    Npz,
}

/// The format of the file at `path`: from its extension (`.safetensors`, `.npz`, any case),
/// else from its first bytes (a zip signature means `.npz`, a safetensors header otherwise).
pub fn detect_format(path: &Path) -> Result<TensorFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("safetensors") => return Ok(TensorFormat::Safetensors),
        Some("npz") => return Ok(TensorFormat::Npz),
        _ => {}
    }
    let mut head = [0u8; 9];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        got
    };
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        Ok(TensorFormat::Npz)
    } else if n == 9 && head[8] == b'{' {
        Ok(TensorFormat::Safetensors)
    } else {
        Err(Error::corrupt(
            path,
            "unknown tensor file format: expected a .safetensors file or an .npz archive",
        ))
    }
}

/// The sidecar file that may hold class names for `path` (`train.npz` -> `train.classes.json`).
pub fn classes_sidecar(path: &Path) -> PathBuf {
    path.with_extension("classes.json")
}

/// The raw arrays of a tensor file, before validation.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorFileContents {
    /// The file read.
    pub path: PathBuf,
    /// The image array `x`.
    pub x: NdArray,
    /// The label array `y`.
    pub y: NdArray,
    /// Class names stored in the file or its sidecar, if any.
    pub class_names: Option<Vec<String>>,
}

fn missing_key(path: &Path, key: &str, present: &[String]) -> Error {
    let present = if present.is_empty() {
        "none".to_string()
    } else {
        present.join(", ")
    };
    let what = if key == IMAGES_KEY {
        "images"
    } else {
        "labels"
    };
    Error::corrupt(
        path,
        format!("no array `{key}` ({what}); the file holds: {present}"),
    )
}

fn st_dtype(d: safetensors::Dtype) -> std::result::Result<DType, String> {
    use safetensors::Dtype as S;
    Ok(match d {
        S::BOOL => DType::Bool,
        S::U8 => DType::U8,
        S::I8 => DType::I8,
        S::U16 => DType::U16,
        S::I16 => DType::I16,
        S::U32 => DType::U32,
        S::I32 => DType::I32,
        S::U64 => DType::U64,
        S::I64 => DType::I64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

fn st_error(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => format!(
            "not a readable safetensors file (truncated or corrupt: the header and data sizes do not match the file length) [{e:?}]"
        ),
        other => format!("not a readable safetensors file (corrupt?): {other:?}"),
    }
}

fn parse_class_list(text: &str) -> std::result::Result<Vec<String>, String> {
    let v: Vec<String> = serde_json::from_str(text)
        .map_err(|e| format!("class names must be a JSON list of strings: {e}"))?;
    Ok(v)
}

fn read_safetensors_contents(path: &Path) -> Result<(NdArray, NdArray, Option<Vec<String>>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::corrupt(path, st_error(e)))?;
    let classes =
        match meta.metadata().as_ref().and_then(|m| m.get(CLASSES_KEY)) {
            Some(text) => Some(parse_class_list(text).map_err(|m| {
                Error::corrupt(path, format!("metadata field `{CLASSES_KEY}`: {m}"))
            })?),
            None => None,
        };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::corrupt(path, st_error(e)))?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let take = |key: &str| -> Result<NdArray> {
        let view = st.tensor(key).map_err(|_| missing_key(path, key, &names))?;
        let dtype = st_dtype(view.dtype())
            .map_err(|m| Error::corrupt(path, format!("array `{key}`: {m}")))?;
        Ok(NdArray {
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
    };
    Ok((take(IMAGES_KEY)?, take(LABELS_KEY)?, classes))
}

fn read_npz_contents(path: &Path) -> Result<(NdArray, NdArray, Option<Vec<String>>)> {
    let mut c = read_npz(path, Some(&[IMAGES_KEY, LABELS_KEY, CLASSES_KEY]))?;
    let x = c
        .arrays
        .remove(IMAGES_KEY)
        .ok_or_else(|| missing_key(path, IMAGES_KEY, &c.names))?;
    let y = c
        .arrays
        .remove(LABELS_KEY)
        .ok_or_else(|| missing_key(path, LABELS_KEY, &c.names))?;
    let classes = match c.arrays.remove(CLASSES_KEY) {
        Some(a) => {
            if a.shape.len() != 1 {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "array `{CLASSES_KEY}` must be a 1-D array of strings, got shape {:?}",
                        a.shape
                    ),
                ));
            }
            Some(a.to_strings().map_err(|m| {
                Error::corrupt(
                    path,
                    format!("array `{CLASSES_KEY}` must hold strings: {m}"),
                )
            })?)
        }
        None => None,
    };
    Ok((x, y, classes))
}

/// Reads the arrays `x` and `y` (and class names, from the file or its sidecar) of a
/// `.safetensors` or `.npz` file, without validating their content.
pub fn read_tensor_file(path: &Path) -> Result<TensorFileContents> {
    if !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let (x, y, in_file) = match detect_format(path)? {
        TensorFormat::Safetensors => read_safetensors_contents(path)?,
        TensorFormat::Npz => read_npz_contents(path)?,
    };
    let sidecar = classes_sidecar(path);
    let from_sidecar = if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar).map_err(|e| Error::io(&sidecar, e))?;
        Some(parse_class_list(&text).map_err(|m| Error::corrupt(&sidecar, m))?)
    } else {
        None
    };
    let class_names = match (in_file, from_sidecar) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::corrupt(
                &sidecar,
                format!(
                    "class names {b:?} differ from the names {a:?} stored in {}",
                    path.display()
                ),
            ))
        }
        (a, b) => a.or(b),
    };
    Ok(TensorFileContents {
        path: path.to_path_buf(),
        x,
        y,
        class_names,
    })
}

/// Row-major multi-index of flat index `i` in `shape`, formatted as `[a, b, c]`.
pub fn multi_index(mut i: usize, shape: &[usize]) -> String {
    let mut idx = vec![0usize; shape.len()];
    for k in (0..shape.len()).rev() {
        if shape[k] > 0 {
            idx[k] = i % shape[k];
            i /= shape[k];
        }
    }
    format!(
        "[{}]",
        idx.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn bad_float(path: &Path, key: &str, i: usize, shape: &[usize], v: f64) -> Option<Error> {
    let at = multi_index(i, shape);
    if v.is_nan() {
        Some(Error::corrupt(
            path,
            format!("`{key}{at}` is NaN; float images must be finite and in [0, 1]"),
        ))
    } else if v.is_infinite() {
        Some(Error::corrupt(
            path,
            format!("`{key}{at}` is {v}; float images must be finite and in [0, 1]"),
        ))
    } else if !(0.0..=1.0).contains(&v) {
        Some(Error::corrupt(
            path,
            format!(
                "`{key}{at}` = {v} is outside [0, 1]; float images must lie in [0, 1] \
                 (store 0-255 pixels as uint8, or divide them by 255)"
            ),
        ))
    } else {
        None
    }
}

/// Checks an image array and converts it to a `[N, C, H, W]` `f32` tensor in `[0, 1]`.
///
/// Accepts rank 4 (`[N, C, H, W]`) or rank 3 (`[N, H, W]`, one channel), `uint8` (scaled by
/// 1/255) or finite `float32`/`float64` values in `[0, 1]`. Errors name `path`, the array `key`
/// and, for a bad value, its index.
pub fn images_from_array(path: &Path, key: &str, a: &NdArray) -> Result<Tensor> {
    let s = &a.shape;
    let (n, c, h, w) = match s.len() {
        4 => (s[0], s[1], s[2], s[3]),
        3 => (s[0], 1, s[1], s[2]),
        r => {
            return Err(Error::corrupt(
                path,
                format!(
                    "`{key}` has shape {s:?} (rank {r}); images must be [N, C, H, W], or [N, H, W] for one channel"
                ),
            ))
        }
    };
    if n == 0 {
        return Err(Error::corrupt(
            path,
            format!("`{key}` has shape {s:?}: the dataset is empty (no image)"),
        ));
    }
    if c == 0 || h == 0 || w == 0 {
        return Err(Error::corrupt(
            path,
            format!("`{key}` has shape {s:?}: images must have at least one channel and pixel"),
        ));
    }
    if s.len() == 4 && matches!(w, 1 | 3 | 4) && !matches!(c, 1 | 3 | 4) {
        return Err(Error::corrupt(
            path,
            format!(
                "`{key}` has shape {s:?}, which looks like channels-last [N, H, W, C]; \
                 store images as [N, C, H, W] (numpy: x.transpose(0, 3, 1, 2))"
            ),
        ));
    }
    let dims = [n as i64, c as i64, h as i64, w as i64];
    let x = match a.dtype {
        DType::U8 => Tensor::f_from_data_size(&a.data, &dims, Kind::Uint8)?.to_kind(Kind::Float) / 255.0,
        DType::F32 => {
            for (i, b) in a.data.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes(b.try_into().expect("chunk size"));
                if !(0.0..=1.0).contains(&v) {
                    if let Some(e) = bad_float(path, key, i, s, v as f64) {
                        return Err(e);
                    }
                }
            }
            Tensor::f_from_data_size(&a.data, &dims, Kind::Float)?
        }
        DType::F64 => {
            let mut v = Vec::with_capacity(a.numel());
            for (i, b) in a.data.chunks_exact(8).enumerate() {
                let f = f64::from_le_bytes(b.try_into().expect("chunk size"));
                if !(0.0..=1.0).contains(&f) {
                    if let Some(e) = bad_float(path, key, i, s, f) {
                        return Err(e);
                    }
                }
                v.push(f as f32);
            }
            Tensor::f_from_slice(&v)?.f_view(dims)?
        }
        other => {
            return Err(Error::corrupt(
                path,
                format!(
                    "`{key}` has dtype {other}; images must be uint8 (0-255) or float32/float64 in [0, 1]"
                ),
            ))
        }
    };
    Ok(x)
}

/// Checks a label array (rank 1, an integer type, no negative value) and returns its values.
pub fn labels_from_array(path: &Path, key: &str, a: &NdArray) -> Result<Vec<i64>> {
    if a.shape.len() != 1 {
        return Err(Error::corrupt(
            path,
            format!(
                "`{key}` has shape {:?} (rank {}); labels must be a 1-D array [N]",
                a.shape,
                a.shape.len()
            ),
        ));
    }
    if !a.dtype.is_integer() {
        return Err(Error::corrupt(
            path,
            format!(
                "`{key}` has dtype {}; labels must be integers (numpy: y.astype('int64'))",
                a.dtype
            ),
        ));
    }
    let v = a
        .to_i64()
        .map_err(|m| Error::corrupt(path, format!("`{key}`: {m}")))?;
    if let Some((i, l)) = v.iter().enumerate().find(|(_, &l)| l < 0) {
        return Err(Error::corrupt(
            path,
            format!("`{key}[{i}]` = {l} is negative; labels must be in 0..num_classes"),
        ));
    }
    Ok(v)
}

/// Builds a dataset from checked images and labels read from `path`: counts must match, every
/// label must be below the class count, which is `num_classes` when given, else the number of
/// `class_names` when given, else the largest label plus one.
pub fn dataset_from_parts(
    path: &Path,
    name: &str,
    images: Tensor,
    labels: &[i64],
    num_classes: Option<usize>,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let n = images.size()[0] as usize;
    if labels.len() != n {
        return Err(Error::corrupt(
            path,
            format!(
                "`{IMAGES_KEY}` holds {n} images but `{LABELS_KEY}` holds {} labels",
                labels.len()
            ),
        ));
    }
    if n == 0 {
        return Err(Error::corrupt(path, "the dataset is empty (no example)"));
    }
    if let (Some(k), Some(names)) = (num_classes, &class_names) {
        if names.len() != k {
            return Err(Error::corrupt(
                path,
                format!(
                    "{} class names ({names:?}) for num_classes = {k}",
                    names.len()
                ),
            ));
        }
    }
    if num_classes == Some(0) {
        return Err(Error::config("num_classes", "must be >= 1, got 0"));
    }
    let given = num_classes.or(class_names.as_ref().map(|c| c.len()));
    if let Some(k) = given.filter(|&k| k > MAX_CLASSES) {
        return Err(Error::corrupt(
            path,
            format!("{k} classes are more than the {MAX_CLASSES} supported"),
        ));
    }
    let (imax, max) = labels
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(i, l)| (l, std::cmp::Reverse(i)))
        .unwrap_or((0, 0));
    if given.is_none() && max >= MAX_CLASSES as i64 {
        return Err(Error::corrupt(
            path,
            format!(
                "`{LABELS_KEY}[{imax}]` = {max} would mean more than the {MAX_CLASSES} classes supported (corrupt labels?)"
            ),
        ));
    }
    let k = match given {
        Some(k) => {
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= k as i64) {
                let source = if num_classes.is_some() {
                    format!("num_classes = {k}")
                } else {
                    format!("{k} class names")
                };
                return Err(Error::corrupt(
                    path,
                    format!(
                        "`{LABELS_KEY}[{i}]` = {l} is out of range for {source} (labels must be in 0..{k})"
                    ),
                ));
            }
            k
        }
        None => max as usize + 1,
    };
    let y = Tensor::f_from_slice(labels)?;
    Dataset::new(name, images, y, k, class_names.unwrap_or_default())
}

/// Loads a `.safetensors` or `.npz` file as a dataset named `name` (see the module docs for
/// the layout). Class names come from `class_names` when given, else from the file or its
/// sidecar; `num_classes` fixes the class count.
pub fn load_tensor_file(
    path: &Path,
    name: &str,
    num_classes: Option<usize>,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let c = read_tensor_file(path)?;
    let x = images_from_array(path, IMAGES_KEY, &c.x)?;
    let y = labels_from_array(path, LABELS_KEY, &c.y)?;
    let names = class_names.or(c.class_names);
    dataset_from_parts(path, name, x, &y, num_classes, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_index_formats() {
        assert_eq!(multi_index(0, &[2, 3]), "[0, 0]");
        assert_eq!(multi_index(5, &[2, 3]), "[1, 2]");
        assert_eq!(multi_index(7, &[2, 1, 2, 2]), "[1, 0, 1, 1]");
        assert_eq!(multi_index(3, &[4]), "[3]");
    }

    #[test]
    fn sidecar_name() {
        assert_eq!(
            classes_sidecar(Path::new("/d/train.npz")),
            PathBuf::from("/d/train.classes.json")
        );
        assert_eq!(
            classes_sidecar(Path::new("a.b.safetensors")),
            PathBuf::from("a.b.classes.json")
        );
    }

    #[test]
    fn labels_checks() {
        let p = Path::new("f.npz");
        let a = NdArray {
            dtype: DType::I16,
            shape: vec![3],
            data: [0i16, 2, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let e = labels_from_array(p, "y", &a).unwrap_err().to_string();
        assert!(
            e.contains("y[2]") && e.contains("negative") && e.contains("f.npz"),
            "{e}"
        );
        let f = NdArray {
            dtype: DType::F32,
            shape: vec![1],
            data: 1.0f32.to_le_bytes().to_vec(),
        };
        let e = labels_from_array(p, "y", &f).unwrap_err().to_string();
        assert!(e.contains("float32") && e.contains("integers"), "{e}");
    }
}
