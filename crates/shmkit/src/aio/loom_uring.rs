//! Loom model of the tokio fast path's protocol (`uring`), run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shmkit --features async --lib
//! --release aio::loom_uring`.
//!
//! `uring` needs io_uring and tokio and is not compiled under loom, so this
//! model restates its core with loom primitives:
//!
//! - the kernel ([`Kernel`]): the futex hash bucket (the queued
//!   `FUTEX_WAIT`s of the word, under a loom `Mutex`, the bucket lock,
//!   which also covers the completion queue) where a wait compares the word
//!   with `seen` and queues in one step (else completes at once, `EAGAIN`),
//!   `FUTEX_WAKE` completes every queued wait, `ASYNC_CANCEL` completes a
//!   queued one (`ECANCELED`); completions go to the completion queue,
//!   whose readiness wakes the reaper (tokio's reactor, here a `Condvar`);
//! - the ring ([`Ring`]): the ring lock over the slot table
//!   `{waker, in_flight}`, [`Registration::arm`] and its `Drop` exactly as
//!   in `uring.rs` (the word check under the ring lock, the "already in
//!   flight: just replace the waker" branch, the submission otherwise),
//!   and the reaper ([`Ring::reap`]: drain, clear `in_flight`, take the
//!   waker, wake outside the lock);
//! - the future side ([`Fut`], `park::Park::poll_with` without the spin and
//!   the slices): read the word, count itself once, `SeqCst` fence,
//!   re-check, arm, back to the read if the arm fails;
//! - the waking side ([`notify`], `channel::wait::notify`): progress,
//!   `SeqCst` fence, read the sleeper count, bump the word and
//!   `FUTEX_WAKE` if non-zero.
//!
//! Simplifications, none of which removes an interleaving the ring can
//! observe: completions are posted synchronously by the kernel operation
//! that makes them (io_uring posts them a little later, from task work;
//! the ring sees the completion queue only under its lock, so "completed
//! but not posted yet" looks to it like "posted but not reaped yet", which
//! the model has); the bucket and the completion queue share one lock
//! (each kernel step is atomic to the ring); `FUTEX_WAKE` always takes the
//! bucket lock (the kernel
//! skips it when its waiter count, ordered by full barriers, is zero);
//! submissions never fail, the reaper lives as long as the model (the
//! `alive`/`broken` fail-over paths and the liveness tick are out of scope).
//!
//! # Models
//!
//! The waking side (one thread), the reaper (one thread) and the future
//! (the test thread) run concurrently:
//!
//! - [`pending_future_is_woken`]: one poll against one progress step
//!   (exhaustive: about 1.5 s in `--release`).
//! - [`spurious_repoll_is_woken`]: two polls (the second spurious, without
//!   a wake) against two progress steps. The second poll often finds the
//!   word bumped by the first step and the first wait still `in_flight`
//!   in the table though the kernel already completed it (its completion
//!   not reaped yet): it re-arms with the newer `seen`, only replaces the
//!   waker, and the stale wait's completion is what wakes it. Preemption
//!   bound 3, as `loom_tests` in `.ci/run` (about 2 s; 4: about 20 s;
//!   5: about 150 s).
//! - [`uncounted_future_can_be_lost`]: the future skips the sleeper count;
//!   loom must find the lost wake (kept, as in `loom_tests`, as a check
//!   that the model can fail).
//! - [`cancelled_wait_wakes_nobody`]: the future is dropped after going
//!   pending, its wait possibly in flight: its slot is gone at once and
//!   its late completion (the cancel's `ECANCELED`, or the waking side's)
//!   matches no slot and wakes nobody. Bound 3 (under 1 s; 4: about 3 s;
//!   exhaustive: about 9 minutes, passes).
//!
//! `LOOM_MAX_PREEMPTIONS`, when set, overrides these bounds. The no-lost-
//! wake models require that a future left pending was woken after its
//! last poll began, once the waking side has finished and the reaper has
//! drained every completion (then its next poll is ready). All models end
//! with no wait queued in the kernel, no slot in the table, no wait in
//! flight and no sleeper counted. The second and fourth assert afterwards
//! that loom explored the case they are about (a re-arm over a completed,
//! unreaped wait; a completion reaped after its registration's drop).
//!
//! # Breaking the protocol (done once, then restored)
//!
//! Each model was checked to fail, in well under a second, when the
//! protocol is broken; loom caught every one of these:
//!
//! - no sleeper count (permanent: [`uncounted_future_can_be_lost`]): the
//!   waking side skips its bump and `FUTEX_WAKE`, the future's re-check
//!   misses the progress: "lost wake".
//! - the kernel queueing without its compare (`futex_wait` ignoring
//!   `seen`): [`pending_future_is_woken`] and [`spurious_repoll_is_woken`]
//!   fail with "lost wake" (the bump lands after the arm's check under the
//!   ring lock, its `FUTEX_WAKE` before the queueing): the ring lock does
//!   not order the arm against the waking side, only the kernel's compare
//!   does.
//! - the reaper not clearing `in_flight`: [`pending_future_is_woken`] still
//!   passes (one arm), [`spurious_repoll_is_woken`] fails with "lost wake":
//!   the re-poll with the newer `seen` trusts a wait that already
//!   completed and submits nothing.
//! - `Drop` keeping the slot of a wait in flight (leaving it to the
//!   reaper): [`cancelled_wait_wakes_nobody`] fails with "a slot outlived
//!   its registration"; without that assertion, with "a late completion
//!   woke a dropped future".
//! - `Drop` not cancelling: [`cancelled_wait_wakes_nobody`] and
//!   [`spurious_repoll_is_woken`] fail with "a wait stayed queued in the
//!   kernel" (the future left the sleeper count, so the waking side
//!   rightly skips its `FUTEX_WAKE`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

// The waiting object (progress, its futex word, its sleeper count) is
// the waiter-thread model's.
use super::loom_tests::Obj;
use crate::primitive::{fence, AtomicU32, Ordering};

/// The `user_data` of cancellations (odd: not a wait), as in `uring.rs`.
const CANCEL_UD: u64 = u64::MAX;

/// A wait's `user_data`, as in `uring.rs`.
fn wait_ud(id: u64) -> u64 {
    id << 1
}

/// What the model explored, over all executions of one `loom::model`
/// (instrumentation: std atomics, not part of the model).
/// Its counters are `Relaxed`: loom runs a model's threads on one OS
/// thread, and they are read after `loom::model` returns.
#[derive(Default)]
struct Explored {
    /// Arms that found `in_flight` set while the wait's completion was
    /// already posted (the stale in-flight wait).
    stale_in_flight: StdAtomicUsize,
    /// Wait completions reaped after their registration was dropped.
    late: StdAtomicUsize,
}

/// The kernel: the word's futex hash bucket and the ring's completion
/// queue, under one lock (the kernel's own steps are atomic to the ring).
struct Kernel {
    state: Mutex<KState>,
    /// The ring descriptor's readiness (completions pending), which wakes
    /// the reaper.
    readable: Condvar,
    /// Wait completions posted and not reaped (instrumentation, outside
    /// the model: a std atomic, so reading it adds no interleaving).
    unreaped: StdAtomicUsize,
}

struct KState {
    /// The `FUTEX_WAIT`s queued on the word, by `user_data`.
    queued: Vec<u64>,
    /// The completion queue, by `user_data`.
    cq: Vec<u64>,
    /// Model only: the reaper stops once this is set and the queue is
    /// drained (its runtime shutting down after the model's last step).
    quit: bool,
}

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            state: Mutex::new(KState {
                queued: Vec::new(),
                cq: Vec::new(),
                quit: false,
            }),
            readable: Condvar::new(),
            unreaped: StdAtomicUsize::new(0),
        }
    }

    /// Posts a completion and makes the ring readable.
    fn post(&self, k: &mut KState, ud: u64) {
        k.cq.push(ud);
        if ud & 1 == 0 {
            self.unreaped.fetch_add(1, StdOrdering::Relaxed);
        }
        self.readable.notify_one();
    }

    /// `FUTEX_WAIT(word, seen)`, issued during the submission: compares
    /// and queues in one step under the bucket lock, else completes at
    /// once (`EAGAIN`).
    fn futex_wait(&self, word: &AtomicU32, seen: u32, ud: u64) {
        let mut k = self.state.lock().unwrap();
        // Relaxed: the waking side bumps the word before it takes the
        // bucket lock in `futex_wake`. If it takes the lock after us, it
        // finds our wait queued; if before, its unlock and our lock order
        // the bump before this load, which coherence then makes read it
        // (or a later value): either way we miss no bump.
        if word.load(Ordering::Relaxed) != seen {
            self.post(&mut k, ud);
        } else {
            k.queued.push(ud);
        }
    }

    /// `FUTEX_WAKE(word, all)`: completes every queued wait.
    fn futex_wake(&self) {
        let mut k = self.state.lock().unwrap();
        for ud in std::mem::take(&mut k.queued) {
            self.post(&mut k, ud);
        }
    }

    /// `ASYNC_CANCEL(ud)`: completes the wait if it is still queued
    /// (`ECANCELED`; else `ENOENT`), then the cancel itself.
    fn cancel(&self, ud: u64) {
        let mut k = self.state.lock().unwrap();
        if let Some(i) = k.queued.iter().position(|&u| u == ud) {
            k.queued.remove(i);
            self.post(&mut k, ud);
        }
        self.post(&mut k, CANCEL_UD);
    }
}

/// One runtime's ring: the ring lock over the slot table, and the kernel
/// behind it.
struct Ring {
    inner: Mutex<Inner>,
    kernel: Kernel,
    explored: StdArc<Explored>,
}

struct Inner {
    slots: BTreeMap<u64, Slot>,
    next_id: u64,
    /// Waits submitted and not yet completed (`Ring::in_flight`, a plain
    /// counter here: it only ever changes under the ring lock).
    in_flight: usize,
    /// Wakers the reaper took from the table (test bookkeeping).
    taken: usize,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// A `FUTEX_WAIT` of this registration is in the kernel.
    in_flight: bool,
}

impl Ring {
    fn new(explored: StdArc<Explored>) -> Arc<Ring> {
        Arc::new(Ring {
            inner: Mutex::new(Inner {
                slots: BTreeMap::new(),
                next_id: 0,
                in_flight: 0,
                taken: 0,
            }),
            kernel: Kernel::new(),
            explored,
        })
    }

    /// `Ring::register`.
    fn register(ring: &Arc<Ring>) -> Registration {
        let mut g = ring.inner.lock().unwrap();
        g.next_id += 1;
        let id = g.next_id;
        g.slots.insert(id, Slot::default());
        Registration {
            ring: ring.clone(),
            id,
        }
    }

    /// `Ring::reap`: drains the completion queue under the ring lock,
    /// wakes outside it.
    fn reap(&self) {
        let mut wake = Vec::new();
        {
            let mut g = self.inner.lock().unwrap();
            let cqes = {
                let mut k = self.kernel.state.lock().unwrap();
                self.kernel.unreaped.store(0, StdOrdering::Relaxed);
                std::mem::take(&mut k.cq)
            };
            for ud in cqes {
                if ud & 1 == 1 {
                    continue;
                }
                g.in_flight -= 1;
                let Inner { slots, taken, .. } = &mut *g;
                match slots.get_mut(&(ud >> 1)) {
                    Some(s) => {
                        s.in_flight = false;
                        if let Some(w) = s.waker.take() {
                            *taken += 1;
                            wake.push(w);
                        }
                    }
                    None => {
                        self.explored.late.fetch_add(1, StdOrdering::Relaxed);
                    }
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// The reaper task: waits for readiness, drains, until told to stop
    /// with nothing left.
    fn run_reaper(&self) {
        loop {
            {
                let mut k = self.kernel.state.lock().unwrap();
                while k.cq.is_empty() && !k.quit {
                    k = self.kernel.readable.wait(k).unwrap();
                }
                if k.cq.is_empty() {
                    return;
                }
            }
            self.reap();
        }
    }

    fn stop_reaper(&self) {
        self.kernel.state.lock().unwrap().quit = true;
        self.kernel.readable.notify_one();
    }
}

/// A future's place in the ring.
struct Registration {
    ring: Arc<Ring>,
    id: u64,
}

impl Registration {
    /// `Registration::arm`: `false` if `word` no longer holds `seen`; else
    /// `waker` is woken when it changes.
    fn arm(&self, word: &AtomicU32, seen: u32, waker: &Waker) -> bool {
        let mut g = self.ring.inner.lock().unwrap();
        // Acquire: as in `uring.rs`, pairs with the waking side's Release
        // bump; the caller re-checks its condition after a `false`.
        if word.load(Ordering::Acquire) != seen {
            return false;
        }
        let slot = g.slots.entry(self.id).or_default();
        match &mut slot.waker {
            Some(old) if old.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        if slot.in_flight {
            if self.ring.kernel.unreaped.load(StdOrdering::Relaxed) > 0 {
                // Instrumentation: the wait already completed.
                self.ring
                    .explored
                    .stale_in_flight
                    .fetch_add(1, StdOrdering::Relaxed);
            }
            // Still valid: its completion wakes `waker`.
            return true;
        }
        self.ring.kernel.futex_wait(word, seen, wait_ud(self.id));
        if let Some(s) = g.slots.get_mut(&self.id) {
            s.in_flight = true;
        }
        g.in_flight += 1;
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut g = self.ring.inner.lock().unwrap();
        if let Some(s) = g.slots.remove(&self.id) {
            if s.in_flight {
                self.ring.kernel.cancel(wait_ud(self.id));
            }
        }
    }
}

/// The waking side, `channel::wait::notify` with the model kernel's wake;
/// call after the Release store of the progress.
fn notify(obj: &Obj, kernel: &Kernel) {
    // SeqCst fence: pairs with the future's fence after it counts itself
    // (Dekker): either its re-check sees our progress, or we see its
    // count here.
    fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence above.
    if obj.sleepers.load(Ordering::Relaxed) != 0 {
        // Release: a future that reads the new value (Acquire) also sees
        // the progress stored before `notify`.
        obj.word.fetch_add(1, Ordering::Release);
        kernel.futex_wake();
    }
}

/// A future waiting for `progress >= want`: `park::Park::poll_with` on
/// the ring, without the spin and the slices.
struct Fut {
    want: u32,
    /// Whether it counts itself as a sleeper (`false`: the broken model).
    announce: bool,
    counted: bool,
    reg: Option<Registration>,
}

impl Fut {
    fn new(want: u32, announce: bool) -> Fut {
        Fut {
            want,
            announce,
            counted: false,
            reg: None,
        }
    }

    fn poll(&mut self, obj: &Obj, ring: &Arc<Ring>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Acquire: pairs with the waking side's Release bump of the
            // word (the arm compares against this value).
            let seen = obj.word.load(Ordering::Acquire);
            if self.announce && !self.counted {
                // Relaxed + the fence below: the store half of the Dekker
                // pair with the waking side's [progress; fence; count].
                obj.sleepers.fetch_add(1, Ordering::Relaxed);
                self.counted = true;
            }
            fence(Ordering::SeqCst);
            // Acquire: pairs with the waking side's Release progress store.
            if obj.progress.load(Ordering::Acquire) >= self.want {
                self.done(obj);
                return Poll::Ready(());
            }
            let reg = self.reg.get_or_insert_with(|| Ring::register(ring));
            if reg.arm(&obj.word, seen, cx.waker()) {
                return Poll::Pending;
            }
        }
    }

    /// `Park::done`: unregisters (cancelling a wait in flight) and
    /// un-counts; on completion and on drop.
    fn done(&mut self, obj: &Obj) {
        self.reg = None;
        if std::mem::take(&mut self.counted) {
            // Relaxed: a hint for wakers; a late decrement costs one
            // spurious wake, never a lost one.
            obj.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The task's waker: a wake counter the test thread reads.
struct Flag(AtomicU32);

impl Wake for Flag {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &StdArc<Self>) {
        // Release: as a real waker's scheduling of its task, pairs with
        // the Acquire read-modify-write with which the executor starts a
        // poll (the future then sees what the reaper did before waking).
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// The producer: `steps` progress steps, each followed by `notify`.
fn spawn_producer(obj: &Arc<Obj>, ring: &Arc<Ring>, steps: u32) -> thread::JoinHandle<()> {
    let (obj, ring) = (obj.clone(), ring.clone());
    thread::spawn(move || {
        for i in 1..=steps {
            // Release: the future's Acquire re-check sees it.
            obj.progress.store(i, Ordering::Release);
            notify(&obj, &ring.kernel);
        }
    })
}

fn spawn_reaper(ring: &Arc<Ring>) -> thread::JoinHandle<()> {
    let ring = ring.clone();
    thread::spawn(move || ring.run_reaper())
}

/// After the model's threads are done: no queued wait, no slot, no wait
/// in flight, no sleeper.
fn check_quiet(obj: &Obj, ring: &Ring) {
    // Completions made by a drop after the reaper stopped (a cancel).
    ring.reap();
    assert!(
        ring.kernel.state.lock().unwrap().queued.is_empty(),
        "a wait stayed queued in the kernel"
    );
    let g = ring.inner.lock().unwrap();
    assert!(g.slots.is_empty(), "a slot outlived its registration");
    assert_eq!(g.in_flight, 0, "a wait never completed");
    assert_eq!(obj.sleepers.load(Ordering::Relaxed), 0);
}

/// `loom::model` with `bound` as the preemption bound unless
/// `LOOM_MAX_PREEMPTIONS` sets one.
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = bound;
    }
    builder.check(f);
}

/// A future polled `polls` times (the later ones spurious, without a
/// wake) against a producer of `steps` steps; the future wants all steps.
/// A future left pending must have been woken after its last poll began.
fn no_lost_wake(
    steps: u32,
    polls: usize,
    announce: bool,
    bound: Option<usize>,
) -> StdArc<Explored> {
    let explored = StdArc::new(Explored::default());
    let e = explored.clone();
    model(bound, move || {
        let obj = Obj::new();
        let ring = Ring::new(e.clone());
        let reaper = spawn_reaper(&ring);
        let producer = spawn_producer(&obj, &ring, steps);
        let flag = StdArc::new(Flag(AtomicU32::new(0)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Fut::new(steps, announce);
        let mut pending_since = None;
        for _ in 0..polls {
            // Acquire: pairs with the Release wake. A read-modify-write,
            // as the executor's clearing of its task's notified bit: it
            // reads the latest count, so a wake made before this poll is
            // never taken for one after it (a plain load could read a
            // stale count and let a lost wake pass).
            let epoch = flag.0.fetch_add(0, Ordering::Acquire);
            match fut.poll(&obj, &ring, &mut cx) {
                Poll::Ready(()) => {
                    pending_since = None;
                    break;
                }
                Poll::Pending => pending_since = Some(epoch),
            }
        }
        producer.join().unwrap();
        ring.stop_reaper();
        reaper.join().unwrap();
        if let Some(epoch) = pending_since {
            // Relaxed: the joins order every wake before this load.
            assert!(flag.0.load(Ordering::Relaxed) > epoch, "lost wake");
            // Woken: the executor polls again, and it is ready.
            assert!(fut.poll(&obj, &ring, &mut cx).is_ready());
        }
        fut.done(&obj);
        check_quiet(&obj, &ring);
    });
    explored
}

/// Poll once against one progress step: a pending future is woken.
#[test]
fn pending_future_is_woken() {
    no_lost_wake(1, 1, true, None);
}

/// Two polls (the second spurious, often with the word bumped by the
/// first step and the first wait completed but not reaped, so still
/// `in_flight`) against two steps: the re-armed future is still woken.
#[test]
fn spurious_repoll_is_woken() {
    let explored = no_lost_wake(2, 2, true, Some(3));
    assert!(
        explored.stale_in_flight.load(StdOrdering::Relaxed) > 0,
        "the model never re-armed over a completed, unreaped wait"
    );
}

/// Without the sleeper count the waking side skips its wake: loom finds
/// the lost wake (so the models above can fail).
#[test]
#[should_panic(expected = "lost wake")]
fn uncounted_future_can_be_lost() {
    no_lost_wake(1, 1, false, None);
}

/// The future goes pending and is dropped, its wait possibly in flight,
/// while the producer's step and the reaper run: the slot is gone at the
/// drop, the late completion wakes nobody and nothing is left behind.
#[test]
fn cancelled_wait_wakes_nobody() {
    let explored = StdArc::new(Explored::default());
    let e = explored.clone();
    model(Some(3), move || {
        let obj = Obj::new();
        let ring = Ring::new(e.clone());
        let reaper = spawn_reaper(&ring);
        let producer = spawn_producer(&obj, &ring, 1);
        let flag = StdArc::new(Flag(AtomicU32::new(0)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Fut::new(1, true);
        let mut taken_at_drop = None;
        if fut.poll(&obj, &ring, &mut cx).is_pending() {
            // Cancellation: the future is dropped.
            fut.done(&obj);
            let (empty, taken) = {
                let g = ring.inner.lock().unwrap();
                (g.slots.is_empty(), g.taken)
            };
            assert!(empty, "a slot outlived its registration");
            taken_at_drop = Some(taken);
        }
        producer.join().unwrap();
        ring.stop_reaper();
        reaper.join().unwrap();
        if let Some(t) = taken_at_drop {
            assert_eq!(
                ring.inner.lock().unwrap().taken,
                t,
                "a late completion woke a dropped future"
            );
        }
        check_quiet(&obj, &ring);
    });
    assert!(
        explored.late.load(StdOrdering::Relaxed) > 0,
        "the model never reaped a completion after its registration's drop"
    );
}
