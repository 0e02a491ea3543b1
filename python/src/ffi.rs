//! The few pieces of CPython's buffer protocol that the stable ABI only
//! names from Python 3.11 on.
//!
//! The wheel targets the stable ABI of Python 3.9 (`abi3-py39`), where
//! PyO3 offers neither `__getbuffer__` nor `PyBuffer`. The protocol itself
//! is older than that: `Py_buffer` has had this layout since Python 3.3,
//! `PyObject_GetBuffer`, `PyBuffer_Release` and `PyBuffer_FillInfo` are
//! exported by every CPython 3 (they became part of the *documented*
//! stable ABI in 3.11 with the same signatures), and `PyType_FromSpec`
//! accepts the buffer slots since 3.9 (bpo-40724). So the layout and the
//! four functions are declared here, exactly as CPython defines them.

use std::ffi::{c_char, c_int, c_void};

use pyo3::ffi::{PyObject, Py_ssize_t};
use pyo3::prelude::*;

/// CPython's `Py_buffer` (`Include/pybuffer.h`), unchanged since 3.3.
#[repr(C)]
pub(crate) struct RawBuffer {
    pub buf: *mut c_void,
    pub obj: *mut PyObject,
    pub len: Py_ssize_t,
    pub itemsize: Py_ssize_t,
    pub readonly: c_int,
    pub ndim: c_int,
    pub format: *mut c_char,
    pub shape: *mut Py_ssize_t,
    pub strides: *mut Py_ssize_t,
    pub suboffsets: *mut Py_ssize_t,
    pub internal: *mut c_void,
}

/// `PyBUF_SIMPLE`: a contiguous run of bytes.
pub(crate) const PYBUF_SIMPLE: c_int = 0;
/// `PyBUF_WRITABLE`.
pub(crate) const PYBUF_WRITABLE: c_int = 0x0001;
/// Slot number of `bf_getbuffer` in `PyType_Slot` (`Include/typeslots.h`).
pub(crate) const PY_BF_GETBUFFER: c_int = 1;
/// Slot number of `bf_releasebuffer`.
pub(crate) const PY_BF_RELEASEBUFFER: c_int = 2;

extern "C" {
    pub(crate) fn PyObject_GetBuffer(
        obj: *mut PyObject,
        view: *mut RawBuffer,
        flags: c_int,
    ) -> c_int;
    pub(crate) fn PyBuffer_Release(view: *mut RawBuffer);
    pub(crate) fn PyBuffer_FillInfo(
        view: *mut RawBuffer,
        obj: *mut PyObject,
        buf: *mut c_void,
        len: Py_ssize_t,
        readonly: c_int,
        flags: c_int,
    ) -> c_int;
}

/// A buffer acquired from a Python object, released on drop (with the
/// GIL held: every user holds a `Python` token while it lives).
pub(crate) struct Acquired {
    view: RawBuffer,
}

impl Acquired {
    /// Acquires a C-contiguous byte buffer of `obj` (`writable`: also
    /// writable), as `memoryview(obj)` would.
    pub(crate) fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Acquired> {
        let mut view = std::mem::MaybeUninit::<RawBuffer>::zeroed();
        let flags = if writable {
            PYBUF_SIMPLE | PYBUF_WRITABLE
        } else {
            PYBUF_SIMPLE
        };
        // SAFETY: `obj` is a live object (we hold the GIL through `obj`'s
        // token); `view` is writable storage of the right layout.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: GetBuffer succeeded, so it filled the struct.
        let view = unsafe { view.assume_init() };
        Ok(Acquired { view })
    }

    /// The bytes, read-only. Another thread of this process or another
    /// process may write them: callers copy them out once.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.view.buf as *const u8
    }

    /// Writable start (only for a buffer acquired with `writable`).
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.view.buf as *mut u8
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }
}

impl Drop for Acquired {
    fn drop(&mut self) {
        // SAFETY: acquired by PyObject_GetBuffer and not yet released; the
        // GIL is held (every `Acquired` lives inside a GIL-holding scope).
        unsafe { PyBuffer_Release(&mut self.view) }
    }
}
