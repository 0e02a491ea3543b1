//! End-to-end tests of the segment subcommands, running the real binary.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

/// A unique segment name, removed when dropped.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        static N: AtomicUsize = AtomicUsize::new(0);
        Name(format!(
            "tc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
    }
}

/// Serialises the tests that run `ls` or `gc`: both collect every due
/// segment, so one could remove the orphan another test expects its own
/// `gc` to report.
fn collectors() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn shmkit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shmkit")
}

fn shmkit_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shmkit");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts success and returns stdout.
fn ok(o: Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "unexpected stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Asserts failure with `code` and exactly one `shmkit: ` line on stderr.
fn fails(o: Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("shmkit: "), "{err:?}");
    assert!(o.stdout.is_empty(), "data on stdout with an error");
    err
}

fn json(o: Output) -> serde_json::Value {
    serde_json::from_slice(&ok(o)).expect("valid json")
}

#[test]
fn create_write_read_round_trip_via_files_and_pipes() {
    let n = Name::new("rw");
    ok(shmkit(&["create", &n.0, "--size", "64KiB"]));
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let dir = std::env::temp_dir().join(format!("shmkit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.bin");
    std::fs::write(&input, &data).unwrap();
    ok(shmkit(&["write", &n.0, input.to_str().unwrap()]));
    let out = ok(shmkit(&["read", &n.0, "--len", "50000"]));
    assert_eq!(out, data);
    // Offset + stdin, read to a file.
    ok(shmkit_stdin(
        &["write", &n.0, "--offset", "60000"],
        b"tail!",
    ));
    let outf = dir.join("out.bin");
    ok(shmkit(&[
        "read",
        &n.0,
        "--offset",
        "60000",
        "--len",
        "5",
        outf.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&outf).unwrap(), b"tail!");
    // Default length: to the end of the data area.
    assert_eq!(ok(shmkit(&["read", &n.0, "--offset", "65530"])).len(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_that_does_not_fit_writes_nothing() {
    let n = Name::new("fit");
    ok(shmkit(&["create", &n.0, "--size", "100"]));
    ok(shmkit_stdin(&["write", &n.0], &[b'a'; 100]));
    let e = fails(
        shmkit_stdin(&["write", &n.0, "--offset", "50"], &[b'b'; 51]),
        1,
    );
    assert!(e.contains("does not fit"), "{e}");
    assert_eq!(
        ok(shmkit(&["read", &n.0])),
        vec![b'a'; 100],
        "partial write happened"
    );
    fails(shmkit(&["read", &n.0, "--offset", "90", "--len", "11"]), 1);
}

#[test]
fn ls_and_stat_show_segments_as_table_and_json() {
    let _serial = collectors();
    let n = Name::new("ls");
    ok(shmkit(&["create", &n.0, "--size", "1MiB", "--mode", "640"]));
    let table = String::from_utf8(ok(shmkit(&["ls"]))).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&n.0)).expect("row");
    for col in ["raw", "1 MiB", "0640", "persistent"] {
        assert!(row.contains(col), "{row}");
    }
    let arr = json(shmkit(&["ls", "--json"]));
    let me = arr
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == n.0.as_str())
        .expect("listed");
    assert_eq!(me["size"], 1 << 20);
    assert_eq!(me["mode"], "0640");
    assert_eq!(me["attached"], 0);
    assert_eq!(me["pids"], serde_json::json!([]));
    assert_eq!(me["lifetime"], "persistent");
    let st = json(shmkit(&["stat", &n.0, "--json"]));
    assert_eq!(st["size"], 1 << 20);
    assert_eq!(st["format_version"], 1);
    assert!(st["creator_pid"].as_u64().unwrap() > 0);
    let text = String::from_utf8(ok(shmkit(&["stat", &n.0]))).unwrap();
    assert!(text.contains("size:") && text.contains("1048576"), "{text}");
    fails(shmkit(&["stat", "no-such-segment-xyz"]), 1);
}

#[test]
fn attach_holds_the_segment_and_is_listed_with_its_pid() {
    let n = Name::new("att");
    ok(shmkit(&["create", &n.0, "--size", "4KiB"]));
    let mut holder = Command::new(BIN)
        .args(["attach", &n.0, "--for", "20s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = holder.id() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = json(shmkit(&["stat", &n.0, "--json"]));
        if st["pids"] == serde_json::json!([pid]) {
            assert_eq!(st["attached"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "attach never showed up: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM detaches cleanly and exits 0.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(holder.wait().unwrap().success());
    assert_eq!(json(shmkit(&["stat", &n.0, "--json"]))["attached"], 0);
    // --for ends by itself.
    let t = Instant::now();
    let o = Command::new(BIN)
        .args(["attach", &n.0, "--for", "200ms"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[test]
fn rm_now_and_when_unused_and_gc() {
    let _serial = collectors();
    let a = Name::new("rm-a");
    let b = Name::new("rm-b");
    ok(shmkit(&["create", &a.0, "--size", "1K"]));
    ok(shmkit(&["create", &b.0, "--size", "1K"]));
    ok(shmkit(&["rm", &a.0, &b.0]));
    fails(shmkit(&["stat", &a.0]), 1);
    let e = fails(shmkit(&["rm", &a.0]), 1);
    assert!(e.contains("no such segment"), "{e}");

    // Deferred: marked while attached, gone once the holder detaches.
    let c = Name::new("rm-c");
    ok(shmkit(&["create", &c.0, "--size", "1K"]));
    let mut holder = Command::new(BIN)
        .args(["attach", &c.0, "--for", "30s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while json(shmkit(&["stat", &c.0, "--json"]))["attached"] != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(shmkit(&["rm", "--when-unused", &c.0]));
    let st = json(shmkit(&["stat", &c.0, "--json"]));
    assert_eq!(st["marked_for_removal"], true);
    let e = fails(shmkit(&["read", &c.0]), 1);
    assert!(e.contains("marked for removal"), "{e}");
    // Killed holder: gc (dry run first) collects it.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let dry = String::from_utf8(ok(shmkit(&["gc", "--dry-run"]))).unwrap();
    assert!(dry.contains(&format!("would remove {}", c.0)), "{dry}");
    let done = String::from_utf8(ok(shmkit(&["gc"]))).unwrap();
    assert!(done.contains(&format!("removed {}", c.0)), "{done}");
    fails(shmkit(&["stat", &c.0]), 1);

    // gc never touches a persistent segment.
    let d = Name::new("rm-d");
    ok(shmkit(&["create", &d.0, "--size", "1K"]));
    let done = String::from_utf8(ok(shmkit(&["gc"]))).unwrap();
    assert!(!done.contains(&d.0));
    ok(shmkit(&["stat", &d.0]));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    fails(shmkit(&["create"]), 2);
    fails(shmkit(&["create", "x", "--size", "12parsecs"]), 2);
    fails(shmkit(&["attach", "x", "--for", "soon"]), 2);
    fails(shmkit(&["frobnicate"]), 2);
    fails(shmkit(&["create", "x", "--size", "1", "--mode", "999"]), 2);
    let e = fails(shmkit(&["create", "bad/name", "--size", "1"]), 1);
    assert!(e.contains("invalid name"), "{e}");
    assert!(ok(shmkit(&["--help"])).starts_with(b"Shared memory"));
    for sub in [
        "create", "write", "read", "ls", "stat", "attach", "rm", "gc", "demo",
    ] {
        assert!(!ok(shmkit(&[sub, "--help"])).is_empty());
    }
}

#[test]
fn create_huge_is_checked_before_anything_is_created() {
    let n = Name::new("huge");
    fails(
        shmkit(&["create", &n.0, "--size", "1", "--huge", "--sparse"]),
        2,
    );
    let e = fails(
        shmkit(&["create", &n.0, "--size", "1", "--huge", "--kind", "ring"]),
        2,
    );
    assert!(e.contains("--huge is for raw segments"), "{e}");
    // On this machine's /dev/shm: refused with the reason, or (a huge
    // tmpfs) created with the size rounded to whole huge pages.
    let out = shmkit(&["create", &n.0, "--size", "1", "--huge"]);
    match shmkit::sys::shm::huge_support().unwrap() {
        shmkit::sys::shm::HugeSupport::No(why) => {
            let e = fails(out, 1);
            assert!(e.contains("no huge pages") && e.contains(&why), "{e}");
            assert!(shmkit::segment::stat(&n.0).unwrap_err().is_not_found());
        }
        shmkit::sys::shm::HugeSupport::Yes { page_size } => {
            ok(out);
            let size = shmkit::segment::stat(&n.0).unwrap().file_size;
            assert_eq!(size % page_size, 0, "not rounded");
        }
    }
}

#[test]
fn create_existing_fails() {
    let n = Name::new("dup");
    ok(shmkit(&["create", &n.0, "--size", "1"]));
    let e = fails(shmkit(&["create", &n.0, "--size", "1"]), 1);
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn demo_moves_64mib_between_two_processes_and_cleans_up() {
    let out = String::from_utf8(ok(shmkit(&["demo"]))).unwrap();
    assert!(out.contains("checksum verified"), "{out}");
    assert!(out.contains("segment removed: yes"), "{out}");
    assert!(out.contains("is gone"), "{out}");
    assert!(out.contains("64 MiB"), "{out}");
}
