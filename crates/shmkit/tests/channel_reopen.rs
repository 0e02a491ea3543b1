//! Reusing a channel: after one sender and receiver are done, the next
//! pair works, in either start order; an end (close or death) that
//! happened before an endpoint attached does not end it.

mod channel_common;

use std::thread;
use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::pubsub::{self, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{self, Receiver, RingOptions, Sender};
use shmkit::channel::{PeerState, RecvError, Wait};
use shmkit::segment::Segment;

const LONG: Duration = Duration::from_secs(20);

/// Polls `f` until it holds (at most 20 s).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < LONG, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn ring_peer(name: &str, producer: bool) -> PeerState {
    let seg = Segment::builder(name).read_only().open().unwrap();
    let s = ring::stats(&seg).unwrap();
    if producer {
        s.producer
    } else {
        s.consumer
    }
}

/// Receives messages until the sender's end; returns their sequence
/// numbers.
fn ring_receive_all(name: &str) -> Vec<u64> {
    let mut rx = Receiver::open(name).unwrap();
    let mut got = Vec::new();
    loop {
        match rx.recv_with(Wait::timeout(LONG), check_message) {
            Ok(seq) => got.push(seq),
            Err(RecvError::Disconnected) => return got,
            Err(e) => panic!("receiver: {e}"),
        }
    }
}

fn ring_send_all(name: &str, first: u64, n: u64) {
    let mut tx = Sender::open(name).unwrap();
    for seq in first..first + n {
        let len = 16 + (seq % 100) as usize;
        tx.send_with(len, Wait::timeout(LONG), |b| make_message(seq, len, b))
            .unwrap();
    }
}

#[test]
fn ring_five_transfers_alternating_start_order() {
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    // 40 messages through 8 slots: the sender started first blocks on a
    // full ring until the receiver arrives.
    let _seg = RingOptions::new(8, 128).create(&name).unwrap();
    for round in 0..5u64 {
        let first = round * 1000;
        let (rx, tx);
        if round % 2 == 0 {
            let n = name.clone();
            rx = thread::spawn(move || ring_receive_all(&n));
            until("the consumer", || {
                ring_peer(&name, false) == PeerState::Alive
            });
            // The receiver waits for the sender (not ended by the previous
            // round's close).
            thread::sleep(Duration::from_millis(50));
            assert!(!rx.is_finished(), "round {round}: receiver ended early");
            let n = name.clone();
            tx = thread::spawn(move || ring_send_all(&n, first, 40));
        } else {
            let n = name.clone();
            tx = thread::spawn(move || ring_send_all(&n, first, 40));
            until("the producer", || {
                ring_peer(&name, true) == PeerState::Alive
            });
            thread::sleep(Duration::from_millis(50));
            assert!(!tx.is_finished(), "round {round}: sender ended early");
            let n = name.clone();
            rx = thread::spawn(move || ring_receive_all(&n));
        }
        tx.join().expect("sender");
        let got = rx.join().expect("receiver");
        assert_eq!(
            got,
            (first..first + 40).collect::<Vec<_>>(),
            "round {round}"
        );
    }
}

#[test]
fn ring_receiver_after_a_close_waits_for_the_next_sender() {
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    let _seg = RingOptions::new(8, 64).create(&name).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    tx.send(b"old").unwrap();
    drop(tx);
    // Leftovers of a closed sender: delivered, then its close ends us.
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(rx.recv().unwrap(), b"old");
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
    drop(rx);
    // Nothing left: a new receiver waits instead of ending at once...
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvError::Timeout)
    );
    // ...for the next sender, whose close ends it.
    let mut tx = Sender::open(&name).unwrap();
    tx.send(b"new").unwrap();
    drop(tx);
    assert_eq!(rx.recv().unwrap(), b"new");
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
    // A sender that sends nothing ends a waiting receiver too.
    drop(rx);
    let mut rx = Receiver::open(&name).unwrap();
    drop(Sender::open(&name).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Err(RecvError::Disconnected)
    );
}

#[test]
fn ring_sender_after_a_receiver_closed_sends() {
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    let _seg = RingOptions::new(4, 64).create(&name).unwrap();
    drop(Receiver::open(&name).unwrap());
    // The receiver closed before this sender attached: not its receiver.
    let mut tx = Sender::open(&name).unwrap();
    for i in 0..4u8 {
        tx.send(&[i]).unwrap();
    }
    // Full, and nobody to drain it: it waits (no `Disconnected`).
    assert_eq!(
        tx.send_timeout(b"x", Duration::from_millis(50)),
        Err(shmkit::channel::SendError::Timeout)
    );
    // A receiver that attached after us and closes does end us.
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(rx.recv().unwrap(), [0]);
    drop(rx);
    assert_eq!(tx.send(b"y"), Err(shmkit::channel::SendError::Disconnected));
}

/// A producer that sends one message and then waits to be killed.
fn producer_child(name: &str) {
    let mut tx = Sender::open(name).unwrap();
    tx.send(b"last words").unwrap();
    thread::sleep(Duration::from_secs(30));
}

#[test]
fn ring_receiver_after_a_dead_sender_waits_for_the_next() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "producer");
        producer_child(&name);
        return;
    }
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    let _seg = RingOptions::new(8, 64).create(&name).unwrap();
    let mut kid = spawn(
        "ring_receiver_after_a_dead_sender_waits_for_the_next",
        "producer",
        &name,
        0,
    );
    until("the message", || {
        Segment::builder(&name)
            .read_only()
            .open()
            .map(|s| ring::stats(&s).unwrap().depth == 1)
            .unwrap_or(false)
    });
    kid.kill().unwrap();
    kid.wait().unwrap();
    // Attached after the death, with its message left: delivered, then
    // the death is reported.
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(rx.recv().unwrap(), b"last words");
    assert_eq!(rx.recv(), Err(RecvError::SenderDied));
    drop(rx);
    // Attached after the death, nothing left: waits for the next sender.
    let mut rx = Receiver::open(&name).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvError::Timeout)
    );
    let mut tx = Sender::open(&name).unwrap();
    tx.send(b"next").unwrap();
    drop(tx);
    assert_eq!(rx.recv().unwrap(), b"next");
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
}

fn publisher_state(name: &str) -> PeerState {
    let seg = Segment::builder(name).read_only().open().unwrap();
    pubsub::stats(&seg).unwrap().publisher
}

fn pubsub_receive_all(name: &str) -> Vec<u64> {
    let sub = Subscriber::open(name).unwrap();
    let mut got = Vec::new();
    loop {
        match sub.recv_wait(Wait::timeout(LONG)) {
            Ok(s) => {
                assert_eq!(s.missed(), 0);
                got.push(check_message(&s));
            }
            Err(RecvError::Disconnected) => return got,
            Err(e) => panic!("subscriber: {e}"),
        }
    }
}

fn pubsub_send_all(name: &str, first: u64, n: u64) {
    let mut p = Publisher::open(name).unwrap();
    // Publications with nobody subscribed go nowhere (as `shmkit send`).
    until("a subscriber", || p.subscribers() > 0);
    for seq in first..first + n {
        let len = 16 + (seq % 100) as usize;
        let mut loan = p.loan_wait(len, Wait::timeout(LONG)).unwrap();
        make_message(seq, len, &mut loan);
        loan.publish();
    }
}

#[test]
fn pubsub_five_transfers_alternating_start_order() {
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    let _seg = PubSubOptions::new(4, 128, 2).create(&name).unwrap();
    for round in 0..5u64 {
        let first = round * 1000;
        let (rx, tx);
        if round % 2 == 0 {
            let n = name.clone();
            rx = thread::spawn(move || pubsub_receive_all(&n));
            thread::sleep(Duration::from_millis(50));
            assert!(!rx.is_finished(), "round {round}: subscriber ended early");
            let n = name.clone();
            tx = thread::spawn(move || pubsub_send_all(&n, first, 40));
        } else {
            let n = name.clone();
            tx = thread::spawn(move || pubsub_send_all(&n, first, 40));
            until("the publisher", || {
                publisher_state(&name) == PeerState::Alive
            });
            let n = name.clone();
            rx = thread::spawn(move || pubsub_receive_all(&n));
        }
        tx.join().expect("publisher");
        let got = rx.join().expect("subscriber");
        assert_eq!(
            got,
            (first..first + 40).collect::<Vec<_>>(),
            "round {round}"
        );
    }
}

#[test]
fn pubsub_subscriber_after_a_close_waits_for_the_next_publisher() {
    let name = unique("reopen");
    let _g = Cleanup(name.clone());
    let _seg = PubSubOptions::new(4, 64, 2).create(&name).unwrap();
    drop(Publisher::open(&name).unwrap());
    let sub = Subscriber::open(&name).unwrap();
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(100)).unwrap_err(),
        RecvError::Timeout
    );
    let mut p = Publisher::open(&name).unwrap();
    p.send(b"hello").unwrap();
    drop(p);
    assert_eq!(&*sub.recv().unwrap(), b"hello");
    assert_eq!(sub.recv().unwrap_err(), RecvError::Disconnected);
}
