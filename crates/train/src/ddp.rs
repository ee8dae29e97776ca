//! Data-parallel training, as PyTorch's DDP does it: parameters and buffers broadcast from rank 0
//! at the start, every global batch split into disjoint per-rank shards, gradients flattened into
//! buckets, all-reduced with the weight of each shard and copied back, so every rank takes the
//! same optimizer step and the ranks stay identical.

use crate::trainer::{DistOptions, TrainConfig};
use rustworthy_core::{Error, Result};
use rustworthy_dist::ProcessGroup;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Tensor;

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
    /// Gradient all-reduce calls per optimizer step.
    pub buckets: usize,
    /// Every rank's timings.
    pub ranks: Vec<RankTiming>,
}

/// The state of a data-parallel `fit`.
pub(crate) struct Ddp {
    group: ProcessGroup,
    sync_batch_norm: bool,
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
    /// Checks that every batch gives each rank a sample, then makes every rank start from rank
    /// 0's parameters and buffers.
    pub fn new(d: &DistOptions, model: &Model, n: usize, cfg: &TrainConfig) -> Result<Ddp> {
        let world = d.group.world_size();
        if !(d.bucket_mib > 0.0 && d.bucket_mib.is_finite()) {
            return Err(Error::config("dist.bucket_mib", "must be a number > 0"));
        }
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
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, t)| t).collect();
        let buffers: Vec<Tensor> = model.buffers().into_iter().map(|(_, t)| t).collect();
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
            params,
            buffers,
            buckets,
            all_reduce_seconds: 0.0,
        })
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
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
    /// share of the global batch).
    pub fn average_gradients(&mut self, _model: &Model, weight: f64) -> Result<()> {
        let t0 = Instant::now();
        tch::no_grad(|| -> Result<()> {
            for bucket in &self.buckets {
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
                self.group.all_reduce_sum(&flat)?;
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
    use super::shard_range;

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
