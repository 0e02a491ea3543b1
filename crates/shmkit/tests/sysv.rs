//! `shmkit::sysv` against a legacy C program that uses raw
//! `shmget`/`shmat` (tests/c/sysv_legacy.c, compiled with `cc`).
//!
//! Every segment a test creates is removed by a guard, also on failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use shmkit::segment::Error;
use shmkit::sysv::{self, SysvSegment};

/// The compiled legacy program (built once per test binary).
fn legacy() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/sysv_legacy.c");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sysv_legacy-{}", std::process::id()));
        let st = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(st.success(), "cc failed");
        out
    })
}

/// A key nobody else uses: high byte 0x5f, then our pid and a counter.
fn unique_key() -> i32 {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (0x5f00_0000 | ((std::process::id() & 0xffff) << 8) | (n & 0xff)) as i32
}

/// Removes segment `id` on drop (IPC_RMID), so a failing test leaves nothing.
struct Rmid(i32);
impl Drop for Rmid {
    fn drop(&mut self) {
        let _ = sysv::remove_id(self.0);
    }
}

fn pattern(i: usize, seed: u32) -> u8 {
    ((i as u32).wrapping_mul(31).wrapping_add(seed) & 0xff) as u8
}

fn legacy_write(key: i32, size: usize, seed: u32) -> Rmid {
    let out = Command::new(legacy())
        .args([
            "write",
            &key.to_string(),
            &size.to_string(),
            &seed.to_string(),
        ])
        .output()
        .expect("run legacy writer");
    assert!(
        out.status.success(),
        "legacy writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Rmid(id)
}

#[test]
fn shmkit_reads_what_a_legacy_c_writer_wrote() {
    let key = unique_key();
    let size = 1 << 20 | 123; // not a multiple of the page size
    let guard = legacy_write(key, size, 7);
    let seg = SysvSegment::open_read_only(key).unwrap();
    assert_eq!(seg.len(), size);
    assert_eq!(seg.id(), guard.0);
    assert_eq!(seg.key(), key);
    let mut buf = vec![0u8; size];
    seg.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == pattern(i, 7)));
    // Every access is bounded by shm_segsz, even though the attachment is
    // page-rounded.
    let mut one = [0u8; 1];
    assert!(matches!(
        seg.read_at(size as u64, &mut one),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        seg.read_at(u64::MAX, &mut one),
        Err(Error::OutOfBounds { .. })
    ));
    // Read-only attachment refuses writes.
    assert!(matches!(
        seg.write_at(0, b"x"),
        Err(Error::PermissionDenied { .. })
    ));
    let info = sysv::stat(key).unwrap();
    assert_eq!((info.size, info.nattch, info.mode), (size as u64, 1, 0o600));
}

#[test]
fn a_legacy_c_reader_reads_what_shmkit_wrote() {
    let key = unique_key();
    let size = 640 * 480 * 3;
    let seg = SysvSegment::create(key, size as u64, 0o600).unwrap();
    let _guard = Rmid(seg.id());
    let data: Vec<u8> = (0..size).map(|i| pattern(i, 99)).collect();
    seg.write_at(0, &data).unwrap();
    assert!(matches!(
        seg.write_at(1, &data),
        Err(Error::OutOfBounds { .. })
    ));
    seg.detach().unwrap();
    let st = Command::new(legacy())
        .args(["check", &key.to_string(), &size.to_string(), "99"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    // And the check fails on a wrong seed: it really compares.
    let st = Command::new(legacy())
        .args(["check", &key.to_string(), &size.to_string(), "98"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(4));
}

#[test]
fn remove_while_attached_defers_to_the_last_detach() {
    let key = unique_key();
    let seg = SysvSegment::create(key, 4096, 0o600).unwrap();
    let _guard = Rmid(seg.id());
    let id = seg.id();
    seg.write_at(0, b"still here").unwrap();
    // A second, legacy, attachment in another process.
    let mut holder = Command::new(legacy())
        .args(["hold", &key.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "attached\n");
    assert_eq!(sysv::stat_id(id).unwrap().nattch, 2);

    sysv::remove(key).unwrap();
    let info = sysv::stat_id(id).unwrap();
    assert!(info.dest, "{info:?}");
    assert_eq!(info.key, sysv::IPC_PRIVATE, "the key is freed at once");
    assert!(sysv::list().unwrap().iter().any(|i| i.id == id && i.dest));
    assert!(SysvSegment::open(key).unwrap_err().is_not_found());
    // Still readable through the existing attachment.
    let mut buf = [0u8; 10];
    seg.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    seg.detach().unwrap();
    assert_eq!(sysv::stat_id(id).unwrap().nattch, 1, "the holder remains");
    holder.stdin.take().unwrap().write_all(b"").unwrap();
    assert!(holder.wait().unwrap().success());
    assert!(sysv::stat_id(id).unwrap_err().is_not_found());
    assert!(!sysv::list().unwrap().iter().any(|i| i.id == id));
}

#[test]
fn list_and_stat_agree_with_the_kernel() {
    let key = unique_key();
    let seg = SysvSegment::create(key, 12345, 0o640).unwrap();
    let _guard = Rmid(seg.id());
    let row = sysv::list()
        .unwrap()
        .into_iter()
        .find(|i| i.id == seg.id())
        .expect("listed");
    assert_eq!(row.key, key);
    assert_eq!(row.size, 12345);
    assert_eq!(row.mode, 0o640);
    assert_eq!(row.nattch, 1);
    assert_eq!(row.cpid, std::process::id() as i32);
    assert!(!row.dest && row.ctime.is_some() && row.atime.is_some());
    let st = seg.stat().unwrap();
    assert_eq!(
        (st.key, st.id, st.size, st.mode, st.nattch, st.cpid),
        (row.key, row.id, row.size, row.mode, row.nattch, row.cpid)
    );
}

#[test]
fn errors_keys_and_ftok() {
    let key = unique_key();
    assert!(SysvSegment::open(key).unwrap_err().is_not_found());
    assert!(sysv::stat_id(i32::MAX).unwrap_err().is_not_found());
    assert!(sysv::remove_id(i32::MAX).unwrap_err().is_not_found());
    assert!(matches!(
        SysvSegment::open(sysv::IPC_PRIVATE),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        SysvSegment::create(key, 0, 0o600),
        Err(Error::InvalidArgument { .. })
    ));
    let seg = SysvSegment::create(key, 64, 0o600).unwrap();
    let _guard = Rmid(seg.id());
    assert!(matches!(
        SysvSegment::create(key, 64, 0o600),
        Err(Error::AlreadyExists { .. })
    ));
    // A private segment is reachable by id only.
    let private = SysvSegment::create(sysv::IPC_PRIVATE, 64, 0o600).unwrap();
    let _guard2 = Rmid(private.id());
    assert_ne!(private.id(), seg.id());
    private.write_at(0, b"p").unwrap();
    let again = SysvSegment::open_id(private.id(), false).unwrap();
    let mut b = [0u8];
    again.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"p");

    assert_eq!(sysv::key_hex(0x1234), "0x00001234");
    assert_eq!(sysv::key_hex(-1), "0xffffffff");
    assert_eq!(sysv::parse_key("0xffffffff"), Ok(-1));
    assert_eq!(sysv::parse_key("4660"), Ok(0x1234));
    assert!(sysv::parse_key("zz").is_err());
    let manifest = env!("CARGO_MANIFEST_DIR");
    let k1 = sysv::ftok(manifest, b'A').unwrap();
    assert_eq!(k1, sysv::ftok(manifest, b'A').unwrap());
    assert_ne!(k1, sysv::ftok(manifest, b'B').unwrap());
    assert!(sysv::ftok("/nonexistent/shmkit", b'A')
        .unwrap_err()
        .is_not_found());
}
