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
//! The state word is `epoch << 2 | state`. The state distinguishes the
//! cases a lock alone cannot:
//!
//! | state | lock held | meaning |
//! |---|---|---|
//! | `NEVER` | – | nobody has played the role yet |
//! | `ATTACHED` | yes | alive |
//! | `ATTACHED` | no | died without closing |
//! | `CLOSED` | – | closed cleanly (dropped) |
//!
//! The epoch counts the claims of the role (it wraps after 2^30), so a
//! role that was closed and claimed again never shows the same word twice
//! in a row: an endpoint that attached after its peer had already gone
//! remembers that word (`Stale`) and waits for the *next* peer instead
//! of ending at once (see "Reopening" in `docs/channel.md`).
//!
//! Claiming takes the lock first and then stores `ATTACHED` with the next
//! epoch; closing stores `CLOSED` (same epoch) first and then unlocks. A
//! checker that finds the lock free re-reads the word after its
//! (serialising) lock query, so a clean close is never mistaken for a
//! death.

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
/// The state bits of a state word (the rest is the epoch).
const STATE_MASK: u32 = 3;

/// The state (`NEVER`, `ATTACHED`, `CLOSED`; 3 only in corrupt memory) of
/// a state word.
#[inline]
pub(crate) const fn state_of(word: u32) -> u32 {
    word & STATE_MASK
}

/// The word a new holder stores when it claims a role whose word was
/// `old`: the next epoch, `ATTACHED`.
const fn next_claim(old: u32) -> u32 {
    ((old >> 2).wrapping_add(1) << 2) | ATTACHED
}

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

/// The lock that marks a role's holder alive. In a segment it is an OFD
/// lock ([`OfdRole`]); the loom models use a flag, to check the state-word
/// logic below on its own.
pub(crate) trait RoleLock {
    /// Takes the lock if nobody holds it.
    fn try_lock(&self) -> std::io::Result<bool>;
    /// Releases it.
    fn unlock(&self);
    /// Whether another holder has it.
    fn is_locked(&self) -> std::io::Result<bool>;
}

/// Role `role`'s OFD lock byte, through `fd`.
pub(crate) struct OfdRole<'a>(pub(crate) BorrowedFd<'a>, pub(crate) u64);

impl RoleLock for OfdRole<'_> {
    fn try_lock(&self) -> std::io::Result<bool> {
        Ok(ofd_lock::try_lock(self.0, ROLE_BASE + self.1)?)
    }
    fn unlock(&self) {
        let _ = ofd_lock::unlock(self.0, ROLE_BASE + self.1);
    }
    fn is_locked(&self) -> std::io::Result<bool> {
        Ok(ofd_lock::is_locked(self.0, ROLE_BASE + self.1)?)
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
    claim_with(&OfdRole(fd, role), state, setup)
}

/// [`claim_then`] with any [`RoleLock`].
pub(crate) fn claim_with(
    lock: &impl RoleLock,
    state: &AtomicU32,
    setup: impl FnOnce(),
) -> std::io::Result<bool> {
    if !lock.try_lock()? {
        return Ok(false);
    }
    setup();
    // SeqCst: we hold the role lock, so nobody else stores this word; the
    // previous holder's last store happened before its unlock (or death),
    // which the kernel ordered before our lock.
    let old = state.load(Ordering::SeqCst);
    // SeqCst: published after the lock is held (see module docs); pairs
    // with the loads in `observe`.
    state.store(next_claim(old), Ordering::SeqCst);
    Ok(true)
}

/// Gives role `role` up cleanly.
pub(crate) fn close(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) {
    close_with(&OfdRole(fd, role), state)
}

/// [`close`] with any [`RoleLock`].
pub(crate) fn close_with(lock: &impl RoleLock, state: &AtomicU32) {
    // SeqCst: we hold the role: the word is ours (see `claim_with`).
    let w = state.load(Ordering::SeqCst);
    // SeqCst: visible before the unlock below, so `observe` reads CLOSED
    // once it sees the lock free. The epoch is kept: a peer that saw this
    // holder attached can tell its close from an older one.
    state.store((w & !STATE_MASK) | CLOSED, Ordering::SeqCst);
    lock.unlock();
}

/// The state of role `role`, as seen through `fd` (which must not be the
/// description that holds the role).
pub(crate) fn status(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) -> PeerState {
    observe(fd, state, role).0
}

/// As [`status`], with the state word the answer was read from.
pub(crate) fn observe(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) -> (PeerState, u32) {
    observe_with(&OfdRole(fd, role), state)
}

/// [`observe`] with any [`RoleLock`].
pub(crate) fn observe_with(lock: &impl RoleLock, state: &AtomicU32) -> (PeerState, u32) {
    // SeqCst: pairs with the stores in `claim_with` and `close_with`.
    let w = state.load(Ordering::SeqCst);
    match state_of(w) {
        NEVER => return (PeerState::NotYet, w),
        CLOSED => return (PeerState::Closed, w),
        _ => {}
    }
    match lock.is_locked() {
        Ok(true) => (PeerState::Alive, w),
        // An error from the query is not evidence of death.
        Err(_) => (PeerState::Alive, w),
        Ok(false) => {
            // SeqCst: as above; after the query, so a close that released
            // the lock is seen as CLOSED.
            let w = state.load(Ordering::SeqCst);
            let st = match state_of(w) {
                CLOSED => PeerState::Closed,
                NEVER => PeerState::NotYet,
                _ => PeerState::Dead,
            };
            (st, w)
        }
    }
}

/// A peer that had already closed or died when this endpoint attached:
/// its state word, remembered so that this old end is not taken for the
/// end of the peer this endpoint will talk to. A new holder of the role
/// changes the word (next epoch), which makes the memory irrelevant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stale(Option<u32>);

impl Stale {
    /// Nothing to ignore.
    pub(crate) const NONE: Stale = Stale(None);

    /// Looks at the peer's role now (after this endpoint's own claim):
    /// remembers its word if it is closed or dead.
    pub(crate) fn snapshot(fd: BorrowedFd<'_>, state: &AtomicU32, role: u64) -> Stale {
        Stale::snapshot_with(&OfdRole(fd, role), state)
    }

    /// [`Stale::snapshot`] with any [`RoleLock`].
    pub(crate) fn snapshot_with(lock: &impl RoleLock, state: &AtomicU32) -> Stale {
        match observe_with(lock, state) {
            (PeerState::Closed | PeerState::Dead, w) => Stale(Some(w)),
            _ => Stale(None),
        }
    }

    /// Whether the state word `w` is the remembered one.
    #[inline]
    pub(crate) fn is(self, w: u32) -> bool {
        self.0 == Some(w)
    }

    /// Whether `w` says the peer closed, and it is not the remembered
    /// close (the sender's early check, without a lock query).
    #[inline]
    pub(crate) fn closed_since(self, w: u32) -> bool {
        state_of(w) == CLOSED && !self.is(w)
    }

    /// `st` (read from word `w`), with the remembered close or death
    /// reported as [`PeerState::NotYet`]: wait for the next peer.
    pub(crate) fn filter(self, st: PeerState, w: u32) -> PeerState {
        match st {
            PeerState::Closed | PeerState::Dead if self.is(w) => PeerState::NotYet,
            st => st,
        }
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
    /// A close or death remembered in `stale` is reported as `NotYet`.
    pub(crate) fn status(
        &self,
        cached: bool,
        fd: BorrowedFd<'_>,
        state: &AtomicU32,
        role: u64,
        stale: Stale,
    ) -> PeerState {
        if cached {
            if let Some(t) = self.0.get() {
                // SeqCst: as in `observe`; a close is visible without a
                // query.
                let w = state.load(Ordering::SeqCst);
                if state_of(w) == ATTACHED && !stale.is(w) && t.elapsed() < super::wait::SLICE {
                    return PeerState::Alive;
                }
            }
        }
        let (st, w) = observe(fd, state, role);
        self.0.set((st == PeerState::Alive).then(Instant::now));
        stale.filter(st, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_words_change_every_epoch() {
        let mut w = NEVER;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            w = next_claim(w);
            assert_eq!(state_of(w), ATTACHED);
            assert!(seen.insert(w));
            let closed = (w & !STATE_MASK) | CLOSED;
            assert_eq!(state_of(closed), CLOSED);
            assert!(seen.insert(closed));
            w = closed;
        }
        // Wraps without overflow.
        assert_eq!(state_of(next_claim(u32::MAX)), ATTACHED);
    }
}
