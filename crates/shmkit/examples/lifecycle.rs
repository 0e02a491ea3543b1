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

use std::ffi::CString;

use shmkit::segment::{self, Lifetime, Segment};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("remove", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let size = 4096u64;
    for i in 0..n {
        let name = format!("lifecycle-{}-{i}", std::process::id());
        match what {
            "remove" | "uld" => {
                let lifetime = if what == "uld" {
                    Lifetime::UntilLastDetach
                } else {
                    Lifetime::Persistent
                };
                let a = Segment::builder(&name)
                    .size(size)
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
            "bare" => bare(&name, size as usize),
            other => {
                eprintln!("unknown variant {other:?}: remove, uld, bare");
                std::process::exit(2);
            }
        }
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
