//! Unit and property tests of the pub/sub layout and pool.

use super::*;

/// A pool's shared parts on the heap: `subs` subscriber records, `slots`
/// queue entries and slots, all zero (a fresh segment).
fn fixture(subs: usize, slots: usize) -> (PubCore, Vec<SubShared>, Vec<AtomicU64>, Vec<SlotMeta>) {
    (
        PubCore::new(),
        (0..subs).map(|_| SubShared::new()).collect(),
        (0..slots).map(|_| AtomicU64::new(0)).collect(),
        (0..slots).map(|_| SlotMeta::new()).collect(),
    )
}

proptest::proptest! {
    /// Untrusted header params never panic, and an accepted layout
    /// always fits in the data area it was checked against.
    #[test]
    fn any_params_are_checked(p in proptest::array::uniform8(proptest::num::u64::ANY),
                              len in 0usize..1 << 30, tag in proptest::bool::ANY) {
        let mut p = p;
        if tag {
            p[5] = LAYOUT_TAG;
            p[0] &= 0x3ff;
            p[1] &= 0xfffff;
            p[2] &= 0x3f;
            p[3] &= 1;
            p[4] &= 0x1fff;
        }
        if let Ok(l) = PubSubLayout::from_params(&p, len) {
            proptest::prop_assert!(l.total <= len as u64);
            proptest::prop_assert!(l.q >= l.slots && l.q.is_power_of_two());
            proptest::prop_assert!(l.max_subs <= u64::from(MAX_SUBSCRIBERS));
            proptest::prop_assert!(l.queue_off >= SUBS_OFF + l.max_subs * 128);
            proptest::prop_assert!(l.data_off >= l.queue_off + l.q * 8);
            proptest::prop_assert!(l.data_off % 4096 == 0 && l.stride % 64 == 0);
            proptest::prop_assert!(l.hdr >= 32 && l.hdr % l.align == 0);
            proptest::prop_assert!(l.stride >= l.hdr + l.slot_size);
            proptest::prop_assert!(l.data_off + l.slots * l.stride <= l.total);
        }
    }
}

/// A typed channel whose (untrusted) layout does not align slots for
/// `T` is refused at open, instead of panicking in `deref` later.
#[test]
fn typed_open_checks_alignment() {
    #[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C, align(256))]
    struct Big([u8; 256]);
    let name = format!("t-pubsub-align-{}", std::process::id());
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut opts = PubSubOptions::typed::<Big>(2, 1);
    opts.align = 1; // what a hostile creator could write
    opts.create(&name).unwrap();
    let e = TypedSubscriber::<Big>::open(&name).unwrap_err();
    assert!(e.to_string().contains("cannot hold"), "{e}");
    assert!(TypedPublisher::<Big>::open(&name).is_err());
    segment::remove(&name).unwrap();
    // Properly made: fine.
    let mut p = TypedPublisher::<Big>::create(&name, &PubSubOptions::typed::<Big>(2, 1)).unwrap();
    let s = TypedSubscriber::<Big>::open(&name).unwrap();
    let mut l = p.loan().unwrap();
    l.0[0] = 7;
    l.publish();
    assert_eq!(s.try_recv().unwrap().0[0], 7);
}

/// Under `Block`, the publication racing a join (not addressed to the
/// joiner) lets the publisher get `slots + 1` ahead; when the queue is
/// no longer than `slots`, the joiner is "lapped" by that one entry,
/// which is not a miss.
#[test]
fn block_join_race_is_not_a_miss() {
    let (core, subs, queue, meta) = fixture(1, 2);
    let pool = Pool::new(&core, &subs, &queue, &meta, 8, Policy::Block);
    let (mut tail, mut rr) = (0, 0);
    // Position 0 is in flight (active loaded, no subscriber yet) when
    // subscriber 0 joins at position 0.
    let s0 = pool.take_free(&mut rr).unwrap();
    let mut cur = pool.join(0);
    assert_eq!(cur.join_pos, 0);
    pool.publish(&mut tail, s0, 8);
    // Undo what `publish` saw: position 0 was not addressed to us.
    meta[s0].refs.store(0, Ordering::Relaxed);
    for _ in 0..2 {
        let s = pool.take_free(&mut rr).unwrap();
        pool.publish(&mut tail, s, 8);
    }
    assert_eq!(tail, 3);
    let t = pool.try_take(&mut cur).unwrap().unwrap();
    assert_eq!(t.missed, 0);
}

#[test]
fn orphan_publication_is_reclaimed() {
    let (core, subs, queue, meta) = fixture(2, 2);
    let pool = Pool::new(&core, &subs, &queue, &meta, 8, Policy::Block);
    let mut cur = pool.join(0);
    let (mut tail, mut rr) = (0, 0);
    let s = pool.take_free(&mut rr).unwrap();
    pool.publish(&mut tail, s, 8);
    // A publisher dies after addressing slot 1 (position 1) to the
    // subscriber but before storing `tail`.
    meta[1].seq.store(1, Ordering::Relaxed);
    meta[1].refs.store(1, Ordering::Relaxed);
    assert_eq!(pool.recover(core.tail.0.load(Ordering::Relaxed)), 1);
    assert_eq!(meta[1].refs.load(Ordering::Relaxed), 0);
    // The visible publication is untouched.
    let t = pool.try_take(&mut cur).unwrap().unwrap();
    assert_eq!(t.slot, s);
}

#[test]
fn layout_examples() {
    let l = PubSubLayout::new(3, 100, 2, Policy::Block, 1).unwrap();
    assert_eq!(l.q, 4);
    // Metadata (32 bytes), then the payload: 132 bytes in 64-byte lines.
    assert_eq!((l.hdr, l.stride), (32, 192));
    // An 8-byte sample and its metadata share one line.
    let small = PubSubLayout::new(4, 8, 1, Policy::Block, 8).unwrap();
    assert_eq!((small.hdr, small.stride), (32, 64));
    // Page-aligned payloads: the metadata takes the page before.
    let big = PubSubLayout::new(2, 4096, 1, Policy::Block, 4096).unwrap();
    assert_eq!((big.hdr, big.stride), (4096, 8192));
    assert_eq!(
        PubSubLayout::from_params(&l.params(), l.total as usize),
        Ok(l)
    );
    assert!(PubSubLayout::from_params(&l.params(), l.total as usize - 1).is_err());
    assert!(PubSubLayout::new(1, 1, 33, Policy::Block, 1).is_err());
    assert!(PubSubLayout::new(0, 1, 1, Policy::Block, 1).is_err());
}

/// A subscriber polls its next queue entry, not `tail`. Under drop-oldest
/// the entries it reads may have been overwritten by later laps: each
/// message must still be accounted for exactly once (received or missed),
/// and an overwritten entry must not be delivered out of order.
#[test]
fn stale_tail_walk_accounts_for_every_message() {
    let (core, subs, queue, meta) = fixture(1, 2);
    let pool = Pool::new(&core, &subs, &queue, &meta, 8, Policy::DropOldest);
    let mut cur = pool.join(0);
    let (mut tail, mut rr) = (0, 0);
    let mut publish = |pool: &Pool<'_>| {
        let s = pool.take_free(&mut rr).unwrap();
        pool.publish(&mut tail, s, 8);
    };
    publish(&pool);
    publish(&pool);
    // Takes position 0 and remembers tail = 2.
    let t = pool.try_take(&mut cur).unwrap().unwrap();
    assert_eq!((t.missed, cur.next), (0, 1));
    pool.release(0, t.slot);
    // Three more publications lap the subscriber (2 slots, queue of 2):
    // the entry of position 1 now names the slot of position 3.
    for _ in 0..3 {
        publish(&pool);
    }
    assert_eq!(core.tail.0.load(Ordering::Relaxed), 5);
    let mut got = Vec::new();
    let mut missed = 0;
    while let Some(t) = pool.try_take(&mut cur).unwrap() {
        // Relaxed: single-threaded test.
        got.push(meta[t.slot].seq.load(Ordering::Relaxed));
        missed += t.missed;
        pool.release(0, t.slot);
    }
    // Positions 1 and 2 were reclaimed; 3 and 4 arrive in order.
    assert_eq!(got, [3, 4]);
    assert_eq!(1 + missed + got.len() as u64, 5);
    // Every slot is free again.
    assert!(meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
}

/// The queue entry store commits a publication: a publisher killed after
/// it but before its `tail` store made the message visible. The next
/// publisher continues after it (`Pool::resume`): the subscriber gets the
/// dead publisher's message and every later one, nothing missed, nothing
/// twice, whether it took the message before or after the takeover.
/// Without `resume`, the new publisher reused that position: its first
/// message was lost (taken first) or the old one freed under the
/// subscriber and counted missed under `Block` (taken after).
#[test]
fn publisher_killed_after_entry_store_is_resumed() {
    for take_first in [true, false] {
        let (core, subs, queue, meta) = fixture(1, 4);
        let pool = Pool::new(&core, &subs, &queue, &meta, 8, Policy::Block);
        let mut cur = pool.join(0);
        let (mut tail, mut rr) = (0, 0);
        let s = pool.take_free(&mut rr).unwrap();
        pool.publish(&mut tail, s, 8);
        // The killed publisher: position 1 in slot 1 committed (entry
        // stored), `tail` still 1.
        meta[1].seq.store(1, Ordering::Relaxed);
        meta[1].len.store(8, Ordering::Relaxed);
        meta[1].refs.store(1, Ordering::Relaxed);
        queue[1].store(entry(1, 1), Ordering::Relaxed);
        let mut got = Vec::new();
        let mut take = |cur: &mut SubCursor| {
            while let Some(t) = pool.try_take(cur).unwrap() {
                assert_eq!(t.missed, 0, "take_first {take_first}");
                got.push(meta[t.slot].seq.load(Ordering::Relaxed));
                pool.release(0, t.slot);
            }
        };
        if take_first {
            take(&mut cur);
        }
        // The next publisher: `attach` does this.
        let mut tail = pool.resume(core.tail.0.load(Ordering::Relaxed));
        assert_eq!(tail, 2);
        pool.recover(tail);
        let mut rr = 0;
        for _ in 0..2 {
            let s = pool.take_free(&mut rr).unwrap();
            pool.publish(&mut tail, s, 8);
        }
        take(&mut cur);
        assert_eq!(got, [0, 1, 2, 3], "take_first {take_first}");
        assert!(meta.iter().all(|m| m.refs.load(Ordering::Relaxed) == 0));
    }
}

/// A busy-polling publisher under `Block` polls only the next slot in
/// round-robin order, with a periodic full scan: a slot freed out of
/// order (the reader still holds the older one) is still found, at once.
#[test]
fn busy_poll_finds_a_slot_freed_out_of_order() {
    let name = format!("t-pubsub-busypoll-{}", std::process::id());
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(2, 8, 1)).unwrap();
    p.set_wait_strategy(WaitStrategy::BusyPoll);
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.clone();
    let reader = std::thread::spawn(move || {
        let s = Subscriber::open(&n).unwrap();
        tx.send(()).unwrap();
        let first = s.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = s.recv_timeout(Duration::from_secs(10)).unwrap();
        // Both slots are in use: the publisher waits. Free the newer one
        // (not the next in round-robin order), keep the older.
        std::thread::sleep(Duration::from_millis(50));
        drop(second);
        let third = s.recv_timeout(Duration::from_secs(10)).unwrap();
        (first[0], third[0])
    });
    rx.recv().unwrap();
    p.send(&[1]).unwrap();
    p.send(&[2]).unwrap();
    let start = Instant::now();
    let mut l = p
        .loan_timeout(1, Duration::from_secs(5))
        .expect("the freed slot was not found");
    l[0] = 3;
    l.publish();
    // Found by a full scan long before the 20 ms slow check would matter
    // on a quiet machine; bounded generously for a loaded one.
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(reader.join().unwrap(), (1, 3));
}

/// Endpoints and loans keep their auto traits through layout v2 (the
/// strided metadata view holds a raw pointer): a loan can still be sent to
/// another thread or held across an `.await` in a `Send` future.
#[test]
fn endpoints_and_loans_stay_send() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Publisher>();
    send_sync::<Loan<'static>>();
    fn send<T: Send>() {}
    send::<Subscriber>();
}
