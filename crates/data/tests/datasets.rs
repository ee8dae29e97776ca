//! End-to-end loading: synthetic IDX folders through the registry, and the real Fashion-MNIST
//! when the Debian package is installed.

use rustworthy_data::locate::DEBIAN_FASHION_MNIST;
use rustworthy_data::registry::{load_located, locate_with, Located};
use rustworthy_data::{dataset_summary, load_dataset, per_class_split, write_synthetic_idx};
use rustworthy_testkit::fashion_mnist_present;
use std::path::Path;

#[test]
fn synthetic_folder_loads_as_fashion_mnist() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("fashion-mnist");
    write_synthetic_idx(&sub, 10, 6, 2, 8, 0.25, 4).unwrap();
    // Either the folder itself or its parent (via the `fashion-mnist` subfolder) works.
    for dir in [root.path(), sub.as_path()] {
        let (train, test) = load_dataset("fmnist", Some(dir)).unwrap();
        assert_eq!(train.len(), 60);
        assert_eq!(test.len(), 20);
        assert_eq!(train.name, "fashion-mnist/train");
        assert_eq!(train.class_names[0], "T-shirt/top");
        assert_eq!(train.class_counts(), vec![6; 10]);
        assert_eq!(train.image_shape(), (1, 8, 8));
    }
    // The environment value is searched after the explicit folder.
    let empty = tempfile::tempdir().unwrap();
    let located = locate_with(
        "fashion-mnist",
        Some(empty.path()),
        Some(root.path()),
        false,
    )
    .unwrap();
    match &located {
        Located::Idx(f) => assert_eq!(f.dir, sub),
        other => panic!("unexpected {other:?}"),
    }
    let (train, _) = load_located("mnist", &located).unwrap();
    assert_eq!(train.class_names[3], "3");
    let s = dataset_summary(&train);
    assert_eq!(s.n, 60);
    assert!(s.pixel_mean > 0.1 && s.pixel_mean < 0.9, "{}", s.pixel_mean);
}

#[test]
fn corrupt_file_in_located_folder_names_it() {
    let root = tempfile::tempdir().unwrap();
    write_synthetic_idx(root.path(), 2, 3, 1, 4, 0.1, 1).unwrap();
    let bad = root.path().join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&bad, [0x1f, 0x8b, 0, 0]).unwrap();
    let e = load_dataset("mnist", Some(root.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte.gz"), "{e}");
}

#[test]
fn real_fashion_mnist_when_installed() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = Path::new(DEBIAN_FASHION_MNIST);
    let (train, test) = load_dataset("fashion-mnist", Some(dir)).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.len(), 10_000);
    assert_eq!(train.num_classes, 10);
    assert_eq!(train.image_shape(), (1, 28, 28));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    let s = dataset_summary(&train);
    // Fashion-MNIST's well-known pixel statistics.
    assert!((s.pixel_mean - 0.2860).abs() < 0.001, "{}", s.pixel_mean);
    assert!((s.pixel_std - 0.3530).abs() < 0.001, "{}", s.pixel_std);
    let (tr, va) = per_class_split(&train.labels_vec(), 10, 0.1, 0).unwrap();
    assert_eq!((tr.len(), va.len()), (54_000, 6_000));
}
