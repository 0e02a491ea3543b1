//! Segment API behaviour within one process: names, creation modes,
//! bounds, corruption, the three deletions, listing.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Name;
use shmkit::segment::{self, Error, Fingerprint, Kind, Lifetime, Segment, MAX_NAME_LEN};

#[test]
fn invalid_names_are_rejected_before_any_syscall() {
    let long = "a".repeat(MAX_NAME_LEN + 1);
    for bad in [
        "", "/", "a/b", "..", "x..y", ".", "a\0b", "sp ace", "ünï", &long,
    ] {
        for r in [
            Segment::create(bad, 4096).map(drop),
            Segment::open(bad).map(drop),
            Segment::open_or_create(bad, 4096).map(drop),
            segment::remove(bad),
            segment::remove_when_unused(bad).map(drop),
            segment::stat(bad).map(drop),
        ] {
            assert!(
                matches!(r, Err(Error::InvalidName { .. })),
                "{bad:?}: {r:?}"
            );
        }
    }
    // The longest valid name works end to end.
    let name = format!("t-{}-{}", std::process::id(), "z".repeat(MAX_NAME_LEN));
    let name = Name(name[..MAX_NAME_LEN].to_owned());
    Segment::create(&name, 1).unwrap();
}

#[test]
fn create_open_and_errors() {
    let name = Name::new("basic");
    assert!(Segment::open(&name).unwrap_err().is_not_found());
    let a = Segment::create(&name, 10_000).unwrap();
    assert!(a.created());
    assert_eq!(a.len(), 10_000);
    assert_eq!(a.as_ptr() as usize % 4096, 0, "data area is page aligned");
    assert!(matches!(
        Segment::create(&name, 10),
        Err(Error::AlreadyExists { .. })
    ));
    let b = Segment::open(&name).unwrap();
    assert!(!b.created());
    a.write_at(9_995, b"hello").unwrap();
    let mut buf = [0u8; 5];
    b.read_at(9_995, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Out of bounds: nothing is read or written.
    assert!(matches!(
        a.write_at(9_996, b"hello"),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        a.read_at(u64::MAX, &mut buf),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        Segment::create(&Name::new("zero"), 0),
        Err(Error::InvalidArgument { .. })
    ));
    // open_or_create of an existing segment with another size is refused.
    assert!(matches!(
        Segment::open_or_create(&name, 5),
        Err(Error::InvalidArgument { .. })
    ));
    let c = Segment::open_or_create(&name, 10_000).unwrap();
    assert!(!c.created());
    // Error messages say what was tried on which name.
    let msg = Segment::create(&name, 1).unwrap_err().to_string();
    assert!(msg.contains("create") && msg.contains(&name.0), "{msg}");
}

#[test]
fn mode_defaults_to_0600_and_is_applied_exactly() {
    let name = Name::new("mode");
    let _a = Segment::create(&name, 4096).unwrap();
    let m = std::fs::metadata(name.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o600);
    let name2 = Name::new("mode2");
    let _b = Segment::builder(&name2)
        .size(4096)
        .mode(0o666)
        .create()
        .unwrap();
    let m = std::fs::metadata(name2.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(m, 0o666, "umask must not trim the requested mode");
    assert_eq!(segment::stat(&name2).unwrap().mode, 0o666);
    assert!(matches!(
        Segment::builder(&Name::new("badmode"))
            .size(1)
            .mode(0o4777)
            .create(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn read_only_attachment_cannot_write() {
    let name = Name::new("ro");
    let a = Segment::create(&name, 64).unwrap();
    a.write_at(0, b"x").unwrap();
    let r = Segment::builder(&name).read_only().open().unwrap();
    let mut b = [0u8; 1];
    r.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"x");
    assert!(matches!(
        r.write_at(0, b"y"),
        Err(Error::PermissionDenied { .. })
    ));
}

#[test]
fn kind_and_type_are_checked_at_open() {
    let name = Name::new("kind");
    let _a = Segment::builder(&name)
        .size(64)
        .kind(Kind::Ring)
        .fingerprint(Fingerprint::of::<[u32; 4]>())
        .params([1, 2, 3, 0, 0, 0, 0, 0])
        .create()
        .unwrap();
    assert!(matches!(
        Segment::builder(&name).kind(Kind::Mutex).open(),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        Segment::builder(&name)
            .kind(Kind::Ring)
            .fingerprint(Fingerprint::of::<[u64; 2]>())
            .open(),
        Err(Error::TypeMismatch { .. })
    ));
    let ok = Segment::builder(&name)
        .kind(Kind::Ring)
        .fingerprint(Fingerprint::of::<[u32; 4]>())
        .open()
        .unwrap();
    assert_eq!(ok.header().params[..3], [1, 2, 3]);
    // Without a kind, open accepts any (raw access for tools).
    assert_eq!(Segment::open(&name).unwrap().kind(), Kind::Ring);
}

#[test]
fn remove_now_keeps_existing_mappings() {
    let name = Name::new("rmnow");
    let a = Segment::create(&name, 64).unwrap();
    let b = Segment::open(&name).unwrap();
    segment::remove(&name).unwrap();
    assert!(!name.exists());
    assert!(Segment::open(&name).unwrap_err().is_not_found());
    assert!(segment::remove(&name).unwrap_err().is_not_found());
    // Both attachments still share the (now nameless) memory.
    a.write_at(0, b"still here").unwrap();
    let mut buf = [0u8; 10];
    b.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    // The name can be reused at once for a new, different segment.
    let c = Segment::create(&name, 32).unwrap();
    assert_eq!(c.len(), 32);
    drop((a, b));
    assert!(
        name.exists(),
        "old detaches must not remove the new segment"
    );
}

#[test]
fn until_last_detach_goes_with_the_last_handle() {
    let name = Name::new("uld");
    let a = Segment::builder(&name)
        .size(64)
        .lifetime(Lifetime::UntilLastDetach)
        .create()
        .unwrap();
    let b = Segment::open(&name).unwrap();
    assert_eq!(b.lifetime(), Lifetime::UntilLastDetach);
    assert!(!a.detach().unwrap());
    assert!(name.exists());
    assert!(b.detach().unwrap());
    assert!(!name.exists());
}

/// Whether the page at `addr` is mapped in this process's page tables
/// (`/proc/self/pagemap`, bit 63), i.e. whether it was faulted in.
fn page_present(addr: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let page = 4096;
    let mut entry = [0u8; 8];
    std::fs::File::open("/proc/self/pagemap")
        .unwrap()
        .read_exact_at(&mut entry, (addr / page * 8) as u64)
        .unwrap();
    u64::from_le_bytes(entry) >> 63 == 1
}

/// The header is written and read with `pwrite`/`pread`, never through
/// the mapping: a page fault (and the page table entry `munmap` must then
/// clear) costs more than the system call. Create, open and the data page
/// stay untouched until the program touches them.
#[test]
fn a_life_cycle_never_faults_the_header_page_in() {
    for lifetime in [Lifetime::Persistent, Lifetime::UntilLastDetach] {
        let name = Name::new("nofault");
        let a = Segment::builder(&name)
            .size(4096)
            .lifetime(lifetime)
            .create()
            .unwrap();
        let b = Segment::open(&name).unwrap();
        for (who, seg) in [("creator", &a), ("opener", &b)] {
            let header_page = seg.as_ptr() as usize - 4096;
            assert!(
                !page_present(header_page),
                "{lifetime:?}: the {who}'s header page was faulted in"
            );
            assert!(!page_present(seg.as_ptr() as usize), "{who}: data page");
        }
        // A write fault maps that page only (no fault-around on writes),
        // unless /dev/shm gives huge pages (then one fault maps 2 MiB).
        b.write_at(0, b"x").unwrap();
        assert!(page_present(b.as_ptr() as usize));
        if matches!(
            shmkit::sys::shm::huge_support(),
            Ok(shmkit::sys::shm::HugeSupport::No(_))
        ) {
            assert!(!page_present(b.as_ptr() as usize - 4096));
        }
        assert!(!b.detach().unwrap());
        let removed = a.detach().unwrap();
        assert_eq!(removed, lifetime == Lifetime::UntilLastDetach);
    }
}

/// shmkit opens segment files with `O_NOATIME` (when it may): its header
/// reads and mappings do not update the access time, a clock read and an
/// inode update each. With `relatime` (tmpfs's default), an access time
/// older than the modification time would otherwise be updated by them.
#[test]
fn opening_and_detaching_does_not_update_the_access_time() {
    use std::os::unix::fs::MetadataExt;
    for lifetime in [Lifetime::Persistent, Lifetime::UntilLastDetach] {
        let name = Name::new("atime");
        let a = Segment::builder(&name)
            .size(4096)
            .lifetime(lifetime)
            .create()
            .unwrap();
        // Access time far in the past (before the modification time).
        let path = std::ffi::CString::new(name.path()).unwrap();
        let times = [
            libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        // SAFETY: a valid C path and two timespecs, as utimensat wants.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(rc, 0);
        let b = Segment::open(&name).unwrap();
        let _ = segment::stat(&name).unwrap();
        assert!(!b.detach().unwrap());
        assert_eq!(
            std::fs::metadata(name.path()).unwrap().atime(),
            1_000_000,
            "{lifetime:?}: the access time was updated"
        );
        a.detach().unwrap();
    }
}

#[test]
fn remove_when_unused_deletes_at_once_when_nobody_is_attached() {
    let name = Name::new("rwu");
    Segment::create(&name, 64).unwrap().detach().unwrap();
    assert!(segment::remove_when_unused(&name).unwrap());
    assert!(!name.exists());
    assert!(segment::remove_when_unused(&name)
        .unwrap_err()
        .is_not_found());
}

#[test]
fn list_and_stat_report_the_header_and_attachments() {
    let name = Name::new("list");
    let a = Segment::builder(&name)
        .size(12_345)
        .lifetime(Lifetime::UntilLastDetach)
        .create()
        .unwrap();
    let _b = Segment::open(&name).unwrap();
    let info = segment::list()
        .unwrap()
        .into_iter()
        .find(|i| i.name == *name)
        .expect("listed");
    let h = info.header.as_ref().unwrap();
    assert_eq!(h.data_len, 12_345);
    assert_eq!(h.lifetime, Lifetime::UntilLastDetach);
    assert_eq!(h.creator_pid, std::process::id());
    assert_eq!(info.attached, 2);
    assert_eq!(info.pids, vec![std::process::id()]);
    assert_eq!(info.mode, 0o600);
    assert_eq!(info.uid, rustix::process::geteuid().as_raw());
    assert!(info.created_at().unwrap() <= std::time::SystemTime::now());
    assert_eq!(a.attached_pids(), vec![std::process::id()]);
    let st = segment::stat(&name).unwrap();
    assert_eq!(st.size(), Some(12_345));
}

/// Hand-written files under our prefix that are not valid segments.
#[test]
fn corrupt_files_are_reported_not_crashed_on() {
    let valid = {
        let n = Name::new("tmpl");
        let _s = Segment::create(&n, 4096).unwrap();
        std::fs::read(n.path()).unwrap()
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("zeros", vec![0; 8192]),
        (
            "garbage",
            (0..8192u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("truncated", valid[..6000].to_vec()),
    ];
    let mut longer = valid.clone();
    longer.extend_from_slice(&[0; 4096]);
    cases.push(("longer", longer));
    let mut flipped = valid.clone();
    flipped[50] ^= 1; // inside the data length field: checksum catches it
    cases.push(("flipped", flipped));
    for (what, bytes) in cases {
        let name = Name::new(what);
        std::fs::write(name.path(), &bytes).unwrap();
        let e = Segment::open(&name).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
        let info = segment::stat(&name).unwrap();
        assert!(info.header.is_err(), "{what}");
        assert!(segment::list()
            .unwrap()
            .iter()
            .any(|i| i.name == *name && i.header.is_err()));
        assert!(
            !segment::gc(false).unwrap().iter().any(|c| c.name == *name),
            "gc must not touch {what}"
        );
        assert!(segment::remove_when_unused(&name).is_err());
    }
    let mut v2 = valid;
    v2[8] = 2; // format version 2
    let name = Name::new("v2");
    std::fs::write(name.path(), &v2).unwrap();
    assert!(matches!(
        Segment::open(&name),
        Err(Error::VersionMismatch { found: 2, .. })
    ));
}

#[test]
fn symlinks_under_our_prefix_are_not_followed() {
    let target = Name::new("target");
    let _t = Segment::create(&target, 64).unwrap();
    let link = Name::new("link");
    std::os::unix::fs::symlink(target.path(), link.path()).unwrap();
    assert!(matches!(
        Segment::open(&link),
        Err(Error::NotASegment { .. })
    ));
}

/// `/dev/shm` is world-writable: a segment another user created under the
/// name we expect must not be trusted by default. (Needs root to make a
/// file owned by someone else; CI runs as root.)
#[test]
fn segments_of_another_owner_are_refused_unless_allowed() {
    let name = Name::new("owner");
    let seg = Segment::create(&name, 64).unwrap();
    if !rustix::process::geteuid().is_root() {
        // Our own segment is trusted; the foreign case cannot be built.
        assert!(Segment::open(&name).is_ok());
        return;
    }
    std::os::unix::fs::chown(name.path(), Some(65534), None).unwrap();
    let e = Segment::open(&name).unwrap_err();
    assert!(matches!(e, Error::ForeignOwner { owner: 65534, .. }), "{e}");
    assert!(matches!(
        Segment::open_or_create(&name, 64),
        Err(Error::ForeignOwner { .. })
    ));
    let ok = Segment::builder(&name).allow_any_owner().open().unwrap();
    assert_eq!(ok.len(), 64);
    drop(seg);
}
