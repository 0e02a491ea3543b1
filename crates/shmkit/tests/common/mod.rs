//! Helpers shared by the multi-process segment tests: unique names that
//! clean up after themselves, and re-executing this test binary as a peer.
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Environment variable that tells a re-executed test which role to play.
pub const ROLE: &str = "SHMKIT_TEST_ROLE";

/// A unique segment name, removed (ignoring errors) when dropped, so a
/// failing test still leaves nothing in /dev/shm.
pub struct Name(pub String);

impl Name {
    pub fn new(tag: &str) -> Name {
        static N: AtomicUsize = AtomicUsize::new(0);
        Name(format!(
            "t-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn path(&self) -> String {
        format!("/dev/shm/shmkit.{}", self.0)
    }

    pub fn exists(&self) -> bool {
        std::path::Path::new(&self.path()).exists()
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
    }
}

/// The role this process plays, if it is a re-executed peer.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Re-executes this test binary running only `test`, as `role`, with extra
/// environment variables. Stdout is piped so the parent can read replies.
pub fn spawn_peer(test: &str, role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn peer")
}

/// Waits for `child` at most `limit`, killing it if it overruns.
pub fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("peer did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects `child`'s piped stdout and stderr (a reader thread per pipe,
/// so a chatty child never blocks on a full pipe) and waits for it at most
/// `limit`, as [`wait_for`].
#[allow(dead_code)] // not every test file runs children this way
pub fn output_within(child: &mut Child, limit: Duration) -> (ExitStatus, String, String) {
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            pipe.read_to_string(&mut s).ok();
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_for(child, limit);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Reads one line the child printed to stdout (with a timeout).
pub fn read_line(child: &mut Child, limit: Duration) -> String {
    use std::io::Read;
    let out = child.stdout.as_mut().expect("piped stdout");
    let deadline = Instant::now() + limit;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        assert!(
            Instant::now() < deadline,
            "peer said nothing within {limit:?}"
        );
        match out.read(&mut byte) {
            Ok(0) => panic!(
                "peer closed stdout before a full line: {:?}",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("read from peer: {e}"),
        }
    }
    // The test harness prints its own lines to stdout too; replies start
    // with "reply:".
    let s = String::from_utf8_lossy(&line).into_owned();
    match s.find("reply:") {
        Some(at) => s[at + "reply:".len()..].to_owned(),
        None => read_line(child, deadline.saturating_duration_since(Instant::now())),
    }
}

/// Prints a reply line for the parent and flushes.
pub fn reply(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "reply:{s}").unwrap();
    out.flush().unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so both sides can agree.
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// FNV-1a 64 checksum.
pub fn checksum(buf: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in buf {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Serialises the tests of one binary that call `list()` or `gc()`: those
/// collect every due segment, so one test's collector could remove another
/// test's orphan before that test's own collector (the one under test)
/// sees it.
pub fn collectors() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
