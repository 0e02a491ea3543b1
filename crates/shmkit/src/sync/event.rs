//! An event on a process-shared futex: one process waits until another
//! signals. Auto-reset (a `set` releases exactly one waiter and the event
//! resets itself) or manual-reset (a `set` releases every waiter until
//! `reset`).
//!
//! State (all `u32`, in shared memory):
//!
//! - `mode`: `AUTO` or `MANUAL`, fixed at creation.
//! - `state`: the futex word. Bit 0 is the set flag; bit 1 the *pulse*
//!   flag (auto-reset only); bits 2..31 a generation, incremented
//!   (wrapping) by every `set` that finds the event unset. A manual-reset
//!   waiter returns when the flag is set *or* the generation moved since
//!   it began waiting, so a `set` quickly followed by `reset` (a pulse)
//!   still releases everyone who was waiting at the set. Every value is a
//!   valid state.
//! - Auto-reset pulses (Win32 `PulseEvent`-like use): `reset` of a set
//!   auto-reset event turns the set flag into the pulse flag. A pulse can
//!   be consumed (once) only by a waiter whose wait began in an *older*
//!   generation, i.e. one that was waiting at the `set`; a waiter that
//!   arrives after the `reset` never sees it. So `set` then `reset`
//!   releases exactly one waiter if any was waiting, and none later.
//! - `sleepers`: waiters in the slow path; `set` calls `FUTEX_WAKE` only
//!   when it is non-zero.
//!
//! No lost wake-up: the same Dekker pair with SeqCst fences as the
//! semaphore (waiter: `sleepers += 1`, fence, read `state`; setter: write
//! `state`, fence, read `sleepers`), plus the kernel's compare-and-sleep in `FUTEX_WAIT`.
//! Setting an already-set auto-reset event is a no-op (the two sets merge),
//! as with Windows events.
//!
//! Crashes: waiters sleep in bounded slices ([`super::SLICE`]), so a
//! setter killed between its state change and its `FUTEX_WAKE`, or a
//! waiter woken and killed before it consumed an auto-reset set, delays
//! the other waiters by one slice at most, never forever.

use std::time::{Duration, Instant};

use super::{Corrupt, WaitError};
use crate::primitive::{fence, AtomicU32, Ordering};
use crate::sys::futex;

/// "SHMe".
const MAGIC: u32 = 0x5348_4d65;

/// The set flag in `state`.
pub(super) const SET_BIT: u32 = 1;
/// The pulse flag in `state` (auto-reset only): a `set` that `reset`
/// withdrew, still owed to one waiter of an older generation.
pub(super) const PULSE_BIT: u32 = 2;
/// The generation bits of `state` (2..31).
pub(super) const GEN_MASK: u32 = !(SET_BIT | PULSE_BIT);
/// One generation step in `state`.
const GEN_ONE: u32 = 4;

/// `state` after a `set`: the flag on; a new generation if it was off
/// (which also merges a pending pulse into this set).
#[inline]
fn set_state(s: u32) -> u32 {
    if s & SET_BIT != 0 {
        s
    } else {
        (s & GEN_MASK).wrapping_add(GEN_ONE) | SET_BIT
    }
}

/// What one look at `state` found.
pub(super) enum Poll {
    /// Released (manual) or the set consumed by us (auto).
    Done,
    /// Not yet: sleep while `state` still holds this value.
    Sleep(u32),
}

pub(super) const AUTO: u32 = 1;
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
    /// Set flag (bit 0) and generation (bits 1..31); the futex word.
    pub(super) state: AtomicU32,
    /// Waiters in the slow path (may over-count after a crash).
    pub(super) sleepers: AtomicU32,
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
            state: AtomicU32::new(0),
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
        if !super::placeable(place) {
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
        if !super::placeable(ptr) {
            return Err(Corrupt::new("event", "null or misaligned pointer"));
        }
        // SAFETY: valid for 'a by contract; atomics are valid for any bytes.
        let e = unsafe { &*ptr };
        e.validate_full()?;
        Ok(e)
    }

    #[cfg_attr(loom, allow(dead_code))] // used by `from_ptr`/named, not under loom
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
    pub(super) fn checked_mode(&self) -> Result<u32, Corrupt> {
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
        let set = self.state.load(Ordering::Relaxed) & SET_BIT != 0;
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
    /// (manual-reset). Waiters that were waiting at this `set` are
    /// released even if `reset` follows at once: every one of them
    /// (manual-reset), or one of them (auto-reset, as Win32 `PulseEvent`).
    /// Writes made before `set` are visible to the waiters it releases.
    pub fn set(&self) -> Result<(), Corrupt> {
        let mode = self.checked_mode()?;
        // Release: publishes what we wrote before `set` to the waiters
        // (pairs with the Acquire loads/CAS in `poll`). Always a write,
        // even when already set, so a merged set publishes too.
        let _ = self
            .state
            .fetch_update(Ordering::Release, Ordering::Relaxed, |s| Some(set_state(s)));
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

    /// Unsets the event: waiters that arrive later block. Waiters that
    /// were waiting at the last `set` are still released: all of them
    /// (manual-reset: they see its new generation), or one of them
    /// (auto-reset, if none has consumed the set yet: the set becomes a
    /// pulse that only such a waiter can take).
    pub fn reset(&self) -> Result<(), Corrupt> {
        let mode = self.checked_mode()?;
        // Relaxed: resetting publishes nothing. An RMW rather than a store
        // so that it continues the release sequence of the `set` before
        // it: a waiter whose Acquire load/CAS reads this value (new
        // generation, flag off, maybe the pulse) still synchronises with
        // that setter.
        if mode == AUTO {
            let _ = self
                .state
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    (s & SET_BIT != 0).then_some((s & !SET_BIT) | PULSE_BIT)
                });
        } else {
            self.state.fetch_and(!SET_BIT, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One look at `state`. `gen0`: the state's generation when the wait
    /// began (manual: released by any later one; auto: may take a pulse
    /// of a later one).
    #[inline]
    pub(super) fn poll(&self, mode: u32, gen0: u32) -> Poll {
        if mode == AUTO {
            // Relaxed: a guess for the CAS; in the slow path the load half
            // of the Dekker pair (after the fence).
            let mut s = self.state.load(Ordering::Relaxed);
            loop {
                let next = if s & SET_BIT != 0 {
                    s & GEN_MASK
                } else if s & PULSE_BIT != 0 && s & GEN_MASK != gen0 {
                    // A pulse of a set made while we were waiting.
                    s & GEN_MASK
                } else {
                    return Poll::Sleep(s);
                };
                // Acquire: pairs with `set`'s Release RMW (directly, or
                // through the release sequence `reset`'s RMW continues).
                match self.state.compare_exchange_weak(
                    s,
                    next,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Poll::Done,
                    Err(now) => s = now,
                }
            }
        } else {
            // Acquire: pairs with `set`'s Release RMW (directly, or through
            // the release sequence a later `reset` RMW continues).
            let s = self.state.load(Ordering::Acquire);
            if s & SET_BIT != 0 || s & GEN_MASK != gen0 {
                Poll::Done
            } else {
                Poll::Sleep(s)
            }
        }
    }

    /// Returns at once: `Ok` if the event was set (consuming it if
    /// auto-reset), [`WaitError::WouldBlock`] otherwise.
    pub fn try_wait(&self) -> Result<(), WaitError> {
        let mode = self.checked_mode()?;
        // Relaxed: only the generation is used (see `wait_with`). The
        // current one: a `try_wait` was not waiting at any earlier set, so
        // it never takes a pulse.
        let gen0 = self.state.load(Ordering::Relaxed) & GEN_MASK;
        match self.poll(mode, gen0) {
            Poll::Done => Ok(()),
            Poll::Sleep(_) => Err(WaitError::WouldBlock),
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
        self.wait_with(deadline, super::SLICED)
    }

    /// The wait, with the slicing chosen by the caller (loom models of
    /// crash recovery ask for slices; see [`super::SLICED`]).
    #[inline]
    fn wait_with(&self, deadline: Option<Instant>, sliced: bool) -> Result<(), WaitError> {
        let mode = self.checked_mode()?;
        // Relaxed: the generation we start waiting in; `poll` does the
        // Acquire that matters. The set flag read here is re-checked by
        // `poll` at once.
        // (A stale value is harmless: it only makes us a waiter that was
        // already waiting at a set that happened concurrently with our
        // start, which is a valid linearisation.)
        let gen0 = self.state.load(Ordering::Relaxed) & GEN_MASK;
        match self.poll(mode, gen0) {
            Poll::Done => Ok(()),
            Poll::Sleep(_) => self.wait_slow(mode, gen0, deadline, sliced),
        }
    }

    #[cold]
    fn wait_slow(
        &self,
        mode: u32,
        gen0: u32,
        deadline: Option<Instant>,
        sliced: bool,
    ) -> Result<(), WaitError> {
        // Relaxed + SeqCst fence: store half of the Dekker pair with
        // `set`; the fence orders it before the re-read in `poll`.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let r = loop {
            let seen = match self.poll(mode, gen0) {
                Poll::Done => break Ok(()),
                Poll::Sleep(s) => s,
            };
            // Bounded sleep (`SLICE`): a wake lost to a crash costs one
            // slice at most. Sleeping on the exact word seen means a
            // set, or a set+reset pulse, in between makes FUTEX_WAIT
            // return at once (EAGAIN).
            if super::sleep(&self.state, seen, deadline, sliced) == super::Slept::Deadline {
                // A set may have raced with the timer: take it rather than
                // leave it for a sleeper nobody woke.
                break match self.poll(mode, gen0) {
                    Poll::Done => Ok(()),
                    Poll::Sleep(_) => Err(WaitError::Timeout),
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
    fn corrupt_mode_or_magic_is_an_error() {
        let e = Event::new(EventMode::AutoReset);
        // Every state word is valid (flag + generation).
        e.state.store(9, Ordering::Relaxed);
        assert_eq!(e.try_wait(), Ok(()));
        assert_eq!(e.state.load(Ordering::Relaxed), 8);
        e.mode.store(0, Ordering::Relaxed);
        assert!(e.is_set().is_err());
        assert!(matches!(e.try_wait(), Err(WaitError::Corrupt(_))));
        assert!(e.set().is_err());
        e.mode.store(AUTO, Ordering::Relaxed);
        e.magic.store(1, Ordering::Relaxed);
        assert!(e.set().is_err());
    }

    #[test]
    fn generation_wraps() {
        let e = Event::new(EventMode::ManualReset);
        e.state.store(u32::MAX - 1, Ordering::Relaxed);
        e.set().unwrap();
        assert_eq!(e.state.load(Ordering::Relaxed), 1);
        assert_eq!(e.try_wait(), Ok(()));
        e.reset().unwrap();
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
    }

    /// Spawns a thread in `e.wait()` (untimed) and returns once it is
    /// asleep in the kernel (as far as a test can tell).
    fn sleeping_waiter(
        e: &std::sync::Arc<Event>,
    ) -> std::sync::mpsc::Receiver<Result<(), WaitError>> {
        let e2 = std::sync::Arc::clone(e);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(e2.wait()));
        while e.snapshot().unwrap().2 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(100));
        rx
    }

    /// M1: set() then reset() at once releases a manual-reset waiter
    /// that was waiting at the set (without the generation it re-checked,
    /// saw "unset" and slept on).
    #[test]
    fn manual_pulse_releases_sleeping_waiters() {
        let e = std::sync::Arc::new(Event::new(EventMode::ManualReset));
        let rx = sleeping_waiter(&e);
        e.set().unwrap();
        e.reset().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
        assert_eq!(e.is_set(), Ok(false));
    }

    /// Bug 3 (issue 14): auto-reset `set` then `reset` at once released no
    /// waiter. Now, as Win32 `PulseEvent`: exactly one of the waiters that
    /// were waiting is released, and a waiter that comes later is not.
    #[test]
    fn auto_pulse_releases_exactly_one_waiting_waiter() {
        let e = std::sync::Arc::new(Event::new(EventMode::AutoReset));
        let a = sleeping_waiter(&e);
        let b = sleeping_waiter(&e);
        while e.snapshot().unwrap().2 < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(100));
        e.set().unwrap();
        e.reset().unwrap();
        let start = Instant::now();
        let first = loop {
            if let Ok(r) = a.try_recv() {
                break (r, &b);
            }
            if let Ok(r) = b.try_recv() {
                break (r, &a);
            }
            // Generous: the slices alone would release a waiter in 50 ms
            // if it were entitled to the pulse.
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the pulse released no waiter"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(first.0, Ok(()));
        let other = first.1;
        // The other one stays blocked, and a newcomer does not see a set.
        assert!(other.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
        assert_eq!(e.is_set(), Ok(false));
        e.set().unwrap();
        assert_eq!(other.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
        assert_eq!(e.is_set(), Ok(false));
    }

    /// A pulse with nobody waiting is lost, as with `PulseEvent`.
    #[test]
    fn auto_pulse_with_no_waiter_releases_nobody_later() {
        let e = Event::new(EventMode::AutoReset);
        e.set().unwrap();
        e.reset().unwrap();
        assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
        assert_eq!(
            e.wait_timeout(Duration::from_millis(30)),
            Err(WaitError::Timeout)
        );
        e.set().unwrap();
        assert_eq!(e.try_wait(), Ok(()));
    }

    /// H3: a setter killed between its state change and its wake
    /// (simulated: the state change alone). Untimed waiters still return.
    #[test]
    fn sleeper_recovers_from_a_lost_wake() {
        for mode in [EventMode::AutoReset, EventMode::ManualReset] {
            let e = std::sync::Arc::new(Event::new(mode));
            let rx = sleeping_waiter(&e);
            e.state.fetch_or(SET_BIT, Ordering::Release);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
            assert_eq!(e.is_set(), Ok(mode == EventMode::ManualReset));
            assert_eq!(e.snapshot().unwrap().2, 0);
        }
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

#[cfg(all(test, loom))]
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

    /// M1: a manual-reset waiter that is waiting (registered as a
    /// sleeper) when `set` runs is released even though `reset` follows
    /// at once, and sees the data written before `set`. Without the
    /// generation in the state word: deadlock.
    #[test]
    fn loom_event_manual_pulse_releases_waiter() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::ManualReset));
            let data = Arc::new(AtomicU32::new(0));
            let (e2, d2) = (Arc::clone(&e), Arc::clone(&data));
            let t = thread::spawn(move || {
                e2.wait().unwrap();
                assert_eq!(d2.load(Ordering::Relaxed), 42);
            });
            // Wait until the waiter is in the slow path (it is waiting).
            while e.sleepers.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            data.store(42, Ordering::Relaxed);
            e.set().unwrap();
            e.reset().unwrap();
            t.join().unwrap();
            assert_eq!(e.is_set(), Ok(false));
        });
    }

    /// H3: a setter killed between its state change and its wake
    /// (modelled as the bare Release RMW). A sliced auto-reset waiter
    /// still consumes the set. With `sliced = false`: deadlock.
    #[test]
    fn loom_event_setter_killed_before_wake() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::AutoReset));
            let e2 = Arc::clone(&e);
            let t = thread::spawn(move || e2.wait_with(None, true));
            e.state
                .fetch_update(Ordering::Release, Ordering::Relaxed, |s| Some(set_state(s)))
                .unwrap();
            assert_eq!(t.join().unwrap(), Ok(()));
            assert_eq!(e.is_set(), Ok(false));
        });
    }

    /// Bug 3 (issue 14), two waiters: both are waiting (registered as
    /// sleepers) when `set` and at once `reset` run. Exactly one is
    /// released by that pulse and sees the data written before `set`; the
    /// event is not left set; a second `set` releases the other. Before the
    /// pulse flag: nobody was released (loom: the main thread spins for
    /// ever and the model fails).
    #[test]
    fn loom_event_auto_pulse_two_waiters() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::AutoReset));
            let data = Arc::new(AtomicU32::new(0));
            let done = Arc::new(AtomicU32::new(0));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let (e, data, done) = (Arc::clone(&e), Arc::clone(&data), Arc::clone(&done));
                    thread::spawn(move || {
                        e.wait().unwrap();
                        assert_eq!(data.load(Ordering::Relaxed), 42);
                        done.fetch_add(1, Ordering::SeqCst);
                    })
                })
                .collect();
            while e.sleepers.load(Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
            data.store(42, Ordering::Relaxed);
            e.set().unwrap();
            e.reset().unwrap();
            while done.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            assert_eq!(done.load(Ordering::SeqCst), 1);
            assert_eq!(e.is_set(), Ok(false));
            e.set().unwrap();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(e.state.load(Ordering::Relaxed) & !GEN_MASK, 0);
        });
    }

    /// Auto-reset `reset` racing a (timed) wait that may begin before or
    /// after the `set`: the waiter either returns `Ok` (it consumed the set
    /// or its pulse: nothing is left to consume) or times out (then a
    /// newcomer finds the event unset). Never both a release and a
    /// leftover set.
    #[test]
    fn loom_event_auto_reset_races_wait() {
        loom::model(|| {
            let e = Arc::new(Event::new(EventMode::AutoReset));
            let e2 = Arc::clone(&e);
            let t =
                thread::spawn(move || e2.wait_deadline(Instant::now() + Duration::from_secs(3600)));
            e.set().unwrap();
            e.reset().unwrap();
            let r = t.join().unwrap();
            let s = e.state.load(Ordering::Relaxed);
            match r {
                Ok(()) => assert_eq!(s & !GEN_MASK, 0, "{s:#x}"),
                Err(WaitError::Timeout) => assert_eq!(s & SET_BIT, 0),
                Err(err) => panic!("{err}"),
            }
            assert_eq!(e.try_wait(), Err(WaitError::WouldBlock));
            assert_eq!(e.sleepers.load(Ordering::Relaxed), 0);
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
