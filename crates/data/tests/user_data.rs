//! Users' own data: `.safetensors` and `.npz` tensor files, image folders and data sources.
//! Every file is generated here (and, when the project's Python is installed, one `.npz` by
//! numpy itself); pixels and labels must round-trip exactly, every bad input must give an
//! error naming the file and the problem, and truncated files must give errors, never panics.

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use rustworthy_data::npy::{npy_bytes, DType, NdArray};
use rustworthy_data::{
    load_image_folder, load_source, load_source_with_notes, load_tensor_file, write_synthetic_idx,
    DataSource, Dataset, SourceOptions,
};
use rustworthy_testkit::{python_or_skip, python_required};
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

// ---------------------------------------------------------------------------------------------
// Writers

fn arr(dtype: DType, shape: &[usize], data: Vec<u8>) -> NdArray {
    NdArray {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

fn u8_arr(shape: &[usize], v: &[u8]) -> NdArray {
    arr(DType::U8, shape, v.to_vec())
}

fn f32_arr(shape: &[usize], v: &[f32]) -> NdArray {
    arr(
        DType::F32,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn f64_arr(shape: &[usize], v: &[f64]) -> NdArray {
    arr(
        DType::F64,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn i64_arr(v: &[i64]) -> NdArray {
    arr(
        DType::I64,
        &[v.len()],
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn i32_arr(v: &[i32]) -> NdArray {
    arr(
        DType::I32,
        &[v.len()],
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn unicode_arr(v: &[&str]) -> NdArray {
    let n = v
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut data = Vec::new();
    for s in v {
        let mut cps: Vec<u32> = s.chars().map(|c| c as u32).collect();
        cps.resize(n, 0);
        data.extend(cps.iter().flat_map(|c| c.to_le_bytes()));
    }
    arr(DType::Unicode(n), &[v.len()], data)
}

/// A zip archive of `.npy` entries, stored or deflated.
fn npz_raw(entries: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::FileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        w.start_file(format!("{name}.npy"), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn npz(entries: &[(&str, &NdArray)], deflate: bool) -> Vec<u8> {
    let e: Vec<(&str, Vec<u8>)> = entries.iter().map(|(n, a)| (*n, npy_bytes(a))).collect();
    npz_raw(&e, deflate)
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::U8 => S::U8,
        DType::I8 => S::I8,
        DType::U16 => S::U16,
        DType::I16 => S::I16,
        DType::U32 => S::U32,
        DType::I32 => S::I32,
        DType::U64 => S::U64,
        DType::I64 => S::I64,
        DType::F16 => S::F16,
        DType::F32 => S::F32,
        DType::F64 => S::F64,
        DType::Bool => S::BOOL,
        other => panic!("no safetensors dtype for {other}"),
    }
}

fn safetensors_bytes(entries: &[(&str, &NdArray)], classes: Option<&str>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                TensorView::new(st_dtype(a.dtype), a.shape.clone(), &a.data).unwrap(),
            )
        })
        .collect();
    let meta = classes.map(|c| HashMap::from([("classes".to_string(), c.to_string())]));
    safetensors::serialize(views, &meta).unwrap()
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Checks

fn pixels(d: &Dataset) -> Vec<f32> {
    Vec::<f32>::try_from(d.images.flatten(0, -1)).unwrap()
}

fn err_of<T: std::fmt::Debug>(
    r: rustworthy_core::Result<T>,
    file: &Path,
    needles: &[&str],
) -> String {
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains(&file.display().to_string()),
        "error does not name {}: {e}",
        file.display()
    );
    for n in needles {
        assert!(e.contains(n), "error lacks `{n}`: {e}");
    }
    e
}

fn load(path: &Path) -> rustworthy_core::Result<Dataset> {
    load_tensor_file(path, "t", None, None)
}

/// A small deterministic `u8` image set `[n, c, h, w]` and labels cycling over `k` classes.
fn sample(n: usize, c: usize, h: usize, w: usize, k: usize) -> (Vec<u8>, Vec<i64>) {
    let x = (0..n * c * h * w).map(|i| (i * 37 % 256) as u8).collect();
    let y = (0..n).map(|i| (i % k) as i64).collect();
    (x, y)
}

fn scaled(x: &[u8]) -> Vec<f32> {
    let t = Tensor::from_slice(x).to_kind(Kind::Float) / 255.0;
    Vec::<f32>::try_from(t).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tensor files: round trips

#[test]
fn safetensors_u8_round_trip_with_metadata_classes() {
    let d = tempfile::tempdir().unwrap();
    let (x, y) = sample(6, 3, 4, 5, 3);
    let xa = u8_arr(&[6, 3, 4, 5], &x);
    let ya = i64_arr(&y);
    let p = put(
        d.path(),
        "train.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["cat", "dog", "eel"]"#)),
    );
    let ds = load(&p).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.image_shape(), (3, 4, 5));
    assert_eq!(ds.images.kind(), Kind::Float);
    assert_eq!(pixels(&ds), scaled(&x));
    assert_eq!(ds.labels_vec(), y);
    assert_eq!(ds.num_classes, 3);
    assert_eq!(ds.class_names, vec!["cat", "dog", "eel"]);
    // Metadata names fix the class count: labels 0..2 with 3 names.
    // An explicit class count larger than the labels need is honoured.
    let ds = load_tensor_file(&p, "t", Some(3), None).unwrap();
    assert_eq!(ds.num_classes, 3);
    // Explicit names override stored ones.
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let ds = load_tensor_file(&p, "t", None, Some(names.clone())).unwrap();
    assert_eq!(ds.class_names, names);
}

#[test]
fn safetensors_float_and_one_channel_and_label_types() {
    let d = tempfile::tempdir().unwrap();
    let v: Vec<f32> = (0..4 * 3 * 3).map(|i| i as f32 / 35.0).collect();
    let xa = f32_arr(&[4, 3, 3], &v);
    for (ya, want) in [
        (i32_arr(&[0, 4, 2, 1]), vec![0, 4, 2, 1]),
        (u8_arr(&[4], &[1, 0, 1, 0]), vec![1, 0, 1, 0]),
        (
            arr(
                DType::U64,
                &[4],
                [3u64, 0, 1, 2]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            vec![3, 0, 1, 2],
        ),
        (arr(DType::I8, &[4], vec![2, 0, 1, 0]), vec![2, 0, 1, 0]),
    ] {
        let p = put(
            d.path(),
            "f.safetensors",
            &safetensors_bytes(&[("x", &xa), ("y", &ya)], None),
        );
        let ds = load(&p).unwrap();
        assert_eq!(ds.image_shape(), (1, 3, 3), "[N, H, W] is one channel");
        assert_eq!(pixels(&ds), v);
        assert_eq!(ds.labels_vec(), want);
        let k = *want.iter().max().unwrap() as usize + 1;
        assert_eq!(ds.num_classes, k, "class count = max label + 1");
        assert_eq!(ds.class_names[0], "0");
    }
    let v64: Vec<f64> = (0..2 * 2 * 2).map(|i| i as f64 / 7.0).collect();
    let p = put(
        d.path(),
        "g.safetensors",
        &safetensors_bytes(
            &[
                ("x", &f64_arr(&[2, 1, 2, 2], &v64)),
                ("y", &i64_arr(&[0, 1])),
            ],
            None,
        ),
    );
    let ds = load(&p).unwrap();
    let want: Vec<f32> = v64.iter().map(|&v| v as f32).collect();
    assert_eq!(pixels(&ds), want);
}

#[test]
fn npz_stored_and_deflated_round_trip_with_classes_entry() {
    let d = tempfile::tempdir().unwrap();
    let (x, y) = sample(5, 1, 6, 7, 5);
    let xa = u8_arr(&[5, 6, 7], &x);
    let ya = i64_arr(&y);
    let ca = unicode_arr(&["zero", "one", "two", "three", "four"]);
    for deflate in [false, true] {
        let p = put(
            d.path(),
            &format!("d{deflate}.npz"),
            &npz(&[("x", &xa), ("y", &ya), ("classes", &ca)], deflate),
        );
        let ds = load(&p).unwrap();
        assert_eq!(ds.image_shape(), (1, 6, 7));
        assert_eq!(pixels(&ds), scaled(&x));
        assert_eq!(ds.labels_vec(), y);
        assert_eq!(ds.class_names, vec!["zero", "one", "two", "three", "four"]);
    }
    // Byte strings work as class names too.
    let sa = arr(DType::Bytes(2), &[5], b"aabbccddee".to_vec());
    let p = put(
        d.path(),
        "s.npz",
        &npz(&[("x", &xa), ("y", &ya), ("classes", &sa)], true),
    );
    assert_eq!(
        load(&p).unwrap().class_names,
        vec!["aa", "bb", "cc", "dd", "ee"]
    );
}

/// An `.npy` with a hand-written header (for orders and layouts the writer does not produce).
fn npy_with_header(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    let pad = (64 - (10 + h.len() + 1) % 64) % 64;
    h.push_str(&" ".repeat(pad));
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn npz_fortran_order_and_big_endian_are_read_correctly() {
    let d = tempfile::tempdir().unwrap();
    // x[n, 0, i, j] = (n * 6 + i * 3 + j) / 16 for shape [2, 1, 2, 3], stored column-major.
    let (n, c, h, w) = (2usize, 1usize, 2usize, 3usize);
    let val = |a: usize, i: usize, j: usize| (a * 6 + i * 3 + j) as f32 / 16.0;
    let mut f = Vec::new();
    for j in 0..w {
        for i in 0..h {
            for _ in 0..c {
                for a in 0..n {
                    f.extend(val(a, i, j).to_be_bytes());
                }
            }
        }
    }
    let x = npy_with_header(">f4", true, "(2, 1, 2, 3)", &f);
    let y = npy_with_header(">i2", false, "(2,)", &[0, 1, 0, 0]);
    let p = put(d.path(), "fo.npz", &npz_raw(&[("x", x), ("y", y)], true));
    let ds = load(&p).unwrap();
    let mut want = Vec::new();
    for a in 0..n {
        for i in 0..h {
            for j in 0..w {
                want.push(val(a, i, j));
            }
        }
    }
    assert_eq!(pixels(&ds), want);
    assert_eq!(ds.labels_vec(), vec![1, 0]);
}

#[test]
fn sidecar_class_names_and_conflicts() {
    let d = tempfile::tempdir().unwrap();
    let (x, y) = sample(4, 1, 2, 2, 2);
    let xa = u8_arr(&[4, 1, 2, 2], &x);
    let ya = i64_arr(&y);
    let p = put(
        d.path(),
        "tr.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], None),
    );
    let side = put(d.path(), "tr.classes.json", br#"["left", "right"]"#);
    assert_eq!(load(&p).unwrap().class_names, vec!["left", "right"]);
    // A sidecar that disagrees with names stored in the file is an error naming both.
    let q = put(
        d.path(),
        "q.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["a", "b"]"#)),
    );
    let qside = put(d.path(), "q.classes.json", br#"["a", "c"]"#);
    let e = err_of(load(&q), &qside, &["differ"]);
    assert!(e.contains(&q.display().to_string()), "{e}");
    // A malformed sidecar names itself.
    std::fs::write(&side, b"{not json").unwrap();
    err_of(load(&p), &side, &["JSON list of strings"]);
    // Metadata that is not a JSON list.
    let m = put(
        d.path(),
        "m.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some("cat,dog")),
    );
    err_of(load(&m), &m, &["classes", "JSON list"]);
    // Wrong number of names for the labels.
    let k = put(
        d.path(),
        "k.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["only"]"#)),
    );
    err_of(load(&k), &k, &["y[1]", "out of range", "1 class names"]);
    let e = load_tensor_file(&k, "t", Some(2), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 class names") && e.contains("num_classes = 2"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tensor files: bad inputs

/// Writes `x` and `y` both as `.safetensors` and as `.npz`, and checks that each fails with an
/// error naming the file and containing `needles`.
fn both_fail(x: &NdArray, y: &NdArray, needles: &[&str]) {
    both_fail_with(x, y, None, needles)
}

fn both_fail_with(x: &NdArray, y: &NdArray, k: Option<usize>, needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let st = put(
        d.path(),
        "bad.safetensors",
        &safetensors_bytes(&[("x", x), ("y", y)], None),
    );
    let nz = put(d.path(), "bad.npz", &npz(&[("x", x), ("y", y)], true));
    for p in [st, nz] {
        err_of(load_tensor_file(&p, "t", k, None), &p, needles);
    }
}

#[test]
fn shape_and_rank_errors() {
    let x = u8_arr(&[3, 1, 2, 2], &[0; 12]);
    both_fail(&x, &i64_arr(&[0, 1]), &["3 images", "2 labels"]);
    both_fail(
        &u8_arr(&[3, 4], &[0; 12]),
        &i64_arr(&[0, 1, 0]),
        &["rank 2", "[N, C, H, W]"],
    );
    both_fail(&u8_arr(&[1, 1, 1, 1, 1], &[0]), &i64_arr(&[0]), &["rank 5"]);
    let y2 = arr(
        DType::I64,
        &[3, 1],
        [0i64, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    both_fail(&x, &y2, &["`y`", "rank 2", "1-D"]);
    // Channels-last data is caught instead of being read as 32 channels of 3 pixels.
    both_fail(
        &u8_arr(&[1, 5, 5, 3], &[0; 75]),
        &i64_arr(&[0]),
        &["channels-last", "transpose(0, 3, 1, 2)"],
    );
    // Empty dataset, and images without pixels.
    both_fail(&u8_arr(&[0, 1, 2, 2], &[]), &i64_arr(&[]), &["empty"]);
    both_fail(&u8_arr(&[2, 1, 0, 2], &[]), &i64_arr(&[0, 1]), &["pixel"]);
}

#[test]
fn value_errors_name_the_first_offending_index() {
    let y = i64_arr(&[0, 1]);
    let mut v = vec![0.5f32; 24];
    v[12 + 2 * 4 + 3] = 1.5; // x[1, 0, 2, 3]
    v[12 + 2 * 4 + 2] = 1.0; // the edge of the range is allowed
    both_fail(
        &f32_arr(&[2, 1, 3, 4], &v),
        &y,
        &["x[1, 0, 2, 3]", "1.5", "[0, 1]"],
    );
    let mut v = vec![0.5f32; 24];
    v[7] = -0.25;
    v[20] = 3.0;
    both_fail(
        &f32_arr(&[2, 1, 3, 4], &v),
        &y,
        &["x[0, 0, 1, 3]", "-0.25", "outside"],
    );
    let mut v = vec![0.5f32; 24];
    v[13] = f32::NAN;
    both_fail(&f32_arr(&[2, 1, 3, 4], &v), &y, &["x[1, 0, 0, 1]", "NaN"]);
    let mut v = vec![0.5f64; 24];
    v[5] = f64::INFINITY;
    both_fail(
        &f64_arr(&[2, 3, 4], &v),
        &y,
        &["x[0, 1, 1]", "inf", "finite"],
    );
    // 0-255 floats are rejected with a hint rather than silently clipped.
    let v = vec![200.0f32; 24];
    both_fail(&f32_arr(&[2, 3, 4], &v), &y, &["x[0, 0, 0]", "uint8"]);
    // Labels.
    let x = u8_arr(&[3, 1, 1, 1], &[1, 2, 3]);
    both_fail(&x, &i64_arr(&[0, -3, 1]), &["y[1]", "-3", "negative"]);
    both_fail_with(
        &x,
        &i64_arr(&[0, 1, 4]),
        Some(3),
        &["y[2]", "4", "out of range", "num_classes = 3"],
    );
    both_fail(
        &x,
        &f32_arr(&[3], &[0.0, 1.0, 0.0]),
        &["float32", "integers"],
    );
    both_fail(
        &f32_arr(&[3, 1, 1, 1], &[0.0; 3]),
        &arr(DType::Bool, &[3], vec![0, 1, 0]),
        &["bool", "integers"],
    );
    both_fail(
        &x,
        &arr(
            DType::U64,
            &[3],
            [0u64, u64::MAX, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        &["index 1", "int64"],
    );
    // Image dtypes other than uint8/float32/float64.
    let xi = arr(DType::I32, &[1, 1, 1, 1], 7i32.to_le_bytes().to_vec());
    both_fail(&xi, &i64_arr(&[0]), &["int32", "uint8", "float32"]);
}

#[test]
fn missing_arrays_and_unsupported_entries() {
    let d = tempfile::tempdir().unwrap();
    let x = u8_arr(&[1, 1, 1, 1], &[3]);
    let p = put(
        d.path(),
        "nox.npz",
        &npz(&[("images", &x), ("y", &i64_arr(&[0]))], false),
    );
    err_of(load(&p), &p, &["no array `x`", "images, y"]);
    let p = put(
        d.path(),
        "noy.safetensors",
        &safetensors_bytes(&[("x", &x), ("labels", &i64_arr(&[0]))], None),
    );
    err_of(load(&p), &p, &["no array `y`", "labels, x"]);
    // Object (pickled) arrays.
    let obj = npy_with_header("|O", false, "(1,)", &[0; 8]);
    let p = put(
        d.path(),
        "obj.npz",
        &npz_raw(&[("x", npy_bytes(&x)), ("y", obj)], false),
    );
    err_of(load(&p), &p, &["array `y`", "pickled"]);
    // Structured dtypes.
    let s = b"\x93NUMPY\x01\x00\x40\x00{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,)}".to_vec();
    let p = put(
        d.path(),
        "struct.npz",
        &npz_raw(&[("x", npy_bytes(&x)), ("y", s)], false),
    );
    err_of(load(&p), &p, &["array `y`"]);
    // Not a tensor file at all.
    let p = put(d.path(), "data.bin", b"hello world, not a tensor file");
    err_of(load(&p), &p, &["unknown tensor file format"]);
    let p = put(d.path(), "fake.npz", b"hello world, not a zip archive");
    err_of(load(&p), &p, &["zip"]);
    let missing = d.path().join("absent.npz");
    err_of(load(&missing), &missing, &["no such file"]);
    // Trailing bytes after an .npy payload inside an archive.
    let mut b = npy_bytes(&i64_arr(&[0]));
    b.push(0);
    let p = put(
        d.path(),
        "trail.npz",
        &npz_raw(&[("x", npy_bytes(&x)), ("y", b)], true),
    );
    err_of(load(&p), &p, &["array `y`", "trailing"]);
    // A header declaring more than the entry holds.
    let lie = npy_with_header("<f8", false, "(10000, 10000)", &[0; 16]);
    let p = put(
        d.path(),
        "lie.npz",
        &npz_raw(&[("x", lie), ("y", npy_bytes(&i64_arr(&[0])))], false),
    );
    err_of(
        load(&p),
        &p,
        &["array `x`", "truncated", "800000000 data bytes"],
    );
}

#[test]
fn empty_classes_error_for_training_note_for_test() {
    let d = tempfile::tempdir().unwrap();
    let (x, _) = sample(4, 1, 2, 2, 1);
    let xa = u8_arr(&[4, 1, 2, 2], &x);
    let tr = put(
        d.path(),
        "tr.npz",
        &npz(&[("x", &xa), ("y", &i64_arr(&[0, 1, 3, 1]))], false),
    );
    let te = put(
        d.path(),
        "te.npz",
        &npz(&[("x", &xa), ("y", &i64_arr(&[0, 1, 0, 1]))], false),
    );
    let src = DataSource::File {
        train: tr.clone(),
        test: Some(te.clone()),
    };
    // Class 2 has no training example (inferred class count 4).
    let e = load_source(&src, &SourceOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&tr.display().to_string())
            && e.contains("2 (\"2\")")
            && e.contains("no training example"),
        "{e}"
    );
    // With an explicit class count, classes 2 and 4 are empty.
    let opts = SourceOptions {
        num_classes: Some(5),
        ..Default::default()
    };
    let e = load_source(&src, &opts).unwrap_err().to_string();
    assert!(
        e.contains("2 (\"2\"), 4 (\"4\")") && e.contains("num_classes = 5"),
        "{e}"
    );
    // Allowed: a note for the training set, and a note for the test set's missing classes.
    let opts = SourceOptions {
        num_classes: Some(5),
        allow_empty_classes: true,
        ..Default::default()
    };
    let l = load_source_with_notes(&src, &opts).unwrap();
    assert_eq!(l.train.num_classes, 5);
    assert_eq!(l.test.as_ref().unwrap().num_classes, 5);
    assert_eq!(l.notes.len(), 2, "{:?}", l.notes);
    assert!(l.notes[0].contains("no training example"), "{:?}", l.notes);
    assert!(
        l.notes[1].contains("2 (\"2\"), 3 (\"3\"), 4 (\"4\")")
            && l.notes[1].contains("no test example"),
        "{:?}",
        l.notes
    );
}

#[test]
fn train_and_test_files_must_agree() {
    let d = tempfile::tempdir().unwrap();
    let (x, y) = sample(6, 1, 3, 3, 3);
    let xa = u8_arr(&[6, 1, 3, 3], &x);
    let ya = i64_arr(&y);
    let tr = put(
        d.path(),
        "tr.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["a","b","c"]"#)),
    );
    let te = put(d.path(), "te.npz", &npz(&[("x", &xa), ("y", &ya)], true));
    let src: DataSource = format!("file:{},{}", tr.display(), te.display())
        .parse()
        .unwrap();
    let l = load_source_with_notes(&src, &SourceOptions::default()).unwrap();
    let test = l.test.unwrap();
    assert!(l.notes.is_empty(), "{:?}", l.notes);
    assert_eq!(
        test.class_names,
        vec!["a", "b", "c"],
        "the test set takes the training names"
    );
    assert_eq!(test.name, "tr/test");
    assert_eq!(l.train.name, "tr/train");
    assert_eq!(pixels(&test), scaled(&x));
    // A test label beyond the training classes.
    let bad = put(
        d.path(),
        "te2.npz",
        &npz(&[("x", &xa), ("y", &i64_arr(&[0, 1, 2, 3, 0, 1]))], true),
    );
    let src = DataSource::File {
        train: tr.clone(),
        test: Some(bad.clone()),
    };
    err_of(
        load_source(&src, &SourceOptions::default()),
        &bad,
        &["y[3]", "out of range"],
    );
    // A test image shape different from training.
    let small = put(
        d.path(),
        "te3.npz",
        &npz(
            &[
                ("x", &u8_arr(&[1, 1, 2, 2], &[0; 4])),
                ("y", &i64_arr(&[0])),
            ],
            true,
        ),
    );
    let src = DataSource::File {
        train: tr.clone(),
        test: Some(small.clone()),
    };
    err_of(
        load_source(&src, &SourceOptions::default()),
        &small,
        &["[1, 2, 2]", "[1, 3, 3]"],
    );
    // Test class names that differ from training.
    let named = put(
        d.path(),
        "te4.safetensors",
        &safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["a","b","x"]"#)),
    );
    let src = DataSource::File {
        train: tr.clone(),
        test: Some(named.clone()),
    };
    err_of(
        load_source(&src, &SourceOptions::default()),
        &named,
        &["differ"],
    );
    // No test file: said so in the notes.
    let src = DataSource::File {
        train: tr,
        test: None,
    };
    let l = load_source_with_notes(&src, &SourceOptions::default()).unwrap();
    assert!(l.test.is_none());
    assert!(
        l.notes.iter().any(|n| n.contains("no test set")),
        "{:?}",
        l.notes
    );
}

// ---------------------------------------------------------------------------------------------
// Truncation and corruption

fn assert_no_reader_crash(e: &str) {
    assert!(!e.contains("reader failed"), "a reader crashed: {e}");
}

#[test]
fn truncation_at_every_byte_gives_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let (x, y) = sample(3, 1, 2, 3, 2);
    let xa = u8_arr(&[3, 1, 2, 3], &x);
    let ya = i64_arr(&y);
    let files = [
        (
            "t.safetensors",
            safetensors_bytes(&[("x", &xa), ("y", &ya)], Some(r#"["a","b"]"#)),
        ),
        (
            "s.npz",
            npz(
                &[
                    ("x", &xa),
                    ("y", &ya),
                    ("classes", &unicode_arr(&["a", "b"])),
                ],
                false,
            ),
        ),
        ("z.npz", npz(&[("x", &xa), ("y", &ya)], true)),
    ];
    for (name, full) in files {
        let p = d.path().join(name);
        std::fs::write(&p, &full).unwrap();
        load(&p).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let e = load(&p).map(|_| ()).unwrap_err().to_string();
            assert!(
                e.contains(&p.display().to_string()),
                "cut {cut} of {name}: {e}"
            );
            assert_no_reader_crash(&e);
        }
        // Flipping any single byte must never crash (it may still load: a changed pixel).
        for i in 0..full.len() {
            let mut b = full.clone();
            b[i] ^= 0x5a;
            std::fs::write(&p, &b).unwrap();
            if let Err(e) = load(&p) {
                let e = e.to_string();
                assert!(
                    e.contains(&p.display().to_string()),
                    "flip {i} of {name}: {e}"
                );
                assert_no_reader_crash(&e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Image folders

fn gray(w: u32, h: u32, seed: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |i, j| {
        Luma([((i * 31 + j * 17 + seed * 7) % 256) as u8])
    })
}

fn rgb(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |i, j| {
        Rgb([
            ((i * 13 + seed) % 256) as u8,
            ((j * 29 + seed * 3) % 256) as u8,
            ((i * j + seed * 5) % 256) as u8,
        ])
    })
}

/// Channel-major pixels of an interleaved image.
fn planar(px: &[u8], channels: usize) -> Vec<u8> {
    let plane = px.len() / channels;
    (0..channels)
        .flat_map(|c| (0..plane).map(move |i| px[i * channels + c]))
        .collect()
}

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

#[test]
fn grayscale_png_folder_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let root = mkdir(&d.path().join("shapes"));
    // Classes out of creation order: labels follow the sorted names.
    let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
    for (label, class) in ["circle", "square", "triangle"].iter().enumerate() {
        let cdir = mkdir(&root.join(class));
        for k in 0..(label as u32 + 1) {
            let img = gray(5, 4, label as u32 * 10 + k);
            img.save(cdir.join(format!("img{k}.png"))).unwrap();
            want.push((label as u8, img.into_raw()));
        }
    }
    // A nested folder is read too (after the class folder's own files).
    let nested = mkdir(&root.join("square/more"));
    let img = gray(5, 4, 99);
    img.save(nested.join("deep.PNG")).unwrap();
    want.insert(3, (1, img.into_raw()));
    std::fs::write(root.join("circle/notes.txt"), b"x").unwrap();
    std::fs::write(root.join("README"), b"x").unwrap();
    let (train, test, report) = load_image_folder(&root, "shapes").unwrap();
    assert!(test.is_none());
    assert_eq!(train.name, "shapes/train");
    assert_eq!(report.classes, vec!["circle", "square", "triangle"]);
    assert_eq!(train.class_names, report.classes);
    assert_eq!(train.image_shape(), (1, 4, 5));
    assert_eq!(train.len(), 7);
    let labels: Vec<i64> = want.iter().map(|(l, _)| *l as i64).collect();
    assert_eq!(train.labels_vec(), labels);
    let px: Vec<u8> = want.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(pixels(&train), scaled(&px));
    assert_eq!(report.skipped.len(), 2);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("skipped 2 file(s)") && n.contains("notes.txt")),
        "{:?}",
        report.notes
    );
    // Through a data source.
    let src: DataSource = format!("folder:{}", root.display()).parse().unwrap();
    let l = load_source_with_notes(&src, &SourceOptions::default()).unwrap();
    assert_eq!(l.train.name, "shapes/train");
    assert!(l.test.is_none());
    assert!(
        l.notes.iter().any(|n| n.contains("no test set")),
        "{:?}",
        l.notes
    );
    assert!(
        l.notes.iter().any(|n| n.contains("skipped 2")),
        "{:?}",
        l.notes
    );
    let opts = SourceOptions {
        num_classes: Some(4),
        ..Default::default()
    };
    let e = load_source(&src, &opts).unwrap_err().to_string();
    assert!(
        e.contains("3 classes") && e.contains("num_classes = 4"),
        "{e}"
    );
    let opts = SourceOptions {
        class_names: Some(vec!["a".into()]),
        ..Default::default()
    };
    assert!(load_source(&src, &opts)
        .unwrap_err()
        .to_string()
        .contains("names its own classes"));
}

#[test]
fn rgb_rgba_and_sixteen_bit_pngs() {
    let d = tempfile::tempdir().unwrap();
    let root = mkdir(&d.path().join("colors"));
    let a = rgb(3, 2, 1);
    let b = rgb(3, 2, 2);
    a.save(mkdir(&root.join("a")).join("1.png")).unwrap();
    // RGBA: the alpha channel is dropped.
    let rgba = RgbaImage::from_fn(3, 2, |i, j| {
        let p = b.get_pixel(i, j);
        Rgba([p[0], p[1], p[2], (i * 50) as u8])
    });
    rgba.save(mkdir(&root.join("b")).join("1.png")).unwrap();
    let (train, _, _) = load_image_folder(&root, "c").unwrap();
    assert_eq!(train.image_shape(), (3, 2, 3));
    let mut px = planar(a.as_raw(), 3);
    px.extend(planar(b.as_raw(), 3));
    assert_eq!(pixels(&train), scaled(&px));
    // 16-bit grayscale, and a mix with 8-bit: all scaled to [0, 1].
    let root = mkdir(&d.path().join("deep"));
    let g16: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(2, 2, |i, j| Luma([(i * 30000 + j * 5000) as u16]));
    g16.save(mkdir(&root.join("a")).join("x.png")).unwrap();
    let g8 = gray(2, 2, 3);
    g8.save(mkdir(&root.join("b")).join("y.png")).unwrap();
    let (train, _, _) = load_image_folder(&root, "deep").unwrap();
    let got = pixels(&train);
    let mut want: Vec<f32> = g16.as_raw().iter().map(|&v| v as f32 / 65535.0).collect();
    want.extend(g8.as_raw().iter().map(|&v| v as f32 / 255.0));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn jpeg_split_layout() {
    let d = tempfile::tempdir().unwrap();
    let root = mkdir(&d.path().join("jpg"));
    let flat = |v: u8| RgbImage::from_pixel(8, 8, Rgb([v, v / 2, 255 - v]));
    for (split, classes) in [
        ("train", vec!["dark", "light", "mid"]),
        ("test", vec!["light", "dark"]),
    ] {
        for (k, class) in classes.iter().enumerate() {
            let cdir = mkdir(&root.join(split).join(class));
            let v = match *class {
                "dark" => 20,
                "mid" => 128,
                _ => 230,
            };
            flat(v).save(cdir.join(format!("{k}.jpg"))).unwrap();
            flat(v).save(cdir.join(format!("{k}b.JPEG"))).unwrap();
        }
    }
    std::fs::create_dir(root.join("val")).unwrap();
    let (train, test, report) = load_image_folder(&root, "jpg").unwrap();
    let test = test.unwrap();
    assert_eq!(train.image_shape(), (3, 8, 8));
    assert_eq!(train.labels_vec(), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(
        test.labels_vec(),
        vec![0, 0, 1, 1],
        "test labels follow the training classes"
    );
    assert_eq!(test.num_classes, 3);
    assert_eq!(test.name, "jpg/test");
    assert_eq!(report.test_dir, Some(root.join("test")));
    assert!(
        report.notes.iter().any(|n| n.contains("val/ is not used")),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("mid") && n.contains("test split")),
        "{:?}",
        report.notes
    );
    // JPEG is lossy: flat colors come back close.
    let first = Vec::<f32>::try_from(train.images.get(0).mean_dim(
        [1i64, 2].as_slice(),
        false,
        Kind::Float,
    ))
    .unwrap();
    let want = [20.0 / 255.0, 10.0 / 255.0, 235.0 / 255.0];
    for (g, w) in first.iter().zip(want) {
        assert!((g - w).abs() < 0.03, "{first:?}");
    }
    // A test class without a training counterpart is an error naming it.
    mkdir(&root.join("test/unknown"));
    flat(5).save(root.join("test/unknown/z.jpg")).unwrap();
    let e = load_image_folder(&root, "jpg").unwrap_err().to_string();
    assert!(
        e.contains("unknown") && e.contains("no training counterpart"),
        "{e}"
    );
    // With val/ only, val/ is the test split.
    std::fs::remove_dir_all(root.join("test")).unwrap();
    let cdir = mkdir(&root.join("val/dark"));
    flat(20).save(cdir.join("v.jpg")).unwrap();
    let (_, test, report) = load_image_folder(&root, "jpg").unwrap();
    assert_eq!(test.unwrap().len(), 1);
    assert_eq!(report.test_dir, Some(root.join("val")));
}

#[test]
fn folder_errors_name_the_file_and_what_differs() {
    let d = tempfile::tempdir().unwrap();
    let mk = |name: &str| {
        let root = mkdir(&d.path().join(name));
        gray(4, 4, 1)
            .save(mkdir(&root.join("a")).join("1.png"))
            .unwrap();
        gray(4, 4, 2)
            .save(mkdir(&root.join("b")).join("1.png"))
            .unwrap();
        root
    };
    let root = mk("size");
    let odd = root.join("b/2.png");
    gray(4, 5, 3).save(&odd).unwrap();
    let e = err_of(
        load_image_folder(&root, "x"),
        &odd,
        &["4x5", "4x4", "size differs"],
    );
    assert!(
        e.contains(&root.join("a/1.png").display().to_string()),
        "names the reference: {e}"
    );
    let root = mk("channels");
    let odd = root.join("b/2.png");
    rgb(4, 4, 3).save(&odd).unwrap();
    err_of(
        load_image_folder(&root, "x"),
        &odd,
        &["channel count differs", "3 channels", "1 channel"],
    );
    let root = mk("empty");
    let empty = mkdir(&root.join("c"));
    std::fs::write(empty.join("readme.txt"), b"x").unwrap();
    err_of(
        load_image_folder(&root, "x"),
        &empty,
        &["class folder `c`", "no image"],
    );
    let root = mk("corrupt");
    let bad = root.join("b/2.png");
    std::fs::write(&bad, b"this is not a png").unwrap();
    err_of(load_image_folder(&root, "x"), &bad, &["not a PNG or JPEG"]);
    let root = mk("noclass");
    let flat_root = mkdir(&d.path().join("flat"));
    std::fs::copy(root.join("a/1.png"), flat_root.join("1.png")).unwrap();
    err_of(
        load_image_folder(&flat_root, "x"),
        &flat_root,
        &["no class folder"],
    );
    let none = d.path().join("nowhere");
    err_of(load_image_folder(&none, "x"), &none, &["no such folder"]);
}

#[test]
fn truncated_images_give_errors_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let root = mkdir(&d.path().join("trunc"));
    let img = rgb(16, 16, 1);
    img.save(mkdir(&root.join("a")).join("ok.png")).unwrap();
    let cdir = mkdir(&root.join("b"));
    for (name, format) in [
        ("t.png", image::ImageFormat::Png),
        ("t.jpg", image::ImageFormat::Jpeg),
    ] {
        let mut full = Vec::new();
        rgb(16, 16, 4)
            .write_to(&mut std::io::Cursor::new(&mut full), format)
            .unwrap();
        let p = cdir.join(name);
        std::fs::write(&p, &full).unwrap();
        load_image_folder(&root, "x").unwrap();
        // Every prefix (same layout as the reference, so only decoding can fail) is an error
        // naming the file.
        for cut in 0..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            err_of(load_image_folder(&root, "x"), &p, &[]);
        }
        std::fs::remove_file(&p).unwrap();
    }
    // Bytes after a JPEG's end marker are tolerated.
    let mut jpg = Vec::new();
    rgb(16, 16, 5)
        .write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    jpg.extend_from_slice(b"trailing");
    std::fs::write(cdir.join("tail.jpg"), &jpg).unwrap();
    load_image_folder(&root, "x").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Data sources

#[test]
fn named_source_loads_from_a_folder() {
    let root = tempfile::tempdir().unwrap();
    write_synthetic_idx(root.path(), 10, 2, 1, 4, 0.1, 3).unwrap();
    let src: DataSource = format!("fmnist@{}", root.path().display()).parse().unwrap();
    assert_eq!(
        src.to_string(),
        format!("fashion-mnist@{}", root.path().display())
    );
    let (train, test) = load_source(&src, &SourceOptions::default()).unwrap();
    assert_eq!(train.len(), 20);
    assert_eq!(test.unwrap().len(), 10);
    let opts = SourceOptions {
        num_classes: Some(3),
        ..Default::default()
    };
    let e = load_source(&src, &opts).unwrap_err().to_string();
    assert!(
        e.contains("num_classes = 3") && e.contains("10 classes"),
        "{e}"
    );
    // Sources as config values.
    #[derive(serde::Deserialize)]
    struct Cfg {
        data: DataSource,
        #[serde(default)]
        options: SourceOptions,
    }
    let c: Cfg = serde_json::from_str(
        r#"{"data": "file:a.npz,b.npz", "options": {"num_classes": 4, "allow_empty_classes": true}}"#,
    )
    .unwrap();
    assert_eq!(
        c.data,
        DataSource::File {
            train: "a.npz".into(),
            test: Some("b.npz".into())
        }
    );
    assert_eq!(c.options.num_classes, Some(4));
    assert!(serde_json::from_str::<SourceOptions>(r#"{"classes": 3}"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Files written by numpy itself

const NUMPY_SCRIPT: &str = r#"
import sys
import numpy as np
out = sys.argv[1]
n, c, h, w = 4, 3, 2, 5
x = (np.arange(n * c * h * w) * 37 % 256).astype(np.uint8).reshape(n, c, h, w)
y = np.array([2, 0, 1, 2], dtype=np.int32)
np.savez(out + "/plain.npz", x=x, y=y, classes=np.array(["ant", "bee", "cow"]))
xf = np.asfortranarray(x.astype(np.float64) / 255.0)
assert np.isfortran(xf)
np.savez_compressed(out + "/packed.npz", x=xf, y=y.astype(">i8"))
g = (np.arange(3 * 4 * 4) % 256).astype(np.float32).reshape(3, 4, 4) / 255.0
np.savez_compressed(out + "/gray.npz", x=g, y=np.array([0, 1, 1], dtype=np.uint8))
"#;

#[test]
fn npz_written_by_numpy() {
    let Some(py) = python_or_skip("npz_written_by_numpy") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(NUMPY_SCRIPT)
        .arg(d.path())
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!python_required(), "numpy script failed: {err}");
        eprintln!("skipping: numpy unavailable: {err}");
        return;
    }
    let (x, _) = sample(4, 3, 2, 5, 1);
    let plain = load(&d.path().join("plain.npz")).unwrap();
    assert_eq!(plain.image_shape(), (3, 2, 5));
    assert_eq!(pixels(&plain), scaled(&x));
    assert_eq!(plain.labels_vec(), vec![2, 0, 1, 2]);
    assert_eq!(plain.class_names, vec!["ant", "bee", "cow"]);
    let packed = load(&d.path().join("packed.npz")).unwrap();
    let want: Vec<f32> = x.iter().map(|&v| (v as f64 / 255.0) as f32).collect();
    assert_eq!(
        pixels(&packed),
        want,
        "Fortran-ordered float64 comes back row-major"
    );
    assert_eq!(packed.labels_vec(), vec![2, 0, 1, 2]);
    assert_eq!(packed.num_classes, 3);
    let gray = load(&d.path().join("gray.npz")).unwrap();
    assert_eq!(gray.image_shape(), (1, 4, 4));
    let want: Vec<f32> = (0..48).map(|i| (i % 256) as f32 / 255.0).collect();
    assert_eq!(pixels(&gray), want);
    assert_eq!(gray.labels_vec(), vec![0, 1, 1]);
    // Every prefix of a numpy-written archive is an error, never a crash.
    let full = std::fs::read(d.path().join("packed.npz")).unwrap();
    let p = d.path().join("cut.npz");
    for cut in (0..full.len()).step_by(7) {
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = load(&p).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("cut.npz"), "{e}");
        assert_no_reader_crash(&e);
    }
}

/// Found by `rustworthy-fuzz`: a JPEG whose header claims 65535x65535 pixels made the decoder
/// allocate 12 GB and take a minute. The header's size is now checked first.
#[test]
fn an_image_claiming_a_huge_size_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(tmp.path().join(class)).unwrap();
        GrayImage::from_pixel(8, 8, Luma([7u8]))
            .save(tmp.path().join(class).join("ok.png"))
            .unwrap();
    }
    let bad = tmp.path().join("a").join("big.jpg");
    std::fs::copy(
        rustworthy_testkit::workspace_root().join("tests/fixtures/fuzz/regress-huge-image.jpg"),
        &bad,
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let Err(e) = rustworthy_data::load_image_folder(tmp.path(), "huge") else {
        panic!("a huge image was accepted");
    };
    let e = e.to_string();
    assert!(t0.elapsed().as_secs_f64() < 5.0);
    assert!(e.contains("big.jpg") && e.contains("claims"), "{e}");
}
