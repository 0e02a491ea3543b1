//! Publish/subscribe: API behaviour, multi-process stress with large
//! payloads, subscriber and publisher crashes, hostile memory.
//!
//! Address-sanitizer run of the hostile test: see `channel_ring.rs`.

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::pubsub::{
    Policy, PubSubOptions, Publisher, Subscriber, TypedPublisher, TypedSubscriber,
};
use shmkit::channel::{OpenError, PeerState, RecvError, SendError, Wait};
use shmkit::segment::Segment;

#[test]
fn loan_publish_receive_release() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(4, 1024, 2)).unwrap();
    let a = Subscriber::open(&name).unwrap();
    let b = Subscriber::open(&name).unwrap();
    assert!(matches!(
        Subscriber::open(&name),
        Err(OpenError::NoSubscriberSlot { max: 2, .. })
    ));
    assert_eq!(a.try_recv().unwrap_err(), RecvError::Empty);
    for i in 0..4u8 {
        let mut loan = p.loan(10 + i as usize).unwrap();
        loan.fill(i);
        loan.publish();
    }
    // Four slots, all pending for both subscribers: back-pressure.
    assert!(matches!(p.try_loan(1), Err(SendError::Full)));
    assert!(matches!(
        p.loan_timeout(1, Duration::from_millis(30)),
        Err(SendError::Timeout)
    ));
    assert!(matches!(p.try_loan(2000), Err(SendError::TooLarge { .. })));
    // `a` holds every sample at once (zero copy: they are the slots).
    let held: Vec<_> = (0..4).map(|_| a.try_recv().unwrap()).collect();
    for (i, s) in held.iter().enumerate() {
        assert_eq!(s.len(), 10 + i);
        assert!(s.iter().all(|&x| x == i as u8));
        assert_eq!(s.missed(), 0);
    }
    for i in 0..4u8 {
        let s = b.recv_timeout(Duration::from_secs(1)).unwrap();
        assert!(s.iter().all(|&x| x == i));
    }
    // `b` released; `a` still holds everything.
    assert!(matches!(p.try_loan(1), Err(SendError::Full)));
    drop(held);
    {
        // Unpublished: the slot stays free.
        let _loan = p.try_loan(1).unwrap();
    }
    p.try_send(b"last").unwrap();
    assert_eq!(&*a.recv().unwrap(), b"last");
    assert_eq!(&*b.recv().unwrap(), b"last");
    assert_eq!(a.peer(), PeerState::Alive);
}

#[test]
fn drop_oldest_reports_missed() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let opts = PubSubOptions::new(4, 64, 2).policy(Policy::DropOldest);
    let mut p = Publisher::create(&name, &opts).unwrap();
    let slow = Subscriber::open(&name).unwrap();
    for i in 0..10u8 {
        p.try_send(&[i]).unwrap();
    }
    let mut seen = Vec::new();
    let mut missed = 0;
    while let Ok(s) = slow.try_recv() {
        missed += s.missed();
        seen.push(s[0]);
    }
    assert_eq!(seen.len() as u64 + missed, 10, "never silent loss");
    assert_eq!(*seen.last().unwrap(), 9);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    // A held sample is never reclaimed under it.
    let held = {
        p.try_send(&[100]).unwrap();
        slow.try_recv().unwrap()
    };
    for i in 0..10u8 {
        p.try_send(&[i]).unwrap();
    }
    assert_eq!(held[0], 100);
}

#[test]
fn late_joiner_and_leaver() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(2, 64, 2)).unwrap();
    // Nobody subscribed: publishing never blocks, messages go nowhere.
    for _ in 0..10 {
        p.try_send(b"void").unwrap();
    }
    let s = Subscriber::open(&name).unwrap();
    assert_eq!(s.try_recv().unwrap_err(), RecvError::Empty);
    p.try_send(b"one").unwrap();
    p.try_send(b"two").unwrap();
    drop(s); // leaves with two pending messages
             // Its slots come back (reaped by the publisher).
    p.send_wait(b"three", Wait::timeout(Duration::from_secs(2)))
        .unwrap();
    let s = Subscriber::open(&name).unwrap();
    p.try_send(b"four").unwrap();
    assert_eq!(&*s.recv().unwrap(), b"four");
    drop(p);
    assert_eq!(
        s.recv_timeout(Duration::from_secs(2)).unwrap_err(),
        RecvError::Disconnected
    );
}

#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
struct Frame {
    seq: u64,
    pixels: [u32; 64],
}

#[test]
fn typed_samples_deref_in_place() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p =
        TypedPublisher::<Frame>::create(&name, &PubSubOptions::typed::<Frame>(4, 2)).unwrap();
    let s = TypedSubscriber::<Frame>::open(&name).unwrap();
    let mut loan = p.loan().unwrap();
    loan.seq = 7;
    loan.pixels = [3; 64];
    loan.publish();
    let f = s.recv().unwrap();
    assert_eq!(f.seq, 7);
    assert_eq!(f.pixels[63], 3);
    assert!(matches!(
        Subscriber::open(&name),
        Err(OpenError::Segment(
            shmkit::segment::Error::TypeMismatch { .. }
        ))
    ));
}

const SIZES: [usize; 4] = [64 << 10, 1 << 20, 4 << 20, 16 << 20];
const PER_SIZE: u64 = 24;

/// Three subscriber processes, 64 KiB to 16 MiB payloads, block policy:
/// every subscriber sees every message, intact.
#[test]
fn three_subscriber_processes_large_payloads() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "subscriber");
        let s = Subscriber::open(&name).unwrap();
        println!("ready");
        let mut expected = 0u64;
        loop {
            match s.recv_timeout(Duration::from_secs(20)) {
                Ok(m) => {
                    assert_eq!(m.missed(), 0);
                    let size = SIZES[(expected / PER_SIZE) as usize];
                    assert_eq!(m.len(), size);
                    assert_eq!(check_large(&m), expected);
                    expected += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        assert_eq!(expected, PER_SIZE * SIZES.len() as u64);
        return;
    }
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(4, 16 << 20, 3)).unwrap();
    let mut kids: Vec<_> = (0..3)
        .map(|_| {
            spawn(
                "three_subscriber_processes_large_payloads",
                "subscriber",
                &name,
                0,
            )
        })
        .collect();
    let t0 = Instant::now();
    while p.subscribers() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut seq = 0;
    for size in SIZES {
        for _ in 0..PER_SIZE {
            let mut loan = p.loan_timeout(size, Duration::from_secs(20)).unwrap();
            make_large(seq, &mut loan);
            loan.publish();
            seq += 1;
        }
    }
    drop(p);
    for k in &mut kids {
        assert!(wait_child(k, 30).success());
    }
}

/// A subscriber SIGKILLed while holding samples: the publisher gets every
/// slot back and carries on.
#[test]
fn subscriber_killed_holding_samples() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "hoarder");
        let s = Subscriber::open(&name).unwrap();
        let mut held = Vec::new();
        // Bounded, and gone as soon as the publisher is: never an orphan
        // spinning after the test.
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match s.recv_timeout(Duration::from_millis(100)) {
                Ok(x) => held.push(x),
                Err(RecvError::Timeout) => {}
                Err(e) => panic!("hoarder: {e}"),
            }
        }
        return;
    }
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let slots = 8;
    let mut p = Publisher::create(&name, &PubSubOptions::new(slots, 4096, 2)).unwrap();
    let mut rng = Rng::from_time();
    for round in 0..10 {
        let mut child = spawn("subscriber_killed_holding_samples", "hoarder", &name, 0);
        let t0 = Instant::now();
        while p.subscribers() < 1 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        // Fill a random number of slots; the hoarder takes and keeps them.
        let n = 1 + rng.below(slots);
        for _ in 0..n {
            p.send_wait(&[round as u8; 100], Wait::timeout(Duration::from_secs(5)))
                .unwrap();
        }
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        // All slots must come back: loan every one of them at once is not
        // possible (one loan at a time), so publish `slots` messages with
        // nobody subscribed, each needing a free slot.
        for _ in 0..slots * 2 {
            p.send_wait(&[1; 100], Wait::timeout(Duration::from_secs(2)))
                .expect("slot reclaimed from the dead subscriber");
        }
        let info = shmkit::channel::pubsub::stats(&Segment::open(&name).unwrap()).unwrap();
        assert_eq!(info.slots_in_use, 0, "round {round}: {info:?}");
        assert_eq!(info.subscribers, 0);
    }
}

/// A publisher killed mid-loan never exposes the half-written slot; the
/// subscriber gets `SenderDied` after every published message; each new
/// publisher makes progress (no slot leaked by its killed predecessor),
/// and at the end every slot is free.
#[test]
fn publisher_killed_mid_loan() {
    const SLOTS: u64 = 2;
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "publisher");
        let mut p = Publisher::open(&name).unwrap();
        let mut seq = p.published();
        // Bounded: the parent kills us long before this.
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let mut loan = p.loan_timeout(256 << 10, Duration::from_secs(5)).unwrap();
            make_large(seq, &mut loan);
            loan.publish();
            seq += 1;
        }
        return;
    }
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let _seg = PubSubOptions::new(SLOTS, 256 << 10, 1)
        .create(&name)
        .unwrap();
    let s = Subscriber::open(&name).unwrap();
    let mut rng = Rng::from_time();
    let mut expected: Option<u64> = None;
    for round in 0..10 {
        let mut child = spawn("publisher_killed_mid_loan", "publisher", &name, 0);
        let mut received = 0u64;
        let mut check = |m: &[u8]| {
            let seq = check_large(m);
            if let Some(e) = expected {
                assert_eq!(seq, e, "round {round}");
            }
            expected = Some(seq + 1);
            received += 1;
        };
        let t0 = Instant::now();
        while s.peer() != PeerState::Alive {
            assert!(t0.elapsed() < Duration::from_secs(10), "round {round}");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Progress: the new publisher delivers at least one message.
        let first = s
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: no message from the new publisher: {e}"));
        check(&first);
        drop(first);
        let kill_at = Instant::now() + Duration::from_micros(rng.below(20_000));
        while Instant::now() < kill_at {
            if let Ok(m) = s.try_recv() {
                check(&m);
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            match s.recv_timeout(Duration::from_secs(5)) {
                Ok(m) => check(&m),
                Err(RecvError::SenderDied) => break,
                Err(e) => panic!("round {round}: expected SenderDied, got {e}"),
            }
        }
        assert!(received >= 1);
    }
    // A publisher taking over frees whatever its killed predecessor had
    // addressed but not made visible: every slot is free.
    let p = Publisher::open(&name).unwrap();
    let info = shmkit::channel::pubsub::stats(&Segment::open(&name).unwrap()).unwrap();
    assert_eq!(info.slots_in_use, 0, "{info:?}");
    drop(p);
}

/// A child scribbles random values over the pool's indices, queue, refs,
/// sequence numbers and lengths; the endpoints must return errors or valid
/// samples, never touch memory outside the segment.
#[test]
fn hostile_pool_indices() {
    const SLOTS: u64 = 8;
    const SUBS: u64 = 2;
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "scribbler");
        let seg = Segment::open(&name).unwrap();
        let mut rng = Rng::from_time();
        // Layout v2 (see PubSubLayout): core at 0, subscriber lines at
        // 1024, queue entries (8 bytes) after them; from the next page, the
        // slots (stride 32 + 512 rounded to 64 = 576), each starting with
        // its metadata (refs, seq, len).
        let queue_off = 1024 + SUBS * 128;
        let data_off = (queue_off + SLOTS * 8).next_multiple_of(4096);
        let stride = 576;
        // Until the parent kills us (bounded, in case it cannot).
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let v = rng.next() >> rng.below(64);
            // Queue entries: half the time stamped with a position near
            // the publisher's `tail` (so subscribers act on it), naming a
            // slot that may be out of range.
            let mut t = [0u8; 8];
            seg.read_at(0, &mut t).unwrap();
            let near = u64::from_le_bytes(t).wrapping_add(rng.below(4));
            let stamped = (near.wrapping_add(1) << 16) | (v & 0xf);
            let (off, v) = match rng.below(4) {
                0 => (0, v), // tail
                1 => (
                    queue_off + rng.below(SLOTS) * 8,
                    if rng.below(2) == 0 { v } else { stamped },
                ),
                _ => (data_off + rng.below(SLOTS) * stride + 8 * rng.below(3), v),
            };
            seg.write_at(off, &v.to_le_bytes()).unwrap();
            std::thread::yield_now();
        }
        return;
    }
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let opts = PubSubOptions::new(SLOTS, 512, SUBS as u32).policy(Policy::DropOldest);
    let mut p = Publisher::create(&name, &opts).unwrap();
    let s = Subscriber::open(&name).unwrap();
    let mut child = spawn("hostile_pool_indices", "scribbler", &name, 0);
    let mut corrupt = 0u64;
    let mut ok = 0u64;
    // At least 800 ms, and until scribbling was seen (the scribbler may
    // start late, or get little CPU, on a loaded machine); bounded.
    let start = Instant::now();
    loop {
        let t = start.elapsed();
        if t > Duration::from_secs(20) || (t > Duration::from_millis(800) && corrupt > 0) {
            break;
        }
        match p.try_loan(512) {
            Ok(mut l) => {
                l.fill(0x5a);
                l.publish();
            }
            Err(SendError::Full) => {}
            Err(e) => panic!("{e}"),
        }
        match s.try_recv() {
            Ok(m) => {
                assert!(m.len() <= 512);
                ok += 1;
            }
            Err(RecvError::Corrupt(_)) => corrupt += 1,
            Err(RecvError::Empty) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the scribbler failed: {:?}",
        child.try_wait()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(corrupt > 0, "scribbling was never detected");
    eprintln!("hostile pool: {corrupt} corruptions detected, {ok} samples");
}

/// A subscriber that leaves (drop) is no longer addressed at once: the
/// publisher's next messages do not sit pending for it (M3), even with a
/// sample leaked by `mem::forget`.
#[test]
fn departed_subscriber_is_not_addressed() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(2, 64, 2)).unwrap();
    let s = Subscriber::open(&name).unwrap();
    p.send(b"one").unwrap();
    std::mem::forget(s.recv().unwrap());
    drop(s);
    p.try_send(b"two").unwrap();
    let info = shmkit::channel::pubsub::stats(&Segment::open(&name).unwrap()).unwrap();
    assert_eq!(info.slots_in_use, 0, "{info:?}");
    // Both slots are free without any wait (no reaping needed).
    p.try_send(b"three").unwrap();
    p.try_send(b"four").unwrap();
}

/// Drop-oldest: a subscriber killed while holding samples gets its slots
/// reaped although the publisher never runs out of slots (periodic reap).
#[test]
fn drop_oldest_reaps_dead_subscriber() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "hoarder");
        let s = Subscriber::open(&name).unwrap();
        let mut held = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end && held.len() < 2 {
            match s.recv_timeout(Duration::from_millis(100)) {
                Ok(x) => held.push(x),
                Err(RecvError::Timeout) => {}
                Err(e) => panic!("hoarder: {e}"),
            }
        }
        println!("holding");
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let opts = PubSubOptions::new(4, 64, 2).policy(Policy::DropOldest);
    let mut p = Publisher::create(&name, &opts).unwrap();
    let mut child = spawn("drop_oldest_reaps_dead_subscriber", "hoarder", &name, 0);
    let t0 = Instant::now();
    while p.subscribers() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = || shmkit::channel::pubsub::stats(&Segment::open(&name).unwrap()).unwrap();
    // Publish until the hoarder holds two slots.
    let t0 = Instant::now();
    loop {
        p.try_send(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(1));
        let held = stats().slots_in_use;
        if held >= 2 && t0.elapsed() > Duration::from_millis(50) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "hoarder took nothing"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Slots never run out (two of four are reclaimable), yet the dead
    // subscriber's slots come back within a bounded number of loans.
    for _ in 0..1024 {
        p.try_send(b"y").unwrap();
    }
    let info = stats();
    assert_eq!(info.slots_in_use, 0, "{info:?}");
}

/// The copying receive: a private copy of the payload, `missed` reported,
/// and the slot released at once.
#[test]
fn recv_into_copies_and_releases() {
    let name = unique("ps");
    let _g = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(1, 64, 1)).unwrap();
    let s = Subscriber::open(&name).unwrap();
    let mut buf = vec![9; 100];
    for i in 0..3u8 {
        p.send(&[i; 10]).unwrap();
        assert_eq!(s.recv_into(Wait::No, &mut buf), Ok(0));
        assert_eq!(buf, [i; 10]);
    }
    assert_eq!(s.recv_into(Wait::No, &mut buf), Err(RecvError::Empty));
}
