//! The tokio fast path (feature `tokio`): pending futures inside a tokio
//! runtime wait through io_uring `FUTEX_WAIT` on their runtime's ring; a
//! future whose runtime goes away moves on; a runtime without its IO
//! driver, and `aio::set_uring(false)`, use the waiter thread. The
//! cross-process, death, cancellation and many-waiter tests of
//! `aio_ring`, `aio_sync`, `aio_pubsub` and `rpc` run on this path too
//! when built with `--features tokio` (as `./test.sh` does).
#![cfg(feature = "tokio")]

mod channel_common;

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::ring::{Receiver, RingOptions, Sender};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pair(name: &str) -> (Sender, Receiver) {
    let tx = Sender::create(name, &RingOptions::new(4, 8)).unwrap();
    (tx, Receiver::open(name).unwrap())
}

/// Sends `v` from another thread after `after`.
fn send_later(mut tx: Sender, v: u64, after: Duration) -> std::thread::JoinHandle<Sender> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        tx.send(&v.to_le_bytes()).unwrap();
        tx
    })
}

/// A pending receive is one io_uring wait in the kernel (and no waiter
/// thread exists in this process); the message completes it.
#[test]
fn tokio_futures_wait_through_io_uring() {
    assert!(shmkit::aio::uses_uring(), "io_uring FUTEX_WAIT unavailable");
    let name = unique("aio-uring");
    let _c = Cleanup(name.clone());
    let (tx, mut rx) = pair(&name);
    let rt = current_thread();
    let h = send_later(tx, 42, Duration::from_millis(100));
    let probe = std::thread::spawn(|| {
        let t0 = Instant::now();
        while uring_waits().1 == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no wait in the kernel"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let m = rt.block_on(async { rx.recv_async().await.unwrap() });
    assert_eq!(m, 42u64.to_le_bytes());
    probe.join().unwrap();
    let tx = h.join().unwrap();
    // A task spawned on a multi-threaded runtime (on a worker) too.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rings = shmkit::aio::uring_stats().0;
    let h = send_later(tx, 43, Duration::from_millis(50));
    let (m, _rx) = mt.block_on(async {
        tokio::spawn(async move { (rx.recv_async().await.unwrap(), rx) })
            .await
            .unwrap()
    });
    assert_eq!(m, 43u64.to_le_bytes());
    h.join().unwrap();
    assert!(
        shmkit::aio::uring_stats().0 > rings,
        "no ring for the multi-threaded runtime"
    );
    assert_eq!(shmkit::aio::stats().0, 0, "a waiter thread was started");
}

/// A future polled (pending) on one runtime, which then shuts down, and
/// polled again on another, completes there, sleeping: it registers on
/// the new ring (a future left on the dead one would be polled over and
/// over until the message came).
#[test]
fn a_pending_future_moves_off_a_dead_runtime() {
    let name = unique("aio-move");
    let _c = Cleanup(name.clone());
    let (tx, mut rx) = pair(&name);
    let mut fut = Box::pin(rx.recv_async());
    let rt1 = current_thread();
    rt1.block_on(std::future::poll_fn(|cx| {
        assert!(fut.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    }));
    drop(rt1);
    let h = send_later(tx, 7, Duration::from_millis(100));
    let rt2 = current_thread();
    let mut polls = 0u32;
    let counted = std::future::poll_fn(|cx| {
        polls += 1;
        fut.as_mut().poll(cx)
    });
    let m = rt2.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), counted)
            .await
            .expect("never woken on the second runtime")
            .unwrap()
    });
    assert_eq!(m, 7u64.to_le_bytes());
    // First poll, the wake, and a liveness tick or so per 20 ms.
    assert!(polls <= 20, "{polls} polls in 100 ms: the future spun");
    h.join().unwrap();
}

/// In a child process: a runtime without its IO driver (where tokio's
/// registration panics) uses the waiter thread without printing that
/// panic; so does the `block_on` thread of a multi-threaded runtime (not
/// one of its workers), and any runtime after `aio::set_uring(false)`.
#[test]
fn no_io_driver_and_switched_off_use_the_waiter_thread() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "no-io");
        let (tx, mut rx) = pair(&name);
        let no_io = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let h = send_later(tx, 1, Duration::from_millis(50));
        let m = no_io.block_on(async { rx.recv_async().await.unwrap() });
        assert_eq!(m, 1u64.to_le_bytes());
        let tx = h.join().unwrap();
        assert!(
            shmkit::aio::stats().0 >= 1,
            "no waiter thread: {:?}",
            shmkit::aio::stats()
        );
        assert_eq!(
            shmkit::aio::uring_stats().0,
            0,
            "a ring for a runtime without IO"
        );
        // The `block_on` body of a multi-threaded runtime (as
        // `#[tokio::main]` runs it): not a worker, the waiter thread.
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let passes = shmkit::aio::stats().2;
        let h = send_later(tx, 3, Duration::from_millis(50));
        let m = mt.block_on(async { rx.recv_async().await.unwrap() });
        assert_eq!(m, 3u64.to_le_bytes());
        let tx = h.join().unwrap();
        assert!(
            shmkit::aio::stats().2 > passes,
            "the waiter thread did not wait"
        );
        assert_eq!(
            shmkit::aio::uring_stats().0,
            0,
            "a ring for a block_on thread"
        );
        // Switched off: a full runtime uses the waiter thread too.
        shmkit::aio::set_uring(false);
        assert!(!shmkit::aio::uses_uring());
        let passes = shmkit::aio::stats().2;
        let h = send_later(tx, 2, Duration::from_millis(50));
        let m = current_thread().block_on(async { rx.recv_async().await.unwrap() });
        assert_eq!(m, 2u64.to_le_bytes());
        assert!(
            shmkit::aio::stats().2 > passes,
            "the waiter thread did not wait"
        );
        assert_eq!(
            shmkit::aio::uring_stats().0,
            0,
            "a ring although switched off"
        );
        h.join().unwrap();
        return;
    }
    let name = unique("aio-noio");
    let _c = Cleanup(name.clone());
    let mut cmd = child_command(
        "no_io_driver_and_switched_off_use_the_waiter_thread",
        "no-io",
        &name,
    );
    cmd.stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {err}");
    assert!(!err.contains("panicked"), "a panic was reported: {err}");
}
