//! End-to-end tests of `shmkit create --kind ring|pubsub`, `send`, `recv`
//! and the channel line of `stat`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

static N: AtomicUsize = AtomicUsize::new(0);

fn unique() -> String {
    format!(
        "t-chancli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["rm", &self.0]).output();
    }
}

fn shmkit(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = shmkit(args);
    assert!(
        out.status.success(),
        "shmkit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for a child with a deadline, draining its output meanwhile
/// (kills it on expiry).
fn wait(child: std::process::Child, secs: u64) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("child did not finish within {secs} s");
        }
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts `recv` first (it waits for a sender), then sends a file;
/// returns recv's output.
fn round_trip(name: &str, send_args: &[&str], input: &[u8]) -> Output {
    let recv = Command::new(BIN)
        .args(["recv", name, "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let dir = std::env::temp_dir().join(format!("{name}.in"));
    std::fs::write(&dir, input).unwrap();
    let mut args = vec!["send", name];
    args.extend_from_slice(send_args);
    let path = dir.to_str().unwrap().to_owned();
    args.push(&path);
    ok(&args);
    let out = wait(recv, 30);
    let _ = std::fs::remove_file(&dir);
    out
}

#[test]
fn ring_chunk_round_trip_is_byte_identical() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "ring",
        "--capacity",
        "8",
        "--max-message",
        "1MiB",
    ]);
    let input = pseudo_random((5 << 20) + 12345, 7);
    let out = round_trip(&name, &["--chunk", "1MiB"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "bytes differ");
}

#[test]
fn ring_lines_round_trip_is_byte_identical() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "ring",
        "--capacity",
        "4",
        "--max-message",
        "16",
    ]);
    // Empty lines, a line longer than a message, no final newline.
    let input = b"one\n\ntwo two two two two two two two two\nthree".to_vec();
    let out = round_trip(&name, &[], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, input);
}

#[test]
fn pubsub_round_trip_and_stat() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "pubsub",
        "--slots",
        "4",
        "--slot-size",
        "64KiB",
        "--max-subscribers",
        "2",
    ]);
    let input = pseudo_random(300_000, 3);
    let out = round_trip(&name, &["--chunk", "64KiB"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == input, "bytes differ");
    let stat = ok(&["stat", &name, "--json"]);
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.contains("slots_in_use"), "{text}");
}

#[test]
fn recv_count_and_stat_depth() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "ring",
        "--capacity",
        "16",
        "--max-message",
        "64",
    ]);
    let mut send = Command::new(BIN)
        .args(["send", &name])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    send.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
    assert!(wait(send, 10).status.success());
    let stat = ok(&["stat", &name]);
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.contains("depth 3/16"), "{text}");
    let out = ok(&["recv", &name, "--count", "2"]);
    assert_eq!(out.stdout, b"a\nb\n");
    // The sender closed: the rest, then status 0.
    let out = ok(&["recv", &name]);
    assert_eq!(out.stdout, b"c\n");
}

#[test]
fn recv_reports_a_dead_sender() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "ring",
        "--capacity",
        "4",
        "--max-message",
        "64",
    ]);
    // A sender that stays alive (stdin open), then is killed.
    let mut send = Command::new(BIN)
        .args(["send", &name])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    stdin.write_all(b"whole\n").unwrap();
    stdin.flush().unwrap();
    let recv = Command::new(BIN)
        .args(["recv", &name, "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    send.kill().unwrap();
    send.wait().unwrap();
    let out = wait(recv, 20);
    assert_eq!(out.stdout, b"whole\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("shmkit: ") && err.contains("died"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn usage_errors() {
    let name = unique();
    let out = shmkit(&["create", &name, "--kind", "ring", "--capacity", "4"]);
    assert_eq!(out.status.code(), Some(2));
    let out = shmkit(&["recv", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("shmkit: "));
}
