//! Segment life cycle: create → attach → detach → delete of a 4 KiB and a
//! 64 MiB segment, next to the bare syscall sequence that does the same
//! work without shmkit (`shm_open(O_CREAT|O_EXCL)` + `posix_fallocate` +
//! `mmap`, a second `shm_open` + `mmap` for the attach, `munmap` ×2,
//! `shm_unlink`), measured in the same run. Goal: shmkit ≤ 1.5× the bare
//! sequence.
//!
//! shmkit reserves a new segment's memory (`fallocate`), so the baseline
//! `bare` does too (`posix_fallocate` instead of `ftruncate`): same work.
//! `bare_sparse` (`ftruncate`, memory taken at first touch) and
//! `shmkit_sparse` (`.sparse(true)`) show what the reservation costs.
//!
//! ```text
//! cargo bench -p shmkit --bench segment
//! ```
//!
//! Criterion prints the absolute times; the ratio is shmkit's time divided
//! by `bare`'s in the same group. shmkit variants:
//! - `shmkit_remove`: persistent segment, `Segment::open` as the attach,
//!   both handles dropped, then `segment::remove`;
//! - `shmkit_until_last_detach`: lifetime `UntilLastDetach`, deleted by the
//!   last detach (no explicit remove).
//!
//! Names are unique per iteration and live under shmkit's prefix
//! (`/dev/shm/shmkit.bench-seg-*`), so a leak would show in `shmkit ls`
//! and in CI's leftover check.

use std::ffi::CString;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shmkit::segment::{self, Lifetime, Segment};

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a counter; only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("bench-seg-{tag}-{}-{n}", std::process::id())
}

/// The bare POSIX sequence; panics on any failure (a benchmark, not a
/// library).
fn bare_cycle(size: usize, reserve: bool) {
    let name = CString::new(format!("/shmkit.{}", unique("bare"))).expect("no NUL");
    let map = |fd: libc::c_int| {
        // SAFETY: plain mmap of a shm fd of at least `size` bytes; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        p
    };
    // SAFETY: `name` is a valid NUL-terminated string; plain syscalls whose
    // results are checked; each mapping is unmapped exactly once with the
    // size it was mapped with.
    unsafe {
        let fd = libc::shm_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        );
        assert!(fd >= 0, "shm_open create");
        if reserve {
            let r = libc::posix_fallocate(fd, 0, size as libc::off_t);
            assert_eq!(r, 0, "posix_fallocate");
        } else {
            assert_eq!(libc::ftruncate(fd, size as libc::off_t), 0, "ftruncate");
        }
        let a = map(fd);
        let fd2 = libc::shm_open(name.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0);
        assert!(fd2 >= 0, "shm_open attach");
        let b = map(fd2);
        black_box((a, b));
        assert_eq!(libc::munmap(b, size), 0);
        libc::close(fd2);
        assert_eq!(libc::munmap(a, size), 0);
        libc::close(fd);
        assert_eq!(libc::shm_unlink(name.as_ptr()), 0, "shm_unlink");
    }
}

fn shmkit_remove_cycle(size: usize, sparse: bool) {
    let name = unique("rm");
    let created = Segment::builder(&name)
        .size(size as u64)
        .sparse(sparse)
        .create()
        .expect("create");
    let attached = Segment::open(&name).expect("attach");
    black_box((created.as_ptr(), attached.as_ptr()));
    drop(attached);
    drop(created);
    segment::remove(&name).expect("remove");
}

fn shmkit_until_last_detach_cycle(size: usize) {
    let name = unique("uld");
    let created = Segment::builder(&name)
        .size(size as u64)
        .lifetime(Lifetime::UntilLastDetach)
        .create()
        .expect("create");
    let attached = Segment::open(&name).expect("attach");
    black_box((created.as_ptr(), attached.as_ptr()));
    drop(attached);
    drop(created);
}

fn lifecycle(c: &mut Criterion) {
    for (label, size) in [("4KiB", 4usize << 10), ("64MiB", 64usize << 20)] {
        let mut g = c.benchmark_group(format!("segment_lifecycle/{label}"));
        g.sample_size(40)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
            b.iter(|| bare_cycle(size, true))
        });
        g.bench_function(BenchmarkId::from_parameter("shmkit_remove"), |b| {
            b.iter(|| shmkit_remove_cycle(size, false))
        });
        g.bench_function(
            BenchmarkId::from_parameter("shmkit_until_last_detach"),
            |b| b.iter(|| shmkit_until_last_detach_cycle(size)),
        );
        g.bench_function(BenchmarkId::from_parameter("bare_sparse"), |b| {
            b.iter(|| bare_cycle(size, false))
        });
        g.bench_function(BenchmarkId::from_parameter("shmkit_sparse"), |b| {
            b.iter(|| shmkit_remove_cycle(size, true))
        });
        g.finish();
    }
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
