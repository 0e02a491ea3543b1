//! Role ownership and peer liveness.
//!
//! Each role of a channel (ring producer, ring consumer, publisher,
//! subscriber slot *i*) is a byte of the segment's file, far beyond its
//! end (`ROLE_BASE` + role number), plus a state word in shared memory.
//! The process that plays the role holds an OFD write lock on that byte
//! (see [`crate::sys::ofd_lock`]): the kernel drops it when the process
//! dies, SIGKILL included, and a lock query tells the other side whether
//! the role's holder is alive without pids (so no pid-reuse race).
//!
//! The state word distinguishes the cases a lock alone cannot:
//!
//! | state | lock held | meaning |
//! |---|---|---|
//! | `NEVER` | – | nobody has played the role yet |
//! | `ATTACHED` | yes | alive |
//! | `ATTACHED` | no | died without closing |
//! | `CLOSED` | – | closed cleanly (dropped) |
//!
//! Claiming takes the lock first and then stores `ATTACHED`; closing
//! stores `CLOSED` first and then unlocks. A checker that finds the lock
//! free re-reads the state after its (serialising) lock query, so a clean
//! close is never mistaken for a death.

use std::cell::Cell;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::OpenError;
use crate::primitive::{AtomicU32, Ordering};
use crate::sys::ofd_lock;

/// Nobody has played the role yet.
pub(crate) const NEVER: u32 = 0;
/// A process plays the role (if it still holds the role's lock).
pub(crate) const ATTACHED: u32 = 1;
/// The last holder closed the role cleanly.
pub(crate) const CLOSED: u32 = 2;

/// Offset of role 0's lock byte: far beyond any segment's end, so it never
/// overlaps data (locks need no backing bytes).
pub(crate) const ROLE_BASE: u64 = 1 << 40;

/// What the other side of a channel is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No process has taken the role yet.
    NotYet,
    /// A live process holds the role.
    Alive,
    /// The last holder closed it cleanly.
    Closed,
    /// The last holder died without closing (killed, crashed).
    Dead,
}

/// Takes role `role` (called `what` in errors) of the channel `name`:
/// [`OpenError::RoleTaken`] if a live process holds it.
pub(crate) fn claim(
    fd: BorrowedFd<'_>,
    state: &AtomicU32,
    role: u64,
    name: &str,
    what: &'static str,
) -> Result<(), OpenError> {
    match claim_then(fd, state, role, || ()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(OpenError::RoleTaken {
            name: name.to_owned(),
            role: what,
        }),
        Err(source) => Err(OpenError::Io {
            name: name.to_owned(),
            source,
        }),
    }
}

/// As [`claim`], running `setup` after the lock is held and before the
/// role is published as `ATTACHED` (so `ATTACHED` means "set up").
pub(crate) fn claim_then(
    fd: BorrowedFd<'_>,
    state: &AtomicU32,
    role: u64,
    setup: impl FnOnce(),
) -> std::io::Result<bool> {
    if !ofd_lock::try_lock(fd, ROLE_BASE + role)? {
        return Ok(false);
    }
    setup();
    // SeqCst: published after the lock is held (see module docs); pairs
    // with the loads in `status`.
    state.store(ATTACHED, Ordering::SeqCst);
    Ok(true)
}

/// Gives role `role` up cleanly.
pub(crate) fn close(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) {
    // SeqCst: visible before the unlock below, so `status` reads CLOSED
    // once it sees the lock free.
    state.store(CLOSED, Ordering::SeqCst);
    let _ = ofd_lock::unlock(fd, ROLE_BASE + role);
}

/// The state of role `role`, as seen through `fd` (which must not be the
/// description that holds the role).
pub(crate) fn status(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) -> PeerState {
    // SeqCst: pairs with the stores in `claim` and `close`.
    match state.load(Ordering::SeqCst) {
        NEVER => return PeerState::NotYet,
        CLOSED => return PeerState::Closed,
        _ => {}
    }
    match ofd_lock::is_locked(fd, ROLE_BASE + role) {
        Ok(true) => PeerState::Alive,
        // An error from the query is not evidence of death.
        Err(_) => PeerState::Alive,
        Ok(false) => match state.load(Ordering::SeqCst) {
            CLOSED => PeerState::Closed,
            NEVER => PeerState::NotYet,
            _ => PeerState::Dead,
        },
    }
}

/// Remembers when a peer was last seen alive, so that the non-blocking
/// operations (`try_recv`, `try_send`) on an empty/full channel do not make
/// a lock query (a system call) every time: a clean close is seen at once
/// in the state word; a death within [`SLICE`](super::wait::SLICE), as for
/// blocking waits.
#[derive(Debug, Default)]
pub(crate) struct AliveCache(Cell<Option<Instant>>);

impl AliveCache {
    /// The peer's state; with `cached`, a peer seen alive less than a slice
    /// ago and still `ATTACHED` is reported alive without a system call.
    pub(crate) fn status(
        &self,
        cached: bool,
        fd: BorrowedFd<'_>,
        state: &AtomicU32,
        role: u64,
    ) -> PeerState {
        if cached {
            if let Some(t) = self.0.get() {
                // SeqCst: as in `status`; a close is visible without a
                // query.
                if state.load(Ordering::SeqCst) == ATTACHED && t.elapsed() < super::wait::SLICE {
                    return PeerState::Alive;
                }
            }
        }
        let st = status(fd, state, role);
        self.0.set((st == PeerState::Alive).then(Instant::now));
        st
    }
}
