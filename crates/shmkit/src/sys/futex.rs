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

/// Most words one [`waitv`] call can wait on (the kernel's
/// `FUTEX_WAITV_MAX`).
pub const WAITV_MAX: usize = 128;

/// Why [`waitv`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitvOutcome {
    /// Woken through the word at this index.
    Woken(usize),
    /// A word differed from its expected value, a signal, or another
    /// reason to re-check every word.
    Changed,
    /// The deadline passed.
    TimedOut,
    /// The kernel has no `futex_waitv` (Linux < 5.16).
    Unsupported,
    /// A word's address is not mapped (see [`is_mapped`]).
    Fault,
}

#[cfg(not(loom))]
mod imp {
    use std::time::Instant;

    use rustix::io::Errno;
    use rustix::thread::futex;

    use super::{WaitOutcome, WaitvOutcome};
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

    /// Whether `addr` is a mapped, aligned futex address: a `FUTEX_WAKE`
    /// of zero waiters, which the kernel answers with `EFAULT` otherwise.
    pub fn is_mapped(addr: *const AtomicU32) -> bool {
        // SAFETY: the kernel validates the address (it never faults the
        // caller); waking zero waiters has no effect on anyone.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                addr,
                libc::FUTEX_WAKE,
                0u32,
                0usize,
                0usize,
                0u32,
            )
        };
        rc >= 0
    }

    /// Reads the `u32` at `addr` through the kernel (`process_vm_readv` on
    /// ourselves): `None` if it is not mapped or the call is not allowed
    /// (seccomp profiles may forbid it).
    pub fn peek(addr: *const AtomicU32) -> Option<u32> {
        let mut v = 0u32;
        let local = libc::iovec {
            iov_base: (&mut v as *mut u32).cast(),
            iov_len: 4,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 4,
        };
        // Our pid from the per-process cache (reset in a forked child):
        // the async waiter thread peeks on every wake-up, and a `getpid`
        // each time was one system call more per wake. Should the cache be
        // wrong (a child made by a raw `clone` that skipped libc's fork
        // handlers), the kernel reads the parent, or refuses (`None`): a
        // value from the same shared segment or a spurious re-check, never
        // a fault or a write.
        let pid = crate::sys::process::cached_pid() as libc::pid_t;
        // SAFETY: `local` is 4 writable bytes of ours; the kernel reads
        // `remote` with fault handling (EFAULT, never a signal).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        (n == 4).then_some(v)
    }

    /// `futex_waitv` on `(word, expected)` pairs (shared, 32-bit).
    pub fn waitv(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> WaitvOutcome {
        use rustix::time::ClockId;
        let mut v = [futex::Wait::new(); super::WAITV_MAX];
        let n = words.len().min(super::WAITV_MAX);
        for (w, &(word, expected)) in v.iter_mut().zip(&words[..n]) {
            w.val = u64::from(expected);
            w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
            // Shared (not PRIVATE): the wakers are other processes.
            w.flags = futex::WaitFlags::SIZE_U32;
        }
        // The timeout of futex_waitv is absolute, on CLOCK_MONOTONIC (the
        // clock `Instant` reads on Linux): convert through "now".
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            let now = rustix::time::clock_gettime(ClockId::Monotonic);
            let mut sec = now.tv_sec.saturating_add(left.as_secs() as i64);
            let mut nsec = now.tv_nsec + i64::from(left.subsec_nanos());
            if nsec >= 1_000_000_000 {
                sec = sec.saturating_add(1);
                nsec -= 1_000_000_000;
            }
            futex::Timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        });
        match futex::waitv(
            &v[..n],
            futex::WaitvFlags::empty(),
            ts.as_ref(),
            ClockId::Monotonic,
        ) {
            Ok(i) => WaitvOutcome::Woken(i),
            Err(Errno::AGAIN) | Err(Errno::INTR) => WaitvOutcome::Changed,
            Err(Errno::TIMEDOUT) => WaitvOutcome::TimedOut,
            Err(Errno::NOSYS) => WaitvOutcome::Unsupported,
            Err(Errno::FAULT) => WaitvOutcome::Fault,
            Err(_) => WaitvOutcome::Changed,
        }
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
        /// Tickets picked by a `wake` (with the word woken through), not
        /// yet collected by their waiter.
        woken: Vec<(u64, usize)>,
    }

    impl Queues {
        /// The word `id` was woken through, if it was.
        fn collect(&mut self, id: u64) -> Option<usize> {
            let i = self.woken.iter().position(|&(w, _)| w == id)?;
            Some(self.woken.swap_remove(i).1)
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
            if q.collect(id).is_some() {
                return WaitOutcome::Woken;
            }
            q.queued.retain(|&(_, t)| t != id);
            return WaitOutcome::TimedOut;
        }
        loop {
            q = BUCKET.1.wait(q).unwrap();
            if q.collect(id).is_some() {
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
        // A `waitv` sleeper is queued on several words with one ticket:
        // once picked through one, it leaves the others' queues.
        q.queued.retain(|&(_, id)| !picked.contains(&id));
        let count = picked.len();
        q.woken.extend(picked.into_iter().map(|id| (id, a)));
        if count != 0 {
            BUCKET.1.notify_all();
        }
        count
    }

    /// Model: not used.
    pub fn peek(_addr: *const AtomicU32) -> Option<u32> {
        None
    }

    /// Model: every address is mapped.
    pub fn is_mapped(_addr: *const AtomicU32) -> bool {
        true
    }

    /// Model `futex_waitv`, as strong as the kernel's and no stronger, like
    /// `wait`: under the bucket lock, a word that already differs gives
    /// `Changed` (EAGAIN); otherwise one ticket is queued on every word, a
    /// `wake` of any of them picks it once, and the waiter reports
    /// `Woken(i)` for the word it was woken through. A deadline is explored
    /// as in `wait` (woken, or timed out while others ran).
    pub fn waitv(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> super::WaitvOutcome {
        let mut q = BUCKET.0.lock().unwrap();
        if words
            .iter()
            .any(|&(word, expected)| word.load(Ordering::Relaxed) != expected)
        {
            return super::WaitvOutcome::Changed;
        }
        let id = q.next_id;
        q.next_id += 1;
        for &(word, _) in words {
            q.queued.push((addr(word), id));
        }
        let index = |a: usize| {
            super::WaitvOutcome::Woken(words.iter().position(|&(w, _)| addr(w) == a).unwrap_or(0))
        };
        if deadline.is_some() {
            drop(q);
            loom::thread::yield_now();
            let mut q = BUCKET.0.lock().unwrap();
            if let Some(a) = q.collect(id) {
                return index(a);
            }
            q.queued.retain(|&(_, t)| t != id);
            return super::WaitvOutcome::TimedOut;
        }
        loop {
            q = BUCKET.1.wait(q).unwrap();
            if let Some(a) = q.collect(id) {
                return index(a);
            }
        }
    }
}

/// Sleeps in the kernel while `*word == expected`, until woken, a signal
/// arrives, or `deadline` passes. Spurious returns are possible: callers
/// loop and re-check their own condition.
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> WaitOutcome {
    imp::wait(word, expected, deadline)
}

/// Sleeps until one of `words` (at most [`WAITV_MAX`], extra ones are
/// ignored) no longer holds its expected value, a wake on one of them, a
/// signal, or `deadline` (Linux >= 5.16, `futex_waitv`). Shared futexes:
/// a plain [`wake`] from another process on any of the words ends it.
#[inline]
pub fn waitv(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> WaitvOutcome {
    imp::waitv(words, deadline)
}

/// The value at `addr` read by the kernel, which fails cleanly if the
/// address is not mapped (`None`, also where the call is forbidden): for
/// the async waiter thread, which must never load a word whose endpoint a
/// leaked future may have let go.
#[inline]
pub fn peek(addr: *const AtomicU32) -> Option<u32> {
    imp::peek(addr)
}

/// Whether `addr` can be waited on (mapped and aligned), asked of the
/// kernel without touching it: used to find a stale address after
/// [`WaitvOutcome::Fault`].
#[inline]
pub fn is_mapped(addr: *const AtomicU32) -> bool {
    imp::is_mapped(addr)
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `peek` reads this process's memory, also in a forked child (whose
    /// private copy differs from the parent's: a pid cache that survived
    /// the fork would read the parent's value), and says `None` for an
    /// unmapped address.
    #[test]
    fn peek_reads_our_own_memory_even_in_a_forked_child() {
        let word = Box::new(AtomicU32::new(7));
        assert_eq!(peek(&*word), Some(7));
        // SAFETY: anonymous private mapping of one page, unmapped at once;
        // only its (now invalid) address is used, never dereferenced.
        let gone = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::munmap(p, 4096);
            p as *const AtomicU32
        };
        assert_eq!(peek(gone), None);
        // SAFETY: the child only stores to an atomic, calls `peek` (atomic
        // loads, `getpid`, `process_vm_readv`) and `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            word.store(9, std::sync::atomic::Ordering::Relaxed);
            let ok = peek(&*word) == Some(9);
            // SAFETY: ends the forked child without running Rust cleanup.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's peek read another process"
        );
        assert_eq!(peek(&*word), Some(7));
    }
}
