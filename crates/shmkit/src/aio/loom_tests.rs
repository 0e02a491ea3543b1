//! Loom models of the async handshake, run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p shmkit
//! --features async --lib --release aio::loom_tests` (as in `.ci/run`).
//!
//! The real [`Park`], [`Shard`] (waiter thread pass, table, kick) and the
//! real waking side ([`notify`]) run against loom's atomics and the model
//! futex (`sys::futex` under loom, `waitv` included). A lost wake shows up
//! as a deadlock, which loom reports.

use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::Arc;
use loom::thread;

use super::park::{Park, Reg, Registrar, Target};
use super::reactor::Shard;
use crate::channel::wait::notify;
use crate::primitive::{AtomicU32, Ordering};
use crate::sys::futex;

struct ModelRegistrar(StdArc<Shard>);

impl Registrar for ModelRegistrar {
    fn register(&self, word: &AtomicU32, linger: bool) -> Reg {
        Reg::Thread(
            self.0
                .try_add(word as *const AtomicU32 as usize, linger)
                .expect("room"),
        )
    }
    fn owns(&self, _reg: &Reg) -> bool {
        true
    }
}

/// A waker that bumps a futex word the test thread sleeps on.
struct Flag(AtomicU32);

impl Wake for Flag {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &StdArc<Self>) {
        self.0.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.0);
    }
}

/// The shared object: a progress flag (a ring's tail, a semaphore's
/// count), its futex word and its sleeper count.
/// (Also the object of `loom_uring`.)
pub(super) struct Obj {
    pub(super) progress: AtomicU32,
    pub(super) word: AtomicU32,
    pub(super) sleepers: AtomicU32,
}

impl Obj {
    pub(super) fn new() -> Arc<Obj> {
        Arc::new(Obj {
            progress: AtomicU32::new(0),
            word: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        })
    }
}

/// A shard with its waiter thread running passes until [`Reactor::stop`].
struct Reactor {
    shard: StdArc<Shard>,
    thread: thread::JoinHandle<()>,
}

impl Reactor {
    fn start() -> Reactor {
        let shard = StdArc::new(Shard::new(false));
        let thread = {
            let shard = shard.clone();
            thread::spawn(move || while shard.run_once() {})
        };
        Reactor { shard, thread }
    }

    fn registrar(&self) -> ModelRegistrar {
        ModelRegistrar(self.shard.clone())
    }

    fn stop(self) {
        self.shard.quit();
        self.thread.join().unwrap();
    }
}

/// Runs a future-like waiter on `obj` to completion on this thread,
/// sleeping on its waker between polls; `counted` says whether it
/// announces itself in the sleeper count.
fn await_progress(obj: &Obj, registrar: &ModelRegistrar, counted: bool) {
    await_progress_to(obj, registrar, counted, 1);
}

/// [`await_progress`] until the progress reaches `want`.
fn await_progress_to(obj: &Obj, registrar: &ModelRegistrar, counted: bool, want: u32) {
    let flag = StdArc::new(Flag(AtomicU32::new(0)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut park = Park::default();
    let target = Target {
        word: &obj.word,
        sleepers: counted.then_some(&obj.sleepers),
        mine: None,
        slice: None,
        linger: true,
        spins: 0,
    };
    loop {
        // Acquire: pairs with the Release bump in `Flag::wake_by_ref`.
        let seen = flag.0.load(Ordering::Acquire);
        let mut check = |_| {
            // Acquire: pairs with the notifier's Release store.
            (obj.progress.load(Ordering::Acquire) >= want).then_some(())
        };
        match park.poll_with(registrar, &mut cx, target, &mut check) {
            Poll::Ready(()) => break,
            Poll::Pending => {
                futex::wait(&flag.0, seen, None);
            }
        }
    }
    park.done(target);
}

fn model(counted: bool) {
    loom::model(move || {
        let obj = Obj::new();
        let reactor = Reactor::start();
        let notifier = {
            let obj = obj.clone();
            thread::spawn(move || {
                // Release: the waiter's Acquire check sees it.
                obj.progress.store(1, Ordering::Release);
                notify(&obj.word, &obj.sleepers);
            })
        };
        await_progress(&obj, &reactor.registrar(), counted);
        notifier.join().unwrap();
        reactor.stop();
        // The future left: no sleeper stays counted.
        assert_eq!(obj.sleepers.load(Ordering::Relaxed), 0);
    });
}

/// Announce (count), re-check, arm; the waiter thread waits in `waitv`:
/// whatever the interleaving with the notifier, the future completes.
#[test]
fn async_waiter_is_never_lost() {
    model(true);
}

/// The same without counting the async waiter as a sleeper: the notifier
/// skips its wake and the future can sleep for ever. Loom finds that
/// interleaving (a deadlock), which is why every async waiter counts.
#[test]
#[should_panic]
fn uncounted_async_waiter_can_be_lost() {
    model(false);
}

/// Two futures share one word (one slot of the waiter thread, one
/// expected value): the notifier's single bump wakes both.
#[test]
fn two_async_waiters_share_a_word() {
    loom::model(|| {
        let obj = Obj::new();
        let reactor = Reactor::start();
        let other = {
            let (obj, registrar) = (obj.clone(), reactor.registrar());
            thread::spawn(move || await_progress(&obj, &registrar, true))
        };
        // Release: the waiters' Acquire checks see it.
        obj.progress.store(1, Ordering::Release);
        notify(&obj.word, &obj.sleepers);
        await_progress(&obj, &reactor.registrar(), true);
        other.join().unwrap();
        reactor.stop();
        assert_eq!(obj.sleepers.load(Ordering::Relaxed), 0);
    });
}

/// The registration kept across futures (a lingering entry: the word's
/// table entry outlives the first future, and the thread keeps waiting on
/// the word's new value, so the second future may arm without a kick):
/// two futures in a row on one word against two notifications, the second
/// future is never lost either.
#[test]
fn lingering_registration_is_never_lost() {
    loom::model(|| {
        let obj = Obj::new();
        let reactor = Reactor::start();
        let notifier = {
            let obj = obj.clone();
            thread::spawn(move || {
                for i in 1..=2 {
                    // Release: the waiter's Acquire check sees it.
                    obj.progress.store(i, Ordering::Release);
                    notify(&obj.word, &obj.sleepers);
                }
            })
        };
        let registrar = reactor.registrar();
        await_progress_to(&obj, &registrar, true, 1);
        await_progress_to(&obj, &registrar, true, 2);
        notifier.join().unwrap();
        // The entry lingers after its last future (no registration).
        assert_eq!(reactor.shard.words(), 0);
        reactor.stop();
        assert_eq!(obj.sleepers.load(Ordering::Relaxed), 0);
    });
}
