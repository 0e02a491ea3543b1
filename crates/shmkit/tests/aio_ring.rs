//! Async ring endpoints: cross-process (async/blocking, async/async),
//! peer death, cancellation, many endpoints, idle CPU, Stream/Sink, and
//! an executor other than tokio.
#![cfg(feature = "async")]

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use futures::{SinkExt, StreamExt};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{RecvError, SendError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const N: u64 = 20_000;

/// Child roles shared by the cross-process tests.
fn child(role: &str, name: &str, arg: u64) {
    match role {
        "blocking-producer" => {
            let mut tx = Sender::open(name).unwrap();
            for i in 0..arg {
                tx.send(&i.to_le_bytes()).unwrap();
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        "async-producer" => rt().block_on(async {
            let mut tx = Sender::open(name).unwrap();
            for i in 0..arg {
                tx.send_async(&i.to_le_bytes()).await.unwrap();
            }
        }),
        "idle-producer" => {
            let _tx = Sender::open(name).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        r => panic!("unknown role {r}"),
    }
}

async fn receive_all(rx: &mut Receiver, n: u64) {
    for i in 0..n {
        let m = rx.recv_async().await.unwrap();
        assert_eq!(u64::from_le_bytes(m.try_into().unwrap()), i);
    }
    // The producer exits after its last message: a close (its Drop) or,
    // if it was killed, a death.
    let end = rx.recv_async().await.unwrap_err();
    assert!(
        matches!(end, RecvError::Disconnected | RecvError::SenderDied),
        "{end:?}"
    );
}

#[test]
fn async_receiver_blocking_sender_across_processes() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("aio-ab");
    let _c = Cleanup(name.clone());
    // Small ring: the producer fills it and sleeps too.
    let mut rx = Receiver::create(&name, &RingOptions::new(8, 8)).unwrap();
    let mut kid = spawn(
        "async_receiver_blocking_sender_across_processes",
        "blocking-producer",
        &name,
        N,
    );
    rt().block_on(receive_all(&mut rx, N));
    assert!(wait_child(&mut kid, 60).success());
}

#[test]
fn async_receiver_async_sender_across_processes() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("aio-aa");
    let _c = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(8, 8)).unwrap();
    let mut kid = spawn(
        "async_receiver_async_sender_across_processes",
        "async-producer",
        &name,
        N,
    );
    rt().block_on(async {
        // Slow down now and then so that the sender waits on a full ring.
        for i in 0..N {
            let m = rx.recv_async().await.unwrap();
            assert_eq!(u64::from_le_bytes(m.try_into().unwrap()), i);
            if i % 2000 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let end = rx.recv_async().await.unwrap_err();
        assert!(matches!(
            end,
            RecvError::Disconnected | RecvError::SenderDied
        ));
    });
    assert!(wait_child(&mut kid, 60).success());
}

#[test]
fn sender_death_reaches_an_async_receiver() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("aio-death");
    let _c = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(8, 8)).unwrap();
    let mut kid = spawn(
        "sender_death_reaches_an_async_receiver",
        "idle-producer",
        &name,
        0,
    );
    // Wait for the child to hold the producer role.
    let t0 = Instant::now();
    while rx.peer() != shmkit::channel::PeerState::Alive {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "child never attached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = rt().block_on(async {
        let pending = rx.recv_async();
        let killer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            kid.kill().unwrap();
            Instant::now()
        };
        let (r, killed_at) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), pending),
            killer
        );
        (r, killed_at.elapsed())
    });
    let (r, after) = r;
    assert_eq!(r.expect("no hang").unwrap_err(), RecvError::SenderDied);
    // Noticed within slices (20 ms), with generous slack for a loaded box.
    assert!(after < Duration::from_secs(3), "took {after:?}");
}

#[test]
fn receiver_close_reaches_an_async_sender() {
    let name = unique("aio-close");
    let _c = Cleanup(name.clone());
    let mut tx = Sender::create(&name, &RingOptions::new(1, 8)).unwrap();
    let rx = Receiver::open(&name).unwrap();
    tx.try_send(b"x").unwrap();
    rt().block_on(async {
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(rx);
        });
        let r = tokio::time::timeout(Duration::from_secs(10), tx.send_async(b"y")).await;
        assert_eq!(r.expect("no hang"), Err(SendError::Disconnected));
        h.join().unwrap();
    });
}

/// `select!` against a short timer, many times: each message arrives
/// exactly once and in order, whichever branch wins.
#[test]
fn cancellation_loses_and_duplicates_nothing() {
    const M: u64 = 10_000;
    let name = unique("aio-cancel");
    let _c = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(4, 8)).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    let sender = std::thread::spawn(move || {
        let mut rng = Rng::from_time();
        for i in 0..M {
            tx.send(&i.to_le_bytes()).unwrap();
            if rng.next() % 4 == 0 {
                std::thread::sleep(Duration::from_micros(rng.next() % 200));
            }
        }
    });
    let (got, cancelled, selects) = rt().block_on(async {
        let mut next = 0u64;
        let (mut cancelled, mut selects) = (0u64, 0u64);
        while next < M || selects < 10_000 {
            selects += 1;
            tokio::select! {
                r = rx.recv_async() => {
                    let v = u64::from_le_bytes(r.unwrap().try_into().unwrap());
                    assert_eq!(v, next, "lost or duplicated message");
                    next += 1;
                }
                _ = tokio::time::sleep(Duration::from_micros(50)) => cancelled += 1,
            }
            if next == M {
                break;
            }
        }
        (next, cancelled, selects)
    });
    sender.join().unwrap();
    assert_eq!(got, M);
    assert!(rx.try_recv().is_err(), "a message was duplicated");
    assert!(selects >= 10_000, "only {selects} selects");
    assert!(
        cancelled > 0,
        "the timer never won: the test tested nothing"
    );
    eprintln!("{selects} selects, {cancelled} cancelled receives");
}

/// 200 rings, one pending receive each (200 words: two waiter threads,
/// or 200 io_uring waits), then every one of them woken by its own
/// message.
#[test]
fn two_hundred_pending_receives() {
    let names: Vec<String> = (0..200).map(|_| unique("aio-many")).collect();
    let _c: Vec<Cleanup> = names.iter().map(|n| Cleanup(n.clone())).collect();
    let mut pairs: Vec<(Sender, Receiver)> = names
        .iter()
        .map(|n| {
            let tx = Sender::create(n, &RingOptions::new(2, 8)).unwrap();
            (tx, Receiver::open(n).unwrap())
        })
        .collect();
    let rt = rt();
    let (txs, rxs): (Vec<Sender>, Vec<Receiver>) = pairs.drain(..).unzip();
    let tasks: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, mut rx)| {
            rt.spawn(async move {
                let m = rx.recv_async().await.unwrap();
                assert_eq!(m, (i as u64).to_le_bytes());
                rx
            })
        })
        .collect();
    // Let every task register.
    let t0 = Instant::now();
    while pending_waits() < 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:?}",
            shmkit::aio::stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if !uses_uring() {
        assert!(shmkit::aio::stats().0 >= 2, "200 words need two threads");
    }
    for (i, mut tx) in txs.into_iter().enumerate() {
        tx.send(&(i as u64).to_le_bytes()).unwrap();
        drop(tx);
    }
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a receive was never woken")
                .unwrap();
        }
    });
}

fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ")".
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A process whose only work is a pending receive uses ~0 CPU. Measured in
/// a child process of its own, so that the other tests of this binary
/// (running in parallel threads) do not count.
#[test]
fn idle_awaiting_receiver_uses_no_cpu() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "idle-receiver");
        let mut rx = Receiver::open(&name).unwrap();
        let rt = rt();
        let task = rt.spawn(async move { rx.recv_async().await.map(|m| m.len()) });
        std::thread::sleep(Duration::from_millis(200));
        let (t0, c0) = (Instant::now(), cpu_ticks());
        std::thread::sleep(Duration::from_secs(1));
        let (dt, dc) = (t0.elapsed(), cpu_ticks() - c0);
        // Clock ticks are 1/100 s: 5 ticks = 5 % of one core, against 100
        // for a busy-polling waiter. (Expect 0 or 1: 20 ms liveness slices.)
        eprintln!("idle receive: {dc} ticks of CPU in {dt:?}");
        assert!(dc <= 5, "{dc} ticks in {dt:?}");
        assert!(!task.is_finished());
        return;
    }
    let name = unique("aio-idle");
    let _c = Cleanup(name.clone());
    let _tx = Sender::create(&name, &RingOptions::new(2, 8)).unwrap();
    let mut kid = spawn(
        "idle_awaiting_receiver_uses_no_cpu",
        "idle-receiver",
        &name,
        0,
    );
    assert!(wait_child(&mut kid, 60).success());
}

#[test]
fn stream_and_sink() {
    let name = unique("aio-stream");
    let _c = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(4, 16)).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    rt().block_on(async move {
        let producer = tokio::spawn(async move {
            let mut sink = tx.sink();
            for i in 0..1000u32 {
                sink.send(i.to_le_bytes().to_vec()).await.unwrap();
            }
            drop(sink);
            drop(tx); // close: the stream ends
        });
        let got: Vec<u32> = rx
            .stream()
            .map(|m| u32::from_le_bytes(m.unwrap().try_into().unwrap()))
            .collect()
            .await;
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        producer.await.unwrap();
    });
}

/// Not tied to tokio: `futures::executor` drives the same futures.
#[test]
fn works_with_futures_executor() {
    let name = unique("aio-exec");
    let _c = Cleanup(name.clone());
    let mut rx = Receiver::create(&name, &RingOptions::new(2, 8)).unwrap();
    let mut tx = Sender::open(&name).unwrap();
    let h = std::thread::spawn(move || {
        for i in 0..100u64 {
            futures::executor::block_on(tx.send_async(&i.to_le_bytes())).unwrap();
        }
    });
    for i in 0..100u64 {
        let m = futures::executor::block_on(rx.recv_async()).unwrap();
        assert_eq!(m, i.to_le_bytes());
    }
    h.join().unwrap();
}

/// The fallback for kernels without `futex_waitv` (forced with
/// `SHMKIT_AIO_FALLBACK=1` in a child process): slower, still correct.
#[test]
fn fallback_without_futex_waitv() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "fallback");
        let mut rx = Receiver::create(&name, &RingOptions::new(2, 8)).unwrap();
        let mut tx = Sender::open(&name).unwrap();
        let rt = rt();
        let h = rt.spawn(async move {
            for i in 0..2000u64 {
                tx.send_async(&i.to_le_bytes()).await.unwrap();
            }
        });
        rt.block_on(async {
            for i in 0..2000u64 {
                assert_eq!(rx.recv_async().await.unwrap(), i.to_le_bytes());
            }
            h.await.unwrap();
        });
        assert!(shmkit::aio::is_fallback(), "the fallback was not used");
        return;
    }
    let name = unique("aio-fb");
    let _c = Cleanup(name.clone());
    let mut cmd = child_command("fallback_without_futex_waitv", "fallback", &name);
    cmd.env("SHMKIT_AIO_FALLBACK", "1")
        // Inside tokio the io_uring path (feature `tokio`) would serve first.
        .env("SHMKIT_AIO_URING", "0");
    let mut kid = Kid(cmd.spawn().unwrap());
    assert!(wait_child(&mut kid, 60).success());
}
