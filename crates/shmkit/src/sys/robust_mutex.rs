//! A robust, process-shared lock: glibc's `pthread_mutex_t` with
//! `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`.
//!
//! The kernel does the owner-death work: glibc links every robust mutex a
//! thread holds into that thread's robust list (`set_robust_list(2)`); when
//! the thread dies, SIGKILL included, the kernel walks the list, sets
//! `FUTEX_OWNER_DIED` in each lock word and wakes one waiter, who then gets
//! `EOWNERDEAD`. No polling, no timeouts, no pid reuse races.
//!
//! The surface is small and errno-free: [`RobustMutex::lock`],
//! [`RobustMutex::try_lock`], [`RobustMutex::unlock`],
//! [`RobustMutex::make_consistent`], all returning [`Outcome`].
//!
//! Under `cfg(loom)` the same type is a model of what glibc and the kernel
//! do together (lock word with an owner-died state, a dead owner's lock
//! handed to the next locker with `OwnerDied`, unlock without
//! `make_consistent` turning the lock unrecoverable), so the state machine
//! built on top in [`crate::sync::Mutex`] is model checked unchanged.
//!
//! Portability seam: macOS has no robust mutexes (a futex-word lock with an
//! owner pid and liveness checks would replace this file); Windows reports
//! a dead owner as `WAIT_ABANDONED` on a named mutex.

/// What a lock or unlock call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The lock is ours (or, for `unlock`/`make_consistent`, done).
    Ok,
    /// The lock is ours, but its previous owner died holding it: the data
    /// it protects may be inconsistent (`EOWNERDEAD`).
    OwnerDied,
    /// A previous owner-died holder unlocked without making it consistent;
    /// the lock can never be taken again (`ENOTRECOVERABLE`).
    NotRecoverable,
    /// `try_lock` only: someone else holds it (`EBUSY`).
    WouldBlock,
    /// The deadline passed (`ETIMEDOUT`).
    TimedOut,
    /// This thread already holds it (detected before sleeping).
    Deadlock,
    /// Unlock of a lock this thread does not hold (`EPERM`).
    NotOwner,
    /// The lock object is damaged (`EINVAL` or an unknown errno).
    Invalid(i32),
}

/// Lock-word bits of the kernel's robust-futex ABI (`linux/futex.h`): the
/// word holds the owner's thread id, plus these flags.
pub mod word {
    /// Some thread sleeps in the kernel on this word.
    pub const WAITERS: u32 = 0x8000_0000;
    /// The owner died; set by the kernel at thread exit.
    pub const OWNER_DIED: u32 = 0x4000_0000;
    /// Owner thread id bits.
    pub const TID_MASK: u32 = 0x3fff_ffff;
}

#[cfg(not(loom))]
mod imp {
    use std::cell::UnsafeCell;
    use std::time::Instant;

    use super::Outcome;

    extern "C" {
        // glibc >= 2.30; not (yet) in the libc crate. Like
        // pthread_mutex_timedlock, but on a clock we choose: MONOTONIC, so
        // wall-clock jumps do not stretch or shorten a timeout.
        fn pthread_mutex_clocklock(
            mutex: *mut libc::pthread_mutex_t,
            clockid: libc::clockid_t,
            abstime: *const libc::timespec,
        ) -> libc::c_int;
    }

    /// A robust process-shared pthread mutex, to be placed in shared
    /// memory and initialised there with [`RobustMutex::init`].
    #[repr(C)]
    pub struct RobustMutex {
        inner: UnsafeCell<libc::pthread_mutex_t>,
    }

    // SAFETY: a process-shared pthread mutex is designed to be used from
    // any thread of any process; all access goes through pthread calls.
    unsafe impl Sync for RobustMutex {}
    // SAFETY: as above; it holds no thread-local state.
    unsafe impl Send for RobustMutex {}

    fn outcome(rc: libc::c_int) -> Outcome {
        match rc {
            0 => Outcome::Ok,
            libc::EOWNERDEAD => Outcome::OwnerDied,
            libc::ENOTRECOVERABLE => Outcome::NotRecoverable,
            libc::EBUSY => Outcome::WouldBlock,
            libc::ETIMEDOUT => Outcome::TimedOut,
            libc::EDEADLK => Outcome::Deadlock,
            libc::EPERM => Outcome::NotOwner,
            e => Outcome::Invalid(e),
        }
    }

    impl RobustMutex {
        /// Initialises a robust, process-shared (type NORMAL) mutex at
        /// `this`.
        ///
        /// # Safety
        ///
        /// `this` must be valid for writes of `size_of::<RobustMutex>()`
        /// bytes, aligned, and no other thread or process may use the
        /// mutex until this returns (it is not yet a mutex).
        pub unsafe fn init(this: *mut RobustMutex) -> Result<(), i32> {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            // SAFETY: `attr` is a local we own; every call gets a valid
            // pointer to it, and it is destroyed before returning. `this`
            // is valid and exclusive by this function's contract.
            unsafe {
                let a = attr.as_mut_ptr();
                let rc = libc::pthread_mutexattr_init(a);
                if rc != 0 {
                    return Err(rc);
                }
                let mut rc = libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED);
                if rc == 0 {
                    rc = libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST);
                }
                // Type NORMAL: relock by the owner is detected by us
                // (`lock_slow`), before glibc would sleep forever.
                if rc == 0 {
                    rc = libc::pthread_mutexattr_settype(a, libc::PTHREAD_MUTEX_NORMAL);
                }
                if rc == 0 {
                    rc = libc::pthread_mutex_init(UnsafeCell::raw_get(&raw const (*this).inner), a);
                }
                libc::pthread_mutexattr_destroy(a);
                if rc != 0 {
                    return Err(rc);
                }
            }
            Ok(())
        }

        fn ptr(&self) -> *mut libc::pthread_mutex_t {
            self.inner.get()
        }

        /// Blocks until the lock is ours or `deadline` passes.
        #[inline]
        pub fn lock(&self, deadline: Option<Instant>) -> Outcome {
            match self.try_lock() {
                Outcome::WouldBlock => self.lock_slow(deadline),
                o => o,
            }
        }

        #[cold]
        fn lock_slow(&self, deadline: Option<Instant>) -> Outcome {
            // A NORMAL robust mutex relocked by its owner would sleep
            // forever: report it instead. The word can only equal our tid
            // if we set it, so this racy read is exact for us.
            if self.peek_word() & super::word::TID_MASK == crate::sys::process::current_tid() {
                return Outcome::Deadlock;
            }
            let Some(deadline) = deadline else {
                // SAFETY: the mutex was initialised by `init` (contract of
                // whoever handed out `&self`) and lives in a mapping that
                // outlives `&self`.
                return outcome(unsafe { libc::pthread_mutex_lock(self.ptr()) });
            };
            // Deadline -> absolute CLOCK_MONOTONIC time (Instant is
            // CLOCK_MONOTONIC on Linux, but opaque, so re-base it).
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            let mut sec = ts.tv_sec.saturating_add(left.as_secs() as libc::time_t);
            let mut nsec = ts.tv_nsec + left.subsec_nanos() as libc::c_long;
            if nsec >= 1_000_000_000 {
                nsec -= 1_000_000_000;
                sec = sec.saturating_add(1);
            }
            let abs = libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            };
            // SAFETY: as in the untimed case; `abs` is a valid timespec.
            // glibc loops on EINTR internally.
            outcome(unsafe { pthread_mutex_clocklock(self.ptr(), libc::CLOCK_MONOTONIC, &abs) })
        }

        /// Takes the lock if it is free (or its owner died).
        ///
        /// Do not call it on a lock known to be not recoverable: glibc 2.36
        /// then leaves the lock word held by us (see the tests).
        #[inline]
        pub fn try_lock(&self) -> Outcome {
            // SAFETY: initialised mutex in a live mapping (see `lock`).
            outcome(unsafe { libc::pthread_mutex_trylock(self.ptr()) })
        }

        /// Releases the lock. After an `OwnerDied` lock without
        /// [`make_consistent`](Self::make_consistent), glibc marks the lock
        /// not recoverable here.
        #[inline]
        pub fn unlock(&self) -> Outcome {
            // SAFETY: initialised mutex in a live mapping (see `lock`).
            outcome(unsafe { libc::pthread_mutex_unlock(self.ptr()) })
        }

        /// Declares the state protected by a lock we got with `OwnerDied`
        /// repaired.
        pub fn make_consistent(&self) -> Outcome {
            // SAFETY: initialised mutex in a live mapping (see `lock`).
            outcome(unsafe { libc::pthread_mutex_consistent(self.ptr()) })
        }

        /// The lock word itself (async waiters set `WAITERS` in it and wait
        /// on it, as glibc's own waiters do).
        #[allow(dead_code)]
        pub fn word(&self) -> &std::sync::atomic::AtomicU32 {
            // SAFETY: as in `peek_word`: 4 bytes, aligned, accessed only
            // atomically by glibc and the kernel; lives as long as `self`.
            unsafe { &*self.ptr().cast::<std::sync::atomic::AtomicU32>() }
        }

        /// The lock word (the kernel robust-futex word, see [`super::word`]),
        /// read without locking, for diagnostics only.
        ///
        /// glibc keeps it as the first 32-bit field (`__lock`) of
        /// `pthread_mutex_t` on every Linux ABI.
        pub fn peek_word(&self) -> u32 {
            let p = self.ptr().cast::<std::sync::atomic::AtomicU32>();
            // SAFETY: the mutex is at least 4 bytes, aligned to 8 (checked
            // by whoever placed it), and glibc accesses `__lock` only
            // atomically, so an atomic load is race free.
            unsafe { (*p).load(std::sync::atomic::Ordering::Relaxed) }
        }
    }
}

#[cfg(loom)]
mod imp {
    use std::time::Instant;

    use super::Outcome;
    use crate::primitive::{AtomicU32, Ordering};
    use crate::sys::futex;

    const FREE: u32 = 0;
    const HELD: u32 = 1;
    /// Free, and its last owner died holding it (kernel set OWNER_DIED).
    const DEAD: u32 = 2;
    const NOT_RECOVERABLE: u32 = 3;

    /// Model of glibc's robust mutex plus the kernel's exit-time robust
    /// list processing. Owner identity is not modelled (loom threads share
    /// one OS thread), so `Deadlock`/`NotOwner` never happen here.
    pub struct RobustMutex {
        word: AtomicU32,
        /// glibc's `__owner == PTHREAD_MUTEX_INCONSISTENT`: taken with
        /// `OwnerDied` and not yet made consistent.
        inconsistent: AtomicU32,
    }

    impl Default for RobustMutex {
        fn default() -> Self {
            RobustMutex::new()
        }
    }

    impl RobustMutex {
        /// A fresh, unlocked model mutex.
        pub fn new() -> RobustMutex {
            RobustMutex {
                word: AtomicU32::new(FREE),
                inconsistent: AtomicU32::new(0),
            }
        }

        fn acquire(&self, w: u32) -> Option<Outcome> {
            match w {
                // Acquire: pairs with the Release store in `unlock`/`die`.
                FREE => self
                    .word
                    .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
                    .ok()
                    .map(|_| Outcome::Ok),
                DEAD => self
                    .word
                    .compare_exchange(DEAD, HELD, Ordering::Acquire, Ordering::Relaxed)
                    .ok()
                    .map(|_| {
                        // Relaxed: only touched by the holder.
                        self.inconsistent.store(1, Ordering::Relaxed);
                        Outcome::OwnerDied
                    }),
                NOT_RECOVERABLE => Some(Outcome::NotRecoverable),
                _ => None,
            }
        }

        /// Model of `pthread_mutex_clocklock`/`lock`.
        pub fn lock(&self, deadline: Option<Instant>) -> Outcome {
            loop {
                // Relaxed: a guess; the CAS in `acquire` orders.
                let w = self.word.load(Ordering::Relaxed);
                if let Some(o) = self.acquire(w) {
                    return o;
                }
                if w == HELD
                    && futex::wait(&self.word, HELD, deadline) == futex::WaitOutcome::TimedOut
                {
                    return Outcome::TimedOut;
                }
            }
        }

        /// Model of `pthread_mutex_trylock`.
        pub fn try_lock(&self) -> Outcome {
            // Relaxed: a guess; the CAS in `acquire` orders.
            let w = self.word.load(Ordering::Relaxed);
            self.acquire(w).unwrap_or(Outcome::WouldBlock)
        }

        /// Model of `pthread_mutex_unlock` (not recoverable if unrepaired).
        pub fn unlock(&self) -> Outcome {
            // Relaxed: only touched by the holder (us).
            let next = if self.inconsistent.swap(0, Ordering::Relaxed) == 1 {
                NOT_RECOVERABLE
            } else {
                FREE
            };
            // Release: publishes the critical section to the next locker.
            self.word.store(next, Ordering::Release);
            futex::wake_all(&self.word);
            Outcome::Ok
        }

        /// Model of `pthread_mutex_consistent`.
        pub fn make_consistent(&self) -> Outcome {
            // Relaxed: only touched by the holder (us).
            self.inconsistent.store(0, Ordering::Relaxed);
            Outcome::Ok
        }

        /// What the kernel does when the holding thread dies.
        pub fn die(&self) {
            // Release: the dead owner's writes are visible to the next
            // locker, as the kernel's cmpxchg on the word makes them.
            self.word.store(DEAD, Ordering::Release);
            futex::wake_all(&self.word);
        }

        /// The lock word in the kernel ABI's encoding, for `describe`.
        pub fn peek_word(&self) -> u32 {
            // Relaxed: diagnostics only.
            match self.word.load(Ordering::Relaxed) {
                HELD => 1,
                DEAD => super::word::OWNER_DIED,
                _ => 0,
            }
        }
    }
}

pub use imp::RobustMutex;

/// The process (thread group) a thread id belongs to, from
/// `/proc/<tid>/status`; `None` if the thread does not exist (or `/proc`
/// is not readable). Diagnostics only.
pub fn tid_to_pid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Instant;

    use super::*;

    fn leaked() -> &'static RobustMutex {
        let b = Box::leak(Box::<RobustMutex>::new_uninit());
        // SAFETY: fresh, exclusive, aligned allocation, leaked (never moves).
        unsafe { RobustMutex::init(b.as_mut_ptr()).unwrap() };
        // SAFETY: initialised just above.
        unsafe { b.assume_init_ref() }
    }

    #[test]
    fn lock_unlock_and_errorcheck() {
        let m = leaked();
        assert_eq!(m.try_lock(), Outcome::Ok);
        assert_eq!(
            m.peek_word() & word::TID_MASK,
            crate::sys::process::current_tid()
        );
        assert_eq!(m.lock(None), Outcome::Deadlock);
        assert_eq!(m.unlock(), Outcome::Ok);
        assert_eq!(m.unlock(), Outcome::NotOwner);
        assert_eq!(m.peek_word(), 0);
    }

    #[test]
    fn timed_lock_times_out() {
        let m = leaked();
        let m2 = m;
        assert_eq!(m.lock(None), Outcome::Ok);
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let d = start + std::time::Duration::from_millis(50);
            let o = m2.lock(Some(d));
            (o, start.elapsed())
        });
        let (o, took) = t.join().unwrap();
        assert_eq!(o, Outcome::TimedOut);
        assert!(took >= std::time::Duration::from_millis(50), "{took:?}");
        assert_eq!(m.unlock(), Outcome::Ok);
    }

    #[test]
    fn thread_death_gives_owner_died_then_not_recoverable() {
        let m = leaked();
        let m2 = m;
        // A thread that exits holding a robust mutex counts as dead.
        std::thread::spawn(move || assert_eq!(m2.lock(None), Outcome::Ok))
            .join()
            .unwrap();
        assert_ne!(m.peek_word() & word::OWNER_DIED, 0);
        assert_eq!(m.lock(None), Outcome::OwnerDied);
        assert_eq!(m.unlock(), Outcome::Ok);
        // glibc 2.36 quirk: this trylock leaves the word locked by us
        // (`if (oldval == id) lll_unlock` after a successful CAS from 0),
        // so callers must not call into a lock they know is
        // unrecoverable; `sync::Mutex` checks its own state word first.
        assert_eq!(m.try_lock(), Outcome::NotRecoverable);
    }
}
