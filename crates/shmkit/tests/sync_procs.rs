//! Multi-process stress and crash tests for `shmkit::sync`.
//!
//! Children are this test binary re-executed with
//! `--exact <test> --nocapture --test-threads=1` and `SYNC_ROLE` set; the
//! test function sees the role and plays the child's part instead.
//!
//! The long crash test (1,000 kills by default, `SYNC_CRASH_ROUNDS` to
//! change) is ignored in the normal suite; run it with
//! `cargo test -p shmkit --release --test sync_procs -- --ignored --nocapture`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmkit::segment::{self, Kind, Segment};
use shmkit::sync::{
    describe, EventMode, LockError, MutexState, NamedEvent, NamedMutex, Semaphore, State,
};

const ROLE: &str = "SYNC_ROLE";
const SEG: &str = "SYNC_SEG";

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-sync-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the segment when the test ends, also on panic.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = segment::remove(&self.0);
    }
}

/// Kills the child when dropped (a panicking test leaves no orphans).
struct Kid(Child);
impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

fn spawn(test: &str, role: &str, seg: &str, extra: &[(&str, String)]) -> Kid {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    // --include-ignored: the child of an ignored test must run it too.
    cmd.args([
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(ROLE, role)
    .env(SEG, seg)
    .stdout(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Kid(cmd.spawn().expect("spawn child"))
}

/// Waits for a child with a deadline; kills it and panics on timeout.
fn wait_ok(kid: &mut Kid, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = kid.0.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = kid.0.kill();
            panic!("child did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn env_u64(k: &str) -> u64 {
    std::env::var(k).unwrap().parse().unwrap()
}

/// Locks, repairing (and counting) owner deaths.
fn lock_repair<T: zerocopy::FromBytes + Send>(
    m: &shmkit::sync::Mutex<T>,
    repair: impl FnOnce(&mut T),
) -> (shmkit::sync::MutexGuard<'_, T>, bool) {
    match m.lock_timeout(Duration::from_secs(20)) {
        Ok(g) => (g, false),
        Err(LockError::OwnerDied(mut g)) => {
            repair(&mut g);
            g.mark_consistent();
            (g, true)
        }
        Err(e) => panic!("lock: {e}"),
    }
}

// ---------------------------------------------------------------------------

const PROCS: u64 = 4;
const INCREMENTS: u64 = 100_000;

#[test]
fn mutex_four_processes_exact_total() {
    const T: &str = "mutex_four_processes_exact_total";
    if role().as_deref() == Some("incr") {
        let name = std::env::var(SEG).unwrap();
        let m = NamedMutex::<[u64; 2]>::open(&name).unwrap();
        // Start together, so the increments really contend.
        let go = NamedEvent::open(&format!("{name}-go")).unwrap();
        go.wait_timeout(Duration::from_secs(20)).unwrap();
        for _ in 0..env_u64("N") {
            let mut g = m.lock().unwrap();
            // Non-atomic read-modify-write of two words: only mutual
            // exclusion keeps them equal and exact.
            g[0] += 1;
            g[1] = g[0];
        }
        return;
    }
    let name = unique("count");
    let go_name = format!("{name}-go");
    let _c = (Cleanup(name.clone()), Cleanup(go_name.clone()));
    let m = NamedMutex::<[u64; 2]>::create(&name, [0, 0]).unwrap();
    let go = NamedEvent::create(&go_name, EventMode::ManualReset).unwrap();
    let mut kids: Vec<Kid> = (0..PROCS)
        .map(|_| spawn(T, "incr", &name, &[("N", INCREMENTS.to_string())]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(describe(go.segment()).unwrap(), State::Event { sleepers, .. } if sleepers == PROCS as u32)
    {
        assert!(Instant::now() < deadline, "children never got ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    go.set().unwrap();
    for k in &mut kids {
        wait_ok(k, Duration::from_secs(60));
    }
    let g = m.lock().unwrap();
    assert_eq!(*g, [PROCS * INCREMENTS, PROCS * INCREMENTS]);
}

// ---------------------------------------------------------------------------

/// One crash round: a child locks, then increments `value` and `shadow`
/// in a loop inside the critical section (so the kill lands at a random
/// point, possibly between the two writes); we kill it; the next lock must
/// report the owner's death.
#[derive(Default, Debug)]
struct Tally {
    faults: u64,
    recoveries: u64,
    failures: u64,
}

fn crash_holder() {
    let m = NamedMutex::<[u64; 2]>::open(&std::env::var(SEG).unwrap()).unwrap();
    let (mut g, _) = lock_repair(&m, |d| d[1] = d[0]);
    let mut x = std::process::id() as u64;
    loop {
        g[0] += 1;
        // Random-length pause between the two halves of the update.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for _ in 0..(x % 512) {
            std::hint::spin_loop();
        }
        let v = g[0];
        g[1] = v;
        std::hint::black_box(&mut g);
    }
}

fn crash_rounds(test: &str, rounds: u64) -> Tally {
    let name = unique("crash");
    let _c = Cleanup(name.clone());
    let m = NamedMutex::<[u64; 2]>::create(&name, [0, 0]).unwrap();
    let mut t = Tally::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    for round in 0..rounds {
        let mut kid = spawn(test, "crash", &name, &[]);
        let pid = kid.0.id();
        // Wait until the child holds the lock (seen from outside).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match m.state().unwrap() {
                MutexState::Held { pid: Some(p), .. } if p == pid => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "child never locked");
            std::thread::sleep(Duration::from_micros(200));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_micros((seed >> 33) % 3000));
        kid.0.kill().unwrap();
        kid.0.wait().unwrap();
        t.faults += 1;
        match m.lock_timeout(Duration::from_secs(10)) {
            Err(LockError::OwnerDied(mut g)) => {
                // The killed update is at most one step ahead.
                let ok = g[0] == g[1] || g[0] == g[1] + 1;
                if ok {
                    t.recoveries += 1;
                } else {
                    t.failures += 1;
                    eprintln!("round {round}: inconsistent beyond one step: {:?}", *g);
                }
                let v = g[0];
                g[1] = v;
                g.mark_consistent();
            }
            Ok(_) => {
                t.failures += 1;
                eprintln!("round {round}: lock after a holder's death did not report it");
            }
            Err(e) => {
                t.failures += 1;
                eprintln!("round {round}: {e}");
            }
        }
        // And the mutex works normally again.
        let g = m.try_lock().expect("usable after repair");
        assert_eq!(g[0], g[1]);
    }
    t
}

fn crash_test(test: &str, rounds: u64) {
    if role().as_deref() == Some("crash") {
        crash_holder();
    }
    let t = crash_rounds(test, rounds);
    println!(
        "crash tally: faults injected {}, recoveries {}, failures {}",
        t.faults, t.recoveries, t.failures
    );
    assert_eq!(t.failures, 0, "{t:?}");
    assert_eq!(t.recoveries, rounds);
}

#[test]
fn mutex_holder_sigkilled_in_critical_section() {
    crash_test("mutex_holder_sigkilled_in_critical_section", 12);
}

/// 1000 SIGKILLs (about 5 s; `SYNC_CRASH_ROUNDS` sets another count):
/// part of every test run.
#[test]
fn mutex_holder_sigkilled_many_times() {
    let rounds = std::env::var("SYNC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    crash_test("mutex_holder_sigkilled_many_times", rounds);
}

// ---------------------------------------------------------------------------

/// A bounded buffer in a user's own `#[repr(C)]` layout: two placed
/// semaphores and a ring of slots.
#[repr(C)]
struct Buffer {
    empty: Semaphore,
    full: Semaphore,
    slots: [u64; SLOTS],
}
const SLOTS: usize = 64;
const ITEMS: u64 = 500_000; // 1,000,000 waits + 1,000,000 posts

fn buffer(seg: &Segment) -> &Buffer {
    assert!(seg.len() >= std::mem::size_of::<Buffer>());
    let p = seg.as_ptr() as *const Buffer;
    // SAFETY: size checked; the data area is page aligned; the
    // semaphores are validated by from_ptr; the slots are u64s only touched
    // by the side that owns them per the semaphore protocol.
    unsafe {
        Semaphore::from_ptr(&raw const (*p).empty).unwrap();
        Semaphore::from_ptr(&raw const (*p).full).unwrap();
        &*p
    }
}

fn slot(b: &Buffer, i: u64) -> *mut u64 {
    (&raw const b.slots[(i % SLOTS as u64) as usize]).cast_mut()
}

#[test]
fn semaphore_bounded_buffer_between_processes() {
    const T: &str = "semaphore_bounded_buffer_between_processes";
    let r = role();
    if r.is_some() {
        let seg = Segment::builder(&std::env::var(SEG).unwrap())
            .kind(Kind::Raw)
            .open()
            .unwrap();
        let b = buffer(&seg);
        let tmo = Duration::from_secs(20);
        for i in 0..ITEMS {
            if r.as_deref() == Some("producer") {
                b.empty.wait_timeout(tmo).expect("empty slot");
                // SAFETY: slot i is ours between empty.wait and full.post.
                unsafe { slot(b, i).write_volatile(i + 1) };
                b.full.post().unwrap();
            } else {
                b.full.wait_timeout(tmo).expect("full slot");
                // SAFETY: slot i is ours between full.wait and empty.post.
                let v = unsafe { slot(b, i).read_volatile() };
                assert_eq!(v, i + 1, "lost or duplicated item");
                b.empty.post().unwrap();
            }
        }
        return;
    }
    let name = unique("bbuf");
    let _c = Cleanup(name.clone());
    let seg = Segment::builder(&name)
        .size(std::mem::size_of::<Buffer>() as u64)
        .init(|data| {
            let p = data.as_mut_ptr() as *mut Buffer;
            // SAFETY: fresh, exclusive, page-aligned area of the right size.
            unsafe {
                Semaphore::init_at(&raw mut (*p).empty, SLOTS as u32).unwrap();
                Semaphore::init_at(&raw mut (*p).full, 0).unwrap();
            }
            Ok(())
        })
        .create()
        .unwrap();
    let mut c = spawn(T, "consumer", &name, &[]);
    let mut p = spawn(T, "producer", &name, &[]);
    wait_ok(&mut p, Duration::from_secs(60));
    wait_ok(&mut c, Duration::from_secs(60));
    let b = buffer(&seg);
    assert_eq!(b.full.value(), Ok(0));
    assert_eq!(b.empty.value(), Ok(SLOTS as u32));
}

#[test]
fn semaphore_many_posters_many_waiters() {
    const T: &str = "semaphore_many_posters_many_waiters";
    const EACH: u64 = 50_000;
    match role().as_deref() {
        Some("post") => {
            let s = shmkit::sync::NamedSemaphore::open(&std::env::var(SEG).unwrap()).unwrap();
            for _ in 0..EACH {
                s.post().unwrap();
            }
            return;
        }
        Some("wait") => {
            let s = shmkit::sync::NamedSemaphore::open(&std::env::var(SEG).unwrap()).unwrap();
            for _ in 0..EACH {
                s.wait_timeout(Duration::from_secs(20)).expect("lost post");
            }
            return;
        }
        _ => {}
    }
    let name = unique("mpmc");
    let _c = Cleanup(name.clone());
    let s = shmkit::sync::NamedSemaphore::create(&name, 0).unwrap();
    let mut kids = vec![
        spawn(T, "wait", &name, &[]),
        spawn(T, "wait", &name, &[]),
        spawn(T, "post", &name, &[]),
        spawn(T, "post", &name, &[]),
    ];
    for k in &mut kids {
        wait_ok(k, Duration::from_secs(60));
    }
    assert_eq!(s.value(), Ok(0), "duplicated posts");
}

// ---------------------------------------------------------------------------

/// Token-passing processes (wait, then give back) are SIGKILLed at random
/// points and replaced. A killed process can take at most one token with
/// it; nothing may be corrupted, duplicated, or hang the survivors.
fn cycle_crash(test: &str, role: &str, tokens: u32, rounds: u32) -> u32 {
    let name = unique(role);
    let _c = Cleanup(name.clone());
    let (sem, ev);
    if role == "cycle-sem" {
        sem = Some(shmkit::sync::NamedSemaphore::create(&name, tokens).unwrap());
        ev = None;
    } else {
        sem = None;
        let e = NamedEvent::create(&name, EventMode::AutoReset).unwrap();
        e.set().unwrap();
        ev = Some(e);
    }
    let mut kids: Vec<Kid> = (0..4).map(|_| spawn(test, role, &name, &[])).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    let mut killed = 0;
    for _ in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(500 + seed % 3000));
        let i = (seed >> 20) as usize % kids.len();
        kids[i].0.kill().unwrap();
        kids[i].0.wait().unwrap();
        killed += 1;
        kids[i] = spawn(test, role, &name, &[]);
    }
    // Survivors kept cycling: none of them may have failed (a failure
    // exits non-zero: corruption, or a 20 s wait with no token left).
    for k in &mut kids {
        assert!(k.0.try_wait().unwrap().is_none(), "a cycler failed");
        k.0.kill().unwrap();
        k.0.wait().unwrap();
        killed += 1;
    }
    let left = match (&sem, &ev) {
        (Some(s), _) => {
            let v = s.value().expect("not corrupt");
            assert!(v <= tokens, "duplicated tokens: {v} > {tokens}");
            // Works normally afterwards.
            s.post_n(tokens - v).unwrap();
            for _ in 0..tokens {
                s.try_wait().unwrap();
            }
            assert_eq!(s.try_wait(), Err(shmkit::sync::WaitError::WouldBlock));
            v
        }
        (_, Some(e)) => {
            let set = e.is_set().expect("not corrupt");
            e.set().unwrap();
            e.wait_timeout(Duration::from_secs(5)).unwrap();
            u32::from(set)
        }
        _ => unreachable!(),
    };
    println!("{role}: {killed} kills, {left} of {tokens} tokens left");
    assert!(tokens - left <= killed);
    left
}

fn cycler(role: &str) {
    let name = std::env::var(SEG).unwrap();
    let tmo = Duration::from_secs(20);
    if role == "cycle-sem" {
        let s = shmkit::sync::NamedSemaphore::open(&name).unwrap();
        loop {
            s.wait_timeout(tmo).unwrap();
            std::hint::black_box(0u64);
            s.post().unwrap();
        }
    } else {
        let e = NamedEvent::open(&name).unwrap();
        loop {
            e.wait_timeout(tmo).unwrap();
            std::hint::black_box(0u64);
            e.set().unwrap();
        }
    }
}

#[test]
fn semaphore_users_sigkilled_at_random_points() {
    if let Some(r) = role() {
        cycler(&r);
    }
    cycle_crash(
        "semaphore_users_sigkilled_at_random_points",
        "cycle-sem",
        3,
        12,
    );
}

#[test]
fn event_users_sigkilled_at_random_points() {
    if let Some(r) = role() {
        cycler(&r);
    }
    cycle_crash(
        "event_users_sigkilled_at_random_points",
        "cycle-event",
        1,
        12,
    );
}

// ---------------------------------------------------------------------------

/// H3 across processes: two waiter processes are asleep in an untimed
/// `wait()`; then the parent makes exactly the write of a poster/setter
/// SIGKILLed between its state change and its `FUTEX_WAKE` (count += n, or
/// the set flag, with no wake). Every waiter must still return, within
/// one sleep slice (50 ms) plus slack. Before waits were sliced they slept
/// forever here. (A waiter chosen by `FUTEX_WAKE` and killed before taking
/// the unit leaves the same state: units, sleepers, no wake pending.)
#[test]
fn waiters_survive_a_poster_killed_before_its_wake() {
    const TEST: &str = "waiters_survive_a_poster_killed_before_its_wake";
    if let Some(r) = role() {
        let name = std::env::var(SEG).unwrap();
        if r == "lost-sem" {
            shmkit::sync::NamedSemaphore::open(&name)
                .unwrap()
                .wait()
                .unwrap();
        } else {
            NamedEvent::open(&name).unwrap().wait().unwrap();
        }
        return;
    }
    for kind in ["lost-sem", "lost-auto", "lost-manual"] {
        let name = unique(kind);
        let _c = Cleanup(name.clone());
        let (sem, ev);
        // The futex word of the object (layout: docs/sync.md).
        let word: &AtomicU32;
        let sleepers: Box<dyn Fn() -> u32>;
        if kind == "lost-sem" {
            sem = Some(shmkit::sync::NamedSemaphore::create(&name, 0).unwrap());
            let s: &Semaphore = sem.as_ref().unwrap();
            // SAFETY: `count` is the second u32 of the repr(C) Semaphore,
            // an atomic in a live mapping.
            word = unsafe { &*(s as *const Semaphore).cast::<AtomicU32>().add(1) };
            sleepers = Box::new(|| sem.as_ref().unwrap().sleepers().unwrap());
            ev = None;
        } else {
            let mode = if kind == "lost-auto" {
                EventMode::AutoReset
            } else {
                EventMode::ManualReset
            };
            ev = Some(NamedEvent::create(&name, mode).unwrap());
            let e: &shmkit::sync::Event = ev.as_ref().unwrap();
            // SAFETY: `state` is the third u32 of the repr(C) Event, an
            // atomic in a live mapping.
            word = unsafe { &*(e as *const shmkit::sync::Event).cast::<AtomicU32>().add(2) };
            sleepers = Box::new(|| match describe(ev.as_ref().unwrap().segment()).unwrap() {
                State::Event { sleepers, .. } => sleepers,
                s => panic!("{s:?}"),
            });
            sem = None;
        }
        let mut kids: Vec<Kid> = (0..2).map(|_| spawn(TEST, kind, &name, &[])).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sleepers() < 2 {
            assert!(Instant::now() < deadline, "{kind}: waiters did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Let both get into FUTEX_WAIT.
        std::thread::sleep(Duration::from_millis(200));
        let exited = |kids: &mut Vec<Kid>| {
            kids.iter_mut()
                .filter_map(|k| k.0.try_wait().unwrap())
                .count()
        };
        match kind {
            // The dead poster's post_n(2) CAS, without its wake.
            "lost-sem" => {
                word.fetch_add(2, Ordering::Release);
            }
            // Dead setter, auto-reset: one set (releases one waiter); once
            // it is consumed, a second one.
            "lost-auto" => {
                word.fetch_or(1, Ordering::Release);
                let deadline = Instant::now() + Duration::from_secs(10);
                while exited(&mut kids) == 0 {
                    assert!(Instant::now() < deadline, "{kind}: nobody woke");
                    std::thread::sleep(Duration::from_millis(2));
                }
                word.fetch_or(1, Ordering::Release);
            }
            _ => {
                word.fetch_or(1, Ordering::Release);
            }
        }
        for k in &mut kids {
            wait_ok(k, Duration::from_secs(10));
        }
        assert_eq!(sleepers(), 0, "{kind}");
        if let Some(s) = &sem {
            assert_eq!(s.value(), Ok(0));
        }
        if let Some(e) = &ev {
            assert_eq!(e.is_set(), Ok(kind == "lost-manual"));
        }
    }
}

/// Sends `sig` to the child.
fn signal(kid: &Kid, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid.
    let r = unsafe { libc::kill(kid.0.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
}

/// The state letter of the child's main thread in /proc/<pid>/stat.
fn proc_state(kid: &Kid) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", kid.0.id())).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

/// M1 across processes: three processes wait on a manual-reset event; a
/// `set()` immediately followed by `reset()` releases all of them. To make
/// "the pulse ends before any waiter runs" certain rather than a race,
/// the waiters are SIGSTOPped (still inside `wait`) during the pulse and
/// SIGCONTinued after: their restarted FUTEX_WAIT then finds "unset"
/// again. Before the generation counter they slept on and timed out.
#[test]
fn manual_event_pulse_releases_every_waiting_process() {
    const TEST: &str = "manual_event_pulse_releases_every_waiting_process";
    if role().is_some() {
        let e = NamedEvent::open(&std::env::var(SEG).unwrap()).unwrap();
        e.wait_timeout(Duration::from_secs(5)).unwrap();
        return;
    }
    let name = unique("pulse");
    let _c = Cleanup(name.clone());
    let e = NamedEvent::create(&name, EventMode::ManualReset).unwrap();
    let mut kids: Vec<Kid> = (0..3).map(|_| spawn(TEST, "pulse", &name, &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match describe(e.segment()).unwrap() {
            State::Event { sleepers: 3, .. } => break,
            _ => assert!(Instant::now() < deadline, "waiters did not start"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(100));
    for k in &kids {
        signal(k, libc::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kids.iter().all(|k| proc_state(k) == 'T') {
        assert!(Instant::now() < deadline, "children did not stop");
        std::thread::sleep(Duration::from_millis(2));
    }
    e.set().unwrap();
    e.reset().unwrap();
    for k in &kids {
        signal(k, libc::SIGCONT);
    }
    for k in &mut kids {
        wait_ok(k, Duration::from_secs(10));
    }
    assert_eq!(e.is_set(), Ok(false));
}
