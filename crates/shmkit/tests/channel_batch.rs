//! Ring batches: `Sender::send_batch` and `Receiver::recv_batch` /
//! `drain_into`: order, limits, multi-process stress, and a producer killed
//! inside a batch (its successor must find the messages stamped past the
//! shared `tail`).

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{PeerState, RecvError, SendError, Wait};

fn msg(seq: u64) -> Vec<u8> {
    let len = 16 + (seq % 49) as usize;
    let mut v = vec![0; len];
    make_message(seq, len, &mut v);
    v
}

#[test]
fn batch_fills_the_ring_and_drains_in_order() {
    let name = unique("batch");
    let _g = Cleanup(name.clone());
    let mut tx = Sender::create(&name, &RingOptions::new(64, 64)).unwrap();
    let mut rx = Receiver::open(&name).unwrap();
    let msgs: Vec<Vec<u8>> = (0..100).map(msg).collect();
    assert_eq!(tx.send_batch::<Vec<u8>>(&[], Wait::No).unwrap(), 0);
    // An empty ring of 64 slots takes exactly 64.
    assert_eq!(tx.send_batch(&msgs, Wait::No).unwrap(), 64);
    assert_eq!(rx.len(), 64);
    assert!(matches!(
        tx.send_batch(&msgs[64..], Wait::No),
        Err(SendError::Full)
    ));
    // A limit is respected, and the order kept.
    let mut seen = Vec::new();
    assert_eq!(
        rx.recv_batch(10, Wait::No, |m| seen.push(check_message(m)))
            .unwrap(),
        10
    );
    assert_eq!(rx.recv_batch(0, Wait::No, |_| panic!()).unwrap(), 0);
    assert_eq!(tx.send_batch(&msgs[64..], Wait::No).unwrap(), 10);
    let mut out = Vec::new();
    assert_eq!(rx.drain_into(&mut out, Wait::No).unwrap(), 64);
    seen.extend(out.iter().map(|m| check_message(m)));
    assert_eq!(seen, (0..74).collect::<Vec<u64>>());
    assert!(matches!(
        rx.recv_batch(8, Wait::No, |_| ()),
        Err(RecvError::Empty)
    ));
}

#[test]
fn batch_stops_before_a_message_too_large() {
    let name = unique("batch");
    let _g = Cleanup(name.clone());
    let mut tx = Sender::create(&name, &RingOptions::new(8, 16)).unwrap();
    let mut rx = Receiver::open(&name).unwrap();
    let msgs = [vec![1u8; 16], vec![2u8; 17], vec![3u8; 4]];
    assert_eq!(tx.send_batch(&msgs, Wait::No).unwrap(), 1);
    assert!(matches!(
        tx.send_batch(&msgs[1..], Wait::No),
        Err(SendError::TooLarge { len: 17, max: 16 })
    ));
    assert_eq!(tx.send_batch(&msgs[2..], Wait::No).unwrap(), 1);
    let mut got = Vec::new();
    rx.recv_batch(8, Wait::No, |m| got.push(m.to_vec()))
        .unwrap();
    assert_eq!(got, vec![msgs[0].clone(), msgs[2].clone()]);
}

#[test]
fn batch_receiver_sees_disconnect_after_the_last_message() {
    let name = unique("batch");
    let _g = Cleanup(name.clone());
    let mut tx = Sender::create(&name, &RingOptions::new(8, 64)).unwrap();
    let mut rx = Receiver::open(&name).unwrap();
    let msgs: Vec<Vec<u8>> = (0..5).map(msg).collect();
    assert_eq!(tx.send_batch(&msgs, Wait::No).unwrap(), 5);
    drop(tx);
    let mut n = 0;
    let got = rx
        .recv_batch(100, Wait::timeout(Duration::from_secs(5)), |m| {
            assert_eq!(check_message(m), n);
            n += 1;
        })
        .unwrap();
    assert_eq!(got, 5);
    assert!(matches!(
        rx.recv_batch(100, Wait::timeout(Duration::from_secs(5)), |_| ()),
        Err(RecvError::Disconnected)
    ));
}

const STRESS: u64 = 1_000_000;

/// 1,000,000 messages sent in batches of random size by a child process
/// and received in batches of random size: none lost, duplicated,
/// reordered or torn.
#[test]
fn multiprocess_batches_million_messages() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "producer");
        let mut tx = Sender::open(&name).unwrap();
        let mut rng = Rng::from_time();
        let mut seq = 0;
        while seq < STRESS {
            let n = (1 + rng.below(100)).min(STRESS - seq);
            let batch: Vec<Vec<u8>> = (seq..seq + n).map(msg).collect();
            let mut done = 0;
            while done < batch.len() {
                done += tx
                    .send_batch(&batch[done..], Wait::timeout(Duration::from_secs(10)))
                    .unwrap();
            }
            seq += n;
        }
        return;
    }
    let name = unique("batch");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(256, 64)).unwrap();
    let mut child = spawn(
        "multiprocess_batches_million_messages",
        "producer",
        &name,
        0,
    );
    let mut rng = Rng::from_time();
    let mut expected = 0u64;
    loop {
        let max = 1 + rng.below(300) as usize;
        let r = rx.recv_batch(max, Wait::timeout(Duration::from_secs(10)), |m| {
            let seq = check_message(m);
            assert_eq!(seq, expected, "lost, duplicated or reordered");
            assert_eq!(m.len(), 16 + (seq % 49) as usize);
            expected += 1;
        });
        match r {
            Ok(n) => assert!(n >= 1 && n <= max),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("after {expected} messages: {e}"),
        }
    }
    assert_eq!(expected, STRESS);
    assert!(wait_child(&mut child, 20).success());
}

/// The producer sends in batches and is SIGKILLed at random points (so
/// also between stamping messages and storing `tail`); the consumer sees
/// only whole messages in order, then `SenderDied`; the next producer
/// resumes after every message its predecessor stamped.
#[test]
fn batch_writer_killed_at_random_points() {
    if let Some((role, name, start)) = child_role() {
        assert_eq!(role, "producer");
        let mut tx = Sender::open(&name).unwrap();
        let mut rng = Rng::from_time();
        let mut seq = start;
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let n = 1 + rng.below(40);
            let batch: Vec<Vec<u8>> = (seq..seq + n).map(msg).collect();
            let sent = tx
                .send_batch(&batch, Wait::timeout(Duration::from_secs(5)))
                .unwrap();
            seq += sent as u64;
        }
        return;
    }
    let name = unique("batch");
    let _g = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(64, 64)).unwrap();
    let mut rng = Rng::from_time();
    let mut next = 0u64;
    for round in 0..10 {
        let mut child = spawn(
            "batch_writer_killed_at_random_points",
            "producer",
            &name,
            next,
        );
        let t0 = Instant::now();
        while rx.peer() != PeerState::Alive {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "child never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let t_kill = Instant::now() + Duration::from_micros(rng.below(20_000));
        while Instant::now() < t_kill {
            match rx.recv_batch(1 + rng.below(50) as usize, Wait::No, |m| {
                assert_eq!(check_message(m), next, "round {round}");
                next += 1;
            }) {
                Ok(_) | Err(RecvError::Empty) => {}
                Err(e) => panic!("{e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            match rx.recv_batch(64, Wait::timeout(Duration::from_secs(5)), |m| {
                assert_eq!(check_message(m), next, "lost or duplicated message");
                next += 1;
            }) {
                Ok(_) => {}
                Err(RecvError::SenderDied) => break,
                Err(e) => panic!("expected SenderDied, got {e}"),
            }
        }
    }
    eprintln!("10 batch producers killed, {next} whole messages, none torn");
}
