//! Handle tables: a C handle is an opaque number that names an entry here,
//! never the address of a Rust object. Looking up a handle that was
//! closed, never issued, or issued for another type fails cleanly, and an
//! object stays alive (`Arc`) while a call on it is in flight even if
//! another thread closes the handle meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{shmkit_status, Error};

/// Handle numbers: one sequence for every type (so a handle of one type is
/// never valid as another), never reused, multiples of 16 so they look
/// like aligned pointers to tools, starting far from NULL.
static NEXT: AtomicUsize = AtomicUsize::new(0x5000);

/// The open handles of one type `T`. `H` is the opaque C type.
pub(crate) struct Registry<T> {
    map: Mutex<BTreeMap<usize, Arc<T>>>,
    what: &'static str,
}

impl<T> Registry<T> {
    pub(crate) const fn new(what: &'static str) -> Registry<T> {
        Registry {
            map: Mutex::new(BTreeMap::new()),
            what,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<usize, Arc<T>>> {
        // A panic while the table was locked cannot leave it half-updated
        // (single insert/remove/clone calls): ignore the poison.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `v` and returns its new handle.
    pub(crate) fn insert<H>(&self, v: T) -> *mut H {
        // Relaxed: only uniqueness matters, which the RMW gives.
        let id = NEXT.fetch_add(16, Ordering::Relaxed);
        self.table().insert(id, Arc::new(v));
        // Handles are numbers dressed as pointers (never dereferenced).
        std::ptr::without_provenance_mut(id)
    }

    fn key<H>(&self, h: *const H) -> Result<usize, Error> {
        if h.is_null() {
            return Err(Error::null(self.what));
        }
        Ok(h as usize)
    }

    fn bad(&self) -> Error {
        Error::new(
            shmkit_status::SHMKIT_EBADHANDLE,
            format!("{}: not an open handle of this type", self.what),
        )
    }

    /// The object behind `h`.
    pub(crate) fn get<H>(&self, h: *const H) -> Result<Arc<T>, Error> {
        let k = self.key(h)?;
        self.table().get(&k).cloned().ok_or_else(|| self.bad())
    }

    /// Unregisters `h`; the object is dropped when the last in-flight call
    /// on it returns.
    pub(crate) fn remove<H>(&self, h: *const H) -> Result<Arc<T>, Error> {
        let k = self.key(h)?;
        self.table().remove(&k).ok_or_else(|| self.bad())
    }
}
