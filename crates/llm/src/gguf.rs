//! GGUF v3 files: header, metadata, tensor index and tensor data.
//!
//! Layout (little-endian): magic `GGUF`, version (3), tensor count (u64), metadata count (u64);
//! the metadata as key (u64 length + UTF-8) / type (u32) / value; one index entry per tensor
//! (name, dimension count, dimensions fastest-first, ggml type, offset into the data section);
//! then the data section, starting at the next multiple of `general.alignment` (default 32).
//!
//! Nothing is allocated on a header's word before it is checked against the bytes left in the
//! file: every string and array length, every count, and every tensor's extent. Dimensions are
//! reported in PyTorch order (slowest first, the reverse of the file's). Dequantized types:
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1; other ggml types are refused by name.
//!
//! llama.cpp's converter stores the rows of `attn_q` and `attn_k` permuted for its RoPE layout;
//! [`unpermute_qk`] restores Hugging Face's rotate-half order.

use rustworthy_core::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const MAGIC: &[u8; 4] = b"GGUF";
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<Value>),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader dequantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32: an f16 scale and 32 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 32 4-bit values.
    Q4_1,
}

impl GgmlType {
    fn from_code(code: u32) -> std::result::Result<GgmlType, String> {
        Ok(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            other => {
                let name = match other {
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    12 => "Q4_K",
                    13 => "Q5_K",
                    14 => "Q6_K",
                    15 => "Q8_K",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    _ => "an unknown type",
                };
                return Err(format!(
                    "ggml type {other} ({name}) is not supported; F32, F16, BF16, Q8_0, Q4_0 and \
                     Q4_1 are"
                ));
            }
        })
    }

    /// Elements per block and bytes per block.
    fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
        }
    }
}

/// One entry of the tensor index.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its shape in PyTorch order (slowest dimension first).
    pub shape: Vec<i64>,
    /// Its storage type.
    pub ggml_type: GgmlType,
    /// Its offset from the start of the data section.
    pub offset: u64,
    /// Its size in bytes.
    pub nbytes: u64,
}

/// A GGUF file, read and validated; tensors are dequantized on request.
pub struct Gguf {
    path: PathBuf,
    bytes: Vec<u8>,
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor index, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.left() as u64 {
            return Err(format!(
                "{what} at byte {} needs {n} bytes but {} remain (truncated or corrupt)",
                self.at,
                self.left()
            ));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        let at = self.at;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} at byte {at} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> std::result::Result<Value, String> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => Value::U8(self.take(1, &what)?[0]),
            1 => Value::I8(self.take(1, &what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, &what)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2, &what)?.try_into().unwrap())),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(self.u32(&what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&what)?)),
            7 => match self.take(1, &what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte {b}")),
            },
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth > 0 {
                    return Err(format!("{what}: nested arrays are not supported"));
                }
                let et = self.u32(&what)?;
                let n = self.u64(&what)?;
                // Every element takes at least one byte (strings: eight), so the count is
                // bounded by what is left before anything is allocated.
                let least = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(format!("{what}: unknown array element type {et}")),
                };
                if n.checked_mul(least).is_none_or(|b| b > self.left() as u64) {
                    return Err(format!(
                        "{what}: an array of {n} elements cannot fit in the {} bytes left",
                        self.left()
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1, key)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }
}

impl Gguf {
    /// Reads and validates `path`. Errors name the file and what is wrong.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Gguf::from_bytes(path, bytes)
    }

    /// [`Gguf::open`] for bytes in memory; `path` names them in errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Gguf> {
        let path = path.as_ref();
        let (version, metadata, tensors, data_start) =
            parse(&bytes).map_err(|m| Error::corrupt(path, format!("GGUF: {m}")))?;
        Ok(Gguf {
            path: path.to_path_buf(),
            bytes,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The index entry of tensor `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor `name` dequantized to float32, in PyTorch order.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self
            .info(name)
            .ok_or_else(|| Error::corrupt(&self.path, format!("GGUF: no tensor named `{name}`")))?;
        let start = (self.data_start + t.offset) as usize;
        let raw = &self.bytes[start..start + t.nbytes as usize];
        let values = dequantize(t.ggml_type, raw);
        Ok(Tensor::from_slice(&values).f_reshape(&t.shape)?)
    }
}

/// What [`parse`] reads: version, metadata, tensor index and the data section's start.
type Parsed = (u32, Vec<(String, Value)>, Vec<TensorInfo>, u64);

fn parse(b: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { b, at: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (no `GGUF` magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} is not supported (2 and 3 are)"));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // A key-value pair takes at least 13 bytes, a tensor entry at least 24.
    if n_kv > c.left() as u64 / 13 || n_tensors > c.left() as u64 / 24 {
        return Err(format!(
            "{n_kv} metadata entries and {n_tensors} tensors cannot fit in a {}-byte file",
            b.len()
        ));
    }
    let mut metadata = Vec::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32("metadata type")?;
        let v = c.value(ty, 0, &key)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => 32,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let nd = c.u32("dimension count")?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {nd} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.u64("dimension")?);
        }
        let ty = GgmlType::from_code(c.u32("tensor type")?)
            .map_err(|m| format!("tensor `{name}`: {m}"))?;
        let offset = c.u64("tensor offset")?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n <= i64::MAX as u64)
            .ok_or_else(|| format!("tensor `{name}` has dimensions {dims:?}"))?;
        let (per, size) = ty.block();
        if dims[0] % per != 0 {
            return Err(format!(
                "tensor `{name}`: its rows of {} are not whole {ty:?} blocks of {per}",
                dims[0]
            ));
        }
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not aligned to {alignment}"
            ));
        }
        let nbytes = (numel / per)
            .checked_mul(size)
            .ok_or_else(|| format!("tensor `{name}` has dimensions {dims:?}"))?;
        let shape = dims.iter().rev().map(|&d| d as i64).collect();
        tensors.push(TensorInfo {
            name,
            shape,
            ggml_type: ty,
            offset,
            nbytes,
        });
    }
    let data_start = (c.at as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.nbytes));
        if end.is_none_or(|e| e > b.len() as u64) {
            return Err(format!(
                "tensor `{}` ({} bytes at offset {}) reaches past the end of the {}-byte file",
                t.name,
                t.nbytes,
                t.offset,
                b.len()
            ));
        }
    }
    Ok((version, metadata, tensors, data_start))
}

fn f16(lo: u8, hi: u8) -> f32 {
    half_to_f32(u16::from_le_bytes([lo, hi]))
}

/// IEEE half precision to single precision, exactly.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: normalize.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Dequantizes `raw` (whole blocks of `ty`) to float32, as ggml does.
fn dequantize(ty: GgmlType, raw: &[u8]) -> Vec<f32> {
    match ty {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        GgmlType::F16 => raw.chunks_exact(2).map(|c| f16(c[0], c[1])).collect(),
        GgmlType::Bf16 => raw
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        GgmlType::Q8_0 => raw
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = f16(blk[0], blk[1]);
                blk[2..].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let size = if ty == GgmlType::Q4_0 { 18 } else { 20 };
            let mut out = Vec::with_capacity(raw.len() / size * 32);
            for blk in raw.chunks_exact(size) {
                let d = f16(blk[0], blk[1]);
                let (m, qs) = if ty == GgmlType::Q4_0 {
                    (None, &blk[2..])
                } else {
                    (Some(f16(blk[2], blk[3])), &blk[4..])
                };
                let val = |q: u8| match m {
                    None => (q as i32 - 8) as f32 * d,
                    Some(m) => q as f32 * d + m,
                };
                // Low nibbles are elements 0..16, high nibbles 16..32.
                out.extend(qs.iter().map(|&q| val(q & 0x0f)));
                out.extend(qs.iter().map(|&q| val(q >> 4)));
            }
            out
        }
    }
}

/// Undoes llama.cpp's permutation of the rows of `attn_q`/`attn_k` weights (`[heads * d, in]`,
/// PyTorch order): the converter interleaved each head's two rotary halves; Hugging Face's
/// rotate-half layout keeps them as two blocks. `heads` is the head count of the tensor
/// (`head_count` for q, `head_count_kv` for k).
pub fn unpermute_qk(w: &Tensor, heads: i64) -> Result<Tensor> {
    let size = w.size();
    let rows = size[0];
    if heads <= 0 || rows % (2 * heads) != 0 {
        return Err(Error::invalid(format!(
            "cannot split {rows} rows into {heads} heads of two rotary halves"
        )));
    }
    let mut view = vec![heads, rows / heads / 2, 2];
    view.extend_from_slice(&size[1..]);
    Ok(w.reshape(&view).transpose(1, 2).reshape(&size))
}

/// Writes a GGUF v3 file of `metadata` and float32 `tensors` (PyTorch order): for tests and
/// fuzz seeds.
pub fn write_f32(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[(&str, &Tensor)],
) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn type_code(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(x) => put_str(out, x),
            Value::Array(items) => {
                let et = items.first().map(type_code).unwrap_or(4);
                out.extend_from_slice(&et.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    put_value(out, it);
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend_from_slice(&type_code(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut datas = Vec::new();
    for (name, t) in tensors {
        put_str(&mut out, name);
        let shape = t.size();
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
        let mut d: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        while !d.len().is_multiple_of(32) {
            d.push(0);
        }
        offset += d.len() as u64;
        datas.push(d);
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for d in datas {
        out.extend_from_slice(&d);
    }
    rustworthy_core::fsutil::atomic_write(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        // Exact for the values used here (small integers and halves).
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        if x == 0.0 {
            return sign.to_le_bytes();
        }
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let man = ((bits >> 13) & 0x3ff) as u16;
        (sign | ((exp as u16) << 10) | man).to_le_bytes()
    }

    #[test]
    fn halves_convert_exactly() {
        for x in [0.0f32, 1.0, -2.5, 0.5, 65504.0, 6.103_515_6e-5] {
            let b = h(x);
            assert_eq!(f16(b[0], b[1]), x);
        }
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8); // smallest subnormal
        assert!(half_to_f32(0x7e00).is_nan());
        assert_eq!(half_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn blocks_dequantize_as_ggml_does() {
        // Q8_0: scale 0.5, values -16..16.
        let mut q8 = h(0.5).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
        assert_eq!(dequantize(GgmlType::Q8_0, &q8), want);
        // Q4_0: scale 2; byte j holds element j (low nibble) and j + 16 (high nibble).
        let mut q4 = h(2.0).to_vec();
        q4.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut want: Vec<f32> = (0..16).map(|j| (j - 8) as f32 * 2.0).collect();
        want.extend((0..16).map(|j| (15 - j - 8) as f32 * 2.0));
        assert_eq!(dequantize(GgmlType::Q4_0, &q4), want);
        // Q4_1: scale 0.5, minimum -1.
        let mut q41 = h(0.5).to_vec();
        q41.extend(h(-1.0));
        q41.extend((0..16u8).map(|j| j | (j << 4)));
        let lows: Vec<f32> = (0..16).map(|j| j as f32 * 0.5 - 1.0).collect();
        let want: Vec<f32> = lows.iter().chain(lows.iter()).copied().collect();
        assert_eq!(dequantize(GgmlType::Q4_1, &q41), want);
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        // The converter: reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(rows, in).
        let (heads, d, inp) = (3i64, 8i64, 5i64);
        let w = Tensor::arange(heads * d * inp, (Kind::Float, tch::Device::Cpu))
            .reshape([heads * d, inp]);
        let permuted = w
            .reshape([heads, 2, d / 2, inp])
            .transpose(1, 2)
            .reshape([heads * d, inp]);
        assert!(unpermute_qk(&permuted, heads).unwrap().equal(&w));
        assert!(unpermute_qk(&w, 5).is_err());
    }
}
