//! A restricted reader for PyTorch `.pt`/`.pth` files written by `torch.save`.
//!
//! Both container formats are read:
//!
//! * the zip format (the default since PyTorch 1.6): `<name>/data.pkl` (the pickle),
//!   `<name>/data/<key>` (one raw storage per key), `<name>/byteorder`, `<name>/version`;
//! * the legacy format (`_use_new_zipfile_serialization=False`): a magic-number pickle, a
//!   protocol-version pickle, a system-info pickle, the object pickle, the list of storage keys,
//!   then each storage as an int64 element count followed by its bytes.
//!
//! The pickle is run by a small interpreter of the protocol 2-5 opcodes `torch.save` emits that
//! builds plain values only — `None`, `bool`, `int`, `float`, `str`, `bytes`, tuples, lists,
//! dicts (`OrderedDict`), sets — and tensors. It never executes anything: the only globals it
//! accepts are those PyTorch's own `weights_only=True` unpickler accepts for tensors and
//! containers (`collections.OrderedDict`, `collections.Counter`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter[_with_state]`, the
//! `torch.*Storage` classes of persistent ids, `torch.Size`, `torch.device`, dtypes,
//! `_codecs.encode` and `builtins.set`/`frozenset`/`bytes`/`bytearray`), and each of those is
//! interpreted here, not looked up or called. Any other global (`os.system`, `builtins.eval`,
//! `posix.system`, a model class, ...) is refused with an error naming it, when the opcode naming
//! it is read.
//!
//! Tensors are rebuilt from f32/f64/f16/bf16/i64/i32/i16/i8/u8/bool storages on the CPU as
//! strided views (offset, size and stride as saved) of one 1-D tensor per storage, so views
//! saved together still share memory. Every offset/size/stride is checked against its
//! storage's length, and every storage's length against the bytes actually in the file, before
//! anything is allocated: no header can make the reader allocate more than the file holds.
//! Files written on big-endian machines are refused. Truncated or corrupt files give
//! [`Error::Corrupt`]; refused content gives [`Error::Checkpoint`]. The reader never panics on
//! file content.

use rustworthy_core::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// A value rebuilt from a `torch.save` pickle.
///
/// Containers keep the order of the file (a Python `dict` or `OrderedDict` is a
/// [`PickleValue::Dict`] with its entries in insertion order). Attributes attached to an
/// `OrderedDict` (the `_metadata` PyTorch keeps on state dicts) are not kept.
#[derive(Debug)]
pub enum PickleValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A tuple (also `torch.Size`).
    Tuple(Vec<PickleValue>),
    /// A list.
    List(Vec<PickleValue>),
    /// A dict, `OrderedDict` or `Counter`, in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A set or frozenset.
    Set(Vec<PickleValue>),
    /// A tensor (or parameter) on the CPU; `requires_grad` is not restored.
    Tensor(Tensor),
    /// A `torch.dtype`, by name (`"float32"`).
    Dtype(String),
    /// A `torch.device`, as written by `str(device)` (`"cuda:0"`).
    Device(String),
}

impl PickleValue {
    /// A short name of the value's type (`"dict"`, `"tensor"`, ...), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PickleValue::None => "None",
            PickleValue::Bool(_) => "bool",
            PickleValue::Int(_) | PickleValue::BigInt(_) => "int",
            PickleValue::Float(_) => "float",
            PickleValue::Str(_) => "str",
            PickleValue::Bytes(_) => "bytes",
            PickleValue::Tuple(_) => "tuple",
            PickleValue::List(_) => "list",
            PickleValue::Dict(_) => "dict",
            PickleValue::Set(_) => "set",
            PickleValue::Tensor(_) => "tensor",
            PickleValue::Dtype(_) => "dtype",
            PickleValue::Device(_) => "device",
        }
    }

    /// The string, if this is a [`PickleValue::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PickleValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The tensor, if this is a [`PickleValue::Tensor`].
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            PickleValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The entries, if this is a [`PickleValue::Dict`].
    pub fn as_dict(&self) -> Option<&[(PickleValue, PickleValue)]> {
        match self {
            PickleValue::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under the string key `key`, if this is a dict holding one.
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

/// Keys under which a checkpoint dict may hold its state dict, in the order they are tried by
/// [`read_pth_state_dict`].
pub const CHECKPOINT_KEYS: [&str; 5] = [
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "state_dict_ema",
];

/// A state dict read from a `.pth` file by [`read_pth_state_dict`].
#[derive(Debug)]
pub struct PthStateDict {
    /// The tensors, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// The checkpoint key the state dict was found under (one of [`CHECKPOINT_KEYS`]), or
    /// `None` when the file's top-level object is the state dict.
    pub source_key: Option<String>,
    /// Entries of the state dict that are not tensors and were skipped (only `_metadata`).
    pub skipped: Vec<String>,
}

/// Reads a `torch.save` file (zip or legacy format) into a [`PickleValue`], refusing any
/// global beyond tensors and plain containers (see the module documentation).
pub fn read_pth(path: impl AsRef<Path>) -> Result<PickleValue> {
    let path = path.as_ref();
    let data = read_file(path)?;
    read_pth_bytes(path, &data)
}

/// [`read_pth`] on bytes already in memory; `path` only names the file in errors.
pub fn read_pth_bytes(path: &Path, data: &[u8]) -> Result<PickleValue> {
    if cfg!(target_endian = "big") {
        return Err(Error::checkpoint(
            path,
            "the .pth reader needs a little-endian machine",
        ));
    }
    if is_zip(data) {
        read_zip_pth(path, data)
    } else if is_legacy(data) {
        read_legacy_pth(path, data)
    } else {
        Err(Error::corrupt(
            path,
            "not a torch.save file: neither a zip archive nor a legacy pickle stream",
        ))
    }
}

/// Reads the state dict of a `.pth` file: its top-level dict of tensors, or the dict held by a
/// checkpoint under the first of [`CHECKPOINT_KEYS`] present (the key used is returned).
/// Non-tensor entries in the chosen dict are errors naming the entry, except `_metadata`
/// (PyTorch's per-module version record, which holds no weights), which is skipped.
pub fn read_pth_state_dict(path: impl AsRef<Path>) -> Result<PthStateDict> {
    let path = path.as_ref();
    let value = read_pth(path)?;
    state_dict_from_value(path, value)
}

/// The tensors of [`read_pth_state_dict`], in file order.
pub fn state_dict_from_pth(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    Ok(read_pth_state_dict(path)?.tensors)
}

/// Whether `head` (the first bytes of a file) looks like a `torch.save` file.
pub(crate) fn looks_like_pth(head: &[u8]) -> bool {
    is_zip(head) || is_legacy(head)
}

/// Whether `head` starts like a zip archive (the torch.save default format).
pub(crate) fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

fn is_legacy(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1])
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::checkpoint(path, "not a regular file"));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn state_dict_from_value(path: &Path, value: PickleValue) -> Result<PthStateDict> {
    let PickleValue::Dict(top) = value else {
        return Err(Error::checkpoint(
            path,
            format!(
                "the file holds a {}, not a state dict (a dict of tensors) or a checkpoint dict",
                value.type_name()
            ),
        ));
    };
    let pos = CHECKPOINT_KEYS.iter().find_map(|key| {
        top.iter()
            .position(|(k, v)| k.as_str() == Some(key) && matches!(v, PickleValue::Dict(_)))
            .map(|i| (i, *key))
    });
    let (entries, source_key) = match pos {
        Some((i, key)) => {
            let mut top = top;
            let (_, inner) = top.swap_remove(i);
            let PickleValue::Dict(inner) = inner else {
                unreachable!("checked above")
            };
            (inner, Some(key.to_string()))
        }
        None => (top, None),
    };
    let place = match &source_key {
        Some(k) => format!("the state dict under `{k}`"),
        None => "the top-level dict".to_string(),
    };
    let mut tensors = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for (k, v) in entries {
        let PickleValue::Str(name) = k else {
            return Err(Error::checkpoint(
                path,
                format!(
                    "{place} has a {} key; state-dict keys are strings",
                    k.type_name()
                ),
            ));
        };
        match v {
            PickleValue::Tensor(t) => tensors.push((name, t)),
            PickleValue::Dict(_) if name == "_metadata" => skipped.push(name),
            other => {
                let hint = if source_key.is_none() {
                    format!(
                        "; a checkpoint dict must hold its state dict under one of {}",
                        CHECKPOINT_KEYS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                };
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "entry `{name}` of {place} is a {}, not a tensor{hint}",
                        other.type_name()
                    ),
                ));
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::checkpoint(path, format!("{place} holds no tensors")));
    }
    Ok(PthStateDict {
        tensors,
        source_key,
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// Storages
// ---------------------------------------------------------------------------------------------

/// Element type of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F64,
    F32,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// The dtype of a `torch.<Name>Storage` class.
    fn from_storage_class(name: &str) -> Option<Dtype> {
        Some(match name {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::Bf16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" | "UntypedStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    fn kind(self) -> Kind {
        match self {
            Dtype::F64 => Kind::Double,
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::Bool => Kind::Bool,
        }
    }

    fn size(self) -> u64 {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

/// `torch.<name>` dtype objects a pickle may name.
const DTYPE_NAMES: [&str; 22] = [
    "float64",
    "double",
    "float32",
    "float",
    "float16",
    "half",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "cfloat",
    "cdouble",
    "uint16",
    "uint32",
];

/// A storage named by a persistent id.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: Dtype,
    /// Number of elements declared by the pickle (checked against the file's bytes).
    numel: u64,
}

impl StorageRef {
    /// The declared length in bytes, if it does not overflow.
    fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.dtype.size())
    }
}

/// A tensor to rebuild from a storage.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Builds the 1-D tensor of a storage from its bytes, which must have the declared length.
fn storage_tensor(path: &Path, s: &StorageRef, bytes: &[u8]) -> Result<Tensor> {
    let expected = s
        .nbytes()
        .ok_or_else(|| Error::corrupt(path, format!("storage `{}`: size overflows", s.key)))?;
    if bytes.len() as u64 != expected {
        return Err(Error::corrupt(
            path,
            format!(
                "storage `{}` declares {} element(s) ({expected} bytes) but the file holds {} \
                 bytes for it",
                s.key,
                s.numel,
                bytes.len()
            ),
        ));
    }
    if s.dtype == Dtype::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(Error::corrupt(
            path,
            format!("bool storage `{}` holds bytes other than 0 and 1", s.key),
        ));
    }
    // The length was just checked: `from_data_size` copies exactly numel * element size bytes.
    let numel = i64::try_from(s.numel)
        .map_err(|_| Error::corrupt(path, format!("storage `{}` is too large", s.key)))?;
    Ok(Tensor::f_from_data_size(bytes, &[numel], s.dtype.kind())?)
}

// ---------------------------------------------------------------------------------------------
// Zip container
// ---------------------------------------------------------------------------------------------

struct ZipEntry {
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    comp_size: u64,
    size: u64,
    header_offset: u64,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), as stored in zip headers.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The entries of a zip archive held in `data`. Only what the central directory declares and
/// the file holds is read; the entry list grows with the bytes parsed, never with a count.
fn zip_entries(data: &[u8]) -> std::result::Result<Vec<ZipEntry>, String> {
    const EOCD: &[u8] = b"PK\x05\x06";
    if data.len() < 22 {
        return Err("truncated zip archive (no end-of-central-directory record)".into());
    }
    let lowest = data.len().saturating_sub(22 + 0xFFFF);
    let mut eocd = None;
    let mut at = data.len() - 22;
    loop {
        if &data[at..at + 4] == EOCD {
            let comment = u16_at(data, at + 20).unwrap_or(0) as usize;
            if at + 22 + comment <= data.len() {
                eocd = Some(at);
                break;
            }
        }
        if at == lowest {
            break;
        }
        at -= 1;
    }
    let eocd = eocd.ok_or("truncated zip archive (no end-of-central-directory record)")?;
    let bad = || "corrupt end-of-central-directory record".to_string();
    let mut count = u16_at(data, eocd + 10).ok_or_else(bad)? as u64;
    let mut cd_size = u32_at(data, eocd + 12).ok_or_else(bad)? as u64;
    let mut cd_offset = u32_at(data, eocd + 16).ok_or_else(bad)? as u64;
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // Zip64: a locator right before the record points at the zip64 record.
        let bad64 = || "corrupt zip64 end-of-central-directory record".to_string();
        let loc = eocd.checked_sub(20).ok_or_else(bad64)?;
        if data.get(loc..loc + 4) != Some(b"PK\x06\x07".as_slice()) {
            return Err(bad64());
        }
        let rec = usize::try_from(u64_at(data, loc + 8).ok_or_else(bad64)?).map_err(|_| bad64())?;
        if data.get(rec..rec.saturating_add(4)) != Some(b"PK\x06\x06".as_slice()) {
            return Err(bad64());
        }
        count = u64_at(data, rec + 32).ok_or_else(bad64)?;
        cd_size = u64_at(data, rec + 40).ok_or_else(bad64)?;
        cd_offset = u64_at(data, rec + 48).ok_or_else(bad64)?;
    }
    let cd_start = usize::try_from(cd_offset).map_err(|_| bad())?;
    let cd_end = cd_offset
        .checked_add(cd_size)
        .and_then(|e| usize::try_from(e).ok())
        .filter(|&e| e <= data.len())
        .ok_or("central directory lies outside the file (truncated?)")?;
    let cd = &data[cd_start..cd_end];
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut p = 0usize;
    while p < cd.len() {
        let bad_entry = || format!("corrupt central-directory entry at byte {}", cd_start + p);
        if cd.get(p..p + 4) != Some(b"PK\x01\x02".as_slice()) {
            return Err(bad_entry());
        }
        let flags = u16_at(cd, p + 8).ok_or_else(bad_entry)?;
        let method = u16_at(cd, p + 10).ok_or_else(bad_entry)?;
        let crc = u32_at(cd, p + 16).ok_or_else(bad_entry)?;
        let mut comp_size = u32_at(cd, p + 20).ok_or_else(bad_entry)? as u64;
        let mut size = u32_at(cd, p + 24).ok_or_else(bad_entry)? as u64;
        let name_len = u16_at(cd, p + 28).ok_or_else(bad_entry)? as usize;
        let extra_len = u16_at(cd, p + 30).ok_or_else(bad_entry)? as usize;
        let comment_len = u16_at(cd, p + 32).ok_or_else(bad_entry)? as usize;
        let mut header_offset = u32_at(cd, p + 42).ok_or_else(bad_entry)? as u64;
        let name_start = p + 46;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        let name = cd.get(name_start..extra_start).ok_or_else(bad_entry)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| format!("zip entry name at byte {} is not UTF-8", cd_start + p))?
            .to_string();
        let mut extra = cd
            .get(extra_start..extra_start + extra_len)
            .ok_or_else(bad_entry)?;
        if next > cd.len() {
            return Err(bad_entry());
        }
        // Zip64 extended information: the 32-bit fields set to 0xFFFFFFFF, in this order.
        while extra.len() >= 4 {
            let id = u16_at(extra, 0).ok_or_else(bad_entry)?;
            let len = u16_at(extra, 2).ok_or_else(bad_entry)? as usize;
            let body = extra.get(4..4 + len).ok_or_else(bad_entry)?;
            if id == 0x0001 {
                let mut q = 0;
                for field in [&mut size, &mut comp_size, &mut header_offset] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(body, q).ok_or_else(bad_entry)?;
                        q += 8;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        if !seen.insert(name.clone()) {
            return Err(format!("zip entry `{name}` appears twice"));
        }
        entries.push(ZipEntry {
            name,
            flags,
            method,
            crc,
            comp_size,
            size,
            header_offset,
        });
        p = next;
    }
    if entries.len() as u64 != count {
        return Err(format!(
            "central directory lists {} entries but declares {count}",
            entries.len()
        ));
    }
    Ok(entries)
}

/// The bytes of a stored (uncompressed) entry, after checking its bounds and CRC.
fn zip_read<'a>(data: &'a [u8], e: &ZipEntry) -> std::result::Result<&'a [u8], String> {
    if e.flags & 1 != 0 {
        return Err(format!("zip entry `{}` is encrypted", e.name));
    }
    if e.method != 0 {
        return Err(format!(
            "zip entry `{}` is compressed (method {}); torch.save writes stored entries, re-save \
             the file with torch.save",
            e.name, e.method
        ));
    }
    if e.comp_size != e.size {
        return Err(format!("zip entry `{}`: inconsistent sizes", e.name));
    }
    let bad = || {
        format!(
            "zip entry `{}`: local header lies outside the file (truncated?)",
            e.name
        )
    };
    let h = usize::try_from(e.header_offset).map_err(|_| bad())?;
    if data.get(h..h.saturating_add(4)) != Some(b"PK\x03\x04".as_slice()) {
        return Err(bad());
    }
    let name_len = u16_at(data, h + 26).ok_or_else(bad)? as usize;
    let extra_len = u16_at(data, h + 28).ok_or_else(bad)? as usize;
    let start = h + 30 + name_len + extra_len;
    let end = usize::try_from(e.size)
        .ok()
        .and_then(|n| start.checked_add(n))
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            format!(
                "zip entry `{}` declares {} bytes past the end of the file (truncated?)",
                e.name, e.size
            )
        })?;
    let bytes = &data[start..end];
    if crc32(bytes) != e.crc {
        return Err(format!(
            "zip entry `{}`: CRC mismatch (corrupt file)",
            e.name
        ));
    }
    Ok(bytes)
}

fn read_zip_pth(path: &Path, data: &[u8]) -> Result<PickleValue> {
    let corrupt = |m: String| Error::corrupt(path, m);
    let entries = zip_entries(data).map_err(corrupt)?;
    let pkl: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| {
            e.name
                .strip_suffix("/data.pkl")
                .is_some_and(|p| !p.is_empty() && !p.contains('/'))
        })
        .collect();
    let pkl = match pkl.as_slice() {
        [one] => *one,
        [] => {
            return Err(corrupt(
                "zip archive without `<name>/data.pkl`: not a torch.save file".into(),
            ))
        }
        _ => {
            return Err(corrupt(
                "zip archive with several `*/data.pkl` records".into(),
            ))
        }
    };
    let prefix = pkl
        .name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_string();
    let by_name: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let find = |name: &str| by_name.get(name).copied();
    if find(&format!("{prefix}constants.pkl")).is_some()
        || entries
            .iter()
            .any(|e| e.name.starts_with(&format!("{prefix}code/")))
    {
        return Err(Error::checkpoint(
            path,
            "a TorchScript archive (torch.jit.save), not a torch.save file: it holds code, not a \
             state dict (load it as a TorchScript module instead)",
        ));
    }
    if let Some(e) = find(&format!("{prefix}byteorder")) {
        let order = zip_read(data, e).map_err(corrupt)?;
        match order {
            b"little" => {}
            b"big" => {
                return Err(Error::checkpoint(
                    path,
                    "the file was written on a big-endian machine; only little-endian files are \
                     read (re-save it on a little-endian machine)",
                ))
            }
            other => {
                return Err(corrupt(format!(
                    "unknown byte order `{}`",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    let pickle = zip_read(data, pkl).map_err(corrupt)?;
    let mut up = Unpickler::new(path, pickle, PidMode::Zip);
    let root = up.load()?;
    let mut cache: HashMap<String, Tensor> = HashMap::new();
    let mut source = |s: &StorageRef| -> Result<Tensor> {
        if let Some(t) = cache.get(&s.key) {
            return Ok(t.shallow_clone());
        }
        let name = format!("{prefix}data/{}", s.key);
        let e =
            find(&name).ok_or_else(|| corrupt(format!("storage record `{name}` is missing")))?;
        // Bound the declared size by the record before reading anything.
        if Some(e.size) != s.nbytes() {
            return Err(corrupt(format!(
                "storage `{}` declares {} element(s) of {} bytes but its record holds {} bytes",
                s.key,
                s.numel,
                s.dtype.size(),
                e.size
            )));
        }
        let bytes = zip_read(data, e).map_err(corrupt)?;
        let t = storage_tensor(path, s, bytes)?;
        cache.insert(s.key.clone(), t.shallow_clone());
        Ok(t)
    };
    up.materialize(&root, &mut source, pickle.len())
}

/// Checks a TorchScript archive's pickle (`data.pkl` or `constants.pkl`) without building
/// anything: it is run by the restricted interpreter in TorchScript mode (TorchScript classes
/// become opaque objects), every tensor view is checked against its storage's declared size,
/// and every storage's size against its record, whose size `record_size` gives by key.
/// libtorch checks neither, and reads past a short record.
pub(crate) fn check_script_pickle(
    path: &Path,
    name: &str,
    pickle: &[u8],
    record_size: &dyn Fn(&str) -> Option<u64>,
) -> Result<()> {
    let mut up = Unpickler::new(path, pickle, PidMode::Zip);
    up.script = true;
    up.load().map_err(|e| match e {
        Error::Corrupt { msg, .. } => Error::corrupt(path, format!("`{name}`: {msg}")),
        other => other,
    })?;
    for s in up.storages.values() {
        let have = record_size(&s.key);
        if have != s.nbytes() {
            return Err(Error::corrupt(
                path,
                format!(
                    "`{name}`: storage `{}` declares {} element(s) of {} bytes but its record {}",
                    s.key,
                    s.numel,
                    s.dtype.size(),
                    match have {
                        Some(n) => format!("holds {n} bytes"),
                        None => "is missing".into(),
                    }
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Legacy container
// ---------------------------------------------------------------------------------------------

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL: i64 = 1001;

fn read_legacy_pth(path: &Path, data: &[u8]) -> Result<PickleValue> {
    let corrupt = |m: &str| Error::corrupt(path, m.to_string());
    let mut pos = 0usize;
    // The three header pickles: plain values, no persistent ids.
    let header = |pos: &mut usize| -> Result<PickleValue> {
        let mut up = Unpickler::new(path, &data[*pos..], PidMode::None);
        let v = up.load()?;
        *pos += up.pos;
        let mut none = |s: &StorageRef| -> Result<Tensor> {
            Err(corrupt(&format!(
                "unexpected storage `{}` in the header",
                s.key
            )))
        };
        up.materialize(&v, &mut none, up.data.len())
    };
    match header(&mut pos)? {
        PickleValue::BigInt(b) if b == LEGACY_MAGIC => {}
        _ => return Err(corrupt("not a torch.save file (bad magic number)")),
    }
    match header(&mut pos)? {
        PickleValue::Int(LEGACY_PROTOCOL) => {}
        PickleValue::Int(v) => {
            return Err(corrupt(&format!(
                "unsupported legacy protocol version {v} (expected {LEGACY_PROTOCOL})"
            )))
        }
        _ => return Err(corrupt("corrupt legacy header (protocol version)")),
    }
    let info = header(&mut pos)?;
    if info.as_dict().is_none() {
        return Err(corrupt("corrupt legacy header (system info)"));
    }
    match info.get("little_endian") {
        Some(PickleValue::Bool(true)) | None => {}
        Some(PickleValue::Bool(false)) => {
            return Err(Error::checkpoint(
                path,
                "the file was written on a big-endian machine; only little-endian files are read \
                 (re-save it on a little-endian machine)",
            ))
        }
        Some(_) => return Err(corrupt("corrupt legacy header (little_endian)")),
    }

    let mut up = Unpickler::new(path, &data[pos..], PidMode::Legacy);
    let root = up.load()?;
    pos += up.pos;
    let keys = {
        let mut kp = Unpickler::new(path, &data[pos..], PidMode::None);
        let keys = kp.load()?;
        pos += kp.pos;
        let V::List(list) = keys else {
            return Err(corrupt("corrupt storage key list"));
        };
        let list = list
            .try_borrow()
            .map_err(|_| corrupt("corrupt storage key list"))?;
        list.iter()
            .map(|k| match k {
                V::Str(s) => Ok(s.to_string()),
                _ => Err(corrupt("corrupt storage key list")),
            })
            .collect::<Result<Vec<String>>>()?
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for key in &keys {
        let s =
            up.storages.get(key).cloned().ok_or_else(|| {
                corrupt(&format!("storage `{key}` is listed but no tensor uses it"))
            })?;
        if storages.contains_key(key) {
            return Err(corrupt(&format!("storage `{key}` is listed twice")));
        }
        let count = u64_at(data, pos)
            .ok_or_else(|| corrupt(&format!("truncated before storage `{key}`")))?;
        pos += 8;
        if count != s.numel {
            return Err(corrupt(&format!(
                "storage `{key}` declares {} element(s) in the pickle but {count} in its data",
                s.numel
            )));
        }
        let len = s
            .nbytes()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= data.len() - pos)
            .ok_or_else(|| {
                corrupt(&format!(
                    "storage `{key}` declares {count} element(s), more than the file holds \
                     (truncated?)"
                ))
            })?;
        storages.insert(
            key.clone(),
            storage_tensor(path, &s, &data[pos..pos + len])?,
        );
        pos += len;
    }
    if let Some(k) = up.storages.keys().find(|k| !storages.contains_key(*k)) {
        return Err(corrupt(&format!("storage `{k}` is used but has no data")));
    }
    let mut source = |s: &StorageRef| -> Result<Tensor> {
        storages
            .get(&s.key)
            .map(|t| t.shallow_clone())
            .ok_or_else(|| corrupt(&format!("storage `{}` has no data", s.key)))
    };
    let len = up.data.len();
    up.materialize(&root, &mut source, len)
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter
// ---------------------------------------------------------------------------------------------

type Shared<T> = Rc<RefCell<T>>;

/// The globals the interpreter understands; each is interpreted, never called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    Counter,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(Dtype),
    Size,
    Device,
    Encode,
    Set,
    FrozenSet,
    Bytes,
    Bytearray,
    /// A TorchScript class (`__torch__.…`), in TorchScript mode only: an opaque object.
    Class,
    /// `torch.jit._pickle.build_*list` / `restore_type_tag`, in TorchScript mode only: they
    /// return their first argument.
    JitIdentity,
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::Counter => "collections.Counter",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::Storage(_) => "a torch storage class",
            Global::Size => "torch.Size",
            Global::Device => "torch.device",
            Global::Encode => "_codecs.encode",
            Global::Set => "builtins.set",
            Global::FrozenSet => "builtins.frozenset",
            Global::Bytes => "builtins.bytes",
            Global::Bytearray => "builtins.bytearray",
            Global::Class => "a TorchScript class",
            Global::JitIdentity => "torch.jit._pickle",
        };
        f.write_str(s)
    }
}

/// An interpreter value. Containers are shared (pickle memo references alias them) and are
/// registered in the interpreter's arena, which empties them all when it is dropped, so
/// neither reference cycles nor deep nesting outlive it or recurse on drop.
#[derive(Clone, Debug)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Shared<Vec<V>>),
    List(Shared<Vec<V>>),
    Dict(Shared<DictObj>),
    Set(Shared<DictObj>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    Dtype(Rc<str>),
    Device(Rc<str>),
    /// An instance of a TorchScript class (TorchScript mode only); its state is not kept.
    Object,
}

impl V {
    fn type_name(&self) -> &'static str {
        match self {
            V::None => "None",
            V::Bool(_) => "bool",
            V::Int(_) | V::BigInt(_) => "int",
            V::Float(_) => "float",
            V::Str(_) => "str",
            V::Bytes(_) => "bytes",
            V::Tuple(_) => "tuple",
            V::List(_) => "list",
            V::Dict(_) => "dict",
            V::Set(_) => "set",
            V::Global(_) => "global",
            V::Storage(_) => "storage",
            V::Tensor(_) => "tensor",
            V::Dtype(_) => "dtype",
            V::Device(_) => "device",
            V::Object => "object",
        }
    }
}

/// A dict (or, with `None` values, a set) with Python's key semantics for hashable keys.
#[derive(Debug, Default)]
struct DictObj {
    entries: Vec<(V, V)>,
    index: HashMap<HKey, usize>,
}

/// A hashable key: what Python would hash, with `1 == 1.0 == True`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HKey {
    None,
    Int(i64),
    BigInt(Vec<u8>),
    Float(u64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Vec<HKey>),
    Dtype(String),
    Device(String),
}

/// Deepest nesting of containers the reader accepts.
const MAX_DEPTH: usize = 100;

impl HKey {
    fn of(v: &V, depth: usize) -> std::result::Result<HKey, String> {
        if depth > MAX_DEPTH {
            return Err(format!("dict key nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(match v {
            V::None => HKey::None,
            V::Bool(b) => HKey::Int(*b as i64),
            V::Int(i) => HKey::Int(*i),
            V::BigInt(b) => HKey::BigInt(b.to_vec()),
            V::Float(f) => {
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    HKey::Int(*f as i64)
                } else {
                    HKey::Float(f.to_bits())
                }
            }
            V::Str(s) => HKey::Str(s.clone()),
            V::Bytes(b) => HKey::Bytes(b.clone()),
            V::Dtype(s) => HKey::Dtype(s.to_string()),
            V::Device(s) => HKey::Device(s.to_string()),
            V::Tuple(t) => {
                let t = t
                    .try_borrow()
                    .map_err(|_| "self-referential tuple".to_string())?;
                HKey::Tuple(
                    t.iter()
                        .map(|x| HKey::of(x, depth + 1))
                        .collect::<std::result::Result<_, _>>()?,
                )
            }
            other => {
                return Err(format!(
                    "unsupported dict key or set item of type {}",
                    other.type_name()
                ))
            }
        })
    }
}

impl DictObj {
    fn insert(&mut self, key: HKey, k: V, v: V) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = v,
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push((k, v));
            }
        }
    }
}

/// How persistent ids are interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PidMode {
    /// No persistent ids allowed (the legacy format's header pickles).
    None,
    /// `('storage', storage_type, key, location, numel)`.
    Zip,
    /// `('storage', storage_type, key, location, numel, view_metadata)`.
    Legacy,
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    arena: Vec<V>,
    mode: PidMode,
    storages: HashMap<String, Rc<StorageRef>>,
    /// TorchScript mode: TorchScript classes and `torch.jit._pickle` helpers are accepted.
    script: bool,
}

impl Drop for Unpickler<'_> {
    fn drop(&mut self) {
        // Empty every container first (each still alive through the arena), so dropping them
        // afterwards neither recurses nor leaks cycles.
        for v in &self.arena {
            match v {
                V::Tuple(c) | V::List(c) => {
                    if let Ok(mut c) = c.try_borrow_mut() {
                        c.clear();
                    }
                }
                V::Dict(c) | V::Set(c) => {
                    if let Ok(mut c) = c.try_borrow_mut() {
                        c.entries.clear();
                        c.index.clear();
                    }
                }
                _ => {}
            }
        }
    }
}

fn refused(module: &str, name: &str) -> String {
    format!(
        "refused global `{module}.{name}`: this reader only rebuilds tensors and plain containers \
         (None, bool, int, float, str, bytes, tuple, list, dict, set), like torch.load with \
         weights_only=True; nothing from the file was executed"
    )
}

impl<'a> Unpickler<'a> {
    fn new(path: &'a Path, data: &'a [u8], mode: PidMode) -> Self {
        Unpickler {
            path,
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            mode,
            storages: HashMap::new(),
            script: false,
        }
    }

    fn corrupt(&self, at: usize, msg: impl fmt::Display) -> Error {
        Error::corrupt(self.path, format!("pickle at byte {at}: {msg}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let at = self.pos;
        match at.checked_add(n).filter(|&end| end <= self.data.len()) {
            Some(end) => {
                self.pos = end;
                Ok(&self.data[at..end])
            }
            None => Err(self.corrupt(
                at,
                format!("needs {n} more byte(s) but the data ends (truncated?)"),
            )),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    fn len_u64(&mut self, at: usize) -> Result<usize> {
        let n = u64::from_le_bytes(self.le::<8>()?);
        usize::try_from(n).map_err(|_| self.corrupt(at, "length does not fit in memory"))
    }

    /// A newline-terminated ASCII line (GLOBAL/INST arguments), at most 256 bytes.
    fn line(&mut self) -> Result<&'a str> {
        let at = self.pos;
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(257)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.corrupt(at, "unterminated or overlong name"))?;
        let s =
            std::str::from_utf8(&rest[..end]).map_err(|_| self.corrupt(at, "name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<V> {
        let at = self.pos;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.corrupt(at, "string is not UTF-8"))?;
        Ok(V::Str(Rc::from(s)))
    }

    fn bytes(&mut self, n: usize) -> Result<V> {
        Ok(V::Bytes(Rc::from(self.take(n)?)))
    }

    fn push(&mut self, v: V) {
        self.stack.push(v);
    }

    fn pop(&mut self, at: usize) -> Result<V> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.corrupt(at, "stack underflow"));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self, at: usize) -> Result<&V> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.corrupt(at, "stack underflow"));
        }
        Ok(self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<V>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt(at, "MARK expected"))?;
        Ok(self.stack.split_off(mark))
    }

    fn new_container(&mut self, v: V) -> V {
        self.arena.push(v.clone());
        v
    }

    fn tuple(&mut self, items: Vec<V>) -> V {
        self.new_container(V::Tuple(Rc::new(RefCell::new(items))))
    }

    fn list(&mut self, items: Vec<V>) -> V {
        self.new_container(V::List(Rc::new(RefCell::new(items))))
    }

    fn dict(&mut self, d: DictObj) -> V {
        self.new_container(V::Dict(Rc::new(RefCell::new(d))))
    }

    fn set(&mut self, d: DictObj) -> V {
        self.new_container(V::Set(Rc::new(RefCell::new(d))))
    }

    fn key(&self, at: usize, k: &V) -> Result<HKey> {
        HKey::of(k, 0).map_err(|m| self.corrupt(at, m))
    }

    fn set_items(&mut self, at: usize, target: &V, items: Vec<V>) -> Result<()> {
        if items.len() % 2 == 1 {
            return Err(self.corrupt(at, "odd number of items for SETITEMS"));
        }
        let V::Dict(d) = target else {
            return Err(self.corrupt(
                at,
                format!("SETITEM(S) on a {}, not a dict", target.type_name()),
            ));
        };
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((self.key(at, &k)?, k, v));
        }
        let mut d = d
            .try_borrow_mut()
            .map_err(|_| self.corrupt(at, "self-referential dict"))?;
        for (h, k, v) in pairs {
            d.insert(h, k, v);
        }
        Ok(())
    }

    fn add_items(&mut self, at: usize, target: &V, items: Vec<V>) -> Result<()> {
        let V::Set(s) = target else {
            return Err(self.corrupt(
                at,
                format!("ADDITEMS on a {}, not a set", target.type_name()),
            ));
        };
        let keyed = items
            .into_iter()
            .map(|v| Ok((self.key(at, &v)?, v)))
            .collect::<Result<Vec<_>>>()?;
        let mut s = s
            .try_borrow_mut()
            .map_err(|_| self.corrupt(at, "self-referential set"))?;
        for (h, v) in keyed {
            s.insert(h, v, V::None);
        }
        Ok(())
    }

    fn set_from(&mut self, at: usize, items: Vec<V>) -> Result<V> {
        let mut d = DictObj::default();
        for v in items {
            d.insert(self.key(at, &v)?, v, V::None);
        }
        Ok(self.set(d))
    }

    /// The items of an iterable argument (tuple, list or set).
    fn items_of(&self, at: usize, v: &V) -> Result<Vec<V>> {
        let err = || self.corrupt(at, "self-referential container");
        Ok(match v {
            V::Tuple(c) | V::List(c) => c.try_borrow().map_err(|_| err())?.clone(),
            V::Set(c) => c
                .try_borrow()
                .map_err(|_| err())?
                .entries
                .iter()
                .map(|(k, _)| k.clone())
                .collect(),
            other => {
                return Err(self.corrupt(
                    at,
                    format!("expected a tuple, list or set, got a {}", other.type_name()),
                ))
            }
        })
    }

    fn global(&self, module: &str, name: &str) -> Result<V> {
        // Python 2 names written by protocols < 3 (what Python's fix_imports maps back).
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            other => other,
        };
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("collections", "Counter") => Global::Counter,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", "Size") => Global::Size,
            ("torch", "device") => Global::Device,
            ("_codecs", "encode") => Global::Encode,
            ("builtins", "set") => Global::Set,
            ("builtins", "frozenset") => Global::FrozenSet,
            ("builtins", "bytes") => Global::Bytes,
            ("builtins", "bytearray") => Global::Bytearray,
            ("torch" | "torch.storage", n) if Dtype::from_storage_class(n).is_some() => {
                Global::Storage(Dtype::from_storage_class(n).expect("checked"))
            }
            ("torch", n) if DTYPE_NAMES.contains(&n) => return Ok(V::Dtype(Rc::from(n))),
            ("torch.jit._pickle", n)
                if self.script
                    && matches!(
                        n,
                        "build_intlist"
                            | "build_doublelist"
                            | "build_boollist"
                            | "build_tensorlist"
                            | "build_genericlist"
                            | "restore_type_tag"
                    ) =>
            {
                Global::JitIdentity
            }
            (m, _) if self.script && (m == "__torch__" || m.starts_with("__torch__.")) => {
                Global::Class
            }
            _ if self.script => {
                return Err(Error::checkpoint(
                    self.path,
                    format!(
                        "TorchScript module holds `{module}.{name}`, which rustworthy does not \
                         read (modules here hold float32, float64, integer and bool tensors; \
                         quantized and complex tensors are not supported)"
                    ),
                ))
            }
            _ => return Err(Error::checkpoint(self.path, refused(module, name))),
        };
        Ok(V::Global(g))
    }

    fn int_of(&self, at: usize, v: &V, what: &str) -> Result<i64> {
        match v {
            V::Int(i) => Ok(*i),
            V::Bool(b) => Ok(*b as i64),
            other => Err(self.corrupt(
                at,
                format!("{what} must be an int, got a {}", other.type_name()),
            )),
        }
    }

    fn ints_of(&self, at: usize, v: &V, what: &str) -> Result<Vec<i64>> {
        self.items_of(at, v)?
            .iter()
            .map(|x| self.int_of(at, x, what))
            .collect()
    }

    fn str_of(&self, at: usize, v: &V, what: &str) -> Result<Rc<str>> {
        match v {
            V::Str(s) => Ok(s.clone()),
            V::Bytes(b) => std::str::from_utf8(b)
                .map(Rc::from)
                .map_err(|_| self.corrupt(at, format!("{what} is not UTF-8"))),
            other => Err(self.corrupt(
                at,
                format!("{what} must be a str, got a {}", other.type_name()),
            )),
        }
    }

    /// Applies an accepted global to its arguments (REDUCE / NEWOBJ).
    fn call(&mut self, at: usize, f: &V, args: Vec<V>) -> Result<V> {
        let V::Global(g) = f else {
            return Err(self.corrupt(at, format!("cannot call a {}", f.type_name())));
        };
        let g = *g;
        let bad_args = |s: &Self| {
            s.corrupt(
                at,
                format!("unexpected arguments ({}) for `{g}`", args.len()),
            )
        };
        match g {
            Global::OrderedDict | Global::Counter => {
                let mut d = DictObj::default();
                match args.as_slice() {
                    [] => {}
                    [V::Dict(src)] => {
                        let src = src
                            .try_borrow()
                            .map_err(|_| self.corrupt(at, "self-referential dict"))?;
                        for (k, v) in src.entries.iter() {
                            d.insert(self.key(at, k)?, k.clone(), v.clone());
                        }
                    }
                    [items @ (V::List(_) | V::Tuple(_))] => {
                        for pair in self.items_of(at, items)? {
                            let kv = self.items_of(at, &pair)?;
                            let [k, v] = <[V; 2]>::try_from(kv).map_err(|_| bad_args(self))?;
                            d.insert(self.key(at, &k)?, k, v);
                        }
                    }
                    _ => return Err(bad_args(self)),
                }
                Ok(self.dict(d))
            }
            Global::Set | Global::FrozenSet => match args.as_slice() {
                [] => self.set_from(at, Vec::new()),
                [items] => {
                    let items = self.items_of(at, items)?;
                    self.set_from(at, items)
                }
                _ => Err(bad_args(self)),
            },
            Global::Bytes | Global::Bytearray => match args.as_slice() {
                [] => Ok(V::Bytes(Rc::from(Vec::new()))),
                [V::Bytes(b)] => Ok(V::Bytes(b.clone())),
                [s @ V::Str(_), enc] => self.encode(at, s, Some(enc)),
                _ => Err(bad_args(self)),
            },
            Global::Encode => match args.as_slice() {
                [s] => self.encode(at, s, None),
                [s, enc] => self.encode(at, s, Some(enc)),
                _ => Err(bad_args(self)),
            },
            Global::Size => match args.as_slice() {
                [] => Ok(self.tuple(Vec::new())),
                [dims] => {
                    let dims = self.ints_of(at, dims, "a torch.Size entry")?;
                    let items = dims.into_iter().map(V::Int).collect();
                    Ok(self.tuple(items))
                }
                _ => Err(bad_args(self)),
            },
            Global::Device => match args.as_slice() {
                [V::Str(s)] => Ok(V::Device(s.clone())),
                [V::Str(s), V::Int(i)] => Ok(V::Device(Rc::from(format!("{s}:{i}")))),
                [V::Str(s), V::None] => Ok(V::Device(s.clone())),
                _ => Err(bad_args(self)),
            },
            Global::RebuildTensorV2 => {
                if !(6..=7).contains(&args.len()) {
                    return Err(bad_args(self));
                }
                let V::Storage(storage) = &args[0] else {
                    return Err(self.corrupt(
                        at,
                        format!("tensor storage is a {}, not a storage", args[0].type_name()),
                    ));
                };
                let offset = self.int_of(at, &args[1], "storage offset")?;
                let size = self.ints_of(at, &args[2], "tensor size")?;
                let stride = self.ints_of(at, &args[3], "tensor stride")?;
                self.check_view(at, storage, offset, &size, &stride)?;
                Ok(V::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                match args.first() {
                    Some(t @ V::Tensor(_)) if args.len() == n => Ok(t.clone()),
                    _ => Err(bad_args(self)),
                }
            }
            Global::Storage(_) => Err(self.corrupt(at, "a storage class cannot be called")),
            Global::Class => Ok(V::Object),
            Global::JitIdentity => match args.first() {
                Some(v) => Ok(v.clone()),
                None => Err(bad_args(self)),
            },
        }
    }

    fn encode(&mut self, at: usize, s: &V, enc: Option<&V>) -> Result<V> {
        let s = self.str_of(at, s, "the string to encode")?;
        let enc = match enc {
            Some(e) => self.str_of(at, e, "the encoding")?.to_ascii_lowercase(),
            None => "utf-8".into(),
        };
        let bytes: Vec<u8> = match enc.as_str() {
            "latin1" | "latin-1" | "iso-8859-1" => s
                .chars()
                .map(|c| u8::try_from(c as u32))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| self.corrupt(at, "character outside latin-1"))?,
            "utf-8" | "utf8" | "ascii" => s.as_bytes().to_vec(),
            other => return Err(self.corrupt(at, format!("unsupported encoding `{other}`"))),
        };
        Ok(V::Bytes(Rc::from(bytes)))
    }

    /// Checks a view of `storage` stays inside it: sizes, strides and offset non-negative, and
    /// the largest element index below the storage's element count.
    fn check_view(
        &self,
        at: usize,
        storage: &StorageRef,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<()> {
        let bad = |m: String| self.corrupt(at, format!("tensor on storage `{}`: {m}", storage.key));
        if size.len() != stride.len() {
            return Err(bad(format!(
                "{} sizes but {} strides",
                size.len(),
                stride.len()
            )));
        }
        if size.len() > 64 {
            return Err(bad(format!("{} dimensions", size.len())));
        }
        if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
            return Err(bad(format!(
                "negative offset, size or stride (offset {offset}, size {size:?}, stride \
                 {stride:?})"
            )));
        }
        let numel = storage.numel as i128;
        if size.contains(&0) {
            if offset as i128 > numel {
                return Err(bad(format!(
                    "offset {offset} past the storage's {numel} elements"
                )));
            }
            return Ok(());
        }
        let mut last = offset as i128;
        for (&n, &s) in size.iter().zip(stride) {
            last += (n as i128 - 1) * s as i128;
            if last >= numel {
                return Err(bad(format!(
                    "size {size:?}, stride {stride:?} and offset {offset} reach past the storage's \
                     {numel} elements"
                )));
            }
        }
        // A 0-dim tensor (no loop above) still needs its one element.
        if last >= numel {
            return Err(bad(format!(
                "offset {offset} is past the storage's {numel} elements"
            )));
        }
        Ok(())
    }

    fn persistent_load(&mut self, at: usize, pid: V) -> Result<V> {
        if self.mode == PidMode::None {
            return Err(self.corrupt(at, "unexpected persistent id"));
        }
        let items = match &pid {
            V::Tuple(_) => self.items_of(at, &pid)?,
            other => {
                return Err(self.corrupt(
                    at,
                    format!("persistent id is a {}, not a tuple", other.type_name()),
                ))
            }
        };
        let want = if self.mode == PidMode::Zip { 5 } else { 6 };
        if items.len() != want {
            return Err(self.corrupt(
                at,
                format!("persistent id has {} fields, expected {want}", items.len()),
            ));
        }
        let kind = self.str_of(at, &items[0], "persistent id type")?;
        if &*kind != "storage" {
            return Err(self.corrupt(
                at,
                format!("unsupported persistent id `{kind}` (only storages are read)"),
            ));
        }
        let V::Global(Global::Storage(dtype)) = items[1] else {
            return Err(self.corrupt(at, "persistent id without a storage type"));
        };
        let key = self.str_of(at, &items[2], "storage key")?.to_string();
        let _location = self.str_of(at, &items[3], "storage location")?;
        let numel = self.int_of(at, &items[4], "storage size")?;
        let numel = u64::try_from(numel).map_err(|_| self.corrupt(at, "negative storage size"))?;
        if self.mode == PidMode::Legacy && !matches!(items[5], V::None) {
            return Err(self.corrupt(at, "storage views of the pre-1.0 format are not supported"));
        }
        if let Some(s) = self.storages.get(&key) {
            if s.dtype != dtype || s.numel != numel {
                return Err(self.corrupt(
                    at,
                    format!("storage `{key}` is declared twice with different types or sizes"),
                ));
            }
            return Ok(V::Storage(s.clone()));
        }
        let s = Rc::new(StorageRef {
            key: key.clone(),
            dtype,
            numel,
        });
        self.storages.insert(key, s.clone());
        Ok(V::Storage(s))
    }

    /// Runs the pickle from the current position to its STOP opcode; returns the result.
    fn load(&mut self) -> Result<V> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.corrupt(at, format!("unsupported pickle protocol {v}")));
                    }
                }
                // FRAME: a length hint; the data it announces must be there.
                0x95 => {
                    let n = self.len_u64(at)?;
                    if n > self.data.len() - self.pos {
                        return Err(self.corrupt(at, "frame past the end of the data (truncated?)"));
                    }
                }
                // STOP
                b'.' => {
                    let v = self.pop(at)?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b')' => {
                    let t = self.tuple(Vec::new());
                    self.push(t);
                }
                b']' => {
                    let l = self.list(Vec::new());
                    self.push(l);
                }
                b'}' => {
                    let d = self.dict(DictObj::default());
                    self.push(d);
                }
                0x8f => {
                    let s = self.set(DictObj::default());
                    self.push(s);
                }
                b'N' => self.push(V::None),
                0x88 => self.push(V::Bool(true)),
                0x89 => self.push(V::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.push(V::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(V::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.push(V::Int(v as i64));
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.le::<4>()?);
                        usize::try_from(n).map_err(|_| self.corrupt(at, "negative LONG4 length"))?
                    };
                    let b = self.take(n)?;
                    self.push(long_value(b));
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.le::<8>()?);
                    self.push(V::Float(v));
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, and the protocol-2 byte strings
                // (decoded as UTF-8, as torch.load does).
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(s);
                }
                b'X' | b'T' => {
                    let n = u32::from_le_bytes(self.le::<4>()?) as usize;
                    let s = self.string(n)?;
                    self.push(s);
                }
                0x8d => {
                    let n = self.len_u64(at)?;
                    let s = self.string(n)?;
                    self.push(s);
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.bytes(n)?;
                    self.push(b);
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le::<4>()?) as usize;
                    let b = self.bytes(n)?;
                    self.push(b);
                }
                0x8e | 0x96 => {
                    let n = self.len_u64(at)?;
                    let b = self.bytes(n)?;
                    self.push(b);
                }
                // NEXT_BUFFER: out-of-band data is never part of a file.
                0x97 => return Err(self.corrupt(at, "out-of-band buffers are not supported")),
                // READONLY_BUFFER
                0x98 => {
                    self.top(at)?;
                }
                // TUPLE, TUPLE1-3
                b't' => {
                    let items = self.pop_mark(at)?;
                    let t = self.tuple(items);
                    self.push(t);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    let t = self.tuple(items);
                    self.push(t);
                }
                // LIST, APPEND, APPENDS
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let l = self.list(items);
                    self.push(l);
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop(at)?]
                    } else {
                        self.pop_mark(at)?
                    };
                    let target = self.top(at)?.clone();
                    match &target {
                        V::List(l) => l
                            .try_borrow_mut()
                            .map_err(|_| self.corrupt(at, "self-referential list"))?
                            .extend(items),
                        other => {
                            return Err(self.corrupt(
                                at,
                                format!("APPEND(S) on a {}, not a list", other.type_name()),
                            ))
                        }
                    }
                }
                // DICT, SETITEM, SETITEMS
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let d = self.dict(DictObj::default());
                    self.set_items(at, &d, items)?;
                    self.push(d);
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.set_items(at, &target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    self.set_items(at, &target, items)?;
                }
                // ADDITEMS, FROZENSET
                0x90 => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    self.add_items(at, &target, items)?;
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    let s = self.set_from(at, items)?;
                    self.push(s);
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => self.u8()? as u32,
                        b'r' => u32::from_le_bytes(self.le::<4>()?),
                        _ => u32::try_from(self.memo.len())
                            .map_err(|_| self.corrupt(at, "memo too large"))?,
                    };
                    let v = self.top(at)?.clone();
                    self.memo.insert(idx, v);
                }
                // BINGET, LONG_BINGET
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        u32::from_le_bytes(self.le::<4>()?)
                    };
                    let v = self.memo.get(&idx).cloned().ok_or_else(|| {
                        self.corrupt(at, format!("memo entry {idx} is undefined"))
                    })?;
                    self.push(v);
                }
                // POP, POP_MARK, DUP
                b'0' => {
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.stack.pop();
                    } else {
                        self.pop_mark(at)?;
                    }
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.push(v);
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (V::Str(module), V::Str(name)) = (&module, &name) else {
                        return Err(self.corrupt(at, "STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                // INST names a class inline: refuse it by name.
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    return Err(Error::checkpoint(self.path, refused(module, name)));
                }
                // REDUCE, NEWOBJ, NEWOBJ_EX
                b'R' | 0x81 | 0x92 => {
                    if op == 0x92 {
                        let kwargs = self.pop(at)?;
                        let empty = match &kwargs {
                            V::Dict(d) => d
                                .try_borrow()
                                .map(|d| d.entries.is_empty())
                                .unwrap_or(false),
                            _ => false,
                        };
                        if !empty {
                            return Err(self.corrupt(at, "NEWOBJ_EX with keyword arguments"));
                        }
                    }
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    let args = match &args {
                        V::Tuple(_) => self.items_of(at, &args)?,
                        other => {
                            return Err(self.corrupt(
                                at,
                                format!("call arguments are a {}, not a tuple", other.type_name()),
                            ))
                        }
                    };
                    let v = self.call(at, &f, args)?;
                    self.push(v);
                }
                // BUILD: only the attributes PyTorch puts on an OrderedDict (`_metadata`),
                // which are dropped.
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?;
                    match (target, &state) {
                        (V::Dict(_), V::Dict(_) | V::None) => {}
                        (V::Object, _) if self.script => {}
                        (t, s) => {
                            return Err(self.corrupt(
                                at,
                                format!(
                                    "BUILD of a {} with a {} state is not supported",
                                    t.type_name(),
                                    s.type_name()
                                ),
                            ))
                        }
                    }
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent_load(at, pid)?;
                    self.push(v);
                }
                // OBJ and the extension registry call code too.
                b'o' | 0x82..=0x84 => {
                    return Err(Error::checkpoint(
                        self.path,
                        format!(
                            "refused opcode 0x{op:02x} at byte {at}: it builds arbitrary objects; \
                             nothing from the file was executed"
                        ),
                    ))
                }
                other => {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "unsupported or invalid opcode 0x{other:02x} (torch.save writes pickle \
                             protocols 2-5)"
                        ),
                    ))
                }
            }
        }
    }

    /// Converts an interpreter value into a [`PickleValue`], rebuilding tensors from the
    /// storages `source` provides. At most `MAX_DEPTH` levels and a node budget proportional to
    /// the pickle's size (shared sub-structures cannot blow it up).
    fn materialize(
        &self,
        v: &V,
        source: &mut dyn FnMut(&StorageRef) -> Result<Tensor>,
        pickle_len: usize,
    ) -> Result<PickleValue> {
        let mut budget = pickle_len.saturating_mul(4).saturating_add(1024);
        self.build(v, source, 0, &mut budget)
    }

    fn build(
        &self,
        v: &V,
        source: &mut dyn FnMut(&StorageRef) -> Result<Tensor>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<PickleValue> {
        let fail = |m: &str| Error::corrupt(self.path, format!("pickle: {m}"));
        if depth > MAX_DEPTH {
            return Err(fail(&format!(
                "containers nested deeper than {MAX_DEPTH} levels (or self-referential)"
            )));
        }
        // Every value costs one unit plus its bytes, so memo-shared strings cannot multiply
        // memory either.
        let cost = 1 + match v {
            V::Str(s) | V::Dtype(s) | V::Device(s) => s.len(),
            V::Bytes(b) | V::BigInt(b) => b.len(),
            _ => 0,
        };
        *budget = budget
            .checked_sub(cost)
            .ok_or_else(|| fail("too many values (shared sub-structures repeated too often)"))?;
        let busy = || fail("self-referential container");
        let mut seq = |items: &[V], budget: &mut usize| -> Result<Vec<PickleValue>> {
            items
                .iter()
                .map(|x| self.build(x, source, depth + 1, budget))
                .collect()
        };
        Ok(match v {
            V::None => PickleValue::None,
            V::Bool(b) => PickleValue::Bool(*b),
            V::Int(i) => PickleValue::Int(*i),
            V::BigInt(b) => PickleValue::BigInt(b.to_vec()),
            V::Float(f) => PickleValue::Float(*f),
            V::Str(s) => PickleValue::Str(s.to_string()),
            V::Bytes(b) => PickleValue::Bytes(b.to_vec()),
            V::Dtype(s) => PickleValue::Dtype(s.to_string()),
            V::Device(s) => PickleValue::Device(s.to_string()),
            V::Tuple(t) => PickleValue::Tuple(seq(&t.try_borrow().map_err(|_| busy())?, budget)?),
            V::List(l) => PickleValue::List(seq(&l.try_borrow().map_err(|_| busy())?, budget)?),
            V::Set(s) => {
                let s = s.try_borrow().map_err(|_| busy())?;
                let keys: Vec<V> = s.entries.iter().map(|(k, _)| k.clone()).collect();
                PickleValue::Set(seq(&keys, budget)?)
            }
            V::Dict(d) => {
                let d = d.try_borrow().map_err(|_| busy())?;
                let mut out = Vec::with_capacity(d.entries.len());
                for (k, x) in &d.entries {
                    let k = self.build(k, source, depth + 1, budget)?;
                    let x = self.build(x, source, depth + 1, budget)?;
                    out.push((k, x));
                }
                PickleValue::Dict(out)
            }
            V::Storage(s) => PickleValue::Tensor(source(s)?),
            V::Object => return Err(fail("a TorchScript object in a torch.save file")),
            V::Tensor(t) => {
                let storage = source(&t.storage)?;
                // The view must lie inside its storage: checked here, with the file's name,
                // before libtorch is asked for it.
                let extent = view_extent(&t.size, &t.stride, t.offset).ok_or_else(|| {
                    fail(&format!(
                        "tensor view (size {:?}, stride {:?}, offset {}) is invalid",
                        t.size, t.stride, t.offset
                    ))
                })?;
                if extent > storage.numel() as u128 {
                    return Err(fail(&format!(
                        "tensor view (size {:?}, stride {:?}, offset {}) needs {extent} elements but its storage has {}",
                        t.size,
                        t.stride,
                        t.offset,
                        storage.numel()
                    )));
                }
                PickleValue::Tensor(storage.f_as_strided(
                    t.size.as_slice(),
                    t.stride.as_slice(),
                    t.offset,
                )?)
            }
            V::Global(g) => {
                return Err(fail(&format!("a bare global `{g}` is not a value")));
            }
        })
    }
}

/// Elements of the storage a strided view touches (offset + the farthest element + 1; 0 for an
/// empty view), or `None` for negative sizes, strides or offset, or mismatched ranks.
fn view_extent(size: &[i64], stride: &[i64], offset: i64) -> Option<u128> {
    if size.len() != stride.len() || offset < 0 {
        return None;
    }
    if size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
        return None;
    }
    if size.contains(&0) {
        return Some(0);
    }
    let far: u128 = size
        .iter()
        .zip(stride)
        .map(|(&n, &s)| (n as u128 - 1) * s as u128)
        .sum();
    Some(offset as u128 + far + 1)
}

/// A LONG1/LONG4 payload: little-endian two's complement.
fn long_value(b: &[u8]) -> V {
    if b.is_empty() {
        return V::Int(0);
    }
    if b.len() <= 8 {
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xFF } else { 0 };
        let mut buf = [fill; 8];
        buf[..b.len()].copy_from_slice(b);
        return V::Int(i64::from_le_bytes(buf));
    }
    V::BigInt(Rc::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> Result<PickleValue> {
        let path = Path::new("test.pkl");
        let mut up = Unpickler::new(path, p, PidMode::None);
        let v = up.load()?;
        let mut none = |_: &StorageRef| -> Result<Tensor> { unreachable!() };
        up.materialize(&v, &mut none, p.len())
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn plain_values() {
        // {'a': [1, -2, 3.5, None, True], 'b': (b'xy', 'é'), 7: 2**70}
        let p = b"\x80\x02}q\x00(\
            X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88e\
            X\x01\x00\x00\x00bC\x02xyX\x02\x00\x00\x00\xc3\xa9\x86\
            K\x07\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40u.";
        let v = run(p).unwrap();
        let PickleValue::Dict(d) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(d.len(), 3);
        let PickleValue::List(a) = v.get("a").unwrap() else {
            panic!()
        };
        assert!(matches!(a[0], PickleValue::Int(1)));
        assert!(matches!(a[1], PickleValue::Int(-2)));
        assert!(matches!(a[2], PickleValue::Float(f) if f == 3.5));
        assert!(matches!(a[3], PickleValue::None));
        assert!(matches!(a[4], PickleValue::Bool(true)));
        let PickleValue::Tuple(b) = v.get("b").unwrap() else {
            panic!()
        };
        assert!(matches!(&b[0], PickleValue::Bytes(x) if x == b"xy"));
        assert!(matches!(&b[1], PickleValue::Str(s) if s == "é"));
        assert!(matches!(&d[2].0, PickleValue::Int(7)));
        assert!(matches!(&d[2].1, PickleValue::BigInt(b) if b.len() == 9));
    }

    #[test]
    fn memo_aliases_see_later_appends() {
        // l = []; d = {'x': l, 'y': l}; l gets [1] after both references are stored.
        let p = b"\x80\x02}(X\x01\x00\x00\x00x]q\x00X\x01\x00\x00\x00yh\x00uh\x00K\x01a0.";
        let v = run(p).unwrap();
        for k in ["x", "y"] {
            let PickleValue::List(l) = v.get(k).unwrap() else {
                panic!()
            };
            assert_eq!(l.len(), 1, "{k}");
        }
    }

    #[test]
    fn refuses_globals_by_name() {
        for (p, name) in [
            (
                &b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."[..],
                "os.system",
            ),
            (&b"\x80\x02c__builtin__\neval\n."[..], "builtins.eval"),
            (
                &b"\x80\x04\x8c\x05posix\x8c\x06system\x93."[..],
                "posix.system",
            ),
            (&b"\x80\x02(ios\nsystem\n."[..], "os.system"),
        ] {
            let e = run(p).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("refused global `{name}`")), "{msg}");
        }
    }

    #[test]
    fn cycles_and_deep_nesting_are_errors_not_crashes() {
        // l = []; l.append(l)
        let cyc = b"\x80\x02]q\x00h\x00a.";
        assert!(run(cyc).is_err());
        // 100k nested lists: interpreted iteratively, refused at materialization, dropped
        // without recursion.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        let e = run(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // Exponential sharing: each level holds the previous one twice.
        let mut wide = b"\x80\x02]q\x00".to_vec();
        for i in 0..60u8 {
            wide.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        wide.push(b'.');
        let e = run(&wide).unwrap_err().to_string();
        assert!(e.contains("too many values"), "{e}");
    }

    #[test]
    fn shared_strings_cannot_multiply_memory() {
        // s = 'x' * 10000; [s] * 5000 would be 50 MB from a 20 kB pickle.
        let mut p = b"\x80\x02X\x10\x27\x00\x00".to_vec();
        p.extend(std::iter::repeat_n(b'x', 10_000));
        p.extend_from_slice(b"q\x000(");
        for _ in 0..5000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"l.");
        let e = run(&p).unwrap_err().to_string();
        assert!(e.contains("too many values"), "{e}");
    }

    #[test]
    fn truncation_is_an_error() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.";
        for cut in 0..p.len() {
            assert!(run(&p[..cut]).is_err(), "cut {cut}");
        }
        assert!(run(p).is_ok());
    }
}
