//! SPSC ring: API behaviour, multi-process stress, crash and hostile-memory
//! tests.
//!
//! The hostile test is meant to also run under the address sanitizer:
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zsanitizer=address \
//!   cargo test -p shmkit --target x86_64-unknown-linux-gnu \
//!   --test channel_ring --test channel_pubsub hostile
//! ```

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::ring::{Receiver, RingOptions, Sender, TypedReceiver, TypedSender};
use shmkit::channel::{OpenError, PeerState, RecvError, SendError, Wait, WaitStrategy};
use shmkit::segment::Segment;

#[test]
fn send_recv_basics() {
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut tx = Sender::create(&name, &RingOptions::new(3, 100)).unwrap();
    assert_eq!(tx.capacity(), 4);
    assert_eq!(tx.max_message(), 100);
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(rx.try_recv(), Err(RecvError::Empty));
    tx.send(b"").unwrap();
    tx.try_send(b"abc").unwrap();
    tx.send_timeout(&[7u8; 100], Duration::from_millis(10))
        .unwrap();
    tx.send(b"x").unwrap();
    assert_eq!(tx.try_send(b"full"), Err(SendError::Full));
    let t0 = Instant::now();
    assert_eq!(
        tx.send_timeout(b"full", Duration::from_millis(30)),
        Err(SendError::Timeout)
    );
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        tx.try_send(&[0u8; 101]),
        Err(SendError::TooLarge { len: 101, max: 100 })
    );
    assert_eq!(tx.len(), 4);
    assert_eq!(rx.recv().unwrap(), b"");
    assert_eq!(rx.try_recv().unwrap(), b"abc");
    assert_eq!(rx.try_recv_with(|b| b.to_vec()).unwrap(), vec![7u8; 100]);
    assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), b"x");
    assert!(rx.is_empty());
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(30)),
        Err(RecvError::Timeout)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(rx.peer(), PeerState::Alive);
    assert_eq!(tx.peer(), PeerState::Alive);
}

#[test]
fn roles_are_exclusive_and_reusable() {
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let _seg = RingOptions::new(8, 8).create(&name).unwrap();
    let tx = Sender::open(&name).unwrap();
    assert!(matches!(
        Sender::open(&name),
        Err(OpenError::RoleTaken {
            role: "producer",
            ..
        })
    ));
    let rx = Receiver::open(&name).unwrap();
    assert!(matches!(
        Receiver::open(&name),
        Err(OpenError::RoleTaken { .. })
    ));
    drop(tx);
    drop(rx);
    let mut tx = Sender::open(&name).unwrap();
    let mut rx = Receiver::open(&name).unwrap();
    tx.send(b"again").unwrap();
    assert_eq!(rx.recv().unwrap(), b"again");
}

#[test]
fn disconnection_after_draining() {
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(8, 8)).unwrap();
    // No sender yet: waiting, not disconnected.
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(30)),
        Err(RecvError::Timeout)
    );
    assert_eq!(rx.peer(), PeerState::NotYet);
    let mut tx = Sender::open(&name).unwrap();
    tx.send(b"1").unwrap();
    tx.send(b"2").unwrap();
    drop(tx);
    assert_eq!(rx.recv().unwrap(), b"1");
    assert_eq!(rx.recv().unwrap(), b"2");
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
    assert_eq!(rx.try_recv(), Err(RecvError::Disconnected));
    // Receiver gone: the sender learns it.
    let mut tx = Sender::open(&name).unwrap();
    drop(rx);
    assert_eq!(tx.send(b"3"), Err(SendError::Disconnected));
}

#[test]
fn blocked_sleeper_is_woken_across_threads() {
    for strategy in [
        WaitStrategy::Sleep,
        WaitStrategy::BusyPoll,
        WaitStrategy::default(),
    ] {
        let name = unique("ring");
        let _g = Cleanup(name.clone());
        let mut tx = Sender::create(&name, &RingOptions::new(2, 8)).unwrap();
        let mut rx = Receiver::open(&name).unwrap();
        rx.set_wait_strategy(strategy);
        tx.set_wait_strategy(strategy);
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..1000 {
                got.push(rx.recv_timeout(Duration::from_secs(10)).unwrap()[0]);
            }
            got
        });
        for i in 0..1000u32 {
            tx.send_timeout(&[(i % 251) as u8], Duration::from_secs(10))
                .unwrap();
        }
        let got = h.join().unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
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
struct Tick {
    seq: u64,
    price: f64,
    qty: u32,
    flags: u32,
}

#[test]
fn typed_ring_checks_fingerprint() {
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut tx = TypedSender::<Tick>::create(&name, &RingOptions::typed::<Tick>(16)).unwrap();
    let mut rx = TypedReceiver::<Tick>::open(&name).unwrap();
    let t = Tick {
        seq: 9,
        price: 1.5,
        qty: 3,
        flags: 0,
    };
    tx.send(&t).unwrap();
    assert_eq!(rx.recv().unwrap(), t);
    assert!(matches!(
        TypedReceiver::<u64>::open(&name),
        Err(OpenError::Segment(
            shmkit::segment::Error::TypeMismatch { .. }
        ))
    ));
    assert!(matches!(
        Receiver::open(&name),
        Err(OpenError::Segment(
            shmkit::segment::Error::TypeMismatch { .. }
        ))
    ));
}

#[test]
fn wrong_kind_is_rejected() {
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let _s = Segment::create(&name, 4096).unwrap();
    assert!(matches!(
        Sender::open(&name),
        Err(OpenError::Segment(shmkit::segment::Error::WrongKind { .. }))
    ));
}

const STRESS_COUNT: u64 = 1_000_000;

/// 1,000,000 messages of 16..=64 bytes from a child process: none lost,
/// duplicated, reordered or torn.
#[test]
fn multiprocess_million_messages() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "producer");
        let mut tx = Sender::open(&name).unwrap();
        for seq in 0..STRESS_COUNT {
            let len = 16 + (seq % 49) as usize;
            tx.send_with(len, Wait::timeout(Duration::from_secs(10)), |b| {
                make_message(seq, len, b)
            })
            .unwrap();
        }
        return;
    }
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(1024, 64)).unwrap();
    let mut child = spawn("multiprocess_million_messages", "producer", &name, 0);
    let mut expected = 0u64;
    loop {
        match rx.recv_with(Wait::timeout(Duration::from_secs(10)), |m| {
            (check_message(m), m.len())
        }) {
            Ok((seq, len)) => {
                assert_eq!(seq, expected, "lost, duplicated or reordered");
                assert_eq!(len, 16 + (seq % 49) as usize);
                expected += 1;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("after {expected} messages: {e}"),
        }
    }
    assert_eq!(expected, STRESS_COUNT);
    assert!(wait_child(&mut child, 20).success());
}

/// The producer is SIGKILLed at random points; the consumer sees only
/// whole messages, then `SenderDied`; a new producer resumes the ring.
fn writer_kill_rounds(test: &str, rounds: u32) {
    if let Some((role, name, start)) = child_role() {
        assert_eq!(role, "producer");
        let mut tx = Sender::open(&name).unwrap();
        let mut seq = start;
        // Bounded (the parent kills us long before); `unwrap` exits on
        // `Disconnected` instead of spinning.
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let len = 16 + (seq % 241) as usize;
            tx.send_with(len, Wait::timeout(Duration::from_secs(5)), |b| {
                make_message(seq, len, b)
            })
            .unwrap();
            seq += 1;
        }
        return;
    }
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(64, 256)).unwrap();
    let mut rng = Rng::from_time();
    let mut next = 0u64;
    let mut died = 0;
    for _ in 0..rounds {
        let mut child = spawn(test, "producer", &name, next);
        // Wait until the child holds the role (until then the previous,
        // dead producer is what `recv` reports), then kill it at a random
        // point while it keeps writing.
        let t0 = Instant::now();
        while rx.peer() != PeerState::Alive {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "child never started: {:?} {:?}",
                child.try_wait(),
                rx.peer()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(check_message(&first), next);
        next += 1;
        let t_kill = Instant::now() + Duration::from_micros(rng.below(20_000));
        loop {
            match rx.try_recv_with(check_message) {
                Ok(seq) => {
                    assert_eq!(seq, next);
                    next += 1;
                }
                Err(RecvError::Empty) => {}
                Err(e) => panic!("{e}"),
            }
            if Instant::now() >= t_kill {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            match rx.recv_with(Wait::timeout(Duration::from_secs(5)), check_message) {
                Ok(seq) => {
                    assert_eq!(seq, next, "lost or duplicated message");
                    next += 1;
                }
                Err(RecvError::SenderDied) => {
                    died += 1;
                    break;
                }
                Err(e) => panic!("expected SenderDied, got {e}"),
            }
        }
    }
    assert_eq!(died, rounds);
    eprintln!("{rounds} producers killed, {next} whole messages, none torn");
}

#[test]
fn writer_killed_at_random_points() {
    writer_kill_rounds("writer_killed_at_random_points", 10);
}

/// The longer run (100 kills, about 3 s): part of every test run.
#[test]
fn writer_killed_100_times() {
    writer_kill_rounds("writer_killed_100_times", 100);
}

/// Arming across processes and kills: spinning producers (fence-free
/// while the direction is unarmed) send bursts with pauses; the consumer
/// spins for the first rounds (nobody arms), then sleeps (it arms while a
/// producer is mid-stream, and a later producer must run the full
/// protocol). Each producer is SIGKILLed at a random point. No message is
/// lost, duplicated or torn, and every round ends with `SenderDied`.
#[test]
fn arming_midstream_across_processes_and_kills() {
    if let Some((role, name, start)) = child_role() {
        assert_eq!(role, "producer");
        let mut tx = Sender::open(&name).unwrap();
        tx.set_wait_strategy(WaitStrategy::BusyPoll);
        let mut rng = Rng(start | 1);
        let end = Instant::now() + Duration::from_secs(30);
        let mut seq = start;
        while Instant::now() < end {
            let len = 16 + (seq % 49) as usize;
            tx.send_with(len, Wait::timeout(Duration::from_secs(5)), |b| {
                make_message(seq, len, b)
            })
            .unwrap();
            seq += 1;
            if rng.below(500) == 0 {
                // A pause: the consumer finds the ring empty and waits.
                std::thread::sleep(Duration::from_micros(rng.below(2000)));
            }
        }
        return;
    }
    let test = "arming_midstream_across_processes_and_kills";
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(64, 64)).unwrap();
    let mut rng = Rng::from_time();
    let mut next = 0u64;
    for round in 0..6 {
        rx.set_wait_strategy(if round < 2 {
            WaitStrategy::BusyPoll
        } else {
            WaitStrategy::Sleep
        });
        let mut child = spawn(test, "producer", &name, next);
        // Until the child holds the role, the previous (dead) producer is
        // what `recv` would report.
        let t0 = Instant::now();
        while rx.peer() != PeerState::Alive {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "child never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let t_kill = Instant::now() + Duration::from_millis(50 + rng.below(200));
        while Instant::now() < t_kill {
            match rx.recv_with(Wait::timeout(Duration::from_secs(10)), check_message) {
                Ok(seq) => {
                    assert_eq!(seq, next, "lost, duplicated or reordered");
                    next += 1;
                }
                Err(e) => panic!("round {round}, after {next} messages: {e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            match rx.recv_with(Wait::timeout(Duration::from_secs(5)), check_message) {
                Ok(seq) => {
                    assert_eq!(seq, next, "lost or duplicated message");
                    next += 1;
                }
                Err(RecvError::SenderDied) => break,
                Err(e) => panic!("round {round}: expected SenderDied, got {e}"),
            }
        }
    }
    assert!(next > 6, "only {next} messages");
    eprintln!("6 producers killed, {next} whole messages in order");
}

/// A child scribbles random values over the ring's indices and lengths;
/// both endpoints must return errors (or valid messages), never touch
/// memory outside the ring.
#[test]
fn hostile_ring_indices() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "scribbler");
        let seg = Segment::open(&name).unwrap();
        let mut rng = Rng::from_time();
        let stride = 128; // prefix + max_message rounded up to 64, see RingLayout
                          // Until the parent kills us (bounded, in case it cannot).
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let v = rng.next() >> rng.below(64);
            let off = match rng.below(6) {
                0 => 0,                                 // tail
                1 => 128,                               // head
                2 => 4096 + rng.below(16) * stride,     // a slot's stamp
                3 => 4096 + rng.below(16) * stride + 8, // a slot's length
                4 => 1024,                              // data_armed
                _ => 1152,                              // space_armed
            };
            seg.write_at(off, &v.to_le_bytes()).unwrap();
            std::thread::yield_now();
        }
        return;
    }
    let name = unique("ring");
    let _g = Cleanup(name.clone());
    let _seg = RingOptions::new(16, 64).create(&name).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    let mut rx = Receiver::open(&name).unwrap();
    let mut child = spawn("hostile_ring_indices", "scribbler", &name, 0);
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
        match tx.try_send(&[0xab; 64]) {
            Err(SendError::Corrupt(_)) => corrupt += 1,
            Ok(()) | Err(SendError::Full) => {}
            Err(e) => panic!("{e}"),
        }
        match rx.try_recv_with(|m| m.len()) {
            Ok(len) => {
                assert!(len <= 64);
                ok += 1
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
    eprintln!("hostile ring: {corrupt} corruptions detected, {ok} messages");
}
