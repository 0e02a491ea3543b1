//! 16 MiB frames through a shmkit ring between two processes, on whatever
//! `/dev/shm` this process sees. `benchmarks/hugepages.sh` runs it in a
//! private mount namespace over a `huge=never` tmpfs and over a
//! `huge=always` tmpfs, alternating, and prints the ratios:
//!
//! ```text
//! benchmarks/hugepages.sh [ROUNDS]      # needs root (unshare -m, mount)
//! ```
//!
//! One run: create a ring of 4 slots × 16 MiB (the reservation is timed:
//! `create`), send 4 frames before any receiver exists (every slot touched
//! for the first time: `first_pass`, the sender's page faults and the
//! kernel's zeroing included), then start a receiver process and send
//! `FRAMES` more. The receiver copies each frame out and times the frames
//! after the first 4 (its own first touches): `steady`, GB/s delivered
//! with both mappings warm. Prints one line of
//! `key=value` pairs, including how much of the shared memory the kernel
//! mapped with huge pages (`ShmemPmdMapped`, from `/proc/meminfo`, so it
//! is the whole machine's: read it as "did huge pages happen at all").
//!
//! ```text
//! cargo build --release -p shmkit --example hugepages
//! target/release/examples/hugepages [FRAMES]
//! ```

use std::process::{Command, Stdio};
use std::time::Instant;

use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::Wait;

const FRAME: usize = 16 << 20;
const SLOTS: u64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--recv") {
        let frames: u64 = args[3].parse().expect("frame count");
        return receive(&args[2], frames);
    }
    let frames: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let name = format!("bench-hugepages-{}", std::process::id());

    let t = Instant::now();
    let mut tx = Sender::create(&name, &RingOptions::new(SLOTS, FRAME as u64)).expect("create");
    let create = t.elapsed();

    let frame = vec![0xa5u8; FRAME];
    let t = Instant::now();
    for _ in 0..SLOTS {
        tx.send(&frame).expect("send");
    }
    let first_pass = t.elapsed();
    let pmd_kb = meminfo_kb("ShmemPmdMapped:");

    let total = SLOTS + frames;
    let mut child = Peer(
        Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--recv", &name, &total.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn receiver"),
    );
    for _ in 0..frames {
        tx.send(&frame).expect("send");
    }
    let mut steady = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut steady)
        .expect("receiver output");
    let status = child.0.wait().expect("wait receiver");
    assert!(status.success(), "receiver failed: {status}");
    drop(tx);
    let _ = shmkit::segment::remove(&name);

    println!(
        "create_ms={:.3} first_pass_ms={:.3} {} frames={frames} shmem_pmd_mapped_kb={pmd_kb}",
        create.as_secs_f64() * 1e3,
        first_pass.as_secs_f64() * 1e3,
        steady.trim(),
    );
}

/// The receiving process: copies every frame out (as a consumer that
/// keeps it would) and checks one byte, so the copy is not optimised away.
fn receive(name: &str, frames: u64) {
    let mut rx = Receiver::open(name).expect("open receiver");
    let mut buf = vec![0u8; FRAME];
    let mut recv = || {
        rx.recv_with(Wait::Forever, |m| buf.copy_from_slice(m))
            .expect("recv");
        assert_eq!(buf[FRAME - 1], 0xa5);
    };
    for _ in 0..SLOTS {
        recv();
    }
    let t = Instant::now();
    for _ in SLOTS..frames {
        recv();
    }
    let gbps = ((frames - SLOTS) * FRAME as u64) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("steady_gbps={gbps:.3}");
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The receiver process, killed and reaped on drop if it is still
/// running (the sender panicked), so no process is left behind.
struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
