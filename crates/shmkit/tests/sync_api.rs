//! API tests for `shmkit::sync`: named objects (kind and type checks),
//! placement in a user's own layout, `describe`, corruption, timeouts,
//! and an event signalled across processes.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmkit::segment::{self, Error, Kind, Segment};
use shmkit::sync::{
    describe, Event, EventMode, LockError, Mutex, MutexState, NamedEvent, NamedMutex,
    NamedSemaphore, Semaphore, State, WaitError,
};

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-syncapi-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = segment::remove(&self.0);
    }
}

const SLACK: Duration = Duration::from_secs(1);

#[test]
fn named_mutex_checks_type_and_kind() {
    let name = unique("mtype");
    let _c = Cleanup(name.clone());
    let m = NamedMutex::<u64>::create(&name, 41).unwrap();
    *m.lock().unwrap() += 1;
    assert!(matches!(
        NamedMutex::<u32>::open(&name),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        NamedSemaphore::open(&name),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        NamedMutex::<u64>::create(&name, 0),
        Err(Error::AlreadyExists { .. })
    ));
    // A read-only attachment cannot lock (it would fault): refused.
    assert!(matches!(
        NamedMutex::<u64>::open_with(Segment::builder(&name).read_only()),
        Err(Error::PermissionDenied { .. })
    ));
    let again = NamedMutex::<u64>::open_or_create(&name, 0).unwrap();
    assert!(!again.segment().created());
    assert_eq!(*again.lock().unwrap(), 42);
    assert_eq!(
        describe(m.segment()).unwrap(),
        State::Mutex(MutexState::Free)
    );
}

/// A user's own layout: a robust mutex guarding a frame buffer, with an
/// event to announce new frames, all in one raw segment.
#[repr(C)]
struct Shared {
    frame_lock: Mutex<[u8; 256]>,
    new_frame: Event,
}

#[test]
fn placed_mutex_and_event_in_user_layout() {
    let name = unique("placed");
    let _c = Cleanup(name.clone());
    let seg = Segment::builder(&name)
        .size(std::mem::size_of::<Shared>() as u64)
        .init(|data| {
            let p = data.as_mut_ptr() as *mut Shared;
            // SAFETY: fresh, exclusive, page-aligned area of the right size.
            unsafe {
                Mutex::init_at(&raw mut (*p).frame_lock, [0u8; 256]).unwrap();
                Event::init_at(&raw mut (*p).new_frame, EventMode::AutoReset).unwrap();
            }
            Ok(())
        })
        .create()
        .unwrap();
    let other = Segment::open(&name).unwrap();
    for s in [&seg, &other] {
        let p = s.as_ptr() as *const Shared;
        // SAFETY: the segment outlives the references; fields validated.
        let (m, e) = unsafe {
            (
                Mutex::from_ptr(&raw const (*p).frame_lock).unwrap(),
                Event::from_ptr(&raw const (*p).new_frame).unwrap(),
            )
        };
        m.lock().unwrap()[0] += 1;
        e.set().unwrap();
        e.wait_timeout(Duration::from_secs(5)).unwrap();
    }
    let p = seg.as_ptr() as *const Shared;
    // SAFETY: as above.
    let m = unsafe { Mutex::from_ptr(&raw const (*p).frame_lock).unwrap() };
    assert_eq!(m.lock().unwrap()[0], 2);

    // Uninitialised memory is refused, not used.
    let raw = unique("raw");
    let _c2 = Cleanup(raw.clone());
    let z = Segment::create(&raw, 4096).unwrap();
    // SAFETY: the segment is 4096 bytes, enough for the types read.
    unsafe {
        assert!(Mutex::<u64>::from_ptr(z.as_ptr() as *const Mutex<u64>).is_err());
        assert!(Semaphore::from_ptr(z.as_ptr() as *const Semaphore).is_err());
        assert!(Event::from_ptr(z.as_ptr() as *const Event).is_err());
        assert!(Event::from_ptr(z.as_ptr().add(1) as *const Event).is_err());
    }
}

#[test]
fn describe_reports_state_of_each_kind() {
    let (a, b, c, d) = (unique("d1"), unique("d2"), unique("d3"), unique("d4"));
    let _c = [
        Cleanup(a.clone()),
        Cleanup(b.clone()),
        Cleanup(c.clone()),
        Cleanup(d.clone()),
    ];
    let m = NamedMutex::<u32>::create(&a, 0).unwrap();
    let s = NamedSemaphore::create(&b, 3).unwrap();
    let e = NamedEvent::create(&c, EventMode::ManualReset).unwrap();
    let raw = Segment::create(&d, 64).unwrap();

    let g = m.lock().unwrap();
    // Another handle (as `shmkit stat` would open it) sees the holder.
    let seg = Segment::open(&a).unwrap();
    match describe(&seg).unwrap() {
        State::Mutex(MutexState::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        st => panic!("{st:?}"),
    }
    drop(g);
    assert_eq!(describe(&seg).unwrap().to_string(), "free".to_string());
    assert_eq!(
        describe(s.segment()).unwrap(),
        State::Semaphore {
            value: 3,
            sleepers: 0
        }
    );
    e.set().unwrap();
    assert_eq!(
        describe(e.segment()).unwrap().to_string(),
        "manual-reset set, 0 sleeping"
    );
    assert!(matches!(describe(&raw), Err(Error::WrongKind { .. })));
    assert_eq!(raw.kind(), Kind::Raw);
}

#[test]
fn corrupt_named_semaphore_is_an_error_not_ub() {
    let name = unique("corrupt");
    let _c = Cleanup(name.clone());
    let s = NamedSemaphore::create(&name, 1).unwrap();
    // A hostile peer writes garbage over the count (offset 4).
    s.segment().write_at(4, &u32::MAX.to_ne_bytes()).unwrap();
    assert!(matches!(s.try_wait(), Err(WaitError::Corrupt(_))));
    assert!(s.post().is_err());
    assert!(matches!(
        NamedSemaphore::open(&name),
        Err(Error::Corrupt { .. })
    ));
    assert!(describe(s.segment()).is_err());
}

#[test]
fn timeouts_return_within_deadline_plus_slack() {
    let (a, b, c) = (unique("t1"), unique("t2"), unique("t3"));
    let _c = [Cleanup(a.clone()), Cleanup(b.clone()), Cleanup(c.clone())];
    let m = NamedMutex::<u8>::create(&a, 0).unwrap();
    let s = NamedSemaphore::create(&b, 0).unwrap();
    let e = NamedEvent::create(&c, EventMode::AutoReset).unwrap();
    let d = Duration::from_millis(100);

    let g = m.lock().unwrap();
    let a2 = a.clone();
    let took = std::thread::spawn(move || {
        let m = NamedMutex::<u8>::open(&a2).unwrap();
        let start = Instant::now();
        assert!(matches!(m.lock_timeout(d), Err(LockError::Timeout)));
        start.elapsed()
    })
    .join()
    .unwrap();
    drop(g);
    assert!(took >= d && took < d + SLACK, "{took:?}");

    let start = Instant::now();
    assert_eq!(s.wait_timeout(d), Err(WaitError::Timeout));
    let took = start.elapsed();
    assert!(took >= d && took < d + SLACK, "{took:?}");

    let start = Instant::now();
    assert_eq!(e.wait_timeout(d), Err(WaitError::Timeout));
    let took = start.elapsed();
    assert!(took >= d && took < d + SLACK, "{took:?}");
}

#[test]
fn event_signals_another_process() {
    const T: &str = "event_signals_another_process";
    if let Ok(name) = std::env::var("SYNC_EVENT") {
        // Child: wait for "go", answer on "ack", 200 times.
        let go = NamedEvent::open(&format!("{name}-go")).unwrap();
        let ack = NamedEvent::open(&format!("{name}-ack")).unwrap();
        for _ in 0..200 {
            go.wait_timeout(Duration::from_secs(10)).unwrap();
            ack.set().unwrap();
        }
        return;
    }
    let name = unique("ev");
    let (gn, an) = (format!("{name}-go"), format!("{name}-ack"));
    let _c = [Cleanup(gn.clone()), Cleanup(an.clone())];
    let go = NamedEvent::create(&gn, EventMode::AutoReset).unwrap();
    let ack = NamedEvent::create(&an, EventMode::AutoReset).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", T, "--nocapture", "--test-threads=1"])
        .env("SYNC_EVENT", &name)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        go.set().unwrap();
        ack.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child hung");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(st.success());
}
