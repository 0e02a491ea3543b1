//! Model for the packing decision of docs/channel.md: does putting several
//! small records in one cache line speed up an SPSC stream of 8-byte
//! messages?
//!
//! Two threads pinned to CPUs 0 and 1 stream `N` messages through a ring of
//! 1024 records of 64, 32 or 16 bytes (`[stamp u64][payload u64]`, padded),
//! the way shmkit's ring does it: the producer stamps each record with
//! `pos + 1`; the consumer polls the stamp, reads the payload and stores
//! `head` (on its own line) per message; the producer re-reads `head` only
//! when its cached copy says full. With `fence`, both sides also run the
//! sleeper protocol's `notify` (a SeqCst fence and a load of a sleeper
//! count) per message; `fence-producer` / `fence-consumer`: one side only.
//! Rounds alternate the record sizes; the best rate of each is printed.
//!
//! ```text
//! cargo run --release -p shmkit-bench --example packing -- [fence|fence-producer|fence-consumer] [messages]
//! ```

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Instant;

const CAP: usize = 1024;
const SIZES: [usize; 3] = [64, 32, 16];

/// A word on its own 128-byte line.
#[repr(C, align(128))]
struct Line(AtomicU64);

/// The shared state of one run.
struct Ring {
    records: Vec<Line>,
    rec: usize,
    head: Line,
    sleepers: Line,
}

impl Ring {
    fn new(rec: usize) -> Ring {
        let lines = CAP * rec / 128;
        let records = (0..lines).map(|_| Line(AtomicU64::new(0))).collect();
        Ring {
            records,
            rec,
            head: Line(AtomicU64::new(0)),
            sleepers: Line(AtomicU64::new(0)),
        }
    }

    /// The stamp and payload words of the record of `pos`.
    fn words(&self, pos: u64) -> (&AtomicU64, &AtomicU64) {
        let off = (pos as usize % CAP) * self.rec;
        let base = self.records.as_ptr().cast::<u8>();
        // SAFETY: `off + 16 <= CAP * rec` bytes, all inside `records`
        // (`CAP * rec / 128` lines of 128 bytes); both words are 8-aligned
        // (records are multiples of 16 bytes) and only accessed atomically.
        unsafe {
            (
                AtomicU64::from_ptr(base.add(off).cast::<u64>().cast_mut()),
                AtomicU64::from_ptr(base.add(off + 8).cast::<u64>().cast_mut()),
            )
        }
    }
}

fn notify(ring: &Ring, on: bool) {
    if on {
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence, as in shmkit's `wait::notify`.
        assert_eq!(ring.sleepers.0.load(Ordering::Relaxed), 0);
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; plain syscall with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Which sides run `notify` per message: (producer, consumer).
type Fences = (bool, bool);

/// Messages per second through a ring of `rec`-byte records.
fn run(rec: usize, n: u64, fences: Fences) -> f64 {
    let ring = &Ring::new(rec);
    std::thread::scope(|scope| run_in(scope, ring, n, fences))
}

fn run_in<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    ring: &'s Ring,
    n: u64,
    (pf, cf): Fences,
) -> f64 {
    let consumer = scope.spawn(move || {
        pin(1);
        let mut sum = 0u64;
        for i in 0..n {
            let (stamp, payload) = ring.words(i);
            // Acquire: pairs with the producer's Release store of the stamp.
            while stamp.load(Ordering::Acquire) != i + 1 {
                std::hint::spin_loop();
            }
            // Relaxed: ordered by the Acquire above.
            sum = sum.wrapping_add(payload.load(Ordering::Relaxed));
            // Release: our read happens before the producer reuses the slot.
            ring.head.0.store(i + 1, Ordering::Release);
            notify(ring, cf);
        }
        sum
    });
    pin(0);
    let t0 = Instant::now();
    let mut head_cache = 0u64;
    for i in 0..n {
        while i - head_cache >= CAP as u64 {
            // Acquire: pairs with the consumer's Release store of `head`.
            head_cache = ring.head.0.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        let (stamp, payload) = ring.words(i);
        // Relaxed: published by the Release store of the stamp.
        payload.store(i, Ordering::Relaxed);
        // Release: the payload is visible to whoever sees the stamp.
        stamp.store(i + 1, Ordering::Release);
        notify(ring, pf);
    }
    let sum = consumer.join().expect("consumer thread");
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(sum, (0..n).fold(0u64, u64::wrapping_add), "messages lost");
    rate
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |w: &str| args.iter().any(|a| a == w);
    let fences = (
        has("fence") || has("fence-producer"),
        has("fence") || has("fence-consumer"),
    );
    let n: u64 = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let mut best = [0f64; SIZES.len()];
    for _ in 0..5 {
        for (b, &rec) in best.iter_mut().zip(&SIZES) {
            let r = run(rec, n, fences);
            *b = b.max(r);
            print!("{rec} B: {:.1} M/s  ", r / 1e6);
        }
        println!();
    }
    println!(
        "best (fence per message: producer {}, consumer {}): 64 B records {:.1} M/s; \
         32 B {:.1} M/s ({:.2}x); 16 B {:.1} M/s ({:.2}x)",
        fences.0,
        fences.1,
        best[0] / 1e6,
        best[1] / 1e6,
        best[1] / best[0],
        best[2] / 1e6,
        best[2] / best[0]
    );
}
