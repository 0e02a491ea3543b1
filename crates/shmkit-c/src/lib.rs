//! The C ABI of shmkit: `libshmkit.so` / `libshmkit.a` and
//! `include/shmkit.h` (generated from this crate by cbindgen).
//!
//! Every exported function:
//!
//! - runs inside `call`: a panic is caught and becomes
//!   `SHMKIT_EPANIC`, never an unwind into C;
//! - validates its pointers (NULL is `SHMKIT_EINVAL`) and looks its handle
//!   up in a `Registry`: a handle is an opaque number, not an address,
//!   so a closed, forged or wrong-type handle is `SHMKIT_EBADHANDLE`;
//! - returns 0 or a negative [`shmkit_status`], and stores the message of
//!   the failure for [`shmkit_last_error`].
#![allow(non_camel_case_types)]

mod error;
mod pubsub;
mod registry;
mod ring;
mod segment;
mod sync;

use std::ffi::{c_char, c_int};

pub use error::shmkit_status;
pub use pubsub::*;
pub use ring::*;
pub use segment::*;
pub use sync::*;

pub(crate) use error::{call, Error};
pub(crate) use registry::Registry;

/// Major version of the library (and of this header).
pub const SHMKIT_VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const SHMKIT_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const SHMKIT_VERSION_PATCH: u32 = 0;

/// A timeout that never expires.
pub const SHMKIT_FOREVER: u64 = u64::MAX;

/// The version of the library that is linked, "MAJOR.MINOR.PATCH"
/// (compare with the SHMKIT_VERSION macro of the header you compiled
/// against). Static string; never NULL.
#[no_mangle]
pub extern "C" fn shmkit_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed shmkit call on this thread (empty if
/// none failed yet). Valid until the next shmkit call on this thread;
/// never NULL.
#[no_mangle]
pub extern "C" fn shmkit_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// A static description of a status code ("invalid argument", ...);
/// never NULL.
#[no_mangle]
pub extern "C" fn shmkit_strerror(status: c_int) -> *const c_char {
    error::describe(status).as_ptr().cast()
}

/// Turns a timeout in nanoseconds into a channel wait.
pub(crate) fn wait_of(timeout_ns: u64) -> shmkit::channel::Wait {
    use shmkit::channel::Wait;
    match timeout_ns {
        SHMKIT_FOREVER => Wait::Forever,
        0 => Wait::No,
        ns => Wait::timeout(std::time::Duration::from_nanos(ns)),
    }
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn cstr<'a>(what: &str, p: *const c_char) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the contract.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Error::new(shmkit_status::SHMKIT_EINVAL, format!("{what}: not UTF-8")))
}

/// Stores `v` in the out-parameter `p`.
///
/// # Safety
///
/// `p` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(what: &str, p: *mut T, v: T) -> Result<(), Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and writable by the contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Clears an out-parameter handle before the call can fail, so the caller
/// never sees a stale value.
///
/// # Safety
///
/// `p` is NULL or valid for a write of a pointer.
pub(crate) unsafe fn clear<T>(p: *mut *mut T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable by the contract.
        unsafe { p.write(std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last() -> String {
        // SAFETY: shmkit_last_error never returns NULL and the string
        // lives until the next call on this thread.
        unsafe { CStr::from_ptr(shmkit_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_not_an_unwind() {
        let r = call(|| panic!("boom {}", 42));
        assert_eq!(r, shmkit_status::SHMKIT_EPANIC as std::ffi::c_int);
        assert_eq!(last(), "internal error (panic): boom 42");
        let r = call(|| Err(Error::new(shmkit_status::SHMKIT_EBUSY, "busy\0cut")));
        assert_eq!(r, shmkit_status::SHMKIT_EBUSY as std::ffi::c_int);
        assert_eq!(last(), "busy", "an interior NUL ends the message");
        assert_eq!(call(|| Ok(())), 0);
        assert_eq!(last(), "busy", "success leaves the last error alone");
    }

    #[test]
    fn wait_of_maps_the_special_timeouts() {
        use shmkit::channel::Wait;
        assert_eq!(wait_of(SHMKIT_FOREVER), Wait::Forever);
        assert_eq!(wait_of(0), Wait::No);
        assert!(matches!(wait_of(1), Wait::Until(_)));
    }

    #[test]
    fn version_constants_match_the_package() {
        let v = format!(
            "{}.{}.{}",
            super::SHMKIT_VERSION_MAJOR,
            super::SHMKIT_VERSION_MINOR,
            super::SHMKIT_VERSION_PATCH
        );
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        let toml = include_str!("../cbindgen.toml");
        assert!(toml.contains(&format!("#define SHMKIT_VERSION \"{v}\"")));
    }
}
