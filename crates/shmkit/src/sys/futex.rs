//! Futex wait and wake on a 32-bit word, shared between processes.
//!
//! Exactly three operations, as in std's `sys/pal/unix/futex.rs`:
//! [`wait`], [`wake`] and [`wake_all`]. Unlike std and parking_lot these
//! never pass `FUTEX_PRIVATE_FLAG`: the word lives in a `MAP_SHARED`
//! mapping and the waker is usually another process, which a private futex
//! would never find.
//!
//! Under `cfg(loom)` the same functions are a model built from a loom mutex
//! and condition variable, so algorithms that sleep on a futex can be model
//! checked unchanged.

use std::time::Instant;

use crate::primitive::AtomicU32;

/// Why [`wait`] returned. Callers always re-check their condition: a wait
/// may also end because the word changed, or spuriously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken, value changed before we slept, or interrupted: re-check.
    Woken,
    /// The deadline passed.
    TimedOut,
}

#[cfg(not(loom))]
mod imp {
    use std::time::Instant;

    use rustix::io::Errno;
    use rustix::thread::futex;

    use super::WaitOutcome;
    use crate::primitive::AtomicU32;

    /// Sleeps while `*word == expected`, until woken or `deadline` passes.
    pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> WaitOutcome {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if d <= now {
                    return WaitOutcome::TimedOut;
                }
                let left = d - now;
                Some(rustix::thread::futex::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        // Shared (not PRIVATE): the waker may be another process.
        match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
            Ok(()) => WaitOutcome::Woken,
            // EAGAIN: the word already differed; EINTR: a signal. Both mean
            // "look again", which every caller does in a loop.
            Err(Errno::AGAIN) | Err(Errno::INTR) => WaitOutcome::Woken,
            Err(Errno::TIMEDOUT) => WaitOutcome::TimedOut,
            // EFAULT/EINVAL cannot happen for an aligned word in a live
            // mapping; treat as spurious so callers re-check their state.
            Err(_) => WaitOutcome::Woken,
        }
    }

    /// Wakes at most `n` waiters sleeping on `word`; returns how many woke.
    pub fn wake(word: &AtomicU32, n: u32) -> usize {
        futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
    }
}

#[cfg(loom)]
mod imp {
    use std::time::Instant;

    use loom::sync::{Condvar, Mutex};

    use super::WaitOutcome;
    use crate::primitive::{AtomicU32, Ordering};

    loom::lazy_static! {
        static ref BUCKET: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    /// Model futex wait: the value check and the sleep happen under one
    /// lock that `wake` also takes, as the kernel's hash-bucket lock does.
    /// A wait with a deadline models "the timer fired": it never sleeps.
    pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> WaitOutcome {
        let guard = BUCKET.0.lock().unwrap();
        // The kernel reads the word with no ordering of its own; the bucket
        // lock provides the happens-before with `wake`.
        if word.load(Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        if deadline.is_some() {
            return WaitOutcome::TimedOut;
        }
        drop(BUCKET.1.wait(guard).unwrap());
        WaitOutcome::Woken
    }

    /// Model futex wake: wakes every model sleeper (spurious wake-ups are
    /// allowed by the futex contract, so this over-approximates `n`).
    pub fn wake(_word: &AtomicU32, _n: u32) -> usize {
        let _guard = BUCKET.0.lock().unwrap();
        BUCKET.1.notify_all();
        1
    }
}

/// Sleeps in the kernel while `*word == expected`, until woken, a signal
/// arrives, or `deadline` passes. Spurious returns are possible: callers
/// loop and re-check their own condition.
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> WaitOutcome {
    imp::wait(word, expected, deadline)
}

/// Wakes one waiter sleeping on `word`. Returns how many were woken.
#[inline]
pub fn wake(word: &AtomicU32) -> usize {
    imp::wake(word, 1)
}

/// Wakes every waiter sleeping on `word`. Returns how many were woken.
#[inline]
pub fn wake_all(word: &AtomicU32) -> usize {
    imp::wake(word, i32::MAX as u32)
}
