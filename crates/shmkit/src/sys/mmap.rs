//! Shared mappings of segment files.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// A `MAP_SHARED` mapping, unmapped on drop.
///
/// Invariant: `ptr` is the start of a live mapping of exactly `len` bytes
/// (page aligned, `len > 0`) that this value owns.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory; moving the owner to another thread
// does not change who may unmap it (only the owner, on drop).
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only exposes the base pointer and the length; every
// access to the bytes goes through raw pointers whose users document their
// own synchronisation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared, readable and, if
    /// `writable`, writable.
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<Mapping, Errno> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY:
        // - a null hint lets the kernel choose an unused range, so no
        //   existing Rust object is overlapped or invalidated;
        // - the result is owned by the returned `Mapping` and unmapped once.
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(Mapping { ptr, len })
    }

    /// First byte of the mapping (page aligned).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Mappings unmapped so far by this process (see [`unmaps`]).
static UNMAPS: AtomicU64 = AtomicU64::new(0);

/// How many [`Mapping`]s this process has unmapped. While it is unchanged,
/// an address inside a mapping seen earlier still maps the same object (the
/// async waiter threads rely on it to keep a futex word across futures).
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn unmaps() -> u64 {
    // SeqCst: pairs with the increment in `drop`, which precedes the
    // munmap (and so any new mapping at the same address).
    UNMAPS.load(Ordering::SeqCst)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SeqCst, before the munmap: see `unmaps`.
        UNMAPS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: by the type invariant `ptr`/`len` describe a mapping this
        // value owns; after drop nobody can reach it through `self`.
        // Borrowers (`&Segment` users) cannot outlive the owner.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
