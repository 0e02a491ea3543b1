//! Open-file-description byte-range locks (`fcntl(F_OFD_SETLK)`), used for
//! per-role liveness in channels.
//!
//! Each channel role (ring producer, ring consumer, publisher, subscriber
//! slot *i*) holds a write lock on one byte of the segment's file, at an
//! offset chosen by the channel (beyond the end of the file is fine). The
//! kernel drops the lock when the open file description is closed or the
//! process dies, SIGKILL included, so "is this byte locked?" answers "is
//! this role's holder alive?" with no pid-reuse race.
//!
//! OFD locks belong to the open file description, not to the process:
//! two handles opened separately in one process conflict with each other
//! (which is what lets a test run both roles in one process), while a
//! lock query through the *same* description never sees its own locks.
//! They are independent of the whole-file `flock` the segment layer uses
//! for attach tracking (Linux keeps the two lock families apart).
//!
//! Portability seam: macOS has no OFD locks (classic `F_SETLK` locks are
//! per process and vanish on any close); a second backend would use a
//! lock file per role or `flock` on a separately opened descriptor.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

fn flock_struct(kind: libc::c_short, offset: u64) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all
    // zero bytes is a valid value (and what the kernel requires of l_pid
    // for OFD requests).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0;
    fl
}

fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &mut libc::flock) -> Result<(), Errno> {
    loop {
        // SAFETY: `fd` is a valid open descriptor for the duration of the
        // borrow; `fl` points to a live, initialised `struct flock` that
        // the kernel reads (and for GETLK writes) and does not retain.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if r == 0 {
            return Ok(());
        }
        match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        {
            Errno::INTR => continue,
            e => return Err(e),
        }
    }
}

/// Tries to take a write lock on the byte at `offset` without blocking.
/// `Ok(false)` if another open file description holds a lock on it.
/// Taking a lock this description already holds succeeds.
pub fn try_lock(fd: BorrowedFd<'_>, offset: u64) -> Result<bool, Errno> {
    let mut fl = flock_struct(libc::F_WRLCK as libc::c_short, offset);
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(Errno::AGAIN) | Err(Errno::ACCESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases this description's lock on the byte at `offset` (a no-op if
/// it holds none).
pub fn unlock(fd: BorrowedFd<'_>, offset: u64) -> Result<(), Errno> {
    let mut fl = flock_struct(libc::F_UNLCK as libc::c_short, offset);
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Whether another open file description holds a lock on the byte at
/// `offset` (locks held through `fd` itself are not reported).
pub fn is_locked(fd: BorrowedFd<'_>, offset: u64) -> Result<bool, Errno> {
    #[cfg(test)]
    QUERIES.with(|q| q.set(q.get() + 1));
    let mut fl = flock_struct(libc::F_WRLCK as libc::c_short, offset);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
thread_local! {
    /// Lock queries made by this thread (tests count system calls).
    pub(crate) static QUERIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
