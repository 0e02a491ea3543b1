//! Process facts: our pid, whether a pid is alive, who holds flock locks.

use std::collections::HashMap;

use rustix::io::Errno;
use rustix::process::{test_kill_process, Pid};

use super::shm::FileId;

/// This process's pid.
pub fn current_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
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
    fn our_pid_is_alive_and_a_huge_one_is_not() {
        assert!(pid_alive(current_pid()));
        assert!(!pid_alive(0x3fff_fff0));
        assert!(!pid_alive(0));
    }
}
