//! A full or small `/dev/shm`, and names under the prefix that are not
//! segments (FIFOs, directories, sockets, symlinks), must give errors:
//! never SIGBUS, SIGXFSZ or a hang.
//!
//! Most tests run in a private mount namespace whose `/dev/shm` is an
//! 8 MiB tmpfs (`unshare -m`, then `mount -t tmpfs`): the test re-executes
//! itself there, so nothing else on the machine is touched. That needs
//! root (CI is root). Without it the tests FAIL; set
//! `SHMKIT_TEST_NO_UNSHARE=1` to skip them explicitly.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{output_within, Name};
use shmkit::channel::pubsub::{PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{OpenError, RecvError, SendError};
use shmkit::segment::{self, Error, Segment};
use shmkit::sync::{EventMode, NamedEvent, NamedMutex, NamedSemaphore};

/// Set in the re-executed test, inside the namespace.
const INSIDE: &str = "SHMKIT_TEST_IN_SMALL_SHM";
/// Explicit opt-out for machines where `unshare -m` is impossible.
const OPT_OUT: &str = "SHMKIT_TEST_NO_UNSHARE";
const SHM_BYTES: u64 = 8 << 20;

/// Runs `test` again in a private mount namespace with an 8 MiB tmpfs on
/// `/dev/shm`. Returns true in that inner run (the caller then does the
/// work), false in the outer one after checking the inner run passed.
fn in_small_shm(test: &str) -> bool {
    match run_in_small_shm(test) {
        None => true,
        Some((status, out, err)) => {
            assert!(
                status.success() && out.contains("1 passed"),
                "inner run of {test} in a private 8 MiB /dev/shm failed ({status}); \
                 if unshare -m or mount is not allowed here, set {OPT_OUT}=1 to skip explicitly\n\
                 --- stdout\n{out}\n--- stderr\n{err}"
            );
            false
        }
    }
}

/// The inner run of `test` (see [`in_small_shm`]): `None` in the inner
/// run itself, else its status and output (also when opted out: a fake
/// success, after saying so).
fn run_in_small_shm(test: &str) -> Option<(std::process::ExitStatus, String, String)> {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os(INSIDE).is_some() {
        let space = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
        assert_eq!(
            space.f_blocks * space.f_frsize,
            SHM_BYTES,
            "inner run is not on the small tmpfs"
        );
        return None;
    }
    if std::env::var_os(OPT_OUT).is_some() {
        eprintln!("{test}: NOT RUN ({OPT_OUT} is set)");
        return Some((
            std::process::ExitStatus::from_raw(0),
            "1 passed".into(),
            String::new(),
        ));
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=8M shmkit-test /dev/shm || exit 97; \
             exec \"$0\" --exact \"$1\" --nocapture --test-threads=1",
        )
        .arg(&exe)
        .arg(test)
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run unshare ({e}); set {OPT_OUT}=1 to skip these tests explicitly")
        });
    // Killed (and the test failed) if anything inside blocks.
    let (status, out, err) = output_within(&mut child, Duration::from_secs(120));
    Some((status, out, err))
}

/// Names in /dev/shm now.
fn entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn free_bytes() -> u64 {
    let s = rustix::fs::statvfs("/dev/shm").unwrap();
    s.f_bavail * s.f_frsize
}

/// Fills /dev/shm to 100% with a plain file; returns its path.
fn fill_up() -> String {
    let path = "/dev/shm/filler".to_owned();
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling /dev/shm: {e}"),
        }
    }
    assert_eq!(free_bytes(), 0, "/dev/shm should be full");
    path
}

#[track_caller]
fn assert_no_space(e: &Error, asked_at_least: u64) {
    match e {
        Error::NoSpace { asked, free, .. } => {
            if let Some(a) = asked {
                assert!(*a >= asked_at_least, "{e}");
            }
            assert!(free.is_some(), "{e}");
        }
        other => panic!("expected NoSpace, got {other:?}: {other}"),
    }
    let msg = e.to_string();
    for part in [
        "does not fit",
        "/dev/shm has",
        "free",
        "docker run --shm-size",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[track_caller]
fn assert_open_no_space(r: Result<impl std::fmt::Debug, OpenError>, at_least: u64) {
    match r {
        Err(OpenError::Segment(e)) => assert_no_space(&e, at_least),
        other => panic!("expected NoSpace, got {other:?}"),
    }
}

#[test]
fn too_big_for_dev_shm_is_no_space_at_creation_for_every_kind() {
    if !in_small_shm("too_big_for_dev_shm_is_no_space_at_creation_for_every_kind") {
        return;
    }
    let before = entries();
    let free = free_bytes();
    let e = Segment::create("big", 16 << 20).unwrap_err();
    assert_no_space(&e, 16 << 20);
    let e = Segment::open_or_create("big", 16 << 20).unwrap_err();
    assert_no_space(&e, 16 << 20);
    assert_open_no_space(
        Sender::create("ring", &RingOptions::new(1024, 64 << 10)),
        8 << 20,
    );
    assert_open_no_space(RingOptions::new(1024, 64 << 10).create("ring"), 8 << 20);
    assert_open_no_space(
        Publisher::create("pubsub", &PubSubOptions::new(64, 1 << 20, 2)),
        8 << 20,
    );
    // 100 TiB: in words, not a bare "Cannot allocate memory".
    let e = Segment::create("huge", 100 << 40).unwrap_err();
    assert_no_space(&e, 100 << 40);
    assert!(e.to_string().contains("100 TiB"), "{e}");
    // Nothing left behind: no name, no memory charged.
    assert_eq!(entries(), before);
    assert_eq!(free_bytes(), free);
}

#[test]
fn a_full_dev_shm_fails_every_kind_cleanly() {
    if !in_small_shm("a_full_dev_shm_fails_every_kind_cleanly") {
        return;
    }
    let filler = fill_up();
    let before = entries();
    assert_no_space(&Segment::create("raw", 1).unwrap_err(), 4097);
    assert_no_space(
        &NamedMutex::<u64>::create("mutex", 0).map(drop).unwrap_err(),
        4097,
    );
    assert_no_space(
        &NamedMutex::<u64>::open_or_create("mutex", 0)
            .map(drop)
            .unwrap_err(),
        4097,
    );
    assert_no_space(
        &NamedSemaphore::create("sem", 1).map(drop).unwrap_err(),
        4097,
    );
    assert_no_space(
        &NamedEvent::create("event", EventMode::AutoReset)
            .map(drop)
            .unwrap_err(),
        4097,
    );
    assert_open_no_space(Sender::create("ring", &RingOptions::new(4, 64)), 4097);
    assert_open_no_space(
        Publisher::create("pubsub", &PubSubOptions::new(2, 64, 1)),
        4097,
    );
    assert_eq!(entries(), before);
    assert_eq!(free_bytes(), 0);
    std::fs::remove_file(filler).unwrap();
    assert_eq!(free_bytes(), SHM_BYTES, "something is still charged");
}

/// A small segment (reserved by writing it whole, one `pwritev`) that
/// only partly fits: the write stops after the pages that fit, and the
/// creation is `NoSpace` with nothing left behind or charged; with room
/// for all of it, the same creation works.
#[test]
fn a_small_segment_that_partly_fits_is_no_space_and_leaves_nothing() {
    if !in_small_shm("a_small_segment_that_partly_fits_is_no_space_and_leaves_nothing") {
        return;
    }
    let filler = fill_up();
    let full = std::fs::metadata(&filler).unwrap().len();
    // Room for two pages: the header page and half of the 16 KiB data.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(full - 2 * 4096).unwrap();
    assert_eq!(free_bytes(), 2 * 4096);
    let before = entries();
    assert_no_space(&Segment::create("partly", 4 * 4096).unwrap_err(), 5 * 4096);
    assert_eq!(entries(), before);
    assert_eq!(free_bytes(), 2 * 4096, "the partial write is still charged");
    let seg = Segment::create("fits", 4096).unwrap();
    assert_eq!(free_bytes(), 0);
    seg.detach().unwrap();
    segment::remove("fits").unwrap();
    drop(f);
    std::fs::remove_file(filler).unwrap();
    assert_eq!(free_bytes(), SHM_BYTES, "something is still charged");
}

#[test]
fn writes_and_sends_into_a_full_dev_shm_never_sigbus() {
    if !in_small_shm("writes_and_sends_into_a_full_dev_shm_never_sigbus") {
        return;
    }
    // Created while there is room; then the tmpfs is filled to 100%.
    let raw = Segment::create("raw", 3 << 20).unwrap();
    let mut tx = Sender::create("ring", &RingOptions::new(64, 16 << 10)).unwrap();
    let mut rx = Receiver::open("ring").unwrap();
    let mut publisher = Publisher::create("pubsub", &PubSubOptions::new(8, 64 << 10, 1)).unwrap();
    let sub = Subscriber::open("pubsub").unwrap();
    let mutex = NamedMutex::<u64>::create("mutex", 7).unwrap();
    let sem = NamedSemaphore::create("sem", 0).unwrap();
    let filler = fill_up();

    // Every page of the raw segment, written then read back.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    raw.write_at(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    raw.read_at(0, &mut back).unwrap();
    assert!(back == data);

    // The ring until it is full, twice over (every data page touched).
    for round in 0..2u8 {
        let mut sent = 0;
        let msg = vec![round; 8 << 10];
        loop {
            match tx.try_send(&msg) {
                Ok(()) => sent += 1,
                Err(SendError::Full) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        assert!(sent > 0);
        for _ in 0..sent {
            assert_eq!(rx.try_recv().unwrap(), msg);
        }
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    }

    // Every pub/sub slot, full size.
    for i in 0..16u8 {
        publisher.send(&vec![i; 64 << 10]).unwrap();
        let s = sub.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(s.iter().all(|&b| b == i) && s.len() == 64 << 10);
    }

    *mutex.lock().unwrap() += 1;
    assert_eq!(*mutex.lock().unwrap(), 8);
    sem.post().unwrap();
    sem.try_wait().unwrap();
    std::fs::remove_file(filler).unwrap();
    for n in ["raw", "ring", "pubsub", "mutex", "sem"] {
        segment::remove(n).unwrap();
    }
}

#[test]
fn sparse_opt_out_creates_past_the_free_space() {
    if !in_small_shm("sparse_opt_out_creates_past_the_free_space") {
        return;
    }
    // The opt-out: no reservation, so it "fits"; only pread is safe on it
    // (holes read as zeros without taking memory).
    let seg = Segment::builder("sparse")
        .size(64 << 20)
        .sparse(true)
        .create()
        .unwrap();
    let mut buf = vec![1u8; 1 << 20];
    seg.pread_at(32 << 20, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(
        free_bytes(),
        SHM_BYTES - 4096,
        "only the header page is used"
    );
    drop(seg);
    segment::remove("sparse").unwrap();
}

/// Lowers a soft resource limit of this process, keeping the hard one.
fn set_soft_limit(resource: rustix::process::Resource, value: u64) {
    let old = rustix::process::getrlimit(resource);
    rustix::process::setrlimit(
        resource,
        rustix::process::Rlimit {
            current: Some(value),
            maximum: old.maximum,
        },
    )
    .unwrap();
}

/// What `.sparse(true)` documents: its pages are taken at first touch, and
/// a touch that finds `/dev/shm` full kills the process with SIGBUS. (The
/// same sequence on a reserved segment is
/// `writes_and_sends_into_a_full_dev_shm_never_sigbus`.)
#[test]
fn sparse_segment_in_a_full_dev_shm_dies_by_sigbus_as_documented() {
    const TEST: &str = "sparse_segment_in_a_full_dev_shm_dies_by_sigbus_as_documented";
    match run_in_small_shm(TEST) {
        None => {
            let seg = Segment::builder("sparse")
                .size(1 << 20)
                .sparse(true)
                .create()
                .unwrap();
            // Nothing to clean up: the namespace's tmpfs goes with us. No
            // core file for the expected crash.
            fill_up();
            set_soft_limit(rustix::process::Resource::Core, 0);
            let _ = seg.write_at(0, &vec![1u8; 1 << 20]);
            panic!("the write into a full /dev/shm did not fault");
        }
        Some((status, out, err)) => {
            if std::env::var_os(OPT_OUT).is_some() {
                return;
            }
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGBUS),
                "{status}\n--- stdout\n{out}\n--- stderr\n{err}"
            );
        }
    }
}

#[test]
fn file_size_limit_is_an_error_not_sigxfsz() {
    if !in_small_shm("file_size_limit_is_an_error_not_sigxfsz") {
        return;
    }
    // Only this re-executed process gets the limit (ulimit -f 1024 KiB).
    set_soft_limit(rustix::process::Resource::Fsize, 1 << 20);
    let e = Segment::create("limited", 2 << 20).unwrap_err();
    assert!(
        matches!(e, Error::FileSizeLimit { limit: Some(l), .. } if l == 1 << 20),
        "{e:?}"
    );
    assert!(e.to_string().contains("ulimit -f"), "{e}");
    assert!(entries().is_empty());
    let ok = Segment::create("limited", 512 << 10).unwrap();
    drop(ok);
    segment::remove("limited").unwrap();
}

/// Makes a FIFO, a directory, a socket and two symlinks (to a real
/// segment and to a system file) under the prefix.
fn make_strangers() -> Vec<(&'static str, &'static str)> {
    let d = "/dev/shm/shmkit.";
    rustix::fs::mknodat(
        rustix::fs::CWD,
        format!("{d}fifo").as_str(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    std::fs::create_dir(format!("{d}dir")).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(format!("{d}sock")).unwrap();
    std::mem::forget(sock); // keep it bound for the whole test
    std::os::unix::fs::symlink(format!("{d}real"), format!("{d}link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", format!("{d}passwd")).unwrap();
    vec![
        ("fifo", "FIFO"),
        ("dir", "directory"),
        ("sock", "socket"),
        ("link", "symbolic link"),
        ("passwd", "symbolic link"),
    ]
}

#[track_caller]
fn assert_not_a_segment(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    match r {
        Err(e @ Error::NotASegment { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(what) && msg.contains("not a shmkit segment"),
                "{msg}"
            );
        }
        other => panic!("expected NotASegment ({what}), got {other:?}"),
    }
}

#[test]
fn fifo_directory_socket_and_symlink_are_refused_never_blocked_on() {
    if !in_small_shm("fifo_directory_socket_and_symlink_are_refused_never_blocked_on") {
        return;
    }
    let real = Segment::create("real", 4096).unwrap();
    let strangers = make_strangers();
    for &(name, what) in &strangers {
        assert_not_a_segment(Segment::open(name), what);
        assert_not_a_segment(Segment::builder(name).read_only().open(), what);
        assert_not_a_segment(Segment::create(name, 4096), what);
        assert_not_a_segment(Segment::open_or_create(name, 4096), what);
        assert_not_a_segment(segment::stat(name), what);
        assert_not_a_segment(segment::remove_when_unused(name), what);
        assert_not_a_segment(NamedMutex::<u64>::open_or_create(name, 0), what);
        assert_not_a_segment(NamedSemaphore::open(name), what);
        match Receiver::open(name) {
            Err(OpenError::Segment(e)) => assert_not_a_segment(Err::<(), _>(e), what),
            other => panic!("{name}: {:?}", other.map(drop)),
        }
        match Subscriber::open(name) {
            Err(OpenError::Segment(e)) => assert_not_a_segment(Err::<(), _>(e), what),
            other => panic!("{name}: {:?}", other.map(drop)),
        }
    }
    // ls and gc show them and go on; the real segment is listed normally.
    let list = segment::list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["dir", "fifo", "link", "passwd", "real", "sock"]);
    for i in &list {
        match strangers.iter().find(|(n, _)| *n == i.name) {
            Some((_, what)) => {
                assert!(i.not_a_segment.is_some_and(|w| w.contains(what)), "{i:?}");
                assert!(i.header.is_err());
            }
            None => {
                assert!(i.not_a_segment.is_none() && i.header.is_ok());
                assert_eq!(i.attached, 1);
            }
        }
    }
    let report = segment::gc_report(false).unwrap();
    assert!(report.collected.is_empty());
    let mut skipped: Vec<&str> = report
        .not_segments
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    skipped.sort();
    assert_eq!(skipped, ["dir", "fifo", "link", "passwd", "sock"]);
    // The real segment, reached through nothing but its own name, is fine.
    let again = Segment::open("real").unwrap();
    again.write_at(0, b"ok").unwrap();
    drop((again, real));
    segment::remove("real").unwrap();
}

#[test]
fn pread_and_pwrite_report_truncation_instead_of_sigbus() {
    let n = Name::new("trunc");
    let seg = Segment::create(&n, 1 << 20).unwrap();
    seg.pwrite_at(0, b"hello").unwrap();
    let mut five = [0u8; 5];
    seg.pread_at(0, &mut five).unwrap();
    assert_eq!(&five, b"hello");
    // A peer (here, us) truncates the file under the mapping.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(n.path())
        .unwrap();
    f.set_len(4096 + 100).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let e = seg.pread_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(e, Error::Corrupt { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );
    let e = seg.pwrite_at(4096, &buf[..4096]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // The part that is left still reads.
    seg.pread_at(0, &mut five).unwrap();
    assert_eq!(&five, b"hello");
    // Out of range is still OutOfBounds, before any system call.
    assert!(matches!(
        seg.pread_at((1 << 20) - 1, &mut five),
        Err(Error::OutOfBounds { .. })
    ));
}
