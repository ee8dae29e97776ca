//! Synthetic image classification data for tests and smoke runs.
//!
//! Each class has a fixed smooth prototype image (random values on a coarse grid, bilinearly
//! interpolated), derived from the seed. A sample is `clamp(prototype + noise * N(0, 1), 0, 1)`
//! per pixel. At noise around 0.2-0.3 a small network separates the classes almost perfectly;
//! at noise well above 1 the clamped samples overlap heavily.

use crate::dataset::Dataset;
use crate::idx::write_idx_u8;
use crate::locate::IDX_STEMS;
use rustworthy_core::{validate, Error, Result, SeedRng};
use std::path::Path;
use tch::Tensor;

/// Side of the coarse grid a prototype is drawn on.
const GRID: usize = 4;

fn check_args(num_classes: usize, channels: usize, size: usize, noise: f64) -> Result<()> {
    validate::positive_int("num_classes", num_classes)?;
    validate::positive_int("channels", channels)?;
    validate::positive_int("size", size)?;
    validate::non_negative("noise", noise)?;
    Ok(())
}

/// The prototype of `class`: `channels * size * size` values in `[0.15, 0.85]`.
fn prototype(class: usize, channels: usize, size: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeedRng::stream(seed, "synthetic-prototype", class as u64);
    let mut out = Vec::with_capacity(channels * size * size);
    for _ in 0..channels {
        let grid: Vec<f64> = (0..GRID * GRID).map(|_| rng.unit()).collect();
        let at = |gy: usize, gx: usize| grid[gy * GRID + gx];
        for i in 0..size {
            for j in 0..size {
                let pos = |k: usize| {
                    if size == 1 {
                        0.0
                    } else {
                        k as f64 * (GRID - 1) as f64 / (size - 1) as f64
                    }
                };
                let (u, v) = (pos(i), pos(j));
                let (y0, x0) = (
                    (u.floor() as usize).min(GRID - 2),
                    (v.floor() as usize).min(GRID - 2),
                );
                let (fy, fx) = (u - y0 as f64, v - x0 as f64);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                let value = top * (1.0 - fy) + bottom * fy;
                out.push((0.15 + 0.7 * value) as f32);
            }
        }
    }
    out
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut SeedRng) -> f64 {
    let u1 = 1.0 - rng.unit(); // in (0, 1]
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Pixels and labels of `n_per_class` samples per class in shuffled order; `part` selects an
/// independent noise and order stream (train and test share prototypes).
fn generate(
    num_classes: usize,
    n_per_class: usize,
    channels: usize,
    size: usize,
    noise: f64,
    seed: u64,
    part: u64,
) -> (Vec<f32>, Vec<i64>) {
    let protos: Vec<Vec<f32>> = (0..num_classes)
        .map(|c| prototype(c, channels, size, seed))
        .collect();
    let n = num_classes * n_per_class;
    let order = SeedRng::stream(seed, "synthetic-order", part).permutation(n);
    let mut rng = SeedRng::stream(seed, "synthetic-noise", part);
    let per = channels * size * size;
    let mut pixels = Vec::with_capacity(n * per);
    let mut labels = Vec::with_capacity(n);
    for s in order {
        let class = s / n_per_class;
        labels.push(class as i64);
        for &p in &protos[class] {
            let v = p as f64 + noise * gaussian(&mut rng);
            pixels.push(v.clamp(0.0, 1.0) as f32);
        }
    }
    (pixels, labels)
}

/// A synthetic dataset of `num_classes * n_per_class` images `[channels, size, size]`
/// (see the module documentation), in a deterministic shuffled order.
pub fn try_synthetic(
    num_classes: usize,
    n_per_class: usize,
    channels: usize,
    size: usize,
    noise: f64,
    seed: u64,
) -> Result<Dataset> {
    check_args(num_classes, channels, size, noise)?;
    let (pixels, labels) = generate(num_classes, n_per_class, channels, size, noise, seed, 0);
    let n = labels.len() as i64;
    let (c, s) = (channels as i64, size as i64);
    let x = Tensor::from_slice(&pixels).view([n, c, s, s]);
    let y = Tensor::from_slice(&labels);
    Dataset::new("synthetic", x, y, num_classes, vec![])
}

/// Like [`try_synthetic`].
///
/// # Panics
/// On a zero count, size or channel number, or a negative or non-finite `noise`.
pub fn synthetic(
    num_classes: usize,
    n_per_class: usize,
    channels: usize,
    size: usize,
    noise: f64,
    seed: u64,
) -> Dataset {
    match try_synthetic(num_classes, n_per_class, channels, size, noise, seed) {
        Ok(d) => d,
        Err(e) => panic!("synthetic dataset: {e}"),
    }
}

/// Writes a synthetic single-channel dataset to `dir` as gzip IDX files with Fashion-MNIST file
/// names (`train-images-idx3-ubyte.gz`, ...), so it can stand in for Fashion-MNIST or MNIST.
/// Train and test share the class prototypes and differ in noise. `num_classes` is 1 to 10.
pub fn write_synthetic_idx(
    dir: &Path,
    num_classes: usize,
    train_per_class: usize,
    test_per_class: usize,
    size: usize,
    noise: f64,
    seed: u64,
) -> Result<()> {
    check_args(num_classes, 1, size, noise)?;
    if num_classes > 10 {
        return Err(Error::config(
            "num_classes",
            format!("the Fashion-MNIST layout holds labels 0..9, got {num_classes} classes"),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (part, per_class, [img_stem, lab_stem]) in [
        (0u64, train_per_class, [IDX_STEMS[0], IDX_STEMS[1]]),
        (1u64, test_per_class, [IDX_STEMS[2], IDX_STEMS[3]]),
    ] {
        let (pixels, labels) = generate(num_classes, per_class, 1, size, noise, seed, part);
        let bytes: Vec<u8> = pixels.iter().map(|&v| (v * 255.0).round() as u8).collect();
        let labels: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
        write_idx_u8(
            &dir.join(format!("{img_stem}.gz")),
            &[labels.len(), size, size],
            &bytes,
            true,
        )?;
        write_idx_u8(
            &dir.join(format!("{lab_stem}.gz")),
            &[labels.len()],
            &labels,
            true,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Accuracy of the nearest class mean (means from `train`) on `test`.
    fn nearest_mean_accuracy(train: &Dataset, test: &Dataset) -> f64 {
        let k = train.num_classes as i64;
        let flat = train.images.flatten(1, -1);
        let onehot = train.labels.one_hot(k).to_kind(Kind::Float); // [N, k]
        let counts = onehot.sum_dim_intlist(0, false, Kind::Float).unsqueeze(1);
        let means = onehot.transpose(0, 1).matmul(&flat) / counts; // [k, D]
        let t = test.images.flatten(1, -1);
        let d = t.unsqueeze(1) - means.unsqueeze(0);
        let dist = (&d * &d).sum_dim_intlist(2, false, Kind::Float);
        let pred = dist.argmin(1, false);
        pred.eq_tensor(&test.labels)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn deterministic_and_balanced() {
        let a = synthetic(4, 10, 3, 8, 0.2, 7);
        let b = synthetic(4, 10, 3, 8, 0.2, 7);
        let c = synthetic(4, 10, 3, 8, 0.2, 8);
        assert_eq!(a.len(), 40);
        assert_eq!(a.image_shape(), (3, 8, 8));
        assert!(a.images.equal(&b.images) && a.labels.equal(&b.labels));
        assert!(!a.images.equal(&c.images));
        assert_eq!(a.class_counts(), vec![10; 4]);
        let l = a.labels_vec();
        assert_ne!(
            l,
            {
                let mut s = l.clone();
                s.sort();
                s
            },
            "shuffled"
        );
        assert!(a.images.min().double_value(&[]) >= 0.0);
        assert!(a.images.max().double_value(&[]) <= 1.0);
        // Zero noise: every sample equals its class prototype.
        let z = synthetic(3, 2, 1, 5, 0.0, 1);
        for (i, &l) in z.labels_vec().iter().enumerate() {
            let p = Tensor::from_slice(&prototype(l as usize, 1, 5, 1)).view([1, 5, 5]);
            assert!(z.images.get(i as i64).allclose(&p, 1e-6, 1e-6, false));
        }
    }

    #[test]
    fn learnable_at_low_noise_harder_at_high_noise() {
        let easy_train = synthetic(10, 40, 1, 12, 0.25, 3);
        let acc = nearest_mean_accuracy(&easy_train, &make(10, 40, 12, 0.25, 3, 1));
        assert!(acc > 0.95, "low noise accuracy {acc}");
        // At noise 1 the same classifier is far from perfect but still above chance (0.1).
        let hard_train = synthetic(10, 40, 1, 12, 1.0, 3);
        let acc_hard = nearest_mean_accuracy(&hard_train, &make(10, 40, 12, 1.0, 3, 1));
        assert!(
            acc_hard < 0.8 && acc_hard > 0.15,
            "high noise accuracy {acc_hard}"
        );
    }

    fn make(k: usize, n: usize, size: usize, noise: f64, seed: u64, part: u64) -> Dataset {
        let (p, l) = generate(k, n, 1, size, noise, seed, part);
        let x = Tensor::from_slice(&p).view([l.len() as i64, 1, size as i64, size as i64]);
        Dataset::new("t", x, Tensor::from_slice(&l), k, vec![]).unwrap()
    }

    #[test]
    fn bad_arguments() {
        assert!(try_synthetic(0, 1, 1, 4, 0.1, 0).is_err());
        assert!(try_synthetic(2, 1, 0, 4, 0.1, 0).is_err());
        let e = try_synthetic(2, 1, 1, 4, -0.1, 0).unwrap_err().to_string();
        assert!(e.contains("noise"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = write_synthetic_idx(d.path(), 11, 1, 1, 4, 0.1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_classes"), "{e}");
    }

    #[test]
    fn idx_files_load_back() {
        let d = tempfile::tempdir().unwrap();
        write_synthetic_idx(d.path(), 3, 5, 2, 6, 0.2, 9).unwrap();
        let files = crate::locate::idx_files_in(d.path()).unwrap();
        let train =
            crate::idx::load_idx_pair(&files.train_images, &files.train_labels, "s", 3, &[])
                .unwrap();
        let test =
            crate::idx::load_idx_pair(&files.test_images, &files.test_labels, "s", 3, &[]).unwrap();
        assert_eq!(train.len(), 15);
        assert_eq!(test.len(), 6);
        assert_eq!(train.class_counts(), vec![5; 3]);
        assert_eq!(train.image_shape(), (1, 6, 6));
        // Same noise stream as the in-memory generator, up to 8-bit quantisation.
        let mem = make(3, 5, 6, 0.2, 9, 0);
        assert!(train.labels.equal(&mem.labels));
        let diff = (&train.images - &mem.images).abs().max().double_value(&[]);
        assert!(diff <= 0.5 / 255.0 + 1e-6, "{diff}");
    }
}
