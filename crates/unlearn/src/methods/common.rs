//! Shared machinery of the gradient-based methods: a validated optimisation recipe and a seeded
//! epoch loop over one or two datasets.

use super::UnlearnCtx;
use rustworthy_core::progress::Progress;
use rustworthy_core::validate;
use rustworthy_core::{Error, Result, SeedRng};
use rustworthy_data::dataset::{epoch_order, Dataset};
use rustworthy_models::Model;
use rustworthy_train::mask::{Masks, UpdateMasks};
use rustworthy_train::optim::{OptimConfig, Optimizer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::Tensor;

/// Optimisation recipe of an unlearning method: SGD with momentum and weight decay, a constant
/// or cosine learning rate, `epochs` passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Passes over the method's data, >= 1.
    pub epochs: usize,
    /// Peak learning rate, > 0.
    pub lr: f64,
    /// Batch size (default 256).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// SGD momentum in [0, 1) (default 0.9).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// L2 weight decay, >= 0 (default 5e-4).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Cosine-decay the learning rate to 0 over the run (else constant).
    #[serde(default)]
    pub cosine: bool,
}

fn default_batch() -> usize {
    256
}
fn default_momentum() -> f64 {
    0.9
}
fn default_wd() -> f64 {
    5e-4
}

impl RunConfig {
    /// The recipe with `epochs` epochs at `lr` and the defaults for everything else (batch 256,
    /// momentum 0.9, weight decay 5e-4, constant rate).
    pub fn new(epochs: usize, lr: f64) -> Self {
        RunConfig {
            epochs,
            lr,
            batch_size: default_batch(),
            momentum: default_momentum(),
            weight_decay: default_wd(),
            cosine: false,
        }
    }

    /// Validates; `prefix` names the method (e.g. `ft.`) in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        validate::positive_int(&format!("{prefix}epochs"), self.epochs)?;
        validate::positive(&format!("{prefix}lr"), self.lr)?;
        validate::positive_int(&format!("{prefix}batch_size"), self.batch_size)?;
        validate::in_half_open(&format!("{prefix}momentum"), self.momentum, 0.0, 1.0)?;
        validate::non_negative(&format!("{prefix}weight_decay"), self.weight_decay)?;
        Ok(())
    }

    /// The SGD optimizer of this recipe over the model's trainable parameters; with a pruned
    /// model (`ctx.masks`), the pruned entries are frozen.
    pub fn optimizer(&self, model: &Model, ctx: &UnlearnCtx) -> Result<Optimizer> {
        let mut opt = Optimizer::new(
            OptimConfig::Sgd {
                momentum: self.momentum,
                dampening: 0.0,
                nesterov: false,
                weight_decay: self.weight_decay,
            },
            model.parameters(),
        )?;
        restrict_to_masks(&mut opt, model, ctx, None)?;
        Ok(opt)
    }

    /// Learning rate at fractional epoch `t`.
    pub fn lr_at(&self, t: f64) -> f64 {
        if self.cosine {
            let frac = (t / self.epochs as f64).clamp(0.0, 1.0);
            0.5 * self.lr * (1.0 + (std::f64::consts::PI * frac).cos())
        } else {
            self.lr
        }
    }
}

/// Freezes the pruned entries of a pruned model (`ctx.masks`) in `opt`, intersected with
/// `extra` (a method's own masks, e.g. SalUn's saliency mask). Parameters of `opt` that are not
/// the model's (e.g. a shadow head) stay free unless `extra` says otherwise.
pub fn restrict_to_masks(
    opt: &mut Optimizer,
    model: &Model,
    ctx: &UnlearnCtx,
    extra: Option<&UpdateMasks>,
) -> Result<()> {
    if ctx.masks.is_none() && extra.is_none() {
        return Ok(());
    }
    if let Some(m) = ctx.masks {
        rustworthy_train::mask::apply_masks(model, m)?;
    }
    let params = opt.named_params();
    let sparse = match ctx.masks {
        Some(m) => m.for_update(&params),
        None => Masks::new().for_update(&params),
    };
    let full: UpdateMasks = match extra {
        // A parameter the method's own masks leave out is frozen.
        Some(e) => params
            .iter()
            .map(|(name, p)| {
                let own = e
                    .get(name)
                    .map(|m| m.ne(0.0))
                    .unwrap_or_else(|| p.zeros_like().ne(0.0));
                let m = sparse[name].ne(0.0).logical_and(&own);
                (name.clone(), m.to_kind(tch::Kind::Float))
            })
            .collect(),
        None => sparse,
    };
    opt.set_masks(&full)
}

/// Seeded batch orders over a dataset for one epoch.
pub fn batches(
    ds: &Dataset,
    batch_size: usize,
    seed: u64,
    stream: &str,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let order = epoch_order(
        ds.len(),
        true,
        rustworthy_core::seed::derive(seed, stream, 0),
        epoch as u64,
    );
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

/// The group of a data-parallel run with more than one rank, if any.
fn parallel<'c>(ctx: &'c UnlearnCtx) -> Option<&'c rustworthy_train::DistOptions> {
    ctx.dist.as_ref().filter(|d| d.group.world_size() > 1)
}

/// This rank's rows of a batch (every tensor in `rows` split the same way) and the weight of its
/// loss: the shard's share of the batch, so that the per-rank losses sum to the batch mean. In
/// a single process: the whole batch and 1.
pub fn shard_rows(ctx: &UnlearnCtx, rows: &[&Tensor]) -> (Vec<Tensor>, f64) {
    let Some(d) = parallel(ctx) else {
        return (rows.iter().map(|t| t.shallow_clone()).collect(), 1.0);
    };
    let n = rows.first().map(|t| t.size()[0] as usize).unwrap_or(0);
    let (start, len) = rustworthy_train::ddp::shard_range(n, d.group.rank(), d.group.world_size());
    let out = rows
        .iter()
        .map(|t| t.narrow(0, start as i64, len as i64))
        .collect();
    (out, if n == 0 { 0.0 } else { len as f64 / n as f64 })
}

/// The loss weight of a step that every rank computes in full (the same on every rank): 1 over
/// the world size, so that the summed gradient is the step's gradient.
pub fn replicated_weight(ctx: &UnlearnCtx) -> f64 {
    parallel(ctx)
        .map(|d| 1.0 / d.group.world_size() as f64)
        .unwrap_or(1.0)
}

/// Runs `epochs` of SGD over `ds`, calling `loss_fn(model, x, y, epoch)` for each batch.
/// Returns the number of steps. The loss must be finite, else the run stops with an error.
pub fn sgd_epochs<F>(
    model: &mut Model,
    opt: &mut Optimizer,
    ds: &Dataset,
    run: &RunConfig,
    ctx: &UnlearnCtx,
    stream: &str,
    mut loss_fn: F,
) -> Result<u64>
where
    F: FnMut(&Model, &Tensor, &Tensor, usize) -> Tensor,
{
    if ds.is_empty() {
        return Err(Error::invalid(format!(
            "{stream}: dataset {} is empty",
            ds.name
        )));
    }
    // Same loop as `sgd_loop`, over this dataset's seeded per-epoch batch orders.
    let orders: Vec<Vec<Vec<usize>>> = (0..run.epochs)
        .map(|epoch| batches(ds, run.batch_size, ctx.seed, stream, epoch))
        .collect();
    let model: &Model = model;
    sgd_loop(
        opt,
        run,
        ctx,
        stream,
        |epoch| Ok(orders[epoch].len()),
        |epoch, i| {
            let (x, y) = ds.try_batch(&orders[epoch][i])?;
            // Each rank takes its shard; the loss (regularizers included) is weighted by the
            // shard's share, so the summed gradient is the whole batch's.
            let (rows, w) = shard_rows(ctx, &[&x, &y]);
            let loss = loss_fn(model, &rows[0], &rows[1], epoch);
            Ok(if w == 1.0 { loss } else { loss * w })
        },
    )
}

/// Errors out on a non-finite loss.
pub fn check_finite(loss: f64, what: &str, epoch: usize) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Numerical(format!(
            "{what}: loss became {loss} in epoch {}; lower the learning rate",
            epoch + 1
        )))
    }
}

/// Named trainable parameters as a map (for masks).
pub fn param_map(model: &Model) -> BTreeMap<String, Tensor> {
    model.parameters().into_iter().collect()
}

/// A random label for every sample, different from its true label. Fails instead of guessing: labels that cannot be read as
/// `i64`, fewer than two classes, or a label outside `0..num_classes` are errors.
pub fn try_random_other_labels(y: &Tensor, num_classes: i64, rng: &mut SeedRng) -> Result<Tensor> {
    if num_classes < 2 {
        return Err(Error::invalid(format!(
            "a different random label needs at least 2 classes, got {num_classes}"
        )));
    }
    let ys: Vec<i64> = Vec::<i64>::try_from(
        &y.f_to_device(tch::Device::Cpu)?
            .f_to_kind(tch::Kind::Int64)?
            .f_flatten(0, -1)?,
    )?;
    let mut out = Vec::with_capacity(ys.len());
    for &t in &ys {
        if !(0..num_classes).contains(&t) {
            return Err(Error::invalid(format!(
                "label {t} is out of range 0..{num_classes}"
            )));
        }
        let r = rng.below((num_classes - 1) as usize) as i64;
        out.push(if r >= t { r + 1 } else { r });
    }
    Ok(Tensor::from_slice(&out).f_to_device(y.device())?)
}

/// The SGD loop behind the methods whose batches do not come from a single dataset: runs
/// `run.epochs` epochs of `steps_in(epoch)` optimizer steps each, where `loss_at(epoch, step)`
/// builds the loss of one step. The learning-rate schedule, progress reporting and the
/// finiteness check are those of [`sgd_epochs`]. Returns the number of steps taken.
///
/// In a data-parallel run (`ctx.dist`), every rank starts from rank 0's weights, the gradients
/// are summed over the ranks after each backward pass and batch norm is synchronized: each
/// rank's loss must be weighted so that the ranks' losses sum to the step's loss (see
/// [`shard_rows`] and [`replicated_weight`]).
pub fn sgd_loop<N, L>(
    opt: &mut Optimizer,
    run: &RunConfig,
    ctx: &UnlearnCtx,
    stream: &str,
    mut steps_in: N,
    mut loss_at: L,
) -> Result<u64>
where
    N: FnMut(usize) -> Result<usize>,
    L: FnMut(usize, usize) -> Result<Tensor>,
{
    let mut steps = 0u64;
    let mut ddp = match parallel(ctx) {
        // The optimizer holds the trainable parameters; every rank loaded the same model, and
        // synchronized batch norm keeps the running statistics equal.
        Some(d) => Some(rustworthy_train::ddp::Ddp::for_tensors(
            d,
            opt.named_params().into_iter().map(|(_, t)| t).collect(),
            Vec::new(),
        )?),
        None => None,
    };
    let _sync_bn = parallel(ctx)
        .filter(|d| d.sync_batch_norm)
        .map(|d| rustworthy_dist::SyncBatchNormScope::enter(&d.group));
    for epoch in 0..run.epochs {
        let nb = steps_in(epoch)?;
        let bar = Progress::new(
            ctx.progress,
            &format!("{stream} {}/{}", epoch + 1, run.epochs),
            nb as u64,
        );
        // Losses are summed on the device and read back once per epoch (and every 20 steps
        // only for a visible progress display): no host synchronization per step.
        let mut loss_sum: Option<Tensor> = None;
        let visible = ctx.progress != rustworthy_core::progress::ProgressMode::Quiet;
        for i in 0..nb {
            rustworthy_core::progress::check_interrupt()?;
            let loss = loss_at(epoch, i);
            if let Some(e) = rustworthy_dist::take_failure() {
                return Err(e);
            }
            let loss = loss?;
            opt.zero_grad();
            if let Err(e) = loss.f_backward() {
                return Err(rustworthy_dist::take_failure().unwrap_or(Error::Torch(e)));
            }
            if let Some(d) = ddp.as_mut() {
                d.sum_gradients()?;
            }
            let lr = run.lr_at(epoch as f64 + i as f64 / nb as f64);
            opt.step(lr)?;
            steps += 1;
            let l = loss.detach();
            loss_sum = Some(match loss_sum {
                Some(acc) => acc + &l,
                None => l.shallow_clone(),
            });
            if visible && (i % 20 == 19 || i + 1 == nb) {
                let l = l.f_double_value(&[])?;
                check_finite(l, stream, epoch)?;
                bar.inc(
                    if i % 20 == 19 {
                        20
                    } else {
                        (i % 20 + 1) as u64
                    },
                    || format!("loss {l:.4}"),
                );
            }
        }
        if let Some(acc) = loss_sum {
            // A non-finite step loss makes the sum non-finite.
            check_finite(acc.f_double_value(&[])?, stream, epoch)?;
        }
        bar.finish(serde_json::json!({"epoch": epoch + 1}));
    }
    Ok(steps)
}

/// Forget-set batches handed out one at a time, reshuffled (seeded) each time the set is used
/// up: for methods that pair every retain batch with a forget batch.
pub struct CycledBatches<'a> {
    ds: &'a Dataset,
    batch_size: usize,
    seed: u64,
    stream: String,
    pass: usize,
    queue: std::collections::VecDeque<Vec<usize>>,
}

impl<'a> CycledBatches<'a> {
    /// Batches of `batch_size` samples of `ds`, shuffled per pass from the named stream `stream` of
    /// `seed`; fails on an empty dataset.
    pub fn new(ds: &'a Dataset, batch_size: usize, seed: u64, stream: &str) -> Result<Self> {
        if ds.is_empty() {
            return Err(Error::invalid(format!(
                "{stream}: dataset {} is empty",
                ds.name
            )));
        }
        Ok(CycledBatches {
            ds,
            batch_size,
            seed,
            stream: stream.to_string(),
            pass: 0,
            queue: Default::default(),
        })
    }

    /// The next batch `(x, y)`.
    pub fn next_batch(&mut self) -> Result<(Tensor, Tensor)> {
        if self.queue.is_empty() {
            self.queue =
                batches(self.ds, self.batch_size, self.seed, &self.stream, self.pass).into();
            self.pass += 1;
        }
        let idx = self
            .queue
            .pop_front()
            .ok_or_else(|| Error::invalid(format!("{}: no batch", self.stream)))?;
        self.ds.try_batch(&idx)
    }
}

/// Knowledge-distillation divergence `T^2 * KL(softmax(teacher/T) || softmax(student/T))`,
/// summed over classes and averaged over the batch.
pub fn distill_kl(student_logits: &Tensor, teacher_logits: &Tensor, temperature: f64) -> Tensor {
    let log_s = (student_logits / temperature).log_softmax(-1, tch::Kind::Float);
    let log_t = (teacher_logits / temperature).log_softmax(-1, tch::Kind::Float);
    let b = student_logits.size()[0].max(1) as f64;
    (log_t.exp() * (&log_t - log_s)).sum(tch::Kind::Float) * (temperature * temperature / b)
}

/// Names of the final linear layer's weight `[num_classes, feature_dim]` and bias
/// `[num_classes]`. Every architecture of the zoo registers that layer last, so these are the
/// last two trainable parameters. A TorchScript model has no known feature width: its last two
/// parameters must be `P.weight` `[num_classes, d]` and `P.bias` `[num_classes]` (a final
/// `nn.Linear`). Anything else is an error.
pub fn head_param_names(model: &Model) -> Result<(String, String)> {
    let params = model.parameters();
    let c = model.spec.num_classes;
    let d = model.has_feature_head().then(|| model.feature_dim());
    let n = params.len();
    if n >= 2 {
        let (wn, w) = &params[n - 2];
        let (bn, b) = &params[n - 1];
        let prefix = wn.strip_suffix("weight");
        if prefix.is_some()
            && prefix == bn.strip_suffix("bias")
            && w.dim() == 2
            && w.size()[0] == c
            && d.is_none_or(|d| w.size()[1] == d)
            && b.size() == [c]
        {
            return Ok((wn.clone(), bn.clone()));
        }
    }
    let d = d.map_or("d".to_string(), |d| d.to_string());
    Err(Error::invalid(format!(
        "{} model: cannot find the classifier layer ([{c}, {d}] weight and [{c}] bias) among \
         the last trainable parameters",
        model.spec.arch
    )))
}

/// Standard normal draws (Box-Muller over `rng`) with the shape and device of `like`, as f32.
/// The draws depend only on the seed and the element count, not on the device.
pub fn standard_normal_like(like: &Tensor, rng: &mut SeedRng) -> Result<Tensor> {
    let n = like.numel();
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.unit(); // in (0, 1]
        let u2 = rng.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((r * c) as f32);
        out.push((r * s) as f32);
    }
    out.truncate(n);
    Ok(Tensor::from_slice(&out)
        .f_view(like.size().as_slice())?
        .f_to_device(like.device())?)
}

/// Uniform draws in `[-bound, bound]` of the given shape (f32, on `device`), from `rng`.
pub fn uniform_tensor(
    dims: &[i64],
    bound: f64,
    rng: &mut SeedRng,
    device: tch::Device,
) -> Result<Tensor> {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32)
        .collect();
    Ok(Tensor::from_slice(&v).f_view(dims)?.f_to_device(device)?)
}

/// Errors out (naming `what`) unless every entry of `t` is finite.
pub fn check_finite_tensor(t: &Tensor, what: &str) -> Result<()> {
    if t.numel() == 0 || t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0 {
        Ok(())
    } else {
        Err(Error::Numerical(format!(
            "{what} contains NaN or infinite values"
        )))
    }
}

/// The gradient of the scalar `loss` with respect to `params`, flattened and concatenated in
/// parameter order (f32). Parameters' `.grad` fields are left untouched.
pub fn flat_grad(loss: &Tensor, params: &[Tensor], keep_graph: bool) -> Result<Tensor> {
    let grads = Tensor::f_run_backward(&[loss], params, keep_graph, false)?;
    let flat = grads
        .iter()
        .map(|g| g.f_reshape([-1]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Tensor::f_cat(&flat, 0)?.f_to_kind(tch::Kind::Float)?)
}

/// Adds the flat vector `delta` (parameter order, as from [`flat_grad`]) to `params` in place.
pub fn add_flat_(params: &[Tensor], delta: &Tensor) -> Result<()> {
    let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
    if delta.size() != [total] {
        return Err(Error::Shape {
            op: "parameter update".into(),
            expected: format!("[{total}]"),
            got: delta.size(),
        });
    }
    tch::no_grad(|| -> Result<()> {
        let mut at = 0i64;
        for p in params {
            let n = p.numel() as i64;
            let d = delta
                .f_narrow(0, at, n)?
                .f_view(p.size().as_slice())?
                .f_to_kind(p.kind())?
                .f_to_device(p.device())?;
            let _ = p.shallow_clone().f_add_(&d)?;
            at += n;
        }
        Ok(())
    })
}

/// `k` distinct indices of `0..n` drawn with the seeded stream `stream` and sorted; all of
/// `0..n` when `k >= n`.
pub fn sample_indices(n: usize, k: usize, seed: u64, stream: &str) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut pick = SeedRng::stream(seed, stream, 0).permutation(n);
    pick.truncate(k);
    pick.sort_unstable();
    pick
}
