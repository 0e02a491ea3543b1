//! Async pub/sub: async subscribers and publisher, back-pressure through
//! `loan_async`, a publisher's death, the stream.
#![cfg(feature = "async")]

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use futures::StreamExt;
use shmkit::channel::pubsub::{Policy, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::RecvError;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Block policy, two slots: the async publisher waits in `loan_async`
/// for the async subscribers to drop their samples; every subscriber sees
/// every message in order.
#[test]
fn async_publisher_and_subscribers_with_back_pressure() {
    const M: u64 = 5_000;
    let name = unique("aio-ps");
    let _c = Cleanup(name.clone());
    let opts = PubSubOptions::new(2, 8, 4).policy(Policy::Block);
    let mut publisher = Publisher::create(&name, &opts).unwrap();
    let subs: Vec<Subscriber> = (0..3).map(|_| Subscriber::open(&name).unwrap()).collect();
    // A subscriber is not `Sync` (its cursor is a `Cell`), so its futures
    // are not `Send`: one current-thread runtime per subscriber thread.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|sub| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..M {
                        let s = sub.recv_async().await.unwrap();
                        assert_eq!(s.missed(), 0);
                        assert_eq!(u64::from_le_bytes((*s).try_into().unwrap()), i);
                    }
                });
            })
        })
        .collect();
    rt().block_on(async {
        for i in 0..M {
            let mut loan = publisher.loan_async(8).await.unwrap();
            loan.copy_from_slice(&i.to_le_bytes());
            loan.publish();
        }
    });
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn publisher_death_reaches_an_async_subscriber() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "publisher");
        let mut p = Publisher::open(&name).unwrap();
        p.send(b"last").unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let name = unique("aio-psd");
    let _c = Cleanup(name.clone());
    let seg = PubSubOptions::new(4, 8, 2).create(&name).unwrap();
    let sub = Subscriber::open(&name).unwrap();
    let mut kid = spawn(
        "publisher_death_reaches_an_async_subscriber",
        "publisher",
        &name,
        0,
    );
    rt().block_on(async {
        let s = tokio::time::timeout(Duration::from_secs(30), sub.recv_async())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*s, b"last");
        drop(s);
        kid.kill().unwrap();
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), sub.recv_async()).await;
        assert_eq!(r.expect("no hang").unwrap_err(), RecvError::SenderDied);
        assert!(t0.elapsed() < Duration::from_secs(3));
    });
    drop(seg);
}

#[test]
fn subscriber_stream_ends_when_the_publisher_closes() {
    let name = unique("aio-pss");
    let _c = Cleanup(name.clone());
    let mut publisher = Publisher::create(&name, &PubSubOptions::new(4, 8, 2)).unwrap();
    let sub = Subscriber::open(&name).unwrap();
    let h = std::thread::spawn(move || {
        for i in 0..100u64 {
            publisher.send(&i.to_le_bytes()).unwrap();
            if i % 3 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let got: Vec<u64> = futures::executor::block_on(
        sub.stream()
            .map(|m| u64::from_le_bytes(m.unwrap().try_into().unwrap()))
            .collect(),
    );
    h.join().unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}
