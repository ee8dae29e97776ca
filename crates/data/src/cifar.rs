//! CIFAR-10 and CIFAR-100 binary files.
//!
//! A CIFAR-10 record is one label byte then 3072 pixel bytes (32x32, channel-major: all red, then
//! green, then blue). A CIFAR-100 record is a coarse label byte, a fine label byte, then the same
//! 3072 pixel bytes; rustworthy uses the fine labels (100 classes).

use crate::dataset::{names, Dataset, CIFAR10_CLASSES};
use rustworthy_core::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Pixel bytes per CIFAR image (3 x 32 x 32).
pub const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Folder that the CIFAR-10 binary archive extracts to.
pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";
/// Folder that the CIFAR-100 binary archive extracts to.
pub const CIFAR100_DIR: &str = "cifar-100-binary";
/// CIFAR-10 training batch files.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// CIFAR-10 test batch file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// CIFAR-100 training file.
pub const CIFAR100_TRAIN_FILE: &str = "train.bin";
/// CIFAR-100 test file.
pub const CIFAR100_TEST_FILE: &str = "test.bin";

/// CIFAR-100 fine class names, in label order.
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR record layout a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// 1 label byte + 3072 pixels, 10 classes.
    Cifar10,
    /// coarse byte + fine byte + 3072 pixels; fine labels, 100 classes (20 coarse).
    Cifar100,
}

impl CifarKind {
    /// Bytes per record.
    pub fn record_size(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + CIFAR_PIXELS,
            CifarKind::Cifar100 => 2 + CIFAR_PIXELS,
        }
    }

    /// Number of classes of the labels used.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

/// Raw content of one or more CIFAR files: `n * 3072` pixel bytes (CHW per image) and `n` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CifarRaw {
    /// Pixels, image after image, each `[3, 32, 32]`.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<i64>,
}

/// Reads one CIFAR binary file, appending its images and labels to `out`. The file size must be
/// a non-zero multiple of the record size and every label must be in range; errors name the file.
pub fn read_cifar_file(path: &Path, kind: CifarKind, out: &mut CifarRaw) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let rec = kind.record_size() as u64;
    if len == 0 || len % rec != 0 {
        return Err(Error::corrupt(
            path,
            format!(
                "size {len} bytes is not a non-zero multiple of the {rec}-byte {kind:?} record"
            ),
        ));
    }
    let n = (len / rec) as usize;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    out.pixels.reserve(n * CIFAR_PIXELS);
    out.labels.reserve(n);
    for (i, r) in bytes.chunks_exact(rec as usize).enumerate() {
        let (label, px) = match kind {
            CifarKind::Cifar10 => (r[0], &r[1..]),
            CifarKind::Cifar100 => {
                if r[0] >= 20 {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "coarse label {} of record {i} is out of range for 20 classes",
                            r[0]
                        ),
                    ));
                }
                (r[1], &r[2..])
            }
        };
        if label as usize >= kind.num_classes() {
            return Err(Error::corrupt(
                path,
                format!(
                    "label {label} of record {i} is out of range for {} classes",
                    kind.num_classes()
                ),
            ));
        }
        out.labels.push(label as i64);
        out.pixels.extend_from_slice(px);
    }
    Ok(())
}

/// Reads and concatenates CIFAR files into a dataset of `[N, 3, 32, 32]` images in `[0, 1]`.
pub fn load_cifar_files(
    files: &[PathBuf],
    kind: CifarKind,
    name: &str,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let mut raw = CifarRaw::default();
    for f in files {
        read_cifar_file(f, kind, &mut raw)?;
    }
    let n = raw.labels.len() as i64;
    let x = Tensor::from_slice(&raw.pixels)
        .view([n, 3, 32, 32])
        .to_kind(Kind::Float)
        / 255.0;
    let y = Tensor::from_slice(&raw.labels);
    Dataset::new(name, x, y, kind.num_classes(), class_names)
}

/// Class names from a `*.txt` meta file beside the data when it lists exactly `count` names,
/// else the built-in list.
fn class_names_from(meta: &Path, count: usize, builtin: &[&str]) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(meta) {
        let list: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if list.len() == count {
            return list;
        }
    }
    names(builtin)
}

/// Loads CIFAR-10 (train, test) from a `cifar-10-batches-bin` folder
/// (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`).
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    let classes = class_names_from(&dir.join("batches.meta.txt"), 10, &CIFAR10_CLASSES);
    let train: Vec<PathBuf> = CIFAR10_TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    let train = load_cifar_files(&train, CifarKind::Cifar10, "cifar10/train", classes.clone())?;
    let test = load_cifar_files(
        &[dir.join(CIFAR10_TEST_FILE)],
        CifarKind::Cifar10,
        "cifar10/test",
        classes,
    )?;
    Ok((train, test))
}

/// Loads CIFAR-100 with fine labels (train, test) from a `cifar-100-binary` folder
/// (`train.bin`, `test.bin`).
pub fn load_cifar100(dir: &Path) -> Result<(Dataset, Dataset)> {
    let classes = class_names_from(&dir.join("fine_label_names.txt"), 100, &CIFAR100_CLASSES);
    let train = load_cifar_files(
        &[dir.join(CIFAR100_TRAIN_FILE)],
        CifarKind::Cifar100,
        "cifar100/train",
        classes.clone(),
    )?;
    let test = load_cifar_files(
        &[dir.join(CIFAR100_TEST_FILE)],
        CifarKind::Cifar100,
        "cifar100/test",
        classes,
    )?;
    Ok((train, test))
}

/// Writes records in CIFAR layout (used by tests to build small files). For CIFAR-100 the coarse
/// label is written as `fine / 5`.
pub fn write_cifar_file(path: &Path, kind: CifarKind, pixels: &[u8], labels: &[u8]) -> Result<()> {
    if pixels.len() != labels.len() * CIFAR_PIXELS {
        return Err(Error::invalid(format!(
            "{}: {} pixel bytes for {} labels (need {} per image)",
            path.display(),
            pixels.len(),
            labels.len(),
            CIFAR_PIXELS
        )));
    }
    let mut bytes = Vec::with_capacity(labels.len() * kind.record_size());
    for (l, px) in labels.iter().zip(pixels.chunks_exact(CIFAR_PIXELS)) {
        if kind == CifarKind::Cifar100 {
            bytes.push(l / 5);
        }
        bytes.push(*l);
        bytes.extend_from_slice(px);
    }
    rustworthy_core::fsutil::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(n: usize, salt: u8) -> Vec<u8> {
        (0..n * CIFAR_PIXELS)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    #[test]
    fn cifar10_folder_loads() {
        let d = tempfile::tempdir().unwrap();
        for (i, f) in CIFAR10_TRAIN_FILES.iter().enumerate() {
            write_cifar_file(
                &d.path().join(f),
                CifarKind::Cifar10,
                &pixels(2, i as u8),
                &[i as u8, 9],
            )
            .unwrap();
        }
        write_cifar_file(
            &d.path().join(CIFAR10_TEST_FILE),
            CifarKind::Cifar10,
            &pixels(3, 77),
            &[1, 2, 3],
        )
        .unwrap();
        let (train, test) = load_cifar10(d.path()).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(test.len(), 3);
        assert_eq!(train.image_shape(), (3, 32, 32));
        assert_eq!(train.labels_vec(), vec![0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(train.class_names[0], "airplane");
        assert_eq!(test.labels_vec(), vec![1, 2, 3]);
        // Channel-major layout: byte k of the record maps to (k / 1024, k / 32 % 32, k % 32).
        let p = pixels(3, 77);
        let k = 1024 + 5 * 32 + 7;
        let v = test.images.get(0).get(1).get(5).get(7).double_value(&[]);
        assert!((v - p[k] as f64 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let d = tempfile::tempdir().unwrap();
        write_cifar_file(
            &d.path().join(CIFAR100_TRAIN_FILE),
            CifarKind::Cifar100,
            &pixels(3, 1),
            &[99, 0, 42],
        )
        .unwrap();
        write_cifar_file(
            &d.path().join(CIFAR100_TEST_FILE),
            CifarKind::Cifar100,
            &pixels(1, 2),
            &[7],
        )
        .unwrap();
        let (train, test) = load_cifar100(d.path()).unwrap();
        assert_eq!(train.num_classes, 100);
        assert_eq!(train.labels_vec(), vec![99, 0, 42]);
        assert_eq!(test.len(), 1);
        assert_eq!(train.class_names[99], "worm");
        assert_eq!(CIFAR100_CLASSES.len(), 100);
    }

    #[test]
    fn bad_sizes_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        for (name, len) in [
            ("empty.bin", 0usize),
            ("short.bin", 3072),
            ("long.bin", 3074),
        ] {
            let p = d.path().join(name);
            std::fs::write(&p, vec![0u8; len]).unwrap();
            let e = read_cifar_file(&p, CifarKind::Cifar10, &mut CifarRaw::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("3073-byte"), "{e}");
        }
        // A CIFAR-10 sized file is not a CIFAR-100 file.
        let p = d.path().join("c10.bin");
        std::fs::write(&p, vec![0u8; 3073 * 2]).unwrap();
        let e = read_cifar_file(&p, CifarKind::Cifar100, &mut CifarRaw::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("3074-byte"), "{e}");
        let e = load_cifar10(d.path()).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }

    #[test]
    fn label_range_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.bin");
        write_cifar_file(&p, CifarKind::Cifar10, &pixels(2, 0), &[3, 10]).unwrap();
        let e = read_cifar_file(&p, CifarKind::Cifar10, &mut CifarRaw::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.bin") && e.contains("label 10 of record 1"),
            "{e}"
        );
        let p = d.path().join("bad100.bin");
        write_cifar_file(&p, CifarKind::Cifar100, &pixels(1, 0), &[100]).unwrap();
        let e = read_cifar_file(&p, CifarKind::Cifar100, &mut CifarRaw::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad100.bin") && e.contains("out of range"),
            "{e}"
        );
    }
}
