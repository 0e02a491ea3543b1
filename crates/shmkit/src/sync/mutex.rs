//! A robust, process-shared mutex around a plain-old-data `T`.
//!
//! The lock itself is glibc's robust process-shared pthread mutex
//! ([`RobustMutex`]): the kernel marks it when its owner dies, so the next
//! locker learns of the death at once, without polling or timeouts. On top
//! of it this file keeps its own **consistency state** word, the part
//! model-checked under loom:
//!
//! | `state`        | meaning                                                     |
//! |----------------|-------------------------------------------------------------|
//! | `CONSISTENT`   | normal                                                      |
//! | `INCONSISTENT` | an owner died; the current/next holder must repair the data |
//! | `UNRECOVERABLE`| a repairer gave up (dropped without `mark_consistent`): terminal |
//!
//! Transitions (all made while holding the lock, so `Relaxed` is enough:
//! the lock's acquire/release orders them for the next holder):
//!
//! - lock reports owner died → `INCONSISTENT`, caller gets
//!   [`LockError::OwnerDied`] with the guard;
//! - [`MutexGuard::mark_consistent`] → `pthread_mutex_consistent`, then
//!   `CONSISTENT` (a crash between the two still reports owner death,
//!   which is the truth);
//! - guard dropped while `INCONSISTENT` → `UNRECOVERABLE`, then unlock
//!   (glibc also turns its own mutex `ENOTRECOVERABLE`);
//! - a lock that succeeds normally but finds `INCONSISTENT` (its repairer
//!   died at an unlucky point) reports owner death again; finding
//!   `UNRECOVERABLE` unlocks and reports [`LockError::Unrecoverable`].
//!
//! Our own word makes the guarantees hold even in crash windows between
//! glibc's state and ours, and lets [`describe`](crate::sync::describe)
//! report the state without locking.
//!
//! # Trusted peers only
//!
//! The `pthread_mutex_t` lives in the shared mapping, and glibc trusts
//! all of it. A robust mutex is linked into the locking thread's robust
//! list through pointers stored *inside the mutex* (`__list.__next`,
//! `__list.__prev`), and unlocking unlinks it by writing through those
//! pointers. A process that can write the segment can therefore, while we
//! hold the lock, point them anywhere in our address space and make our
//! `unlock` write a pointer there (an arbitrary write: memory corruption,
//! possibly code execution), or change `__kind` so glibc runs another
//! mutex protocol (PI, recursive, error-checking) on bytes it never
//! initialised that way. The kernel's exit-time walk of the robust list
//! follows the same pointers. Our own words are validated (damage is
//! [`Corrupt`](crate::sync::Corrupt)), glibc's cannot be.
//!
//! So every process that can write a mutex segment must be trusted like
//! the process itself. The segment layer enforces the default: `open`
//! refuses a segment owned by another uid
//! ([`segment::Error::ForeignOwner`](crate::segment::Error::ForeignOwner))
//! unless [`SegmentBuilder::allow_any_owner`](crate::segment::SegmentBuilder::allow_any_owner)
//! is given, and named objects are created with mode `0600`. Use
//! `allow_any_owner` or a wider mode for a mutex only between users who
//! trust each other completely. The semaphore and event have no such
//! problem: a hostile writer can only garble their counts (an error,
//! lost or spurious wake-ups), never make us write outside the segment.
//! A mutex on our own futex word (owner tid, liveness through an OFD lock
//! as the channels do) would remove this hole; see "Trusted peers" in
//! `docs/sync.md` for the measured trade-off and the follow-up.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::Corrupt;
use crate::primitive::{AtomicU32, Ordering};
use crate::sys::robust_mutex::{word, Outcome, RobustMutex};

/// "SHMu": a placed, initialised shmkit mutex.
const MAGIC: u32 = 0x5348_4d75;

const CONSISTENT: u32 = 1;
const INCONSISTENT: u32 = 2;
const UNRECOVERABLE: u32 = 3;

/// The type-independent part of every [`Mutex<T>`], at its offset 0.
#[repr(C)]
pub(crate) struct RawMutex {
    /// [`MAGIC`] once initialised. Written last by `init_at` (Release);
    /// read with Acquire by `from_ptr`.
    magic: AtomicU32,
    /// Consistency state: `CONSISTENT`, `INCONSISTENT` or `UNRECOVERABLE`
    /// (table in the module docs). Written only by the lock holder.
    state: AtomicU32,
    /// The kernel-assisted lock. 8-byte aligned, at offset 8.
    pub(super) lock: RobustMutex,
}

/// A robust mutex protecting a `T`, living in shared memory.
///
/// Use it named ([`NamedMutex`](super::NamedMutex)) or place it in your
/// own `#[repr(C)]` segment layout with [`init_at`](Self::init_at) /
/// [`from_ptr`](Self::from_ptr). `T` must be plain old data
/// ([`zerocopy::FromBytes`]): another process may write any bytes into it.
///
/// Locking is per thread: a guard cannot be sent to another thread, and
/// locking twice from one thread gives [`LockError::Deadlock`].
#[repr(C)]
pub struct Mutex<T> {
    pub(super) raw: RawMutex,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by the process-shared lock; `T`
// only needs to be sendable between the threads (and processes) taking
// turns.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Mutex<T> {}

/// Why a lock attempt did not simply succeed.
///
/// `G` is the guard type, handed over in [`LockError::OwnerDied`].
#[derive(thiserror::Error)]
pub enum LockError<G> {
    /// The lock is yours, but the previous holder died inside its critical
    /// section: repair the data, then call
    /// [`MutexGuard::mark_consistent`]. Dropping the guard without that
    /// makes the mutex unrecoverable for everyone.
    #[error("previous owner died while holding the lock; data may be inconsistent")]
    OwnerDied(G),
    /// A holder who got [`OwnerDied`](Self::OwnerDied) released the lock
    /// without marking the data consistent. Permanent: recreate the mutex.
    #[error("mutex is unrecoverable (a previous owner died and nobody repaired its data)")]
    Unrecoverable,
    /// `try_lock` only: another thread holds it.
    #[error("would block")]
    WouldBlock,
    /// `lock_timeout` / `lock_deadline` only: the deadline passed.
    #[error("timed out")]
    Timeout,
    /// This thread already holds the lock.
    #[error("this thread already holds the lock")]
    Deadlock,
    /// The shared lock state is damaged.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl<G> std::fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Unrecoverable => f.write_str("Unrecoverable"),
            LockError::WouldBlock => f.write_str("WouldBlock"),
            LockError::Timeout => f.write_str("Timeout"),
            LockError::Deadlock => f.write_str("Deadlock"),
            LockError::Corrupt(c) => f.debug_tuple("Corrupt").field(c).finish(),
        }
    }
}

/// The state of a mutex as seen from outside, without locking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MutexState {
    /// Nobody holds it.
    Free,
    /// Held by thread `tid` of process `pid` (`None` if it could not be
    /// looked up). `repairing`: the holder got owner-died and has not yet
    /// marked the data consistent.
    Held {
        /// Owning process, if known.
        pid: Option<u32>,
        /// Owning thread id (the kernel's lock-word value).
        tid: u32,
        /// Holder is repairing after an owner death.
        repairing: bool,
    },
    /// Its holder died; the next locker will be told and must repair.
    OwnerDied,
    /// Permanently unusable.
    Unrecoverable,
}

impl std::fmt::Display for MutexState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MutexState::Free => f.write_str("free"),
            MutexState::Held {
                pid,
                tid,
                repairing,
            } => {
                match pid {
                    Some(p) if p == tid => write!(f, "held by pid {p}")?,
                    Some(p) => write!(f, "held by pid {p} (thread {tid})")?,
                    None => write!(f, "held by thread {tid}")?,
                }
                if *repairing {
                    f.write_str(", repairing after owner death")?;
                }
                Ok(())
            }
            MutexState::OwnerDied => f.write_str("owner died (next locker must repair)"),
            MutexState::Unrecoverable => f.write_str("unrecoverable"),
        }
    }
}

impl RawMutex {
    #[inline]
    fn check_magic(&self) -> Result<(), Corrupt> {
        // Relaxed: `from_ptr`/open already did the Acquire load that pairs
        // with `init_at`'s Release; this re-check only catches later damage.
        let m = self.magic.load(Ordering::Relaxed);
        if m == MAGIC {
            Ok(())
        } else {
            Err(Corrupt::new("mutex", format!("bad magic {m:#x}")))
        }
    }

    /// Entry check of every lock call: magic, and the terminal state
    /// (never call into glibc for an unrecoverable mutex: its trylock
    /// would leave the word locked, see `sys::robust_mutex`).
    #[inline]
    pub(super) fn check_entry<G>(&self) -> Result<(), LockError<G>> {
        self.check_magic()?;
        // Relaxed: UNRECOVERABLE is terminal; seeing it late only means we
        // learn it from glibc instead.
        if self.state.load(Ordering::Relaxed) == UNRECOVERABLE {
            return Err(LockError::Unrecoverable);
        }
        Ok(())
    }

    /// Snapshot for `describe`.
    pub(crate) fn describe(&self) -> Result<MutexState, Corrupt> {
        self.check_magic()?;
        // Relaxed: a diagnostic snapshot, no data is read under it.
        let state = self.state.load(Ordering::Relaxed);
        let w = self.lock.peek_word();
        let tid = w & word::TID_MASK;
        match state {
            UNRECOVERABLE => Ok(MutexState::Unrecoverable),
            CONSISTENT | INCONSISTENT if tid != 0 => Ok(MutexState::Held {
                pid: crate::sys::robust_mutex::tid_to_pid(tid),
                tid,
                repairing: state == INCONSISTENT,
            }),
            CONSISTENT | INCONSISTENT if w & word::OWNER_DIED != 0 => Ok(MutexState::OwnerDied),
            // Free, but a repairer died before finishing: next locker
            // will be told (see module docs).
            INCONSISTENT => Ok(MutexState::OwnerDied),
            CONSISTENT => Ok(MutexState::Free),
            s => Err(Corrupt::new("mutex", format!("bad state {s}"))),
        }
    }
}

impl<T> Mutex<T> {
    /// Initialises a mutex holding `value` at `place`, in memory shared
    /// with other processes. Call once, from the creator, before anyone
    /// else can see the memory (e.g. in
    /// [`SegmentBuilder::init`](crate::segment::SegmentBuilder::init)).
    ///
    /// # Safety
    ///
    /// - `place` is valid for writes of `size_of::<Mutex<T>>()` bytes and
    ///   aligned to `align_of::<Mutex<T>>()` (checked: misalignment is an
    ///   error, not UB);
    /// - no other thread or process accesses those bytes until this
    ///   returns, and the memory stays mapped while anyone uses the mutex;
    /// - it does not hold a live mutex (re-initialising a locked mutex
    ///   breaks its holder).
    #[cfg(not(loom))]
    pub unsafe fn init_at(place: *mut Mutex<T>, value: T) -> std::io::Result<()> {
        if !super::placeable(place) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "mutex place is null or misaligned",
            ));
        }
        // SAFETY: valid, aligned and exclusive by the contract above; the
        // field pointers stay inside `*place`.
        unsafe {
            let raw = &raw mut (*place).raw;
            (&raw mut (*raw).magic).write(AtomicU32::new(0));
            (&raw mut (*raw).state).write(AtomicU32::new(CONSISTENT));
            RobustMutex::init(&raw mut (*raw).lock).map_err(std::io::Error::from_raw_os_error)?;
            UnsafeCell::raw_get(&raw const (*place).data).write(value);
            // Release: publishes the initialised lock and value to
            // whoever reads the magic with Acquire in `from_ptr`.
            (*raw).magic.store(MAGIC, Ordering::Release);
        }
        Ok(())
    }

    /// A mutex on the heap, for loom models.
    #[cfg(all(test, loom))]
    pub(crate) fn new(value: T) -> Mutex<T> {
        Mutex {
            raw: RawMutex {
                magic: AtomicU32::new(MAGIC),
                state: AtomicU32::new(CONSISTENT),
                lock: RobustMutex::new(),
            },
            data: UnsafeCell::new(value),
        }
    }

    /// Validates the mutex at `ptr` (initialised by [`init_at`](Self::init_at),
    /// possibly in another process) and returns a reference to it.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `size_of::<Mutex<T>>()`
    /// bytes for `'a` (e.g. inside a segment that outlives `'a`), and those
    /// bytes must only ever be accessed through `Mutex` methods. Alignment,
    /// null and the magic word are checked here.
    pub unsafe fn from_ptr<'a>(ptr: *const Mutex<T>) -> Result<&'a Mutex<T>, Corrupt>
    where
        T: zerocopy::FromBytes,
    {
        if !super::placeable(ptr) {
            return Err(Corrupt::new("mutex", "null or misaligned pointer"));
        }
        // SAFETY: valid for 'a by the contract; every field is atomics,
        // an UnsafeCell or `T: FromBytes`, so any bytes form a valid value.
        let m = unsafe { &*ptr };
        // Acquire: pairs with the Release store of the magic in `init_at`.
        let magic = m.raw.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(Corrupt::new(
                "mutex",
                format!("bad magic {magic:#x} (not initialised?)"),
            ));
        }
        Ok(m)
    }

    /// Blocks until the lock is ours.
    ///
    /// `Err(LockError::OwnerDied(guard))` still hands over the lock: see
    /// [`LockError::OwnerDied`].
    #[inline]
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        self.raw.check_entry()?;
        self.finish(self.raw.lock.lock(None))
    }

    /// Takes the lock if nobody holds it; [`LockError::WouldBlock`] if
    /// someone does.
    #[inline]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        self.raw.check_entry()?;
        self.finish(self.raw.lock.try_lock())
    }

    /// Like [`lock`](Self::lock), giving up with [`LockError::Timeout`]
    /// after `timeout`.
    #[inline]
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        match super::deadline_after(timeout) {
            Some(d) => self.lock_deadline(d),
            None => self.lock(),
        }
    }

    /// Like [`lock`](Self::lock), giving up with [`LockError::Timeout`]
    /// at `deadline`.
    pub fn lock_deadline(
        &self,
        deadline: Instant,
    ) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        self.raw.check_entry()?;
        self.finish(self.raw.lock.lock(Some(deadline)))
    }

    /// Turns the raw lock outcome into our result, applying the
    /// consistency state machine (module docs).
    #[inline]
    pub(super) fn finish(
        &self,
        o: Outcome,
    ) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        let guard = |repair| MutexGuard {
            mutex: self,
            repair,
            _not_send: PhantomData,
        };
        match o {
            Outcome::Ok => {
                // Relaxed: written only under the lock, whose acquire
                // (pairs with the previous holder's unlock) orders it.
                match self.raw.state.load(Ordering::Relaxed) {
                    CONSISTENT => Ok(guard(false)),
                    s => self.finish_cold(s),
                }
            }
            Outcome::OwnerDied => {
                // Relaxed: we hold the lock (EOWNERDEAD still grants it).
                if self.raw.state.load(Ordering::Relaxed) == UNRECOVERABLE {
                    // Its last holder gave up and died before unlocking.
                    // Leave glibc's mutex inconsistent: unlock makes it
                    // ENOTRECOVERABLE too.
                    self.raw.lock.unlock();
                    return Err(LockError::Unrecoverable);
                }
                // Relaxed: under the lock; our unlock releases it.
                self.raw.state.store(INCONSISTENT, Ordering::Relaxed);
                Err(LockError::OwnerDied(guard(true)))
            }
            Outcome::NotRecoverable => {
                // Terminal, so storing it without the lock is fine; it
                // keeps later callers away from glibc (see `check_entry`).
                self.raw.state.store(UNRECOVERABLE, Ordering::Relaxed);
                Err(LockError::Unrecoverable)
            }
            Outcome::WouldBlock => Err(LockError::WouldBlock),
            Outcome::TimedOut => Err(LockError::Timeout),
            Outcome::Deadlock => Err(LockError::Deadlock),
            Outcome::NotOwner | Outcome::Invalid(_) => Err(LockError::Corrupt(Corrupt::new(
                "mutex",
                format!("lock failed: {o:?}"),
            ))),
        }
    }

    #[cold]
    fn finish_cold(&self, state: u32) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        match state {
            // A repairer died between `pthread_mutex_consistent` and our
            // state store, or the lock was otherwise released while
            // inconsistent: the data is suspect, say so.
            INCONSISTENT => Err(LockError::OwnerDied(MutexGuard {
                mutex: self,
                repair: true,
                _not_send: PhantomData,
            })),
            UNRECOVERABLE => {
                self.raw.lock.unlock();
                Err(LockError::Unrecoverable)
            }
            s => {
                self.raw.lock.unlock();
                Err(LockError::Corrupt(Corrupt::new(
                    "mutex",
                    format!("bad state {s}"),
                )))
            }
        }
    }

    /// Shared-state snapshot (see [`crate::sync::describe`]).
    pub fn state(&self) -> Result<MutexState, Corrupt> {
        self.raw.describe()
    }

    /// Simulates the holder's death for loom models: forgets the guard
    /// and does what the kernel does at thread exit.
    #[cfg(all(test, loom))]
    pub(crate) fn die_holding(&self, guard: MutexGuard<'_, T>) {
        std::mem::forget(guard);
        self.raw.lock.die();
    }
}

/// Exclusive access to a [`Mutex`]'s data; unlocks on drop. Not `Send`:
/// the thread that locked must unlock.
#[must_use = "dropping the guard unlocks the mutex at once"]
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    /// Got with owner-died and not yet marked consistent.
    repair: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: `&MutexGuard` only gives `&T`.
unsafe impl<T: Sync> Sync for MutexGuard<'_, T> {}

impl<T> MutexGuard<'_, T> {
    /// Declares the data repaired after [`LockError::OwnerDied`], so that
    /// later lockers get the mutex normally. A no-op on a normal guard.
    pub fn mark_consistent(&mut self) {
        if self.repair {
            // Order matters only for crashes: if we die between these two,
            // the next locker is told of an owner death (true).
            self.mutex.raw.lock.make_consistent();
            // Relaxed: under the lock (module docs).
            self.mutex.raw.state.store(CONSISTENT, Ordering::Relaxed);
            self.repair = false;
        }
    }

    /// Whether this guard still has to be marked consistent.
    pub fn needs_repair(&self) -> bool {
        self.repair
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock, so no one else accesses the data.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock, so no one else accesses the data.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.repair {
            // Relaxed: under the lock; the unlock below releases it.
            self.mutex.raw.state.store(UNRECOVERABLE, Ordering::Relaxed);
        }
        self.mutex.raw.lock.unlock();
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("data", &**self)
            .field("needs_repair", &self.repair)
            .finish()
    }
}

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("state", &self.raw.describe())
            .finish_non_exhaustive()
    }
}

// SAFETY: repr(C) of atomics, a pthread mutex in an UnsafeCell and a
// `T: FromBytes` in an UnsafeCell: any bytes are a valid value; validate
// only loads.
#[cfg(not(loom))]
unsafe impl<T: zerocopy::FromBytes + Send> super::named::Placed for Mutex<T> {
    const KIND: crate::segment::Kind = crate::segment::Kind::Mutex;
    fn validate(&self) -> Result<(), Corrupt> {
        // Acquire: pairs with the Release store of the magic in `init_at`.
        let m = self.raw.magic.load(Ordering::Acquire);
        if m != MAGIC {
            return Err(Corrupt::new("mutex", format!("bad magic {m:#x}")));
        }
        self.raw.describe().map(|_| ())
    }
}

// SAFETY: as for `Mutex<T>`: atomics and a pthread mutex only.
#[cfg(not(loom))]
unsafe impl super::named::Placed for RawMutex {
    const KIND: crate::segment::Kind = crate::segment::Kind::Mutex;
    fn validate(&self) -> Result<(), Corrupt> {
        // Acquire: pairs with the Release store of the magic in `init_at`.
        let m = self.magic.load(Ordering::Acquire);
        if m != MAGIC {
            return Err(Corrupt::new("mutex", format!("bad magic {m:#x}")));
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn leaked<T: zerocopy::FromBytes + Send + 'static>(v: T) -> &'static Mutex<T> {
        let b = Box::leak(Box::<Mutex<T>>::new_uninit());
        // SAFETY: fresh, exclusive, aligned allocation, leaked (never moves).
        unsafe { Mutex::init_at(b.as_mut_ptr(), v).unwrap() };
        // SAFETY: initialised above; lives forever.
        unsafe { Mutex::from_ptr(b.as_ptr()).unwrap() }
    }

    #[test]
    fn lock_try_lock_and_state() {
        let m = leaked(5u64);
        assert_eq!(m.state(), Ok(MutexState::Free));
        {
            let mut g = m.lock().unwrap();
            *g += 1;
            assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
            assert!(matches!(
                m.lock_timeout(Duration::from_secs(5)),
                Err(LockError::Deadlock)
            ));
            assert!(matches!(m.lock(), Err(LockError::Deadlock)));
            match m.state().unwrap() {
                MutexState::Held { pid, repairing, .. } => {
                    assert_eq!(pid, Some(std::process::id()));
                    assert!(!repairing);
                }
                s => panic!("{s:?}"),
            }
        }
        assert_eq!(*m.try_lock().unwrap(), 6);
    }

    #[test]
    fn thread_death_repair_and_unrecoverable() {
        let m = leaked(0u32);
        // A thread that exits holding the lock: same robust path as death.
        std::thread::spawn(move || std::mem::forget(m.lock().unwrap()))
            .join()
            .unwrap();
        assert_eq!(m.state(), Ok(MutexState::OwnerDied));
        match m.lock() {
            Err(LockError::OwnerDied(mut g)) => {
                assert!(g.needs_repair());
                *g = 7;
                g.mark_consistent();
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(*m.lock().unwrap(), 7);

        std::thread::spawn(move || std::mem::forget(m.lock().unwrap()))
            .join()
            .unwrap();
        match m.lock_timeout(Duration::from_secs(5)) {
            Err(LockError::OwnerDied(g)) => drop(g), // not repaired
            r => panic!("{r:?}"),
        }
        assert_eq!(m.state(), Ok(MutexState::Unrecoverable));
        assert!(matches!(m.lock(), Err(LockError::Unrecoverable)));
        assert!(matches!(m.try_lock(), Err(LockError::Unrecoverable)));
    }

    #[test]
    fn lock_timeout_returns_near_deadline() {
        let m = leaked(0u8);
        let g = m.lock().unwrap();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let r = matches!(
                m.lock_timeout(Duration::from_millis(50)),
                Err(LockError::Timeout)
            );
            (r, start.elapsed())
        });
        let (timed_out, took) = t.join().unwrap();
        drop(g);
        assert!(timed_out);
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn corruption_is_reported() {
        let m = leaked(0u8);
        m.raw.state.store(77, Ordering::Relaxed);
        assert!(matches!(m.lock(), Err(LockError::Corrupt(_))));
        // The failed lock released the pthread mutex again.
        m.raw.state.store(CONSISTENT, Ordering::Relaxed);
        drop(m.lock().unwrap());
        m.raw.magic.store(1, Ordering::Relaxed);
        assert!(matches!(m.try_lock(), Err(LockError::Corrupt(_))));
        assert!(m.state().is_err());
        // SAFETY: points at a live (leaked) mutex.
        assert!(unsafe { Mutex::from_ptr(m as *const Mutex<u8>) }.is_err());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Mutual exclusion: two lockers each do a non-atomic read-modify-write
    /// under the lock; the result is exact.
    #[test]
    fn loom_mutex_excludes() {
        loom::model(|| {
            let m = Arc::new(Mutex::new(0u32));
            let inside = Arc::new(AtomicU32::new(0));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let (m, inside) = (Arc::clone(&m), Arc::clone(&inside));
                    thread::spawn(move || {
                        let mut g = m.lock().unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::Relaxed), 0);
                        *g += 1;
                        inside.fetch_sub(1, Ordering::Relaxed);
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(*m.lock().unwrap(), 2);
        });
    }

    /// Owner death with a concurrent locker (possibly asleep on the lock):
    /// whoever locks after the death gets OwnerDied exactly once; a repair
    /// makes the mutex normal again.
    #[test]
    fn loom_mutex_owner_death_then_repair() {
        loom::model(|| {
            let m = Arc::new(Mutex::new(0u32));
            let m2 = Arc::clone(&m);
            let dier = thread::spawn(move || {
                let mut g = match m2.lock() {
                    Ok(g) => g,
                    Err(LockError::OwnerDied(g)) => g,
                    Err(e) => panic!("{e}"),
                };
                *g = 99; // half-done update, then "SIGKILL"
                m2.die_holding(g);
            });
            let repaired = match m.lock() {
                Ok(g) => {
                    // We went first: the dier then dies after us.
                    assert_eq!(*g, 0);
                    false
                }
                Err(LockError::OwnerDied(mut g)) => {
                    assert_eq!(*g, 99);
                    *g = 1;
                    g.mark_consistent();
                    true
                }
                Err(e) => panic!("{e}"),
            };
            dier.join().unwrap();
            match m.lock() {
                Ok(g) => assert!(repaired && *g == 1),
                Err(LockError::OwnerDied(mut g)) => {
                    assert!(!repaired);
                    assert_eq!(*g, 99);
                    *g = 1;
                    g.mark_consistent();
                }
                Err(e) => panic!("{e}"),
            }
            assert_eq!(*m.lock().unwrap(), 1);
        });
    }

    /// Dropping an owner-died guard without repair: every later locker is
    /// told the mutex is unrecoverable, including one already waiting.
    #[test]
    fn loom_mutex_unrepaired_is_unrecoverable() {
        loom::model(|| {
            let m = Arc::new(Mutex::new(0u32));
            m.die_holding(m.lock().unwrap());
            let m2 = Arc::clone(&m);
            let other = thread::spawn(move || match m2.lock() {
                Err(LockError::OwnerDied(g)) => {
                    drop(g);
                    true
                }
                Err(LockError::Unrecoverable) => false,
                Ok(_) => panic!("locked a dead owner's mutex normally"),
                Err(e) => panic!("{e}"),
            });
            let mine = match m.lock() {
                Err(LockError::OwnerDied(g)) => {
                    drop(g);
                    true
                }
                Err(LockError::Unrecoverable) => false,
                Ok(_) => panic!("locked a dead owner's mutex normally"),
                Err(e) => panic!("{e}"),
            };
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one locker sees OwnerDied");
            assert!(matches!(m.try_lock(), Err(LockError::Unrecoverable)));
        });
    }
}
