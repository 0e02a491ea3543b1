//! How a blocked endpoint waits, and how the other side wakes it.
//!
//! # The sleeper protocol
//!
//! Every direction of a channel has a futex word (`word`, an event
//! counter) and a sleeper count (`sleepers`). A waiter that decides to
//! sleep:
//!
//! 1. reads `word` (the value it will sleep on),
//! 2. increments `sleepers`, then a `SeqCst` fence,
//! 3. re-checks its condition (the ring's index, the pool's refs),
//! 4. sleeps with `futex::wait(word, seen, slice)` and decrements
//!    `sleepers` when it wakes.
//!
//! The side that makes progress stores its index (`Release`), then a
//! `SeqCst` fence, then reads `sleepers`; only when it is non-zero does it
//! bump `word` and call `futex::wake_all`. The two fences make this the
//! store-buffering (Dekker) pattern: either the waiter's re-check (3) sees
//! the new index, or the notifier's load sees the waiter's increment (2).
//! If the notifier's bump of `word` lands between (1) and (4), the futex
//! sees a changed word and returns at once. So a sleeper is never lost,
//! and a side nobody sleeps on never makes a system call.
//!
//! Sleeps are cut in slices of [`SLICE`]: after each slice the waiter
//! re-checks the peer's liveness, so the death of a process that would
//! have woken us is noticed within a slice, not never.
//!
//! # Arming (rings): no fence while nobody has ever slept
//!
//! The `SeqCst` fence of `notify` costs the notifier a store-buffer drain
//! per message (it halved the spinning ring's 8-byte stream rate). A ring
//! direction therefore has a third word, `armed`, and uses
//! `notify_armed` / `wait_loop_armed`:
//!
//! | `armed` | meaning |
//! |---|---|
//! | `UNARMED` | no waiter has ever got ready to sleep: notifiers store their index and nothing else (no fence, no `sleepers` load) |
//! | `ARMED` | a waiter is ready to sleep, no notifier has acknowledged it yet |
//! | `ACKED` (or any other value) | a notifier saw the waiter: every notify from now on runs the full sleeper protocol above |
//!
//! - A waiter arms (`UNARMED` → `ARMED`) before its first sleep; an async
//!   ring future arms in each poll that may park (it then sleeps through
//!   the reactor, in the slices `arm` returns). A [`Wait::No`] call
//!   (`try_recv`, `try_send`) never sleeps and so never arms: a user
//!   spinning on `try_recv` keeps the fence-free path.
//! - A notifier loads `armed` (`Relaxed`) after its index store. When it is
//!   not `UNARMED`, it runs `notify` (fence, `sleepers`), then, unless it
//!   read `ACKED`, stores `ACKED` with `Release`.
//! - A notifier that loaded `UNARMED` may have raced with the arming (the
//!   store-buffering pattern again, now without fences) and skipped a
//!   sleeper. So a waiter trusts the sleeper protocol only after it loads
//!   `ACKED` (`Acquire`): that load makes every index store the notifier
//!   made before acknowledging visible to the waiter's re-check, and every
//!   notify after the acknowledgement runs the full protocol (the word is
//!   never lowered, and a notifier's later loads see at least what it
//!   stored). Until then the waiter sleeps in short slices (`ARM_SLICE`,
//!   doubling per sleep up to [`SLICE`]): the one wake-up the race can
//!   lose costs at most such a slice, once per ring (the word is sticky).
//! - Hostile values: anything but `UNARMED` makes notifiers run the full
//!   protocol; a waiter trusts only `ACKED`. A process that lowers the
//!   word can only delay a sleeper to the end of its slice, never hang it.
//!
//! So an endpoint pair that never sleeps (both [`WaitStrategy::BusyPoll`],
//! blocking calls only) never pays a fence per message; one that ever
//! sleeps pays what it paid before, forever after.

use std::time::{Duration, Instant};

use crate::primitive::{fence, now, spin_hint, AtomicU32, Ordering};
use crate::sys::futex;

/// Longest a waiter sleeps before it re-checks the peer's liveness.
pub const SLICE: Duration = Duration::from_millis(20);

/// `armed`: no waiter of this direction has ever got ready to sleep.
pub(crate) const UNARMED: u32 = 0;
/// `armed`: a waiter is ready to sleep, not yet acknowledged.
pub(crate) const ARMED: u32 = 1;
/// `armed`: a notifier acknowledged; every notify runs the full protocol.
pub(crate) const ACKED: u32 = 2;

/// First sleep of a waiter whose arming is not yet acknowledged; each
/// further unacknowledged sleep doubles it, up to [`SLICE`].
pub(crate) const ARM_SLICE: Duration = Duration::from_micros(100);

/// How an endpoint waits when it cannot make progress (empty on receive,
/// full on send). Chosen per endpoint; the other side need not agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the shared index without ever sleeping: lowest latency,
    /// one core at 100 % while waiting. Liveness and the deadline are
    /// still checked every few thousand spins.
    BusyPoll,
    /// Spin `spins` times, then sleep on the futex.
    SpinThenSleep {
        /// Spin iterations (each a `spin_loop` hint and one shared load).
        spins: u32,
    },
    /// Sleep on the futex at once: zero CPU while idle.
    Sleep,
}

impl Default for WaitStrategy {
    /// `SpinThenSleep { spins: 200 }`: a short spin (about a microsecond)
    /// catches back-to-back messages, then zero CPU.
    fn default() -> Self {
        WaitStrategy::SpinThenSleep { spins: 200 }
    }
}

/// How long a blocking operation may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Do not wait (the `try_` forms).
    No,
    /// Wait until this instant (the `_timeout` and `_deadline` forms).
    Until(Instant),
    /// Wait as long as it takes (the plain forms).
    Forever,
}

impl Wait {
    /// A wait of at most `timeout` from now (saturating far in the future).
    pub fn timeout(timeout: Duration) -> Wait {
        match Instant::now().checked_add(timeout) {
            Some(d) => Wait::Until(d),
            None => Wait::Forever,
        }
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::No => Some(now()),
            Wait::Until(d) => Some(d),
            Wait::Forever => None,
        }
    }
}

/// Wakes the sleepers of one direction, if there are any.
///
/// Call after the `Release` store that made progress visible.
#[inline]
pub(crate) fn notify(word: &AtomicU32, sleepers: &AtomicU32) {
    // SeqCst fence: pairs with the fence in `wait_loop` after a sleeper
    // increments `sleepers` (Dekker): either it re-checks and sees our
    // store, or we see its count here.
    fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence above.
    if sleepers.load(Ordering::Relaxed) != 0 {
        wake(word);
    }
}

/// [`notify`] for a direction with an `armed` word (see "Arming"): only
/// a `Relaxed` load while nobody has ever got ready to sleep.
///
/// Call after the `Release` store that made progress visible.
#[inline]
pub(crate) fn notify_armed(word: &AtomicU32, sleepers: &AtomicU32, armed: &AtomicU32) {
    // Relaxed: a stale `UNARMED` here is the race the acknowledgement
    // covers (a waiter that has not loaded `ACKED` sleeps only briefly).
    let a = armed.load(Ordering::Relaxed);
    if a != UNARMED {
        notify_acked(word, sleepers, armed, a);
    }
}

/// The armed notify: the full sleeper protocol, then the acknowledgement.
#[cold]
#[inline(never)]
fn notify_acked(word: &AtomicU32, sleepers: &AtomicU32, armed: &AtomicU32, seen: u32) {
    notify(word, sleepers);
    if seen != ACKED {
        // Release: pairs with the waiter's Acquire load of `ACKED` in
        // `arm`: our index stores before this one are visible to its
        // re-check (the SeqCst fence in `notify` just before would do as
        // well; Release says it here). Our later notifies load a
        // non-`UNARMED` value (coherence: nobody honest lowers the word)
        // and so run the full protocol above.
        armed.store(ACKED, Ordering::Release);
    }
}

/// Before a sleep (blocking, or an async future's poll) on an armed
/// direction: arms it if needed and returns how long this waiter may
/// sleep: [`SLICE`] once acknowledged, else `ARM_SLICE << unacked`
/// (capped), counting `unacked` up.
pub(crate) fn arm(armed: &AtomicU32, unacked: &mut u32) -> Duration {
    // Acquire: pairs with the Release store of `ACKED` in `notify_acked`
    // (see there); our re-check after this load sees every index store
    // made before the acknowledgement.
    let a = armed.load(Ordering::Acquire);
    if a == ACKED {
        return SLICE;
    }
    if a == UNARMED {
        // Relaxed: this store publishes nothing; it only asks notifiers
        // to run the full protocol, which we trust only once acknowledged.
        // A failed exchange means someone else moved the word on: fine.
        let _ = armed.compare_exchange(UNARMED, ARMED, Ordering::Relaxed, Ordering::Relaxed);
    }
    let slice = ARM_SLICE.saturating_mul(1 << (*unacked).min(10));
    *unacked = unacked.saturating_add(1);
    slice.min(SLICE)
}

#[cold]
#[inline(never)]
pub(crate) fn wake(word: &AtomicU32) {
    // Release: a sleeper that reads the new value (Acquire in wait_loop)
    // also sees the progress stored before `notify`.
    word.fetch_add(1, Ordering::Release);
    futex::wake_all(word);
}

/// Waits until `poll` returns `Some`, following `strategy`.
///
/// - `poll` checks the condition (cheap, no system call); `Some(r)` ends
///   the wait with `r`.
/// - `check` is the slow check (peer liveness, a system call): run about
///   once per [`SLICE`], after a wake-up that brought nothing, and once for
///   [`Wait::No`]; `Some(r)` ends the wait with `r`.
///
/// Returns `None` when `wait`'s deadline passes first.
pub(crate) fn wait_loop<R>(
    strategy: WaitStrategy,
    wait: Wait,
    word: &AtomicU32,
    sleepers: &AtomicU32,
    poll: impl FnMut() -> Option<R>,
    check: impl FnMut() -> Option<R>,
) -> Option<R> {
    wait_loop_marked(strategy, wait, word, sleepers, None, poll, check)
}

/// [`wait_loop`], also flagging each sleep in `mine` (a word only this
/// waiter writes while alive), so that whoever reaps this waiter after its
/// death can take its count back out of `sleepers` (see [`sleep_once`]).
pub(crate) fn wait_loop_marked<R>(
    strategy: WaitStrategy,
    wait: Wait,
    word: &AtomicU32,
    sleepers: &AtomicU32,
    mine: Option<&AtomicU32>,
    poll: impl FnMut() -> Option<R>,
    check: impl FnMut() -> Option<R>,
) -> Option<R> {
    wait_loop_inner(strategy, wait, word, sleepers, mine, None, poll, check)
}

/// [`wait_loop`] for a direction whose notifiers use [`notify_armed`]:
/// arms `armed` before sleeping, and sleeps in short slices until a
/// notifier acknowledged (see "Arming").
pub(crate) fn wait_loop_armed<R>(
    strategy: WaitStrategy,
    wait: Wait,
    word: &AtomicU32,
    sleepers: &AtomicU32,
    armed: &AtomicU32,
    poll: impl FnMut() -> Option<R>,
    check: impl FnMut() -> Option<R>,
) -> Option<R> {
    wait_loop_inner(
        strategy,
        wait,
        word,
        sleepers,
        None,
        Some(armed),
        poll,
        check,
    )
}

#[allow(clippy::too_many_arguments)]
fn wait_loop_inner<R>(
    strategy: WaitStrategy,
    wait: Wait,
    word: &AtomicU32,
    sleepers: &AtomicU32,
    mine: Option<&AtomicU32>,
    armed: Option<&AtomicU32>,
    mut poll: impl FnMut() -> Option<R>,
    mut check: impl FnMut() -> Option<R>,
) -> Option<R> {
    if let Some(r) = poll() {
        return Some(r);
    }
    let deadline = wait.deadline();
    let expired = |now: Instant| deadline.is_some_and(|d| now >= d);
    let mut unacked = 0;
    if wait == Wait::No {
        // Never sleeps, so never arms (the async futures arm themselves).
        return check();
    }
    let spins = match strategy {
        WaitStrategy::BusyPoll => u64::MAX,
        WaitStrategy::SpinThenSleep { spins } => u64::from(spins),
        WaitStrategy::Sleep => 0,
    };
    let mut next_check = now() + SLICE;
    let mut i: u64 = 0;
    while i < spins {
        spin_hint();
        if let Some(r) = poll() {
            return Some(r);
        }
        i += 1;
        if i % 1024 == 0 {
            let t = now();
            if t >= next_check {
                if let Some(r) = check() {
                    return Some(r);
                }
                next_check = t + SLICE;
            }
            if expired(t) {
                return poll();
            }
        }
    }
    // No liveness check before the first sleep: it would put a system call
    // on every blocking hand-off. A peer that is already gone is noticed
    // after one slice, or at once if it woke us when it closed.
    loop {
        let t = now();
        if expired(t) {
            return poll();
        }
        let slice = armed.map_or(SLICE, |a| arm(a, &mut unacked));
        let slice_end = t + slice;
        let until = deadline.map_or(slice_end, |d| d.min(slice_end));
        let outcome = match sleep_once_marked(word, sleepers, mine, &mut poll, Some(until)) {
            Ok(r) => return Some(r),
            Err(outcome) => outcome,
        };
        if let Some(r) = poll() {
            return Some(r);
        }
        let t = now();
        // Woken without a message: a close, a death notice or a signal.
        if t >= next_check || outcome == futex::WaitOutcome::Woken {
            if let Some(r) = check() {
                return Some(r);
            }
            next_check = t + SLICE;
        }
        if expired(t) {
            return poll();
        }
    }
}

/// One announced sleep: returns `Ok` if `poll` succeeds after the
/// announcement (no sleep then), else sleeps on `word` until woken or
/// `until` and returns how the sleep ended (the caller polls again).
#[allow(dead_code)] // the models call it; endpoints go through `wait_loop`
pub(crate) fn sleep_once<R>(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    poll: &mut impl FnMut() -> Option<R>,
    until: Option<Instant>,
) -> Result<R, futex::WaitOutcome> {
    sleep_once_marked(word, sleepers, None, poll, until)
}

/// [`sleep_once`], with `mine` set to 1 while this waiter is counted in
/// `sleepers`: set after the increment, cleared before the decrement. A
/// waiter killed in between leaves `mine == 1` and one count in
/// `sleepers`; a reaper that finds `mine == 1` (see
/// [`take_back_sleeper`]) removes both. Killed outside that window, it
/// leaves at most an over-count (one spurious wake per notify, as before),
/// never an under-count, which could lose a live sleeper's wake-up.
pub(crate) fn sleep_once_marked<R>(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    mine: Option<&AtomicU32>,
    poll: &mut impl FnMut() -> Option<R>,
    until: Option<Instant>,
) -> Result<R, futex::WaitOutcome> {
    // Acquire: pairs with the Release bump in `wake`.
    let seen = word.load(Ordering::Acquire);
    // SeqCst, then the fence: pairs with the fence in `notify`.
    sleepers.fetch_add(1, Ordering::SeqCst);
    if let Some(m) = mine {
        // Relaxed: read only by a reaper after our death, which the role
        // lock (kernel) orders after everything we did.
        m.store(1, Ordering::Relaxed);
    }
    fence(Ordering::SeqCst);
    let r = match poll() {
        Some(r) => Ok(r),
        None => Err(futex::wait(word, seen, until)),
    };
    if let Some(m) = mine {
        // Relaxed: as above.
        m.store(0, Ordering::Relaxed);
    }
    // Relaxed: the count is only a hint for notifiers; a stale non-zero
    // value costs one spurious wake, never a lost one.
    sleepers.fetch_sub(1, Ordering::Relaxed);
    r
}

/// Reaper of a dead waiter (holding its role lock, so the waiter cannot
/// run): if it died counted in `sleepers` (`mine == 1`, see
/// [`sleep_once_marked`]), takes that count back out, so notifiers stop
/// paying a futex wake per message for a sleeper that is gone. Returns
/// whether it did. Never takes `sleepers` below zero (hostile memory).
pub(crate) fn take_back_sleeper(sleepers: &AtomicU32, mine: &AtomicU32) -> bool {
    // Relaxed: the waiter is dead or has not started (we hold its role
    // lock); the kernel's lock hand-over orders its last writes before us.
    if mine.swap(0, Ordering::Relaxed) == 0 {
        return false;
    }
    // Relaxed: a hint count (see `sleep_once`); the RMW keeps concurrent
    // live sleepers' increments and decrements intact.
    sleepers
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}
