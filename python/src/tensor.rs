//! `torch.Tensor` to and from the library's tensors without copies, through DLPack: PyTorch
//! exports a tensor as a `"dltensor"` capsule (`torch.utils.dlpack.to_dlpack`), the library
//! imports the managed tensor it holds, and the reverse way round for results. Only libtorch's
//! own DLPack converters are involved, so the extension needs nothing of `libtorch_python`.

use crate::py_err;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use rustworthy::accel;
use rustworthy::tch::Tensor;
use std::ffi::{c_void, CStr};

const LIVE: &CStr = c"dltensor";
const USED: &CStr = c"used_dltensor";

/// A tensor crossing the boundary; its memory is shared with the PyTorch tensor on the other
/// side. Tensors coming in are detached from PyTorch's autograd graph.
pub struct PyTensor(pub Tensor);

fn dlpack<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("torch.utils.dlpack")?.getattr(name)
}

impl<'py> FromPyObject<'py> for PyTensor {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = ob.py();
        let tensor_type = py.import("torch")?.getattr("Tensor")?;
        if !ob.is_instance(&tensor_type)? {
            return Err(PyTypeError::new_err(format!(
                "expected a torch.Tensor, got {}",
                ob.get_type().name()?
            )));
        }
        // DLPack has no conjugate or negative bits and no autograd: resolve and detach first.
        let t = ob
            .call_method0("detach")?
            .call_method0("resolve_conj")?
            .call_method0("resolve_neg")?;
        let capsule = dlpack(py, "to_dlpack")?.call1((t,))?;
        let capsule = capsule.downcast::<PyCapsule>()?;
        // SAFETY: `capsule` is a live capsule; a wrong name returns null with an exception set.
        let m = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), LIVE.as_ptr()) };
        if m.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `m` is the capsule's unconsumed managed tensor.
        let tensor = unsafe { accel::from_dlpack(m) }.map_err(py_err)?;
        // The tensor owns `m` now: mark the capsule consumed so that its destructor skips it.
        // SAFETY: renaming a live capsule to a static name.
        if unsafe { ffi::PyCapsule_SetName(capsule.as_ptr(), USED.as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(PyTensor(tensor))
    }
}

/// Frees the managed tensor of a capsule that PyTorch never consumed.
unsafe extern "C" fn release_unconsumed(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed; `PyCapsule_IsValid` sets no
    // exception, and a consumed capsule was renamed so it is skipped here.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, LIVE.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, LIVE.as_ptr());
            accel::dlpack_release(m);
        }
    }
}

impl<'py> IntoPyObject<'py> for PyTensor {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m: *mut c_void = accel::to_dlpack(&self.0).map_err(py_err)?;
        // SAFETY: `m` is a fresh managed tensor; the capsule takes it, and its destructor frees
        // it unless PyTorch consumes (and renames) it.
        let raw = unsafe { ffi::PyCapsule_New(m, LIVE.as_ptr(), Some(release_unconsumed)) };
        if raw.is_null() {
            // SAFETY: no capsule took `m`.
            unsafe { accel::dlpack_release(m) };
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `raw` is a new reference.
        let capsule = unsafe { Bound::from_owned_ptr(py, raw) };
        dlpack(py, "from_dlpack")?.call1((capsule,))
    }
}
