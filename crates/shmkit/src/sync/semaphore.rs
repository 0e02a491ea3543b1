//! A counting semaphore on a process-shared futex.
//!
//! State (all `u32`, in shared memory):
//!
//! - `count`: the value, `0..=MAX_VALUE`; also the futex word waiters
//!   sleep on (while it is 0). Anything above `MAX_VALUE` is corruption.
//! - `sleepers`: waiters in (or about to enter) the slow path. `post`
//!   makes the wake syscall only when it is non-zero, so an uncontended
//!   post is one CAS.
//!
//! No lost wake-up (a Dekker pair with SeqCst fences): a waiter increments
//! `sleepers`, fences, *then* re-reads `count`; a poster increments
//! `count`, fences, *then* reads `sleepers`. The two fences are ordered in
//! the single SeqCst total order, so either the waiter sees the new count,
//! or the poster sees the sleeper and wakes it. If the wake comes before the waiter is
//! in the kernel, `FUTEX_WAIT` finds `count != 0` and returns at once (the
//! kernel compares the word under its bucket lock, which `FUTEX_WAKE`
//! takes too).
//!
//! Crashes: a process killed in the middle of `post` or `wait` either did
//! its CAS or did not: there is no half-state. But a poster killed between
//! its CAS and its `FUTEX_WAKE`, or a waiter picked by `FUTEX_WAKE` and
//! killed before it took the unit, loses a wake-up; so waiters sleep in
//! bounded slices ([`super::SLICE`], 50 ms) and re-check, and a waiter
//! that takes a unit while units and other sleepers remain wakes one more
//! (chained wake). A process killed while sleeping leaves `sleepers` one
//! too high for good; posts then make one unneeded futex call each (a
//! cost, never a missed wake: `docs/sync.md`, Known limits).

use std::time::{Duration, Instant};

use super::{Corrupt, WaitError};
use crate::primitive::{fence, AtomicU32, Ordering};
use crate::sys::futex;

/// "SHMs".
const MAGIC: u32 = 0x5348_4d73;

/// The largest count a semaphore holds (as POSIX `SEM_VALUE_MAX`).
pub const MAX_VALUE: u32 = i32::MAX as u32;

/// A counting semaphore living in shared memory.
///
/// Named: [`NamedSemaphore`](super::NamedSemaphore). Placed in your own
/// layout: [`init_at`](Self::init_at) once, then [`from_ptr`](Self::from_ptr).
#[repr(C)]
pub struct Semaphore {
    /// `MAGIC` once initialised (Release in `init_at`, Acquire in `from_ptr`).
    magic: AtomicU32,
    /// The value, `0..=MAX_VALUE`; futex word.
    pub(super) count: AtomicU32,
    /// Waiters in the slow path (may over-count after a crash).
    pub(super) sleepers: AtomicU32,
    _reserved: AtomicU32,
}

/// Why a [`Semaphore::post`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The count would exceed [`MAX_VALUE`]; nothing was added.
    #[error("semaphore value would exceed {MAX_VALUE}")]
    Overflow,
    /// The shared state is damaged.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

fn bad_count(c: u32) -> Corrupt {
    Corrupt::new("semaphore", format!("count {c} exceeds {MAX_VALUE}"))
}

impl Semaphore {
    /// A semaphore in ordinary memory with count `value` (one process,
    /// tests, models). For shared memory use [`init_at`](Self::init_at).
    ///
    /// # Panics
    ///
    /// If `value > MAX_VALUE`.
    pub fn new(value: u32) -> Semaphore {
        assert!(value <= MAX_VALUE, "semaphore value too large");
        Semaphore {
            magic: AtomicU32::new(MAGIC),
            count: AtomicU32::new(value),
            sleepers: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
        }
    }

    /// Initialises a semaphore with count `value` at `place`.
    ///
    /// # Safety
    ///
    /// `place` is valid for writes of `size_of::<Semaphore>()` bytes, and
    /// nobody else uses those bytes until this returns. Null, misalignment
    /// and `value > MAX_VALUE` are reported as errors.
    #[cfg(not(loom))]
    pub unsafe fn init_at(place: *mut Semaphore, value: u32) -> std::io::Result<()> {
        if !super::placeable(place) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "semaphore place is null or misaligned",
            ));
        }
        if value > MAX_VALUE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("semaphore value {value} exceeds {MAX_VALUE}"),
            ));
        }
        let mut s = Semaphore::new(value);
        s.magic = AtomicU32::new(0);
        // SAFETY: valid, aligned, exclusive by the contract.
        unsafe {
            place.write(s);
            // Release: publishes the count to `from_ptr`'s Acquire load.
            (*place).magic.store(MAGIC, Ordering::Release);
        }
        Ok(())
    }

    /// Validates the semaphore at `ptr` and returns a reference to it.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and writes of `size_of::<Semaphore>()`
    /// bytes for `'a`, accessed only through `Semaphore` methods.
    #[cfg(not(loom))]
    pub unsafe fn from_ptr<'a>(ptr: *const Semaphore) -> Result<&'a Semaphore, Corrupt> {
        if !super::placeable(ptr) {
            return Err(Corrupt::new("semaphore", "null or misaligned pointer"));
        }
        // SAFETY: valid for 'a by contract; all fields are atomics, valid
        // for any bytes.
        let s = unsafe { &*ptr };
        s.validate_full()?;
        Ok(s)
    }

    /// Magic (Acquire) and count check.
    #[cfg_attr(loom, allow(dead_code))] // used by `from_ptr`/named, not under loom
    fn validate_full(&self) -> Result<(), Corrupt> {
        // Acquire: pairs with the Release store in `init_at`.
        let m = self.magic.load(Ordering::Acquire);
        if m != MAGIC {
            return Err(Corrupt::new("semaphore", format!("bad magic {m:#x}")));
        }
        self.snapshot().map(|_| ())
    }

    #[inline]
    pub(super) fn check_magic(&self) -> Result<(), Corrupt> {
        // Relaxed: the Acquire was done at open/`from_ptr`; this re-check
        // catches later damage only.
        let m = self.magic.load(Ordering::Relaxed);
        if m == MAGIC {
            Ok(())
        } else {
            Err(Corrupt::new("semaphore", format!("bad magic {m:#x}")))
        }
    }

    /// `(value, sleepers)`, validated.
    pub(crate) fn snapshot(&self) -> Result<(u32, u32), Corrupt> {
        self.check_magic()?;
        // Relaxed: diagnostic snapshot.
        let c = self.count.load(Ordering::Relaxed);
        if c > MAX_VALUE {
            return Err(bad_count(c));
        }
        // Relaxed: diagnostic snapshot.
        Ok((c, self.sleepers.load(Ordering::Relaxed)))
    }

    /// The current count (a snapshot: it may change at once).
    pub fn value(&self) -> Result<u32, Corrupt> {
        self.snapshot().map(|(v, _)| v)
    }

    /// Waiters currently in the slow path (see [`super::State`]).
    pub fn sleepers(&self) -> Result<u32, Corrupt> {
        self.snapshot().map(|(_, s)| s)
    }

    /// Adds one to the count, waking one sleeper if there is one.
    #[inline]
    pub fn post(&self) -> Result<(), PostError> {
        self.post_n(1)
    }

    /// Adds `n` to the count, waking up to `n` sleepers.
    pub fn post_n(&self, n: u32) -> Result<(), PostError> {
        self.check_magic()?;
        if n == 0 {
            return Ok(());
        }
        // Relaxed: only a guess for the CAS below.
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            if c > MAX_VALUE {
                return Err(bad_count(c).into());
            }
            // `n > MAX_VALUE - c`, not `c > MAX_VALUE - n`: `c <= MAX_VALUE`
            // is checked above, so this subtraction cannot wrap, whatever
            // `n` is (the old form wrapped for `n > MAX_VALUE`).
            if n > MAX_VALUE - c {
                return Err(PostError::Overflow);
            }
            // Release: publishes what we wrote before posting to the
            // waiter whose Acquire CAS in `try_take` takes this unit.
            match self
                .count
                .compare_exchange_weak(c, c + n, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        // The Dekker pair: [count CAS; SeqCst fence; load sleepers] here
        // against [sleepers += 1; SeqCst fence; load count] in `wait_slow`.
        // The fences are ordered in the SeqCst total order, so at least one
        // side sees the other's write. (SeqCst on the accesses alone would
        // do in the C++ model, but loom models SeqCst accesses as AcqRel
        // and only fences exactly; on x86 the fence follows a locked RMW
        // and costs a few cycles.)
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.wake(n);
        }
        Ok(())
    }

    #[cold]
    fn wake(&self, n: u32) {
        if n == 1 {
            futex::wake(&self.count);
        } else {
            futex::wake_all(&self.count);
        }
    }

    /// One attempt to take a unit: `Ok(true)` taken, `Ok(false)` count is 0.
    #[inline]
    pub(super) fn try_take(&self) -> Result<bool, Corrupt> {
        // Relaxed: only a guess for the CAS; in the slow path it is the
        // load half of the Dekker pair, ordered by the preceding fence.
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            if c == 0 {
                return Ok(false);
            }
            if c > MAX_VALUE {
                return Err(bad_count(c));
            }
            // Acquire: pairs with the Release CAS in `post_n`, so what the
            // poster wrote before posting is visible to us.
            match self
                .count
                .compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(true),
                Err(now) => c = now,
            }
        }
    }

    /// Takes one unit if the count is positive; [`WaitError::WouldBlock`]
    /// otherwise.
    #[inline]
    pub fn try_wait(&self) -> Result<(), WaitError> {
        self.check_magic()?;
        match self.try_take()? {
            true => Ok(()),
            false => Err(WaitError::WouldBlock),
        }
    }

    /// Blocks until a unit can be taken, and takes it. Only fails if the
    /// shared state is corrupt.
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
        self.check_magic()?;
        if self.try_take()? {
            return Ok(());
        }
        self.wait_slow(deadline, sliced)
    }

    #[cold]
    fn wait_slow(&self, deadline: Option<Instant>, sliced: bool) -> Result<(), WaitError> {
        // Relaxed + SeqCst fence: the store half of the Dekker pair with
        // `post_n` (see there); the fence orders it before our re-read of
        // `count` in `try_take`.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let r = loop {
            match self.try_take() {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e.into()),
            }
            // Bounded sleep (`SLICE`): a wake-up lost to a crashed poster
            // or to a woken-then-killed waiter delays us one slice at most.
            if super::sleep(&self.count, 0, deadline, sliced) == super::Slept::Deadline {
                // A post may have raced with the timer: take it if so,
                // rather than leave a unit no sleeper was woken for.
                break match self.try_take() {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(WaitError::Timeout),
                    Err(e) => Err(e.into()),
                };
            }
            // Woken, slice over, EINTR, EAGAIN or spurious: re-check.
        };
        // Relaxed: a late decrement only costs a poster one extra wake.
        let others = self
            .sleepers
            .fetch_sub(1, Ordering::Relaxed)
            .wrapping_sub(1);
        // Chained wake: units left and other sleepers (e.g. a `post_n` whose
        // poster died before its wake, or two posts that woke only us):
        // pass a wake on instead of leaving them to their slice. Relaxed: a
        // hint only; a missed chain costs at most one slice of latency, a
        // needless one a spurious wake-up.
        if r.is_ok() && others != 0 && self.count.load(Ordering::Relaxed) != 0 {
            futex::wake(&self.count);
        }
        r
    }
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("state", &self.snapshot())
            .finish()
    }
}

// SAFETY: repr(C), atomics only; `validate` only loads.
#[cfg(not(loom))]
unsafe impl super::named::Placed for Semaphore {
    const KIND: crate::segment::Kind = crate::segment::Kind::Semaphore;
    fn validate(&self) -> Result<(), Corrupt> {
        self.validate_full()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_out() {
        let s = Semaphore::new(2);
        assert_eq!(s.value(), Ok(2));
        s.try_wait().unwrap();
        s.wait().unwrap();
        assert_eq!(s.try_wait(), Err(WaitError::WouldBlock));
        let start = Instant::now();
        assert_eq!(
            s.wait_timeout(Duration::from_millis(30)),
            Err(WaitError::Timeout)
        );
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        s.post_n(3).unwrap();
        assert_eq!(s.value(), Ok(3));
        assert_eq!(s.sleepers(), Ok(0));
    }

    #[test]
    fn overflow_and_corruption_are_errors() {
        let s = Semaphore::new(MAX_VALUE - 1);
        s.post().unwrap();
        assert_eq!(s.post(), Err(PostError::Overflow));
        s.count.store(MAX_VALUE + 5, Ordering::Relaxed);
        assert!(matches!(s.try_wait(), Err(WaitError::Corrupt(_))));
        assert!(matches!(s.post(), Err(PostError::Corrupt(_))));
        s.magic.store(7, Ordering::Relaxed);
        assert!(s.value().is_err());
    }

    /// H3: a poster SIGKILLed between its count CAS and its `FUTEX_WAKE`
    /// leaves count > 0 and a sleeper nobody wakes (simulated here by
    /// raising the count with no wake). An untimed `wait` must still
    /// return: it re-checks every `SLICE`. Without slices it sleeps forever.
    #[test]
    fn sleeper_recovers_from_a_lost_wake() {
        let s = std::sync::Arc::new(Semaphore::new(0));
        let s2 = std::sync::Arc::clone(&s);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(s2.wait()));
        while s.sleepers().unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let it get into FUTEX_WAIT.
        std::thread::sleep(Duration::from_millis(100));
        // The dead poster's CAS, without its wake.
        s.count.fetch_add(1, Ordering::Release);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
        assert_eq!(s.value(), Ok(0));
        assert_eq!(s.sleepers(), Ok(0));
    }

    /// A deadline shorter than, and one spanning several, slices are
    /// both kept (returns no earlier than the deadline).
    #[test]
    fn deadlines_stay_exact_across_slices() {
        let s = Semaphore::new(0);
        for ms in [7u64, super::super::SLICE.as_millis() as u64 * 2 + 13] {
            let start = Instant::now();
            assert_eq!(
                s.wait_timeout(Duration::from_millis(ms)),
                Err(WaitError::Timeout)
            );
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(ms), "{took:?}");
            assert!(took < Duration::from_millis(ms) + Duration::from_secs(2));
        }
        assert_eq!(s.sleepers(), Ok(0));
    }

    /// Bug 1 (issue 14): `post_n(n)` with `n > MAX_VALUE` wrapped the
    /// bound: debug builds panicked, release builds stored a corrupt count.
    /// It must be `Overflow`, with the count unchanged.
    #[test]
    fn post_n_beyond_max_is_overflow_and_changes_nothing() {
        for start in [0, 1, 7, MAX_VALUE - 1, MAX_VALUE] {
            for n in [MAX_VALUE + 1, MAX_VALUE + 2, u32::MAX - 1, u32::MAX] {
                let s = Semaphore::new(start);
                assert_eq!(s.post_n(n), Err(PostError::Overflow), "{start} + {n}");
                assert_eq!(s.value(), Ok(start));
                // Still usable afterwards.
                if start < MAX_VALUE {
                    s.post().unwrap();
                    assert_eq!(s.value(), Ok(start + 1));
                }
            }
        }
        let s = Semaphore::new(0);
        s.post_n(MAX_VALUE).unwrap();
        assert_eq!(s.value(), Ok(MAX_VALUE));
        assert_eq!(s.post_n(1), Err(PostError::Overflow));
    }

    proptest::proptest! {
        /// Over any current value and any `n`: `post_n` adds exactly `n`
        /// when the sum fits in `MAX_VALUE`, else is `Overflow` and
        /// changes nothing; the semaphore is never left corrupt.
        #[test]
        fn post_n_is_exact_or_overflow(start in 0..=MAX_VALUE, n in proptest::prelude::any::<u32>()) {
            let s = Semaphore::new(start);
            let r = s.post_n(n);
            if u64::from(start) + u64::from(n) <= u64::from(MAX_VALUE) {
                proptest::prop_assert_eq!(r, Ok(()));
                proptest::prop_assert_eq!(s.value(), Ok(start + n));
            } else {
                proptest::prop_assert_eq!(r, Err(PostError::Overflow));
                proptest::prop_assert_eq!(s.value(), Ok(start));
            }
        }
    }

    #[test]
    fn wakes_a_sleeping_thread() {
        let s = std::sync::Arc::new(Semaphore::new(0));
        let s2 = std::sync::Arc::clone(&s);
        let t = std::thread::spawn(move || s2.wait_timeout(Duration::from_secs(10)));
        while s.sleepers().unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        s.post().unwrap();
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(s.value(), Ok(0));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Two posts, two blocking waiters: both return, count ends at 0
    /// (no lost wake-up, no duplicated unit).
    #[test]
    fn loom_sem_no_lost_wakeup() {
        loom::model(|| {
            let s = Arc::new(Semaphore::new(0));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let s = Arc::clone(&s);
                    thread::spawn(move || s.wait().unwrap())
                })
                .collect();
            s.post().unwrap();
            s.post().unwrap();
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!(s.value(), Ok(0));
        });
    }

    /// H3: a poster killed between its count CAS and its wake (modelled
    /// as the bare CAS). A sliced waiter still takes the unit. Fails
    /// (loom: deadlock) with `sliced = false`, i.e. without the fix.
    #[test]
    fn loom_sem_poster_killed_before_wake() {
        loom::model(|| {
            let s = Arc::new(Semaphore::new(0));
            let s2 = Arc::clone(&s);
            let t = thread::spawn(move || s2.wait_with(None, true));
            // The dead poster: its Release CAS happened, its wake did not.
            s.count.fetch_add(1, Ordering::Release);
            assert_eq!(t.join().unwrap(), Ok(()));
            assert_eq!(s.value(), Ok(0));
            assert_eq!(s.sleepers(), Ok(0));
        });
    }

    /// `post_n(2)` with two sleepers: both are released (the poster's
    /// wake must reach both; under the exact futex model a wake of one
    /// would leave the other asleep: deadlock).
    #[test]
    fn loom_sem_post_n_wakes_several_sleepers() {
        loom::model(|| {
            let s = Arc::new(Semaphore::new(0));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let s = Arc::clone(&s);
                    thread::spawn(move || s.wait().unwrap())
                })
                .collect();
            while s.sleepers.load(Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
            s.post_n(2).unwrap();
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!(s.value(), Ok(0));
            assert_eq!(s.sleepers(), Ok(0));
        });
    }

    /// The chained wake: two units arrive but only one sleeper is woken
    /// (a `post_n(2)` whose poster was killed after waking one, modelled as
    /// the bare CAS and one `FUTEX_WAKE` of 1). The woken waiter takes a
    /// unit, sees units and sleepers left, and wakes the next. Untimed,
    /// unsliced waiters: without the chained wake, deadlock.
    #[test]
    fn loom_sem_chained_wake() {
        loom::model(|| {
            let s = Arc::new(Semaphore::new(0));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let s = Arc::clone(&s);
                    thread::spawn(move || s.wait_with(None, false).unwrap())
                })
                .collect();
            while s.sleepers.load(Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
            s.count.fetch_add(2, Ordering::Release);
            fence(Ordering::SeqCst);
            futex::wake(&s.count);
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!(s.value(), Ok(0));
            assert_eq!(s.sleepers(), Ok(0));
        });
    }

    /// A timed wait racing a post: either it takes the unit or it times
    /// out and the unit is still there, never both, never neither.
    #[test]
    fn loom_sem_timeout_keeps_units() {
        loom::model(|| {
            let s = Arc::new(Semaphore::new(0));
            let s2 = Arc::clone(&s);
            let t =
                thread::spawn(move || s2.wait_deadline(Instant::now() + Duration::from_secs(1)));
            s.post().unwrap();
            let r = t.join().unwrap();
            let left = s.value().unwrap();
            match r {
                Ok(()) => assert_eq!(left, 0),
                Err(WaitError::Timeout) => assert_eq!(left, 1),
                Err(e) => panic!("{e}"),
            }
            assert_eq!(s.sleepers(), Ok(0));
        });
    }
}
