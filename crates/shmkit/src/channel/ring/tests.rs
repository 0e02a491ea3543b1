//! Unit and property tests of the ring layout and cursors.

use super::*;

#[test]
fn layout_rejects_bad_params() {
    let ok = RingLayout::new(5, 100, 1).unwrap();
    assert_eq!(ok.cap, 8);
    assert_eq!(ok.stride, 128);
    let p = ok.params();
    assert_eq!(RingLayout::from_params(&p, ok.total as usize), Ok(ok));
    assert!(RingLayout::from_params(&p, ok.total as usize - 1).is_err());
    let mut bad = p;
    bad[0] = 6;
    assert!(RingLayout::from_params(&bad, usize::MAX).is_err());
    let mut bad = p;
    bad[1] = u64::MAX;
    assert!(RingLayout::from_params(&bad, usize::MAX).is_err());
    let mut bad = p;
    bad[0] = 1 << 40;
    assert!(RingLayout::from_params(&bad, usize::MAX).is_err());
    assert!(RingLayout::new(0, 1, 1).is_err());
}

proptest::proptest! {
    /// Untrusted header params never panic, and an accepted layout
    /// always fits in the data area it was checked against.
    #[test]
    fn any_params_are_checked(p in proptest::array::uniform8(proptest::num::u64::ANY),
                              len in 0usize..1 << 30, tag in proptest::bool::ANY) {
        let mut p = p;
        if tag {
            p[3] = LAYOUT_TAG;
            p[0] &= 0xffff;
            p[1] &= 0xfff_ffff;
            p[2] &= 0x1fff;
        }
        if let Ok(l) = RingLayout::from_params(&p, len) {
            proptest::prop_assert!(l.total <= len as u64);
            proptest::prop_assert!(l.cap.is_power_of_two());
            proptest::prop_assert!(l.stride >= l.prefix + l.max);
            proptest::prop_assert!(l.prefix >= 16 && l.prefix % 16 == 0);
        }
    }
}

#[test]
fn cursors_detect_impossible_indices() {
    let core = RingCore::new();
    let stamps: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    let mut p = ProdCursor::default();
    let mut c = ConsCursor { head: 0 };
    assert_eq!(c.try_peek(4, &stamps[0]), Err(Stuck::Blocked));
    for _ in 0..4 {
        let pos = p.try_reserve(&core, 4).unwrap();
        p.commit(&core, &stamps[pos as usize & 3]);
    }
    assert_eq!(p.try_reserve(&core, 4), Err(Stuck::Blocked));
    assert_eq!(c.try_peek(4, &stamps[0]), Ok(0));
    c.release(&core);
    assert_eq!(p.try_reserve(&core, 4), Ok(4));
    // Message 4 not yet published: slot 0 still holds message 0.
    c.head = 4;
    assert_eq!(c.try_peek(4, &stamps[0]), Err(Stuck::Blocked));
    stamps[0].store(1000, Ordering::Relaxed);
    assert!(matches!(c.try_peek(4, &stamps[0]), Err(Stuck::Corrupt(_))));
    core.head.0.store(u64::MAX, Ordering::Relaxed);
    p.head_cache = 0;
    assert!(matches!(p.try_reserve(&core, 4), Err(Stuck::Corrupt(_))));
}

/// A consumer may be one past `tail` (stamp stored, `tail` not yet, or
/// the producer died in between): a new consumer accepts that state
/// (M4); a new producer advances `tail` past it; indices near
/// `u64::MAX` are refused instead of overflowing.
#[test]
fn resume_accepts_consumer_one_past_tail() {
    let core = RingCore::new();
    let stamps: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    let stamp_of = |p: u64| &stamps[(p & 3) as usize];
    let mut p = ProdCursor::resume(&core, 4, stamp_of).unwrap();
    let mut c = ConsCursor::resume(&core, 4, stamp_of).unwrap();
    let pos = p.try_reserve(&core, 4).unwrap();
    p.commit(&core, stamp_of(pos));
    // Producer "dies" after the stamp of message 1 and before `tail`.
    stamps[1].store(2, Ordering::Release);
    for _ in 0..2 {
        let pos = c.try_peek(4, stamp_of(c.head)).unwrap();
        assert_eq!(pos, c.head);
        c.release(&core);
    }
    assert_eq!(core.tail.0.load(Ordering::Relaxed), 1);
    assert_eq!(core.head.0.load(Ordering::Relaxed), 2);
    // A new consumer accepts head == tail + 1 with the stamp published.
    let c2 = ConsCursor::resume(&core, 4, stamp_of).unwrap();
    assert_eq!(c2.head, 2);
    // ... but not without it.
    stamps[1].store(0, Ordering::Release);
    assert!(ConsCursor::resume(&core, 4, stamp_of).is_err());
    stamps[1].store(2, Ordering::Release);
    // A new producer continues after the orphan message.
    let p2 = ProdCursor::resume(&core, 4, stamp_of).unwrap();
    assert_eq!(p2.tail, 2);
    // Leaked sleeper counts are reset by a new role holder.
    core.cons_sleepers.0.store(1, Ordering::Relaxed);
    ConsCursor::resume(&core, 4, stamp_of).unwrap();
    assert_eq!(core.cons_sleepers.0.load(Ordering::Relaxed), 0);
    // Hostile indices near u64::MAX: an error, no overflow panic.
    core.tail.0.store(u64::MAX, Ordering::Relaxed);
    core.head.0.store(u64::MAX, Ordering::Relaxed);
    stamps[3].store(0, Ordering::Relaxed);
    assert!(ProdCursor::resume(&core, 4, stamp_of).is_err());
    assert!(ConsCursor::resume(&core, 4, stamp_of).is_err());
}

/// `try_recv` / `try_send` on an empty / full ring with a live peer do
/// not query the peer's lock every time (a system call), yet still see
/// a clean close at once.
#[test]
fn try_ops_do_not_query_liveness_every_time() {
    use crate::channel::{RecvError, SendError};
    use crate::sys::ofd_lock::QUERIES;
    let name = format!("t-ring-alive-{}", std::process::id());
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = crate::segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(1, 8)).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    let q0 = QUERIES.with(|q| q.get());
    for _ in 0..1000 {
        assert_eq!(rx.try_recv(), Err(RecvError::Empty));
    }
    tx.send(b"x").unwrap();
    for _ in 0..1000 {
        assert_eq!(tx.try_send(b"y"), Err(SendError::Full));
    }
    let queries = QUERIES.with(|q| q.get()) - q0;
    assert!(queries < 100, "{queries} lock queries for 2000 try_ops");
    drop(rx);
    assert_eq!(tx.try_send(b"y"), Err(SendError::Disconnected));
}

/// Arming ("Arming" in `wait.rs`): endpoints that only spin leave both
/// directions `UNARMED` (no fence per message); a consumer that sleeps
/// arms its direction and the producer's next notify acknowledges it; a
/// try-send on a full ring (a user spinning with `try_`) does not arm.
#[test]
fn only_a_sleeping_waiter_arms_its_direction() {
    use crate::channel::wait::{ACKED, UNARMED};
    let name = format!("t-ring-armed-{}", std::process::id());
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = crate::segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(2, 8)).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    rx.set_wait_strategy(WaitStrategy::BusyPoll);
    tx.set_wait_strategy(WaitStrategy::BusyPoll);
    let armed = |rx: &Receiver| {
        let core = rx.sh.core();
        (
            core.data_armed.0.load(Ordering::Relaxed),
            core.space_armed.0.load(Ordering::Relaxed),
        )
    };
    // Spinning both ways, full and empty in turn: nobody arms.
    let t = std::thread::spawn(move || {
        for i in 0..1000u32 {
            tx.send(&i.to_le_bytes()).unwrap();
        }
        tx
    });
    for i in 0..1000u32 {
        assert_eq!(rx.recv().unwrap(), i.to_le_bytes());
    }
    let mut tx = t.join().unwrap();
    assert_eq!(armed(&rx), (UNARMED, UNARMED));
    // A consumer that sleeps arms `data`; the next send acknowledges.
    rx.set_wait_strategy(WaitStrategy::Sleep);
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        tx.send(b"late").unwrap();
        tx
    });
    assert_eq!(rx.recv().unwrap(), b"late");
    let tx = t.join().unwrap();
    assert_eq!(armed(&rx), (ACKED, UNARMED));
    drop(tx);
    // A try-send that finds the ring full never sleeps, so it does not
    // arm (the second direction here); a blocking send that sleeps does.
    let name2 = format!("t-ring-armed2-{}", std::process::id());
    let _rm2 = Rm(name2.clone());
    let mut rx2 = Receiver::create(&name2, &RingOptions::new(1, 8)).unwrap();
    let mut tx2 = Sender::open(&name2).unwrap();
    tx2.try_send(b"a").unwrap();
    assert_eq!(tx2.try_send(b"b"), Err(crate::channel::SendError::Full));
    assert_eq!(armed(&rx2).1, UNARMED);
    tx2.set_wait_strategy(WaitStrategy::Sleep);
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(rx2.try_recv().unwrap(), b"a");
        rx2
    });
    tx2.send(b"b").unwrap();
    let rx2 = t.join().unwrap();
    assert_eq!(armed(&rx2).1, ACKED);
}
