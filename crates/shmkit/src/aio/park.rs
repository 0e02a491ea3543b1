//! The future side of the handshake: announce, re-check, arm.
//!
//! A future that cannot make progress:
//!
//! 1. reads the futex word (`seen`, Acquire),
//! 2. counts itself in the object's sleeper count (once per wait), then a
//!    `SeqCst` fence,
//! 3. re-checks its condition,
//! 4. arms its registration with `seen`; the arm fails if the word no
//!    longer holds `seen` (then back to 1).
//!
//! The waking side stores its progress, fences (`SeqCst`), reads the
//! sleeper count and, if non-zero, bumps the word and `FUTEX_WAKE`s it
//! (`channel::wait::notify`, the semaphore's `post`, the event's `set`).
//! As for a blocking sleeper (Dekker through the two fences): either the
//! re-check (3) sees the progress, or the waker sees our count and bumps
//! the word after our read (1); then either the arm (4) sees the new value
//! and fails, or the waiter thread's `futex_waitv`, which covers `(word,
//! seen)` once armed (see `reactor`), sees it or is woken by it. An async
//! waiter is therefore a sleeper like any other: the count is held from
//! the first arm until the future completes or is dropped.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::reactor::Registration;
use crate::primitive::{fence, AtomicU32, Ordering};

/// A future's registration: with a waiter thread (`reactor`), or with its
/// tokio runtime's io_uring (`uring`, feature `tokio`).
#[derive(Debug)]
pub(crate) enum Reg {
    Thread(Registration),
    #[cfg(all(feature = "tokio", not(loom)))]
    Uring(super::uring::Registration),
}

impl Reg {
    /// Arms: `false` if `word` no longer holds `seen`, else `waker` is
    /// woken when it changes or at `tick` (both backends, same contract).
    fn arm(
        &self,
        word: &AtomicU32,
        seen: u32,
        waker: &std::task::Waker,
        tick: Option<Instant>,
    ) -> bool {
        match self {
            Reg::Thread(r) => r.arm(word, seen, waker, tick),
            #[cfg(all(feature = "tokio", not(loom)))]
            Reg::Uring(r) => r.arm(word, seen, waker, tick),
        }
    }
}

/// What a future waits on.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The futex word the waking side bumps.
    pub(crate) word: &'a AtomicU32,
    /// The sleeper count the waking side reads (`None`: the condition
    /// itself announces us, as the mutex's WAITERS bit).
    pub(crate) sleepers: Option<&'a AtomicU32>,
    /// Set to 1 while we are counted in `sleepers`, so that a reaper can
    /// take the count back if this process dies with the future pending
    /// (`channel::wait::take_back_sleeper`; the pub/sub subscriber's
    /// `asleep` flag, as its blocking `recv` sets it).
    pub(crate) mine: Option<&'a AtomicU32>,
    /// Re-check at least this often even without a wake (peer liveness,
    /// a wake lost to a crashed waker).
    pub(crate) slice: Option<Duration>,
    /// The word lives in a shmkit segment mapping, so its registration
    /// may outlive the future (see `reactor`, "Lingering entries"): the
    /// next future on the same endpoint arms without a kick.
    pub(crate) linger: bool,
    /// Spin this many times (`Check::Spin` probes) before announcing
    /// ourselves: the endpoint's `SpinThenSleep` budget, 0 for `Sleep`.
    pub(crate) spins: u32,
}

/// What a poll's condition check is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// A cheap probe inside the bounded spin: shared loads only, no
    /// system call; `None` unless the operation can complete now.
    Spin,
    /// The full check.
    Normal,
    /// The full check plus the slow one (peer liveness), about once per
    /// slice.
    Slow,
}

/// Most spins a future makes before it goes pending (about 10 µs): a
/// future must not hold its executor's thread long, so a larger
/// `SpinThenSleep` budget, or `BusyPoll`, is capped to this.
#[cfg(not(loom))]
pub(crate) const MAX_SPINS: u32 = 2_000;

/// The spin budget of an async wait on an endpoint with `strategy`: its
/// `SpinThenSleep` spins (capped), none for `Sleep`.
#[cfg(not(loom))]
pub(crate) fn spins_for(strategy: crate::channel::WaitStrategy) -> u32 {
    use crate::channel::WaitStrategy;
    match strategy {
        WaitStrategy::Sleep => 0,
        WaitStrategy::SpinThenSleep { spins } => spins.min(MAX_SPINS),
        WaitStrategy::BusyPoll => MAX_SPINS,
    }
}

/// Per-future waiting state. Its owner's `Drop` calls [`Park::done`] with
/// the same target (the count lives in the endpoint the owner borrows).
#[derive(Debug, Default)]
pub(crate) struct Park {
    reg: Option<Reg>,
    /// Whether we incremented the target's sleeper count.
    counted: bool,
    /// When the slow check (`check(true)`) is next due.
    next_slice: Option<Instant>,
}

/// How a registration is made; the model tests use their own shard.
pub(crate) trait Registrar {
    fn register(&self, word: &AtomicU32, linger: bool) -> Reg;
    /// Whether `reg` was made by this registrar (a future polled from
    /// another runtime, or outside one, registers again).
    fn owns(&self, reg: &Reg) -> bool;
}

#[cfg(not(loom))]
impl Registrar for super::reactor::Reactor {
    fn register(&self, word: &AtomicU32, linger: bool) -> Reg {
        Reg::Thread(super::reactor::Reactor::register(self, word, linger))
    }
    fn owns(&self, reg: &Reg) -> bool {
        matches!(reg, Reg::Thread(_))
    }
}

/// The registrar of a real poll: its tokio runtime's ring where the fast
/// path applies (feature `tokio`), else the waiter thread. Looked up only
/// when the poll is about to register, so a poll that completes at once
/// pays nothing for the choice.
#[cfg(not(loom))]
#[derive(Default)]
struct Current {
    #[cfg(feature = "tokio")]
    ring: std::cell::OnceCell<Option<std::sync::Arc<super::uring::Ring>>>,
}

#[cfg(not(loom))]
impl Current {
    #[cfg(feature = "tokio")]
    fn ring(&self) -> Option<&std::sync::Arc<super::uring::Ring>> {
        self.ring.get_or_init(super::uring::Ring::current).as_ref()
    }
}

#[cfg(not(loom))]
impl Registrar for Current {
    fn register(&self, word: &AtomicU32, linger: bool) -> Reg {
        #[cfg(feature = "tokio")]
        if let Some(ring) = self.ring() {
            return Registrar::register(ring, word, linger);
        }
        Registrar::register(super::reactor::Reactor::get(), word, linger)
    }
    fn owns(&self, reg: &Reg) -> bool {
        #[cfg(feature = "tokio")]
        if let Some(ring) = self.ring() {
            return Registrar::owns(ring, reg);
        }
        Registrar::owns(super::reactor::Reactor::get(), reg)
    }
}

#[cfg(all(feature = "tokio", not(loom)))]
impl Registrar for std::sync::Arc<super::uring::Ring> {
    fn register(&self, _word: &AtomicU32, _linger: bool) -> Reg {
        Reg::Uring(super::uring::Ring::register(self))
    }
    fn owns(&self, reg: &Reg) -> bool {
        matches!(reg, Reg::Uring(r) if r.is_on(self))
    }
}

impl Park {
    /// Whether this future has announced itself (it was pending once).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn is_waiting(&self) -> bool {
        self.counted || self.reg.is_some()
    }

    /// One poll. `check(how)` tests the condition (see [`Check`]).
    #[cfg(not(loom))]
    pub(crate) fn poll<R>(
        &mut self,
        cx: &mut Context<'_>,
        target: Target<'_>,
        mut check: impl FnMut(Check) -> Option<R>,
    ) -> Poll<R> {
        self.poll_with(&Current::default(), cx, target, &mut check)
    }

    /// [`poll`](Self::poll) with the given registrar (model tests).
    pub(crate) fn poll_with<R>(
        &mut self,
        registrar: &impl Registrar,
        cx: &mut Context<'_>,
        target: Target<'_>,
        check: &mut impl FnMut(Check) -> Option<R>,
    ) -> Poll<R> {
        let due = match (target.slice, self.next_slice) {
            (Some(_), Some(t)) => Instant::now() >= t,
            // First poll: one slow check at once (a peer already gone);
            // no clock read for a future that is ready at once.
            (Some(_), None) => true,
            _ => false,
        };
        if let Some(r) = check(if due { Check::Slow } else { Check::Normal }) {
            self.done(target);
            return Poll::Ready(r);
        }
        if let (Some(s), true) = (target.slice, due) {
            self.next_slice = Some(Instant::now() + s);
        }
        // Bounded spin, as the blocking SpinThenSleep: a peer answering
        // within about a microsecond costs no wake at all. Not counted as
        // a sleeper yet, so the peer skips its FUTEX_WAKE meanwhile.
        for _ in 0..target.spins {
            crate::primitive::spin_hint();
            if let Some(r) = check(Check::Spin) {
                self.done(target);
                return Poll::Ready(r);
            }
        }
        loop {
            // Acquire: pairs with the waker's Release bump of the word.
            let seen = target.word.load(Ordering::Acquire);
            if let (Some(s), false) = (target.sleepers, self.counted) {
                // Relaxed + the fence below: the store half of the Dekker
                // pair with the waker's [progress; fence; load count].
                s.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = target.mine {
                    // Relaxed: read only by a reaper after our death (or
                    // our endpoint's drop), which the role lock orders
                    // after everything we did.
                    m.store(1, Ordering::Relaxed);
                }
                self.counted = true;
            }
            fence(Ordering::SeqCst);
            if let Some(r) = check(Check::Normal) {
                self.done(target);
                return Poll::Ready(r);
            }
            if self.reg.as_ref().is_some_and(|r| !registrar.owns(r)) {
                self.reg = None;
            }
            let reg = self
                .reg
                .get_or_insert_with(|| registrar.register(target.word, target.linger));
            if reg.arm(target.word, seen, cx.waker(), self.next_slice) {
                return Poll::Pending;
            }
        }
    }

    /// Leaves: un-counts and unregisters (a lingering word stays in the
    /// waiter thread's table for the endpoint's next future). Called on
    /// completion and by the owner's `Drop` (cancellation), with the
    /// target it polled.
    pub(crate) fn done(&mut self, target: Target<'_>) {
        self.reg = None;
        self.next_slice = None;
        if std::mem::take(&mut self.counted) {
            if let Some(m) = target.mine {
                // Relaxed: as the store above. Cleared before the
                // decrement: a reaper never takes back a count twice.
                m.store(0, Ordering::Relaxed);
            }
            if let Some(s) = target.sleepers {
                // Relaxed: the count is a hint for wakers; a late
                // decrement costs one spurious wake, never a lost one.
                s.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! The bounded spin every future makes before it announces itself.

    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::*;

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// A target on fresh words (leaked: a few bytes per test).
    fn target(spins: u32) -> Target<'static> {
        Target {
            word: Box::leak(Box::new(AtomicU32::new(0))),
            sleepers: Some(Box::leak(Box::new(AtomicU32::new(0)))),
            mine: None,
            slice: Some(Duration::from_secs(1)),
            linger: false,
            spins,
        }
    }

    /// `spins` probes, then the announcement: a condition that comes true
    /// within the spin completes the future without a registration or a
    /// sleeper count (so the waker side skips its FUTEX_WAKE).
    #[test]
    fn spins_before_announcing() {
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        // Ready at the 50th probe of 100.
        let t = target(100);
        let mut park = Park::default();
        let mut probes = 0;
        let r = park.poll(&mut cx, t, |how| match how {
            Check::Spin => {
                probes += 1;
                (probes == 50).then_some(())
            }
            _ => None,
        });
        assert_eq!(r, Poll::Ready(()));
        assert_eq!(probes, 50);
        assert!(!park.is_waiting());
        assert_eq!(t.sleepers.unwrap().load(Ordering::Relaxed), 0);
        // Never ready: exactly `spins` probes, then pending and counted.
        let mut park = Park::default();
        let mut probes = 0;
        let r: Poll<()> = park.poll(&mut cx, t, |how| {
            if how == Check::Spin {
                probes += 1;
            }
            None
        });
        assert!(r.is_pending());
        assert_eq!(probes, 100);
        assert!(park.is_waiting());
        assert_eq!(t.sleepers.unwrap().load(Ordering::Relaxed), 1);
        park.done(t);
        assert_eq!(t.sleepers.unwrap().load(Ordering::Relaxed), 0);
        // `Sleep` strategy: no probe at all.
        let t0 = target(0);
        let mut park = Park::default();
        let mut probes = 0;
        let r: Poll<()> = park.poll(&mut cx, t0, |how| {
            if how == Check::Spin {
                probes += 1;
            }
            None
        });
        assert!(r.is_pending());
        assert_eq!(probes, 0);
        park.done(t0);
    }

    /// The spin budget follows the endpoint's strategy, capped.
    #[test]
    fn spin_budget_follows_the_strategy() {
        use crate::channel::WaitStrategy;
        assert_eq!(spins_for(WaitStrategy::Sleep), 0);
        assert_eq!(spins_for(WaitStrategy::SpinThenSleep { spins: 77 }), 77);
        assert_eq!(
            spins_for(WaitStrategy::SpinThenSleep { spins: u32::MAX }),
            MAX_SPINS
        );
        assert_eq!(spins_for(WaitStrategy::BusyPoll), MAX_SPINS);
    }
}
