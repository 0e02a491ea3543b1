//! Huge-page segments (`SegmentBuilder::huge_pages`). Each test runs
//! itself again in a private mount namespace with its own file system on
//! `/dev/shm` (a huge tmpfs, a plain one, an unlimited one, a full one, a
//! hugetlbfs), so the machine's `/dev/shm` is never touched. That needs
//! root: as another user every such test is SKIPPED, said on stderr (not
//! captured) with the count.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{output_within, Name};
use shmkit::segment::{Error, Segment};

/// Set in the inner run.
const INSIDE: &str = "SHMKIT_TEST_HUGE_INSIDE";
/// Exit status of the inner shell when the mount itself failed.
const MOUNT_FAILED: i32 = 97;

static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// Runs `test` again under `unshare -m` with `mount -t FSTYPE -o OPTS` on
/// `/dev/shm`. Returns true in the inner run (the caller then does the
/// work), false in the outer one after checking the inner run passed, or
/// after saying loudly why it could not run.
fn inside(test: &str, fstype: &str, opts: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let skip = |why: &str| {
        let n = SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
        // Straight to the process's stderr: the test harness captures
        // only the print macros, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test} ({n} huge-page test(s) skipped in this binary): {why}"
        );
    };
    if !rustix::process::geteuid().is_root() {
        skip("needs root for unshare -m and mount (CI runs as root)");
        return false;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t {fstype} -o {opts} shmkit-test /dev/shm || exit {MOUNT_FAILED}; \
             exec \"$0\" --exact \"$1\" --nocapture --test-threads=1"
        ))
        .arg(&exe)
        .arg(test)
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare");
    // Killed (and the test failed) if anything inside blocks.
    let (status, out, err) = output_within(&mut child, Duration::from_secs(120));
    if status.code() == Some(MOUNT_FAILED) && fstype == "hugetlbfs" {
        skip(&format!("this kernel cannot mount a hugetlbfs: {err}"));
        return false;
    }
    assert!(
        status.success() && out.contains("1 passed"),
        "inner run of {test} on {fstype} -o {opts} failed ({status})\n\
         --- stdout\n{out}\n--- stderr\n{err}"
    );
    false
}

/// `ShmemPmdMapped` of the mapping that contains `addr`, in KiB, from
/// `/proc/self/smaps`: how much of it the kernel maps with huge pages.
fn pmd_mapped_kb(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_vma = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                in_vma = (lo..hi).contains(&addr);
                continue;
            }
        }
        if in_vma {
            if let Some(v) = line.strip_prefix("ShmemPmdMapped:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping contains {addr:#x}");
}

fn shm_names() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn huge_segment_is_rounded_reserved_and_mapped_with_huge_pages() {
    const T: &str = "huge_segment_is_rounded_reserved_and_mapped_with_huge_pages";
    if !inside(T, "tmpfs", "size=64M,huge=always") {
        return;
    }
    let name = Name::new("huge");
    let seg = Segment::builder(&name)
        .size(3 << 20)
        .huge_pages(true)
        .create()
        .unwrap();
    // Header page + data fill two 2 MiB pages exactly.
    assert_eq!(
        seg.len() as u64 + 4096,
        4 << 20,
        "not rounded to huge pages"
    );
    // Reserved at creation: the whole file is allocated now.
    let used = rustix::fs::statvfs("/dev/shm").unwrap();
    assert!(
        (used.f_blocks - used.f_bfree) * used.f_frsize >= 4 << 20,
        "memory not reserved"
    );
    let data = vec![0x5a; seg.len()];
    seg.write_at(0, &data).unwrap();
    assert!(
        pmd_mapped_kb(seg.as_ptr() as usize) >= 2048,
        "the creator's mapping has no huge page"
    );
    // Openers need nothing special and see the same pages.
    let other = Segment::open(&name).unwrap();
    assert_eq!(other.len(), seg.len());
    let mut back = vec![0; other.len()];
    other.read_at(0, &mut back).unwrap();
    assert!(back == data);
    assert!(pmd_mapped_kb(other.as_ptr() as usize) >= 2048);
    // open_or_create with the same (unrounded) request finds it.
    let again = Segment::builder(&name)
        .size(3 << 20)
        .huge_pages(true)
        .open_or_create()
        .unwrap();
    assert!(!again.created());
}

#[test]
fn huge_request_on_a_tmpfs_without_huge_pages_is_refused_up_front() {
    const T: &str = "huge_request_on_a_tmpfs_without_huge_pages_is_refused_up_front";
    if !inside(T, "tmpfs", "size=64M,huge=never") {
        return;
    }
    let name = Name::new("nohuge");
    let e = Segment::builder(&name)
        .size(4096)
        .huge_pages(true)
        .create()
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { reason, .. } if reason.contains("huge=never")),
        "{e}"
    );
    assert!(shm_names().is_empty(), "left {:?}", shm_names());
    // The same request without huge pages works there.
    Segment::builder(&name).size(4096).create().unwrap();
}

#[test]
fn huge_request_on_an_unlimited_tmpfs_is_refused_up_front() {
    const T: &str = "huge_request_on_an_unlimited_tmpfs_is_refused_up_front";
    // size=0: no limit, so only the page allocator would notice a full
    // machine.
    if !inside(T, "tmpfs", "size=0,huge=always") {
        return;
    }
    let e = Segment::builder(&Name::new("unlimited"))
        .size(4096)
        .huge_pages(true)
        .create()
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { reason, .. } if reason.contains("no size limit")),
        "{e}"
    );
    assert!(shm_names().is_empty(), "left {:?}", shm_names());
}

#[test]
fn huge_request_larger_than_the_mount_is_no_space_at_creation() {
    const T: &str = "huge_request_larger_than_the_mount_is_no_space_at_creation";
    if !inside(T, "tmpfs", "size=8M,huge=always") {
        return;
    }
    let e = Segment::builder(&Name::new("full"))
        .size(16 << 20)
        .huge_pages(true)
        .create()
        .unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e}");
    assert!(shm_names().is_empty(), "left {:?}", shm_names());
    // What fits is created, reserved, and usable to the last byte.
    let seg = Segment::builder(&Name::new("fits"))
        .size(4 << 20)
        .huge_pages(true)
        .create()
        .unwrap();
    seg.write_at(seg.len() as u64 - 1, &[1]).unwrap();
}

#[test]
fn hugetlbfs_is_refused_with_a_clear_error() {
    const T: &str = "hugetlbfs_is_refused_with_a_clear_error";
    if !inside(T, "hugetlbfs", "size=0") {
        return;
    }
    let e = Segment::builder(&Name::new("tlb"))
        .size(4096)
        .huge_pages(true)
        .create()
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { reason, .. } if reason.contains("hugetlbfs")),
        "{e}"
    );
}

#[test]
fn huge_and_sparse_together_are_refused() {
    // No mount needed: refused before looking at the file system.
    let e = Segment::builder(&Name::new("hs"))
        .size(4096)
        .huge_pages(true)
        .sparse(true)
        .create()
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { reason, .. } if reason.contains("sparse")),
        "{e}"
    );
}
