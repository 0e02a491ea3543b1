//! Races of the life cycle: the last detacher's exclusive upgrade against
//! openers, `remove_when_unused` and the collectors (`gc`, `list`), and
//! peers killed with SIGKILL at random points of their open/detach loop.
//! Threads stand in for processes where that is enough: `flock` locks
//! belong to open file descriptions, and every handle opens its own.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{role, spawn_peer, wait_for, Name};
use shmkit::segment::{self, Error, Lifetime, Segment};

/// Holds `flock(LOCK_EX)` on the segment's file, as a last detacher, `gc`
/// or `ls` does for a moment, until dropped.
struct ExclusiveHolder {
    /// Held for its lock; closing it releases the lock.
    _file: std::fs::File,
}

impl ExclusiveHolder {
    fn take(name: &Name) -> ExclusiveHolder {
        let f = std::fs::File::open(name.path()).expect("open the segment file");
        // A collector's probe (another test's `gc`) may hold it for a
        // moment: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return ExclusiveHolder { _file: f };
            }
            assert!(
                Instant::now() < deadline,
                "nobody else may be attached here"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A marker whose lock attempt meets a transient exclusive holder (which
/// may have read the flags before the mark was stored, and is leaving)
/// must not leave the deletion to it: it waits the holder out and
/// deletes the segment itself.
#[test]
fn remove_when_unused_waits_out_a_transient_exclusive_holder() {
    let name = Name::new("race-xholder");
    Segment::create(&name, 4096).unwrap().detach().unwrap();
    let holder = ExclusiveHolder::take(&name);
    let marker = {
        let n = name.0.clone();
        std::thread::spawn(move || segment::remove_when_unused(&n))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !marker.is_finished(),
        "the marker gave up while an exclusive holder was there"
    );
    drop(holder);
    // `true` unless a collector (another helper's `gc` in a shared
    // /dev/shm) deleted the marked segment first.
    let r = marker.join().unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(!name.exists());
}

/// An exclusive lock held for longer than 2 s (forged: see the trust
/// model) makes the marker report `Busy`; the mark stays, and once the
/// holder is gone the next collector deletes the segment.
#[test]
fn remove_when_unused_reports_busy_against_a_lasting_exclusive_holder() {
    let _serial = common::collectors();
    let name = Name::new("race-xforged");
    Segment::create(&name, 4096).unwrap().detach().unwrap();
    let holder = ExclusiveHolder::take(&name);
    let t0 = Instant::now();
    assert!(matches!(
        segment::remove_when_unused(&name),
        Err(Error::Busy { .. })
    ));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    drop(holder);
    assert!(
        segment::stat(&name).is_err(),
        "stat collects the due segment"
    );
    assert!(!name.exists());
}

/// Marked while several handles are attached, then every handle leaves
/// at the same moment, racing the marker and collectors: whatever the
/// interleaving, the segment is gone once all have finished, and only
/// one party deleted it.
#[test]
fn a_marked_segment_goes_with_its_last_user_whatever_the_interleaving() {
    let _serial = common::collectors();
    const ROUNDS: usize = 2000;
    const HANDLES: usize = 3;
    for round in 0..ROUNDS {
        let name = Name::new("race-mark");
        let lifetime = if round % 2 == 0 {
            Lifetime::Persistent
        } else {
            Lifetime::UntilLastDetach
        };
        let first = Segment::builder(&name)
            .size(4096)
            .lifetime(lifetime)
            .create()
            .unwrap();
        let mut handles = vec![first];
        for _ in 1..HANDLES {
            handles.push(Segment::open(&name).unwrap());
        }
        let go = Arc::new(Barrier::new(HANDLES + 2));
        let deleted = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (k, seg) in handles.into_iter().enumerate() {
            let (go, deleted) = (go.clone(), deleted.clone());
            // Leave at spread moments (0-40 µs after the start), so that
            // the marker's store and lock attempt fall anywhere in the
            // detaches, the last one's exclusive hold included.
            let delay = Duration::from_nanos(((round * 7919 + k * 104_729) % 40_000) as u64);
            threads.push(std::thread::spawn(move || {
                go.wait();
                let t0 = Instant::now();
                while t0.elapsed() < delay {
                    std::hint::spin_loop();
                }
                if seg.detach().unwrap() {
                    deleted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let collector = {
            let go = go.clone();
            let n = name.0.clone();
            std::thread::spawn(move || {
                go.wait();
                // A `gc` or a `stat` (both probe with an exclusive lock).
                for k in 0..3 {
                    if (round + k) % 2 == 0 {
                        let _ = segment::gc(false);
                    } else {
                        let _ = segment::stat(&n);
                    }
                }
            })
        };
        go.wait();
        let marked = segment::remove_when_unused(&name);
        for t in threads {
            t.join().unwrap();
        }
        collector.join().unwrap();
        match marked {
            Ok(true) => {
                deleted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            // Deleted under our feet: by a last detacher (until-last-detach)
            // or a collector, before the marker opened it.
            Err(Error::NotFound { .. }) => {}
            Err(Error::MarkedForRemoval { .. }) => unreachable!(),
            Err(e) => panic!("round {round}: {e}"),
        }
        assert!(
            !name.exists(),
            "round {round} ({lifetime:?}): the marked segment outlived all its users"
        );
        assert!(deleted.load(Ordering::Relaxed) <= 1, "round {round}");
    }
}

/// Openers of a persistent segment racing each other's last detach (which
/// holds an exclusive lock for a moment): every open succeeds, after a
/// back-off if it met that lock, and the segment survives them all.
#[test]
fn openers_racing_the_last_detacher_of_a_persistent_segment_all_succeed() {
    let name = Name::new("race-open");
    Segment::create(&name, 4096).unwrap().detach().unwrap();
    const THREADS: usize = 4;
    const OPENS: usize = 2000;
    let go = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (go, n) = (go.clone(), name.0.clone());
            std::thread::spawn(move || {
                go.wait();
                for i in 0..OPENS {
                    let seg = Segment::open(&n).unwrap_or_else(|e| panic!("open {i}: {e}"));
                    assert!(!seg.detach().unwrap(), "an unmarked segment was deleted");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(name.exists());
    // Nobody is attached: deleted now, by this call or, if a concurrent
    // test's `list`/`gc` saw the mark first, by that collector.
    segment::remove_when_unused(&name).unwrap();
    assert!(
        !name.exists(),
        "a persistent segment nobody uses survived its mark"
    );
}

/// Peer role: open and detach the segment in a loop until it is marked
/// or gone (exit 0), failing on any other error.
fn churn(name: &str) {
    common::reply("ready");
    loop {
        match Segment::open(name) {
            Ok(seg) => {
                seg.detach().unwrap();
            }
            Err(Error::MarkedForRemoval { .. } | Error::NotFound { .. }) => return,
            Err(e) => panic!("churn: {e}"),
        }
    }
}

/// Peers churning open/detach are killed with SIGKILL at random moments
/// (inside an open, holding the lock, mid-upgrade...): the survivors never
/// see an error, a dead peer never keeps the segment busy, and once it is
/// marked (while the survivor churns and `list` probes) the segment is
/// gone when the survivor has finished: deleted by its last detach, by
/// the marker, or by `list`.
#[test]
fn peers_killed_at_random_points_of_open_and_detach() {
    const TEST: &str = "peers_killed_at_random_points_of_open_and_detach";
    if let Some(r) = role() {
        assert_eq!(r, "churn");
        return churn(&std::env::var("SEG").unwrap());
    }
    let _serial = common::collectors();
    let mut seed = std::process::id() as u64 | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..6 {
        let name = Name::new("race-kill");
        Segment::create(&name, 4096).unwrap().detach().unwrap();
        let mut peers: Vec<_> = (0..3)
            .map(|_| spawn_peer(TEST, "churn", &[("SEG", name.0.clone())]))
            .collect();
        for p in &mut peers {
            assert_eq!(common::read_line(p, Duration::from_secs(60)), "ready");
        }
        // Kill two of the three at random moments of their loops.
        for p in peers.iter_mut().take(2) {
            std::thread::sleep(Duration::from_micros(rand(20_000)));
            p.kill().unwrap();
            p.wait().unwrap();
        }
        // No dead peer holds anything: the segment opens at once.
        let t0 = Instant::now();
        Segment::open(&name).unwrap().detach().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1), "round {round}");
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = segment::list();
                }
            });
            let r = segment::remove_when_unused(&name);
            assert!(r.is_ok(), "round {round}: {r:?}");
            stop.store(true, Ordering::Relaxed);
        });
        let status = wait_for(&mut peers[2], Duration::from_secs(60));
        assert!(status.success(), "round {round}: the surviving peer failed");
        assert!(!name.exists(), "round {round}: marked segment left behind");
    }
}

/// Forks a child that drops its inherited copy of `seg` (running the
/// handle's drop) and exits; waits for it.
fn drop_in_forked_child(seg: Segment) {
    // SAFETY: the child only drops the handle (close, munmap, free: glibc
    // makes malloc usable after fork) and calls `_exit`.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        drop(seg);
        // SAFETY: ends the forked child without running Rust cleanup.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // In the parent, `seg` is a bitwise copy of a handle the caller
    // still owns: its resources are released by the caller's.
    std::mem::forget(seg);
}

/// A child forked from an attached process shares its attachment (the
/// same open file description, hence the same `flock`). Dropping the
/// inherited handle there must not detach the parent: not delete an
/// until-last-detach segment under it, not leave its lock exclusive (which
/// would make every other open `Busy`), not make `remove_when_unused`
/// think nobody is attached.
#[test]
fn dropping_an_inherited_handle_in_a_forked_child_leaves_the_parent_attached() {
    for lifetime in [Lifetime::Persistent, Lifetime::UntilLastDetach] {
        let name = Name::new("race-fork");
        let seg = Segment::builder(&name)
            .size(4096)
            .lifetime(lifetime)
            .create()
            .unwrap();
        // The child gets a bitwise copy of this handle: hand it a view of
        // the same struct by reading it out, and keep ours.
        // SAFETY: `copy` is dropped only in the child (the parent forgets
        // its copy in `drop_in_forked_child`), so every resource is
        // released once per process.
        let copy = unsafe { std::ptr::read(&seg) };
        drop_in_forked_child(copy);
        assert!(name.exists(), "{lifetime:?}: the child deleted it");
        let other = Segment::builder(&name)
            .open_timeout(Duration::from_millis(500))
            .open()
            .unwrap_or_else(|e| panic!("{lifetime:?}: {e}"));
        other.detach().unwrap();
        if lifetime == Lifetime::Persistent {
            assert!(
                !segment::remove_when_unused(&name).unwrap(),
                "the parent is still attached"
            );
        }
        assert!(
            seg.detach().unwrap(),
            "{lifetime:?}: the parent's detach deletes"
        );
        assert!(!name.exists());
    }
}

/// The other way round: the parent detaches while a forked child still
/// holds the inherited descriptor and mapping (as Python's fork-started
/// workers do). The parent's last detach must not leave an exclusive lock
/// on the shared open file description: a later open succeeds at once.
#[test]
fn a_detach_while_a_forked_child_lives_leaves_the_segment_openable() {
    let name = Name::new("race-fork-live");
    let seg = Segment::builder(&name).size(4096).create().unwrap();
    let mut fds = [0; 2];
    // SAFETY: a plain pipe(2) into a 2-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only reads a pipe and calls `_exit`: it neither
    // drops nor uses the inherited handle (nor runs Rust cleanup).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        let mut b = 0u8;
        // SAFETY: reads one byte (or EOF) from the pipe's read end; the
        // write end is closed so that the parent's close ends the wait.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: our copy of the read end; the child has its own.
    unsafe { libc::close(fds[0]) };
    assert!(!seg.detach().unwrap(), "persistent: not deleted");
    let reopened = Segment::builder(&name)
        .open_timeout(Duration::from_millis(500))
        .open();
    // SAFETY: closing the write end lets the child exit; then reap it.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    let reopened = reopened.expect("open after the parent's detach");
    reopened.detach().unwrap();
    segment::remove(&name).unwrap();
}
