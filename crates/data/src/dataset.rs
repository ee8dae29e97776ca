//! In-memory labelled image datasets, batching and epoch orders.

use rustworthy_core::{Error, Result, SeedRng};
use tch::{Device, Kind, Tensor};

/// Class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Class names of MNIST (the digits), in label order.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Class names of CIFAR-10, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Converts a list of static names to owned strings.
pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A labelled image dataset held in memory (on the CPU or on a GPU).
pub struct Dataset {
    /// Dataset name, e.g. `fashion-mnist/train`.
    pub name: String,
    /// Images `[N, C, H, W]`, `f32` in `[0, 1]`.
    pub images: Tensor,
    /// Labels `[N]`, `i64` in `0..num_classes`.
    pub labels: Tensor,
    /// Number of classes.
    pub num_classes: usize,
    /// One name per class.
    pub class_names: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("images", &self.images.size())
            .field("labels", &self.labels.size())
            .field("num_classes", &self.num_classes)
            .field("device", &self.images.device())
            .finish()
    }
}

impl Dataset {
    /// Builds a dataset after validating it: images 4-D `f32`, finite, in `[0, 1]`; labels 1-D
    /// `i64` with as many entries as images, each in `0..num_classes`; `class_names` either empty
    /// (then the names are `"0".."k-1"`) or exactly `num_classes` long.
    pub fn new(
        name: impl Into<String>,
        images: Tensor,
        labels: Tensor,
        num_classes: usize,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        let isz = images.size();
        if isz.len() != 4 {
            return Err(Error::Shape {
                op: format!("dataset {name}: images"),
                expected: "[N, C, H, W]".into(),
                got: isz,
            });
        }
        if images.kind() != Kind::Float {
            return Err(Error::invalid(format!(
                "dataset {name}: images must be float32, got {:?}",
                images.kind()
            )));
        }
        let lsz = labels.size();
        if lsz.len() != 1 || lsz[0] != isz[0] {
            return Err(Error::Shape {
                op: format!("dataset {name}: labels"),
                expected: format!("[{}] (one label per image)", isz[0]),
                got: lsz,
            });
        }
        if labels.kind() != Kind::Int64 {
            return Err(Error::invalid(format!(
                "dataset {name}: labels must be int64, got {:?}",
                labels.kind()
            )));
        }
        if labels.device() != images.device() {
            return Err(Error::invalid(format!(
                "dataset {name}: images are on {:?} but labels on {:?}",
                images.device(),
                labels.device()
            )));
        }
        if num_classes == 0 {
            return Err(Error::invalid(format!(
                "dataset {name}: num_classes must be >= 1"
            )));
        }
        let class_names = if class_names.is_empty() {
            (0..num_classes).map(|c| c.to_string()).collect()
        } else if class_names.len() != num_classes {
            return Err(Error::invalid(format!(
                "dataset {name}: {} class names given for {num_classes} classes",
                class_names.len()
            )));
        } else {
            class_names
        };
        if isz[0] > 0 {
            let lo = labels.f_min()?.f_int64_value(&[])?;
            let hi = labels.f_max()?.f_int64_value(&[])?;
            if lo < 0 || hi >= num_classes as i64 {
                let bad = if lo < 0 { lo } else { hi };
                return Err(Error::invalid(format!(
                    "dataset {name}: label {bad} is out of range 0..{num_classes}"
                )));
            }
        }
        if images.numel() > 0 {
            let finite = images.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
            if !finite {
                return Err(Error::invalid(format!(
                    "dataset {name}: images contain NaN or infinite pixels"
                )));
            }
            let lo = images.f_min()?.f_double_value(&[])?;
            let hi = images.f_max()?.f_double_value(&[])?;
            if lo < 0.0 || hi > 1.0 {
                return Err(Error::invalid(format!(
                    "dataset {name}: pixels must lie in [0, 1], found range [{lo}, {hi}]"
                )));
            }
        }
        Ok(Dataset {
            name,
            images,
            labels,
            num_classes,
            class_names,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    /// Whether the dataset holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image shape `(channels, height, width)`.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        let s = self.images.size();
        (s[1] as usize, s[2] as usize, s[3] as usize)
    }

    /// The device the tensors live on.
    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// A copy sharing the same tensor storage.
    pub fn shallow_clone(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    /// The dataset on `device` (storage is shared when it already lives there).
    pub fn to_device(&self, device: Device) -> Dataset {
        if device == self.device() {
            return self.shallow_clone();
        }
        Dataset {
            name: self.name.clone(),
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    fn check_indices(&self, idx: &[usize]) -> Result<()> {
        let n = self.len();
        if let Some((pos, &i)) = idx.iter().enumerate().find(|(_, &i)| i >= n) {
            return Err(Error::invalid(format!(
                "dataset {}: index {i} (at position {pos}) is out of range for length {n}",
                self.name
            )));
        }
        Ok(())
    }

    fn index_tensor(&self, idx: &[usize]) -> Tensor {
        let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        Tensor::from_slice(&v).to_device(self.device())
    }

    /// The examples at `idx`, in that order (duplicates allowed).
    pub fn subset(&self, idx: &[usize]) -> Result<Dataset> {
        self.check_indices(idx)?;
        let t = self.index_tensor(idx);
        Ok(Dataset {
            name: self.name.clone(),
            images: self.images.f_index_select(0, &t)?,
            labels: self.labels.f_index_select(0, &t)?,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        })
    }

    /// All labels, copied to the host.
    pub fn labels_vec(&self) -> Vec<i64> {
        let l = self.labels.to_device(Device::Cpu).contiguous();
        Vec::<i64>::try_from(&l).expect("labels are a 1-D int64 tensor")
    }

    /// Number of examples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for l in self.labels_vec() {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Indices (ascending) of the examples labelled `class`.
    pub fn indices_of_class(&self, class: usize) -> Vec<usize> {
        self.labels_vec()
            .iter()
            .enumerate()
            .filter(|(_, &l)| l as usize == class)
            .map(|(i, _)| i)
            .collect()
    }

    /// Images and labels at `idx`, gathered on the dataset's device.
    ///
    /// # Panics
    /// If an index is out of range (use [`Dataset::try_batch`] to get an error instead).
    pub fn batch(&self, idx: &[usize]) -> (Tensor, Tensor) {
        match self.try_batch(idx) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Dataset::batch`], but an out-of-range index is an error.
    pub fn try_batch(&self, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        self.check_indices(idx)?;
        let t = self.index_tensor(idx);
        Ok((
            self.images.f_index_select(0, &t)?,
            self.labels.f_index_select(0, &t)?,
        ))
    }

    /// The examples at the int64 indices `idx` (a tensor on the dataset's device), gathered
    /// there: no transfer and no host synchronization. The indices are trusted to be in range
    /// (index with [`Dataset::try_batch`] to have them checked).
    pub fn batch_at(&self, idx: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.images.f_index_select(0, idx)?,
            self.labels.f_index_select(0, idx)?,
        ))
    }

    /// The order of [`epoch_order`] as an int64 tensor on the dataset's device (one copy).
    pub fn order_tensor(&self, order: &[usize]) -> Result<Tensor> {
        self.check_indices(order)?;
        Ok(self.index_tensor(order))
    }

    /// Batches of one epoch: shuffled with the `shuffle` stream of `seed` for `epoch` when
    /// `shuffle`, in index order otherwise.
    pub fn batches(
        &self,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        epoch: u64,
        drop_last: bool,
    ) -> Result<BatchIter<'_>> {
        BatchIter::new(
            self,
            epoch_order(self.len(), shuffle, seed, epoch),
            batch_size,
            drop_last,
        )
    }
}

/// The order in which an epoch visits `0..n`: a permutation drawn from
/// `SeedRng::stream(seed, "shuffle", epoch)` when `shuffle`, else `0..n`.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    if shuffle {
        SeedRng::stream(seed, "shuffle", epoch).permutation(n)
    } else {
        (0..n).collect()
    }
}

/// One mini-batch.
pub struct Batch {
    /// Images `[B, C, H, W]` on the dataset's device.
    pub x: Tensor,
    /// Labels `[B]` on the dataset's device.
    pub y: Tensor,
    /// Dataset indices of the examples, in batch order.
    pub idx: Vec<usize>,
}

/// Iterates over a dataset in a given order, `batch_size` examples at a time.
pub struct BatchIter<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    pos: usize,
}

impl<'a> BatchIter<'a> {
    /// Batches of `data` in `order`. With `drop_last`, a final incomplete batch is skipped.
    /// Errors on `batch_size == 0` or an index of `order` outside the dataset.
    pub fn new(
        data: &'a Dataset,
        order: Vec<usize>,
        batch_size: usize,
        drop_last: bool,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", "must be >= 1, got 0"));
        }
        data.check_indices(&order)?;
        Ok(BatchIter {
            data,
            order,
            batch_size,
            drop_last,
            pos: 0,
        })
    }

    /// Total number of batches this iterator yields from the start.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn remaining(&self) -> usize {
        let left = self.order.len() - self.pos;
        if self.drop_last {
            left / self.batch_size
        } else {
            left.div_ceil(self.batch_size)
        }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let left = self.order.len() - self.pos;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            return None;
        }
        let end = self.pos + left.min(self.batch_size);
        let idx = self.order[self.pos..end].to_vec();
        self.pos = end;
        let (x, y) = self.data.batch(&idx);
        Some(Batch { x, y, idx })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, k: usize) -> Dataset {
        let x = Tensor::arange(n as i64 * 4, (Kind::Float, Device::Cpu)).view([n as i64, 1, 2, 2])
            / (n as f64 * 4.0);
        let y: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
        Dataset::new("toy", x, Tensor::from_slice(&y), k, vec![]).unwrap()
    }

    #[test]
    fn basic_accessors() {
        let d = toy(10, 3);
        assert_eq!(d.len(), 10);
        assert!(!d.is_empty());
        assert_eq!(d.image_shape(), (1, 2, 2));
        assert_eq!(d.device(), Device::Cpu);
        assert_eq!(d.class_counts(), vec![4, 3, 3]);
        assert_eq!(d.indices_of_class(1), vec![1, 4, 7]);
        assert_eq!(d.class_names, vec!["0", "1", "2"]);
        assert_eq!(d.labels_vec()[..4], [0, 1, 2, 0]);
        let c = d.to_device(Device::Cpu);
        assert_eq!(c.len(), 10);
        assert!(format!("{d:?}").contains("toy"));
    }

    #[test]
    fn subset_and_batch_select_rows() {
        let d = toy(6, 2);
        let s = d.subset(&[5, 0, 5]).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels_vec(), vec![1, 0, 1]);
        let first = s.images.get(0).flatten(0, -1);
        let want = d.images.get(5).flatten(0, -1);
        assert!(first.equal(&want));
        let (x, y) = d.batch(&[2, 3]);
        assert_eq!(x.size(), vec![2, 1, 2, 2]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![0, 1]);
    }

    #[test]
    fn subset_out_of_range_names_index_and_len() {
        let d = toy(6, 2);
        let e = d.subset(&[1, 6]).unwrap_err().to_string();
        assert!(e.contains("index 6") && e.contains("length 6"), "{e}");
        assert!(d.try_batch(&[100]).is_err());
        let empty = d.subset(&[]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.image_shape(), (1, 2, 2));
    }

    #[test]
    fn new_rejects_bad_inputs() {
        let y = Tensor::from_slice(&[0i64, 1]);
        let ok = Tensor::full([2, 1, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        assert!(Dataset::new("d", ok.shallow_clone(), y.shallow_clone(), 2, vec![]).is_ok());

        let nan = ok.copy();
        let _ = nan.get(1).get(0).get(0).get(0).fill_(f64::NAN);
        let e = Dataset::new("d", nan, y.shallow_clone(), 2, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");

        let big = ok.copy();
        let _ = big.get(0).get(0).get(1).get(1).fill_(1.5);
        let e = Dataset::new("d", big, y.shallow_clone(), 2, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[0, 1]") && e.contains("1.5"), "{e}");

        let neg = ok.copy();
        let _ = neg.get(0).get(0).get(1).get(1).fill_(-0.1);
        assert!(Dataset::new("d", neg, y.shallow_clone(), 2, vec![]).is_err());

        let e = Dataset::new(
            "d",
            ok.shallow_clone(),
            Tensor::from_slice(&[0i64, 2]),
            2,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("label 2") && e.contains("out of range"), "{e}");
        let e = Dataset::new(
            "d",
            ok.shallow_clone(),
            Tensor::from_slice(&[-1i64, 0]),
            2,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("label -1"), "{e}");

        let e = Dataset::new(
            "d",
            ok.shallow_clone(),
            Tensor::from_slice(&[0i64]),
            2,
            vec![],
        )
        .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = Dataset::new("d", ok.view([2, 4]), y.shallow_clone(), 2, vec![]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = Dataset::new("d", ok.to_kind(Kind::Double), y.shallow_clone(), 2, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("float32"), "{e}");
        let e = Dataset::new("d", ok.shallow_clone(), y.to_kind(Kind::Int), 2, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("int64"), "{e}");
        let e = Dataset::new("d", ok.shallow_clone(), y, 2, names(&["a"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 class names"), "{e}");
    }

    fn check_cover(n: usize, bs: usize, drop_last: bool) {
        let d = toy(n, 3);
        let order = epoch_order(n, true, 9, 2);
        let it = BatchIter::new(&d, order.clone(), bs, drop_last).unwrap();
        let expected_batches = if drop_last { n / bs } else { n.div_ceil(bs) };
        assert_eq!(it.num_batches(), expected_batches);
        assert_eq!(it.len(), expected_batches);
        let mut seen = vec![0usize; n];
        let mut batches = 0;
        let mut visited = Vec::new();
        for b in it {
            batches += 1;
            assert_eq!(b.x.size()[0] as usize, b.idx.len());
            assert_eq!(b.y.size()[0] as usize, b.idx.len());
            assert!(b.idx.len() <= bs);
            if drop_last {
                assert_eq!(b.idx.len(), bs);
            }
            let y = Vec::<i64>::try_from(&b.y).unwrap();
            for (&i, &l) in b.idx.iter().zip(&y) {
                assert_eq!(l, (i % 3) as i64, "label travels with its index");
                seen[i] += 1;
            }
            visited.extend(b.idx);
        }
        assert_eq!(batches, expected_batches);
        assert_eq!(visited[..], order[..visited.len()]);
        if drop_last {
            assert_eq!(seen.iter().sum::<usize>(), (n / bs) * bs);
            assert!(seen.iter().all(|&c| c <= 1));
        } else {
            assert!(seen.iter().all(|&c| c == 1), "every index exactly once");
        }
    }

    #[test]
    fn batch_iter_covers_every_index_once() {
        check_cover(10, 3, false);
        check_cover(10, 3, true);
        check_cover(9, 3, false);
        check_cover(9, 3, true);
        check_cover(4, 10, false);
        check_cover(4, 10, true);
    }

    #[test]
    fn cuda_resident_batches_when_available() {
        if !tch::Cuda::is_available() {
            eprintln!("skipping: no CUDA device");
            return;
        }
        let d = toy(10, 3);
        let g = d.to_device(Device::Cuda(0));
        assert_eq!(g.device(), Device::Cuda(0));
        let (x, y) = g.batch(&[7, 2]);
        assert_eq!(x.device(), Device::Cuda(0));
        let (cx, cy) = d.batch(&[7, 2]);
        assert!(x.to_device(Device::Cpu).equal(&cx) && y.to_device(Device::Cpu).equal(&cy));
        assert_eq!(g.subset(&[1, 1]).unwrap().labels_vec(), vec![1, 1]);
        assert_eq!(g.class_counts(), d.class_counts());
    }

    #[test]
    fn batch_iter_rejects_zero_batch_size_and_bad_order() {
        let d = toy(4, 2);
        let e = BatchIter::new(&d, vec![0, 1], 0, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        assert!(BatchIter::new(&d, vec![0, 4], 2, false).is_err());
        assert_eq!(d.batches(3, false, 0, 0, false).unwrap().count(), 2);
    }

    #[test]
    fn epoch_order_is_deterministic_permutation() {
        assert_eq!(epoch_order(5, false, 1, 0), vec![0, 1, 2, 3, 4]);
        let a = epoch_order(50, true, 1, 0);
        assert_eq!(a, epoch_order(50, true, 1, 0));
        assert_ne!(a, epoch_order(50, true, 1, 1));
        assert_ne!(a, epoch_order(50, true, 2, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
