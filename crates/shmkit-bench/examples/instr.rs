//! Instruction counts per message on the hot paths, for callgrind (whose
//! counts are repeatable where timings on a shared machine are not).
//!
//! One thread alternates a send and a receive of an 8-byte message, `N`
//! times, through: the shmkit ring (`ring`), the ring in batches of 32
//! (`ring-batch`), pub/sub (`pubsub`), and a bare stamped-slot ring of
//! whole cache lines (`floor`, the harness's floor). Run each at two
//! counts and divide the difference by the difference of counts, which
//! cancels the set-up:
//!
//! ```text
//! cargo build --release -p shmkit-bench --example instr
//! for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/instr ring $n 2>&1 | grep 'refs'
//! done
//! ```
//!
//! (`benchmarks/instr.sh` does this for every variant.) Cache-line
//! transfers between cores are not counted: this measures the work, not
//! the coherence traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use shmkit::channel::pubsub::{PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::Wait;
use shmkit::segment::{self, Lifetime, Segment};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("ring", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let name = format!("instr-{}", std::process::id());
    let sum = match what {
        "ring" => ring(&name, n),
        "ring-batch" => ring_batch(&name, n),
        "pubsub" => pubsub(&name, n),
        "floor" => floor(&name, n),
        other => {
            eprintln!("unknown variant {other:?}: ring, ring-batch, pubsub, floor");
            std::process::exit(2);
        }
    };
    let _ = segment::remove(&name);
    assert_eq!(sum, (0..n).sum::<u64>(), "{what}: messages lost or torn");
    println!("{what}: {n} messages ok");
}

fn ring(name: &str, n: u64) -> u64 {
    let opts = RingOptions::new(256, 8).lifetime(Lifetime::UntilLastDetach);
    let mut tx = Sender::create(name, &opts).expect("create ring");
    let mut rx = Receiver::open(name).expect("open ring");
    let mut sum = 0u64;
    for i in 0..n {
        tx.send_with(8, Wait::No, |b| b.copy_from_slice(&i.to_le_bytes()))
            .expect("send");
        sum += rx
            .recv_with(Wait::No, |b| {
                u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
            })
            .expect("recv");
    }
    sum
}

fn ring_batch(name: &str, n: u64) -> u64 {
    let opts = RingOptions::new(256, 8).lifetime(Lifetime::UntilLastDetach);
    let mut tx = Sender::create(name, &opts).expect("create ring");
    let mut rx = Receiver::open(name).expect("open ring");
    let mut sum = 0u64;
    let mut i = 0;
    let mut batch = [[0u8; 8]; 32];
    while i < n {
        let k = (n - i).min(32) as usize;
        for (j, m) in batch[..k].iter_mut().enumerate() {
            *m = (i + j as u64).to_le_bytes();
        }
        let sent = tx.send_batch(&batch[..k], Wait::No).expect("send");
        rx.recv_batch(sent, Wait::No, |b| {
            sum += u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        })
        .expect("recv");
        i += sent as u64;
    }
    sum
}

fn pubsub(name: &str, n: u64) -> u64 {
    let opts = PubSubOptions::new(256, 8, 1).lifetime(Lifetime::UntilLastDetach);
    let mut publisher = Publisher::create(name, &opts).expect("create pubsub");
    let sub = Subscriber::open(name).expect("open subscriber");
    let mut sum = 0u64;
    for i in 0..n {
        let mut loan = publisher.try_loan(8).expect("loan");
        loan.copy_from_slice(&i.to_le_bytes());
        loan.publish();
        let s = sub.try_recv().expect("recv");
        sum += u64::from_le_bytes((&s[..]).try_into().unwrap_or([0; 8]));
    }
    sum
}

/// The harness's floor: 64-byte slots, a stamp word each; the stamp is
/// `pos + 1` when message `pos` is published and `pos + cap` once read.
fn floor(name: &str, n: u64) -> u64 {
    const CAP: u64 = 256;
    let seg = Segment::builder(name)
        .size(CAP * 64)
        .lifetime(Lifetime::UntilLastDetach)
        .init(|data| {
            for k in 0..CAP as usize {
                data[k * 64..k * 64 + 8].copy_from_slice(&(k as u64).to_ne_bytes());
            }
            Ok(())
        })
        .create()
        .expect("create floor");
    let base = seg.as_ptr();
    let slot = |pos: u64| {
        // SAFETY: `pos % CAP < CAP`, and the segment holds CAP slots of 64
        // bytes; the data area is page aligned, so the stamp is aligned.
        unsafe { base.add(((pos % CAP) * 64) as usize) }
    };
    let stamp = |p: *mut u8| {
        // SAFETY: an aligned u64 at the start of a slot, only ever accessed
        // atomically while the segment is mapped.
        unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }
    };
    let mut sum = 0u64;
    for i in 0..n {
        let s = slot(i);
        assert_eq!(stamp(s).load(Ordering::Acquire), i, "slot not free");
        // SAFETY: the 8 payload bytes after the stamp are inside the slot.
        unsafe { s.add(8).cast::<u64>().write(i) };
        stamp(s).store(i + 1, Ordering::Release);
        assert_eq!(stamp(s).load(Ordering::Acquire), i + 1, "not published");
        // SAFETY: as for the write.
        sum += unsafe { s.add(8).cast::<u64>().read() };
        stamp(s).store(i + CAP, Ordering::Release);
    }
    sum
}
