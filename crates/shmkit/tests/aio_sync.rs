//! Async waits on semaphores, events and mutexes: many waiters on many
//! objects, cancellation, mixing with blocking waiters, owner death.
#![cfg(feature = "async")]

mod channel_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::sync::{EventMode, LockError, NamedEvent, NamedMutex, NamedSemaphore};

fn event_sleepers(e: &NamedEvent) -> u32 {
    match shmkit::sync::describe(e.segment()).unwrap() {
        shmkit::sync::State::Event { sleepers, .. } => sleepers,
        s => panic!("{s:?}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 1,000 concurrent awaits on 200 semaphores (five per word, 200 words:
/// two waiter threads; or 1,000 io_uring waits), all released by posts
/// from a blocking thread.
#[test]
fn thousand_awaits_on_two_hundred_semaphores() {
    let names: Vec<String> = (0..200).map(|_| unique("aio-sem")).collect();
    let _c: Vec<Cleanup> = names.iter().map(|n| Cleanup(n.clone())).collect();
    let sems: Vec<Arc<NamedSemaphore>> = names
        .iter()
        .map(|n| Arc::new(NamedSemaphore::create(n, 0).unwrap()))
        .collect();
    let rt = rt();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let s = sems[i % 200].clone();
            let done = done.clone();
            rt.spawn(async move {
                s.wait_async().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    while sems.iter().map(|s| s.sleepers().unwrap()).sum::<u32>() < 1000 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "waiters never slept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if uses_uring() {
        let (regs, waits) = uring_waits();
        assert!(
            regs >= 1000 && waits >= 1000,
            "{regs} registrations, {waits} waits"
        );
    } else {
        let (threads, words, _) = shmkit::aio::stats();
        assert!(
            threads >= 2 && words >= 200,
            "{threads} threads, {words} words"
        );
    }
    assert_eq!(done.load(Ordering::Relaxed), 0);
    let poster = {
        let sems = sems.clone();
        std::thread::spawn(move || {
            for s in &sems {
                for _ in 0..5 {
                    s.post().unwrap();
                }
            }
        })
    };
    poster.join().unwrap();
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("an await was never woken")
                .unwrap();
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 1000);
    for s in &sems {
        assert_eq!(s.value().unwrap(), 0);
        assert_eq!(
            s.sleepers().unwrap(),
            0,
            "a cancelled/finished waiter stayed counted"
        );
    }
}

/// `select!` against a timer 10,000 times: every unit posted is taken
/// exactly once, none is left behind or taken twice.
#[test]
fn semaphore_cancellation_takes_each_unit_once() {
    const M: u64 = 5_000;
    let name = unique("aio-semc");
    let _c = Cleanup(name.clone());
    let sem = Arc::new(NamedSemaphore::create(&name, 0).unwrap());
    let poster = {
        let sem = sem.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::from_time();
            for _ in 0..M {
                sem.post().unwrap();
                if rng.next() % 2 == 0 {
                    std::thread::sleep(Duration::from_micros(rng.next() % 300));
                }
            }
        })
    };
    let (taken, cancelled, selects) = rt().block_on(async {
        let (mut taken, mut cancelled, mut selects) = (0u64, 0u64, 0u64);
        while taken < M || selects < 10_000 {
            selects += 1;
            tokio::select! {
                r = sem.wait_async() => { r.unwrap(); taken += 1; }
                _ = tokio::time::sleep(Duration::from_micros(50)) => cancelled += 1,
            }
        }
        (taken, cancelled, selects)
    });
    poster.join().unwrap();
    assert_eq!(taken, M);
    assert_eq!(sem.value().unwrap(), 0);
    assert_eq!(sem.sleepers().unwrap(), 0);
    assert!(cancelled > 0, "the timer never won");
    eprintln!("{selects} selects, {cancelled} cancelled waits");
}

/// Async and blocking waiters on one semaphore: a post wakes one of
/// either kind, cancelled async waiters pass their wake on.
#[test]
fn semaphore_mixed_async_and_blocking_waiters() {
    let name = unique("aio-semm");
    let _c = Cleanup(name.clone());
    let sem = Arc::new(NamedSemaphore::create(&name, 0).unwrap());
    let got = Arc::new(AtomicU64::new(0));
    let blocking: Vec<_> = (0..2)
        .map(|_| {
            let (sem, got) = (sem.clone(), got.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    sem.wait().unwrap();
                    got.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let rt = rt();
    let asyncs: Vec<_> = (0..4)
        .map(|_| {
            let (sem, got) = (sem.clone(), got.clone());
            rt.spawn(async move {
                for _ in 0..250 {
                    sem.wait_async().await.unwrap();
                    got.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for _ in 0..2000 {
        sem.post().unwrap();
    }
    for b in blocking {
        b.join().unwrap();
    }
    rt.block_on(async {
        for t in asyncs {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
        }
    });
    assert_eq!(got.load(Ordering::Relaxed), 2000);
}

#[test]
fn event_auto_and_manual() {
    let auto = unique("aio-eva");
    let manual = unique("aio-evm");
    let _c = (Cleanup(auto.clone()), Cleanup(manual.clone()));
    let ea = Arc::new(NamedEvent::create(&auto, EventMode::AutoReset).unwrap());
    let em = Arc::new(NamedEvent::create(&manual, EventMode::ManualReset).unwrap());
    let rt = rt();
    // Manual: a pulse (set then reset at once) releases every waiter.
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let em = em.clone();
            rt.spawn(async move { em.wait_async().await.unwrap() })
        })
        .collect();
    let t0 = Instant::now();
    while event_sleepers(&em) < 10 {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    em.set().unwrap();
    em.reset().unwrap();
    rt.block_on(async {
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .unwrap()
                .unwrap();
        }
    });
    // Auto: each set releases exactly one of three waiters.
    let released = Arc::new(AtomicU64::new(0));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (ea, released) = (ea.clone(), released.clone());
            rt.spawn(async move {
                ea.wait_async().await.unwrap();
                released.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for n in 1..=3 {
        let t0 = Instant::now();
        while event_sleepers(&ea) < 4 - n {
            assert!(t0.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(2));
        }
        ea.set().unwrap();
        let t0 = Instant::now();
        while released.load(Ordering::SeqCst) < n as u64 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "set {n} released nobody"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            released.load(Ordering::SeqCst),
            n as u64,
            "one set released two"
        );
    }
    rt.block_on(async {
        for w in waiters {
            w.await.unwrap();
        }
    });
}

/// Async lockers (tokio tasks) and blocking lockers (threads) increment
/// one counter under the mutex: no increment is lost.
#[test]
fn mutex_async_and_blocking_lockers_exclude_each_other() {
    let name = unique("aio-mtx");
    let _c = Cleanup(name.clone());
    let m = Arc::new(NamedMutex::<u64>::create(&name, 0).unwrap());
    let rt = rt();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            rt.spawn(async move {
                for _ in 0..2000 {
                    {
                        let mut g = m.lock_async().await.unwrap();
                        let v = *g;
                        std::hint::black_box(());
                        *g = v + 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let mut g = m.lock().unwrap();
                    *g += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap();
        }
    });
    assert_eq!(*m.lock().unwrap(), 12_000);
}

/// A process killed holding the mutex: the async locker gets the lock
/// with `OwnerDied`, not a hang.
#[test]
fn mutex_owner_death_reaches_an_async_locker() {
    if let Some((role, name, _)) = child_role() {
        assert_eq!(role, "holder");
        let m = NamedMutex::<u64>::open(&name).unwrap();
        let mut g = m.lock().unwrap();
        *g = 7;
        std::mem::forget(g);
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let name = unique("aio-mtxd");
    let _c = Cleanup(name.clone());
    let m = NamedMutex::<u64>::create(&name, 0).unwrap();
    let mut kid = spawn(
        "mutex_owner_death_reaches_an_async_locker",
        "holder",
        &name,
        0,
    );
    let t0 = Instant::now();
    while *m
        .lock_timeout(Duration::ZERO)
        .map(|g| *g)
        .as_ref()
        .unwrap_or(&0)
        == 0
    {
        // Until the child holds it (our try fails, or sees 7 after).
        if matches!(m.try_lock(), Err(LockError::WouldBlock)) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "child never locked");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let locker = async {
            match tokio::time::timeout(Duration::from_secs(10), m.lock_async()).await {
                Ok(Err(LockError::OwnerDied(mut g))) => {
                    assert_eq!(*g, 7);
                    g.mark_consistent();
                    true
                }
                Ok(Ok(_)) => panic!("lock without OwnerDied"),
                Ok(Err(e)) => panic!("{e:?}"),
                Err(_) => false,
            }
        };
        let killer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            kid.kill().unwrap();
        };
        let (ok, ()) = tokio::join!(locker, killer);
        assert!(ok, "the async locker hung after the owner died");
    });
}
