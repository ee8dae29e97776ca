//! The process group: a handle on a c10d Gloo backend.

use rustworthy_core::{Error, Result};
use std::ffi::{c_char, c_int, CString};
use std::sync::Arc;
use std::time::Duration;
use tch::Tensor;

/// Seconds a collective waits for its peers before it fails (a rank that dies is noticed at
/// once, through its closed connections; the timeout bounds a rank that hangs).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

use torch_sys::C_tensor as CTensor;

extern "C" {
    fn rw_have_gloo() -> c_int;
    fn rw_pg_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn rw_pg_free(pg: *mut RawGroup);
    fn rw_pg_all_reduce_sum(pg: *mut RawGroup, t: *mut CTensor, err: *mut *mut c_char) -> c_int;
    fn rw_pg_broadcast(
        pg: *mut RawGroup,
        t: *mut CTensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rw_pg_barrier(pg: *mut RawGroup, err: *mut *mut c_char) -> c_int;
    fn rw_pg_all_gather(
        pg: *mut RawGroup,
        input: *mut CTensor,
        output: *mut CTensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rw_sync_batch_norm(
        pg: *mut RawGroup,
        x: *const CTensor,
        weight: *const CTensor,
        bias: *const CTensor,
        running_mean: *const CTensor,
        running_var: *const CTensor,
        momentum: f64,
        eps: f64,
        err: *mut *mut c_char,
    ) -> *mut CTensor;
}

fn take_message(err: *mut c_char) -> String {
    // SAFETY: every `err` here comes from the c10d bridge's `guarded`.
    unsafe { rustworthy_accel::take_bridge_message(err) }
}

fn tensor_ptr(t: &Tensor) -> *mut CTensor {
    t.as_ptr() as *mut CTensor
}

struct Inner {
    raw: *mut RawGroup,
}

// SAFETY: c10d process groups are thread-safe for issuing collectives; the handle itself is
// only freed once, when the last reference drops.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `rw_pg_new` and is freed only here.
        unsafe { rw_pg_free(self.raw) }
    }
}

/// A group of `world_size` processes that run collectives together. Rank 0 hosts the rendezvous
/// store. A world of one needs no rendezvous: every collective is then the identity.
#[derive(Clone)]
pub struct ProcessGroup {
    rank: usize,
    world_size: usize,
    inner: Option<Arc<Inner>>,
    what: String,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup({})", self.what)
    }
}

impl ProcessGroup {
    /// The group of one process: collectives are the identity.
    pub fn single() -> ProcessGroup {
        ProcessGroup {
            rank: 0,
            world_size: 1,
            inner: None,
            what: "single process".to_string(),
        }
    }

    /// Whether this build has the Gloo backend.
    pub fn gloo_available() -> bool {
        // SAFETY: a plain query without arguments.
        unsafe { rw_have_gloo() != 0 }
    }

    /// Joins the group of `world_size` processes whose rank 0 listens on `addr:port` (rank 0
    /// starts the store there). Blocks until every rank has joined or `timeout` passes; the same
    /// timeout then bounds every collective.
    pub fn connect(
        addr: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<ProcessGroup> {
        if world_size == 0 {
            return Err(Error::config("world_size", "must be >= 1"));
        }
        if rank >= world_size {
            return Err(Error::config(
                "rank",
                format!("{rank} is not below the world size {world_size}"),
            ));
        }
        if world_size == 1 {
            return Ok(ProcessGroup::single());
        }
        if port == 0 {
            return Err(Error::config(
                "master_port",
                "must be a port number above 0",
            ));
        }
        if timeout.is_zero() {
            return Err(Error::config("timeout", "must be > 0"));
        }
        let host =
            CString::new(addr).map_err(|_| Error::config("master_addr", "contains a NUL byte"))?;
        let mut err: *mut c_char = std::ptr::null_mut();
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // SAFETY: valid C string and out-pointer; the result is owned by `Inner`.
        let raw = unsafe {
            rw_pg_new(
                host.as_ptr(),
                port as c_int,
                rank as c_int,
                world_size as c_int,
                ms,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(Error::Distributed(format!(
                "rank {rank} of {world_size} could not join the group at {addr}:{port}: {}",
                take_message(err)
            )));
        }
        Ok(ProcessGroup {
            rank,
            world_size,
            inner: Some(Arc::new(Inner { raw })),
            what: format!("rank {rank} of {world_size}, gloo, store {addr}:{port}"),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether this is rank 0 (the one that writes checkpoints and reports).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The backend's name ("single" or "gloo").
    pub fn backend(&self) -> &'static str {
        if self.inner.is_some() {
            "gloo"
        } else {
            "single"
        }
    }

    fn check(&self, op: &str, rc: c_int, err: *mut c_char) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(Error::Distributed(format!(
            "{op} failed on rank {} of {}: {} (a peer process probably died or timed out)",
            self.rank,
            self.world_size,
            take_message(err)
        )))
    }

    fn check_dense(op: &str, t: &Tensor) -> Result<()> {
        if !t.is_contiguous() {
            return Err(Error::invalid(format!(
                "{op}: the tensor must be contiguous"
            )));
        }
        Ok(())
    }

    /// Sums `t` over every rank, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        Self::check_dense("all_reduce", t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: live group and tensor; the bridge catches every C++ exception.
        let rc = unsafe { rw_pg_all_reduce_sum(inner.raw, tensor_ptr(t), &mut err) };
        self.check("all_reduce", rc, err)
    }

    /// Copies rank `root`'s `t` into every rank's `t`, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(Error::invalid(format!(
                "broadcast root {root} is not below the world size {}",
                self.world_size
            )));
        }
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        Self::check_dense("broadcast", t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce_sum`.
        let rc = unsafe { rw_pg_broadcast(inner.raw, tensor_ptr(t), root as c_int, &mut err) };
        self.check("broadcast", rc, err)
    }

    /// Every rank's `t`, stacked in rank order (`[world, ...t's shape]`).
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let Some(inner) = &self.inner else {
            return Ok(t.unsqueeze(0).copy());
        };
        Self::check_dense("all_gather", t)?;
        let mut shape = vec![self.world_size as i64];
        shape.extend(t.size());
        let out = Tensor::empty(shape.as_slice(), (t.kind(), t.device()));
        let mut err = std::ptr::null_mut();
        // SAFETY: live group and tensors; `out` is contiguous with one row per rank.
        let rc = unsafe { rw_pg_all_gather(inner.raw, tensor_ptr(t), tensor_ptr(&out), &mut err) };
        self.check("all_gather", rc, err)?;
        Ok(out)
    }

    /// Waits until every rank arrives.
    pub fn barrier(&self) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: live group.
        let rc = unsafe { rw_pg_barrier(inner.raw, &mut err) };
        self.check("barrier", rc, err)
    }

    /// Sums `values` over every rank (a small helper for counters and metrics).
    pub fn all_reduce_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.inner.is_none() {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values);
        self.all_reduce_sum(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Batch norm in training mode over the union of every rank's batch (statistics gathered,
    /// input gradients reduced across ranks in the backward pass); running statistics updated
    /// with the global ones. In a world of one it is libtorch's batch norm.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_batch_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let Some(inner) = &self.inner else {
            return Ok(x.f_batch_norm(
                weight,
                bias,
                running_mean,
                running_var,
                true,
                momentum,
                eps,
                true,
            )?);
        };
        if x.dim() < 2 {
            return Err(Error::Shape {
                op: "sync_batch_norm".into(),
                expected: "[N, C, ...]".into(),
                got: x.size(),
            });
        }
        let opt = |t: Option<&Tensor>| t.map(tensor_ptr).unwrap_or(std::ptr::null_mut());
        let mut err = std::ptr::null_mut();
        // SAFETY: live group and tensors (null for absent ones); the result is a fresh
        // heap-allocated at::Tensor that `Tensor::from_ptr` takes ownership of.
        let out = unsafe {
            rw_sync_batch_norm(
                inner.raw,
                tensor_ptr(x),
                opt(weight),
                opt(bias),
                opt(running_mean),
                opt(running_var),
                momentum,
                eps,
                &mut err,
            )
        };
        if out.is_null() {
            self.check("sync_batch_norm", 1, err)?;
        }
        // SAFETY: see above.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}
