//! A lease: an OFD write lock on one byte of a segment's file, that lives
//! as long as the open file description holding it.
//!
//! `shmkit lock NAME -- CMD` uses it to keep flock(1)'s promise. The
//! robust mutex is released by the kernel when its *owner* dies, but the
//! command it guards is another process and may still run. So the wrapper
//! takes the lease after the mutex and lets the command inherit the
//! descriptor: the lock then belongs to an open file description that the
//! command keeps open until it exits, whoever else dies. The next locker
//! takes the mutex, then waits for the lease: it never runs while the
//! previous command does.
//!
//! Like flock(1), the lease is held as long as *any* process keeps the
//! descriptor open (the command's own children included), unless the
//! holder releases it explicitly ([`Lease`]'s drop does).
//!
//! Portability seam: OFD locks are Linux-only (see [`crate::sys::ofd_lock`]);
//! a BSD backend would use `flock` on a separately opened descriptor,
//! which is also inherited and per-description.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::segment::Segment;
use crate::sys::ofd_lock;

/// Offset of the lease byte: far beyond any segment's end (locks need no
/// backing bytes) and apart from the channels' role bytes at `2^40 + i`.
pub const LEASE_OFFSET: u64 = (1 << 40) + (1 << 20);

/// The lease on a segment, held through that handle's descriptor.
/// Dropping it releases the lease for every process sharing the
/// descriptor.
#[derive(Debug)]
pub struct Lease<'a> {
    fd: BorrowedFd<'a>,
}

impl<'a> Lease<'a> {
    /// Takes the lease of `seg` if no other open file description holds
    /// it (`Ok(None)` otherwise).
    pub fn try_acquire(seg: &'a Segment) -> Result<Option<Lease<'a>>, Errno> {
        let fd = seg.fd();
        Ok(ofd_lock::try_lock(fd, LEASE_OFFSET)?.then_some(Lease { fd }))
    }

    /// Takes the lease of `seg`, waiting while another description holds
    /// it, until `deadline` (`None`: for ever). `Ok(None)` on timeout.
    ///
    /// The wait polls (every 1 to 20 ms): a lease is waited for only after
    /// a holder went away without releasing it, which is rare.
    pub fn acquire(
        seg: &'a Segment,
        deadline: Option<Instant>,
    ) -> Result<Option<Lease<'a>>, Errno> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(l) = Lease::try_acquire(seg)? {
                return Ok(Some(l));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let nap = deadline.map_or(pause, |d| pause.min(d - now));
            std::thread::sleep(nap);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Whether a description other than `seg`'s holds the lease.
    pub fn is_held(seg: &Segment) -> Result<bool, Errno> {
        ofd_lock::is_locked(seg.fd(), LEASE_OFFSET)
    }

    /// The descriptor that holds the lease. To pass the lease on to a
    /// child process, clear its `FD_CLOEXEC` flag in the child (between
    /// fork and exec, e.g. in `CommandExt::pre_exec`): the child then
    /// shares the description, and the lease outlives this process.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let _ = ofd_lock::unlock(self.fd, LEASE_OFFSET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_excludes_other_descriptions_until_dropped() {
        let name = format!("t-lease-{}", std::process::id());
        let a = Segment::create(&name, 64).unwrap();
        let b = Segment::open(&name).unwrap();
        let la = Lease::try_acquire(&a).unwrap().expect("free");
        assert!(Lease::is_held(&b).unwrap());
        assert!(Lease::try_acquire(&b).unwrap().is_none());
        let t0 = Instant::now();
        let deadline = Some(t0 + Duration::from_millis(30));
        assert!(Lease::acquire(&b, deadline).unwrap().is_none());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        drop(la);
        assert!(!Lease::is_held(&b).unwrap());
        let lb = Lease::acquire(&b, None).unwrap().expect("free now");
        assert!(Lease::is_held(&a).unwrap());
        drop(lb);
        drop((a, b));
        crate::segment::remove(&name).unwrap();
    }
}
