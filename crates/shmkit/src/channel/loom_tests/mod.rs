//! Loom models of the channel algorithms, run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shmkit --lib --release
//! channel::loom_tests` (CI: the loom step of `.ci/run`, exhaustive except
//! the models it lists with a `LOOM_MAX_PREEMPTIONS` bound; the table in
//! docs/channel.md, "Proofs", gives each model's bound and time).
//!
//! The futex stand-in is exact (`wake(n)` wakes `min(n, sleepers)`; a
//! timed wait may end by wake or by timer) and the wait loops read a model
//! clock (`primitive::now`), so `wait_loop` itself is checked, slices and
//! deadlines included.
//!
//! The algorithms run unchanged on heap copies of the shared structures;
//! payloads are `loom::cell::UnsafeCell`s, so a slot written while someone
//! reads it (or read before it was published) is reported as a data race.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::ring::{ConsCursor, ProdCursor, RingCore, Stuck};
use super::wait::{
    arm, notify, notify_armed, sleep_once, wait_loop_armed, wake, Wait, WaitStrategy, SLICE,
};
use crate::primitive::{now, spin_hint, AtomicU64, Ordering};

mod pubsub;

/// A two-slot ring on the heap (also used by `loom_batch`).
pub(super) struct Ring {
    pub(super) core: RingCore,
    pub(super) stamps: [AtomicU64; 2],
    pub(super) slots: [UnsafeCell<u64>; 2],
}

impl Ring {
    pub(super) fn new() -> Ring {
        Ring {
            core: RingCore::new(),
            stamps: [AtomicU64::new(0), AtomicU64::new(0)],
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
        }
    }
}

/// Push/pop: three messages through two slots, in order, no data race
/// between the producer's writes and the consumer's reads.
#[test]
fn ring_push_pop() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            for v in 1..=3u64 {
                let pos = loop {
                    match cur.try_reserve(&p.core, 2) {
                        Ok(pos) => break pos,
                        Err(Stuck::Blocked) => spin_hint(),
                        Err(e) => panic!("{e:?}"),
                    }
                };
                p.slots[(pos & 1) as usize].with_mut(|s| unsafe { *s = v });
                cur.commit(&p.core, &p.stamps[(pos & 1) as usize]);
                notify(&p.core.data_seq.0, &p.core.cons_sleepers.0);
            }
        });
        let mut cur = ConsCursor { head: 0 };
        for v in 1..=3u64 {
            let pos = loop {
                match cur.try_peek(2, &r.stamps[(cur.head & 1) as usize]) {
                    Ok(pos) => break pos,
                    Err(Stuck::Blocked) => spin_hint(),
                    Err(e) => panic!("{e:?}"),
                }
            };
            let got = r.slots[(pos & 1) as usize].with(|s| unsafe { *s });
            assert_eq!(got, v);
            cur.release(&r.core);
        }
        producer.join().unwrap();
    });
}

/// The sleeper protocol: a consumer that sleeps on the futex (no
/// deadline) is always woken by the producer's `notify`: no lost wake-up.
#[test]
fn ring_sleeper_is_never_lost() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            let pos = cur.try_reserve(&p.core, 2).unwrap();
            p.slots[pos as usize].with_mut(|s| unsafe { *s = 42 });
            cur.commit(&p.core, &p.stamps[pos as usize]);
            notify(&p.core.data_seq.0, &p.core.cons_sleepers.0);
        });
        let mut cur = ConsCursor { head: 0 };
        let mut poll = || cur.try_peek(2, &r.stamps[0]).ok();
        let pos = loop {
            if let Ok(pos) =
                sleep_once(&r.core.data_seq.0, &r.core.cons_sleepers.0, &mut poll, None)
            {
                break pos;
            }
        };
        assert_eq!(r.slots[pos as usize].with(|s| unsafe { *s }), 42);
        producer.join().unwrap();
    });
}

/// Arming ("Arming" in `wait.rs`): the producer sends two messages with
/// `notify_armed` (no fence while `UNARMED`); the consumer, before each
/// sleep, arms and sleeps without any bound once `arm` reports the
/// acknowledgement (`SLICE`), in a bounded sleep before. Loom checks that
/// the unbounded sleep is never lost (no deadlock) and both messages
/// arrive: the acknowledgement closes the race between arming and a
/// notifier that loaded `UNARMED`. (A waiter that trusts `ARMED` makes
/// loom find the lost wake-up, a deadlock: checked. CI bound 5: ~6 s;
/// exhaustive takes minutes.)
#[test]
fn ring_armed_sleeper_is_never_lost() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            ring_send(&p, &mut cur, 1);
            ring_send(&p, &mut cur, 2);
        });
        let mut cur = ConsCursor { head: 0 };
        let mut unacked = 0;
        for v in 1..=2u64 {
            let pos = loop {
                let stamp = &r.stamps[(cur.head & 1) as usize];
                if let Ok(pos) = cur.try_peek(2, stamp) {
                    break pos;
                }
                let slice = arm(&r.core.data_armed.0, &mut unacked);
                let until = (slice != SLICE).then(|| now() + slice);
                let mut poll = || cur.try_peek(2, stamp).ok();
                if let Ok(pos) = sleep_once(
                    &r.core.data_seq.0,
                    &r.core.cons_sleepers.0,
                    &mut poll,
                    until,
                ) {
                    break pos;
                }
            };
            assert_eq!(r.slots[(pos & 1) as usize].with(|s| unsafe { *s }), v);
            cur.release(&r.core);
        }
        producer.join().unwrap();
        assert_eq!(r.core.cons_sleepers.0.load(Ordering::Relaxed), 0);
    });
}

/// Pushes `v` through the ring with `cur` (spinning while full).
fn ring_send(r: &Ring, cur: &mut ProdCursor, v: u64) {
    let pos = loop {
        match cur.try_reserve(&r.core, 2) {
            Ok(pos) => break pos,
            Err(Stuck::Blocked) => spin_hint(),
            Err(e) => panic!("{e:?}"),
        }
    };
    r.slots[(pos & 1) as usize].with_mut(|s| unsafe { *s = v });
    cur.commit(&r.core, &r.stamps[(pos & 1) as usize]);
    notify_armed(
        &r.core.data_seq.0,
        &r.core.cons_sleepers.0,
        &r.core.data_armed.0,
    );
}

/// Receives one value with `cur` (spinning while empty); `release`:
/// whether the consumer lives to free the slot.
fn ring_recv(r: &Ring, cur: &mut ConsCursor, release: bool) -> u64 {
    let pos = loop {
        match cur.try_peek(2, &r.stamps[(cur.head & 1) as usize]) {
            Ok(pos) => break pos,
            Err(Stuck::Blocked) => spin_hint(),
            Err(e) => panic!("{e:?}"),
        }
    };
    let v = r.slots[(pos & 1) as usize].with(|s| unsafe { *s });
    if release {
        cur.release(&r.core);
    }
    v
}

/// Ring producer takeover while the consumer is live: producer 1 sends
/// message 1, then is killed between storing message 2's stamp and
/// storing `tail`; producer 2 (after the role lock hand-off, here program
/// order on one thread) resumes and sends message 3. The live consumer
/// receives 1, 2, 3 in order with no data race (message 2 was published
/// by its stamp, so it is delivered, and producer 2 does not overwrite it).
#[test]
fn ring_producer_takeover_while_consumer_live() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producers = thread::spawn(move || {
            let mut one = ProdCursor::default();
            ring_send(&p, &mut one, 1);
            // Message 2: slot written, stamp stored, killed before `tail`.
            let pos = loop {
                match one.try_reserve(&p.core, 2) {
                    Ok(pos) => break pos,
                    Err(_) => spin_hint(),
                }
            };
            p.slots[(pos & 1) as usize].with_mut(|s| unsafe { *s = 2 });
            p.stamps[(pos & 1) as usize].store(pos + 1, Ordering::Release);
            let mut two = ProdCursor::resume(&p.core, 2, |q| &p.stamps[(q & 1) as usize]).unwrap();
            assert_eq!(two.tail, 2);
            ring_send(&p, &mut two, 3);
        });
        let mut cur = ConsCursor { head: 0 };
        for v in 1..=3 {
            assert_eq!(ring_recv(&r, &mut cur, true), v);
        }
        producers.join().unwrap();
    });
}

/// Ring consumer takeover while the producer is live: consumer 1 reads
/// message 1 and is killed before freeing its slot; consumer 2 resumes at
/// `head` (message 1 again: at-least-once, never a gap) while the producer
/// keeps sending 2 and 3. No slot is overwritten while consumer 1 or 2
/// reads it (loom: data race), and consumer 2 gets 1, 2, 3 in order.
#[test]
fn ring_consumer_takeover_while_producer_live() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            for v in 1..=3 {
                ring_send(&p, &mut cur, v);
            }
        });
        let mut one = ConsCursor { head: 0 };
        assert_eq!(ring_recv(&r, &mut one, false), 1);
        let mut two = ConsCursor::resume(&r.core, 2, |q| &r.stamps[(q & 1) as usize]).unwrap();
        assert_eq!(two.head, 0);
        for v in 1..=3 {
            assert_eq!(ring_recv(&r, &mut two, true), v);
        }
        producer.join().unwrap();
    });
}

/// The role state a closing endpoint stores (`peer::CLOSED`); the model's
/// liveness check reads it as `peer::status` does (SeqCst).
const CLOSED: u32 = super::peer::CLOSED;

/// `wait_loop` itself (not only `sleep_once`): a consumer with a short
/// spin, then sleeps in slices with no deadline, while the producer sends
/// one message. It returns that message (no lost wake-up across the
/// timed, sliced sleeps: a timed futex wait may end by wake or by timer
/// at any point) and leaves no sleeper counted.
#[test]
fn wait_loop_forever_gets_the_message() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            ring_send(&p, &mut cur, 7);
        });
        let mut cur = ConsCursor { head: 0 };
        let got = wait_loop_armed(
            WaitStrategy::SpinThenSleep { spins: 1 },
            Wait::Forever,
            &r.core.data_seq.0,
            &r.core.cons_sleepers.0,
            &r.core.data_armed.0,
            || cur.try_peek(2, &r.stamps[0]).ok(),
            || None,
        );
        assert_eq!(got, Some(0));
        assert_eq!(r.slots[0].with(|s| unsafe { *s }), 7);
        producer.join().unwrap();
        assert_eq!(r.core.cons_sleepers.0.load(Ordering::Relaxed), 0);
    });
}

/// `wait_loop` with a deadline spanning several slices (model clock:
/// `primitive::MODEL_TICK` per clock read): it ends (message or
/// deadline), runs the liveness check once per slice while it waits, and
/// a timeout never consumes or loses the message (it is still there
/// after the producer is done).
#[test]
fn wait_loop_deadline_and_slices() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            ring_send(&p, &mut cur, 7);
        });
        let mut cur = ConsCursor { head: 0 };
        let checks = std::cell::Cell::new(0u32);
        let deadline = now() + super::wait::SLICE * 3;
        let got = wait_loop_armed(
            WaitStrategy::Sleep,
            Wait::Until(deadline),
            &r.core.data_seq.0,
            &r.core.cons_sleepers.0,
            &r.core.data_armed.0,
            || cur.try_peek(2, &r.stamps[0]).ok(),
            || {
                checks.set(checks.get() + 1);
                None::<u64>
            },
        );
        if got.is_none() {
            assert!(now() >= deadline);
            assert!(checks.get() >= 1, "no liveness check in three slices");
        }
        producer.join().unwrap();
        assert_eq!(cur.try_peek(2, &r.stamps[0]), Ok(0));
        assert_eq!(r.core.cons_sleepers.0.load(Ordering::Relaxed), 0);
    });
}

/// Close wake-up, ring: the producer closes (state `CLOSED`, then the
/// unconditional `wake` of `Sender::drop`) while the consumer waits with
/// no deadline: the consumer's wait ends with the close, never hangs.
/// (Proven: it ends, by the wake or at the latest by the next slice's
/// check; that it is at once in the common case is argued in
/// docs/channel.md.)
#[test]
fn ring_close_wakes_waiting_consumer() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let closer = thread::spawn(move || {
            p.core.prod_state.0.store(CLOSED, Ordering::SeqCst);
            wake(&p.core.data_seq.0);
        });
        let mut cur = ConsCursor { head: 0 };
        let got = wait_loop_armed(
            WaitStrategy::Sleep,
            Wait::Forever,
            &r.core.data_seq.0,
            &r.core.cons_sleepers.0,
            &r.core.data_armed.0,
            || cur.try_peek(2, &r.stamps[0]).ok().map(Ok),
            || (r.core.prod_state.0.load(Ordering::SeqCst) == CLOSED).then_some(Err(())),
        );
        assert_eq!(got, Some(Err(())));
        closer.join().unwrap();
        assert_eq!(r.core.cons_sleepers.0.load(Ordering::Relaxed), 0);
    });
}

/// Drop wake-up, ring, the other direction: the producer waits for space
/// (ring full, no deadline) while the consumer closes (`Receiver::drop`:
/// state `CLOSED`, then the unconditional `wake` of `space_seq`): the
/// producer's wait ends with the close, never hangs.
#[test]
fn ring_close_wakes_waiting_producer() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let mut cur = ProdCursor::default();
        ring_send(&r, &mut cur, 1);
        ring_send(&r, &mut cur, 2);
        let c = r.clone();
        let closer = thread::spawn(move || {
            c.core.cons_state.0.store(CLOSED, Ordering::SeqCst);
            wake(&c.core.space_seq.0);
        });
        let got = wait_loop_armed(
            WaitStrategy::Sleep,
            Wait::Forever,
            &r.core.space_seq.0,
            &r.core.prod_sleepers.0,
            &r.core.space_armed.0,
            || cur.try_reserve(&r.core, 2).ok().map(Ok),
            || (r.core.cons_state.0.load(Ordering::SeqCst) == CLOSED).then_some(Err(())),
        );
        assert_eq!(got, Some(Err(())));
        closer.join().unwrap();
        assert_eq!(r.core.prod_sleepers.0.load(Ordering::Relaxed), 0);
    });
}
