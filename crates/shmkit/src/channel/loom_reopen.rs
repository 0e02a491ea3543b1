//! Loom models of reopening a channel endpoint (the epoch in the role
//! state words, [`Stale`]), run with `RUSTFLAGS="--cfg loom"
//! LOOM_MAX_PREEMPTIONS=2 cargo test -p shmkit --lib --release
//! channel::loom_reopen`.
//!
//! The state-word functions of `peer` run unchanged (`claim_with`,
//! `close_with`, `observe_with`, `Stale`), with the OFD role lock modelled
//! by a flag (an OFD lock operation is a serialising system call: SeqCst).
//! The ring cursors are the real ones; the endpoint loops replicate
//! `Receiver::wait_message` and `Sender::send_with` around them.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::peer::{claim_with, close_with, observe_with, PeerState, RoleLock, Stale};
use super::ring::{ConsCursor, ProdCursor, RingCore, Stuck};
use crate::primitive::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A role lock: set while a live holder has it.
struct Flag(AtomicBool);

impl RoleLock for Flag {
    fn try_lock(&self) -> std::io::Result<bool> {
        // SeqCst: stands for the kernel's lock table (serialising).
        Ok(self
            .0
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok())
    }
    fn unlock(&self) {
        // SeqCst: as above.
        self.0.store(false, Ordering::SeqCst);
    }
    fn is_locked(&self) -> std::io::Result<bool> {
        // SeqCst: as above.
        Ok(self.0.load(Ordering::SeqCst))
    }
}

const CAP: u64 = 2;

struct Chan {
    core: RingCore,
    stamps: [AtomicU64; 2],
    slots: [UnsafeCell<u64>; 2],
    prod: Flag,
    cons: Flag,
}

impl Chan {
    fn new() -> Chan {
        Chan {
            core: RingCore::new(),
            stamps: [AtomicU64::new(0), AtomicU64::new(0)],
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            prod: Flag(AtomicBool::new(false)),
            cons: Flag(AtomicBool::new(false)),
        }
    }

    fn prod_state(&self) -> &AtomicU32 {
        &self.core.prod_state.0
    }

    fn cons_state(&self) -> &AtomicU32 {
        &self.core.cons_state.0
    }

    /// A producer takes the role (waiting for a previous holder to close)
    /// and resumes the ring.
    fn attach_producer(&self) -> ProdCursor {
        while !claim_with(&self.prod, self.prod_state(), || ()).unwrap() {
            thread::yield_now();
        }
        ProdCursor::resume(&self.core, CAP, |p| &self.stamps[(p & 1) as usize]).unwrap()
    }

    /// Sends `v`; `false` if the consumer ended (`Disconnected`). With
    /// `stale`, as `Sender::send_with`: a consumer close that is not the
    /// remembered one ends the send.
    fn send(&self, cur: &mut ProdCursor, v: u64, stale: Stale) -> bool {
        loop {
            // Relaxed: as the early check in `send_with`.
            if stale.closed_since(self.cons_state().load(Ordering::Relaxed)) {
                return false;
            }
            match cur.try_reserve(&self.core, CAP) {
                Ok(pos) => {
                    // SAFETY (model): the slot is ours until the commit.
                    self.slots[(pos & 1) as usize].with_mut(|s| unsafe { *s = v });
                    cur.commit(&self.core, &self.stamps[(pos & 1) as usize]);
                    return true;
                }
                Err(Stuck::Blocked) => {
                    let (st, w) = observe_with(&self.cons, self.cons_state());
                    match stale.filter(st, w) {
                        PeerState::Closed | PeerState::Dead => return false,
                        PeerState::NotYet | PeerState::Alive => thread::yield_now(),
                    }
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    fn try_take(&self, cur: &mut ConsCursor) -> Option<u64> {
        match cur.try_peek(CAP, &self.stamps[(cur.head & 1) as usize]) {
            Ok(pos) => {
                // SAFETY (model): published (Acquire on the stamp), and
                // the producer waits for our release.
                let v = self.slots[(pos & 1) as usize].with(|s| unsafe { *s });
                cur.release(&self.core);
                Some(v)
            }
            Err(Stuck::Blocked) => None,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// A receiver as `Receiver::open` + `recv` until `Disconnected`: claims
    /// the consumer role, remembers a producer already gone, receives
    /// until the producer it receives from ends, closes.
    fn receive_all(&self) -> Vec<u64> {
        assert!(claim_with(&self.cons, self.cons_state(), || ()).unwrap());
        let mut cur =
            ConsCursor::resume(&self.core, CAP, |p| &self.stamps[(p & 1) as usize]).unwrap();
        let stale = (
            Stale::snapshot_with(&self.prod, self.prod_state()),
            cur.head,
        );
        let mut got = Vec::new();
        loop {
            if let Some(v) = self.try_take(&mut cur) {
                got.push(v);
                continue;
            }
            let stale_now = if cur.head == stale.1 {
                stale.0
            } else {
                Stale::NONE
            };
            let (st, w) = observe_with(&self.prod, self.prod_state());
            match stale_now.filter(st, w) {
                PeerState::Closed | PeerState::Dead => {
                    // Deliver what was committed before the end.
                    match self.try_take(&mut cur) {
                        Some(v) => got.push(v),
                        None => break,
                    }
                }
                PeerState::NotYet | PeerState::Alive => thread::yield_now(),
            }
        }
        close_with(&self.cons, self.cons_state());
        got
    }
}

/// A receiver that attaches after the previous sender closed (ring empty)
/// is not ended by that close: it waits for the next sender and receives
/// exactly its message, then ends at its close.
#[test]
fn receiver_waits_out_a_stale_close() {
    loom::model(|| {
        let c = Arc::new(Chan::new());
        // A previous transfer: its sender came and went.
        let mut old = c.attach_producer();
        assert!(c.send(&mut old, 1, Stale::NONE));
        let mut rcur = ConsCursor { head: 0 };
        assert_eq!(c.try_take(&mut rcur), Some(1));
        close_with(&c.prod, c.prod_state());

        let s = c.clone();
        let sender = thread::spawn(move || {
            let mut cur = s.attach_producer();
            assert!(s.send(&mut cur, 7, Stale::NONE));
            close_with(&s.prod, s.prod_state());
        });
        let got = c.receive_all();
        sender.join().unwrap();
        assert_eq!(got, [7]);
    });
}

/// The old sender's close, then a new sender, race the receiver's
/// attach: the receiver gets the old sender's leftover message, always
/// ends, and nothing is lost (what it did not take stays in the ring, in
/// order).
#[test]
fn reopen_racing_a_close_loses_nothing() {
    loom::model(|| {
        let c = Arc::new(Chan::new());
        let mut old = c.attach_producer();
        assert!(c.send(&mut old, 1, Stale::NONE));

        let s = c.clone();
        let sender = thread::spawn(move || {
            close_with(&s.prod, s.prod_state());
            let mut cur = s.attach_producer();
            let stale = Stale::snapshot_with(&s.cons, s.cons_state());
            // Refused only if the receiver that was there when we attached
            // has left since (as a pipe's EPIPE).
            let sent = s.send(&mut cur, 2, stale);
            close_with(&s.prod, s.prod_state());
            sent
        });
        let mut got = c.receive_all();
        let sent = sender.join().unwrap();
        let mut rest = ConsCursor::resume(&c.core, CAP, |p| &c.stamps[(p & 1) as usize]).unwrap();
        while let Some(v) = c.try_take(&mut rest) {
            got.push(v);
        }
        assert_eq!(got, if sent { &[1, 2][..] } else { &[1][..] });
    });
}

/// A sender that attaches after the previous receiver closed is not
/// refused because of that close; the close of a receiver that came later
/// ends it (it never waits for ever).
#[test]
fn sender_waits_out_a_stale_close() {
    loom::model(|| {
        let c = Arc::new(Chan::new());
        assert!(claim_with(&c.cons, c.cons_state(), || ()).unwrap());
        close_with(&c.cons, c.cons_state());

        let r = c.clone();
        let receiver = thread::spawn(move || {
            // A new receiver: takes one message and leaves.
            assert!(claim_with(&r.cons, r.cons_state(), || ()).unwrap());
            let mut cur =
                ConsCursor::resume(&r.core, CAP, |p| &r.stamps[(p & 1) as usize]).unwrap();
            while r.try_take(&mut cur).is_none() {
                thread::yield_now();
            }
            close_with(&r.cons, r.cons_state());
        });
        let mut cur = c.attach_producer();
        let stale = Stale::snapshot_with(&c.cons, c.cons_state());
        assert!(c.send(&mut cur, 1, stale), "refused for a stale close");
        // Fills the ring and more: ends when the new receiver has closed.
        let mut v = 2;
        while c.send(&mut cur, v, stale) {
            v += 1;
            assert!(v < 10, "never ended");
        }
        receiver.join().unwrap();
    });
}
