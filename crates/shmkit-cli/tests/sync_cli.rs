//! End-to-end tests of `shmkit sem`, `shmkit mutex`, `shmkit event` and
//! `shmkit lock`.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-synccli-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = shmkit::segment::remove(n);
        }
    }
}

fn shmkit(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = shmkit(args);
    assert!(
        o.status.success(),
        "shmkit {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Waits with a deadline; kills and panics on timeout.
fn wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sem_create_post_wait_value() {
    let n = unique("sem");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["sem", "create", &n, "--value", "2"]);
    assert_eq!(ok(&["sem", "value", &n]), "2\n");
    ok(&["sem", "post", &n, "--count", "3"]);
    ok(&["sem", "wait", &n]);
    assert_eq!(ok(&["sem", "value", &n]), "4\n");
    let stat = ok(&["stat", &n]);
    assert!(stat.contains("value 4, 0 sleeping"), "{stat}");
}

/// Bug 1 (issue 14): `--count 4294967295` wrapped the overflow check;
/// it must fail cleanly and leave the value as it was, and later posts
/// must still work.
#[test]
fn sem_post_count_beyond_max_fails_and_changes_nothing() {
    let n = unique("semovf");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["sem", "create", &n, "--value", "5"]);
    for count in ["4294967295", "2147483648", "2147483643"] {
        let o = shmkit(&["sem", "post", &n, "--count", count]);
        assert_eq!(o.status.code(), Some(1), "--count {count}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("would exceed"), "{err}");
        assert_eq!(ok(&["sem", "value", &n]), "5\n");
    }
    ok(&["sem", "post", &n, "--count", "2147483642"]);
    assert_eq!(ok(&["sem", "value", &n]), "2147483647\n");
    ok(&["sem", "wait", &n]);
    ok(&["sem", "post", &n]);
    assert_eq!(ok(&["sem", "value", &n]), "2147483647\n");
}

#[test]
fn sem_wait_timeout_exits_non_zero() {
    let n = unique("semto");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["sem", "create", &n]);
    let start = Instant::now();
    let o = shmkit(&["sem", "wait", &n, "--timeout", "200ms"]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("shmkit: ") && err.contains("timed out"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A post in the meantime is taken, not lost.
    ok(&["sem", "post", &n]);
    ok(&["sem", "wait", &n, "--timeout", "5s"]);
    assert_eq!(ok(&["sem", "value", &n]), "0\n");
}

#[test]
fn two_locks_never_overlap() {
    let n = unique("lock");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["mutex", "create", &n]);
    let dir = std::env::temp_dir().join(format!("{n}.log"));
    let log = dir.to_str().unwrap().to_owned();
    let script = "echo begin $1 >> \"$0\"; sleep 0.02; echo end $1 >> \"$0\"";
    let mut kids: Vec<Child> = (0..2)
        .map(|who| {
            let (n, log) = (n.clone(), log.clone());
            // Each process runs 8 locked sections back to back.
            Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "for i in 1 2 3 4 5 6 7 8; do {BIN} lock {n} --timeout 30s -- \
                         sh -c '{script}' {log} {who} || exit 1; done"
                    ),
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in &mut kids {
        assert!(wait(k, Duration::from_secs(60)).success());
    }
    let text = std::fs::read_to_string(&dir).unwrap();
    let _ = std::fs::remove_file(&dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * 2 * 8, "{text}");
    for pair in lines.chunks(2) {
        let who = pair[0].strip_prefix("begin ").expect(&text);
        assert_eq!(pair[1], format!("end {who}"), "interleaved:\n{text}");
    }
}

#[test]
fn lock_reports_dead_holder_and_passes_exit_status() {
    let n = unique("dead");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["mutex", "create", &n]);
    let mut holder = Command::new(BIN)
        .args(["lock", &n, "--", "sleep", "2"])
        .spawn()
        .unwrap();
    // Wait until it holds the lock, then SIGKILL it (its `sleep` child
    // finishes on its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&["stat", &n]).contains("held by pid") {
        assert!(Instant::now() < deadline, "holder never locked");
        std::thread::sleep(Duration::from_millis(10));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let stat = ok(&["stat", &n]);
    assert!(stat.contains("owner died"), "{stat}");

    let o = shmkit(&["lock", &n, "--timeout", "10s", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("previous holder died"), "{err}");
    // Repaired: the next lock is silent.
    let o = shmkit(&["lock", &n, "--", "true"]);
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(ok(&["stat", &n]).contains("free"));
    assert!(ok(&["ls"]).contains(&n));
}

#[test]
fn lock_timeout_and_missing_command() {
    let n = unique("lto");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["mutex", "create", &n]);
    let mut holder = Command::new(BIN)
        .args(["lock", &n, "--", "sleep", "1"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&["stat", &n]).contains("held by pid") {
        assert!(Instant::now() < deadline, "holder never locked");
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = shmkit(&["lock", &n, "--timeout", "100ms", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    assert!(wait(&mut holder, Duration::from_secs(20)).success());

    let o = shmkit(&["lock", &n]);
    assert_eq!(o.status.code(), Some(2));
    let o = shmkit(&["lock", &n, "--", "/nonexistent/command"]);
    assert_eq!(o.status.code(), Some(127));
    let o = shmkit(&["lock", "t-synccli-no-such-mutex", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn event_set_wait() {
    let n = unique("ev");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["event", "create", &n, "--manual"]);
    let o = shmkit(&["event", "wait", &n, "--timeout", "50ms"]);
    assert_eq!(o.status.code(), Some(1));
    ok(&["event", "set", &n]);
    ok(&["event", "wait", &n, "--timeout", "5s"]);
    assert!(ok(&["stat", &n]).contains("manual-reset set"));
    ok(&["event", "reset", &n]);
    assert_eq!(
        shmkit(&["event", "wait", &n, "--timeout", "10ms"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn sigterm_to_lock_ends_the_command_and_unlocks_cleanly() {
    let n = unique("term");
    let _c = Cleanup(vec![n.clone()]);
    ok(&["mutex", "create", &n]);
    let mut holder = Command::new(BIN)
        .args(["lock", &n, "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&["stat", &n]).contains("held by pid") {
        assert!(Instant::now() < deadline, "holder never locked");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(holder.id() as libc::pid_t, libc::SIGTERM) };
    let st = wait(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st}");
    // Released normally: no owner-died note for the next locker.
    let o = shmkit(&["lock", &n, "--timeout", "5s", "--", "true"]);
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
