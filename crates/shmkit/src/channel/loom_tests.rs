//! Loom models of the channel algorithms, run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmkit
//! --lib --release channel::loom_tests`.
//!
//! The algorithms run unchanged on heap copies of the shared structures;
//! payloads are `loom::cell::UnsafeCell`s, so a slot written while someone
//! reads it (or read before it was published) is reported as a data race.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::pubsub::{Policy, Pool, PubCore, SlotMeta, SubShared};
use super::ring::{ConsCursor, ProdCursor, RingCore, Stuck};
use super::wait::{notify, sleep_once};
use crate::primitive::{spin_hint, AtomicU32, AtomicU64, Ordering};

struct Ring {
    core: RingCore,
    stamps: [AtomicU64; 2],
    slots: [UnsafeCell<u64>; 2],
}

impl Ring {
    fn new() -> Ring {
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
            let mut cur = ProdCursor {
                tail: 0,
                head_cache: 0,
            };
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
            let mut cur = ProdCursor {
                tail: 0,
                head_cache: 0,
            };
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

struct Heap {
    core: PubCore,
    subs: Vec<SubShared>,
    queue: Vec<AtomicU32>,
    meta: Vec<SlotMeta>,
    payload: Vec<UnsafeCell<u64>>,
    policy: Policy,
}

impl Heap {
    fn new(slots: usize, subs: usize, policy: Policy) -> Heap {
        Heap {
            core: PubCore::new(),
            subs: (0..subs).map(|_| SubShared::new()).collect(),
            queue: (0..slots.next_power_of_two())
                .map(|_| AtomicU32::new(0))
                .collect(),
            meta: (0..slots).map(|_| SlotMeta::new()).collect(),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            policy,
        }
    }

    fn pool(&self) -> Pool<'_> {
        Pool {
            core: &self.core,
            subs: &self.subs,
            queue: &self.queue,
            meta: &self.meta,
            slot_size: 8,
            policy: self.policy,
        }
    }

    /// Loan (spinning while no slot is free), fill, publish.
    fn publish(&self, tail: &mut u64, rr: &mut usize, v: u64) {
        let pool = self.pool();
        let slot = loop {
            match pool.take_free(rr) {
                Some(s) => break s,
                None => spin_hint(),
            }
        };
        self.payload[slot].with_mut(|p| unsafe { *p = v });
        pool.publish(tail, slot, 8);
    }
}

/// Loan, publish, receive, release with back-pressure: three messages
/// through two slots to one subscriber, in order, no payload race (the
/// publisher never rewrites a slot the subscriber still reads).
#[test]
fn pubsub_block_ownership() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 1, Policy::Block));
        let mut cur = h.pool().join(0);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            for v in 1..=3 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        for v in 1..=3u64 {
            let t = loop {
                match h.pool().try_take(&mut cur).unwrap() {
                    Some(t) => break t,
                    None => spin_hint(),
                }
            };
            assert_eq!(t.missed, 0);
            assert_eq!(h.payload[t.slot].with(|x| unsafe { *x }), v);
            h.pool().release(0, t.slot);
        }
        publisher.join().unwrap();
    });
}

/// A subscriber "dies" holding a sample (its thread ends without
/// releasing); the reaper (who would hold its role lock) gives its slots
/// back while the publisher and another subscriber keep going.
#[test]
fn pubsub_dead_subscriber_is_reaped() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 2, Policy::Block));
        let mut dead = h.pool().join(0);
        let mut live = h.pool().join(1);
        let (mut tail, mut rr) = (0, 0);
        h.publish(&mut tail, &mut rr, 1);
        let d = h.clone();
        let dying = thread::spawn(move || {
            // Takes the message and never releases it.
            let _ = d.pool().try_take(&mut dead).unwrap();
        });
        let l = h.clone();
        let reader = thread::spawn(move || {
            let t = loop {
                match l.pool().try_take(&mut live).unwrap() {
                    Some(t) => break t,
                    None => spin_hint(),
                }
            };
            assert_eq!(l.payload[t.slot].with(|x| unsafe { *x }), 1);
            l.pool().release(1, t.slot);
        });
        dying.join().unwrap();
        h.pool().reap(0);
        reader.join().unwrap();
        // Every slot is free again.
        let mut rr2 = 0;
        let a = h.pool().take_free(&mut rr2).unwrap();
        let b = h.pool().take_free(&mut rr2).unwrap();
        assert_ne!(a, b);
    });
}

/// Drop-oldest: the publisher never blocks; the subscriber accounts for
/// every message as received or missed, and never reads a slot while it
/// is rewritten.
#[test]
fn pubsub_drop_oldest_accounts_for_everything() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 1, Policy::DropOldest));
        let mut cur = h.pool().join(0);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            for v in 1..=3 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        let mut accounted = 0;
        let mut last = 0;
        while accounted < 3 {
            match h.pool().try_take(&mut cur).unwrap() {
                Some(t) => {
                    let v = h.payload[t.slot].with(|x| unsafe { *x });
                    assert!(v > last, "in order");
                    last = v;
                    accounted += 1 + t.missed;
                    h.pool().release(0, t.slot);
                }
                None => {
                    spin_hint();
                }
            }
        }
        assert_eq!(accounted, 3);
        publisher.join().unwrap();
    });
}

/// Publisher: waits for a slot by sleeping on `free_seq` (no deadline:
/// a lost wake-up is a deadlock loom reports), then publishes `v`.
fn publish_sleeping(h: &Heap, tail: &mut u64, rr: &mut usize, v: u64) {
    let pool = h.pool();
    let mut poll = || pool.take_free(rr);
    let slot = loop {
        if let Ok(s) = sleep_once(
            &pool.core.free_seq.0,
            &pool.core.pub_sleepers.0,
            &mut poll,
            None,
        ) {
            break s;
        }
    };
    h.payload[slot].with_mut(|x| unsafe { *x = v });
    pool.publish(tail, slot, 8);
}

/// One slot, subscriber 0 holds it (subscriber 1, if any, has it pending),
/// the publisher sleeps for a slot; 0's release must wake it: under
/// `Block` when it frees the slot, under `DropOldest` as soon as nobody
/// holds it (M2: it used to notify only when `refs` reached 0).
fn release_wakes_sleeping_publisher(policy: Policy, subs: usize) {
    loom::model(move || {
        let h = Arc::new(Heap::new(1, subs, policy));
        let mut a = h.pool().join(0);
        let mut b = (subs > 1).then(|| h.pool().join(1));
        let (mut tail, mut rr) = (0, 0);
        h.publish(&mut tail, &mut rr, 1);
        let t = h.pool().try_take(&mut a).unwrap().unwrap();
        let p = h.clone();
        let publisher = thread::spawn(move || publish_sleeping(&p, &mut tail, &mut rr, 2));
        assert_eq!(h.payload[t.slot].with(|x| unsafe { *x }), 1);
        h.pool().release(0, t.slot);
        publisher.join().unwrap();
        // Subscriber 0 gets message 2; 1 missed message 1 and gets 2.
        let t = h.pool().try_take(&mut a).unwrap().unwrap();
        assert_eq!(
            (t.missed, h.payload[t.slot].with(|x| unsafe { *x })),
            (0, 2)
        );
        h.pool().release(0, t.slot);
        if let Some(b) = &mut b {
            let t = h.pool().try_take(b).unwrap().unwrap();
            assert_eq!(
                (t.missed, h.payload[t.slot].with(|x| unsafe { *x })),
                (1, 2)
            );
            h.pool().release(1, t.slot);
        }
        assert_eq!(h.meta[0].refs.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn pubsub_block_release_wakes_publisher() {
    release_wakes_sleeping_publisher(Policy::Block, 1);
}

#[test]
fn pubsub_drop_oldest_release_wakes_publisher() {
    release_wakes_sleeping_publisher(Policy::DropOldest, 2);
}

/// A subscriber leaves (drop) while the publisher publishes: whatever the
/// interleaving, no slot stays addressed to the departed subscriber
/// (M3: `publish` re-checks `active` after storing `refs`), and the other
/// subscriber receives both messages.
#[test]
fn pubsub_leave_racing_publish() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 2, Policy::Block));
        let _leaver = h.pool().join(0);
        let mut stay = h.pool().join(1);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            for v in 1..=2 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        h.pool().leave(0);
        publisher.join().unwrap();
        for m in &h.meta {
            assert_eq!(m.refs.load(Ordering::Relaxed) & 0x1_0000_0001, 0);
        }
        for v in 1..=2 {
            let t = h.pool().try_take(&mut stay).unwrap().unwrap_or_else(|| {
                panic!(
                    "{stay:?} tail {} refs {:?} seq {:?} q {:?}",
                    h.core.tail.0.load(Ordering::Relaxed),
                    h.meta
                        .iter()
                        .map(|m| m.refs.load(Ordering::Relaxed))
                        .collect::<Vec<_>>(),
                    h.meta
                        .iter()
                        .map(|m| m.seq.load(Ordering::Relaxed))
                        .collect::<Vec<_>>(),
                    h.queue
                        .iter()
                        .map(|m| m.load(Ordering::Relaxed))
                        .collect::<Vec<_>>()
                )
            });
            assert_eq!(h.payload[t.slot].with(|x| unsafe { *x }), v);
            h.pool().release(1, t.slot);
        }
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}

/// A subscriber joins while the publisher publishes two messages through
/// two slots: it receives, in order, every message published after its
/// join position (at most the one in flight is skipped), and once it has
/// drained and released, every slot is free (no stale bit addressed to it).
#[test]
fn pubsub_join_racing_publish() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 1, Policy::Block));
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            for v in 1..=2 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        let mut cur = h.pool().join(0);
        let join_pos = cur.join_pos;
        publisher.join().unwrap();
        let mut got = Vec::new();
        while let Some(t) = h.pool().try_take(&mut cur).unwrap() {
            assert_eq!(t.missed, 0);
            got.push(h.payload[t.slot].with(|x| unsafe { *x }));
            h.pool().release(0, t.slot);
        }
        // Message `v` is position `v - 1`: all after `join_pos` arrive.
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        for v in (join_pos + 2)..=2 {
            assert!(got.contains(&v), "{got:?} join_pos {join_pos}");
        }
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}
