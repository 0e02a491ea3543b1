//! Unit tests of the waiter-thread table (`reactor`).

use super::*;

fn waiters(s: &Shard) -> usize {
    s.table
        .lock()
        .unwrap()
        .words
        .iter()
        .map(|e| e.waiters.len())
        .sum()
}

/// Registrations share a word's entry and leave nothing behind.
#[test]
fn registrations_come_and_go() {
    let shard = Arc::new(Shard::new(false));
    let (a, b) = (AtomicU32::new(0), AtomicU32::new(0));
    let addr = |w: &AtomicU32| w as *const AtomicU32 as usize;
    let r1 = shard.try_add(addr(&a), false).unwrap();
    let r2 = shard.try_add(addr(&a), false).unwrap();
    let r3 = shard.try_add(addr(&b), false).unwrap();
    assert_eq!((shard.words(), waiters(&shard)), (2, 3));
    let waker = futures_waker();
    assert!(r1.arm(&a, 0, &waker, None));
    assert!(!r2.arm(&a, 1, &waker, None), "stale value must not arm");
    drop((r1, r2, r3));
    assert_eq!((shard.words(), waiters(&shard)), (0, 0));
}

/// Room for 127 distinct words; the 128th needs another shard.
#[test]
fn a_shard_holds_127_words() {
    let shard = Arc::new(Shard::new(false));
    let words: Vec<AtomicU32> = (0..=WORDS_PER_SHARD).map(|_| AtomicU32::new(0)).collect();
    let addr = |w: &AtomicU32| w as *const AtomicU32 as usize;
    let mut regs: Vec<Registration> = words[..WORDS_PER_SHARD]
        .iter()
        .map(|w| shard.try_add(addr(w), false).unwrap())
        .collect();
    assert!(shard
        .try_add(addr(&words[WORDS_PER_SHARD]), false)
        .is_none());
    regs.pop();
    assert!(shard
        .try_add(addr(&words[WORDS_PER_SHARD]), false)
        .is_some());
}

/// A lingering entry keeps its uid for the next registration, until a
/// mapping is unmapped; it does not count as a registered word.
#[test]
fn lingering_entry_lives_until_an_unmap() {
    let shard = Arc::new(Shard::new(false));
    let a = AtomicU32::new(0);
    let addr = &a as *const AtomicU32 as usize;
    let uid = |s: &Shard| s.table.lock().unwrap().words[0].uid;
    let r = shard.try_add(addr, true).unwrap();
    let first = uid(&shard);
    drop(r);
    assert_eq!((shard.words(), shard.entries()), (0, 1));
    let r = shard.try_add(addr, true).unwrap();
    assert_eq!(uid(&shard), first, "same endpoint: same entry");
    drop(r);
    // Any unmap may have freed the address for another object.
    let f = tempfile_of(4096);
    drop(crate::sys::mmap::Mapping::new(std::os::fd::AsFd::as_fd(&f), 4096, false).unwrap());
    let _r = shard.try_add(addr, true).unwrap();
    assert_ne!(uid(&shard), first, "after an unmap: a new entry");
    assert_eq!((shard.words(), shard.entries()), (1, 1));
    // A non-lingering word leaves with its last registration.
    let b = AtomicU32::new(0);
    drop(
        shard
            .try_add(&b as *const AtomicU32 as usize, false)
            .unwrap(),
    );
    assert_eq!(shard.entries(), 1);
}

/// A full shard makes room by forgetting a lingering entry.
#[test]
fn lingering_entries_give_way() {
    let shard = Arc::new(Shard::new(false));
    let words: Vec<AtomicU32> = (0..=WORDS_PER_SHARD).map(|_| AtomicU32::new(0)).collect();
    let addr = |w: &AtomicU32| w as *const AtomicU32 as usize;
    for w in &words[..WORDS_PER_SHARD] {
        drop(shard.try_add(addr(w), true).unwrap());
    }
    assert_eq!(shard.entries(), WORDS_PER_SHARD);
    assert!(shard.try_add(addr(&words[WORDS_PER_SHARD]), true).is_some());
    assert_eq!(shard.entries(), WORDS_PER_SHARD);
}

/// The point of lingering: a loop of futures on one word (a receive
/// loop) re-arms without kicking the waiter thread. Without the
/// lingering entry each registration is a new entry and kicks.
#[test]
fn steady_rearm_needs_no_kick() {
    use std::sync::atomic::AtomicBool;
    struct Flag(AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let shard = Arc::new(Shard::new(false));
    let runner = shard.clone();
    let thread = std::thread::spawn(move || while runner.run_once() {});
    let word = Box::new(AtomicU32::new(0));
    let rounds = 200;
    for _ in 0..rounds {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let r = shard
            .try_add(&*word as *const AtomicU32 as usize, true)
            .unwrap();
        let seen = word.load(Ordering::Acquire);
        let tick = Instant::now() + crate::channel::wait::SLICE;
        assert!(r.arm(&word, seen, &waker, Some(tick)));
        // Let the thread settle into its wait, then wake the word.
        std::thread::sleep(Duration::from_micros(200));
        word.fetch_add(1, Ordering::Release);
        futex::wake_all(&word);
        let t0 = Instant::now();
        while !flag.0.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(10), "never woken");
            std::thread::yield_now();
        }
        drop(r);
    }
    let kicks = shard.kicks();
    shard.quit();
    thread.join().unwrap();
    assert!(kicks <= rounds / 10, "{kicks} kicks in {rounds} rounds");
}

fn tempfile_of(len: u64) -> std::fs::File {
    let p = std::env::temp_dir().join(format!("shmkit-linger-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let _ = std::fs::remove_file(&p);
    f.set_len(len).unwrap();
    f
}

fn futures_waker() -> Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    Waker::from(Arc::new(Noop))
}
