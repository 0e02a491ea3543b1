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

/// `send --lines` sends in batches (as many as the ring has room for, at
/// most a few hundred lines, never across a blocking read): numbered lines
/// of random lengths, many split in several messages, through a 4-slot ring
/// (so nearly every batch is cut short by a full ring) and across many
/// refills of the 1 MiB input buffer (lines straddle them). A line lost,
/// duplicated or reordered at any batch or buffer boundary changes the
/// output.
#[test]
fn ring_lines_in_batches_arrive_complete_and_in_order() {
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
    let filler = pseudo_random(64, 11);
    let mut input = Vec::new();
    let mut x: u64 = 99;
    for i in 0..150_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        input.extend_from_slice(format!("{i}:").as_bytes());
        let extra = (x % 40) as usize;
        input.extend(filler[..extra].iter().map(|b| b'a' + b % 26));
        input.push(b'\n');
    }
    assert!(input.len() > 3 << 20, "spans several input buffers");
    // `recv`'s output is drained while `send` runs (more than a pipe holds).
    let recv = Command::new(BIN)
        .args(["recv", &name, "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = std::thread::spawn(move || wait(recv, 120));
    let file = std::env::temp_dir().join(format!("{name}.in"));
    std::fs::write(&file, &input).unwrap();
    ok(&["send", &name, file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let out = drain.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "lines lost, repeated or reordered");
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

// --- Reuse, losses and signals (issue 8, "CLI channels") ---

fn ring_stats(name: &str) -> shmkit::channel::ring::RingStats {
    let seg = shmkit::segment::Segment::builder(name)
        .read_only()
        .open()
        .unwrap();
    shmkit::channel::ring::stats(&seg).unwrap()
}

fn pubsub_stats(name: &str) -> shmkit::channel::pubsub::PubSubStats {
    let seg = shmkit::segment::Segment::builder(name)
        .read_only()
        .open()
        .unwrap();
    shmkit::channel::pubsub::stats(&seg).unwrap()
}

/// Polls `f` until it holds (at most 20 s).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_recv(name: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["recv", name, "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn spawn_send(name: &str, file: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["send", name, "--chunk", "1000"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Five transfers through one channel, byte-identical, with the receiver
/// (even rounds) or the sender (odd rounds) started first; `alive(p)`
/// tells whether the producer (`p`) or consumer side is attached.
fn five_transfers(name: &str, alive: impl Fn(bool) -> bool) {
    for round in 0..5u64 {
        let input = pseudo_random(20_000 + 3_333 * round as usize, 11 + round);
        let file = std::env::temp_dir().join(format!("{name}.{round}.in"));
        std::fs::write(&file, &input).unwrap();
        let (recv, send);
        if round % 2 == 0 {
            recv = spawn_recv(name);
            until("the receiver", || alive(false));
            send = spawn_send(name, &file);
        } else {
            send = spawn_send(name, &file);
            until("the sender", || alive(true));
            recv = spawn_recv(name);
        }
        let s = wait(send, 30);
        let r = wait(recv, 30);
        let _ = std::fs::remove_file(&file);
        assert_ok(&format!("round {round} send"), &s);
        assert_ok(&format!("round {round} recv"), &r);
        assert_eq!(r.stdout.len(), input.len(), "round {round}");
        assert!(r.stdout == input, "round {round}: bytes differ");
    }
}

#[test]
fn ring_five_transfers_either_side_first() {
    let name = unique();
    let _g = Cleanup(name.clone());
    // 16 slots of 1000 bytes: the sender started first fills the ring and
    // waits for the receiver.
    ok(&[
        "create",
        &name,
        "--kind",
        "ring",
        "--capacity",
        "16",
        "--max-message",
        "1000",
    ]);
    use shmkit::channel::PeerState::Alive;
    five_transfers(&name, |producer| {
        let s = ring_stats(&name);
        if producer {
            s.producer == Alive
        } else {
            s.consumer == Alive
        }
    });
}

#[test]
fn pubsub_five_transfers_either_side_first() {
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
        "1000",
        "--max-subscribers",
        "2",
    ]);
    use shmkit::channel::PeerState::Alive;
    five_transfers(&name, |producer| {
        let s = pubsub_stats(&name);
        if producer {
            s.publisher == Alive
        } else {
            s.subscribers == 1
        }
    });
}

#[test]
fn drop_oldest_losses_reach_the_user() {
    let name = unique();
    let _g = Cleanup(name.clone());
    ok(&[
        "create",
        &name,
        "--kind",
        "pubsub",
        "--slots",
        "2",
        "--slot-size",
        "200",
        "--max-subscribers",
        "1",
        "--policy",
        "drop-oldest",
    ]);
    // A receiver whose stdout nobody reads yet: it stalls on the full pipe
    // while the publisher keeps going, so old messages are dropped.
    let recv = spawn_recv(&name);
    until("the subscriber", || pubsub_stats(&name).subscribers == 1);
    let total = 5000;
    let input: Vec<u8> = (0..total)
        .flat_map(|i| format!("{i:099}\n").into_bytes())
        .collect();
    let file = std::env::temp_dir().join(format!("{name}.in"));
    std::fs::write(&file, &input).unwrap();
    let send = Command::new(BIN)
        .args(["send", &name])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_ok("send", &send);
    let out = wait(recv, 30);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let received = lines.count() as u64;
    assert!(received < total, "nothing was dropped: {received} lines");
    assert_eq!(out.status.code(), Some(3), "{err}");
    let prefix = format!("shmkit: recv {name:?}: missed ");
    let missed: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|r| r.strip_suffix(" messages"))
        .unwrap_or_else(|| panic!("no missed line in {err:?}"))
        .parse()
        .unwrap();
    assert_eq!(received + missed, total, "{err}");
    // Every line received is whole and in order.
    let mut last = None;
    for l in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: u64 = std::str::from_utf8(l).unwrap().parse().unwrap();
        assert!(last.is_none_or(|p| v > p));
        last = Some(v);
    }
}

fn kill(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) of our own unreaped child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn signals_close_endpoints_cleanly() {
    use shmkit::channel::PeerState::{Alive, Closed};
    for sig in [libc::SIGINT, libc::SIGTERM] {
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
        // recv waiting for a sender.
        let recv = spawn_recv(&name);
        until("the consumer", || ring_stats(&name).consumer == Alive);
        kill(&recv, sig);
        let out = wait(recv, 10);
        assert_eq!(out.status.code(), Some(128 + sig), "{out:?}");
        assert_eq!(ring_stats(&name).consumer, Closed);

        // send blocked on its input (a pipe kept open).
        let mut send = Command::new(BIN)
            .args(["send", &name])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = send.stdin.take().unwrap();
        stdin.write_all(b"1\n").unwrap();
        until("the message", || ring_stats(&name).depth == 1);
        kill(&send, sig);
        let out = wait(send, 10);
        assert_eq!(out.status.code(), Some(128 + sig), "{out:?}");
        assert_eq!(ring_stats(&name).producer, Closed);

        // send blocked on a full ring (nobody receiving).
        let mut send = Command::new(BIN)
            .args(["send", &name])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin2 = send.stdin.take().unwrap();
        stdin2.write_all(b"2\n3\n4\n5\n6\n").unwrap();
        until("a full ring", || ring_stats(&name).depth == 4);
        kill(&send, sig);
        let out = wait(send, 10);
        assert_eq!(out.status.code(), Some(128 + sig), "{out:?}");
        assert_eq!(ring_stats(&name).producer, Closed);
        drop((stdin, stdin2));
        // The channel still works, and holds what was sent before.
        let out = ok(&["recv", &name, "--count", "4"]);
        assert_eq!(out.stdout, b"1\n2\n3\n4\n");
    }
}

#[test]
fn signals_close_pubsub_endpoints_cleanly() {
    use shmkit::channel::PeerState::{Alive, Closed};
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let name = unique();
        let _g = Cleanup(name.clone());
        ok(&[
            "create",
            &name,
            "--kind",
            "pubsub",
            "--slots",
            "2",
            "--slot-size",
            "64",
            "--max-subscribers",
            "1",
        ]);
        // send waiting for a subscriber.
        let send = Command::new(BIN)
            .args(["send", &name])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        until("the publisher", || pubsub_stats(&name).publisher == Alive);
        kill(&send, sig);
        let out = wait(send, 10);
        assert_eq!(out.status.code(), Some(128 + sig), "{out:?}");
        assert_eq!(pubsub_stats(&name).publisher, Closed);
        // recv waiting for a publisher.
        let recv = spawn_recv(&name);
        until("the subscriber", || pubsub_stats(&name).subscribers == 1);
        kill(&recv, sig);
        let out = wait(recv, 10);
        assert_eq!(out.status.code(), Some(128 + sig), "{out:?}");
        assert_eq!(pubsub_stats(&name).subscribers, 0);
    }
}
