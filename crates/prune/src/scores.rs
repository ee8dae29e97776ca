//! Pruning scores and masks with an exact sparsity. A higher score means "keep".

use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use rustworthy_train::mask::{prunable, Masks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Scores by parameter name (same shapes as the parameters).
pub type Scores = BTreeMap<String, Tensor>;

/// Where the sparsity budget applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One threshold over all prunable layers.
    #[default]
    Global,
    /// The same sparsity in every prunable layer.
    Layerwise,
}

impl std::str::FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Scope> {
        match s {
            "global" => Ok(Scope::Global),
            "layerwise" | "layer-wise" | "layer" => Ok(Scope::Layerwise),
            o => Err(Error::config(
                "scope",
                format!("unknown scope `{o}` (global, layerwise)"),
            )),
        }
    }
}

/// Checks a requested sparsity (fraction of weights removed) is in [0, 1).
pub fn check_sparsity(s: f64) -> Result<f64> {
    if !s.is_finite() || !(0.0..1.0).contains(&s) {
        return Err(Error::config(
            "sparsity",
            format!("{s} must be in [0, 1) (the fraction of prunable weights removed)"),
        ));
    }
    Ok(s)
}

fn keep_count(n: i64, sparsity: f64) -> i64 {
    (((1.0 - sparsity) * n as f64).round() as i64).clamp(1, n)
}

/// Masks keeping the highest-scoring entries so that exactly `round((1 - sparsity) * n)` entries
/// survive (globally or per layer). Entries already pruned in `prev` stay pruned.
pub fn masks_from_scores(
    scores: &Scores,
    sparsity: f64,
    scope: Scope,
    prev: Option<&Masks>,
) -> Result<Masks> {
    check_sparsity(sparsity)?;
    if scores.is_empty() {
        return Err(Error::invalid("no prunable layers"));
    }
    let masked: Vec<(String, Tensor)> = scores
        .iter()
        .map(|(k, s)| {
            let s = s.detach().to_kind(Kind::Double);
            if s.isnan().any().int64_value(&[]) != 0 {
                return Err(Error::Numerical(format!(
                    "pruning scores of {k} contain NaN"
                )));
            }
            let s = match prev.and_then(|p| p.get(k)) {
                Some(m) => s.masked_fill(&m.eq(0.0), f64::NEG_INFINITY),
                None => s,
            };
            Ok((k.clone(), s))
        })
        .collect::<Result<_>>()?;
    let mut out = Masks::new();
    match scope {
        Scope::Layerwise => {
            for (k, s) in masked {
                let flat = s.flatten(0, -1);
                let n = flat.size()[0];
                let keep = keep_count(n, sparsity);
                let (_, idx) = flat.topk(keep, 0, true, false);
                let m = flat.zeros_like().index_fill(0, &idx, 1.0);
                out.insert(k, m.view_as(&s).to_kind(Kind::Float));
            }
        }
        Scope::Global => {
            let flats: Vec<Tensor> = masked.iter().map(|(_, s)| s.flatten(0, -1)).collect();
            let all = Tensor::cat(&flats, 0);
            let n = all.size()[0];
            let keep = keep_count(n, sparsity);
            let (_, idx) = all.topk(keep, 0, true, false);
            let m = all.zeros_like().index_fill(0, &idx, 1.0);
            let mut off = 0i64;
            for (k, s) in &masked {
                let len = s.numel() as i64;
                out.insert(
                    k.clone(),
                    m.narrow(0, off, len).view_as(s).to_kind(Kind::Float),
                );
                off += len;
            }
        }
    }
    Ok(out)
}

/// `|w|` (magnitude pruning).
pub fn magnitude(model: &Model) -> Scores {
    prunable(model)
        .into_iter()
        .map(|(k, w)| (k, w.detach().abs()))
        .collect()
}

/// Uniformly random scores (random pruning), from the seeded host generator.
pub fn random(model: &Model, seed: u64) -> Result<Scores> {
    let mut rng = SeedRng::stream(seed, "prune-random", 0);
    prunable(model)
        .into_iter()
        .map(|(k, w)| {
            let v: Vec<f32> = (0..w.numel()).map(|_| rng.unit() as f32).collect();
            Ok((k, Tensor::from_slice(&v).view_as(&w).to_device(w.device())))
        })
        .collect()
}

/// Zeroes the parameter gradients of the model.
fn zero_grads(model: &Model) {
    for (_, p) in model.parameters() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.detach_();
            let _ = g.zero_();
        }
    }
}

fn first_batches(data: &Dataset, batch: usize, n: usize) -> Result<Vec<(Tensor, Tensor)>> {
    let len = data.len();
    if len == 0 {
        return Err(Error::invalid("pruning data is empty"));
    }
    let mut out = Vec::new();
    for b in 0..n {
        let lo = (b * batch) % len;
        let hi = (lo + batch).min(len);
        out.push(data.try_batch(&(lo..hi).collect::<Vec<_>>())?);
    }
    Ok(out)
}

/// SNIP (Lee et al., 2019): `|w * dL/dw|` on `batches` batches of the training data.
pub fn snip(model: &Model, data: &Dataset, batch: usize, batches: usize) -> Result<Scores> {
    zero_grads(model);
    for (x, y) in first_batches(data, batch, batches)? {
        let x = x.to_device(model.device());
        let y = y.to_device(model.device());
        model
            .forward_t(&x, false)
            .cross_entropy_for_logits(&y)
            .backward();
    }
    let s = prunable(model)
        .into_iter()
        .map(|(k, w)| (k, (w.grad() * &w).abs().detach()))
        .collect();
    zero_grads(model);
    Ok(s)
}

/// GraSP (Wang et al., 2020): keep-score `w * Hg` (the published score is `-w * Hg`, removing the
/// highest), with g the gradient on one batch and Hg the Hessian-gradient product on another, the
/// logits divided by a temperature of 200 as in the reference.
pub fn grasp(model: &Model, data: &Dataset, batch: usize) -> Result<Scores> {
    let temp = 200.0;
    let params: Vec<(String, Tensor)> = prunable(model);
    let tensors: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
    let bs = first_batches(data, batch, 2)?;
    let dev = model.device();
    let (x1, y1) = (&bs[0].0.to_device(dev), &bs[0].1.to_device(dev));
    let l1 = (model.forward_t(x1, false) / temp).cross_entropy_for_logits(y1);
    let g: Vec<Tensor> = Tensor::run_backward(&[l1], &tensors, false, false)
        .into_iter()
        .map(|t| t.detach())
        .collect();
    let (x2, y2) = (&bs[1].0.to_device(dev), &bs[1].1.to_device(dev));
    let l2 = (model.forward_t(x2, false) / temp).cross_entropy_for_logits(y2);
    let g2 = Tensor::run_backward(&[l2], &tensors, true, true);
    let mut z = Tensor::zeros([], (Kind::Float, dev));
    for (a, b) in g2.iter().zip(&g) {
        z += (a * b).sum(Kind::Float);
    }
    let hg = Tensor::run_backward(&[z], &tensors, false, false);
    Ok(params
        .iter()
        .zip(hg)
        .map(|((k, w), h)| (k.clone(), (w.detach() * h.detach())))
        .collect())
}

/// SynFlow (Tanaka et al., 2020): iterative, data-free. In each of `rounds` rounds the masked
/// absolute-valued network (float64, eval mode) is run on an all-ones input, the scores are
/// `|w * dR/dw|` with `R` the sum of the outputs, and the masks are recomputed at the density
/// `(1 - sparsity)^(k / rounds)` (the exponential schedule).
pub fn synflow_masks(model: &Model, sparsity: f64, scope: Scope, rounds: usize) -> Result<Masks> {
    check_sparsity(sparsity)?;
    let rounds = rounds.max(1);
    let mut m = model.try_clone()?;
    m.vs.double();
    tch::no_grad(|| {
        for (_, p) in m.parameters() {
            let _ = p.shallow_clone().abs_();
        }
    });
    let originals: BTreeMap<String, Tensor> = prunable(&m)
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    let (c, (h, w)) = (m.spec.in_channels, m.spec.input_size);
    let ones = Tensor::ones([1, c, h, w], (Kind::Double, m.device()));
    let mut masks: Option<Masks> = None;
    for k in 1..=rounds {
        // Apply the current mask to the absolute weights.
        tch::no_grad(|| {
            for (name, p) in prunable(&m) {
                let base = &originals[&name];
                let v = match masks.as_ref().and_then(|ms| ms.get(&name)) {
                    Some(mk) => base * mk.to_kind(Kind::Double),
                    None => base.shallow_clone(),
                };
                p.shallow_clone().copy_(&v);
            }
        });
        zero_grads(&m);
        let r = m.forward_t(&ones, false).sum(Kind::Double);
        r.backward();
        let scores: Scores = prunable(&m)
            .into_iter()
            .map(|(name, p)| (name, (p.grad() * &p).abs().detach()))
            .collect();
        let density = (1.0 - sparsity).powf(k as f64 / rounds as f64);
        masks = Some(masks_from_scores(
            &scores,
            1.0 - density,
            scope,
            masks.as_ref(),
        )?);
    }
    let out = masks.ok_or_else(|| Error::invalid("SynFlow ran no rounds"))?;
    Ok(out
        .into_inner()
        .into_iter()
        .map(|(k, v)| (k, v.to_kind(Kind::Float)))
        .collect())
}

/// Structured (channel) pruning: the output channels (conv filters, linear neurons) of every
/// prunable layer except the last one (the classifier keeps all its outputs).
pub fn channel_layers(model: &Model) -> Vec<(String, Tensor)> {
    let mut p = prunable(model);
    p.pop();
    p
}

/// Per-output-channel sum of `t` over all other dimensions (`[out]`).
pub fn per_channel(t: &Tensor) -> Tensor {
    if t.dim() <= 1 {
        return t.shallow_clone();
    }
    let dims: Vec<i64> = (1..t.dim() as i64).collect();
    t.sum_dim_intlist(dims.as_slice(), false, t.kind())
}

/// Broadcasts a channel mask `[out]` to the shape of `like`.
pub fn expand_channels(m: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![m.size()[0]];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    m.view(shape.as_slice()).expand_as(like).contiguous()
}

/// Weight masks that remove exactly `round(sparsity * out)` whole channels per layer
/// (`Layerwise`) or over all channel layers (`Global`), keeping the highest channel scores.
pub fn channel_masks(
    channel_scores: &Scores,
    like: &BTreeMap<String, Tensor>,
    sparsity: f64,
    scope: Scope,
) -> Result<Masks> {
    let cm = masks_from_scores(channel_scores, sparsity, scope, None)?;
    cm.iter()
        .map(|(k, m)| {
            let w = like
                .get(k)
                .ok_or_else(|| Error::invalid(format!("no layer `{k}` for a channel mask")))?;
            Ok((k.clone(), expand_channels(m, w)))
        })
        .collect()
}

/// L1-norm filter scores (Li et al., 2017) of the channel layers.
pub fn filter_l1(model: &Model) -> Scores {
    channel_layers(model)
        .into_iter()
        .map(|(k, w)| (k, per_channel(&w.detach().abs())))
        .collect()
}
