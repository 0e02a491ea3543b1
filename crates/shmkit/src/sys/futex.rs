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
    //! The futex as loom sees it: as strong as the kernel's, no stronger.
    //!
    //! - One wait queue per word, under one lock that `wait` and `wake`
    //!   both take (the kernel's hash-bucket lock): the value check and the
    //!   enqueue are atomic with respect to `wake`.
    //! - `wake(n)` wakes exactly `min(n, queued)` waiters of that word, in
    //!   queue order (the kernel's order for equal priorities), and returns
    //!   how many. A waker that should have woken two but woke one is a
    //!   deadlock loom reports.
    //! - A wait with a deadline enqueues, then lets the other threads run
    //!   (a yield: loom explores how far they get), then dequeues: woken if
    //!   a `wake` picked it meanwhile, else timed out. So "woken" and "the
    //!   timer fired first" are both explored, including a timer that fires
    //!   while a waker runs. As in the kernel, a waiter that was picked
    //!   reports `Woken` even if its time is up.
    //! - No spurious wake-ups are generated (callers must tolerate them,
    //!   but a model that needs one to make progress is wrong).

    use std::time::Instant;

    use loom::sync::{Condvar, Mutex};

    use super::WaitOutcome;
    use crate::primitive::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Queues {
        next_id: u64,
        /// Sleeping waiters: (word address, ticket), oldest first.
        queued: Vec<(usize, u64)>,
        /// Tickets picked by a `wake`, not yet collected by their waiter.
        woken: Vec<u64>,
    }

    impl Queues {
        fn collect(&mut self, id: u64) -> bool {
            match self.woken.iter().position(|&w| w == id) {
                Some(i) => {
                    self.woken.swap_remove(i);
                    true
                }
                None => false,
            }
        }
    }

    loom::lazy_static! {
        static ref BUCKET: (Mutex<Queues>, Condvar) = (Mutex::new(Queues::default()), Condvar::new());
    }

    fn addr(word: &AtomicU32) -> usize {
        word as *const AtomicU32 as usize
    }

    pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> WaitOutcome {
        let mut q = BUCKET.0.lock().unwrap();
        // The kernel reads the word with no ordering of its own; the bucket
        // lock provides the happens-before with `wake`.
        if word.load(Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        let id = q.next_id;
        q.next_id += 1;
        q.queued.push((addr(word), id));
        if deadline.is_some() {
            drop(q);
            // The timer runs while others do.
            loom::thread::yield_now();
            let mut q = BUCKET.0.lock().unwrap();
            if q.collect(id) {
                return WaitOutcome::Woken;
            }
            q.queued.retain(|&(_, t)| t != id);
            return WaitOutcome::TimedOut;
        }
        loop {
            q = BUCKET.1.wait(q).unwrap();
            if q.collect(id) {
                return WaitOutcome::Woken;
            }
        }
    }

    pub fn wake(word: &AtomicU32, n: u32) -> usize {
        let mut q = BUCKET.0.lock().unwrap();
        let a = addr(word);
        let mut picked = Vec::new();
        q.queued.retain(|&(w, id)| {
            if w == a && picked.len() < n as usize {
                picked.push(id);
                false
            } else {
                true
            }
        });
        let count = picked.len();
        q.woken.extend(picked);
        if count != 0 {
            BUCKET.1.notify_all();
        }
        count
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
