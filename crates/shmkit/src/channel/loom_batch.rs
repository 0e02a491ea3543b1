//! Loom models of ring batches and of the resume scan that makes them
//! crash-safe: a producer killed inside a batch (after stamping some
//! messages, before storing `tail`), and a consumer killed inside a batch
//! (after reading, before storing `head`). A "killed" process is a thread
//! that stops after a prefix of its steps; its successor starts after it
//! ends, as the role lock guarantees (the kernel drops a dead holder's
//! lock after its last store).
//!
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmkit --lib
//! --release channel::loom_batch`

use loom::sync::Arc;
use loom::thread;

use super::loom_tests::Ring;
use super::ring::{ConsCursor, ProdCursor, Stuck};
use crate::primitive::{spin_hint, AtomicU64};

/// Helpers for the batch models.
impl Ring {
    fn stamp(&self, pos: u64) -> &AtomicU64 {
        &self.stamps[(pos & 1) as usize]
    }

    /// Producer: writes `v` into a reserved slot (waiting for room).
    fn reserve_and_write(&self, cur: &mut ProdCursor, v: u64) -> u64 {
        let pos = loop {
            match cur.try_reserve(&self.core, 2) {
                Ok(pos) => break pos,
                Err(Stuck::Blocked) => spin_hint(),
                Err(e) => panic!("{e:?}"),
            }
        };
        // SAFETY: the slot is reserved: the consumer released it (Acquire
        // on `head` in `try_reserve`) and will not read it before its stamp.
        self.slots[(pos & 1) as usize].with_mut(|s| unsafe { *s = v });
        pos
    }

    /// Consumer: the next message's value (waiting for it); does not free.
    fn peek(&self, cur: &mut ConsCursor) -> u64 {
        let pos = loop {
            match cur.try_peek(2, self.stamp(cur.head)) {
                Ok(pos) => break pos,
                Err(Stuck::Blocked) => spin_hint(),
                Err(e) => panic!("{e:?}"),
            }
        };
        // SAFETY: published (Acquire on the stamp) and not yet freed.
        self.slots[(pos & 1) as usize].with(|s| unsafe { *s })
    }
}

/// A producer sends a batch of two messages (values 1, 2) and is killed
/// after `k` of its three steps (stamp 1, stamp 2, store `tail`) while the
/// consumer reads; the next producer resumes after exactly the stamped
/// messages and sends 3. The consumer sees the stamped ones, then 3: none
/// lost, duplicated or overwritten while read.
#[test]
fn ring_producer_killed_inside_batch() {
    for k in 0..=3usize {
        loom::model(move || {
            let stamped = k.min(2) as u64;
            let r = Arc::new(Ring::new());
            let p = r.clone();
            let old = thread::spawn(move || {
                let mut cur = ProdCursor::default();
                for v in 1..=stamped {
                    let pos = p.reserve_and_write(&mut cur, v);
                    cur.stamp(p.stamp(pos));
                }
                if k == 3 {
                    cur.store_tail(&p.core);
                }
            });
            let c = r.clone();
            let consumer = thread::spawn(move || {
                let mut cur = ConsCursor { head: 0 };
                let mut got = Vec::new();
                for _ in 0..=stamped {
                    got.push(c.peek(&mut cur));
                    cur.release(&c.core);
                }
                got
            });
            old.join().unwrap();
            let mut cur = ProdCursor::resume(&r.core, 2, |pos| r.stamp(pos)).unwrap();
            assert_eq!(cur.tail, stamped, "resumed after the stamped messages");
            let pos = r.reserve_and_write(&mut cur, 3);
            cur.commit(&r.core, r.stamp(pos));
            let want: Vec<u64> = (1..=stamped).chain([3]).collect();
            assert_eq!(consumer.join().unwrap(), want);
        });
    }
}

/// A consumer reads a batch of two (values 1, 2) with `advance` and is
/// killed before its one `head` store, while the producer waits for room
/// to send 3. The producer never overwrites a slot the dead consumer was
/// reading (no data race), and the next consumer gets 1, 2 again
/// (at-least-once), then 3.
#[test]
fn ring_consumer_killed_inside_batch() {
    loom::model(|| {
        let r = Arc::new(Ring::new());
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut cur = ProdCursor::default();
            for v in 1..=3 {
                let pos = p.reserve_and_write(&mut cur, v);
                cur.stamp(p.stamp(pos));
                if v == 2 || v == 3 {
                    cur.store_tail(&p.core);
                }
            }
        });
        let c = r.clone();
        let old = thread::spawn(move || {
            let mut cur = ConsCursor { head: 0 };
            let a = c.peek(&mut cur);
            cur.advance();
            let b = c.peek(&mut cur);
            cur.advance();
            (a, b) // killed here: `store_head` never runs
        });
        assert_eq!(old.join().unwrap(), (1, 2));
        let mut cur = ConsCursor::resume(&r.core, 2, |pos| r.stamp(pos)).unwrap();
        assert_eq!(cur.head, 0, "nothing was freed");
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(r.peek(&mut cur));
            cur.advance();
            cur.store_head(&r.core);
        }
        assert_eq!(got, vec![1, 2, 3]);
        producer.join().unwrap();
    });
}
