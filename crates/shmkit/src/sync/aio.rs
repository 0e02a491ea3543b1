//! Async waits on the synchronisation primitives (feature `async`):
//! [`Semaphore::wait_async`], [`Event::wait_async`], [`Mutex::lock_async`]
//! (and so on the named forms, which dereference to these). Waiting:
//! [`crate::aio`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::event::{self, Event};
use super::mutex::{LockError, Mutex, MutexGuard};
use super::semaphore::Semaphore;
use super::{WaitError, SLICE};
use crate::aio::park::{Park, Target};
use crate::primitive::Ordering;
use crate::sys::futex;
use crate::sys::robust_mutex::{word, Outcome};

impl Semaphore {
    fn target(&self) -> Target<'_> {
        Target {
            word: &self.count,
            sleepers: Some(&self.sleepers),
            mine: None,
            // Re-check once per slice: a wake lost to a poster killed
            // before its FUTEX_WAKE delays us one slice, as a blocking
            // waiter.
            slice: Some(SLICE),
            // In-place objects may live in memory shmkit did not map (and
            // whose unmapping it cannot see): no lingering registration.
            linger: false,
            spins: 0,
        }
    }

    /// Waits asynchronously until a unit can be taken, and takes it. Only
    /// fails if the shared state is corrupt.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a unit is taken only in the poll that returns
    /// `Ready(Ok)`. A future dropped after a post woke it passes the wake
    /// on to another sleeper, so no unit is left with sleepers asleep.
    pub fn wait_async(&self) -> SemWait<'_> {
        SemWait {
            sem: self,
            park: Park::default(),
        }
    }
}

/// Future of [`Semaphore::wait_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SemWait<'a> {
    sem: &'a Semaphore,
    park: Park,
}

impl SemWait<'_> {
    /// After leaving the wait (done or dropped): units left and other
    /// sleepers → pass a wake on, as `wait_slow`'s chained wake.
    fn chain(&self, was_waiting: bool) {
        // Relaxed: hints only (see `Semaphore::wait_slow`).
        if was_waiting
            && self.sem.sleepers.load(Ordering::Relaxed) != 0
            && self.sem.count.load(Ordering::Relaxed) != 0
        {
            futex::wake(&self.sem.count);
        }
    }
}

impl Future for SemWait<'_> {
    type Output = Result<(), WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sem = this.sem;
        let was_waiting = this.park.is_waiting();
        let r = this.park.poll(cx, sem.target(), |_| {
            if let Err(e) = sem.check_magic() {
                return Some(Err(e.into()));
            }
            match sem.try_take() {
                Ok(true) => Some(Ok(())),
                Ok(false) => None,
                Err(e) => Some(Err(e.into())),
            }
        });
        if r.is_ready() {
            this.chain(was_waiting);
        }
        r
    }
}

impl Drop for SemWait<'_> {
    fn drop(&mut self) {
        let was_waiting = self.park.is_waiting();
        self.park.done(self.sem.target());
        self.chain(was_waiting);
    }
}

impl Event {
    fn target(&self) -> Target<'_> {
        Target {
            word: &self.state,
            sleepers: Some(&self.sleepers),
            mine: None,
            slice: Some(SLICE),
            // In-place objects may live in memory shmkit did not map (and
            // whose unmapping it cannot see): no lingering registration.
            linger: false,
            spins: 0,
        }
    }

    /// Waits asynchronously until the event is set (consuming the set if
    /// auto-reset). Only fails on corruption. A manual-reset wait also
    /// ends on a set+reset pulse that happened after this call.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an auto-reset set is consumed only in the poll that
    /// returns `Ready`; a future dropped after a set woke it passes the
    /// wake on to another sleeper.
    pub fn wait_async(&self) -> EventWait<'_> {
        // Relaxed: only the generation is used (as in `wait_with`).
        let gen0 = self.state.load(Ordering::Relaxed) & event::GEN_MASK;
        EventWait {
            ev: self,
            gen0,
            park: Park::default(),
        }
    }
}

/// Future of [`Event::wait_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct EventWait<'a> {
    ev: &'a Event,
    gen0: u32,
    park: Park,
}

impl EventWait<'_> {
    fn chain(&self, was_waiting: bool) {
        // Relaxed: hints, as for the semaphore. Only auto-reset sets (and
        // pulses, a set that `reset` withdrew but still owes one waiter)
        // are delivered to one waiter; a manual set woke everyone already.
        if was_waiting
            && self.ev.checked_mode() == Ok(event::AUTO)
            && self.ev.sleepers.load(Ordering::Relaxed) != 0
            && self.ev.state.load(Ordering::Relaxed) & (event::SET_BIT | event::PULSE_BIT) != 0
        {
            futex::wake(&self.ev.state);
        }
    }
}

impl Future for EventWait<'_> {
    type Output = Result<(), WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (ev, gen0) = (this.ev, this.gen0);
        let was_waiting = this.park.is_waiting();
        let r = this
            .park
            .poll(cx, ev.target(), |_| match ev.checked_mode() {
                Err(e) => Some(Err(e.into())),
                Ok(mode) => match ev.poll(mode, gen0) {
                    event::Poll::Done => Some(Ok(())),
                    event::Poll::Sleep(_) => None,
                },
            });
        if r.is_ready() {
            // A manual wait that ended leaves nothing to pass on; an auto
            // one consumed its set (chain only forwards other sets).
            this.chain(was_waiting);
        }
        r
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        let was_waiting = self.park.is_waiting();
        self.park.done(self.ev.target());
        self.chain(was_waiting);
    }
}

impl<T> Mutex<T> {
    fn target(&self) -> Target<'_> {
        Target {
            word: self.raw.lock.word(),
            // The WAITERS bit in the word announces us (see `LockFuture`).
            sleepers: None,
            mine: None,
            // glibc's unlock and the kernel's owner-death handling both
            // wake a waiter when WAITERS is set; the slice only covers a
            // waker killed between its unlock and its FUTEX_WAKE.
            slice: Some(SLICE),
            // In-place objects may live in memory shmkit did not map (and
            // whose unmapping it cannot see): no lingering registration.
            linger: false,
            spins: 0,
        }
    }

    /// Waits asynchronously for the lock. Results as [`lock`](Self::lock),
    /// including `OwnerDied` with the guard.
    ///
    /// The lock is taken by the thread that polls the future to
    /// completion, and the guard (not `Send`) must be dropped on that
    /// thread: hold it across no `.await` in a multi-threaded runtime
    /// (the compiler enforces it for `Send` tasks).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the lock is taken only in the poll that returns the
    /// guard. A future dropped after an unlock woke it passes the wake on.
    pub fn lock_async(&self) -> LockFuture<'_, T> {
        LockFuture {
            m: self,
            park: Park::default(),
        }
    }
}

/// Future of [`Mutex::lock_async`].
#[must_use = "futures do nothing unless polled"]
pub struct LockFuture<'a, T> {
    m: &'a Mutex<T>,
    park: Park,
}

impl<T> std::fmt::Debug for LockFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture").finish_non_exhaustive()
    }
}

type LockResult<'a, T> = Result<MutexGuard<'a, T>, LockError<MutexGuard<'a, T>>>;

impl<'a, T> Future for LockFuture<'a, T> {
    type Output = LockResult<'a, T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let m: &'a Mutex<T> = this.m;
        let was_waiting = this.park.is_waiting();
        let w = m.raw.lock.word();
        this.park.poll(cx, m.target(), |_| {
            if let Err(e) = m.raw.check_entry() {
                return Some(Err(e));
            }
            // Bounded: a word that keeps changing under us (or a damaged
            // one) is left to the next poll (at least once per slice).
            for _ in 0..64 {
                match m.raw.lock.try_lock() {
                    Outcome::WouldBlock => {}
                    o => {
                        if was_waiting && matches!(o, Outcome::Ok | Outcome::OwnerDied) {
                            // Others may sleep as we did: keep WAITERS set
                            // so that our unlock wakes one, as glibc does
                            // for a lock taken after sleeping. Relaxed: we
                            // own the word's other bits now.
                            w.fetch_or(word::WAITERS, Ordering::Relaxed);
                        }
                        return Some(m.finish(o));
                    }
                }
                // Held: announce ourselves with the WAITERS bit, so that
                // the unlock (or the kernel, at the owner's death) wakes.
                // Relaxed: the futex compare orders the rest.
                let cur = w.load(Ordering::Relaxed);
                if cur & word::TID_MASK == 0 {
                    continue; // freed meanwhile: try again
                }
                if cur & word::WAITERS != 0 {
                    return None;
                }
                if w.compare_exchange(
                    cur,
                    cur | word::WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
                {
                    return None;
                }
            }
            None
        })
    }
}

impl<T> Drop for LockFuture<'_, T> {
    fn drop(&mut self) {
        let was_waiting = self.park.is_waiting();
        self.park.done(self.m.target());
        if was_waiting {
            // We may have been the one waiter an unlock woke: pass it on.
            futex::wake(self.m.raw.lock.word());
        }
    }
}
