//! Per-message 8-byte streaming through the shmkit ring between two pinned
//! threads, against a bare stamped-slot ring (the harness's floor protocol)
//! in the same run. No payload pattern, no checksum, no harness plumbing:
//! what is left is the ring's own per-message cost and its cache-line
//! traffic. Best, second best and median of `reps` alternating runs
//! (the best is what a quiet machine gives; the median shows the load):
//!
//! ```text
//! cargo run --release -p shmkit-bench --example threads -- 12
//! ```
//!
//! Both ring endpoints use `WaitStrategy::BusyPoll` and the blocking
//! `send_with` / `recv_with` with a deadline, as the harness's
//! `shmkit-ring-spin` contender does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{Wait, WaitStrategy};
use shmkit::segment::{self, Lifetime};

const N: u64 = 300_000;
const CAP: u64 = 256;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; plain syscall with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Spins until `ready`, with a `pause` per poll (the harness's
/// `spin_until`).
fn spin_until(mut ready: impl FnMut() -> bool) {
    while !ready() {
        std::hint::spin_loop();
    }
}

/// One 64-byte slot of the floor: stamp, payload, padding.
#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    stamp: AtomicU64,
    payload: AtomicU64,
}

/// The floor: stamp `pos` = free for message `pos`, `pos + 1` = holds it,
/// the consumer frees it with `pos + CAP`.
fn floor() -> f64 {
    let slots: Vec<Slot> = (0..CAP)
        .map(|k| {
            let s = Slot::default();
            s.stamp.store(k, Ordering::Relaxed);
            s
        })
        .collect();
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin(1);
            start.wait();
            for pos in 0..N {
                let s = &slots[(pos % CAP) as usize];
                // Acquire: pairs with the producer's Release stamp store.
                spin_until(|| s.stamp.load(Ordering::Acquire) == pos + 1);
                assert_eq!(s.payload.load(Ordering::Relaxed), pos);
                // Release: our read is done before the slot is reused.
                s.stamp.store(pos + CAP, Ordering::Release);
            }
        });
        pin(0);
        start.wait();
        let t = Instant::now();
        for pos in 0..N {
            let s = &slots[(pos % CAP) as usize];
            // Acquire: pairs with the consumer's Release that freed it.
            spin_until(|| s.stamp.load(Ordering::Acquire) == pos);
            s.payload.store(pos, Ordering::Relaxed);
            // Release: publishes the payload.
            s.stamp.store(pos + 1, Ordering::Release);
        }
        N as f64 / t.elapsed().as_secs_f64()
    })
}

/// The shmkit ring, 256 slots of 8 bytes.
fn ring(name: &str) -> f64 {
    let opts = RingOptions::new(CAP, 8).lifetime(Lifetime::UntilLastDetach);
    let mut tx = Sender::create(name, &opts).expect("create ring");
    let mut rx = Receiver::open(name).expect("open ring");
    tx.set_wait_strategy(WaitStrategy::BusyPoll);
    rx.set_wait_strategy(WaitStrategy::BusyPoll);
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin(1);
            start.wait();
            for i in 0..N {
                let v = rx
                    .recv_with(Wait::Until(deadline), |b| {
                        u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
                    })
                    .expect("recv");
                assert_eq!(v, i);
            }
        });
        pin(0);
        start.wait();
        let t = Instant::now();
        for i in 0..N {
            tx.send_with(8, Wait::Until(deadline), |b| {
                b.copy_from_slice(&i.to_le_bytes())
            })
            .expect("send");
        }
        N as f64 / t.elapsed().as_secs_f64()
    })
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| b.total_cmp(a));
    format!(
        "best {:.1}, 2nd {:.1}, median {:.1} M msg/s",
        v[0] / 1e6,
        v[1.min(v.len() - 1)] / 1e6,
        v[v.len() / 2] / 1e6
    )
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
        .max(1);
    let name = format!("threads-{}", std::process::id());
    let (mut f, mut r) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        f.push(floor());
        r.push(ring(&name));
        let _ = segment::remove(&name);
    }
    let ratio = r.iter().cloned().fold(0.0, f64::max) / f.iter().cloned().fold(0.0, f64::max);
    println!("floor: {}", summary(f));
    println!("ring:  {}", summary(r));
    println!("ring / floor (best): {ratio:.2}");
}
