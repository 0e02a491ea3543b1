//! The tokio fast path (feature `tokio`): a pending future inside a tokio
//! runtime waits through an io_uring `IORING_OP_FUTEX_WAIT` (Linux >= 6.7)
//! on that runtime's ring, whose descriptor sits in tokio's own reactor.
//! The waking side's `FUTEX_WAKE` completes the wait, the completion makes
//! the ring readable, and the runtime's `epoll_wait` returns: one thread
//! wake per hand-off, as for a blocking waiter, where the waiter thread
//! (`reactor`) costs two (the thread, then the executor).
//!
//! # Protocol
//!
//! [`Registration::arm`] reads the word under the ring lock and returns
//! `false` if it no longer holds `seen`; otherwise it stores the `Waker`
//! and its liveness tick and, unless a wait of this registration is
//! already in the kernel, submits `FUTEX_WAIT(word, seen)`. The kernel compares the word with `seen` atomically with
//! queueing the waiter, exactly as `futex_waitv` does in the waiter
//! thread, so `park`'s handshake (count, fence, re-check, arm) carries
//! over unchanged: a change after the arming read either fails the
//! kernel's compare (`EAGAIN`) or meets a queued waiter that the waking
//! side's `FUTEX_WAKE` completes. A wait already in flight stays valid
//! across a re-arm: the future has been counted as a sleeper since before
//! that wait was queued, so any later change of the word comes with a
//! `FUTEX_WAKE` that completes it.
//!
//! A per-ring reaper task (spawned on the runtime) awaits readiness of the
//! ring's descriptor, drains the completion queue and wakes the wakers of
//! the completed waits.
//!
//! Liveness ticks (a pending future is polled again at least every slice,
//! to notice a dead peer) share one `IORING_OP_TIMEOUT` per ring, set for
//! the earliest tick: a steady hand-off submits one wait and nothing
//! else (a timeout linked to each wait cost about 1.5 µs per hand-off).
//! When the timer fires, the reaper wakes the registrations whose tick is
//! due (within [`TICK_SLACK`]) and sets the timer for the next one. Dropping a registration with a wait in flight
//! submits `IORING_OP_ASYNC_CANCEL` for it; its late completion matches no
//! registration and is only counted.
//!
//! # When it is used
//!
//! On a tokio runtime's own threads (a current-thread runtime's
//! `block_on` thread; a multi-threaded runtime's workers, so spawned
//! tasks) with its IO driver (`enable_io`, `enable_all`,
//! `#[tokio::main]`), when the kernel has io_uring with `FUTEX_WAIT` and
//! `SHMKIT_AIO_URING` is not `0`. Elsewhere (another executor, the
//! `block_on` thread of a multi-threaded runtime, a runtime without IO,
//! io_uring disabled by sysctl or seccomp, an older kernel, a failed
//! submission) futures use the waiter thread. See `docs/async.md`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::primitive::{AtomicU32, Ordering};

/// `FUTEX2_SIZE_U32`: the words are 32-bit. Not `FUTEX2_PRIVATE`: they are
/// shared between processes.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX_BITSET_MATCH_ANY`.
const MATCH_ANY: u64 = 0xffff_ffff;
/// Submission queue entries: a submission is made at once, so at most one
/// entry is queued at a time per arming thread.
const SQ_ENTRIES: u32 = 64;
/// Completion queue entries; the kernel keeps overflow beyond this
/// (`IORING_FEAT_NODROP`), so it bounds nothing, it only sizes the ring.
const CQ_ENTRIES: u32 = 4096;
/// The `user_data` of cancellations (odd: not a wait, see [`wait_ud`]).
const CANCEL_UD: u64 = u64::MAX;
/// The `user_data` of the ring's tick timer (odd too).
const TIMER_UD: u64 = u64::MAX - 2;
/// Registrations whose tick falls within this of the timer's expiry are
/// woken with it (one timer serves ticks close together).
const TICK_SLACK: std::time::Duration = std::time::Duration::from_millis(1);

/// A wait's `user_data`: the registration id, shifted; odd values are
/// the timer and cancellations.
fn wait_ud(id: u64) -> u64 {
    id << 1
}

/// Whether the kernel has io_uring with `FUTEX_WAIT` (probed once).
static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
/// Switched off: by `SHMKIT_AIO_URING=0` (read once, at first use), by
/// [`set_enabled`], or after a submission failed.
static OFF: AtomicBool = AtomicBool::new(false);
/// Whether the environment was read into [`OFF`].
static ENV: std::sync::Once = std::sync::Once::new();
/// Forks so far: bumped in the child of every `fork` (a `pthread_atfork`
/// handler), so that a child never uses a ring it inherited. Cheaper than
/// `getpid`, a system call per poll.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    // Relaxed: the child has one thread now; later reads are on it or on
    // threads it starts (which synchronise with their start).
    FORKS.fetch_add(1, StdOrdering::Relaxed);
}

/// The rings of this process, one per tokio runtime (weak: a ring lives
/// as long as its reaper task or a registration holds it).
static RINGS: Mutex<Vec<std::sync::Weak<Ring>>> = Mutex::new(Vec::new());
/// Runtimes that get no ring: their reaper task ended (the runtime shut
/// down, or is shutting down and dropped the task at once), or a ring
/// could not be made there (no IO driver). Their futures use the waiter
/// thread instead of trying ring after ring. Runtime ids are never
/// reused.
static NO_RING: Mutex<Vec<tokio::runtime::Id>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's last ring, to skip the global lookup on each poll.
    static LAST: std::cell::RefCell<Option<Arc<Ring>>> = const { std::cell::RefCell::new(None) };
    /// Set while registering the ring with tokio: a runtime without its
    /// IO driver panics there, and that expected panic is not reported.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One runtime's io_uring instance.
pub(crate) struct Ring {
    /// The ring, registered with the runtime's reactor for readability
    /// (completions pending).
    fd: AsyncFd<RingFd>,
    /// The runtime it belongs to, and the process's fork count when it
    /// was made (a forked child must not use its parent's ring).
    rt: tokio::runtime::Id,
    forks: u64,
    /// Cleared when the reaper task ends (its runtime shut down).
    alive: AtomicBool,
}

/// The descriptor tokio polls; owns the ring, so the descriptor stays
/// open while tokio has it registered.
struct RingFd {
    raw: RawFd,
    inner: Mutex<Inner>,
}

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw
    }
}

struct Inner {
    uring: IoUring,
    slots: HashMap<u64, Slot>,
    next_id: u64,
    /// A submission failed: never submit on this ring again.
    broken: bool,
    /// Waits submitted and not yet completed (cancelled ones included).
    in_flight: usize,
    /// The expiry of the earliest tick timer in the kernel, if known
    /// (later ones may be pending too; each firing rescans).
    timer_at: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// A `FUTEX_WAIT` of this registration is in the kernel.
    in_flight: bool,
    /// Wake at this instant even if the word does not change.
    tick: Option<Instant>,
}

/// Whether io_uring `FUTEX_WAIT` is usable in this process.
fn enabled() -> bool {
    ENV.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic, which is
        // async-signal-safe, as code run in a forked child must be.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if std::env::var_os("SHMKIT_AIO_URING").is_some_and(|v| v == "0") {
            OFF.store(true, StdOrdering::Relaxed);
        }
    });
    // Relaxed: a plain switch; futures registered before a change move
    // over at their next poll (`park::Registrar::owns`).
    !OFF.load(StdOrdering::Relaxed) && *SUPPORTED.get_or_init(|| probe().is_ok())
}

/// Switches the fast path on or off for futures polled from now on.
pub(crate) fn set_enabled(on: bool) {
    enabled();
    OFF.store(!on, StdOrdering::Relaxed);
}

/// Builds a ring and checks that the kernel knows `FUTEX_WAIT`.
fn probe() -> std::io::Result<IoUring> {
    let uring = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)?;
    let mut p = io_uring::Probe::new();
    uring.submitter().register_probe(&mut p)?;
    if !p.is_supported(opcode::FutexWait::CODE) || !uring.params().is_feature_nodrop() {
        return Err(std::io::ErrorKind::Unsupported.into());
    }
    Ok(uring)
}

/// Reports a panic unless it is the expected one of [`QUIET`]; installed
/// once, in front of the hook that was there.
fn quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                prev(info)
            }
        }));
    });
}

impl Ring {
    /// The ring of the tokio runtime this thread runs in, created on first
    /// use; `None` outside tokio or when the fast path is off.
    pub(crate) fn current() -> Option<Arc<Ring>> {
        if !enabled() {
            return None;
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        // Only on the runtime's own threads (a current-thread runtime's
        // `block_on` thread, a multi-threaded runtime's workers): they
        // park in the runtime's driver or are woken through it, and the
        // kernel runs a wait's completion on the thread that submitted
        // it. A multi-threaded runtime's `block_on` thread parks on a
        // condition variable of its own: there a completion would wake it
        // once for nothing, then again through a worker (measured 1.5x
        // the waiter thread), so it keeps the waiter thread.
        tokio::runtime::worker_index()?;
        let id = handle.id();
        let forks = FORKS.load(StdOrdering::Relaxed);
        let usable =
            |r: &Ring| r.rt == id && r.forks == forks && r.alive.load(StdOrdering::Acquire);
        if let Some(r) = LAST.with(|l| l.borrow().clone()) {
            if usable(&r) {
                return Some(r);
            }
        }
        if NO_RING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return None;
        }
        let ring = {
            let mut rings = RINGS.lock().unwrap_or_else(|e| e.into_inner());
            rings.retain(|w| w.strong_count() > 0);
            match rings.iter().filter_map(|w| w.upgrade()).find(|r| usable(r)) {
                Some(r) => r,
                None => match Ring::new(&handle) {
                    Some(r) => {
                        rings.push(Arc::downgrade(&r));
                        r
                    }
                    None => {
                        NO_RING.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                        return None;
                    }
                },
            }
        };
        LAST.with(|l| *l.borrow_mut() = Some(ring.clone()));
        Some(ring)
    }

    /// A new ring for `handle`'s runtime, with its reaper task; `None` if
    /// io_uring fails here or the runtime has no IO driver.
    fn new(handle: &tokio::runtime::Handle) -> Option<Arc<Ring>> {
        let uring = probe().ok()?;
        let raw = uring.as_raw_fd();
        let ringfd = RingFd {
            raw,
            inner: Mutex::new(Inner {
                uring,
                slots: HashMap::new(),
                next_id: 0,
                broken: false,
                in_flight: 0,
                timer_at: None,
            }),
        };
        quiet_hook();
        QUIET.with(|q| q.set(true));
        let fd = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `raw` is the descriptor of the ring that `ringfd`
            // owns; it stays open and the same until the `AsyncFd` (which
            // owns `ringfd`) is dropped.
            unsafe { AsyncFd::register_with_interest(ringfd, Interest::READABLE) }.ok()
        }));
        QUIET.with(|q| q.set(false));
        // A runtime without IO panics in `register`: not for this one.
        let fd = fd.ok()??;
        let ring = Arc::new(Ring {
            fd,
            rt: handle.id(),
            forks: FORKS.load(StdOrdering::Relaxed),
            alive: AtomicBool::new(true),
        });
        let reaper = Reaper(ring.clone());
        handle.spawn(async move { reaper.run().await });
        Some(ring)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic under the lock leaves the table consistent (no step
        // spans an unwind), so a poisoned lock is still usable.
        self.fd
            .get_ref()
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A registration for one future.
    pub(crate) fn register(self: &Arc<Self>) -> Registration {
        let mut g = self.inner();
        g.next_id += 1;
        let id = g.next_id;
        g.slots.insert(id, Slot::default());
        Registration {
            ring: self.clone(),
            id,
        }
    }

    /// Drains the completion queue and wakes the wakers of completed
    /// waits and of due ticks.
    fn reap(&self) {
        let mut wake = Vec::new();
        {
            let mut g = self.inner();
            let mut timer = false;
            loop {
                let Inner {
                    uring,
                    slots,
                    in_flight,
                    ..
                } = &mut *g;
                for cqe in uring.completion() {
                    let ud = cqe.user_data();
                    if ud == TIMER_UD {
                        timer = true;
                    }
                    if ud & 1 == 1 {
                        continue;
                    }
                    *in_flight -= 1;
                    if let Some(s) = slots.get_mut(&(ud >> 1)) {
                        s.in_flight = false;
                        wake.extend(s.waker.take());
                    }
                }
                // Completions the kernel kept back (the queue was full)
                // come out only through an enter with GETEVENTS, which
                // `submit` makes when the overflow flag is set.
                if g.broken || !g.uring.submission().cq_overflow() || g.uring.submit().is_err() {
                    break;
                }
            }
            if timer {
                g.timer_at = None;
                let due = Instant::now() + TICK_SLACK;
                let mut next: Option<Instant> = None;
                for s in g.slots.values_mut() {
                    match s.tick {
                        Some(t) if t <= due => {
                            s.tick = None;
                            wake.extend(s.waker.take());
                        }
                        Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                        None => {}
                    }
                }
                if let Some(t) = next {
                    // A failure marks the ring broken; the next arm fails
                    // over and wakes its future.
                    let _ = Ring::set_timer(&mut g, t);
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// Submits a tick timer expiring at `t`, unless one expires no later.
    fn set_timer(g: &mut Inner, t: Instant) -> std::io::Result<()> {
        if g.timer_at.is_some_and(|d| d <= t) {
            return Ok(());
        }
        let d = t.saturating_duration_since(Instant::now());
        let ts = types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        let timer = opcode::Timeout::new(&ts).build().user_data(TIMER_UD);
        Ring::submit(g, &[timer])?;
        g.timer_at = Some(t);
        Ok(())
    }

    /// Pushes `entries` and submits them. After a failure the ring is
    /// `broken`: entries may be left queued (with pointers that are dead
    /// by then), so nothing is submitted on it again and the caller fails
    /// over.
    fn submit(g: &mut Inner, entries: &[squeue::Entry]) -> std::io::Result<()> {
        if g.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let r = Self::try_submit(g, entries);
        g.broken = r.is_err();
        r
    }

    fn try_submit(g: &mut Inner, entries: &[squeue::Entry]) -> std::io::Result<()> {
        let room = {
            let sq = g.uring.submission();
            sq.capacity() - sq.len()
        };
        if room < entries.len() {
            g.uring.submit()?;
        }
        {
            let mut sq = g.uring.submission();
            for e in entries {
                // SAFETY: the entries point at nothing that must outlive
                // this call but the timespec of a timeout, which the
                // kernel copies when the submission below prepares it, and
                // the futex word, which the caller's future keeps mapped
                // while the wait can be queued (the kernel reads the word
                // only when queueing, and faults safely). A failure marks
                // the ring broken, so a left entry is never submitted.
                unsafe { sq.push(e) }.map_err(|_| std::io::ErrorKind::WouldBlock)?;
            }
        }
        loop {
            match g.uring.submit() {
                Ok(n) if n >= entries.len() => return Ok(()),
                Ok(_) => return Err(std::io::ErrorKind::WouldBlock.into()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The reaper task: holds its ring and marks it dead when the runtime
/// drops the task.
struct Reaper(Arc<Ring>);

impl Reaper {
    async fn run(&self) {
        loop {
            match self.0.fd.readable().await {
                Ok(mut guard) => {
                    // Clear first, then drain: a completion posted after
                    // the clear makes the descriptor ready again.
                    guard.clear_ready();
                    self.0.reap();
                }
                Err(_) => return,
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `current`: a thread that sees
        // the ring dead also sees it will be reaped no more.
        self.0.alive.store(false, StdOrdering::Release);
        NO_RING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.0.rt);
        // Nobody reaps this ring now: wake every armed future so that it
        // polls again and moves to the waiter thread or another ring.
        let wake: Vec<Waker> = self
            .0
            .inner()
            .slots
            .values_mut()
            .filter_map(|s| s.waker.take())
            .collect();
        for w in wake {
            w.wake();
        }
    }
}

/// A future's place in a ring.
pub(crate) struct Registration {
    ring: Arc<Ring>,
    id: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Registration")
            .field("id", &self.id)
            .finish()
    }
}

impl Registration {
    /// Whether this registration is on `ring`.
    pub(crate) fn is_on(&self, ring: &Arc<Ring>) -> bool {
        Arc::ptr_eq(&self.ring, ring)
    }

    /// As the waiter thread's `Registration::arm`: `false` if `word` no
    /// longer holds `seen`; else `waker` is woken when it changes (or at
    /// `tick`).
    pub(crate) fn arm(
        &self,
        word: &AtomicU32,
        seen: u32,
        waker: &Waker,
        tick: Option<Instant>,
    ) -> bool {
        let mut g = self.ring.inner();
        // Acquire: pairs with the waking side's Release bump; the caller
        // re-checks its condition after a `false`.
        if word.load(Ordering::Acquire) != seen {
            return false;
        }
        if !self.ring.alive.load(StdOrdering::Acquire) {
            // Nobody reaps this ring: poll again, elsewhere.
            drop(g);
            waker.wake_by_ref();
            return true;
        }
        let slot = g.slots.entry(self.id).or_default();
        match &mut slot.waker {
            Some(old) if old.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        slot.tick = tick;
        // A wait still in flight stays valid (module docs): its completion
        // wakes `waker`; otherwise submit one.
        let submit_wait = !slot.in_flight;
        let r = match tick {
            Some(t) => Ring::set_timer(&mut g, t),
            None => Ok(()),
        }
        .and_then(|()| {
            if !submit_wait {
                return Ok(());
            }
            let wait = opcode::FutexWait::new(
                word.as_ptr().cast_const(),
                u64::from(seen),
                MATCH_ANY,
                FUTEX2_SIZE_U32,
            )
            .build()
            .user_data(wait_ud(self.id));
            Ring::submit(&mut g, &[wait])?;
            g.in_flight += 1;
            if let Some(s) = g.slots.get_mut(&self.id) {
                s.in_flight = true;
            }
            Ok(())
        });
        if r.is_err() {
            // The fast path is broken here: switch it off for the process
            // and poll again, on the waiter thread.
            OFF.store(true, StdOrdering::Relaxed);
            if let Some(s) = g.slots.get_mut(&self.id) {
                s.waker = None;
            }
            drop(g);
            waker.wake_by_ref();
        }
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut g = self.ring.inner();
        if let Some(s) = g.slots.remove(&self.id) {
            if s.in_flight && self.ring.alive.load(StdOrdering::Acquire) {
                let cancel = opcode::AsyncCancel::new(wait_ud(self.id))
                    .build()
                    .user_data(CANCEL_UD);
                // A failed cancel (the ring is broken) leaves the wait
                // queued until the word changes or the ring closes: a
                // kernel entry, whose completion matches no slot.
                let _ = Ring::submit(&mut g, &[cancel]);
            }
        }
    }
}

/// `(rings, registrations, waits in the kernel)` of this process.
pub(crate) fn stats() -> (usize, usize, usize) {
    let rings: Vec<Arc<Ring>> = RINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    let (regs, flight) = rings.iter().fold((0, 0), |(n, f), r| {
        let g = r.inner();
        (n + g.slots.len(), f + g.in_flight)
    });
    (rings.len(), regs, flight)
}

/// Whether futures inside a tokio runtime use io_uring in this process.
pub(crate) fn is_enabled() -> bool {
    enabled()
}

#[cfg(test)]
mod tests {
    //! The ring's own bookkeeping: waits reach the kernel, a dropped
    //! registration cancels its wait, a change completes it, and the tick
    //! timer wakes a registration whose word never changes.

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::{Duration, Instant};

    use super::*;

    /// Counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, StdOrdering::SeqCst);
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// A runtime, its ring, a word holding `value`, and a counting waker.
    fn fixture(
        value: u32,
    ) -> (
        tokio::runtime::Runtime,
        Arc<Ring>,
        Box<AtomicU32>,
        Arc<Count>,
        Waker,
    ) {
        assert!(enabled(), "io_uring FUTEX_WAIT unavailable on this kernel");
        let rt = rt();
        let ring = rt.block_on(async { Ring::current() }).expect("a ring");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (rt, ring, Box::new(AtomicU32::new(value)), count, waker)
    }

    fn in_flight(ring: &Ring) -> usize {
        ring.inner().in_flight
    }

    /// Runs the runtime (so the reaper reaps) until `cond` or 5 s.
    fn until(rt: &tokio::runtime::Runtime, ring: &Ring, mut cond: impl FnMut(&Ring) -> bool) {
        rt.block_on(async {
            let t0 = Instant::now();
            while !cond(ring) {
                assert!(t0.elapsed() < Duration::from_secs(5), "timed out");
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    }

    #[test]
    fn dropped_registration_cancels_its_wait_and_a_change_completes_one() {
        let (rt, ring, word, count, waker) = fixture(7);
        // A stale `seen` arms nothing.
        let reg = ring.register();
        assert!(!reg.arm(&word, 6, &waker, None));
        assert_eq!(in_flight(&ring), 0);
        // Armed without a tick: only a change or a cancel ends the wait.
        assert!(reg.arm(&word, 7, &waker, None));
        assert_eq!(in_flight(&ring), 1);
        // A re-arm while in flight submits nothing more.
        assert!(reg.arm(&word, 7, &waker, None));
        assert_eq!(in_flight(&ring), 1);
        drop(reg);
        until(&rt, &ring, |r| in_flight(r) == 0);
        assert_eq!(
            count.0.load(StdOrdering::SeqCst),
            0,
            "a dropped waiter woken"
        );
        assert_eq!(ring.inner().slots.len(), 0);
        // A change and a FUTEX_WAKE complete a wait and wake its waker.
        let reg = ring.register();
        assert!(reg.arm(&word, 7, &waker, None));
        word.store(8, Ordering::Release);
        crate::sys::futex::wake_all(&word);
        until(&rt, &ring, |r| in_flight(r) == 0);
        assert_eq!(count.0.load(StdOrdering::SeqCst), 1);
        drop(reg);
    }

    #[test]
    fn the_tick_timer_wakes_a_registration_whose_word_never_changes() {
        let (rt, ring, word, count, waker) = fixture(0);
        let reg = ring.register();
        let t0 = Instant::now();
        assert!(reg.arm(&word, 0, &waker, Some(t0 + Duration::from_millis(30))));
        until(&rt, &ring, |_| count.0.load(StdOrdering::SeqCst) == 1);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(29), "woken early: {took:?}");
        // The wait itself is still in the kernel, and still valid.
        assert_eq!(in_flight(&ring), 1);
        drop(reg);
        until(&rt, &ring, |r| in_flight(r) == 0);
    }
}
