//! Process facts: our pid, whether a pid is alive, who holds flock locks.

use std::collections::HashMap;

use rustix::io::Errno;
use rustix::process::{test_kill_process, Pid};

use super::shm::FileId;

/// This process's pid.
pub fn current_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// This process's pid, from a per-process cache: no system call after the
/// first. For informational records (the creator pid in a segment
/// header) and for `futex::peek` (where a wrong pid reads the parent or is
/// refused, see there), never for liveness or ownership decisions: a child made by a
/// raw `clone`/`vfork` system call that bypasses libc's `fork` (so skips
/// the `pthread_atfork` handler that resets the cache) would see its
/// parent's pid here.
pub fn cached_pid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Once;
    static PID: AtomicU32 = AtomicU32::new(0);
    static REGISTER: Once = Once::new();
    extern "C" fn forget_in_child() {
        // Relaxed: the child is single-threaded when this runs.
        PID.store(0, Ordering::Relaxed);
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only stores to an atomic
        // (async-signal-safe, no allocation); no prepare/parent handler.
        // A failure (ENOMEM) leaves no handler: then never cache.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
        if rc != 0 {
            PID.store(u32::MAX, Ordering::Relaxed);
        }
    });
    // Relaxed: the value is the same for every thread of this process;
    // a stale 0 only costs a getpid.
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = current_pid();
            // Relaxed: see above. compare_exchange so the "no handler"
            // marker (u32::MAX) is never overwritten.
            let _ = PID.compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed);
            pid
        }
        u32::MAX => current_pid(),
        pid => pid,
    }
}

/// This thread's id (the value the kernel's robust-futex ABI stores).
pub fn current_tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Whether a process with this pid exists (zombies count as alive until
/// reaped; `EPERM` means it exists but belongs to someone else).
pub fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(pid) {
        Ok(()) => true,
        Err(Errno::PERM) => true,
        Err(_) => false,
    }
}

/// Parses `/proc/locks` into: file → pids holding a `FLOCK` on it, one
/// entry per lock (a process attached twice appears twice).
pub fn flock_holders() -> HashMap<FileId, Vec<u32>> {
    // `/proc/locks` is a seq_file read one page at a time, each page from
    // a fresh walk of the kernel's lock list by index: a lock taken or
    // dropped between two pages can make an unrelated entry be skipped (seen
    // as an attached process missing under load). A list that reads the same
    // twice in a row was stable meanwhile; under constant churn, give up
    // after a few tries and return the last reading.
    let read = || {
        let mut m = parse_proc_locks(&std::fs::read_to_string("/proc/locks").unwrap_or_default());
        m.values_mut().for_each(|pids| pids.sort_unstable());
        m
    };
    let mut last = read();
    for _ in 0..4 {
        let next = read();
        if next == last {
            break;
        }
        last = next;
    }
    last
}

/// Parser behind [`flock_holders`], separate so it can be tested.
///
/// Lines look like `12: FLOCK  ADVISORY  READ  4242 00:1a:123456 0 EOF`;
/// blocked waiters (`12: -> FLOCK ...`) are not holders and are skipped.
pub fn parse_proc_locks(text: &str) -> HashMap<FileId, Vec<u32>> {
    let mut out: HashMap<FileId, Vec<u32>> = HashMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let _ordinal = it.next();
        let Some(class) = it.next() else { continue };
        if class != "FLOCK" {
            continue;
        }
        let (Some(_adv), Some(_rw), Some(pid), Some(dev)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i64>() else {
            continue;
        };
        let mut parts = dev.split(':');
        let (Some(maj), Some(min), Some(ino)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(ino)) = (
            u32::from_str_radix(maj, 16),
            u32::from_str_radix(min, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        let id = FileId {
            dev: rustix::fs::makedev(maj, min),
            ino,
        };
        out.entry(id).or_default().push(pid.max(0) as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_holders_and_skips_waiters() {
        let text = "1: FLOCK  ADVISORY  READ  4242 00:1a:123456 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 00:1a:123456 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 7 00:1a:123456 0 EOF\n\
                    3: FLOCK  ADVISORY  READ  4243 00:1a:123456 0 EOF\n";
        let m = parse_proc_locks(text);
        let id = FileId {
            dev: rustix::fs::makedev(0, 0x1a),
            ino: 123456,
        };
        assert_eq!(m.get(&id), Some(&vec![4242, 4243]));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn cached_pid_is_ours_and_reset_in_a_forked_child() {
        assert_eq!(cached_pid(), current_pid());
        assert_eq!(cached_pid(), current_pid());
        // SAFETY: the child only calls getpid (through cached_pid, which
        // is an atomic load, a getpid and an atomic store) and _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = cached_pid() == current_pid() && cached_pid() != 0;
            // SAFETY: ends the forked child without running Rust cleanup.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child saw its parent's pid"
        );
    }

    #[test]
    fn our_pid_is_alive_and_a_huge_one_is_not() {
        assert!(pid_alive(current_pid()));
        assert!(!pid_alive(0x3fff_fff0));
        assert!(!pid_alive(0));
    }
}
