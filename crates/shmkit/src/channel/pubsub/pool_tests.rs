//! Hostile and crashed-peer states of the pool, on real segments
//! (issue 14 smaller findings, issue 8 "pub/sub with hostile memory").

use std::time::{Duration, Instant};

use super::*;

fn unique() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "t-proofs-pool-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = crate::segment::remove(&self.0);
    }
}

/// The pool of `name`, through a handle of its own (no role).
fn with_pool<R>(name: &str, f: impl FnOnce(&Pool<'_>) -> R) -> R {
    let seg = Segment::open(name).unwrap();
    let l = check_segment(&seg, "test").unwrap();
    f(&pool_of(&seg, &l))
}

/// Issue 8: a subscriber bit at or above `max_subscribers` (pending or
/// held) in a slot's ownership word is damage no subscriber can ever
/// clear. The publisher must detect it and take the slot back, not
/// wait for it for ever. Before: `try_send` was `Full` for good.
#[test]
fn foreign_subscriber_bits_are_reaped() {
    for policy in [Policy::Block, Policy::DropOldest] {
        for bad in [1u64 << 2, 1 << 31, 1 << (HELD_SHIFT + 5), 1 << 63] {
            let name = unique();
            let _c = Cleanup(name.clone());
            let opts = PubSubOptions::new(1, 64, 2).policy(policy);
            let mut p = Publisher::create(&name, &opts).unwrap();
            with_pool(&name, |pool| {
                pool.meta[0].refs.store(bad, Ordering::Relaxed)
            });
            p.try_send(b"x")
                .unwrap_or_else(|e| panic!("{policy:?} refs {bad:#x}: {e}"));
            // And an `active` bit beyond the maximum addresses nobody.
            with_pool(&name, |pool| {
                pool.core.active.0.fetch_or(1 << 7, Ordering::Relaxed)
            });
            p.try_send(b"y").unwrap();
            with_pool(&name, |pool| {
                assert_eq!(pool.meta[0].refs.load(Ordering::Relaxed), 0, "{policy:?}");
            });
        }
    }
}

/// Issue 8: `Publisher::open` on slot state where every slot looks
/// like a held orphan (`seq >= tail`, a held bit) must finish in
/// bounded time. Before, `recover` spun 100,000 times per slot: about
/// three minutes at 65,536 slots. Foreign held bits are also freed.
#[test]
fn publisher_open_on_corrupt_slots_is_bounded() {
    let name = unique();
    let _c = Cleanup(name.clone());
    let slots = MAX_SLOTS as usize;
    drop(Publisher::create(&name, &PubSubOptions::new(slots as u64, 1, 2)).unwrap());
    with_pool(&name, |pool| {
        for (i, m) in pool.meta.iter().enumerate() {
            m.seq.store(u64::MAX / 4, Ordering::Relaxed);
            // Half with a held bit of a real (inactive) subscriber
            // number, half with a foreign one.
            let held = if i % 2 == 0 { 0 } else { 9 };
            m.refs.store(1 << (HELD_SHIFT + held), Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let p = Publisher::open(&name).unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "open took {took:?}");
    with_pool(&name, |pool| {
        for (i, m) in pool.meta.iter().enumerate() {
            let r = m.refs.load(Ordering::Relaxed);
            assert_eq!(r != 0, i % 2 == 0, "slot {i}: {r:#x}");
        }
    });
    drop(p);
}

/// `recover` never leaks an orphan that is held at the time it runs
/// (a lapped subscriber flipping it back): it leaves it, and the
/// publisher's next look (no free slot) frees it. Before, a holder
/// that stayed past 100,000 spins made it give up for good.
#[test]
fn held_orphan_is_freed_later() {
    let name = unique();
    let _c = Cleanup(name.clone());
    drop(Publisher::create(&name, &PubSubOptions::new(1, 8, 2)).unwrap());
    let held = 1u64 << HELD_SHIFT;
    with_pool(&name, |pool| {
        pool.meta[0].seq.store(0, Ordering::Relaxed);
        pool.meta[0].refs.store(held, Ordering::Relaxed);
        assert_eq!(pool.recover(0), 0);
        // The holder lets go (flips back to pending).
        pool.meta[0].refs.store(1, Ordering::Relaxed);
    });
    let mut p = Publisher::open(&name).unwrap();
    p.try_send(b"ok").unwrap();
    drop(p);
    // Held at the publisher's open, let go later: the wait path frees it.
    // (An orphan again: addressed at position `tail` = 1, never
    // made visible.)
    with_pool(&name, |pool| {
        pool.meta[0].seq.store(1, Ordering::Relaxed);
        pool.meta[0].refs.store(held, Ordering::Relaxed);
    });
    let mut p = Publisher::open(&name).unwrap();
    assert!(matches!(p.try_send(b"no"), Err(SendError::Full)));
    with_pool(&name, |pool| pool.meta[0].refs.store(1, Ordering::Relaxed));
    p.try_send(b"ok").unwrap();
}

const ROLE: &str = "SHMKIT_PROOFS_POOL_ROLE";

/// Issue 14: a subscriber SIGKILLed while asleep in `recv` left its
/// count in `sub_sleepers` for good, so every later publish paid a
/// futex wake. Reaping it takes the count back (and so does the next
/// joiner of its number, tested at the end).
#[test]
fn dead_sleeper_count_is_taken_back() {
    if let Ok(name) = std::env::var(ROLE) {
        let s = Subscriber::open(&name).unwrap();
        // Bounded: the parent kills us long before.
        let _ = s.recv_timeout(Duration::from_secs(60));
        return;
    }
    use std::os::unix::process::CommandExt;
    let name = unique();
    let _c = Cleanup(name.clone());
    let mut p = Publisher::create(&name, &PubSubOptions::new(2, 8, 2)).unwrap();
    for round in 0..2 {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "channel::pubsub::pool::tests::dead_sleeper_count_is_taken_back",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // SAFETY: `prctl` is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let asleep = |pool: &Pool<'_>| {
            (
                pool.core.sub_sleepers.0.load(Ordering::Relaxed),
                pool.subs[0].asleep.load(Ordering::Relaxed),
            )
        };
        let start = Instant::now();
        while with_pool(&name, asleep) != (1, 1) {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the subscriber never slept");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if round == 0 {
            assert_eq!(p.reap(), 1);
        } else {
            // The next subscriber to take number 0 repairs it too.
            let s = Subscriber::open(&name).unwrap();
            assert_eq!(s.index(), 0);
        }
        assert_eq!(with_pool(&name, asleep), (0, 0), "round {round}");
    }
    p.try_send(b"x").unwrap();
}
