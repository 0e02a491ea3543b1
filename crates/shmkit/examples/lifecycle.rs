//! One segment life cycle (create, attach a second handle, detach both,
//! delete), `N` times, for counting system calls per cycle:
//!
//! ```text
//! cargo build --release -p shmkit --example lifecycle
//! strace -f -c target/release/examples/lifecycle remove 1000
//! ```
//!
//! Variants: `remove` (persistent, then `segment::remove`), `uld`
//! (until-last-detach: the last detach deletes), `bare` (`shm_open`,
//! `posix_fallocate`, `mmap` twice, `munmap`, `close`, `shm_unlink`: what
//! the `segment` criterion bench compares against).
//!
//! `compare [ROUNDS]` times the three against each other on a loaded
//! machine: rounds of 200 cycles of each variant, interleaved (so load
//! changes hit all three alike), each round timed both in wall-clock time
//! and in the thread's CPU time (user + system: what the cycle costs,
//! without the time other processes held the CPU). Prints the median
//! time per cycle over the rounds and its ratio to `bare`:
//!
//! ```text
//! target/release/examples/lifecycle compare 30
//! ```

use std::ffi::CString;
use std::time::Instant;

use shmkit::segment::{self, Lifetime, Segment};

const SIZE: u64 = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("remove", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    if what == "compare" {
        return compare(n);
    }
    if !["remove", "uld", "bare"].contains(&what) {
        eprintln!("unknown variant {what:?}: remove, uld, bare, compare");
        std::process::exit(2);
    }
    for i in 0..n {
        cycle(what, i);
    }
}

fn cycle(what: &str, i: u64) {
    let name = format!("lifecycle-{}-{i}", std::process::id());
    match what {
        "remove" | "uld" => {
            let lifetime = if what == "uld" {
                Lifetime::UntilLastDetach
            } else {
                Lifetime::Persistent
            };
            let a = Segment::builder(&name)
                .size(SIZE)
                .lifetime(lifetime)
                .create()
                .expect("create");
            let b = Segment::open(&name).expect("attach");
            std::hint::black_box((a.as_ptr(), b.as_ptr()));
            drop(b);
            drop(a);
            if what == "remove" {
                segment::remove(&name).expect("remove");
            }
        }
        _ => bare(&name, SIZE as usize),
    }
}

/// This thread's CPU time (user + system) in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn compare(rounds: u64) {
    const PER_ROUND: u64 = 200;
    let variants = ["bare", "remove", "uld"];
    // [variant] -> per-round ns per cycle: (wall, cpu)
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut i = 0;
    // Warm-up round, not recorded.
    for v in variants {
        for _ in 0..PER_ROUND {
            cycle(v, i);
            i += 1;
        }
    }
    for r in 0..rounds {
        for k in 0..variants.len() {
            // Rotate the order so no variant always runs first.
            let v = (k + r as usize) % variants.len();
            let (w0, c0) = (Instant::now(), thread_cpu_ns());
            for _ in 0..PER_ROUND {
                cycle(variants[v], i);
                i += 1;
            }
            let c = (thread_cpu_ns() - c0) as f64 / PER_ROUND as f64;
            let w = w0.elapsed().as_nanos() as f64 / PER_ROUND as f64;
            wall[v].push(w);
            cpu[v].push(c);
        }
    }
    let median = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{rounds} rounds x {PER_ROUND} cycles, 4 KiB, median ns per cycle (ratio to bare)");
    println!("| variant | wall | ratio | thread CPU | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let (bw, bc) = (median(&wall[0]), median(&cpu[0]));
    for (k, v) in variants.iter().enumerate() {
        let (w, c) = (median(&wall[k]), median(&cpu[k]));
        println!("| {v} | {w:.0} | {:.2} | {c:.0} | {:.2} |", w / bw, c / bc);
    }
}

fn bare(name: &str, size: usize) {
    let c = CString::new(format!("/shmkit.{name}")).expect("no NUL");
    // SAFETY: plain libc calls on a descriptor and mappings this function
    // owns; every result is checked before use.
    unsafe {
        let map = |fd| {
            let p = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            p
        };
        let fd = libc::shm_open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        );
        assert!(fd >= 0);
        assert_eq!(libc::posix_fallocate(fd, 0, size as libc::off_t), 0);
        let a = map(fd);
        let fd2 = libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0);
        assert!(fd2 >= 0);
        let b = map(fd2);
        std::hint::black_box((a, b));
        libc::munmap(b, size);
        libc::close(fd2);
        libc::munmap(a, size);
        libc::close(fd);
        assert_eq!(libc::shm_unlink(c.as_ptr()), 0);
    }
}
