//! Data-parallel training, as PyTorch's DDP does it: parameters and buffers broadcast from rank 0
//! at the start, every global batch split into disjoint per-rank shards, gradients flattened into
//! buckets, all-reduced with the weight of each shard and copied back, so every rank takes the
//! same optimizer step and the ranks stay identical.
//!
//! Optionally the gradients travel compressed, with error feedback as in distributed adversarial
//! training (DAT): each rank adds the part of its gradient that the previous compressions lost,
//! compresses, keeps the new residual, and the ranks all-gather the compressed payloads (int8:
//! a quarter of the bytes of float32; sign: one bit per entry) and decode their sum.

use crate::trainer::{DistOptions, TrainConfig};
use rustworthy_core::{Error, Result};
use rustworthy_dist::ProcessGroup;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Tensor;

/// How gradients travel between ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// float32 all-reduce (exact up to rounding).
    #[default]
    None,
    /// 8 bits per entry: stochastic rounding of |g| / ||g|| to 127 levels plus the sign, and the
    /// norm (the random quantizer of DAT and QSGD), with error feedback.
    Int8,
    /// 1 bit per entry: the sign, scaled by the mean magnitude (EF-signSGD), with error feedback.
    Sign,
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "int8" | "8bit" => Ok(Compression::Int8),
            "sign" | "1bit" => Ok(Compression::Sign),
            _ => Err(Error::config(
                "dist.compression",
                format!("unknown `{s}` (none, int8, sign)"),
            )),
        }
    }
}

/// Encodes `e` as one byte tensor (the payload every rank sends) and returns it with what the
/// receivers will decode from it.
fn encode(c: Compression, e: &Tensor) -> (Tensor, Tensor) {
    let n = e.numel() as i64;
    match c {
        Compression::None => unreachable!("no payload without compression"),
        Compression::Int8 => {
            let norm = e.norm();
            let safe = norm.clamp_min(f64::MIN_POSITIVE);
            let level = e.abs() / &safe * 127.0;
            let low = level.floor();
            let up = (&level - &low).bernoulli();
            let codes = ((low + up).clamp_max(127.0) * e.sign()).to_kind(tch::Kind::Int8);
            let decoded = codes.to_kind(tch::Kind::Float) * &norm / 127.0;
            let payload = Tensor::cat(
                &[
                    codes.view_dtype(tch::Kind::Uint8),
                    norm.to_kind(tch::Kind::Float)
                        .reshape([1])
                        .view_dtype(tch::Kind::Uint8),
                ],
                0,
            );
            (payload, decoded.view([n]))
        }
        Compression::Sign => {
            let scale = e.abs().mean(tch::Kind::Float);
            let bits = e.ge(0.0);
            let decoded = (bits.to_kind(tch::Kind::Float) * 2.0 - 1.0) * &scale;
            let packed = pack_bits(&bits);
            let payload = Tensor::cat(
                &[packed, scale.reshape([1]).view_dtype(tch::Kind::Uint8)],
                0,
            );
            (payload, decoded)
        }
    }
}

/// The sum over ranks of the values encoded in `rows` (`[world, payload]`), for `n` entries.
fn decode_sum(c: Compression, rows: &Tensor, n: i64) -> Tensor {
    let world = rows.size()[0];
    let mut sum = Tensor::zeros([n], (tch::Kind::Float, rows.device()));
    for r in 0..world {
        let row = rows.get(r);
        let len = row.size()[0];
        let tail = row
            .narrow(0, len - 4, 4)
            .copy()
            .view_dtype(tch::Kind::Float);
        let v = match c {
            Compression::None => unreachable!("no payload without compression"),
            Compression::Int8 => {
                row.narrow(0, 0, n)
                    .view_dtype(tch::Kind::Int8)
                    .to_kind(tch::Kind::Float)
                    * &tail
                    / 127.0
            }
            Compression::Sign => {
                let bits = unpack_bits(&row.narrow(0, 0, len - 4), n);
                (bits.to_kind(tch::Kind::Float) * 2.0 - 1.0) * &tail
            }
        };
        sum += v;
    }
    sum
}

/// Eight booleans per byte, the first in the lowest bit.
fn pack_bits(bits: &Tensor) -> Tensor {
    let n = bits.numel() as i64;
    let padded = (n + 7) / 8 * 8;
    let b = bits
        .to_kind(tch::Kind::Uint8)
        .constant_pad_nd([0, padded - n])
        .view([-1, 8]);
    let weights = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).to_device(bits.device());
    (b * weights).sum_dim_intlist(1, false, tch::Kind::Uint8)
}

fn unpack_bits(packed: &Tensor, n: i64) -> Tensor {
    let masks = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).to_device(packed.device());
    packed
        .unsqueeze(1)
        .bitwise_and_tensor(&masks)
        .ne(0)
        .view([-1])
        .narrow(0, 0, n)
}

/// Per-rank timing of a data-parallel run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RankTiming {
    /// The rank.
    pub rank: usize,
    /// Wall-clock seconds of its training loop.
    pub seconds: f64,
    /// Seconds it spent in gradient all-reduces.
    pub all_reduce_seconds: f64,
}

/// What a data-parallel run reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistReport {
    /// Number of processes.
    pub world_size: usize,
    /// The collective backend.
    pub backend: String,
    /// Whether batch norm was synchronized over the global batch.
    pub sync_batch_norm: bool,
    /// How gradients travelled.
    #[serde(default)]
    pub compression: Compression,
    /// Gradient all-reduce calls per optimizer step.
    pub buckets: usize,
    /// Every rank's timings.
    pub ranks: Vec<RankTiming>,
}

/// Keeps the ranks of a data-parallel loop identical: broadcasts rank 0's parameters and buffers
/// on creation, then sums (or averages) gradients across ranks after every backward pass. Used
/// by `fit` and by the unlearning methods' loops.
pub struct Ddp {
    group: ProcessGroup,
    sync_batch_norm: bool,
    compression: Compression,
    /// Per bucket: what compression has not transmitted yet (error feedback).
    residuals: Vec<Option<Tensor>>,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
    buckets: Vec<Vec<usize>>,
    all_reduce_seconds: f64,
}

/// The `[start, len)` of `rank`'s shard of a batch of `n`: as even as possible, the first
/// `n % world` ranks one sample more.
pub fn shard_range(n: usize, rank: usize, world: usize) -> (usize, usize) {
    let base = n / world;
    let extra = n % world;
    let len = base + usize::from(rank < extra);
    let start = rank * base + rank.min(extra);
    (start, len)
}

impl Ddp {
    /// Checks that every batch of `fit` gives each rank a sample, then makes every rank start
    /// from rank 0's parameters and buffers.
    pub fn new(d: &DistOptions, model: &Model, n: usize, cfg: &TrainConfig) -> Result<Ddp> {
        let world = d.group.world_size();
        if cfg.batch_size < world {
            return Err(Error::config(
                "batch_size",
                format!(
                    "{} is smaller than the world size {world}: every rank needs a sample of each global batch",
                    cfg.batch_size
                ),
            ));
        }
        let tail = n % cfg.batch_size;
        if !cfg.drop_last && tail != 0 && tail < world {
            return Err(Error::config(
                "batch_size",
                format!(
                    "the last batch of each epoch holds {tail} of the {n} samples, fewer than the world size {world}; use drop_last or another batch size"
                ),
            ));
        }
        Ddp::for_tensors(
            d,
            model.parameters().into_iter().map(|(_, t)| t).collect(),
            model.buffers().into_iter().map(|(_, t)| t).collect(),
        )
    }

    /// Makes every rank start from rank 0's `params` and `buffers` and prepares the gradient
    /// buckets of `params`.
    pub fn for_tensors(d: &DistOptions, params: Vec<Tensor>, buffers: Vec<Tensor>) -> Result<Ddp> {
        if !(d.bucket_mib > 0.0 && d.bucket_mib.is_finite()) {
            return Err(Error::config("dist.bucket_mib", "must be a number > 0"));
        }
        if let Some(t) = params.iter().chain(&buffers).find(|t| t.device().is_cuda()) {
            return Err(Error::Distributed(format!(
                "the model is on {:?}: data-parallel runs use Gloo on the CPU for now (NCCL is not built); run with --device cpu",
                t.device()
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for t in params.iter().chain(&buffers) {
                d.group.broadcast(t, 0)?;
            }
            Ok(())
        })?;
        let limit = (d.bucket_mib * 1024.0 * 1024.0) as i64;
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut size = 0i64;
        for (i, p) in params.iter().enumerate() {
            let bytes = p.numel() as i64 * p.kind().elt_size_in_bytes() as i64;
            match buckets.last_mut() {
                Some(b) if size + bytes <= limit => {
                    b.push(i);
                    size += bytes;
                }
                _ => {
                    buckets.push(vec![i]);
                    size = bytes;
                }
            }
        }
        Ok(Ddp {
            group: d.group.clone(),
            sync_batch_norm: d.sync_batch_norm,
            compression: d.compression,
            residuals: (0..buckets.len()).map(|_| None).collect(),
            params,
            buffers,
            buckets,
            all_reduce_seconds: 0.0,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// This rank's shard of a global batch, and its size.
    pub fn shard(&self, x: &Tensor, y: &Tensor) -> (Tensor, Tensor, usize) {
        let n = x.size()[0] as usize;
        let (start, len) = shard_range(n, self.group.rank(), self.group.world_size());
        (
            x.narrow(0, start as i64, len as i64),
            y.narrow(0, start as i64, len as i64),
            len,
        )
    }

    /// Replaces every rank's gradients by the weighted sum over ranks (`weight` = this shard's
    /// share of the global batch; 1 when the loss was already scaled by it).
    pub fn average_gradients(&mut self, weight: f64) -> Result<()> {
        let t0 = Instant::now();
        let compression = self.compression;
        tch::no_grad(|| -> Result<()> {
            for (bi, bucket) in self.buckets.iter().enumerate() {
                // Parameters without a gradient have none on every rank (same model, same
                // step), so skipping them keeps the buckets aligned.
                let grads: Vec<Tensor> = bucket
                    .iter()
                    .map(|&i| self.params[i].grad())
                    .filter(|g| g.defined())
                    .collect();
                if grads.is_empty() {
                    continue;
                }
                let flat = Tensor::cat(
                    &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
                    0,
                ) * weight;
                let flat = if compression == Compression::None {
                    self.group.all_reduce_sum(&flat)?;
                    flat
                } else {
                    let e = match &self.residuals[bi] {
                        Some(r) if r.size() == flat.size() => &flat + r,
                        _ => flat,
                    };
                    let (payload, decoded) = encode(compression, &e);
                    self.residuals[bi] = Some(&e - decoded);
                    let rows = self.group.all_gather(&payload)?;
                    decode_sum(compression, &rows, e.numel() as i64)
                };
                let mut offset = 0i64;
                for g in &grads {
                    let k = g.numel() as i64;
                    let mut g = g.shallow_clone();
                    g.copy_(&flat.narrow(0, offset, k).view_as(&g));
                    offset += k;
                }
            }
            Ok(())
        })?;
        self.all_reduce_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Sums the gradients over the ranks (each rank's loss already carries its weight).
    pub fn sum_gradients(&mut self) -> Result<()> {
        self.average_gradients(1.0)
    }

    /// Makes every rank's buffers (batch-norm running statistics) rank 0's; a no-op for
    /// synchronized batch norm, whose statistics are already global.
    pub fn sync_buffers(&self) -> Result<()> {
        if self.sync_batch_norm {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for b in &self.buffers {
                self.group.broadcast(b, 0)?;
            }
            Ok(())
        })
    }

    /// Sums three numbers over the ranks.
    pub fn sum_over_ranks(&self, v: [f64; 3]) -> Result<[f64; 3]> {
        let s = self.group.all_reduce_f64(&v)?;
        Ok([s[0], s[1], s[2]])
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.group.barrier()
    }

    /// Gathers every rank's timings.
    pub fn report(&self, seconds: f64) -> Result<DistReport> {
        let w = self.group.world_size();
        let mut v = vec![0.0; 2 * w];
        v[self.rank()] = seconds;
        v[w + self.rank()] = self.all_reduce_seconds;
        let all = self.group.all_reduce_f64(&v)?;
        Ok(DistReport {
            world_size: w,
            backend: self.group.backend().to_string(),
            sync_batch_norm: self.sync_batch_norm,
            compression: self.compression,
            buckets: self.buckets.len(),
            ranks: (0..w)
                .map(|r| RankTiming {
                    rank: r,
                    seconds: all[r],
                    all_reduce_seconds: all[w + r],
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_payloads_decode_to_what_the_sender_kept() {
        tch::manual_seed(0);
        let e = Tensor::randn([1001], (tch::Kind::Float, tch::Device::Cpu));
        for c in [Compression::Int8, Compression::Sign] {
            let (payload, decoded) = encode(c, &e);
            let bytes = payload.numel() as i64;
            match c {
                Compression::Int8 => assert_eq!(bytes, 1001 + 4),
                _ => assert_eq!(bytes, 126 + 4),
            }
            // Two "ranks" sending the same payload decode to twice the kept value.
            let rows = Tensor::stack(&[&payload, &payload], 0);
            let sum = decode_sum(c, &rows, 1001);
            assert!(sum.allclose(&(&decoded * 2.0), 1e-6, 1e-6, false), "{c:?}");
        }
        // Int8 is unbiased: the mean of many stochastic roundings approaches the input.
        let mut acc = Tensor::zeros([1001], (tch::Kind::Float, tch::Device::Cpu));
        for _ in 0..400 {
            acc += encode(Compression::Int8, &e).1;
        }
        let err = f64::try_from((acc / 400.0 - &e).abs().max()).unwrap();
        assert!(err < 0.02, "{err}");
        // Sign keeps every sign and the mean magnitude.
        let (_, d) = encode(Compression::Sign, &e);
        assert!(d.sign().eq_tensor(&e.sign()).all().int64_value(&[]) == 1);
        assert_eq!("1bit".parse::<Compression>().unwrap(), Compression::Sign);
        assert!("zip".parse::<Compression>().is_err());
    }

    #[test]
    fn shards_cover_the_batch_once() {
        for n in 1..40 {
            for w in 1..=n.min(6) {
                let mut next = 0;
                for r in 0..w {
                    let (s, l) = shard_range(n, r, w);
                    assert_eq!(s, next);
                    assert!(l >= 1);
                    next += l;
                }
                assert_eq!(next, n);
            }
        }
    }
}
