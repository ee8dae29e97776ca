//! Generative metrics on features of our own Fashion-MNIST classifier: the Fréchet distance
//! (`FD-fmnist`) and the kernel inception distance's unbiased MMD estimate (`KID-fmnist`), named
//! after the network whose features they use (never "FID", which means Inception-v3 on
//! ImageNet features); unlearning accuracy (UA) and per-class accuracy of generated images.

use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `f` applied to `x` in batches of `batch` on the model's device, results concatenated on the
/// CPU (without gradients).
fn batched(
    model: &Model,
    x: &Tensor,
    batch: i64,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = x.size()[0];
    let mut out = Vec::new();
    tch::no_grad(|| -> Result<()> {
        let mut i = 0;
        while i < n {
            let b = batch.min(n - i);
            let xb = x.narrow(0, i, b).to_device(model.device());
            model.check_input(&xb)?;
            out.push(f(&xb)?.to_device(tch::Device::Cpu));
            i += b;
        }
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::invalid("no images to score"));
    }
    Ok(Tensor::cat(&out, 0))
}

/// Penultimate-layer features `[N, d]` (float64) of `model` on images `x` in [0, 1], in
/// batches of `batch`.
pub fn features(model: &Model, x: &Tensor, batch: i64) -> Result<Tensor> {
    batched(model, x, batch, |xb| {
        Ok(model.features_t(xb, false).to_kind(Kind::Double))
    })
}

/// Predicted classes `[N]` of `model` on images `x` in [0, 1].
pub fn predict(model: &Model, x: &Tensor, batch: i64) -> Result<Tensor> {
    batched(model, x, batch, |xb| {
        Ok(model.try_forward_t(xb, false)?.argmax(1, false))
    })
}

fn check_features(f: &Tensor, what: &str) -> Result<()> {
    if f.dim() != 2 || f.size()[0] < 2 {
        return Err(Error::Shape {
            op: format!("{what} features"),
            expected: "[N >= 2, d]".into(),
            got: f.size(),
        });
    }
    if f.isfinite().all().int64_value(&[]) == 0 {
        return Err(Error::Numerical(format!("{what} features hold NaN or inf")));
    }
    Ok(())
}

/// Mean `[d]` and unbiased covariance `[d, d]` (denominator N - 1, as `numpy.cov`).
pub fn mean_cov(f: &Tensor) -> (Tensor, Tensor) {
    let f = f.to_kind(Kind::Double);
    let n = f.size()[0];
    let mu = f.mean_dim(0, false, Kind::Double);
    let c = &f - mu.unsqueeze(0);
    let cov = c.tr().matmul(&c) / ((n - 1) as f64);
    (mu, cov)
}

/// The Fréchet distance between Gaussians fitted to two feature sets:
/// `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`. The trace of the matrix square root
/// is computed as the sum of square roots of the eigenvalues of `S1^{1/2} S2 S1^{1/2}` (the same
/// spectrum as `S1 S2`, symmetric, so no complex round-off); tiny negative eigenvalues from
/// round-off count as zero.
pub fn frechet_distance(f1: &Tensor, f2: &Tensor) -> Result<f64> {
    check_features(f1, "first")?;
    check_features(f2, "second")?;
    if f1.size()[1] != f2.size()[1] {
        return Err(Error::invalid(format!(
            "Fréchet distance: feature widths differ ({} vs {})",
            f1.size()[1],
            f2.size()[1]
        )));
    }
    let (m1, s1) = mean_cov(f1);
    let (m2, s2) = mean_cov(f2);
    let (ev, evec) = s1.linalg_eigh("L");
    let root = (&evec * ev.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&evec.tr());
    let inner = root.matmul(&s2).matmul(&root);
    let inner = (&inner + inner.tr()) * 0.5;
    let (ev2, _) = inner.linalg_eigh("L");
    let tr_sqrt = ev2
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let diff = (&m1 - &m2).square().sum(Kind::Double).double_value(&[]);
    let tr1 = s1.trace().double_value(&[]);
    let tr2 = s2.trace().double_value(&[]);
    Ok(diff + tr1 + tr2 - 2.0 * tr_sqrt)
}

/// The cubic polynomial kernel of KID: `(x . y / d + 1)^3`.
fn poly_kernel(a: &Tensor, b: &Tensor) -> Tensor {
    let d = a.size()[1] as f64;
    (a.matmul(&b.tr()) / d + 1.0).pow_tensor_scalar(3)
}

/// The unbiased MMD^2 estimate with the cubic polynomial kernel between two feature sets.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor) -> f64 {
    let (m, n) = (x.size()[0] as f64, y.size()[0] as f64);
    let kxx = poly_kernel(x, x);
    let kyy = poly_kernel(y, y);
    let kxy = poly_kernel(x, y);
    let sxx = (kxx.sum(Kind::Double) - kxx.trace()).double_value(&[]) / (m * (m - 1.0));
    let syy = (kyy.sum(Kind::Double) - kyy.trace()).double_value(&[]) / (n * (n - 1.0));
    sxx + syy - 2.0 * kxy.mean(Kind::Double).double_value(&[])
}

/// KID: the mean and standard deviation of [`mmd2_unbiased`] over `subsets` random subsets of
/// `subset_size` rows of each set (drawn without replacement with `seed`); a subset size at
/// least both set sizes uses the whole sets once.
pub fn kid(
    f1: &Tensor,
    f2: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    check_features(f1, "first")?;
    check_features(f2, "second")?;
    let (n1, n2) = (f1.size()[0] as usize, f2.size()[0] as usize);
    let (f1, f2) = (f1.to_kind(Kind::Double), f2.to_kind(Kind::Double));
    if subset_size >= n1 && subset_size >= n2 {
        return Ok((mmd2_unbiased(&f1, &f2), 0.0));
    }
    let m = subset_size.min(n1).min(n2);
    if m < 2 || subsets == 0 {
        return Err(Error::invalid("KID: need subsets >= 1 of at least 2 rows"));
    }
    let mut rng = SeedRng::stream(seed, "kid", 0);
    let mut vals = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let a: Vec<i64> = rng.permutation(n1)[..m].iter().map(|&i| i as i64).collect();
        let b: Vec<i64> = rng.permutation(n2)[..m].iter().map(|&i| i as i64).collect();
        vals.push(mmd2_unbiased(
            &f1.index_select(0, &Tensor::from_slice(&a)),
            &f2.index_select(0, &Tensor::from_slice(&b)),
        ));
    }
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    Ok((mean, var.sqrt()))
}

/// FD and KID of one generated set against a reference set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quality {
    /// Fréchet distance on the classifier's features (`FD-fmnist` for Fashion-MNIST).
    pub fd: f64,
    /// KID (mean unbiased MMD^2 over subsets) on the same features.
    pub kid: f64,
    /// Standard deviation of KID over the subsets.
    pub kid_std: f64,
    /// Generated images compared.
    pub n_generated: usize,
    /// Reference images compared.
    pub n_reference: usize,
}

/// FD and KID (100 subsets of up to 1000 rows, seed 0) between images `gen` and `reference`.
pub fn quality(model: &Model, gen: &Tensor, reference: &Tensor) -> Result<Quality> {
    let f1 = features(model, gen, 500)?;
    let f2 = features(model, reference, 500)?;
    let fd = frechet_distance(&f1, &f2)?;
    let (kid, kid_std) = kid(&f1, &f2, 100, 1000, 0)?;
    Ok(Quality {
        fd,
        kid,
        kid_std,
        n_generated: f1.size()[0] as usize,
        n_reference: f2.size()[0] as usize,
    })
}

/// The share of `images` the classifier assigns to `class`.
pub fn class_share(model: &Model, images: &Tensor, class: i64) -> Result<f64> {
    let p = predict(model, images, 500)?;
    Ok(p.eq(class)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]))
}

/// Unlearning accuracy: the share of images generated for the erased `class` that the
/// classifier does **not** recognise as that class.
pub fn unlearning_accuracy(model: &Model, images: &Tensor, class: i64) -> Result<f64> {
    Ok(1.0 - class_share(model, images, class)?)
}

/// Gaussian blur of images `[N, C, H, W]` with standard deviation `sigma` pixels (a 2·⌈3σ⌉+1
/// separable kernel, replicate padding): a degradation for the metric sanity checks.
pub fn blur(x: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 0.0 {
        return x.shallow_clone();
    }
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let s: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / s).collect();
    let c = x.size()[1];
    let kt = Tensor::from_slice(&k).to_device(x.device());
    let kh = kt.view([1, 1, 1, 2 * r + 1]).repeat([c, 1, 1, 1]);
    let kv = kt.view([1, 1, 2 * r + 1, 1]).repeat([c, 1, 1, 1]);
    let p = x.pad([r, r, r, r], "replicate", None);
    p.conv2d(&kh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
        .conv2d(&kv, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// One row of the metric sanity check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SanityRow {
    /// The degradation, e.g. `blur 1.0` or `noise 0.2`.
    pub degradation: String,
    /// FD between the degraded half and the clean other half.
    pub fd: f64,
    /// KID between the same.
    pub kid: f64,
}

/// The metric sanity checks: FD and KID between two disjoint halves of `real` (near zero), then
/// with one half blurred (sigma 0.5, 1, 2) and with Gaussian noise added (std 0.1, 0.2, 0.4,
/// clamped to [0, 1], seed `seed`); both metrics should rise along each series.
pub fn sanity(model: &Model, real: &Tensor, seed: u64) -> Result<Vec<SanityRow>> {
    let n = real.size()[0];
    if n < 8 {
        return Err(Error::invalid("metric sanity: need at least 8 real images"));
    }
    let a = real.narrow(0, 0, n / 2);
    let b = real.narrow(0, n / 2, n / 2);
    let fb = features(model, &b, 500)?;
    let mut rows = Vec::new();
    let mut push = |name: String, x: &Tensor| -> Result<()> {
        let fa = features(model, x, 500)?;
        let (k, _) = kid(&fa, &fb, 100, 1000, 0)?;
        rows.push(SanityRow {
            degradation: name,
            fd: frechet_distance(&fa, &fb)?,
            kid: k,
        });
        Ok(())
    };
    push("none".into(), &a)?;
    for s in [0.5, 1.0, 2.0] {
        push(format!("blur {s}"), &blur(&a, s))?;
    }
    tch::manual_seed(seed as i64);
    let z = a.randn_like();
    for s in [0.1, 0.2, 0.4] {
        push(format!("noise {s}"), &(&a + &z * s).clamp(0.0, 1.0))?;
    }
    Ok(rows)
}
