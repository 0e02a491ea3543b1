//! Whole-file advisory locks (`flock(2)`), used for crash-safe attach
//! tracking.
//!
//! Every attached handle holds a shared lock on its own open file
//! description. The kernel drops it when the handle closes or the process
//! dies (also by SIGKILL), so "could I take an exclusive lock?" is exactly
//! "is nobody else attached?". Conversions between shared and exclusive
//! happen under the inode's lock-list spinlock for the non-blocking case,
//! so a failed upgrade leaves the caller holding nothing.

use std::os::fd::BorrowedFd;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// Takes (or converts to) a shared lock without blocking. `Ok(false)` if
/// someone holds an exclusive lock.
pub fn try_shared(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    retry(fd, FlockOperation::NonBlockingLockShared)
}

/// Takes (or converts to) an exclusive lock without blocking. `Ok(false)`
/// if anyone else holds a lock.
pub fn try_exclusive(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    retry(fd, FlockOperation::NonBlockingLockExclusive)
}

/// Releases whatever lock `fd` holds.
pub fn unlock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    retry(fd, FlockOperation::Unlock).map(|_| ())
}

fn retry(fd: BorrowedFd<'_>, op: FlockOperation) -> Result<bool, Errno> {
    loop {
        match flock(fd, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
