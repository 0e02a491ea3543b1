//! Seed segment files for the raw target: one of each kind, made by the
//! library and given a little state (a queued message, a joined
//! subscriber), read back byte for byte.

use shmkit::channel::pubsub::{PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::segment::{Kind, Segment};
use shmkit::sync::{EventMode, NamedEvent, NamedMutex, NamedSemaphore};

use crate::scratch::{path_of, Scratch};

fn snapshot(s: &Scratch) -> Vec<u8> {
    std::fs::read(path_of(&s.name)).expect("read segment file")
}

/// `(file name, bytes)` of every seed.
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let s = Scratch::new();
    let seg = Segment::create(&s.name, 64).expect("raw");
    seg.write_at(0, b"hello").expect("write");
    out.push(("raw", snapshot(&s)));
    drop((seg, s));

    let s = Scratch::new();
    let m = NamedMutex::<u64>::create(&s.name, 7).expect("mutex");
    out.push(("mutex", snapshot(&s)));
    drop((m, s));

    let s = Scratch::new();
    let m = NamedSemaphore::create(&s.name, 2).expect("semaphore");
    out.push(("semaphore", snapshot(&s)));
    drop((m, s));

    let s = Scratch::new();
    let e = NamedEvent::create(&s.name, EventMode::ManualReset).expect("event");
    e.set().expect("set");
    out.push(("event", snapshot(&s)));
    drop((e, s));

    let s = Scratch::new();
    let mut tx = Sender::create(&s.name, &RingOptions::new(4, 24)).expect("ring");
    let mut rx = Receiver::open(&s.name).expect("receiver");
    tx.send(b"one").expect("send");
    tx.send(b"two").expect("send");
    assert_eq!(rx.recv().expect("recv"), b"one");
    out.push(("ring", snapshot(&s)));
    drop((tx, rx, s));

    let s = Scratch::new();
    let mut p = Publisher::create(&s.name, &PubSubOptions::new(4, 32, 2)).expect("pubsub");
    let sub = Subscriber::open(&s.name).expect("subscriber");
    p.send(b"first").expect("send");
    p.send(b"second").expect("send");
    drop(sub.recv().expect("recv"));
    out.push(("pubsub", snapshot(&s)));
    drop((p, sub, s));

    let s = Scratch::new();
    let seg = Segment::builder(&s.name)
        .kind(Kind::Other(99))
        .size(16)
        .create()
        .expect("other kind");
    out.push(("other-kind", snapshot(&s)));
    drop((seg, s));
    out
}
