//! An event on a process-shared futex: one process waits until another
//! signals. Auto-reset (a `set` releases exactly one waiter and the event
//! resets itself) or manual-reset (a `set` releases every waiter until
//! `reset`).
//!
//! State (all `u32`, in shared memory):
//!
//! - `mode`: `AUTO` or `MANUAL`, fixed at creation.
//! - `state`: `UNSET` (0) or `SET` (1); the futex word waiters sleep on
//!   while it is `UNSET`. Anything else is corruption.
//! - `sleepers`: waiters in the slow path; `set` calls `FUTEX_WAKE` only
//!   when it is non-zero.
//!
//! No lost wake-up: the same Dekker pair with SeqCst fences as the
//! semaphore (waiter: `sleepers += 1`, fence, read `state`; setter: write
//! `state`, fence, read `sleepers`), plus the kernel's compare-and-sleep in `FUTEX_WAIT`.
//! Setting an already-set auto-reset event is a no-op (the two sets merge),
//! as with Windows events.

use std::time::{Duration, Instant};

use super::{Corrupt, WaitError};
use crate::primitive::{fence, AtomicU32, Ordering};
use crate::sys::futex;

/// "SHMe".
const MAGIC: u32 = 0x5348_4d65;

const UNSET: u32 = 0;
const SET: u32 = 1;

const AUTO: u32 = 1;
const MANUAL: u32 = 2;

/// How an [`Event`] resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventMode {
    /// Each `set` releases one waiter, then the event is unset again.
    AutoReset,
    /// A `set` releases all waiters, now and later, until `reset`.
    ManualReset,
}

impl EventMode {
    fn to_raw(self) -> u32 {
        match self {
            EventMode::AutoReset => AUTO,
            EventMode::ManualReset => MANUAL,
        }
    }

    /// "auto-reset" or "manual-reset".
    pub fn as_str(self) -> &'static str {
        match self {
            EventMode::AutoReset => "auto-reset",
            EventMode::ManualReset => "manual-reset",
        }
    }
}

/// An auto- or manual-reset event living in shared memory.
///
/// Named: [`NamedEvent`](super::NamedEvent). Placed in your own layout:
/// [`init_at`](Self::init_at) once, then [`from_ptr`](Self::from_ptr).
#[repr(C)]
pub struct Event {
    /// `MAGIC` once initialised (Release in `init_at`, Acquire in `from_ptr`).
    magic: AtomicU32,
    /// `AUTO` or `MANUAL`; never changes after init.
    mode: AtomicU32,
    /// `UNSET` or `SET`; the futex word.
    state: AtomicU32,
    /// Waiters in the slow path (may over-count after a crash).
    sleepers: AtomicU32,
}

fn bad(what: &str, v: u32) -> Corrupt {
    Corrupt::new("event", format!("bad {what} {v}"))
}

impl Event {
    /// An unset event in ordinary memory (one process, tests, models).
    pub fn new(mode: EventMode) -> Event {
        Event {
            magic: AtomicU32::new(MAGIC),
            mode: AtomicU32::new(mode.to_raw()),
            state: AtomicU32::new(UNSET),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Initialises an unset event at `place`.
    ///
    /// # Safety
    ///
    /// `place` is valid for writes of `size_of::<Event>()` bytes and nobody
    /// else uses them until this returns. Null and misalignment are
    /// reported as errors.
    #[cfg(not(loom))]
    pub unsafe fn init_at(place: *mut Event, mode: EventMode) -> std::io::Result<()> {
        if place.is_null() || (place as usize) % std::mem::align_of::<Event>() != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "event place is null or misaligned",
            ));
        }
        let mut e = Event::new(mode);
        e.magic = AtomicU32::new(0);
        // SAFETY: valid, aligned and exclusive by the contract.
        unsafe {
            place.write(e);
            // Release: publishes mode and state to `from_ptr`'s Acquire.
            (*place).magic.store(MAGIC, Ordering::Release);
        }
        Ok(())
    }

    /// Validates the event at `ptr` and returns a reference to it.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and writes of `size_of::<Event>()` bytes
    /// for `'a`, accessed only through `Event` methods.
    #[cfg(not(loom))]
    pub unsafe fn from_ptr<'a>(ptr: *const Event) -> Result<&'a Event, Corrupt> {
        if ptr.is_null() || (ptr as usize) % std::mem::align_of::<Event>() != 0 {
            return Err(Corrupt::new("event", "null or misaligned pointer"));
        }
        // SAFETY: valid for 'a by contract; atomics are valid for any bytes.
        let e = unsafe { &*ptr };
        e.validate_full()?;
        Ok(e)
    }

    fn validate_full(&self) -> Result<(), Corrupt> {
        // Acquire: pairs with the Release store in `init_at`.
        let m = self.magic.load(Ordering::Acquire);
        if m != MAGIC {
            return Err(bad("magic", m));
        }
        self.snapshot().map(|_| ())
    }

    /// Mode, after checking magic and mode.
    #[inline]
    fn checked_mode(&self) -> Result<u32, Corrupt> {
        // Relaxed: immutable after init; the Acquire was done at open.
        let m = self.magic.load(Ordering::Relaxed);
        if m != MAGIC {
            return Err(bad("magic", m));
        }
        // Relaxed: `mode` never changes after init (published by the
        // magic's Release/Acquire at open).
        match self.mode.load(Ordering::Relaxed) {
            m @ (AUTO | MANUAL) => Ok(m),
            m => Err(bad("mode", m)),
        }
    }

    /// `(mode, set, sleepers)`, validated.
    pub(crate) fn snapshot(&self) -> Result<(EventMode, bool, u32), Corrupt> {
        let mode = match self.checked_mode()? {
            AUTO => EventMode::AutoReset,
            _ => EventMode::ManualReset,
        };
        // Relaxed: diagnostic snapshot.
        let set = match self.state.load(Ordering::Relaxed) {
            UNSET => false,
            SET => true,
            s => return Err(bad("state", s)),
        };
        // Relaxed: diagnostic snapshot.
        Ok((mode, set, self.sleepers.load(Ordering::Relaxed)))
    }

    /// Auto- or manual-reset.
    pub fn mode(&self) -> Result<EventMode, Corrupt> {
        self.snapshot().map(|(m, _, _)| m)
    }

    /// Whether the event is set (a snapshot).
    pub fn is_set(&self) -> Result<bool, Corrupt> {
        self.snapshot().map(|(_, s, _)| s)
    }

    /// Signals the event: releases one waiter (auto-reset) or all waiters
    /// (manual-reset). Writes made before `set` are visible to the waiters
    /// it releases.
    pub fn set(&self) -> Result<(), Corrupt> {
        let mode = self.checked_mode()?;
        // Release: publishes what we wrote before `set` to the waiters
        // (pairs with the Acquire in `try_take`).
        let old = self.state.swap(SET, Ordering::Release);
        if old > SET {
            return Err(bad("state", old));
        }
        // Dekker pair with `wait_slow` via SeqCst fences, as in the
        // semaphore's `post_n` (see there for why fences, not accesses).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            if mode == AUTO {
                futex::wake(&self.state);
            } else {
                futex::wake_all(&self.state);
            }
        }
        Ok(())
    }

    /// Unsets a manual-reset event (for an auto-reset one: discards a
    /// pending set).
    pub fn reset(&self) -> Result<(), Corrupt> {
        self.checked_mode()?;
        // Relaxed: resetting publishes nothing; waiters only act on SET.
        self.state.store(UNSET, Ordering::Relaxed);
        Ok(())
    }

    /// One attempt: `Ok(true)` if the event was set (and, auto-reset, is
    /// now consumed by us).
    #[inline]
    fn try_take(&self, mode: u32) -> Result<bool, Corrupt> {
        if mode == AUTO {
            // Acquire: pairs with `set`'s Release swap. In the slow path
            // this is the load half of the Dekker pair (after the fence).
            match self
                .state
                .compare_exchange(SET, UNSET, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => Ok(true),
                Err(UNSET) => Ok(false),
                Err(s) => Err(bad("state", s)),
            }
        } else {
            // Acquire: as above.
            match self.state.load(Ordering::Acquire) {
                SET => Ok(true),
                UNSET => Ok(false),
                s => Err(bad("state", s)),
            }
        }
    }

    /// Returns at once: `Ok` if the event was set (consuming it if
    /// auto-reset), [`WaitError::WouldBlock`] otherwise.
    pub fn try_wait(&self) -> Result<(), WaitError> {
        let mode = self.checked_mode()?;
        match self.try_take(mode)? {
            true => Ok(()),
            false => Err(WaitError::WouldBlock),
        }
    }

    /// Blocks until the event is set. Only fails on corruption.
    #[inline]
    pub fn wait(&self) -> Result<(), WaitError> {
        self.wait_inner(None)
    }

    /// [`wait`](Self::wait), giving up with [`WaitError::Timeout`] after
    /// `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), WaitError> {
        self.wait_inner(super::deadline_after(timeout))
    }

    /// [`wait`](Self::wait), giving up with [`WaitError::Timeout`] at
    /// `deadline`.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<(), WaitError> {
        self.wait_inner(Some(deadline))
    }

    #[inline]
    fn wait_inner(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        let mode = self.checked_mode()?;
        if self.try_take(mode)? {
            return Ok(());
        }
        self.wait_slow(mode, deadline)
    }

    #[cold]
    fn wait_slow(&self, mode: u32, deadline: Option<Instant>) -> Result<(), WaitError> {
        // Relaxed + SeqCst fence: store half of the Dekker pair with
        // `set`; the fence orders it before the re-read in `try_take`.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let r = loop {
            match self.try_take(mode) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e.into()),
            }
            if futex::wait(&self.state, UNSET, deadline) == futex::WaitOutcome::TimedOut {
                // A set may have raced with the timer: take it rather than
                // leave it for a sleeper nobody woke.
                break match self.try_take(mode) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(WaitError::Timeout),
                    Err(e) => Err(e.into()),
                };
            }
        };
        // Relaxed: a late decrement only costs a setter one extra wake.
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("state", &self.snapshot())
            .finish()
    }
}

// SAFETY: repr(C), atomics only; `validate` only loads.
#[cfg(not(loom))]
unsafe impl super::named::Placed for Event {
    const KIND: crate::segment::Kind = crate::segment::Kind::Event;
    fn validate(&self) -> Result<(), Corrupt> {
        self.validate_full()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn auto_reset_releases_one() {
        let e = Event::new(EventMode::AutoReset);
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
        e.set().unwrap();
        e.set().unwrap();
        assert_eq!(e.try_wait(), Ok(()));
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
        let start = Instant::now();
        assert_eq!(
            e.wait_timeout(Duration::from_millis(30)),
            Err(WaitError::Timeout)
        );
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(2));
    }

    #[test]
    fn manual_reset_releases_all_until_reset() {
        let e = Event::new(EventMode::ManualReset);
        e.set().unwrap();
        assert_eq!(e.wait(), Ok(()));
        assert_eq!(e.try_wait(), Ok(()));
        e.reset().unwrap();
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let e = Event::new(EventMode::AutoReset);
        e.state.store(9, Ordering::Relaxed);
        assert!(matches!(e.try_wait(), Err(WaitError::Corrupt(_))));
        assert!(e.set().is_err());
        e.mode.store(0, Ordering::Relaxed);
        assert!(e.is_set().is_err());
    }

    #[test]
    fn wakes_sleeping_threads() {
        let e = std::sync::Arc::new(Event::new(EventMode::ManualReset));
        let ts: Vec<_> = (0..3)
            .map(|_| {
                let e = std::sync::Arc::clone(&e);
                std::thread::spawn(move || e.wait_timeout(Duration::from_secs(10)))
            })
            .collect();
        while e.snapshot().unwrap().2 < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        e.set().unwrap();
        for t in ts {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
    }
}

#[cfg(loom)]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Auto-reset: two waiters, two sets separated by the first waiter's
    /// release: both waiters return, the event ends unset.
    #[test]
    fn loom_event_auto_reset_one_per_set() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::AutoReset));
            let done = Arc::new(AtomicU32::new(0));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let (e, done) = (Arc::clone(&e), Arc::clone(&done));
                    thread::spawn(move || {
                        e.wait().unwrap();
                        done.fetch_add(1, Ordering::SeqCst);
                    })
                })
                .collect();
            e.set().unwrap();
            // A second set must not merge with the first one: wait until
            // the first was consumed.
            while done.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            e.set().unwrap();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(e.is_set(), Ok(false));
        });
    }

    /// Manual-reset: a set releases a waiter that may be asleep, and data
    /// written before `set` is visible after `wait`.
    #[test]
    fn loom_event_manual_publishes() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::ManualReset));
            let data = Arc::new(AtomicU32::new(0));
            let (e2, d2) = (Arc::clone(&e), Arc::clone(&data));
            let t = thread::spawn(move || {
                e2.wait().unwrap();
                assert_eq!(d2.load(Ordering::Relaxed), 42);
            });
            data.store(42, Ordering::Relaxed);
            e.set().unwrap();
            t.join().unwrap();
            assert_eq!(e.is_set(), Ok(true));
        });
    }
}
