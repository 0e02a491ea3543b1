//! Async pub/sub: async subscribers and publisher, back-pressure through
//! `loan_async`, a publisher's death, the stream.
#![cfg(feature = "async")]

mod channel_common;

use std::future::Future;
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
    // The subscriber futures are `Send`: each reader is a task on the
    // multi-threaded runtime (moved from this thread to its workers).
    let rt = rt();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            rt.spawn(async move {
                for i in 0..M {
                    let s = sub.recv_async().await.unwrap();
                    assert_eq!(s.missed(), 0);
                    assert_eq!(u64::from_le_bytes((*s).try_into().unwrap()), i);
                }
            })
        })
        .collect();
    rt.block_on(async {
        for i in 0..M {
            let mut loan = publisher.loan_async(8).await.unwrap();
            loan.copy_from_slice(&i.to_le_bytes());
            loan.publish();
        }
        for r in readers {
            r.await.unwrap();
        }
    });
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
    let mut sub = Subscriber::open(&name).unwrap();
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
    let mut sub = Subscriber::open(&name).unwrap();
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

/// Every future, stream and sink of the async API is `Send` when its
/// endpoint is (a compile-time check: this test does not build
/// otherwise), so a task awaiting one can be `tokio::spawn`ed.
#[test]
fn every_future_is_send() {
    use shmkit::channel::pubsub::{Loan, LoanFuture, SampleStream, SubRecvFuture};
    use shmkit::channel::ring::{
        Receiver, RecvFuture, RecvStream, RecvWithFuture, SendFuture, SendSink, Sender,
    };
    use shmkit::channel::rpc::{Client, RpcError, Server};
    use shmkit::sync::{EventWait, LockFuture, NamedEvent, NamedMutex, NamedSemaphore, SemWait};

    fn send<T: Send>() {}
    // Endpoints.
    send::<Receiver>();
    send::<Sender>();
    send::<Publisher>();
    send::<Subscriber>();
    send::<Client>();
    send::<Server>();
    send::<NamedSemaphore>();
    send::<NamedEvent>();
    send::<NamedMutex<u64>>();
    // Futures, streams and sinks.
    send::<RecvFuture<'static>>();
    send::<RecvWithFuture<'static, fn(&[u8]) -> usize>>();
    send::<RecvStream<'static>>();
    send::<SendFuture<'static>>();
    send::<SendSink<'static>>();
    send::<SubRecvFuture<'static>>();
    send::<SampleStream<'static>>();
    send::<LoanFuture<'static>>();
    send::<Loan<'static>>();
    send::<SemWait<'static>>();
    send::<EventWait<'static>>();
    send::<LockFuture<'static, u64>>();
    // The rpc `async fn`s.
    fn call<'a>(
        c: &'a mut Client,
        req: &'a [u8],
    ) -> impl Future<Output = Result<Vec<u8>, RpcError>> + Send + 'a {
        c.call_async(req)
    }
    fn serve(s: &mut Server) -> impl Future<Output = Result<(), RpcError>> + Send + '_ {
        s.serve_async(<[u8]>::to_vec)
    }
    fn recv_with(
        s: &mut Server,
    ) -> impl Future<Output = Result<(shmkit::channel::rpc::Token, usize), RpcError>> + Send + '_
    {
        s.recv_with_async(<[u8]>::len)
    }
    let _ = (call, serve, recv_with);
}

/// A subscriber future that went pending on this thread (registered with
/// the waiter thread) is moved to another thread and completes there.
#[test]
fn pending_subscriber_future_moves_to_another_thread() {
    let name = unique("aio-psx");
    let _c = Cleanup(name.clone());
    let mut publisher = Publisher::create(&name, &PubSubOptions::new(4, 8, 2)).unwrap();
    let mut sub = Subscriber::open(&name).unwrap();
    sub.set_wait_strategy(shmkit::channel::WaitStrategy::Sleep);
    let moved = std::thread::scope(|scope| {
        let mut fut = Box::pin(sub.recv_async());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let h = scope.spawn(move || {
            let s = futures::executor::block_on(fut).unwrap();
            (std::thread::current().id(), s.to_vec())
        });
        std::thread::sleep(Duration::from_millis(20));
        publisher.send(b"moved").unwrap();
        h.join().unwrap()
    });
    assert_ne!(moved.0, std::thread::current().id());
    assert_eq!(moved.1, b"moved");
}

/// `select!` of `recv_async` against a short timer, many times, with a
/// blocking publisher (`Block`: nothing is dropped): every message arrives
/// exactly once and in order, whichever branch wins.
#[test]
fn subscriber_cancellation_loses_and_duplicates_nothing() {
    const M: u64 = 10_000;
    let name = unique("aio-pscancel");
    let _c = Cleanup(name.clone());
    let opts = PubSubOptions::new(8, 8, 2).policy(Policy::Block);
    let mut publisher = Publisher::create(&name, &opts).unwrap();
    let mut sub = Subscriber::open(&name).unwrap();
    let h = std::thread::spawn(move || {
        for i in 0..M {
            publisher.send(&i.to_le_bytes()).unwrap();
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        publisher
    });
    let cancelled = rt().block_on(async {
        let (mut next, mut cancelled) = (0u64, 0u64);
        while next < M {
            tokio::select! {
                s = sub.recv_async() => {
                    let s = s.unwrap();
                    assert_eq!(u64::from_le_bytes((*s).try_into().unwrap()), next);
                    next += 1;
                }
                _ = tokio::time::sleep(Duration::from_micros(50)) => cancelled += 1,
            }
        }
        cancelled
    });
    let _publisher = h.join().unwrap();
    assert!(sub.try_recv().is_err(), "a message was duplicated");
    assert!(cancelled > 0, "the timer never won: nothing was tested");
}

/// A subscriber killed while it holds the only two slots (`Block`): the
/// publisher waiting in `loan_async` gets the slots back (the dead
/// subscriber is reaped at its slice) instead of waiting for ever.
#[test]
fn subscriber_death_reaches_an_async_publisher() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "subscriber");
        let _sub = Subscriber::open(&name).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let name = unique("aio-psdeath");
    let _c = Cleanup(name.clone());
    let opts = PubSubOptions::new(2, 8, 2).policy(Policy::Block);
    let mut publisher = Publisher::create(&name, &opts).unwrap();
    let mut kid = spawn(
        "subscriber_death_reaches_an_async_publisher",
        "subscriber",
        &name,
        0,
    );
    let t0 = Instant::now();
    while publisher.subscribers() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never joined");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Both slots now wait for the (live, idle) subscriber.
    publisher.send(b"one").unwrap();
    publisher.send(b"two").unwrap();
    rt().block_on(async {
        let r = tokio::time::timeout(Duration::from_millis(300), publisher.loan_async(8)).await;
        assert!(r.is_err(), "a slot was free while the subscriber lived");
        kid.kill().unwrap();
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), publisher.loan_async(8)).await;
        let loan = r.expect("no hang").unwrap();
        loan.publish();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
}

/// `loan_async` on a full pool (`Block`) cancelled by a timer 1,000
/// times: no slot is taken by a dropped future, so once the subscriber
/// releases the two slots, both can be loaned.
#[test]
fn cancelled_loans_leak_no_slot() {
    let name = unique("aio-psloan");
    let _c = Cleanup(name.clone());
    let opts = PubSubOptions::new(2, 8, 2).policy(Policy::Block);
    let mut publisher = Publisher::create(&name, &opts).unwrap();
    let sub = Subscriber::open(&name).unwrap();
    publisher.send(b"one").unwrap();
    publisher.send(b"two").unwrap();
    let rt = rt();
    rt.block_on(async {
        for _ in 0..1000 {
            tokio::select! {
                _ = publisher.loan_async(8) => panic!("a slot was free"),
                _ = tokio::time::sleep(Duration::from_micros(20)) => {}
            }
        }
    });
    assert_eq!(&*sub.try_recv().unwrap(), b"one");
    assert_eq!(&*sub.try_recv().unwrap(), b"two");
    rt.block_on(async {
        for m in [b"three", b"four!"] {
            let mut l =
                tokio::time::timeout(Duration::from_secs(10), publisher.loan_async(m.len()))
                    .await
                    .expect("a slot leaked")
                    .unwrap();
            l.copy_from_slice(m);
            l.publish();
        }
    });
    assert_eq!(&*sub.try_recv().unwrap(), b"three");
    assert_eq!(&*sub.try_recv().unwrap(), b"four!");
}
