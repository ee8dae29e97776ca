//! Batch augmentation on the tensor's own device: random crop with zero padding and random
//! horizontal flip. Random choices are drawn on the host from a [`SeedRng`], so a run is
//! reproducible on any device; the pixel work is one vectorised op per transform.

use rustworthy_core::{Error, Result, SeedRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Training-time augmentation of image batches `[B, C, H, W]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Zero padding on each side before a random crop back to the original size; 0 disables.
    pub crop_padding: i64,
    /// Flip each image left-right with probability 0.5.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Augment::default()
    }

    /// The usual CIFAR recipe: pad 4, random crop 32, random horizontal flip.
    pub fn cifar() -> Self {
        Augment {
            crop_padding: 4,
            hflip: true,
        }
    }

    /// Whether this augmentation leaves every batch unchanged.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// Checks the settings (`crop_padding` must be >= 0).
    pub fn validate(&self) -> Result<()> {
        if self.crop_padding < 0 {
            return Err(Error::config(
                "augment.crop_padding",
                format!("must be >= 0, got {}", self.crop_padding),
            ));
        }
        Ok(())
    }

    /// Augments a batch `[B, C, H, W]` on its device.
    ///
    /// # Panics
    /// On invalid settings or a batch that is not 4-D; [`Augment::try_apply`] returns an error
    /// instead.
    pub fn apply(&self, x: &Tensor, rng: &mut SeedRng) -> Tensor {
        match self.try_apply(x, rng) {
            Ok(t) => t,
            Err(e) => panic!("augment: {e}"),
        }
    }

    /// Augments a batch `[B, C, H, W]` on its device.
    ///
    /// Draws, in this order, one crop offset pair `(dy, dx)` per sample (each uniform in
    /// `0..=2p`) and then one flip decision per sample, from `rng`.
    pub fn try_apply(&self, x: &Tensor, rng: &mut SeedRng) -> Result<Tensor> {
        self.validate()?;
        let size = x.size();
        if size.len() != 4 {
            return Err(Error::Shape {
                op: "augment".into(),
                expected: "[B, C, H, W]".into(),
                got: size,
            });
        }
        let mut out = x.shallow_clone();
        if size[0] == 0 {
            return Ok(out);
        }
        if self.crop_padding > 0 {
            out = random_crop(&out, self.crop_padding, rng)?;
        }
        if self.hflip {
            out = random_hflip(&out, rng)?;
        }
        Ok(out)
    }
}

/// The augmentation draws of a whole epoch, uploaded to the device in one copy each, so that a
/// training step slices them there instead of copying per batch (no host-to-device transfer
/// inside the step loop). Drawn in the same order as batch-by-batch [`Augment::try_apply`]:
/// a run gets the same augmentation either way, on any device.
pub struct EpochDraws {
    /// Crop offsets `[n, 2]` (int64), or `None` without cropping.
    offsets: Option<Tensor>,
    /// Flip decisions `[n]` (bool), or `None` without flips.
    flips: Option<Tensor>,
    padding: i64,
}

impl Augment {
    /// Draws the augmentation of an epoch whose batches have the given sizes, in order, from
    /// `rng`, as [`Augment::try_apply`] would batch after batch, and uploads it to `device`.
    pub fn draw_epoch(
        &self,
        batch_sizes: impl IntoIterator<Item = usize>,
        rng: &mut SeedRng,
        device: tch::Device,
    ) -> Result<EpochDraws> {
        self.validate()?;
        let mut offsets = Vec::new();
        let mut flips = Vec::new();
        if !self.is_identity() {
            let span = (2 * self.crop_padding + 1) as usize;
            for b in batch_sizes {
                if self.crop_padding > 0 {
                    for _ in 0..b {
                        offsets.push(rng.below(span) as i64);
                        offsets.push(rng.below(span) as i64);
                    }
                }
                if self.hflip {
                    flips.extend((0..b).map(|_| rng.unit() < 0.5));
                }
            }
        }
        let offsets = if self.crop_padding > 0 {
            Some(
                Tensor::f_from_slice(&offsets)?
                    .f_view([-1, 2])?
                    .f_to_device(device)?,
            )
        } else {
            None
        };
        let flips = if self.hflip {
            Some(Tensor::f_from_slice(&flips)?.f_to_device(device)?)
        } else {
            None
        };
        Ok(EpochDraws {
            offsets,
            flips,
            padding: self.crop_padding,
        })
    }
}

impl EpochDraws {
    /// Augments the batch `x` made of the epoch's samples `lo..lo + B` (in draw order) with
    /// their draws: slices on the device, no host synchronization and no transfer.
    pub fn apply(&self, x: &Tensor, lo: usize) -> Result<Tensor> {
        let (b, _, _, _) = x.size4()?;
        // The draws of samples lo..lo + b, checked to lie within the epoch's.
        let window = |t: &Tensor| -> Result<Tensor> {
            if lo as i64 + b > t.size()[0] {
                return Err(Error::invalid(format!(
                    "augmentation draws: samples {lo}..{} of an epoch of {}",
                    lo as i64 + b,
                    t.size()[0]
                )));
            }
            Ok(t.f_narrow(0, lo as i64, b)?)
        };
        let mut out = x.shallow_clone();
        if let Some(o) = &self.offsets {
            out = crop_at_tensor(&out, self.padding, &window(o)?)?;
        }
        if let Some(f) = &self.flips {
            out = flip_where_tensor(&out, &window(f)?)?;
        }
        Ok(out)
    }
}

/// Crops every image of `x` at the given offsets of its zero-padded version, with one gather.
/// `offsets[b] = (dy, dx)`, each in `0..=2p`; offset `(p, p)` is the identity.
pub fn crop_at(x: &Tensor, p: i64, offsets: &[(i64, i64)]) -> Result<Tensor> {
    let (b, _, _, _) = x.size4()?;
    if offsets.len() as i64 != b {
        return Err(Error::invalid(format!(
            "crop_at: {} offsets for a batch of {b}",
            offsets.len()
        )));
    }
    if let Some(o) = offsets
        .iter()
        .find(|(dy, dx)| !(0..=2 * p).contains(dy) || !(0..=2 * p).contains(dx))
    {
        return Err(Error::invalid(format!(
            "crop_at: offset {o:?} outside 0..={}",
            2 * p
        )));
    }
    let flat: Vec<i64> = offsets.iter().flat_map(|&(dy, dx)| [dy, dx]).collect();
    let off = Tensor::f_from_slice(&flat)?
        .f_to_device(x.device())?
        .f_view([b, 2])?;
    crop_at_tensor(x, p, &off)
}

/// [`crop_at`] with the offsets as an int64 tensor `[B, 2]` on `x`'s device (trusted to lie in
/// `0..=2p`: they index the padded image).
fn crop_at_tensor(x: &Tensor, p: i64, off: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.size4()?;
    let dev = x.device();
    let wp = w + 2 * p;
    let padded = x.f_constant_pad_nd([p, p, p, p])?.f_reshape([b, c, -1])?;
    let dy = off.f_select(1, 0)?.f_view([b, 1, 1])?;
    let dx = off.f_select(1, 1)?.f_view([b, 1, 1])?;
    let rows = Tensor::f_arange(h, (Kind::Int64, dev))?.f_view([1, h, 1])?;
    let cols = Tensor::f_arange(w, (Kind::Int64, dev))?.f_view([1, 1, w])?;
    // Flat position in the padded image of output pixel (i, j) of sample b.
    let index = ((dy + rows) * wp + (dx + cols))
        .f_view([b, 1, h * w])?
        .f_expand([b, c, h * w], false)?;
    Ok(padded.f_gather(2, &index, false)?.f_view([b, c, h, w])?)
}

fn random_crop(x: &Tensor, p: i64, rng: &mut SeedRng) -> Result<Tensor> {
    let b = x.size()[0];
    let span = (2 * p + 1) as usize;
    let offsets: Vec<(i64, i64)> = (0..b)
        .map(|_| {
            let dy = rng.below(span) as i64;
            let dx = rng.below(span) as i64;
            (dy, dx)
        })
        .collect();
    crop_at(x, p, &offsets)
}

/// Flips left-right the images of `x` whose entry in `mask` is true, in one `where` op.
pub fn flip_where(x: &Tensor, mask: &[bool]) -> Result<Tensor> {
    let b = x.size()[0];
    if mask.len() as i64 != b {
        return Err(Error::invalid(format!(
            "flip_where: {} mask entries for a batch of {b}",
            mask.len()
        )));
    }
    let m = Tensor::f_from_slice(mask)?.f_to_device(x.device())?;
    flip_where_tensor(x, &m)
}

/// [`flip_where`] with the mask as a bool tensor `[B]` on `x`'s device.
fn flip_where_tensor(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let b = x.size()[0];
    let m = mask.f_view([b, 1, 1, 1])?;
    Ok(x.f_flip([3])?.f_where_self(&m, x)?)
}

fn random_hflip(x: &Tensor, rng: &mut SeedRng) -> Result<Tensor> {
    let b = x.size()[0];
    let mask: Vec<bool> = (0..b).map(|_| rng.unit() < 0.5).collect();
    flip_where(x, &mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn batch(b: i64, c: i64, h: i64, w: i64) -> Tensor {
        Tensor::arange(b * c * h * w, (Kind::Float, Device::Cpu)).view([b, c, h, w])
            / (b * c * h * w) as f64
    }

    #[test]
    fn epoch_draws_equal_batch_by_batch_augmentation() {
        let x = batch(10, 2, 6, 6);
        for aug in [
            Augment::cifar(),
            Augment {
                crop_padding: 2,
                hflip: false,
            },
            Augment {
                crop_padding: 0,
                hflip: true,
            },
        ] {
            let sizes = [4usize, 4, 2];
            let mut rng = SeedRng::new(9);
            let mut want = Vec::new();
            let mut lo = 0;
            for &b in &sizes {
                want.push(aug.apply(&x.narrow(0, lo as i64, b as i64), &mut rng));
                lo += b;
            }
            let draws = aug
                .draw_epoch(sizes, &mut SeedRng::new(9), Device::Cpu)
                .unwrap();
            let mut lo = 0;
            for (&b, w) in sizes.iter().zip(&want) {
                let got = draws.apply(&x.narrow(0, lo as i64, b as i64), lo).unwrap();
                assert!(got.equal(w), "{aug:?} at {lo}");
                lo += b;
            }
            assert!(draws.apply(&x, 5).is_err(), "past the epoch's draws");
        }
    }

    #[test]
    fn identity_cases() {
        let x = batch(3, 2, 5, 5);
        let mut rng = SeedRng::new(1);
        assert!(Augment::none().is_identity());
        assert!(Augment::none().apply(&x, &mut rng).equal(&x));
        let p0 = crop_at(&x, 2, &[(2, 2); 3]).unwrap();
        assert!(p0.equal(&x), "centre offset is the identity");
        assert!(flip_where(&x, &[false; 3]).unwrap().equal(&x));
        let empty = Tensor::zeros([0, 1, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(
            Augment::cifar().apply(&empty, &mut rng).size(),
            vec![0, 1, 4, 4]
        );
    }

    #[test]
    fn negative_padding_is_config_error() {
        let a = Augment {
            crop_padding: -1,
            hflip: false,
        };
        let e = a.validate().unwrap_err();
        assert!(matches!(e, Error::Config { .. }));
        assert!(e.to_string().contains("crop_padding"));
        let x = batch(1, 1, 2, 2);
        assert!(a.try_apply(&x, &mut SeedRng::new(0)).is_err());
        let e = Augment::cifar()
            .try_apply(&x.view([1, 4]), &mut SeedRng::new(0))
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
    }

    #[test]
    fn shape_range_and_determinism() {
        let _torch = rustworthy_testkit::torch_lock();
        let x = Tensor::rand([8, 3, 6, 6], (Kind::Float, Device::Cpu));
        let a = Augment::cifar();
        let y1 = a.apply(&x, &mut SeedRng::new(3));
        let y2 = a.apply(&x, &mut SeedRng::new(3));
        let y3 = a.apply(&x, &mut SeedRng::new(4));
        assert_eq!(y1.size(), x.size());
        assert_eq!(y1.kind(), Kind::Float);
        assert!(y1.equal(&y2), "same seed, same output");
        assert!(!y1.equal(&y3), "different seed, different output");
        assert!(y1.min().double_value(&[]) >= 0.0);
        assert!(y1.max().double_value(&[]) <= 1.0);
        // Every output pixel is an input pixel of the same sample and channel, or padding.
        let s = y1.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float);
        let sx = x.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float);
        assert!(bool::try_from(s.le_tensor(&(sx + 1e-4)).all()).unwrap());
    }

    #[test]
    fn crop_shifts_content() {
        // One 1x4x4 image with pixel value 1 + 4i + j; padding 1.
        let x = (Tensor::arange(16, (Kind::Float, Device::Cpu)) + 1.0).view([1, 1, 4, 4]);
        // Offset (0, 0): content moves down-right by one; first row/column are zero padding.
        let y = crop_at(&x, 1, &[(0, 0)]).unwrap();
        let got = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let want = vec![
            0., 0., 0., 0.,
            0., 1., 2., 3.,
            0., 5., 6., 7.,
            0., 9., 10., 11.,
        ];
        assert_eq!(got, want);
        // Offset (2, 1): content moves up by one, no horizontal shift.
        let y = crop_at(&x, 1, &[(2, 1)]).unwrap();
        let got = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let want = vec![
            5., 6., 7., 8.,
            9., 10., 11., 12.,
            13., 14., 15., 16.,
            0., 0., 0., 0.,
        ];
        assert_eq!(got, want);
        // Per-sample offsets in one batch, several channels.
        let xb = Tensor::cat(&[&x, &x], 0).repeat([1, 2, 1, 1]);
        let yb = crop_at(&xb, 1, &[(0, 0), (2, 1)]).unwrap();
        assert!(yb
            .get(0)
            .get(1)
            .equal(&crop_at(&x, 1, &[(0, 0)]).unwrap().get(0).get(0)));
        assert!(yb.get(1).get(0).equal(&y.get(0).get(0)));
        assert!(crop_at(&x, 1, &[(3, 0)]).is_err());
    }

    #[test]
    fn flip_mirrors_and_twice_restores() {
        let x = batch(4, 2, 3, 5);
        let mask = [true, false, true, false];
        let y = flip_where(&x, &mask).unwrap();
        assert!(y.get(0).equal(&x.get(0).flip([2])));
        assert!(y.get(1).equal(&x.get(1)));
        let z = flip_where(&y, &mask).unwrap();
        assert!(z.equal(&x));
        // Random flips: a flip-only augmentation flips some samples and keeps others.
        let a = Augment {
            crop_padding: 0,
            hflip: true,
        };
        let xb = batch(64, 1, 2, 3);
        let yb = a.apply(&xb, &mut SeedRng::new(11));
        let flipped = (0..64).filter(|&i| !yb.get(i).equal(&xb.get(i))).count();
        assert!((16..=48).contains(&flipped), "{flipped}");
        for i in 0..64 {
            let (yi, xi) = (yb.get(i), xb.get(i));
            assert!(yi.equal(&xi) || yi.equal(&xi.flip([2])));
        }
    }

    #[test]
    fn cuda_matches_cpu_when_available() {
        let _torch = rustworthy_testkit::torch_lock();
        if !tch::Cuda::is_available() {
            eprintln!("skipping: no CUDA device");
            return;
        }
        let dev = Device::Cuda(0);
        let x = Tensor::rand([16, 3, 8, 8], (Kind::Float, Device::Cpu));
        let a = Augment::cifar();
        let cpu = a.apply(&x, &mut SeedRng::new(5));
        let gpu = a.apply(&x.to_device(dev), &mut SeedRng::new(5));
        assert_eq!(gpu.device(), dev);
        assert!(gpu.to_device(Device::Cpu).equal(&cpu));
    }

    #[test]
    fn serde_round_trip() {
        let a: Augment = serde_json::from_str(r#"{"crop_padding": 4}"#).unwrap();
        assert_eq!(a.crop_padding, 4);
        assert!(!a.hflip);
        let s = serde_json::to_string(&Augment::cifar()).unwrap();
        assert_eq!(
            serde_json::from_str::<Augment>(&s).unwrap(),
            Augment::cifar()
        );
        assert!(serde_json::from_str::<Augment>(r#"{"pad": 1}"#).is_err());
    }
}
