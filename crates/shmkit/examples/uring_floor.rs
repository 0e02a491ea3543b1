//! The floor of the tokio fast path, without shmkit: two processes
//! ping-pong through two futex words in a shared page, either blocking
//! (`FUTEX_WAIT`/`FUTEX_WAKE`) or from tokio current-thread runtimes that
//! wait through io_uring `FUTEX_WAIT` on a ring registered in tokio's
//! reactor (no sleeper count, no table, no tick: the bare mechanism).
//! Prints µs per round trip and the ratio, alternating the two.
//!
//! ```text
//! cargo run --release -p shmkit --features tokio --example uring_floor
//! taskset -c 0 cargo run --release -p shmkit --features tokio --example uring_floor
//! ```

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Instant;

use io_uring::{opcode, IoUring};

const ROUND_TRIPS: u32 = 20_000;

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, aligned u32 in a shared mapping; FUTEX_WAIT
    // (no timeout) and FUTEX_WAKE take no other pointer.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            0usize,
            0usize,
            0u32,
        )
    };
}

fn blocking(mine: &AtomicU32, theirs: &AtomicU32, first: bool) {
    for i in 1..=ROUND_TRIPS {
        if first {
            mine.store(i, SeqCst);
            futex(mine, libc::FUTEX_WAKE, 1);
        }
        while theirs.load(SeqCst) != i {
            futex(theirs, libc::FUTEX_WAIT, i - 1);
        }
        if !first {
            mine.store(i, SeqCst);
            futex(mine, libc::FUTEX_WAKE, 1);
        }
    }
}

struct RingFd(i32);
impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

async fn with_uring(mine: &AtomicU32, theirs: &AtomicU32, first: bool) {
    let mut ring = IoUring::new(8).unwrap();
    // SAFETY: the descriptor belongs to `ring`, which outlives `fd`.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(RingFd(ring.as_raw_fd())) }.unwrap();
    for i in 1..=ROUND_TRIPS {
        if first {
            mine.store(i, SeqCst);
            futex(mine, libc::FUTEX_WAKE, 1);
        }
        while theirs.load(SeqCst) != i {
            let wait =
                opcode::FutexWait::new(theirs.as_ptr(), u64::from(i - 1), 0xffff_ffff, 2).build();
            // SAFETY: the word stays mapped until the wait completes (we
            // await its completion below).
            unsafe { ring.submission().push(&wait).unwrap() };
            ring.submit().unwrap();
            while ring.completion().next().is_none() {
                fd.readable().await.unwrap().clear_ready();
            }
        }
        if !first {
            mine.store(i, SeqCst);
            futex(mine, libc::FUTEX_WAKE, 1);
        }
    }
}

/// µs per round trip of `mode` between this process and a forked child.
fn run(uring: bool) -> f64 {
    // SAFETY: a fresh anonymous shared page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    // SAFETY: two aligned u32s inside the page, zeroed by mmap, on
    // separate cache lines.
    let (a, b) = unsafe {
        (
            &*(page as *const AtomicU32),
            &*(page.cast::<AtomicU32>().add(16)),
        )
    };
    let side = |mine: &AtomicU32, theirs: &AtomicU32, first: bool| {
        if uring {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(with_uring(mine, theirs, first));
        } else {
            blocking(mine, theirs, first);
        }
    };
    // SAFETY: the child only runs `side` (its own runtime, if any) and
    // exits with `_exit`; this process is single-threaded here.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        side(b, a, false);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let t0 = Instant::now();
    side(a, b, true);
    let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS);
    // SAFETY: reaps our child; the page is no longer used by anyone.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::munmap(page, 4096);
    }
    us
}

fn main() {
    println!(
        "µs per round trip ({ROUND_TRIPS} each), blocking futex vs tokio + io_uring FUTEX_WAIT"
    );
    for _ in 0..3 {
        let b = run(false);
        let u = run(true);
        println!(
            "blocking {b:7.2}   tokio+io_uring {u:7.2}   ratio {:.2}x",
            u / b
        );
    }
}
