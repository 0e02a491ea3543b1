//! Segments: create, open, map, detach, remove.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use shmkit::segment::{self, Lifetime, Segment};

use crate::{call, clear, cstr, put, shmkit_status, Error, Registry};

/// An attached shared memory segment (opaque).
pub struct shmkit_segment {
    _opaque: [u8; 0],
}

/// When a segment is deleted without an explicit remove.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum shmkit_lifetime {
    /// Lives until shmkit_segment_remove or _remove_when_unused.
    SHMKIT_PERSISTENT = 0,
    /// Deleted when the last attached process detaches or dies.
    SHMKIT_UNTIL_LAST_DETACH = 1,
}

pub(crate) static SEGMENTS: Registry<Segment> = Registry::new("segment handle");

fn lifetime_of(v: c_int) -> Result<Lifetime, Error> {
    match v {
        0 => Ok(Lifetime::Persistent),
        1 => Ok(Lifetime::UntilLastDetach),
        v => Err(Error::new(
            shmkit_status::SHMKIT_EINVAL,
            format!("lifetime {v}: expected SHMKIT_PERSISTENT or SHMKIT_UNTIL_LAST_DETACH"),
        )),
    }
}

/// Creates segment `name` with a data area of `size` bytes (zero-filled),
/// permission bits `mode` (e.g. 0600) and `lifetime` (a shmkit_lifetime),
/// and attaches to it. SHMKIT_EEXIST if the name is taken.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_create(
    name: *const c_char,
    size: u64,
    mode: u32,
    lifetime: c_int,
    out: *mut *mut shmkit_segment,
) -> c_int {
    call(|| {
        // SAFETY: `out` per the contract.
        unsafe { clear(out) };
        // SAFETY: `name` per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let seg = Segment::builder(name)
            .size(size)
            .mode(mode)
            .lifetime(lifetime_of(lifetime)?)
            .create()?;
        // SAFETY: `out` per the contract.
        unsafe { put("out", out, SEGMENTS.insert(seg)) }
    })
}

/// Attaches to the existing segment `name` (read-write).
/// SHMKIT_ENOENT if there is none.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_open(
    name: *const c_char,
    out: *mut *mut shmkit_segment,
) -> c_int {
    call(|| {
        // SAFETY: `out` per the contract.
        unsafe { clear(out) };
        // SAFETY: `name` per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let seg = Segment::open(name)?;
        // SAFETY: `out` per the contract.
        unsafe { put("out", out, SEGMENTS.insert(seg)) }
    })
}

/// Opens segment `name`, creating it as in shmkit_segment_create if it
/// does not exist (race-free: exactly one caller creates). An existing
/// segment must have a data area of `size` bytes. `*created` (if not
/// NULL) is set to 1 if this call created it, else 0.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write;
/// `created` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_open_or_create(
    name: *const c_char,
    size: u64,
    mode: u32,
    lifetime: c_int,
    out: *mut *mut shmkit_segment,
    created: *mut c_int,
) -> c_int {
    call(|| {
        // SAFETY: `out` per the contract.
        unsafe { clear(out) };
        // SAFETY: `name` per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let seg = Segment::builder(name)
            .size(size)
            .mode(mode)
            .lifetime(lifetime_of(lifetime)?)
            .open_or_create()?;
        if !created.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { created.write(c_int::from(seg.created())) };
        }
        // SAFETY: `out` per the contract.
        unsafe { put("out", out, SEGMENTS.insert(seg)) }
    })
}

/// The start of the data area, valid for shmkit_segment_len() bytes until
/// the handle is closed. NULL (with shmkit_last_error set) for an invalid
/// handle. Other processes may write it at any time: synchronise (e.g.
/// with a shmkit_mutex) and validate what you read.
#[no_mangle]
pub extern "C" fn shmkit_segment_ptr(seg: *const shmkit_segment) -> *mut c_void {
    let mut p = std::ptr::null_mut();
    call(|| {
        p = SEGMENTS.get(seg)?.as_ptr().cast();
        Ok(())
    });
    p
}

/// The size of the data area in bytes; 0 for an invalid handle.
#[no_mangle]
pub extern "C" fn shmkit_segment_len(seg: *const shmkit_segment) -> usize {
    let mut n = 0;
    call(|| {
        n = SEGMENTS.get(seg)?.len();
        Ok(())
    });
    n
}

/// The segment's lifetime (a shmkit_lifetime value), or a negative status.
#[no_mangle]
pub extern "C" fn shmkit_segment_lifetime(seg: *const shmkit_segment) -> c_int {
    let mut v = 0;
    let r = call(|| {
        v = match SEGMENTS.get(seg)?.lifetime() {
            Lifetime::Persistent => shmkit_lifetime::SHMKIT_PERSISTENT,
            Lifetime::UntilLastDetach => shmkit_lifetime::SHMKIT_UNTIL_LAST_DETACH,
        } as c_int;
        Ok(())
    });
    if r < 0 {
        r
    } else {
        v
    }
}

/// Stores in `*count` the number of live processes attached to the
/// segment (this one included).
///
/// # Safety
///
/// `count` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_attached(
    seg: *const shmkit_segment,
    count: *mut usize,
) -> c_int {
    call(|| {
        let s = SEGMENTS.get(seg)?;
        // SAFETY: `count` per the contract.
        unsafe { put("count", count, s.attached_pids().len()) }
    })
}

fn detach(seg: *const shmkit_segment) -> Result<bool, Error> {
    let s = SEGMENTS.remove(seg)?;
    match Arc::try_unwrap(s) {
        Ok(s) => Ok(s.detach()?),
        // A call on another thread still uses it: it detaches when that
        // call returns.
        Err(_) => Ok(false),
    }
}

/// Detaches and closes the handle. If the segment was due for deletion
/// (SHMKIT_UNTIL_LAST_DETACH or remove_when_unused) and this was the last
/// attachment, the segment is deleted and `*removed` (if not NULL) is 1.
/// The pointer from shmkit_segment_ptr is invalid afterwards.
///
/// # Safety
///
/// `removed` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_detach(
    seg: *mut shmkit_segment,
    removed: *mut c_int,
) -> c_int {
    call(|| {
        let r = detach(seg)?;
        if !removed.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { removed.write(c_int::from(r)) };
        }
        Ok(())
    })
}

/// Closes the handle: shmkit_segment_detach(seg, NULL).
#[no_mangle]
pub extern "C" fn shmkit_segment_close(seg: *mut shmkit_segment) -> c_int {
    call(|| detach(seg).map(drop))
}

/// Removes the name `name` now; the memory is freed when the last process
/// unmaps it (POSIX semantics). SHMKIT_ENOENT if there is none.
///
/// # Safety
///
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_remove(name: *const c_char) -> c_int {
    call(|| {
        // SAFETY: `name` per the contract.
        let name = unsafe { cstr("name", name) }?;
        Ok(segment::remove(name)?)
    })
}

/// Marks segment `name` for removal when no process is attached any more
/// (System V IPC_RMID semantics); new opens fail with SHMKIT_EREMOVED.
/// `*removed_now` (if not NULL) is 1 if nobody was attached and it is
/// already gone.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `removed_now` is NULL or valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_segment_remove_when_unused(
    name: *const c_char,
    removed_now: *mut c_int,
) -> c_int {
    call(|| {
        // SAFETY: `name` per the contract.
        let name = unsafe { cstr("name", name) }?;
        let r = segment::remove_when_unused(name)?;
        if !removed_now.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { removed_now.write(c_int::from(r)) };
        }
        Ok(())
    })
}
