//! The TorchScript archive (the zip `torch.jit.save` writes) and the one edit made to it.
//!
//! libtorch's C API, as `tch` exposes it, lists a module's parameters but not its buffers. To
//! reach the batch-norm running statistics as live tensors, the archive is rewritten before it
//! is loaded: in the code of every class, the tensor buffers named in `__buffers__` move to
//! `__parameters__`, so the loaded module lists them among its parameters (they keep
//! `requires_grad = false` and behave exactly as before; only the listing changes). The edit is
//! undone when a module is written back ([`unpatch`]).
//!
//! This file holds what that needs and nothing more: a zip reader (stored and deflated entries,
//! zip64 end records), an inflater, CRC-32, and a zip writer (stored entries, data aligned to 64
//! bytes as PyTorch aligns them).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// One file of a zip archive, as the central directory describes it.
pub(crate) struct Entry {
    pub name: String,
    method: u16,
    crc: u32,
    comp_size: u64,
    size: u64,
    local_offset: u64,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| "truncated zip archive".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "truncated zip archive".to_string())
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    Ok(u32_at(b, at)? as u64 | (u32_at(b, at + 4)? as u64) << 32)
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const EOCD64_LOCATOR: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Whether `bytes` starts like a zip archive.
pub(crate) fn looks_like_zip(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32_at(bytes, 0).ok() == Some(LOCAL)
}

/// The entries of the zip archive `bytes`, in central-directory order.
pub(crate) fn entries(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let lo = bytes.len().saturating_sub(22 + 65535);
    let eocd = (lo..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(bytes, i).ok() == Some(EOCD))
        .ok_or("no end-of-central-directory record (not a zip archive, or truncated)")?;
    let mut count = u16_at(bytes, eocd + 10)? as u64;
    let mut cd_offset = u32_at(bytes, eocd + 16)? as u64;
    if count == 0xFFFF || cd_offset == 0xFFFF_FFFF {
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(bytes, l).ok() == Some(EOCD64_LOCATOR))
            .ok_or("zip64 archive without its end-record locator")?;
        let at = usize::try_from(u64_at(bytes, loc + 8)?).map_err(|e| e.to_string())?;
        if u32_at(bytes, at)? != EOCD64 {
            return Err("bad zip64 end-of-central-directory record".into());
        }
        count = u64_at(bytes, at + 32)?;
        cd_offset = u64_at(bytes, at + 48)?;
    }
    let mut at = usize::try_from(cd_offset).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32_at(bytes, at)? != CENTRAL {
            return Err("corrupt central directory".into());
        }
        let method = u16_at(bytes, at + 10)?;
        let crc = u32_at(bytes, at + 16)?;
        let mut comp_size = u32_at(bytes, at + 20)? as u64;
        let mut size = u32_at(bytes, at + 24)? as u64;
        let name_len = u16_at(bytes, at + 28)? as usize;
        let extra_len = u16_at(bytes, at + 30)? as usize;
        let comment_len = u16_at(bytes, at + 32)? as usize;
        let mut local_offset = u32_at(bytes, at + 42)? as u64;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or("truncated central directory")?;
        let name = String::from_utf8_lossy(name).into_owned();
        // zip64 extended information: the 0xFFFFFFFF fields, in this order.
        let mut e = at + 46 + name_len;
        let end = e + extra_len;
        while e + 4 <= end {
            let (id, len) = (u16_at(bytes, e)?, u16_at(bytes, e + 2)? as usize);
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut size, &mut comp_size, &mut local_offset] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(bytes, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        out.push(Entry {
            name,
            method,
            crc,
            comp_size,
            size,
            local_offset,
        });
        at = end + comment_len;
    }
    Ok(out)
}

/// The stored (possibly compressed) bytes of `e`.
fn raw<'a>(bytes: &'a [u8], e: &Entry) -> Result<&'a [u8], String> {
    let at = usize::try_from(e.local_offset).map_err(|x| x.to_string())?;
    if u32_at(bytes, at)? != LOCAL {
        return Err(format!("`{}`: bad local header", e.name));
    }
    let start = at + 30 + u16_at(bytes, at + 26)? as usize + u16_at(bytes, at + 28)? as usize;
    let len = usize::try_from(e.comp_size).map_err(|x| x.to_string())?;
    bytes
        .get(start..start + len)
        .ok_or_else(|| format!("`{}`: truncated data", e.name))
}

/// The uncompressed contents of `e`, CRC-checked.
pub(crate) fn contents(bytes: &[u8], e: &Entry) -> Result<Vec<u8>, String> {
    let data = raw(bytes, e)?;
    let out = match e.method {
        0 => data.to_vec(),
        8 => inflate(data, e.size as usize).map_err(|m| format!("`{}`: {m}", e.name))?,
        m => {
            return Err(format!(
                "`{}`: unsupported zip compression method {m}",
                e.name
            ))
        }
    };
    if out.len() as u64 != e.size || crc32(&out) != e.crc {
        return Err(format!(
            "`{}`: size or CRC mismatch (corrupt archive)",
            e.name
        ));
    }
    Ok(out)
}

/// One file to write: name and uncompressed contents.
pub(crate) struct NewEntry {
    pub name: String,
    pub data: Vec<u8>,
}

/// A zip archive of stored entries whose data start at multiples of 64 bytes, as PyTorch
/// writes them. Archives beyond the classic zip limits (4 GiB, 65535 entries) are refused.
pub(crate) fn write(files: &[NewEntry]) -> Result<Vec<u8>, String> {
    const ALIGN: usize = 64;
    let too_big = || "archive over 4 GiB or 65535 files: not supported".to_string();
    let mut out = Vec::new();
    let mut central = Vec::new();
    for f in files {
        let offset = u32::try_from(out.len()).map_err(|_| too_big())?;
        let size = u32::try_from(f.data.len()).map_err(|_| too_big())?;
        let name = f.name.as_bytes();
        let crc = crc32(&f.data);
        // Padding extra field ("FB", as PyTorch) so the data start is aligned.
        let base = out.len() + 30 + name.len() + 4;
        let pad = (ALIGN - base % ALIGN) % ALIGN;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::with_capacity(46 + name.len());
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0x0800u16.to_le_bytes()); // UTF-8 names
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h
        };
        let mut local = header(LOCAL, false);
        local.extend(((4 + pad) as u16).to_le_bytes());
        local.extend(name);
        local.extend(0x4246u16.to_le_bytes());
        local.extend((pad as u16).to_le_bytes());
        local.extend(std::iter::repeat_n(b'Z', pad));
        out.extend(local);
        out.extend(&f.data);
        let mut c = header(CENTRAL, true);
        c.extend(0u16.to_le_bytes()); // extra
        c.extend(0u16.to_le_bytes()); // comment
        c.extend(0u16.to_le_bytes()); // disk
        c.extend(0u16.to_le_bytes()); // internal attributes
        c.extend(0u32.to_le_bytes()); // external attributes
        c.extend(offset.to_le_bytes());
        c.extend(name);
        central.extend(c);
    }
    let n = u16::try_from(files.len()).map_err(|_| too_big())?;
    let cd_offset = u32::try_from(out.len()).map_err(|_| too_big())?;
    let cd_size = u32::try_from(central.len()).map_err(|_| too_big())?;
    out.extend(central);
    out.extend(EOCD.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    u32::try_from(out.len()).map_err(|_| too_big())?;
    Ok(out)
}

/// CRC-32 (IEEE), as zip uses it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
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
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Bits of a deflate stream, least significant first.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    count: u32,
}

impl Bits<'_> {
    fn need(&mut self, n: u32) -> Result<(), String> {
        while self.count < n {
            let b = *self.data.get(self.pos).ok_or("truncated deflate stream")?;
            self.pos += 1;
            self.buf |= (b as u64) << self.count;
            self.count += 8;
        }
        Ok(())
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        if n == 0 {
            return Ok(0);
        }
        self.need(n)?;
        let v = (self.buf & ((1u64 << n) - 1)) as u32;
        self.buf >>= n;
        self.count -= n;
        Ok(v)
    }

    fn align_to_byte(&mut self) {
        let r = self.count % 8;
        self.buf >>= r;
        self.count -= r;
    }
}

/// A canonical Huffman code: number of codes of each length and symbols in code order.
struct Huffman {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[l as usize] += 1;
        }
        count[0] = 0;
        let mut offs = [0u16; 16];
        for l in 1..15 {
            offs[l + 1] = offs[l] + count[l];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        Huffman { count, symbol }
    }

    fn decode(&self, b: &mut Bits) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= b.bits(1)? as i32;
            let count = self.count[len] as i32;
            if code - first < count {
                return self
                    .symbol
                    .get((index + code - first) as usize)
                    .copied()
                    .ok_or_else(|| "bad Huffman code".to_string());
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("bad Huffman code".into())
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Decompresses a raw deflate stream (RFC 1951).
/// Inflates `data`, refusing output beyond `limit` bytes (the size the archive declares), so
/// neither a false size nor a deflate bomb can allocate more than the entry claims, and the
/// claim itself is not trusted for the first allocation.
pub(crate) fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    // Deflate expands at most about 1032:1.
    let mut out: Vec<u8> = Vec::with_capacity(limit.min(data.len().saturating_mul(1032) + 64));
    let over = |n: usize| -> Result<(), String> {
        if n > limit {
            Err(format!("inflates past its declared size of {limit} bytes"))
        } else {
            Ok(())
        }
    };
    let mut b = Bits {
        data,
        pos: 0,
        buf: 0,
        count: 0,
    };
    loop {
        let last = b.bits(1)? == 1;
        match b.bits(2)? {
            0 => {
                b.align_to_byte();
                let len = b.bits(16)?;
                let nlen = b.bits(16)?;
                if len != !nlen & 0xFFFF {
                    return Err("bad stored block length".into());
                }
                over(out.len() + len as usize)?;
                for _ in 0..len {
                    out.push(b.bits(8)? as u8);
                }
            }
            kind @ (1 | 2) => {
                let (lit, dist) = if kind == 1 {
                    let mut l = [8u8; 288];
                    l[144..256].fill(9);
                    l[256..280].fill(7);
                    (Huffman::new(&l), Huffman::new(&[5u8; 30]))
                } else {
                    dynamic_tables(&mut b)?
                };
                loop {
                    let sym = lit.decode(&mut b)? as usize;
                    if sym < 256 {
                        over(out.len() + 1)?;
                        out.push(sym as u8);
                        continue;
                    }
                    if sym == 256 {
                        break;
                    }
                    let i = sym - 257;
                    if i >= 29 {
                        return Err("bad length code".into());
                    }
                    let len = LEN_BASE[i] as usize + b.bits(LEN_EXTRA[i] as u32)? as usize;
                    let d = dist.decode(&mut b)? as usize;
                    if d >= 30 {
                        return Err("bad distance code".into());
                    }
                    let back = DIST_BASE[d] as usize + b.bits(DIST_EXTRA[d] as u32)? as usize;
                    if back > out.len() {
                        return Err("distance too far back".into());
                    }
                    let start = out.len() - back;
                    over(out.len() + len)?;
                    for k in 0..len {
                        out.push(out[start + k]);
                    }
                }
            }
            _ => return Err("bad deflate block type".into()),
        }
        if last {
            return Ok(out);
        }
    }
}

fn dynamic_tables(b: &mut Bits) -> Result<(Huffman, Huffman), String> {
    const ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];
    let nlen = b.bits(5)? as usize + 257;
    let ndist = b.bits(5)? as usize + 1;
    let ncode = b.bits(4)? as usize + 4;
    if nlen > 286 || ndist > 30 {
        return Err("bad dynamic block counts".into());
    }
    let mut cl = [0u8; 19];
    for &o in &ORDER[..ncode] {
        cl[o] = b.bits(3)? as u8;
    }
    let clh = Huffman::new(&cl);
    let mut lengths = vec![0u8; nlen + ndist];
    let mut i = 0;
    while i < nlen + ndist {
        let sym = clh.decode(b)?;
        let (value, repeat) = match sym {
            0..=15 => (sym as u8, 1),
            16 => {
                let prev = *lengths
                    .get(i.wrapping_sub(1))
                    .filter(|_| i > 0)
                    .ok_or("repeat with no previous length")?;
                (prev, 3 + b.bits(2)? as usize)
            }
            17 => (0, 3 + b.bits(3)? as usize),
            _ => (0, 11 + b.bits(7)? as usize),
        };
        if i + repeat > nlen + ndist {
            return Err("too many code lengths".into());
        }
        lengths[i..i + repeat].fill(value);
        i += repeat;
    }
    Ok((
        Huffman::new(&lengths[..nlen]),
        Huffman::new(&lengths[nlen..]),
    ))
}

/// The `__parameters__`/`__buffers__` lists of one class before and after the edit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClassEdit {
    before: (Vec<String>, Vec<String>),
    after: (Vec<String>, Vec<String>),
}

/// Class edits keyed by `"<code file path below code/>::<class name>"`.
pub(crate) type Edits = BTreeMap<String, ClassEdit>;

fn parse_list(line: &str, key: &str) -> Option<Vec<String>> {
    let rest = line.trim_start().strip_prefix(key)?.trim_start();
    let inner = rest.strip_prefix('=')?.trim().strip_prefix('[')?;
    let inner = inner.strip_suffix(']')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .map(str::to_string)
        })
        .collect()
}

fn format_list(indent: &str, key: &str, names: &[String]) -> String {
    let mut s = format!("{indent}{key} = [");
    for n in names {
        let _ = write!(s, "\"{n}\", ");
    }
    s.push(']');
    s
}

/// Applies `edit` to the `__parameters__`/`__buffers__` lines of every class of a code file.
/// `edit(class, params, buffers, attribute types)` returns the new lists, or `None` to leave the
/// class as it is.
fn rewrite_classes(
    text: &str,
    mut edit: impl FnMut(
        &str,
        &[String],
        &[String],
        &BTreeMap<String, String>,
    ) -> Option<(Vec<String>, Vec<String>)>,
) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut changed = false;
    let mut i = 0;
    while i < lines.len() {
        let Some(class) = lines[i]
            .strip_prefix("class ")
            .and_then(|r| r.split(['(', ':']).next())
        else {
            i += 1;
            continue;
        };
        // The class header: lines indented by exactly two spaces, up to the first method.
        let mut j = i + 1;
        let (mut p_line, mut b_line) = (None, None);
        let mut types = BTreeMap::new();
        while j < lines.len() && lines[j].starts_with("  ") {
            let l = lines[j];
            if l.starts_with("  def ") || l.starts_with("   ") {
                break;
            }
            if let Some(v) = parse_list(l, "__parameters__") {
                p_line = Some((j, v));
            } else if let Some(v) = parse_list(l, "__buffers__") {
                b_line = Some((j, v));
            } else if let Some((name, ty)) = l.trim().split_once(" : ") {
                let ty = ty.split(" = ").next().unwrap_or(ty).trim();
                types.insert(name.trim().to_string(), ty.to_string());
            }
            j += 1;
        }
        if let (Some((pj, params)), Some((bj, buffers))) = (p_line, b_line) {
            if let Some((np, nb)) = edit(class.trim(), &params, &buffers, &types) {
                out[pj] = format_list("  ", "__parameters__", &np);
                out[bj] = format_list("  ", "__buffers__", &nb);
                changed = true;
            }
        }
        i = j.max(i + 1);
    }
    changed.then(|| out.join("\n"))
}

/// The path of a code file below `<archive>/code/`, or `None` for other entries.
fn code_path(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once("/code/")?;
    rest.ends_with(".py").then_some(rest)
}

/// Whether `name` is a TorchScript source-range table (`code/…/*.py.debug_pkl`).
fn is_debug_table(name: &str) -> bool {
    name.ends_with(".debug_pkl")
}

/// For one of the pickles libtorch unpickles when it loads a module (`<root>/data.pkl`,
/// `<root>/constants.pkl`), the folder of its tensor records (`<root>/data`,
/// `<root>/constants`); `None` for every other entry (files under `extra/` are the user's own).
pub(crate) fn object_pickle_records(name: &str) -> Option<String> {
    match name.split_once('/') {
        Some((root, file @ ("data.pkl" | "constants.pkl"))) if !root.is_empty() => {
            Some(format!("{root}/{}", file.trim_end_matches(".pkl")))
        }
        _ => None,
    }
}

/// Deepest bracket nesting accepted in a code file (Python's own parser stops near 200).
pub(crate) const MAX_NESTING: usize = 200;

/// Most recursion units (see [`code_units`]) accepted in an archive's code.
pub(crate) const MAX_CODE_UNITS: u64 = 250_000;

/// Stack bytes per recursion unit given to libtorch's loader: measured need is 0.7-5.2 KiB
/// (binary-operator chains, bracket nesting), so this leaves a margin of at least 1.5.
pub(crate) const STACK_PER_UNIT: u64 = 8 * 1024;

/// An upper bound on how deeply libtorch's recursive TorchScript compiler can recurse on
/// `code`: every character outside strings and comments that is not a letter, digit,
/// underscore, comma or space, plus every keyword operator (`not`, `and`, `or`, `if`, `else`,
/// `is`, `in`, `lambda`). Errors for bracket nesting deeper than [`MAX_NESTING`] and for a
/// string left open.
pub(crate) fn code_units(code: &str) -> Result<u64, String> {
    let b = code.as_bytes();
    let (mut i, mut units, mut depth) = (0usize, 0u64, 0usize);
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' => {
                let triple = b.get(i..i + 3) == Some(&[c, c, c][..]);
                let q = if triple { 3 } else { 1 };
                i += q;
                loop {
                    match b.get(i) {
                        None => return Err("a string literal is never closed".into()),
                        Some(b'\\') => i += 2,
                        Some(b'\n') if !triple => {
                            return Err("a string literal is never closed".into())
                        }
                        Some(&x)
                            if x == c && (!triple || b.get(i..i + 3) == Some(&[c, c, c][..])) =>
                        {
                            i += q;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                units += 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("brackets nested deeper than {MAX_NESTING} levels"));
                }
                units += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                units += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if matches!(
                    &code[s..i],
                    "not" | "and" | "or" | "if" | "else" | "is" | "in" | "lambda"
                ) {
                    units += 1;
                }
                continue;
            }
            c if c.is_ascii_digit() || c.is_ascii_whitespace() || c == b',' => {}
            _ => units += 1,
        }
        i += 1;
    }
    Ok(units)
}

/// Checks the pickle `p` opcode by opcode without running it: every opcode one libtorch's
/// unpickler knows, every length inside the pickle, memo indices in the order a pickler writes
/// them, and a final STOP. libtorch allocates a string's or a frame's declared length before
/// reading it, so a damaged length word would otherwise cost gigabytes before the refusal.
pub(crate) fn scan_pickle(p: &[u8]) -> Result<(), String> {
    let mut i = 0usize;
    let mut memo = 0u64;
    let need = |i: usize, n: u64| -> Result<usize, String> {
        let n = usize::try_from(n).map_err(|_| format!("length {n} at byte {i}"))?;
        if n > p.len() - i {
            return Err(format!(
                "a length of {n} bytes at byte {i}, but {} remain",
                p.len() - i
            ));
        }
        Ok(i + n)
    };
    let uint = |at: usize, n: usize| -> Result<u64, String> {
        let b = p
            .get(at..at + n)
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        Ok(b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    let line = |at: usize| -> Result<usize, String> {
        p[at..]
            .iter()
            .position(|&c| c == b'\n')
            .map(|k| at + k + 1)
            .ok_or_else(|| format!("an unterminated line at byte {at}"))
    };
    while i < p.len() {
        let op = p[i];
        let at = i;
        i += 1;
        i = match op {
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | b'Q' | b'R' | b'a' | b'b' | b'd' | b'}' | b'e'
            | b'l' | b']' | b'o' | b's' | b't' | b')' | b'u' | 0x81 | 0x85 | 0x86 | 0x87 | 0x88
            | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 => i,
            b'.' => {
                return if i == p.len() {
                    Ok(())
                } else {
                    Err(format!("{} bytes after STOP", p.len() - i))
                }
            }
            0x94 => {
                memo += 1;
                i
            }
            // Fixed-size arguments.
            b'K' | 0x80 => need(i, 1)?,
            b'M' => need(i, 2)?,
            b'J' => need(i, 4)?,
            b'G' => need(i, 8)?,
            b'h' | b'j' => {
                let w = if op == b'h' { 1 } else { 4 };
                let id = uint(i, w)?;
                if id >= memo {
                    return Err(format!(
                        "memo entry {id} read at byte {at} before it is written"
                    ));
                }
                i + w
            }
            b'q' | b'r' => {
                let w = if op == b'q' { 1 } else { 4 };
                let id = uint(i, w)?;
                if id > memo {
                    return Err(format!("memo entry {id} written at byte {at} out of order"));
                }
                memo = memo.max(id + 1);
                i + w
            }
            // Length-prefixed arguments.
            b'U' | b'C' | 0x8c | 0x8a => need(i + 1, uint(i, 1)?)?,
            b'T' | b'X' | b'B' | 0x8b => need(i + 4, uint(i, 4)?)?,
            0x8d | 0x8e | 0x96 => need(i + 8, uint(i, 8)?)?,
            0x95 => need(i, 8)?,
            // Newline-terminated arguments.
            b'F' | b'I' | b'L' | b'P' | b'S' | b'V' | b'g' | b'p' => line(i)?,
            b'c' | b'i' => line(line(i)?)?,
            _ => return Err(format!("unknown opcode 0x{op:02x} at byte {at}")),
        };
        if i > p.len() {
            return Err(format!("truncated at byte {at}"));
        }
    }
    Err("no STOP opcode (truncated)".into())
}

/// One object pickle of an archive, as [`sanitize`] read it.
pub(crate) struct ObjectPickle {
    /// The entry's name (`<root>/data.pkl`).
    pub name: String,
    /// The folder of its tensor records (`<root>/data`).
    pub records: String,
    /// Its contents.
    pub data: Vec<u8>,
}

/// The archive as libtorch is given it (see [`sanitize`]), the stack its loader needs, and
/// what the further checks need: the object pickles and every entry's size.
pub(crate) struct Sanitized {
    pub bytes: Vec<u8>,
    pub stack_bytes: usize,
    pub pickles: Vec<ObjectPickle>,
    pub sizes: HashMap<String, u64>,
}

/// The archive `bytes` as it is handed to libtorch:
///
/// * every entry read and CRC-checked, so a damaged archive is refused here, with the entry
///   named, before libtorch parses any of it;
/// * the object pickles scanned ([`scan_pickle`]), so that no length word makes libtorch
///   allocate more than the file holds;
/// * every code file scanned ([`code_units`]): libtorch compiles the code recursively, so
///   absurd nesting or an absurdly long expression would overflow any stack and abort the
///   process. Nesting beyond [`MAX_NESTING`] and code beyond [`MAX_CODE_UNITS`] are refused;
///   for the rest, the loader runs on a thread whose stack covers the bound;
/// * the source-range tables (`*.debug_pkl`) left out. libtorch reads them lazily, from
///   inside `std::exception::what()` while it formats a compilation error; a damaged table
///   then throws where nothing can catch it, and the process aborts. Without them an error in
///   the module's code is reported against the archive's own code instead of the original
///   Python lines, and nothing else changes: the tables hold only those line mappings.
pub(crate) fn sanitize(bytes: &[u8], list: &[Entry]) -> Result<Sanitized, String> {
    let mut files = Vec::with_capacity(list.len());
    let mut pickles = Vec::new();
    let mut dropped = false;
    let mut units = 0u64;
    for e in list {
        let data = contents(bytes, e)?;
        if is_debug_table(&e.name) {
            dropped = true;
            continue;
        }
        if let Some(records) = object_pickle_records(&e.name) {
            scan_pickle(&data).map_err(|m| format!("`{}`: {m}", e.name))?;
            pickles.push(ObjectPickle {
                name: e.name.clone(),
                records,
                data: data.clone(),
            });
        }
        if code_path(&e.name).is_some() {
            let text = std::str::from_utf8(&data)
                .map_err(|_| format!("`{}`: code that is not UTF-8 text", e.name))?;
            units += code_units(text).map_err(|m| format!("`{}`: {m}", e.name))?;
            if units > MAX_CODE_UNITS {
                return Err(format!(
                    "more code than a model's (over {MAX_CODE_UNITS} operators and brackets; \
                     real modules have thousands)"
                ));
            }
        }
        files.push(NewEntry {
            name: e.name.clone(),
            data,
        });
    }
    let stack_bytes = (32 * 1024 * 1024 + units * STACK_PER_UNIT) as usize;
    let bytes = if dropped {
        write(&files)?
    } else {
        bytes.to_vec()
    };
    let sizes = list.iter().map(|e| (e.name.clone(), e.size)).collect();
    Ok(Sanitized {
        bytes,
        stack_bytes,
        pickles,
        sizes,
    })
}

/// Whether the archive holds TorchScript code (a `torch.save` checkpoint does not).
pub(crate) fn has_code(entries: &[Entry]) -> bool {
    entries.iter().any(|e| code_path(&e.name).is_some())
}

/// Rewrites every code file of `bytes` with `edit` (see [`rewrite_classes`]); the other
/// entries are copied. Returns the new archive, or `None` if no class changed.
fn rewrite(
    bytes: &[u8],
    mut edit: impl FnMut(
        &str,
        &[String],
        &[String],
        &BTreeMap<String, String>,
    ) -> Option<(Vec<String>, Vec<String>)>,
) -> Result<Option<Vec<u8>>, String> {
    let list = entries(bytes)?;
    let mut files = Vec::with_capacity(list.len());
    let mut changed = false;
    for e in &list {
        let mut data = contents(bytes, e)?;
        if let Some(path) = code_path(&e.name) {
            if let Ok(text) = std::str::from_utf8(&data) {
                let new = rewrite_classes(text, |class, p, b, types| {
                    edit(&format!("{path}::{class}"), p, b, types)
                });
                if let Some(new) = new {
                    data = new.into_bytes();
                    changed = true;
                }
            }
        }
        files.push(NewEntry {
            name: e.name.clone(),
            data,
        });
    }
    if !changed {
        return Ok(None);
    }
    write(&files).map(Some)
}

/// Moves every tensor-typed buffer to its class's parameter list. Returns the new archive and
/// the edits made (`None` if there was no buffer to move).
pub(crate) fn patch(bytes: &[u8]) -> Result<Option<(Vec<u8>, Edits)>, String> {
    let mut edits = Edits::new();
    let out = rewrite(bytes, |key, params, buffers, types| {
        let (moved, kept): (Vec<String>, Vec<String>) = buffers
            .iter()
            .cloned()
            .partition(|b| types.get(b).map(String::as_str) == Some("Tensor"));
        if moved.is_empty() {
            return None;
        }
        let mut np = params.to_vec();
        np.extend(moved);
        let e = ClassEdit {
            before: (params.to_vec(), buffers.to_vec()),
            after: (np, kept),
        };
        let r = e.after.clone();
        edits.insert(key.to_string(), e);
        Some(r)
    })?;
    Ok(out.map(|o| (o, edits)))
}

/// Undoes `edits` in an archive written from a patched module; classes whose lists are not
/// the patched ones are left alone. Returns `bytes` unchanged if nothing applies.
pub(crate) fn unpatch(bytes: Vec<u8>, edits: &Edits) -> Result<Vec<u8>, String> {
    if edits.is_empty() {
        return Ok(bytes);
    }
    let out = rewrite(&bytes, |key, params, buffers, _| {
        let e = edits.get(key)?;
        (params == e.after.0.as_slice() && buffers == e.after.1.as_slice())
            .then(|| e.before.clone())
    })?;
    Ok(out.unwrap_or(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn zip_round_trip_and_alignment() {
        let files = vec![
            NewEntry {
                name: "a/x.py".into(),
                data: b"class A(Module):\n".to_vec(),
            },
            NewEntry {
                name: "a/data/0".into(),
                data: vec![7u8; 1000],
            },
        ];
        let z = write(&files).unwrap();
        assert!(looks_like_zip(&z));
        let es = entries(&z).unwrap();
        assert_eq!(es.len(), 2);
        for (e, f) in es.iter().zip(&files) {
            assert_eq!(e.name, f.name);
            assert_eq!(contents(&z, e).unwrap(), f.data);
            let at = e.local_offset as usize;
            let start = at + 30 + u16_at(&z, at + 26).unwrap() as usize;
            let start = start + u16_at(&z, at + 28).unwrap() as usize;
            assert_eq!(start % 64, 0);
        }
    }

    #[test]
    fn inflates_stored_and_fixed_blocks() {
        // zlib.compress(b"hello hello hello", 9)[2:-4] and a stored block of "abc".
        let fixed = [0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x57, 0xc8, 0x40, 0x90, 0x00];
        assert_eq!(inflate(&fixed, 17).unwrap(), b"hello hello hello");
        assert!(inflate(&fixed, 16).unwrap_err().contains("declared size"));
        let stored = [0x01, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c'];
        assert_eq!(inflate(&stored, 3).unwrap(), b"abc");
    }

    #[test]
    fn class_lists_move_and_move_back() {
        let text = "class BatchNorm2d(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  \
                    __buffers__ = [\"running_mean\", \"running_var\", \"num_batches_tracked\", \"x\", ]\n  \
                    weight : Tensor\n  bias : Tensor\n  running_mean : Tensor\n  running_var : Tensor\n  \
                    num_batches_tracked : Tensor\n  x : Optional[Tensor]\n  training : bool\n  \
                    def forward(self: X) -> None:\n    return None\n";
        let z = write(&[NewEntry {
            name: "m/code/__torch__/bn.py".into(),
            data: text.as_bytes().to_vec(),
        }])
        .unwrap();
        let (p, edits) = patch(&z).unwrap().unwrap();
        let es = entries(&p).unwrap();
        let new = String::from_utf8(contents(&p, &es[0]).unwrap()).unwrap();
        assert!(
            new.contains("__parameters__ = [\"weight\", \"bias\", \"running_mean\", \"running_var\", \"num_batches_tracked\", ]\n  __buffers__ = [\"x\", ]"),
            "{new}"
        );
        assert_eq!(new.len(), text.len());
        assert!(edits.contains_key("__torch__/bn.py::BatchNorm2d"));
        let back = unpatch(p, &edits).unwrap();
        let es = entries(&back).unwrap();
        assert_eq!(contents(&back, &es[0]).unwrap(), text.as_bytes());
    }

    #[test]
    fn code_units_skip_strings_and_comments() {
        let code = "def f(x: int) -> int:  # (((\n  s = \"((([\\\"\"\n  return x + 1\n";
        // `(`, `:`, `)`, `-`, `>`, `:`, `=`, the string, `+`.
        assert_eq!(code_units(code).unwrap(), 9);
        let deep = format!("x = {}1{}", "(".repeat(201), ")".repeat(201));
        assert!(code_units(&deep).unwrap_err().contains("deeper than 200"));
        assert!(code_units(&format!("x = {}1{}", "(".repeat(200), ")".repeat(200))).is_ok());
        assert!(code_units("x = 'open\n")
            .unwrap_err()
            .contains("never closed"));
        assert_eq!(code_units("s = '''a\n(b'''\nif not x: pass\n").unwrap(), 5);
    }

    #[test]
    fn only_the_object_pickles_are_scanned() {
        assert_eq!(
            object_pickle_records("m/data.pkl").as_deref(),
            Some("m/data")
        );
        assert_eq!(
            object_pickle_records("m/constants.pkl").as_deref(),
            Some("m/constants")
        );
        assert!(object_pickle_records("m/extra/labels.pkl").is_none());
        assert!(object_pickle_records("m/code/__torch__.py.debug_pkl").is_none());
        assert!(object_pickle_records("data.pkl").is_none());
        assert!(object_pickle_records("m/traced_inputs.pkl").is_none());
    }

    #[test]
    fn pickle_scan_checks_opcodes_lengths_and_memo() {
        // pickle.dumps(("ab", [1, 2.0]), protocol=2)
        let good: &[u8] =
            b"\x80\x02X\x02\x00\x00\x00abq\x00]q\x01(K\x01G@\x00\x00\x00\x00\x00\x00\x00e\x86q\x02.";
        scan_pickle(good).unwrap();
        let mut long = good.to_vec();
        long[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(scan_pickle(&long).unwrap_err().contains("remain"));
        assert!(scan_pickle(&good[..good.len() - 1])
            .unwrap_err()
            .contains("STOP"));
        let mut unknown = good.to_vec();
        unknown[9] = 0xff;
        assert!(scan_pickle(&unknown)
            .unwrap_err()
            .contains("unknown opcode 0xff"));
        let mut memo = good.to_vec();
        memo[10] = 7;
        assert!(scan_pickle(&memo).unwrap_err().contains("out of order"));
        assert!(scan_pickle(b"\x80\x02h\x00.")
            .unwrap_err()
            .contains("before it is written"));
        let mut after = good.to_vec();
        after.push(b'N');
        assert!(scan_pickle(&after).unwrap_err().contains("after STOP"));
    }
}
