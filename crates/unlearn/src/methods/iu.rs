//! IU: influence unlearning with a WoodFisher inverse-Hessian approximation (Koh & Liang's
//! influence functions as run by the sparsity-unlearning reference code, `unlearn/Wfisher.py`).
//!
//! With `n_f` forget and `n_r` retain samples, `n = n_f + n_r` and per-sample cross-entropy
//! gradients `g_i` at the trained weights (eval mode), the method forms
//! `v = sum_f g_i / n - (n_f / (n n_r)) sum_r g_i`, i.e. `(n_f / n) (mean_f g - mean_r g)`, and
//! takes the single step `w <- w + alpha F^-1 v`, where `F` is the damped empirical Fisher of
//! `N` retain samples:
//!
//! `F = damping * I + (1/N) sum_{k=1..N} g_k g_k^T`.
//!
//! `F^-1 v` is the WoodFisher rank-1 (Sherman-Morrison) recursion
//! `F_k^-1 = F_{k-1}^-1 - u_k u_k^T / (N + g_k^T u_k)` with `u_k = F_{k-1}^-1 g_k`, run exactly.
//! No matrix of parameter size squared is ever formed: every `u_k` is a combination of the
//! sampled gradients, so the recursion runs on their `N x N` Gram matrix and only gradient
//! vectors are kept, as many as `memory_mb` allows; the others are recomputed when needed.
//!
//! `grad_batch > 1` replaces per-sample gradients by `sqrt(b)` times the mean gradient of `b`
//! samples (the same second moment when the mean gradient is near zero, as at a trained
//! optimum), dividing the number of backward passes by `b`.

use super::common::{add_flat_, check_finite_tensor, flat_grad, sample_indices};
use super::{MethodReport, UnlearnCtx, Unlearner};
use rustworthy_core::progress::{Progress, ProgressMode};
use rustworthy_core::{validate, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Configuration of IU (influence unlearning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IuConfig {
    /// Step size: `w <- w + alpha F^-1 v`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// `N`: retain gradients entering the Fisher (each of `grad_batch` samples).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// `F = damping * I + ...`; the reference recursion starts from the identity.
    #[serde(default = "default_damping")]
    pub damping: f64,
    /// Samples per Fisher gradient (1 = per-sample gradients, as the reference).
    #[serde(default = "default_grad_batch")]
    pub grad_batch: usize,
    /// Batch size of the passes summing the forget and retain gradients.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Memory for stored Fisher gradients, in MiB; beyond it gradients are recomputed.
    #[serde(default = "default_memory")]
    pub memory_mb: usize,
}

fn default_alpha() -> f64 {
    0.2
}
fn default_samples() -> usize {
    1000
}
fn default_damping() -> f64 {
    1.0
}
fn default_grad_batch() -> usize {
    1
}
fn default_batch() -> usize {
    256
}
fn default_memory() -> usize {
    4096
}

impl Default for IuConfig {
    fn default() -> Self {
        IuConfig {
            alpha: default_alpha(),
            samples: default_samples(),
            damping: default_damping(),
            grad_batch: default_grad_batch(),
            batch_size: default_batch(),
            memory_mb: default_memory(),
        }
    }
}

impl IuConfig {
    /// Checks every field; errors name the field (`iu.alpha`, ...).
    pub fn validate(&self) -> Result<()> {
        validate::positive("iu.alpha", self.alpha)?;
        validate::positive_int("iu.samples", self.samples)?;
        validate::positive("iu.damping", self.damping)?;
        validate::positive_int("iu.grad_batch", self.grad_batch)?;
        validate::positive_int("iu.batch_size", self.batch_size)?;
        validate::positive_int("iu.memory_mb", self.memory_mb)?;
        Ok(())
    }

    /// Validates the configuration and returns the runnable method.
    pub fn build(self) -> Result<Iu> {
        self.validate()?;
        Ok(Iu { cfg: self })
    }
}

/// The runnable IU method.
pub struct Iu {
    cfg: IuConfig,
}

/// How a WoodFisher product was computed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WoodFisherStats {
    /// Gradients in the Fisher (`N`).
    pub n: usize,
    /// Gradients held in memory at once.
    pub block_rows: usize,
    /// Gradient evaluations, recomputations included.
    pub grad_evals: usize,
    /// Smallest and largest denominator `N + g_k^T F_{k-1}^-1 g_k` of the recursion.
    pub min_denominator: f64,
    /// Largest denominator of the recursion.
    pub max_denominator: f64,
}

/// `F^-1 v` for `F = damping * I + (1/n) sum_k g_k g_k^T`, by the exact WoodFisher rank-1
/// recursion. `grad(k)` returns `g_k` (flat, `[dim]`, on `v`'s device) and must return the
/// same vector every time it is called with the same `k`. At most `memory_bytes` of gradients
/// are stored (at least one vector); the result is the same whatever the budget.
pub fn woodfisher_ihvp<G>(
    n: usize,
    mut grad: G,
    v: &Tensor,
    damping: f64,
    memory_bytes: usize,
    progress: ProgressMode,
) -> Result<(Tensor, WoodFisherStats)>
where
    G: FnMut(usize) -> Result<Tensor>,
{
    validate::positive("damping", damping)?;
    let vs = v.size();
    if vs.len() != 1 {
        return Err(Error::Shape {
            op: "woodfisher: v".into(),
            expected: "[dim]".into(),
            got: vs,
        });
    }
    let dim = vs[0];
    let device = v.device();
    let v64 = v.f_to_kind(Kind::Double)?;
    if n == 0 {
        return Ok((
            (&v64 / damping).f_to_kind(Kind::Float)?,
            WoodFisherStats {
                n: 0,
                block_rows: 0,
                grad_evals: 0,
                min_denominator: f64::NAN,
                max_denominator: f64::NAN,
            },
        ));
    }
    // Stored gradients are f64, so the Gram matrix and the final combination are exact up
    // to the gradients' own f32 rounding.
    let row_bytes = (dim.max(1) as usize) * 8;
    let rows = (memory_bytes / row_bytes).clamp(1, n);
    let mut evals = 0usize;
    let mut get = |k: usize, evals: &mut usize| -> Result<Tensor> {
        let g = grad(k)?;
        *evals += 1;
        if g.size() != [dim] {
            return Err(Error::Shape {
                op: format!("woodfisher: gradient {k}"),
                expected: format!("[{dim}]"),
                got: g.size(),
            });
        }
        let g = g.f_to_kind(Kind::Double)?.f_to_device(device)?;
        check_finite_tensor(&g, &format!("woodfisher: gradient {k}"))?;
        Ok(g)
    };
    let bar = Progress::new(progress, "iu woodfisher", n as u64);
    // Gram matrix K[l][k] = g_l . g_k (row-major, f64) and c[l] = g_l . v.
    let mut gram = vec![0.0f64; n * n];
    let mut c = vec![0.0f64; n];
    let buf = Tensor::f_zeros([rows as i64, dim], (Kind::Double, device))?;
    let mut start = 0usize;
    let mut last_block = (0usize, 0usize);
    while start < n {
        let end = (start + rows).min(n);
        let m = end - start;
        for (k, ck) in c.iter_mut().enumerate().take(end).skip(start) {
            let g = get(k, &mut evals)?;
            *ck = g.f_dot(&v64)?.f_double_value(&[])?;
            buf.f_narrow(0, (k - start) as i64, 1)?
                .f_copy_(&g.f_unsqueeze(0)?)?;
            bar.inc(1, String::new);
        }
        let block = buf.f_narrow(0, 0, m as i64)?;
        let kk = to_f64_vec(&block.f_matmul(&block.f_tr()?)?)?;
        for a in 0..m {
            for b in 0..m {
                gram[(start + a) * n + start + b] = kk[a * m + b];
            }
        }
        for j in end..n {
            let g = get(j, &mut evals)?;
            let col = to_f64_vec(&block.f_mv(&g)?)?;
            for a in 0..m {
                gram[(start + a) * n + j] = col[a];
                gram[j * n + start + a] = col[a];
            }
        }
        last_block = (start, end);
        start = end;
    }
    let (beta, denoms) = woodbury_coefficients(&gram, &c, n, damping)?;
    // F^-1 v = v / damping - sum_l beta_l g_l, accumulated in f64.
    let mut acc = Tensor::f_zeros([dim], (Kind::Double, device))?;
    let add = |acc: &mut Tensor, g: &Tensor, b: f64| -> Result<()> {
        let _ = acc.f_add_(&(g * b))?;
        Ok(())
    };
    for (l, &b) in beta.iter().enumerate().take(last_block.0) {
        let g = get(l, &mut evals)?;
        add(&mut acc, &g, b)?;
    }
    for (row, &b) in beta[last_block.0..last_block.1].iter().enumerate() {
        let g = buf.f_select(0, row as i64)?;
        add(&mut acc, &g, b)?;
    }
    bar.finish(serde_json::json!({"gradients": n, "grad_evals": evals}));
    let out = (v64 / damping - acc).f_to_kind(Kind::Float)?;
    check_finite_tensor(&out, "woodfisher: the inverse-Fisher product")?;
    let min_d = denoms.iter().cloned().fold(f64::INFINITY, f64::min);
    let max_d = denoms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Ok((
        out,
        WoodFisherStats {
            n,
            block_rows: rows,
            grad_evals: evals,
            min_denominator: min_d,
            max_denominator: max_d,
        },
    ))
}

fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.f_to_kind(Kind::Double)?
            .f_to_device(tch::Device::Cpu)?
            .f_reshape([-1])?,
    )?)
}

/// The rank-1 recursion on the Gram matrix. `u_k = F_{k-1}^-1 g_k = sum_l a[k][l] g_l` with
/// `a[k]` supported on `0..=k`; returns `beta` with `F_n^-1 v = v / damping - sum_l beta_l g_l`
/// and the denominators `s_k = n + g_k . u_k`.
fn woodbury_coefficients(
    gram: &[f64],
    c: &[f64],
    n: usize,
    damping: f64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let nn = n as f64;
    let mut a: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut s = Vec::with_capacity(n);
    for k in 0..n {
        // Row k of the symmetric Gram matrix: g_k . g_l for every l.
        let gk = &gram[k * n..(k + 1) * n];
        let mut row = vec![0.0f64; k + 1];
        row[k] = 1.0 / damping;
        for j in 0..k {
            // u_j . g_k
            let aj = &a[j];
            let dot: f64 = aj.iter().zip(gk).map(|(x, y)| x * y).sum();
            let coef = dot / s[j];
            for (r, &x) in row.iter_mut().zip(aj.iter()) {
                *r -= coef * x;
            }
        }
        let gu: f64 = row.iter().zip(gk).map(|(x, y)| x * y).sum();
        let sk = nn + gu;
        if !(sk.is_finite() && sk > 0.0) {
            return Err(Error::Numerical(format!(
                "woodfisher: recursion denominator {sk} at gradient {k} (must be positive)"
            )));
        }
        s.push(sk);
        a.push(row);
    }
    let mut beta = vec![0.0f64; n];
    for (k, ak) in a.iter().enumerate() {
        let t: f64 = ak.iter().zip(c).map(|(x, y)| x * y).sum::<f64>() / s[k];
        for (b, &x) in beta.iter_mut().zip(ak.iter()) {
            *b += x * t;
        }
    }
    Ok((beta, s))
}

/// The summed per-sample cross-entropy gradient over `ds` (flat, f64) in eval mode.
fn gradient_sum(model: &Model, params: &[Tensor], ds: &Dataset, batch: usize) -> Result<Tensor> {
    if ds.is_empty() {
        return Err(Error::invalid(format!("iu: dataset {} is empty", ds.name)));
    }
    let dim: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let mut acc = Tensor::f_zeros([dim], (Kind::Double, model.device()))?;
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch) {
        let (x, y) = ds.try_batch(chunk)?;
        let loss = model
            .try_forward_t(&x, false)?
            .f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)?;
        let g = flat_grad(&loss, params, false)?;
        let _ = acc.f_add_(&g.f_to_kind(Kind::Double)?)?;
    }
    Ok(acc)
}

impl Unlearner for Iu {
    fn name(&self) -> &'static str {
        "iu"
    }

    fn unlearn(&self, model: &mut Model, ctx: &UnlearnCtx) -> Result<MethodReport> {
        let cfg = &self.cfg;
        let (forget, retain) = (&ctx.data.forget, &ctx.data.retain);
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, t)| t).collect();
        let sum_f = gradient_sum(model, &params, forget, cfg.batch_size)?;
        let sum_r = gradient_sum(model, &params, retain, cfg.batch_size)?;
        let (nf, nr) = (forget.len() as f64, retain.len() as f64);
        let n = nf + nr;
        let v = sum_f / n - sum_r * (nf / (n * nr));
        check_finite_tensor(&v, "iu: the forget-minus-retain gradient")?;

        // N groups of grad_batch retain samples, drawn without replacement.
        let b = cfg.grad_batch;
        let groups_n = cfg.samples.min(retain.len() / b).max(1);
        let mut order = sample_indices(retain.len(), groups_n * b, ctx.seed, "iu-fisher");
        rustworthy_core::SeedRng::stream(ctx.seed, "iu-fisher-order", 0).shuffle(&mut order);
        let groups: Vec<&[usize]> = order.chunks(b).collect();
        let scale = (groups[0].len() as f64).sqrt();
        let grad = |k: usize| -> Result<Tensor> {
            let (x, y) = retain.try_batch(groups[k])?;
            let loss = model
                .try_forward_t(&x, false)?
                .f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)?;
            Ok(flat_grad(&loss, &params, false)? * scale)
        };
        let (ihvp, stats) = woodfisher_ihvp(
            groups.len(),
            grad,
            &v,
            cfg.damping,
            cfg.memory_mb.saturating_mul(1 << 20),
            ctx.progress,
        )?;
        let delta = ihvp * cfg.alpha;
        check_finite_tensor(&delta, "iu: the update")?;
        let v_norm = v.f_norm()?.f_double_value(&[])?;
        let step_norm = delta.f_norm()?.f_double_value(&[])?;
        add_flat_(&params, &delta)?;
        Ok(MethodReport {
            epochs: 1,
            steps: 0,
            extra: serde_json::json!({
                "fisher_gradients": stats.n,
                "samples_per_gradient": b,
                "grad_evals": stats.grad_evals,
                "block_rows": stats.block_rows,
                "gradient_norm": v_norm,
                "update_norm": step_norm,
            }),
        })
    }
}
