//! IDX files (MNIST, Fashion-MNIST, EMNIST): a validating reader, a writer, and a loader for
//! an image/label file pair.
//!
//! Layout: two zero bytes, a data type code (`0x08` = unsigned byte), the number of dimensions,
//! one big-endian `u32` per dimension, then the data. Files may be gzip-compressed; compression
//! is detected from the content (magic bytes `1f 8b`), not from the file name.

use crate::dataset::Dataset;
use rustworthy_core::{Error, Result};
use std::io::{Read, Write};
use std::path::Path;
use tch::{Kind, Tensor};

/// Largest data payload an IDX file may declare (4 GiB); anything bigger is taken as a corrupt
/// header rather than allocated.
pub const MAX_IDX_BYTES: u64 = 1 << 32;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// How far past the declared data a compressed file is decompressed to count trailing bytes.
const TRAILING_COUNT_CAP: u64 = 1 << 26;

/// The content of an unsigned-byte IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Row-major data, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Parses and checks the 4-byte preamble; returns the number of dimensions.
fn check_preamble(path: &Path, pre: &[u8; 4]) -> Result<usize> {
    if pre[0] != 0 || pre[1] != 0 {
        return Err(Error::corrupt(
            path,
            format!(
                "not an IDX file: bad magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 <type> <ndims>)",
                pre[0], pre[1], pre[2], pre[3]
            ),
        ));
    }
    if pre[2] != 0x08 {
        return Err(Error::corrupt(
            path,
            format!(
                "unsupported data type 0x{:02x} ({}); only 0x08 (unsigned byte) is supported",
                pre[2],
                type_name(pre[2])
            ),
        ));
    }
    let nd = pre[3] as usize;
    if !(1..=4).contains(&nd) {
        return Err(Error::corrupt(
            path,
            format!("unsupported number of dimensions {nd} (expected 1 to 4)"),
        ));
    }
    Ok(nd)
}

/// Parses the dimension words; returns the dimensions and the declared payload size.
fn parse_dims(path: &Path, words: &[u8]) -> Result<(Vec<usize>, u64)> {
    let dims: Vec<usize> = words
        .chunks_exact(4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
        .collect();
    let mut total: u64 = 1;
    for &d in &dims {
        total = total.checked_mul(d as u64).ok_or_else(|| {
            Error::corrupt(path, format!("dimensions {dims:?} overflow the size count"))
        })?;
    }
    if total > MAX_IDX_BYTES {
        return Err(Error::corrupt(
            path,
            format!(
                "header declares dimensions {dims:?} = {total} data bytes, more than the {MAX_IDX_BYTES} allowed (corrupt header?)"
            ),
        ));
    }
    Ok((dims, total))
}

fn truncated(path: &Path, declared: u64, held: u64) -> Error {
    Error::corrupt(
        path,
        format!("truncated: header declares {declared} data bytes, file holds {held}"),
    )
}

fn trailing(path: &Path, extra: u64, more: bool) -> Error {
    let more = if more { "at least " } else { "" };
    Error::corrupt(
        path,
        format!("{more}{extra} trailing bytes after the declared data"),
    )
}

fn gzip_error(path: &Path, e: std::io::Error) -> Error {
    Error::corrupt(path, format!("corrupt or truncated gzip stream: {e}"))
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

/// Reads an unsigned-byte IDX file, raw or gzip-compressed (detected from the magic bytes).
///
/// The header is validated before anything is allocated, and the payload must match the declared
/// size exactly. A lying header or a gzip bomb never makes the reader hold more than the
/// declared size (at most 4 GiB) plus one byte. Every error names the file.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    if got == 2 && magic == GZIP_MAGIC {
        let prefix = std::io::Cursor::new(magic);
        let reader = std::io::BufReader::new(prefix.chain(file));
        read_gzip(path, flate2::read::MultiGzDecoder::new(reader))
    } else {
        read_raw(path, magic, got, file, file_len)
    }
}

fn read_raw(
    path: &Path,
    magic: [u8; 2],
    got: usize,
    mut file: std::fs::File,
    file_len: u64,
) -> Result<IdxArray> {
    if file_len < 4 {
        return Err(Error::corrupt(
            path,
            format!("file too short for an IDX header: {file_len} bytes, need at least 4"),
        ));
    }
    let mut pre = [0u8; 4];
    pre[..got].copy_from_slice(&magic[..got]);
    file.read_exact(&mut pre[got..])
        .map_err(|e| Error::io(path, e))?;
    let nd = check_preamble(path, &pre)?;
    let header_len = 4 + 4 * nd as u64;
    if file_len < header_len {
        return Err(Error::corrupt(
            path,
            format!(
                "file too short for an IDX header with {nd} dimensions: {file_len} bytes, need {header_len}"
            ),
        ));
    }
    let mut words = vec![0u8; 4 * nd];
    file.read_exact(&mut words)
        .map_err(|e| Error::io(path, e))?;
    let (dims, declared) = parse_dims(path, &words)?;
    let held = file_len - header_len;
    if held < declared {
        return Err(truncated(path, declared, held));
    }
    if held > declared {
        return Err(trailing(path, held - declared, false));
    }
    let mut data = vec![0u8; declared as usize];
    file.read_exact(&mut data).map_err(|e| Error::io(path, e))?;
    Ok(IdxArray { dims, data })
}

fn read_gzip(path: &Path, mut dec: impl Read) -> Result<IdxArray> {
    let mut pre = [0u8; 4];
    let got = read_up_to(&mut dec, &mut pre).map_err(|e| gzip_error(path, e))?;
    if got < 4 {
        return Err(Error::corrupt(
            path,
            format!("file too short for an IDX header: {got} bytes after decompression, need at least 4"),
        ));
    }
    let nd = check_preamble(path, &pre)?;
    let mut words = vec![0u8; 4 * nd];
    let got = read_up_to(&mut dec, &mut words).map_err(|e| gzip_error(path, e))?;
    if got < words.len() {
        return Err(Error::corrupt(
            path,
            format!(
                "file too short for an IDX header with {nd} dimensions: {} bytes after decompression, need {}",
                4 + got,
                4 + 4 * nd
            ),
        ));
    }
    let (dims, declared) = parse_dims(path, &words)?;
    // Grow the buffer as data arrives (capped start), so a lying header costs nothing up front.
    let mut data = Vec::with_capacity(declared.min(1 << 20) as usize);
    (&mut dec)
        .take(declared + 1)
        .read_to_end(&mut data)
        .map_err(|e| gzip_error(path, e))?;
    let held = data.len() as u64;
    if held < declared {
        return Err(truncated(path, declared, held));
    }
    if held > declared {
        // Count what follows without storing it, up to a cap.
        let cap = TRAILING_COUNT_CAP;
        let rest = std::io::copy(&mut (&mut dec).take(cap), &mut std::io::sink())
            .map_err(|e| gzip_error(path, e))?;
        return Err(trailing(path, 1 + rest, rest == cap));
    }
    Ok(IdxArray { dims, data })
}

/// Writes an unsigned-byte IDX file (gzip-compressed when `gzip`), atomically.
pub fn write_idx_u8(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    if !(1..=4).contains(&dims.len()) {
        return Err(Error::invalid(format!(
            "{}: IDX files hold 1 to 4 dimensions, got {}",
            path.display(),
            dims.len()
        )));
    }
    if let Some(d) = dims.iter().find(|&&d| d > u32::MAX as usize) {
        return Err(Error::invalid(format!(
            "{}: dimension {d} does not fit in 32 bits",
            path.display()
        )));
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("{}: dimensions overflow", path.display())))?;
    if total != data.len() {
        return Err(Error::invalid(format!(
            "{}: dimensions {dims:?} need {total} bytes, got {}",
            path.display(),
            data.len()
        )));
    }
    let mut bytes = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    bytes.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        bytes = enc.finish().map_err(|e| Error::io(path, e))?;
    }
    rustworthy_core::fsutil::atomic_write(path, &bytes)
}

/// Loads an IDX image file `[N, H, W]` and label file `[N]` as a dataset with images
/// `[N, 1, H, W]` scaled to `[0, 1]`. The counts must match and every label must be below
/// `num_classes`; errors name the file at fault.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
    class_names: &[&str],
) -> Result<Dataset> {
    let img = read_idx(images)?;
    if img.dims.len() != 3 {
        return Err(Error::corrupt(
            images,
            format!(
                "image file must have 3 dimensions [N, H, W], found {:?}",
                img.dims
            ),
        ));
    }
    let lab = read_idx(labels)?;
    if lab.dims.len() != 1 {
        return Err(Error::corrupt(
            labels,
            format!("label file must have 1 dimension [N], found {:?}", lab.dims),
        ));
    }
    let (n, h, w) = (img.dims[0], img.dims[1], img.dims[2]);
    if lab.dims[0] != n {
        return Err(Error::corrupt(
            labels,
            format!(
                "{} labels but {} holds {n} images",
                lab.dims[0],
                images.display()
            ),
        ));
    }
    if let Some((i, &l)) = lab
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(Error::corrupt(
            labels,
            format!("label {l} at index {i} is out of range for {num_classes} classes"),
        ));
    }
    let x = Tensor::from_slice(&img.data)
        .view([n as i64, 1, h as i64, w as i64])
        .to_kind(Kind::Float)
        / 255.0;
    let y = Tensor::from_slice(&lab.data).to_kind(Kind::Int64);
    Dataset::new(name, x, y, num_classes, crate::dataset::names(class_names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn err_of(path: &Path) -> String {
        let e = read_idx(path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()),
            "error does not name the file: {e}"
        );
        e
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn header(kind: u8, dims: &[u32]) -> Vec<u8> {
        let mut v = vec![0, 0, kind, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let d = tmp();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 7 % 256) as u8).collect();
        for gzip in [false, true] {
            // A misleading name: compression is detected from content only.
            let p = d.path().join(format!("a-{gzip}.bin"));
            write_idx_u8(&p, &[2, 3, 4], &data, gzip).unwrap();
            let raw = std::fs::read(&p).unwrap();
            assert_eq!(raw[..2] == GZIP_MAGIC, gzip);
            let a = read_idx(&p).unwrap();
            assert_eq!(a.dims, vec![2, 3, 4]);
            assert_eq!(a.data, data);
        }
        let p = d.path().join("one.idx");
        write_idx_u8(&p, &[5], &[1, 2, 3, 4, 5], false).unwrap();
        assert_eq!(read_idx(&p).unwrap().dims, vec![5]);
        // Zero-sized dimension is a valid (empty) array.
        let p = d.path().join("empty.idx");
        write_idx_u8(&p, &[0, 28, 28], &[], true).unwrap();
        let a = read_idx(&p).unwrap();
        assert_eq!(a.dims, vec![0, 28, 28]);
        assert!(a.data.is_empty());
    }

    #[test]
    fn writer_rejects_bad_arguments() {
        let d = tmp();
        let p = d.path().join("w");
        assert!(write_idx_u8(&p, &[], &[], false).is_err());
        assert!(write_idx_u8(&p, &[1, 1, 1, 1, 1], &[0], false).is_err());
        let e = write_idx_u8(&p, &[2, 2], &[0; 3], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("need 4 bytes"), "{e}");
    }

    #[test]
    fn missing_file_is_io_error_naming_it() {
        let d = tmp();
        let p = d.path().join("nope-idx1-ubyte");
        let e = read_idx(&p).unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert!(e.to_string().contains("nope-idx1-ubyte"));
    }

    #[test]
    fn empty_and_short_files() {
        let d = tmp();
        let e = err_of(&put(d.path(), "empty", &[]));
        assert!(e.contains("too short") && e.contains("0 bytes"), "{e}");
        let e = err_of(&put(d.path(), "three", &[0, 0, 8]));
        assert!(e.contains("too short"), "{e}");
        let e = err_of(&put(d.path(), "empty.gz", &gz(&[])));
        assert!(e.contains("too short"), "{e}");
        // Header promises 3 dims but holds only one dimension word.
        let mut h = header(8, &[2]);
        h[3] = 3;
        let e = err_of(&put(d.path(), "hdr", &h));
        assert!(e.contains("3 dimensions") && e.contains("need 16"), "{e}");
        let e = err_of(&put(d.path(), "hdr.gz", &gz(&h)));
        assert!(e.contains("3 dimensions") && e.contains("need 16"), "{e}");
    }

    #[test]
    fn bad_magic_and_type() {
        let d = tmp();
        let e = err_of(&put(d.path(), "magic", &[1, 0, 8, 1, 0, 0, 0, 0]));
        assert!(e.contains("bad magic"), "{e}");
        let e = err_of(&put(d.path(), "text", b"hello world"));
        assert!(e.contains("bad magic"), "{e}");
        let mut f = header(0x0D, &[1]);
        f.extend_from_slice(&[0; 4]);
        let e = err_of(&put(d.path(), "float", &f));
        assert!(e.contains("unsupported data type 0x0d"), "{e}");
        let e = err_of(&put(d.path(), "float.gz", &gz(&f)));
        assert!(e.contains("unsupported data type 0x0d"), "{e}");
    }

    #[test]
    fn dimension_count_limits() {
        let d = tmp();
        let e = err_of(&put(d.path(), "zero", &header(8, &[])));
        assert!(e.contains("number of dimensions 0"), "{e}");
        let five = header(8, &[1, 1, 1, 1, 1]);
        let mut five_full = five.clone();
        five_full.push(7);
        let e = err_of(&put(d.path(), "five", &five_full));
        assert!(e.contains("number of dimensions 5"), "{e}");
        let e = err_of(&put(d.path(), "five.gz", &gz(&five_full)));
        assert!(e.contains("number of dimensions 5"), "{e}");
    }

    #[test]
    fn truncated_and_trailing_raw() {
        let d = tmp();
        let mut t = header(8, &[2, 3]);
        t.extend_from_slice(&[1, 2, 3, 4]);
        let e = err_of(&put(d.path(), "trunc", &t));
        assert!(
            e.contains("truncated: header declares 6 data bytes, file holds 4"),
            "{e}"
        );
        let mut x = header(8, &[2, 3]);
        x.extend_from_slice(&[9; 9]);
        let e = err_of(&put(d.path(), "trail", &x));
        assert!(
            e.contains("3 trailing bytes after the declared data"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_trailing_gzip() {
        let d = tmp();
        let mut t = header(8, &[2, 3]);
        t.extend_from_slice(&[1, 2, 3, 4]);
        let e = err_of(&put(d.path(), "trunc.gz", &gz(&t)));
        assert!(
            e.contains("truncated: header declares 6 data bytes, file holds 4"),
            "{e}"
        );
        let mut x = header(8, &[2, 3]);
        x.extend_from_slice(&[9; 9]);
        let e = err_of(&put(d.path(), "trail.gz", &gz(&x)));
        assert!(
            e.contains("3 trailing bytes after the declared data"),
            "{e}"
        );
        // A compressed file cut short in the middle of its stream.
        let mut big = header(8, &[100, 100]);
        big.extend((0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        let z = gz(&big);
        let e = err_of(&put(d.path(), "cut.gz", &z[..z.len() / 2]));
        assert!(e.contains("corrupt or truncated gzip stream"), "{e}");
    }

    #[test]
    fn gzip_bomb_is_not_stored() {
        let d = tmp();
        // A tiny compressed file that expands to far more than its header declares.
        let mut v = header(8, &[4]);
        v.extend(std::iter::repeat_n(0u8, (1 << 26) + 10));
        let z = gz(&v);
        assert!(z.len() < 1 << 20);
        let e = err_of(&put(d.path(), "bomb.gz", &z));
        assert!(e.contains("at least 67108865 trailing bytes"), "{e}");
        let mut v = header(8, &[4]);
        v.extend(std::iter::repeat_n(0u8, 1000));
        let e = err_of(&put(d.path(), "extra.gz", &gz(&v)));
        assert!(e.contains(": 996 trailing bytes"), "{e}");
    }

    #[test]
    fn corrupt_gzip_stream() {
        let d = tmp();
        let mut v = header(8, &[10, 10]);
        v.extend_from_slice(&[5; 100]);
        let mut z = gz(&v);
        let n = z.len();
        for b in &mut z[12..n - 8] {
            *b ^= 0xA5;
        }
        let e = err_of(&put(d.path(), "bad.gz", &z));
        assert!(e.contains("gzip"), "{e}");
        // Garbage right after a valid gzip magic.
        let e = err_of(&put(d.path(), "junk.gz", &[0x1f, 0x8b, 1, 2, 3, 4, 5]));
        assert!(e.contains("gzip"), "{e}");
        // Intact deflate data but a wrong checksum.
        let mut z = gz(&v);
        let n = z.len();
        z[n - 8] ^= 0xFF;
        let e = err_of(&put(d.path(), "crc.gz", &z));
        assert!(e.contains("gzip"), "{e}");
    }

    #[test]
    fn lying_header_does_not_allocate() {
        let d = tmp();
        // Declares 60000*28*28*... far more than held; both raw and gzip must fail fast.
        let mut v = header(8, &[60_000, 1000, 1000]);
        v.extend_from_slice(&[0; 16]);
        let e = err_of(&put(d.path(), "huge", &v));
        assert!(
            e.contains("60000000000") && e.contains("corrupt header"),
            "{e}"
        );
        let mut v = header(8, &[u32::MAX, u32::MAX, u32::MAX, u32::MAX]);
        v.extend_from_slice(&[0; 16]);
        let e = err_of(&put(d.path(), "overflow.gz", &gz(&v)));
        assert!(e.contains("overflow"), "{e}");
        // Within the size cap but far beyond the payload: reported as truncated, quickly.
        let mut v = header(8, &[1 << 15, 1 << 15]);
        v.extend_from_slice(&[0; 16]);
        let t = std::time::Instant::now();
        let e = err_of(&put(d.path(), "lie", &v));
        assert!(
            e.contains("declares 1073741824 data bytes, file holds 16"),
            "{e}"
        );
        let e = err_of(&put(d.path(), "lie.gz", &gz(&v)));
        assert!(
            e.contains("declares 1073741824 data bytes, file holds 16"),
            "{e}"
        );
        assert!(t.elapsed().as_secs_f64() < 1.0);
    }

    fn write_pair(dir: &Path, n_img: usize, labels: &[u8]) -> (PathBuf, PathBuf) {
        let ip = dir.join("img");
        let lp = dir.join("lab");
        let data: Vec<u8> = (0..n_img * 4).map(|i| (i * 13 % 256) as u8).collect();
        write_idx_u8(&ip, &[n_img, 2, 2], &data, true).unwrap();
        write_idx_u8(&lp, &[labels.len()], labels, false).unwrap();
        (ip, lp)
    }

    #[test]
    fn load_pair_good() {
        let d = tmp();
        let (ip, lp) = write_pair(d.path(), 3, &[2, 0, 1]);
        let ds = load_idx_pair(&ip, &lp, "toy", 3, &["a", "b", "c"]).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.image_shape(), (1, 2, 2));
        assert_eq!(ds.labels_vec(), vec![2, 0, 1]);
        assert_eq!(ds.class_names, vec!["a", "b", "c"]);
        assert_eq!(ds.images.kind(), Kind::Float);
        let px = ds.images.get(0).get(0).get(0).get(1).double_value(&[]);
        assert!((px - 13.0 / 255.0).abs() < 1e-6, "{px}");
    }

    #[test]
    fn load_pair_count_mismatch_names_both_files() {
        let d = tmp();
        let (ip, lp) = write_pair(d.path(), 3, &[0, 1]);
        let e = load_idx_pair(&ip, &lp, "toy", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&ip.display().to_string()), "{e}");
        assert!(e.contains(&lp.display().to_string()), "{e}");
        assert!(e.contains("2 labels") && e.contains("3 images"), "{e}");
    }

    #[test]
    fn load_pair_label_out_of_range() {
        let d = tmp();
        let (ip, lp) = write_pair(d.path(), 3, &[0, 1, 7]);
        let e = load_idx_pair(&ip, &lp, "toy", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&lp.display().to_string()), "{e}");
        assert!(e.contains("label 7 at index 2"), "{e}");
    }

    #[test]
    fn load_pair_wrong_ranks() {
        let d = tmp();
        let (ip, lp) = write_pair(d.path(), 2, &[0, 1]);
        let e = load_idx_pair(&lp, &ip, "toy", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 dimensions"), "{e}");
        let e = load_idx_pair(&ip, &ip, "toy", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 dimension"), "{e}");
    }
}
