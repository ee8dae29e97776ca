//! NumPy arrays: a validating reader for `.npy` data and `.npz` archives (zip files of `.npy`
//! entries, stored or deflated, as written by `numpy.savez` and `numpy.savez_compressed`).
//!
//! The `.npy` layout: the magic `\x93NUMPY`, a major and a minor version byte, the header
//! length (little-endian `u16` for version 1, `u32` for versions 2 and 3), then a Python dict
//! literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, then the
//! data. Supported element types: booleans, signed and unsigned integers of 1 to 8 bytes,
//! floats of 2, 4 and 8 bytes, fixed-width strings (`S`) and unicode strings (`U`), in either
//! byte order. Fortran-ordered arrays are reordered to row-major on reading. Object (pickled)
//! arrays are rejected.
//!
//! Nothing is allocated from a header alone: data buffers grow as bytes arrive, so a header
//! that declares more than the file holds costs nothing up front and ends in a "truncated"
//! error.

use rustworthy_core::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The magic bytes that open every `.npy` file.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest `.npy` header accepted (numpy writes a few hundred bytes at most).
pub const MAX_NPY_HEADER: usize = 1 << 20;

/// Largest array payload accepted (16 GiB); a bigger declared size is taken as a corrupt header.
pub const MAX_ARRAY_BYTES: u64 = 1 << 34;

/// Largest expansion ratio of deflate, used to bound how much a compressed entry can hold.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Element type of an array, independent of byte order (data is held little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// One-byte booleans.
    Bool,
    /// Unsigned 8-bit integers.
    U8,
    /// Signed 8-bit integers.
    I8,
    /// Unsigned 16-bit integers.
    U16,
    /// Signed 16-bit integers.
    I16,
    /// Unsigned 32-bit integers.
    U32,
    /// Signed 32-bit integers.
    I32,
    /// Unsigned 64-bit integers.
    U64,
    /// Signed 64-bit integers.
    I64,
    /// IEEE half-precision floats.
    F16,
    /// bfloat16 floats.
    BF16,
    /// IEEE single-precision floats.
    F32,
    /// IEEE double-precision floats.
    F64,
    /// Fixed-width byte strings of the given length (numpy `S<n>`).
    Bytes(usize),
    /// Fixed-width unicode strings of the given number of characters (numpy `U<n>`, UTF-32).
    Unicode(usize),
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes(n) => n,
            DType::Unicode(n) => 4 * n,
        }
    }

    /// Bytes swapped to change the byte order of one element (the size of one scalar unit).
    fn swap_unit(self) -> usize {
        match self {
            DType::Bytes(_) => 1,
            DType::Unicode(_) => 4,
            d => d.size(),
        }
    }

    /// Whether the type is an integer type (booleans excluded).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::U8
                | DType::I8
                | DType::U16
                | DType::I16
                | DType::U32
                | DType::I32
                | DType::U64
                | DType::I64
        )
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DType::Bool => write!(f, "bool"),
            DType::U8 => write!(f, "uint8"),
            DType::I8 => write!(f, "int8"),
            DType::U16 => write!(f, "uint16"),
            DType::I16 => write!(f, "int16"),
            DType::U32 => write!(f, "uint32"),
            DType::I32 => write!(f, "int32"),
            DType::U64 => write!(f, "uint64"),
            DType::I64 => write!(f, "int64"),
            DType::F16 => write!(f, "float16"),
            DType::BF16 => write!(f, "bfloat16"),
            DType::F32 => write!(f, "float32"),
            DType::F64 => write!(f, "float64"),
            DType::Bytes(n) => write!(f, "bytes{n}"),
            DType::Unicode(n) => write!(f, "str{n}"),
        }
    }
}

/// A dense array read from a file: row-major (C order), little-endian element data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NdArray {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.size()` bytes, row-major, little-endian.
    pub data: Vec<u8>,
}

impl NdArray {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements of an integer array as `i64`, or a message saying why not (not an integer
    /// type, or an unsigned value above `i64::MAX`, with its flat index).
    pub fn to_i64(&self) -> std::result::Result<Vec<i64>, String> {
        let d = &self.data;
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                d.chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")) as i64)
                    .collect()
            };
        }
        Ok(match self.dtype {
            DType::U8 => d.iter().map(|&v| v as i64).collect(),
            DType::I8 => d.iter().map(|&v| v as i8 as i64).collect(),
            DType::U16 => conv!(u16, 2),
            DType::I16 => conv!(i16, 2),
            DType::U32 => conv!(u32, 4),
            DType::I32 => conv!(i32, 4),
            DType::I64 => conv!(i64, 8),
            DType::U64 => {
                let mut out = Vec::with_capacity(self.numel());
                for (i, c) in d.chunks_exact(8).enumerate() {
                    let v = u64::from_le_bytes(c.try_into().expect("chunk size"));
                    let v = i64::try_from(v)
                        .map_err(|_| format!("value {v} at index {i} does not fit in int64"))?;
                    out.push(v);
                }
                out
            }
            other => return Err(format!("{other} is not an integer type")),
        })
    }

    /// The elements of a string array (`S` or `U`), trailing NULs removed, or a message saying
    /// why not (another type, or invalid text with its flat index).
    pub fn to_strings(&self) -> std::result::Result<Vec<String>, String> {
        match self.dtype {
            DType::Bytes(0) | DType::Unicode(0) => Ok(vec![String::new(); self.numel()]),
            DType::Bytes(n) => self
                .data
                .chunks_exact(n)
                .enumerate()
                .map(|(i, c)| {
                    let end = c.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    String::from_utf8(c[..end].to_vec())
                        .map_err(|_| format!("string at index {i} is not valid UTF-8"))
                })
                .collect(),
            DType::Unicode(n) => self
                .data
                .chunks_exact(4 * n)
                .enumerate()
                .map(|(i, c)| {
                    let mut s = String::new();
                    for w in c.chunks_exact(4) {
                        let cp = u32::from_le_bytes(w.try_into().expect("chunk size"));
                        if cp == 0 {
                            break;
                        }
                        s.push(char::from_u32(cp).ok_or_else(|| {
                            format!("string at index {i} holds invalid code point {cp:#x}")
                        })?);
                    }
                    Ok(s)
                })
                .collect(),
            other => Err(format!("{other} is not a string type")),
        }
    }
}

/// Parses a numpy type string such as `<f4`, `|u1`, `>i8` or `<U5`; returns the element type
/// and whether the data is big-endian.
pub fn parse_descr(descr: &str) -> std::result::Result<(DType, bool), String> {
    let mut chars = descr.chars();
    let (order, rest) = match chars.next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, chars.as_str()),
        _ => ('=', descr),
    };
    let big = order == '>';
    let Some(kind) = rest.chars().next() else {
        return Err(format!("empty dtype `{descr}`"));
    };
    let digits = &rest[kind.len_utf8()..];
    if kind == 'O' {
        return Err(format!(
            "dtype `{descr}` is an object (pickled) array, which is not supported; \
             save numbers as a numeric dtype and strings as a fixed-width str dtype"
        ));
    }
    let size: usize = digits
        .parse()
        .map_err(|_| format!("unsupported dtype `{descr}`"))?;
    let dtype = match (kind, size) {
        ('b', 1) => DType::Bool,
        ('u', 1) => DType::U8,
        ('i', 1) => DType::I8,
        ('u', 2) => DType::U16,
        ('i', 2) => DType::I16,
        ('u', 4) => DType::U32,
        ('i', 4) => DType::I32,
        ('u', 8) => DType::U64,
        ('i', 8) => DType::I64,
        ('f', 2) => DType::F16,
        ('f', 4) => DType::F32,
        ('f', 8) => DType::F64,
        ('S' | 'a', n) => DType::Bytes(n),
        ('U', n) => DType::Unicode(n),
        _ => return Err(format!("unsupported dtype `{descr}`")),
    };
    Ok((dtype, big))
}

/// A value of the Python literal that forms a `.npy` header.
#[derive(Debug, PartialEq)]
enum PyVal {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<PyVal>),
    None,
}

struct Lit<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lit<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected `{}` at byte {} of the header",
                c as char, self.pos
            ))
        }
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
        {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("")
    }

    fn value(&mut self, depth: usize) -> std::result::Result<PyVal, String> {
        if depth > 8 {
            return Err("header nests too deeply".into());
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos] != q {
                    if self.s[self.pos] == b'\\' {
                        return Err("escaped characters in header strings are not supported".into());
                    }
                    self.pos += 1;
                }
                if self.pos >= self.s.len() {
                    return Err("unterminated string in header".into());
                }
                let s = std::str::from_utf8(&self.s[start..self.pos])
                    .map_err(|_| "header string is not UTF-8".to_string())?
                    .to_string();
                self.pos += 1;
                Ok(PyVal::Str(s))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected `,` or `{}` at byte {} of the header",
                                close as char, self.pos
                            ))
                        }
                    }
                }
                Ok(PyVal::Tuple(items))
            }
            Some(c) if c.is_ascii_digit() => {
                let w = self.word();
                let w = w.strip_suffix('L').unwrap_or(w);
                w.parse()
                    .map(PyVal::Int)
                    .map_err(|_| format!("bad integer `{w}` in header"))
            }
            Some(c) if c.is_ascii_alphabetic() => match self.word() {
                "True" => Ok(PyVal::Bool(true)),
                "False" => Ok(PyVal::Bool(false)),
                "None" => Ok(PyVal::None),
                w => Err(format!("unexpected `{w}` in header")),
            },
            Some(b'{') => Err("nested dicts (structured dtypes) are not supported".into()),
            Some(c) => Err(format!(
                "unexpected `{}` at byte {} of the header",
                c as char, self.pos
            )),
            None => Err("header ends early".into()),
        }
    }

    fn dict(&mut self) -> std::result::Result<Vec<(String, PyVal)>, String> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = match self.value(0)? {
                PyVal::Str(k) => k,
                other => return Err(format!("header key {other:?} is not a string")),
            };
            self.expect(b':')?;
            let v = self.value(0)?;
            out.push((key, v));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    return Err(format!(
                        "expected `,` or `}}` at byte {} of the header",
                        self.pos
                    ))
                }
            }
        }
        self.ws();
        if self.pos != self.s.len() {
            return Err(format!(
                "unexpected bytes after the header dict at byte {}",
                self.pos
            ));
        }
        Ok(out)
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: DType,
    /// Whether elements are stored big-endian.
    pub big_endian: bool,
    /// Whether the data is in column-major (Fortran) order.
    pub fortran_order: bool,
    /// Dimensions.
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// Number of data bytes the header declares, or a message when that overflows or exceeds
    /// [`MAX_ARRAY_BYTES`].
    pub fn data_bytes(&self) -> std::result::Result<u64, String> {
        let mut total = self.dtype.size() as u64;
        for &d in &self.shape {
            total = total
                .checked_mul(d as u64)
                .ok_or_else(|| format!("shape {:?} overflows the size count", self.shape))?;
        }
        if total > MAX_ARRAY_BYTES {
            return Err(format!(
                "header declares shape {:?} of {} = {total} bytes, more than the {MAX_ARRAY_BYTES} allowed (corrupt header?)",
                self.shape, self.dtype
            ));
        }
        Ok(total)
    }
}

/// Parses the dict literal of a `.npy` header.
pub fn parse_npy_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut lit = Lit {
        s: text.as_bytes(),
        pos: 0,
    };
    let entries = lit.dict()?;
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let (dtype, big_endian) = match get("descr") {
        Some(PyVal::Str(d)) => parse_descr(d)?,
        Some(PyVal::Tuple(_)) => {
            return Err("structured dtypes (a list descr) are not supported".into())
        }
        Some(other) => return Err(format!("`descr` must be a string, got {other:?}")),
        None => return Err("header has no `descr`".into()),
    };
    let fortran_order = match get("fortran_order") {
        Some(PyVal::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "`fortran_order` must be True or False, got {other:?}"
            ))
        }
        None => return Err("header has no `fortran_order`".into()),
    };
    let shape = match get("shape") {
        Some(PyVal::Tuple(items)) => items
            .iter()
            .map(|v| match v {
                PyVal::Int(n) => {
                    usize::try_from(*n).map_err(|_| format!("dimension {n} is too large"))
                }
                other => Err(format!("shape entries must be integers, got {other:?}")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("`shape` must be a tuple, got {other:?}")),
        None => return Err("header has no `shape`".into()),
    };
    if shape.len() > 32 {
        return Err(format!("{} dimensions are too many", shape.len()));
    }
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

/// Reads into `buf` until it is full or the stream ends; returns the number of bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads the magic, version and header of a `.npy` stream.
fn read_npy_header(r: &mut impl Read) -> std::result::Result<NpyHeader, String> {
    let io = |e: std::io::Error| format!("read error: {e}");
    let mut pre = [0u8; 10];
    let got = read_up_to(r, &mut pre[..8]).map_err(io)?;
    if got < 8 {
        return Err(format!(
            "truncated: {got} bytes, too short for a .npy preamble (8 bytes)"
        ));
    }
    if &pre[..6] != NPY_MAGIC {
        return Err("not a .npy array: bad magic (expected \\x93NUMPY)".into());
    }
    let (major, minor) = (pre[6], pre[7]);
    let header_len = match major {
        1 => {
            if read_up_to(r, &mut pre[8..10]).map_err(io)? < 2 {
                return Err("truncated inside the .npy header length".into());
            }
            u16::from_le_bytes([pre[8], pre[9]]) as usize
        }
        2 | 3 => {
            let mut w = [0u8; 4];
            if read_up_to(r, &mut w).map_err(io)? < 4 {
                return Err("truncated inside the .npy header length".into());
            }
            u32::from_le_bytes(w) as usize
        }
        _ => return Err(format!("unsupported .npy version {major}.{minor}")),
    };
    if header_len > MAX_NPY_HEADER {
        return Err(format!(
            "header length {header_len} exceeds {MAX_NPY_HEADER} bytes (corrupt header?)"
        ));
    }
    // Grow the buffer as bytes arrive: a lying length costs nothing up front.
    let mut header = Vec::with_capacity(header_len.min(4096));
    r.take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(io)?;
    let got = header.len();
    if got < header_len {
        return Err(format!(
            "truncated: header declares {header_len} bytes, only {got} present"
        ));
    }
    let text = if major == 3 {
        std::str::from_utf8(&header).map_err(|_| "header is not UTF-8".to_string())?
    } else {
        std::str::from_utf8(&header)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| "header is not ASCII".to_string())?
    };
    parse_npy_header(text)
}

/// Converts big-endian data to little-endian, in place.
fn swap_bytes(data: &mut [u8], unit: usize) {
    if unit > 1 {
        for c in data.chunks_exact_mut(unit) {
            c.reverse();
        }
    }
}

/// Reorders column-major element data to row-major.
fn fortran_to_c(data: &[u8], shape: &[usize], item: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    if shape.len() < 2 || n == 0 || item == 0 {
        return data.to_vec();
    }
    // Column-major strides (in elements).
    let mut stride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        stride[k] = stride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        out.extend_from_slice(&data[off * item..(off + 1) * item]);
        // Advance the row-major odometer, updating the column-major offset.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            off += stride[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= stride[k] * shape[k];
            idx[k] = 0;
        }
    }
    out
}

/// Reads a `.npy` array from a stream that must end right after the data.
///
/// `capacity_hint` bounds the buffer reserved up front (pass what the container can hold at
/// most, e.g. the file length); the buffer grows beyond it only as data actually arrives. Errors
/// are messages without the file name; callers add it.
pub fn read_npy(r: &mut impl Read, capacity_hint: u64) -> std::result::Result<NdArray, String> {
    let h = read_npy_header(r)?;
    let declared = h.data_bytes()?;
    let mut data = Vec::with_capacity(declared.min(capacity_hint) as usize);
    r.take(declared + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("read error (corrupt or truncated data?): {e}"))?;
    let held = data.len() as u64;
    if held < declared {
        return Err(format!(
            "truncated: header declares shape {:?} of {} = {declared} data bytes, only {held} present",
            h.shape, h.dtype
        ));
    }
    if held > declared {
        return Err(format!(
            "trailing bytes after the {declared} data bytes that shape {:?} of {} declares",
            h.shape, h.dtype
        ));
    }
    if h.big_endian {
        swap_bytes(&mut data, h.dtype.swap_unit());
    }
    if h.fortran_order {
        data = fortran_to_c(&data, &h.shape, h.dtype.size());
    }
    Ok(NdArray {
        dtype: h.dtype,
        shape: h.shape,
        data,
    })
}

/// Encodes an array as `.npy` version 1.0 bytes (little-endian, C order).
pub fn npy_bytes(a: &NdArray) -> Vec<u8> {
    let descr = match a.dtype {
        DType::Bool => "|b1".to_string(),
        DType::U8 => "|u1".to_string(),
        DType::I8 => "|i1".to_string(),
        DType::U16 => "<u2".to_string(),
        DType::I16 => "<i2".to_string(),
        DType::U32 => "<u4".to_string(),
        DType::I32 => "<i4".to_string(),
        DType::U64 => "<u8".to_string(),
        DType::I64 => "<i8".to_string(),
        DType::F16 | DType::BF16 => "<f2".to_string(),
        DType::F32 => "<f4".to_string(),
        DType::F64 => "<f8".to_string(),
        DType::Bytes(n) => format!("|S{n}"),
        DType::Unicode(n) => format!("<U{n}"),
    };
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so that the data starts on a 64-byte boundary, ending in a newline.
    let unpadded = NPY_MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len());
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&a.data);
    out
}

/// The arrays read from an `.npz` archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpzContents {
    /// Names of every array in the archive (entry names without `.npy`), in archive order.
    pub names: Vec<String>,
    /// The arrays that were asked for and present.
    pub arrays: BTreeMap<String, NdArray>,
}

/// Reads the arrays named in `wanted` (all arrays when `None`) from the `.npz` archive at
/// `path`. Stored and deflated entries are supported; every error names the file and, for an
/// entry, the entry.
pub fn read_npz(path: &Path, wanted: Option<&[&str]>) -> Result<NpzContents> {
    // The zip reader parses untrusted input; a defect in it must surface as an error naming
    // the file rather than as a crash.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_npz_inner(path, wanted)
    })) {
        Ok(r) => r,
        Err(_) => Err(Error::corrupt(
            path,
            "not a readable .npz archive (the zip reader failed on malformed data)",
        )),
    }
}

fn read_npz_inner(path: &Path, wanted: Option<&[&str]>) -> Result<NpzContents> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        Error::corrupt(
            path,
            format!("not a readable .npz (zip) archive (truncated or corrupt?): {e}"),
        )
    })?;
    let mut names = Vec::with_capacity(zip.len());
    let mut entry_of = BTreeMap::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| {
            Error::corrupt(path, format!("unreadable zip entry #{i} (corrupt?): {e}"))
        })?;
        let full = entry.name().to_string();
        let name = full.strip_suffix(".npy").unwrap_or(&full).to_string();
        if entry.is_dir() {
            continue;
        }
        if entry_of.insert(name.clone(), i).is_some() {
            return Err(Error::corrupt(
                path,
                format!("array `{name}` appears twice in the archive"),
            ));
        }
        names.push(name);
    }
    let selected: Vec<String> = match wanted {
        Some(w) => w
            .iter()
            .filter(|n| entry_of.contains_key(**n))
            .map(|n| n.to_string())
            .collect(),
        None => names.clone(),
    };
    let mut arrays = BTreeMap::new();
    for name in selected {
        let i = entry_of[&name];
        let mut entry = zip.by_index(i).map_err(|e| {
            Error::corrupt(
                path,
                format!("array `{name}`: unreadable zip entry (corrupt or unsupported?): {e}"),
            )
        })?;
        let compressed = entry.compressed_size();
        // What the entry can hold at most, whatever its header says.
        let held = compressed.min(file_len);
        let bound = match entry.compression() {
            zip::CompressionMethod::Stored => held,
            _ => held.saturating_mul(DEFLATE_MAX_RATIO),
        }
        .min(entry.size());
        let a = read_npy(&mut entry, bound)
            .map_err(|m| Error::corrupt(path, format!("array `{name}`: {m}")))?;
        arrays.insert(name, a);
    }
    Ok(NpzContents { names, arrays })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(dtype: DType, shape: &[usize], data: Vec<u8>) -> NdArray {
        NdArray {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    #[test]
    fn header_parsing() {
        let h =
            parse_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n")
                .unwrap();
        assert_eq!(h.dtype, DType::F32);
        assert!(!h.big_endian && !h.fortran_order);
        assert_eq!(h.shape, vec![2, 3]);
        let h = parse_npy_header("{\"shape\": (5,), \"fortran_order\": True, \"descr\": \">i8\"}")
            .unwrap();
        assert_eq!(
            (h.dtype, h.big_endian, h.fortran_order),
            (DType::I64, true, true)
        );
        assert_eq!(h.shape, vec![5]);
        let h =
            parse_npy_header("{'descr': '|u1', 'fortran_order': False, 'shape': (), }").unwrap();
        assert!(h.shape.is_empty());
        for (bad, want) in [
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (1,)}",
                "pickled",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                "structured",
            ),
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
                "unsupported dtype",
            ),
            ("{'descr': '<f4', 'shape': (1,)}", "fortran_order"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 'a')}",
                "integers",
            ),
            ("{'descr': '<f4', 'fortran_order': False", "expected"),
            ("{'descr': '<f4, 'fortran_order': False}", "expected"),
            ("", "expected `{`"),
        ] {
            let e = parse_npy_header(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn descr_table() {
        assert_eq!(parse_descr("|u1").unwrap(), (DType::U8, false));
        assert_eq!(parse_descr("<f8").unwrap(), (DType::F64, false));
        assert_eq!(parse_descr(">f2").unwrap(), (DType::F16, true));
        assert_eq!(parse_descr("<U7").unwrap(), (DType::Unicode(7), false));
        assert_eq!(parse_descr("|S3").unwrap(), (DType::Bytes(3), false));
        assert_eq!(parse_descr("i4").unwrap(), (DType::I32, false));
        assert!(parse_descr("<").is_err());
        assert!(parse_descr("<f").is_err());
    }

    #[test]
    fn round_trip_and_byte_order() {
        let a = arr(
            DType::I32,
            &[2, 2],
            [1i32, -2, 3, 400_000]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        let bytes = npy_bytes(&a);
        assert_eq!(
            (bytes.len() - 16) % 64,
            0,
            "the data starts on a 64-byte boundary"
        );
        let b = read_npy(&mut &bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_i64().unwrap(), vec![1, -2, 3, 400_000]);
        // Big-endian data.
        let mut be = bytes.clone();
        let hdr_end = bytes.len() - 16;
        let text = String::from_utf8(be[10..hdr_end].to_vec())
            .unwrap()
            .replace("<i4", ">i4");
        be.splice(10..hdr_end, text.bytes());
        for c in be[hdr_end..].chunks_exact_mut(4) {
            c.reverse();
        }
        assert_eq!(read_npy(&mut &be[..], 0).unwrap(), a);
    }

    #[test]
    fn fortran_order_is_reordered() {
        // A 2x3 array [[0, 1, 2], [3, 4, 5]] stored column-major: 0 3 1 4 2 5.
        let data = vec![0u8, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&data, &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
        // 2x2x2: element (i, j, k) = 4i + 2j + k, stored with i fastest.
        let mut f = Vec::new();
        for k in 0..2u8 {
            for j in 0..2u8 {
                for i in 0..2u8 {
                    f.push(4 * i + 2 * j + k);
                }
            }
        }
        assert_eq!(fortran_to_c(&f, &[2, 2, 2], 1), (0..8).collect::<Vec<u8>>());
    }

    #[test]
    fn strings_decode() {
        let mut data = Vec::new();
        for s in ["ab", "c"] {
            let mut cps: Vec<u32> = s.chars().map(|c| c as u32).collect();
            cps.resize(2, 0);
            data.extend(cps.iter().flat_map(|c| c.to_le_bytes()));
        }
        let a = arr(DType::Unicode(2), &[2], data);
        assert_eq!(a.to_strings().unwrap(), vec!["ab", "c"]);
        let b = arr(DType::Bytes(3), &[2], b"ab\0xyz".to_vec());
        assert_eq!(b.to_strings().unwrap(), vec!["ab", "xyz"]);
        assert!(arr(DType::U8, &[1], vec![0]).to_strings().is_err());
        let big = arr(DType::U64, &[1], u64::MAX.to_le_bytes().to_vec());
        assert!(big.to_i64().unwrap_err().contains("index 0"));
    }

    #[test]
    fn truncation_never_panics() {
        let a = arr(
            DType::F32,
            &[3],
            [0.5f32, 1.0, 0.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        let bytes = npy_bytes(&a);
        for cut in 0..bytes.len() {
            let e = read_npy(&mut &bytes[..cut], cut as u64).unwrap_err();
            assert!(
                e.contains("truncated") || e.contains("magic"),
                "cut {cut}: {e}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(read_npy(&mut &extra[..], 0)
            .unwrap_err()
            .contains("trailing"));
    }

    #[test]
    fn huge_declared_shape_is_rejected_before_allocating() {
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 100000000000), }";
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        let e = read_npy(&mut &b[..], 0).unwrap_err();
        assert!(e.contains("overflow") || e.contains("allowed"), "{e}");
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000, 1000), }";
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        let e = read_npy(&mut &b[..], 0).unwrap_err();
        assert!(e.contains("truncated") && e.contains("8000000"), "{e}");
    }
}
