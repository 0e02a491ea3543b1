//! Loom models of the pub/sub pool (see the parent module).

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::CLOSED;
use crate::channel::pubsub::{entry, Policy, Pool, PubCore, SlotMeta, SubCursor, SubShared};
use crate::channel::wait::{sleep_once, wait_loop_marked, wake, Wait, WaitStrategy};
use crate::primitive::{spin_hint, AtomicU64, Ordering};

struct Heap {
    core: PubCore,
    subs: Vec<SubShared>,
    queue: Vec<AtomicU64>,
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
                .map(|_| AtomicU64::new(0))
                .collect(),
            meta: (0..slots).map(|_| SlotMeta::new()).collect(),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            policy,
        }
    }

    fn pool(&self) -> Pool<'_> {
        Pool::new(
            &self.core,
            &self.subs,
            &self.queue,
            &self.meta,
            8,
            self.policy,
        )
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

/// Drains everything addressed to `cur`; returns the values received and
/// the messages counted missed.
fn drain(h: &Heap, cur: &mut SubCursor) -> (Vec<u64>, u64) {
    let mut got = Vec::new();
    let mut missed = 0;
    while let Some(t) = h.pool().try_take(cur).unwrap() {
        missed += t.missed;
        got.push(h.payload[t.slot].with(|x| unsafe { *x }));
        h.pool().release(cur.idx, t.slot);
    }
    (got, missed + cur.missed)
}

/// Issue 14, bug 2 (the regression model): under drop-oldest, subscriber
/// 0 dies with message 1 (position 0) pending and is not reaped; a new
/// subscriber takes number 0 while the publisher reclaims the only slot
/// and publishes positions 1 and 2. The joiner must not strip its own bit
/// from a publication made after it joined: position 2 (the last, never
/// reclaimed) reaches it whenever it joined before it. Before `join`
/// pinned the slot this failed (`join_pos 1, got [], missed 2`).
#[test]
fn pubsub_join_drop_oldest_keeps_new_bits() {
    loom::model(|| {
        let h = Arc::new(Heap::new(1, 1, Policy::DropOldest));
        let _dead = h.pool().join(0);
        let (mut tail, mut rr) = (0, 0);
        h.publish(&mut tail, &mut rr, 1);
        // Subscriber 0 is gone (never reaped: its `active` bit stays).
        let p = h.clone();
        let publisher = thread::spawn(move || {
            for v in 2..=3 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        let mut cur = h.pool().join(0);
        let join_pos = cur.join_pos;
        publisher.join().unwrap();
        let (got, missed) = drain(&h, &mut cur);
        if join_pos < 2 {
            assert_eq!(
                got.last(),
                Some(&3),
                "join_pos {join_pos}, got {got:?}, missed {missed}"
            );
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(h.meta[0].refs.load(Ordering::Relaxed), 0);
    });
}

/// Close wake-up, pub/sub: the publisher publishes one message, then
/// closes (`Publisher::drop`: state `CLOSED`, then `wake`), while the
/// subscriber waits (counted and flagged as asleep, as `recv` does).
/// The subscriber receives the message, either directly or in the final
/// poll after it learns of the close (as `recv_wait` does), and no sleeper
/// count or flag is left behind.
#[test]
fn pubsub_close_wakes_waiting_subscriber() {
    loom::model(|| {
        let h = Arc::new(Heap::new(1, 1, Policy::Block));
        let mut cur = h.pool().join(0);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            p.publish(&mut tail, &mut rr, 5);
            p.core.pub_state.0.store(CLOSED, Ordering::SeqCst);
            wake(&p.core.data_seq.0);
        });
        let got = {
            let cur = std::cell::RefCell::new(&mut cur);
            let poll = || h.pool().try_take(&mut cur.borrow_mut()).unwrap().map(Ok);
            let r = wait_loop_marked(
                WaitStrategy::Sleep,
                Wait::Forever,
                &h.core.data_seq.0,
                &h.core.sub_sleepers.0,
                Some(&h.subs[0].asleep),
                poll,
                || (h.core.pub_state.0.load(Ordering::SeqCst) == CLOSED).then_some(Err(())),
            );
            match r {
                Some(Ok(t)) => t,
                Some(Err(())) => h
                    .pool()
                    .try_take(&mut cur.borrow_mut())
                    .unwrap()
                    .expect("published before the close"),
                None => unreachable!("no deadline"),
            }
        };
        assert_eq!(h.payload[got.slot].with(|x| unsafe { *x }), 5);
        h.pool().release(0, got.slot);
        publisher.join().unwrap();
        assert_eq!(h.core.sub_sleepers.0.load(Ordering::Relaxed), 0);
        assert_eq!(h.subs[0].asleep.load(Ordering::Relaxed), 0);
    });
}

/// Drop wake-up, pub/sub: a subscriber holding the only slot leaves
/// (`Subscriber::drop` -> `leave`) while the publisher sleeps for a slot
/// with no deadline and no slices: the leave's notify wakes it (a lost
/// wake-up is a deadlock loom reports).
#[test]
fn pubsub_leave_wakes_sleeping_publisher() {
    loom::model(|| {
        let h = Arc::new(Heap::new(1, 1, Policy::Block));
        let mut cur = h.pool().join(0);
        let (mut tail, mut rr) = (0, 0);
        h.publish(&mut tail, &mut rr, 1);
        let _held = h.pool().try_take(&mut cur).unwrap().unwrap();
        let p = h.clone();
        let publisher = thread::spawn(move || publish_sleeping(&p, &mut tail, &mut rr, 2));
        h.pool().leave(0);
        publisher.join().unwrap();
        assert_eq!(h.core.tail.0.load(Ordering::Relaxed), 2);
    });
}

/// Drop-oldest, the queue wrapped past a lagging subscriber: A joined
/// and reads nothing while the publisher publishes three messages through
/// two slots (queue of two: it wraps); meanwhile B joins. A accounts for
/// every message (received + missed = 3), B receives in order everything
/// after its join position, and once both have drained, released and
/// left, every slot is free (no bit leaked by the join on a wrapped
/// queue).
#[test]
fn pubsub_join_with_wrapped_lagging_subscriber() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 2, Policy::DropOldest));
        let mut a = h.pool().join(0);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            let (mut tail, mut rr) = (0, 0);
            for v in 1..=3 {
                p.publish(&mut tail, &mut rr, v);
            }
        });
        let mut b = h.pool().join(1);
        let b_pos = b.join_pos;
        publisher.join().unwrap();
        let (got_a, missed_a) = drain(&h, &mut a);
        assert_eq!(
            got_a.len() as u64 + missed_a,
            3,
            "{got_a:?} missed {missed_a}"
        );
        assert_eq!(got_a.last(), Some(&3));
        let (got_b, _) = drain(&h, &mut b);
        assert!(got_b.windows(2).all(|w| w[0] < w[1]));
        if b_pos < 2 {
            assert_eq!(got_b.last(), Some(&3), "b joined at {b_pos}: {got_b:?}");
        }
        h.pool().leave(0);
        h.pool().leave(1);
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}

/// Drop-oldest, the queue wrapped past a lagging subscriber that leaves
/// while the publisher publishes (and reclaims): whatever the
/// interleaving, no slot stays addressed to it (the publisher's
/// withdrawal or the leaver's sweep), and the other subscriber accounts
/// for every message.
#[test]
fn pubsub_leave_with_wrapped_lagging_subscriber() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 2, Policy::DropOldest));
        let _lagging = h.pool().join(0);
        let mut stay = h.pool().join(1);
        let (mut tail, mut rr) = (0, 0);
        h.publish(&mut tail, &mut rr, 1);
        h.publish(&mut tail, &mut rr, 2);
        let p = h.clone();
        let publisher = thread::spawn(move || {
            p.publish(&mut tail, &mut rr, 3);
        });
        h.pool().leave(0);
        publisher.join().unwrap();
        for m in &h.meta {
            assert_eq!(m.refs.load(Ordering::Relaxed) & 0x1_0000_0001, 0);
        }
        let (got, missed) = drain(&h, &mut stay);
        assert_eq!(got.len() as u64 + missed, 3, "{got:?} missed {missed}");
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}

/// `recover` racing a lapped subscriber: drop-oldest, two slots, queue of
/// two. Subscriber A lags at position 0 while positions 0..3 are
/// published (slot 0 reused for position 2); then a publisher is killed
/// publishing position 3 into slot 1 after storing its `refs` but before
/// the queue entry and `tail` (an orphan addressed to A). A new publisher
/// runs `recover(3)` while A, lapped, reads position 1, finds slot 1 (the
/// orphan) in the queue and holds it for a moment. `recover` must never
/// clear A's held bit, may leave the orphan for a later call, and after
/// that later call the orphan is free: never leaked. A accounts for all
/// three visible messages.
#[test]
fn pubsub_recover_racing_lapped_subscriber() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 1, Policy::DropOldest));
        let mut a = h.pool().join(0);
        let (mut tail, mut rr) = (0, 0);
        for v in 1..=3 {
            h.publish(&mut tail, &mut rr, v);
        }
        // The killed publisher: slot 1 reclaimed and addressed as
        // position 3, never made visible.
        let orphan = h.pool().take_free(&mut rr).unwrap();
        assert_eq!(orphan, 1);
        h.meta[1].seq.store(3, Ordering::Relaxed);
        h.meta[1].refs.store(1, Ordering::Release);
        let s = h.clone();
        let subscriber = thread::spawn(move || {
            let t = s.pool().try_take(&mut a).unwrap().unwrap();
            assert_eq!(s.payload[t.slot].with(|x| unsafe { *x }), 3);
            assert_eq!(t.missed, 2);
            s.pool().release(0, t.slot);
            assert_eq!(s.pool().try_take(&mut a).unwrap(), None);
        });
        h.pool().recover(3);
        subscriber.join().unwrap();
        // Free, or still pending for A (left for later): never a held bit
        // with no holder (which a `recover` clearing A's held bit would
        // leave after A's give-back flips the bits of a freed slot).
        let r = h.meta[1].refs.load(Ordering::Relaxed);
        assert!(r == 0 || r == 1, "orphan refs {r:#x}");
        h.pool().recover(3);
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}

/// The queue entry store commits a publication (subscribers poll their
/// next entry, not `tail`): a publisher killed after it, before its `tail`
/// store, left position 0 visible. The next publisher resumes past it
/// (`Pool::resume`, then `recover`, as `Publisher::attach`) and publishes
/// position 1 while the subscriber may be taking position 0: the
/// subscriber gets both, in order, nothing missed, and every slot ends
/// free. (Without `resume`, `recover` frees the committed slot under the
/// subscriber, or the new publisher reuses position 0.)
#[test]
fn pubsub_resume_after_entry_commit() {
    loom::model(|| {
        let h = Arc::new(Heap::new(2, 1, Policy::Block));
        let mut cur = h.pool().join(0);
        // The killed publisher: position 0 in slot 0, committed.
        let mut rr = 0;
        let s = h.pool().take_free(&mut rr).unwrap();
        h.payload[s].with_mut(|p| unsafe { *p = 1 });
        h.meta[s].seq.store(0, Ordering::Relaxed);
        h.meta[s].len.store(8, Ordering::Relaxed);
        h.meta[s].refs.store(1, Ordering::Release);
        h.queue[0].store(entry(0, s), Ordering::Release);
        let sub = h.clone();
        let subscriber = thread::spawn(move || {
            let mut got = Vec::new();
            if let Some(t) = sub.pool().try_take(&mut cur).unwrap() {
                assert_eq!(t.missed, 0);
                got.push(sub.payload[t.slot].with(|x| unsafe { *x }));
                sub.pool().release(0, t.slot);
            }
            (cur, got)
        });
        // The next publisher.
        let mut tail = h.pool().resume(h.core.tail.0.load(Ordering::Acquire));
        h.pool().recover(tail);
        let mut rr = 0;
        h.publish(&mut tail, &mut rr, 2);
        let (mut cur, mut got) = subscriber.join().unwrap();
        while let Some(t) = h.pool().try_take(&mut cur).unwrap() {
            assert_eq!(t.missed, 0);
            got.push(h.payload[t.slot].with(|x| unsafe { *x }));
            h.pool().release(0, t.slot);
        }
        assert_eq!(got, [1, 2]);
        assert!(h.meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    });
}
