//! `shmkit._shmkit.Buffer`: the object that lends shared memory to Python
//! through the buffer protocol (`memoryview(x)`, `numpy.frombuffer(x)`,
//! `numpy.ndarray(..., buffer=x)`).
//!
//! # How a view can never outlive its memory
//!
//! Every exported pointer points into a [`Shadow`]: a second mapping of
//! the same shared pages, owned by the `Buffer` object itself and unmapped
//! only when that object is freed. Python keeps the object alive for as
//! long as anything can reach the memory: a `memoryview` holds it, and a
//! numpy array holds it (or a `memoryview` of it) as its `base`. So closing
//! a segment or channel (which detaches and unmaps *its* mapping, dropping
//! its role locks at once) can never leave a dangling view: at worst a
//! stale view shows bytes that are no longer meaningful.
//!
//! # Exports are counted, as `mmap` counts them
//!
//! `bf_getbuffer`/`bf_releasebuffer` count live exports, so a owner can
//! refuse to close while views exist (segments), or hold a slot until the
//! last view of it is gone (pub/sub samples). A closed buffer refuses new
//! exports (`ValueError`), and a frozen one refuses writable exports, which
//! also stops numpy from turning `writeable` back on for an array built on
//! it.
//!
//! The type is built with `PyType_FromSpec` (not `#[pyclass]`, which has
//! no buffer slots under `abi3-py39`; see [`crate::ffi`]). Python classes
//! (`shmkit.Segment`) subclass it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::ffi::{
    PyBuffer_FillInfo, RawBuffer, PYBUF_WRITABLE, PY_BF_GETBUFFER, PY_BF_RELEASEBUFFER,
};

/// A second mapping of shared pages (Linux `mremap(old, 0, len,
/// MREMAP_MAYMOVE)` of a shared mapping maps the same pages again), so
/// that views stay valid after the original mapping is gone.
#[derive(Debug)]
pub(crate) struct Shadow {
    base: *mut u8,
    len: usize,
    /// The original mapping's start, to translate pointers.
    orig: usize,
}

// SAFETY: a plain mapping (address and length); unmapped once, in Drop.
unsafe impl Send for Shadow {}
// SAFETY: as above: no interior state.
unsafe impl Sync for Shadow {}

impl Shadow {
    /// Maps `[orig, orig + len)` (page aligned start, inside one shared
    /// mapping) a second time.
    ///
    /// # Safety
    ///
    /// `orig` must be the page-aligned start of `len` bytes of a live
    /// `MAP_SHARED` mapping.
    pub(crate) unsafe fn new(orig: *mut u8, len: usize) -> PyResult<Shadow> {
        // SAFETY: per the contract, `orig` is page aligned and shared; with
        // old_size 0 mremap leaves it alone and returns a new mapping of
        // the same pages.
        let p = unsafe { libc::mremap(orig.cast(), 0, len.max(1), libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Shadow {
            base: p.cast(),
            len,
            orig: orig as usize,
        })
    }

    /// The shadow address of `p`, a pointer into the original mapping
    /// with `n` bytes after it inside it.
    pub(crate) fn translate(&self, p: *const u8, n: usize) -> PyResult<*mut u8> {
        let off = (p as usize).wrapping_sub(self.orig);
        match off.checked_add(n) {
            Some(end) if (p as usize) >= self.orig && end <= self.len => {
                // SAFETY: off + n <= len: inside the shadow mapping.
                Ok(unsafe { self.base.add(off) })
            }
            _ => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "shmkit: a view lies outside its segment (internal error)",
            )),
        }
    }

    /// Start of the shadow mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // SAFETY: mapped by `new`, unmapped only here.
        unsafe { libc::munmap(self.base.cast(), self.len.max(1)) };
    }
}

/// What a `Buffer` lends and who keeps it alive. Only touched with the GIL
/// held (buffer slots, dealloc and our functions all run under it).
pub(crate) struct Inner {
    ptr: *mut u8,
    len: usize,
    /// Writable exports allowed (cleared by [`freeze`]).
    writable: Cell<bool>,
    /// New exports allowed (cleared by [`close`]).
    open: Cell<bool>,
    /// Exports not yet released.
    exports: Cell<usize>,
    /// Drop `payload` as soon as `exports` reaches 0.
    finish_when_idle: Cell<bool>,
    /// What the view stands for (a pub/sub loan or sample: holding it holds
    /// the slot). Dropped when finished, or with the object.
    payload: RefCell<Option<Box<dyn Any>>>,
    /// Keeps `[ptr, ptr + len)` mapped; dropped with the object only.
    _keep: Box<dyn Any>,
}

impl Inner {
    /// A buffer over `len` bytes at `ptr`, which `keep` keeps mapped.
    pub(crate) fn new(
        ptr: *mut u8,
        len: usize,
        writable: bool,
        payload: Option<Box<dyn Any>>,
        keep: Box<dyn Any>,
    ) -> Inner {
        Inner {
            ptr,
            len,
            writable: Cell::new(writable),
            open: Cell::new(true),
            exports: Cell::new(0),
            finish_when_idle: Cell::new(false),
            payload: RefCell::new(payload),
            _keep: keep,
        }
    }

    /// Live exports.
    pub(crate) fn exports(&self) -> usize {
        self.exports.get()
    }

    /// Refuses new exports from now on.
    pub(crate) fn close(&self) {
        self.open.set(false);
    }

    /// Refuses writable exports from now on.
    pub(crate) fn freeze(&self) {
        self.writable.set(false);
    }

    /// Takes the payload out (to publish a loan).
    pub(crate) fn take_payload(&self) -> Option<Box<dyn Any>> {
        self.payload.borrow_mut().take()
    }

    /// Takes the payload out if it is a `T` that `accept` accepts.
    pub(crate) fn take_payload_if<T: 'static>(
        &self,
        accept: impl FnOnce(&T) -> bool,
    ) -> Option<Box<T>> {
        let mut p = self.payload.borrow_mut();
        match p.as_ref().and_then(|b| b.downcast_ref::<T>()) {
            Some(t) if accept(t) => p.take().and_then(|b| b.downcast::<T>().ok()),
            _ => None,
        }
    }

    /// Drops the payload once no export is left (now, if none is).
    /// Returns whether it is gone now.
    pub(crate) fn finish_when_idle(&self) -> bool {
        self.open.set(false);
        if self.exports.get() == 0 {
            drop(self.take_payload());
            true
        } else {
            self.finish_when_idle.set(true);
            false
        }
    }

    /// Whether the payload is still held.
    pub(crate) fn holds_payload(&self) -> bool {
        self.payload.borrow().is_some()
    }
}

/// The object layout: a Python object header and our state.
#[repr(C)]
struct BufferObject {
    ob_base: ffi::PyObject,
    /// Null until bound; owned (a leaked `Box`), freed in dealloc.
    inner: *mut Inner,
}

static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

unsafe fn set_error(exc: *mut ffi::PyObject, msg: &std::ffi::CStr) {
    // SAFETY: the GIL is held by our caller (a type slot); `exc` is an
    // exception type, `msg` a C string.
    unsafe { ffi::PyErr_SetString(exc, msg.as_ptr()) }
}

unsafe extern "C" fn getbuffer(
    obj: *mut ffi::PyObject,
    view: *mut RawBuffer,
    flags: c_int,
) -> c_int {
    // SAFETY: CPython calls this slot with the GIL held on an instance of
    // our type (or a subclass), whose layout starts with `BufferObject`.
    let inner = unsafe { (*obj.cast::<BufferObject>()).inner };
    if view.is_null() {
        // SAFETY: GIL held (slot).
        unsafe { set_error(ffi::PyExc_BufferError, c"shmkit: NULL view") };
        return -1;
    }
    // SAFETY: `inner` is null or a live Box we own (freed only in dealloc,
    // which cannot run while CPython calls a slot on the object).
    let inner = match unsafe { inner.as_ref() } {
        Some(i) if i.open.get() => i,
        _ => {
            // SAFETY: `view` is non-null; GIL held (slot).
            unsafe {
                (*view).obj = ptr::null_mut();
                set_error(
                    ffi::PyExc_ValueError,
                    c"shmkit: this shared memory view is closed or released",
                );
            }
            return -1;
        }
    };
    let writable = inner.writable.get();
    if flags & PYBUF_WRITABLE != 0 && !writable {
        // SAFETY: as above.
        unsafe {
            (*view).obj = ptr::null_mut();
            set_error(
                ffi::PyExc_BufferError,
                c"shmkit: this shared memory view is read-only",
            );
        }
        return -1;
    }
    // SAFETY: `view` is the caller's storage; `obj` is live; `ptr` is
    // `len` bytes mapped for as long as `obj` lives (`_keep`). FillInfo
    // takes a new reference to `obj`, released by PyBuffer_Release.
    let rc = unsafe {
        PyBuffer_FillInfo(
            view,
            obj,
            inner.ptr.cast::<c_void>(),
            inner.len as ffi::Py_ssize_t,
            c_int::from(!writable),
            flags,
        )
    };
    if rc == 0 {
        inner.exports.set(inner.exports.get() + 1);
    }
    rc
}

unsafe extern "C" fn releasebuffer(obj: *mut ffi::PyObject, _view: *mut RawBuffer) {
    // SAFETY: as in `getbuffer`; an export exists, so `inner` is bound.
    let inner = unsafe { (*obj.cast::<BufferObject>()).inner };
    // SAFETY: see `getbuffer`.
    if let Some(inner) = unsafe { inner.as_ref() } {
        let n = inner.exports.get().saturating_sub(1);
        inner.exports.set(n);
        if n == 0 && inner.finish_when_idle.get() {
            drop(inner.take_payload());
        }
    }
}

unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls dealloc once, with the GIL held, when the last
    // reference goes; no export is alive then (each holds a reference).
    unsafe {
        let b = obj.cast::<BufferObject>();
        let inner = std::mem::replace(&mut (*b).inner, ptr::null_mut());
        if !inner.is_null() {
            let inner = Box::from_raw(inner);
            // The payload (which may borrow an endpoint) goes before the
            // mapping it points into.
            drop(inner.take_payload());
            drop(inner);
        }
        let tp = ffi::Py_TYPE(obj);
        let free = ffi::PyType_GetSlot(tp, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute(free);
            free(obj.cast());
        }
        // Instances of heap types own a reference to their type (the
        // subclass's dealloc leaves that decref to the heap base: us).
        ffi::Py_DECREF(tp.cast());
    }
}

/// Creates the type (once per process).
pub(crate) fn buffer_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let t = TYPE.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let mut slots = [
            ffi::PyType_Slot {
                slot: PY_BF_GETBUFFER,
                pfunc: getbuffer as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: PY_BF_RELEASEBUFFER,
                pfunc: releasebuffer as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_dealloc,
                pfunc: dealloc as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_doc,
                pfunc: c"Shared memory lent through the buffer protocol.".as_ptr() as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: 0,
                pfunc: ptr::null_mut(),
            },
        ];
        let mut spec = ffi::PyType_Spec {
            name: c"shmkit._shmkit.Buffer".as_ptr(),
            basicsize: std::mem::size_of::<BufferObject>() as c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE) as _,
            slots: slots.as_mut_ptr(),
        };
        // SAFETY: GIL held; the spec and slots are valid for the call
        // (CPython copies what it needs; the doc and name are 'static).
        let t = unsafe { ffi::PyType_FromSpec(&mut spec) };
        if t.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: a new reference to a type object.
        let t = unsafe { Bound::from_owned_ptr(py, t) };
        Ok(t.cast_into::<PyType>()?.unbind())
    })?;
    Ok(t.bind(py))
}

/// The state of a bound `Buffer` (or subclass) instance.
pub(crate) fn inner_of<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a Inner> {
    let t = buffer_type(obj.py())?;
    if !obj.is_instance(t)? {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "expected a shmkit buffer object",
        ));
    }
    // SAFETY: an instance of our type: the layout starts with
    // BufferObject; `inner` is null or a live Box freed only in dealloc,
    // which cannot run while `obj` (a strong reference) lives.
    let inner = unsafe { (*obj.as_ptr().cast::<BufferObject>()).inner.as_ref() };
    inner.ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err("shmkit: object is not bound to shared memory")
    })
}

/// Binds an unbound instance (of `Buffer` or a subclass) to `inner`.
pub(crate) fn bind(obj: &Bound<'_, PyAny>, inner: Inner) -> PyResult<()> {
    let t = buffer_type(obj.py())?;
    if !obj.is_instance(t)? {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "expected a shmkit buffer object",
        ));
    }
    let b = obj.as_ptr().cast::<BufferObject>();
    // SAFETY: instance of our type (checked); GIL held.
    unsafe {
        if !(*b).inner.is_null() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "shmkit: object is already bound",
            ));
        }
        (*b).inner = Box::into_raw(Box::new(inner));
    }
    Ok(())
}

/// A new `Buffer` bound to `inner`.
pub(crate) fn new_buffer(py: Python<'_>, inner: Inner) -> PyResult<Bound<'_, PyAny>> {
    let t = buffer_type(py)?;
    // SAFETY: GIL held; allocating an instance of a ready heap type (it
    // takes a reference to the type, released in dealloc). Memory is
    // zeroed, so `inner` starts null.
    let obj = unsafe { ffi::PyType_GenericAlloc(t.as_ptr().cast(), 0) };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference.
    let obj = unsafe { Bound::from_owned_ptr(py, obj) };
    bind(&obj, inner)?;
    Ok(obj)
}
