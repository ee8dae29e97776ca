//! Speed paths of libtorch that its generated C bindings do not expose, reached through a small
//! C++ bridge compiled against the linked libtorch's headers:
//!
//! * [`fused_sgd`] and [`fused_adam`]: libtorch's fused multi-tensor optimizer kernels
//!   (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`): one kernel per step for every parameter
//!   tensor instead of about ten per tensor, on the CPU and on CUDA.
//! * [`Precision`] and [`autocast`]: bf16 automatic mixed precision with the semantics of
//!   `torch.autocast` (eligible ops such as convolutions and matrix products run in bf16,
//!   parameters and everything else stay float32; the backward pass runs outside the region).
//! * [`to_channels_last`] and [`model_to_channels_last`]: the NHWC memory format.
//! * [`SyncWatch`]: counts the operators that make the host wait for an accelerator (reading a
//!   scalar back, data-dependent output sizes), through a record-function callback. It sees
//!   them on the CPU too, so a CPU test proves that a step loop would not synchronize on a GPU.
//! * [`to_dlpack`] and [`from_dlpack`]: tensors exchanged without copies through DLPack, the
//!   protocol `torch.utils.dlpack` speaks (the Python package hands tensors to and from PyTorch
//!   this way).

#![warn(missing_docs)]

use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor as CTensor;

extern "C" {
    fn rwa_free_message(m: *mut c_char);
    fn rwa_fused_sgd(
        params: *const *mut CTensor,
        grads: *const *mut CTensor,
        bufs: *const *mut CTensor,
        n: i64,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        dampening: f64,
        nesterov: c_int,
        first: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rwa_fused_adam(
        params: *const *mut CTensor,
        grads: *const *mut CTensor,
        m: *const *mut CTensor,
        v: *const *mut CTensor,
        step: *mut CTensor,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rwa_autocast_enter(
        device: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rwa_autocast_exit(
        device: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rwa_autocast_enabled(device: c_int) -> c_int;
    fn rwa_channels_last(t: *mut CTensor, err: *mut *mut c_char) -> *mut CTensor;
    fn rwa_is_channels_last(t: *mut CTensor) -> c_int;
    fn rwa_sync_watch_start();
    fn rwa_sync_watch_stop() -> i64;
    fn rwa_to_dlpack(t: *mut CTensor, err: *mut *mut c_char) -> *mut c_void;
    fn rwa_from_dlpack(m: *mut c_void, err: *mut *mut c_char) -> *mut CTensor;
    fn rwa_dlpack_release(m: *mut c_void);
}

/// The message a bridge entry point reported through its `err` out-pointer (a malloc'd,
/// NUL-terminated string, freed here), or "unknown failure" for a null pointer. Shared by
/// rustworthy's C++ bridges (`rw_bridge.h`).
///
/// # Safety
/// `err` is null or a string allocated by a bridge's `guarded` and not freed yet.
pub unsafe fn take_bridge_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown failure".to_string();
    }
    // SAFETY: the caller hands over a NUL-terminated malloc'd string, freed here exactly once.
    let s = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { rwa_free_message(err) };
    s
}

fn take_message(err: *mut c_char) -> String {
    // SAFETY: every `err` here comes from this crate's bridge.
    unsafe { take_bridge_message(err) }
}

fn check(what: &str, rc: c_int, err: *mut c_char) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::invalid(format!("{what}: {}", take_message(err))))
    }
}

/// `out` from a bridge entry point that returns a new object, or null with a message in `err`.
fn non_null<T>(what: &str, out: *mut T, err: *mut c_char) -> Result<*mut T> {
    if out.is_null() {
        Err(Error::invalid(format!("{what}: {}", take_message(err))))
    } else {
        Ok(out)
    }
}

fn ptrs(ts: &[Tensor]) -> Vec<*mut CTensor> {
    ts.iter().map(|t| t.as_ptr() as *mut CTensor).collect()
}

fn same_len(what: &str, n: usize, others: &[(&str, usize)]) -> Result<()> {
    for (name, m) in others {
        if *m != n {
            return Err(Error::invalid(format!(
                "{what}: {n} parameters but {m} {name}"
            )));
        }
    }
    Ok(())
}

/// One SGD step over every tensor of `params` in libtorch's fused kernel, with PyTorch's
/// semantics: `d = g + weight_decay * p`; with momentum, `b = momentum * b + (1 - dampening) *
/// d` (`b = d` when `first`), `d = b` or, with Nesterov, `d + momentum * b`; `p -= lr * d`.
/// `bufs` is ignored without momentum. Parameters, gradients and buffers are updated in place.
#[allow(clippy::too_many_arguments)]
pub fn fused_sgd(
    params: &[Tensor],
    grads: &[Tensor],
    bufs: &[Tensor],
    weight_decay: f64,
    momentum: f64,
    lr: f64,
    dampening: f64,
    nesterov: bool,
    first: bool,
) -> Result<()> {
    let n = params.len();
    same_len("fused SGD", n, &[("gradients", grads.len())])?;
    if momentum > 0.0 {
        same_len("fused SGD", n, &[("momentum buffers", bufs.len())])?;
    }
    if n == 0 {
        return Ok(());
    }
    let (p, g) = (ptrs(params), ptrs(grads));
    let b = if momentum > 0.0 {
        ptrs(bufs)
    } else {
        Vec::new()
    };
    let mut err = std::ptr::null_mut();
    // SAFETY: every pointer is a live at::Tensor owned by the slices, for the call's duration.
    let rc = unsafe {
        rwa_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            if b.is_empty() {
                std::ptr::null()
            } else {
                b.as_ptr()
            },
            n as i64,
            weight_decay,
            momentum,
            lr,
            dampening,
            nesterov as c_int,
            first as c_int,
            &mut err,
        )
    };
    check("fused SGD", rc, err)
}

/// One Adam (or, with `decoupled`, AdamW) step over every tensor of `params` in libtorch's fused
/// kernel, with PyTorch's semantics and bias correction by the step number held in `step` (a
/// float32 scalar on the parameters' device, 1 on the first step, incremented by the caller).
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    step: &Tensor,
    lr: f64,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<()> {
    let n = params.len();
    same_len(
        "fused Adam",
        n,
        &[
            ("gradients", grads.len()),
            ("first moments", m.len()),
            ("second moments", v.len()),
        ],
    )?;
    if step.kind() != Kind::Float || step.dim() != 0 {
        return Err(Error::invalid(
            "fused Adam: the step count must be a float32 scalar tensor",
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let (p, g, a, b) = (ptrs(params), ptrs(grads), ptrs(m), ptrs(v));
    let mut err = std::ptr::null_mut();
    // SAFETY: as in `fused_sgd`; `step` outlives the call.
    let rc = unsafe {
        rwa_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            step.as_ptr() as *mut CTensor,
            n as i64,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            decoupled as c_int,
            &mut err,
        )
    };
    check("fused Adam", rc, err)
}

/// Arithmetic precision of forward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 throughout (the default).
    #[default]
    Fp32,
    /// bf16 autocast (PyTorch AMP with `dtype=torch.bfloat16`): eligible ops run in bf16,
    /// parameters, gradients and optimizer state stay float32; no loss scaling is needed.
    Bf16,
}

impl Precision {
    /// Whether this is the float32 default.
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    /// Parses `fp32` or `bf16`.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::config(
                "precision",
                format!("unknown precision `{s}` (fp32 or bf16)"),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// c10's `ScalarType::BFloat16`.
const BF16_SCALAR_TYPE: c_int = 15;

fn device_code(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(Error::Device(format!(
            "autocast: unsupported device {other:?}"
        ))),
    }
}

/// While alive, forward ops on `device` autocast to bf16, as inside `torch.autocast`. Dropping
/// it restores the previous state (regions nest).
pub struct AutocastGuard {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
    // Autocast state is per thread: the guard must be dropped on the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl AutocastGuard {
    /// Enters a bf16 autocast region for `device`.
    pub fn bf16(device: Device) -> Result<AutocastGuard> {
        let code = device_code(device)?;
        let (mut pe, mut pd) = (0, 0);
        let mut err = std::ptr::null_mut();
        // SAFETY: plain values and out-pointers to locals.
        let rc = unsafe { rwa_autocast_enter(code, BF16_SCALAR_TYPE, &mut pe, &mut pd, &mut err) };
        check("autocast", rc, err)?;
        Ok(AutocastGuard {
            device: code,
            prev_enabled: pe,
            prev_dtype: pd,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let mut err = std::ptr::null_mut();
        // SAFETY: restores the state saved by `bf16` on the same thread.
        let rc =
            unsafe { rwa_autocast_exit(self.device, self.prev_enabled, self.prev_dtype, &mut err) };
        if rc != 0 {
            // Restoring thread-local flags does not fail in practice; never panic in drop.
            let _ = take_message(err);
        }
    }
}

/// Whether autocast is on for `device` in this thread.
pub fn autocast_enabled(device: Device) -> bool {
    match device_code(device) {
        // SAFETY: reads a thread-local flag.
        Ok(c) => unsafe { rwa_autocast_enabled(c) != 0 },
        Err(_) => false,
    }
}

/// Runs `f` under `precision` on `device`: as it is for fp32, inside a bf16 autocast region for
/// bf16. Put the forward pass and the loss inside, the backward pass outside (as PyTorch AMP).
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    match precision {
        Precision::Fp32 => Ok(f()),
        Precision::Bf16 => {
            let _g = AutocastGuard::bf16(device)?;
            Ok(f())
        }
    }
}

/// `t` in channels-last (NHWC) memory order; tensors that are not 4-D come back unchanged.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    let mut err = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; the bridge returns a new heap at::Tensor or null on error.
    let out = unsafe { rwa_channels_last(t.as_ptr() as *mut CTensor, &mut err) };
    let out = non_null("channels-last", out, err)?;
    // SAFETY: `out` is a heap-allocated at::Tensor that `from_ptr` takes ownership of.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Whether `t` is 4-D and laid out channels-last.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: reads the strides of a live tensor.
    unsafe { rwa_is_channels_last(t.as_ptr() as *mut CTensor) != 0 }
}

/// Moves every 4-D parameter and buffer (convolution weights) of `vars` to channels-last in
/// place, as `model.to(memory_format=torch.channels_last)`. Values are unchanged.
pub fn vars_to_channels_last(vars: &[Tensor]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for v in vars {
            if v.dim() == 4 && !is_channels_last(v) {
                let nhwc = to_channels_last(v)?;
                let mut v = v.shallow_clone();
                v.set_data(&nhwc);
            }
        }
        Ok(())
    })
}

/// Counts the operators run by this thread that force a host synchronization on an
/// accelerator: `_local_scalar_dense` (every `.item()`, `double_value`, `int64_value`),
/// `nonzero`, `masked_select`, `_unique2` and `equal`. Copies to the host are not counted (on
/// the CPU they are not operators). Counting costs a callback per operator while a watch is on.
pub struct SyncWatch {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SyncWatch {
    /// Starts counting from zero.
    pub fn start() -> SyncWatch {
        // SAFETY: installs a process-wide callback once and sets thread-local counters.
        unsafe { rwa_sync_watch_start() };
        SyncWatch {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Stops counting and returns the count.
    pub fn stop(self) -> u64 {
        // SAFETY: reads and clears thread-local state.
        unsafe { rwa_sync_watch_stop() as u64 }
    }
}

/// A DLPack view of `t`: a pointer to a legacy `DLManagedTensor` that shares `t`'s memory and
/// keeps it alive until its deleter runs. Hand it to a consumer (for example in a `"dltensor"`
/// capsule for `torch.utils.dlpack.from_dlpack`), or free it with [`dlpack_release`].
pub fn to_dlpack(t: &Tensor) -> Result<*mut c_void> {
    let mut err = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; the bridge returns a new managed tensor or null on error.
    let out = unsafe { rwa_to_dlpack(t.as_ptr() as *mut CTensor, &mut err) };
    non_null("DLPack export", out, err)
}

/// The tensor over the memory of the DLPack tensor `m`, without a copy. On success the tensor
/// owns `m` (its deleter runs when the tensor's storage is freed); on error `m` still belongs to
/// the caller.
///
/// # Safety
/// `m` must point to a live legacy `DLManagedTensor` that nothing else consumes or frees.
pub unsafe fn from_dlpack(m: *mut c_void) -> Result<Tensor> {
    let mut err = std::ptr::null_mut();
    // SAFETY: the caller guarantees `m`; the bridge returns a heap at::Tensor or null on error.
    let out = non_null(
        "DLPack import",
        unsafe { rwa_from_dlpack(m, &mut err) },
        err,
    )?;
    // SAFETY: `out` is a heap-allocated at::Tensor that `from_ptr` takes ownership of.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Runs the deleter of a DLPack tensor that nobody consumed.
///
/// # Safety
/// `m` must point to a live legacy `DLManagedTensor` (or be null); it is invalid afterwards.
pub unsafe fn dlpack_release(m: *mut c_void) {
    // SAFETY: guaranteed by the caller.
    unsafe { rwa_dlpack_release(m) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlpack_round_trip_shares_memory_and_keeps_kind_and_strides() {
        for kind in [
            Kind::Float,
            Kind::Int64,
            Kind::Bool,
            Kind::BFloat16,
            Kind::Uint8,
        ] {
            let x = Tensor::arange(12, (Kind::Int64, Device::Cpu))
                .remainder(3)
                .to_kind(kind)
                .reshape([3, 4]);
            // A transposed view: DLPack carries strides, so nothing is copied.
            let v = x.tr();
            let m = to_dlpack(&v).unwrap();
            // SAFETY: `m` was just made and is consumed once.
            let y = unsafe { from_dlpack(m) }.unwrap();
            assert_eq!(y.kind(), kind);
            assert_eq!(y.size(), v.size());
            assert_eq!(y.stride(), v.stride());
            assert_eq!(y.data_ptr(), v.data_ptr());
            assert!(y.equal(&v));
        }
        // The imported tensor keeps the memory alive after the original is gone.
        let x = Tensor::from_slice(&[1.5f32, -2.0]);
        // SAFETY: consumed once, right away.
        let y = unsafe { from_dlpack(to_dlpack(&x).unwrap()) }.unwrap();
        drop(x);
        assert_eq!(Vec::<f32>::try_from(&y).unwrap(), vec![1.5, -2.0]);
        // An unconsumed export is freed without leaking or touching the tensor.
        let m = to_dlpack(&y).unwrap();
        // SAFETY: `m` is live and not consumed.
        unsafe { dlpack_release(m) };
        assert_eq!(y.double_value(&[0]), 1.5);
    }

    #[test]
    fn sync_watch_counts_scalar_reads_only() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let w = SyncWatch::start();
        let y = (&x * 2.0).sum(Kind::Float);
        let _ = &y + 1.0;
        assert_eq!(w.stop(), 0);
        let w = SyncWatch::start();
        let _ = y.double_value(&[]);
        let _ = x.gt(1.5).nonzero();
        assert_eq!(w.stop(), 2);
    }

    #[test]
    fn autocast_runs_matmul_in_bf16_and_restores_state() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let out = autocast(Precision::Bf16, Device::Cpu, || {
            assert!(autocast_enabled(Device::Cpu));
            a.matmul(&a)
        })
        .unwrap();
        assert_eq!(out.kind(), Kind::BFloat16);
        assert!(!autocast_enabled(Device::Cpu));
        let out = autocast(Precision::Fp32, Device::Cpu, || a.matmul(&a)).unwrap();
        assert_eq!(out.kind(), Kind::Float);
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert!(Precision::parse("fp8")
            .unwrap_err()
            .to_string()
            .contains("fp8"));
    }

    #[test]
    fn channels_last_keeps_values() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let c = to_channels_last(&t).unwrap();
        assert!(is_channels_last(&c) && !is_channels_last(&t));
        assert!(c.equal(&t));
        let v = vec![t.shallow_clone()];
        vars_to_channels_last(&v).unwrap();
        assert!(is_channels_last(&t));
    }

    #[test]
    fn fused_sgd_matches_the_formula_and_checks_lengths() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let g = Tensor::from_slice(&[0.5f32, 0.5]);
        let b = p.zeros_like();
        fused_sgd(
            &[p.shallow_clone()],
            &[g.shallow_clone()],
            &[b.shallow_clone()],
            0.1,
            0.9,
            0.5,
            0.0,
            false,
            true,
        )
        .unwrap();
        // d = g + 0.1 p = [0.6, 0.3]; first step: b = d; p -= 0.5 d.
        let got = Vec::<f32>::try_from(&p).unwrap();
        assert!(
            (got[0] - 0.7).abs() < 1e-6 && (got[1] + 2.15).abs() < 1e-6,
            "{got:?}"
        );
        assert!(fused_sgd(&[p], &[], &[b], 0.0, 0.9, 0.1, 0.0, false, false).is_err());
    }
}
