//! Helpers shared by the channel integration tests.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Env var telling a re-executed test binary which role to play.
pub const ROLE: &str = "SHMKIT_CHANNEL_TEST_ROLE";
/// Env var with the segment name for a child.
pub const NAME: &str = "SHMKIT_CHANNEL_TEST_NAME";
/// Env var with an extra numeric argument for a child.
pub const ARG: &str = "SHMKIT_CHANNEL_TEST_ARG";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique segment name for this test process.
pub fn unique(module: &str) -> String {
    format!(
        "t-{module}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the segment when dropped, also when the test fails.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
    }
}

/// The role this process plays, if it is a re-executed child.
pub fn child_role() -> Option<(String, String, u64)> {
    let role = std::env::var(ROLE).ok()?;
    let name = std::env::var(NAME).unwrap_or_default();
    let arg = std::env::var(ARG)
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    Some((role, name, arg))
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing
/// test never leaves an orphan behind (the child also gets SIGKILL if the
/// spawning thread dies first: `PR_SET_PDEATHSIG`).
pub struct Kid(pub Child);

impl Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A command that re-executes this test binary to run `test` alone as a
/// child playing `role` on `name`, its stdout discarded; the child gets
/// SIGKILL if the spawning thread dies first (`PR_SET_PDEATHSIG`).
pub fn child_command(test: &str, role: &str, name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(ROLE, role)
    .env(NAME, name)
    .stdout(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (prctl).
    unsafe {
        cmd.pre_exec(|| {
            // Die with the parent (thread) instead of running on as an orphan.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Re-executes this test binary to run `test` as a child playing `role`.
pub fn spawn(test: &str, role: &str, name: &str, arg: u64) -> Kid {
    let mut cmd = child_command(test, role, name);
    cmd.env(ARG, arg.to_string());
    Kid(cmd.spawn().expect("spawn child"))
}

/// Waits for a child, at most `secs` seconds (then kills it and fails).
pub fn wait_child(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// FNV-1a over bytes.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A message for sequence number `seq` with `len >= 16` bytes:
/// `[seq][payload derived from seq][checksum of everything before]`.
pub fn make_message(seq: u64, len: usize, out: &mut [u8]) {
    assert!(len >= 16 && out.len() >= len);
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in &mut out[8..len - 8] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let c = checksum(&out[..len - 8]);
    out[len - 8..len].copy_from_slice(&c.to_le_bytes());
}

/// Checks a message made by [`make_message`]; returns its sequence number.
pub fn check_message(msg: &[u8]) -> u64 {
    assert!(msg.len() >= 16, "message too short: {}", msg.len());
    let n = msg.len();
    let c = u64::from_le_bytes(msg[n - 8..].try_into().unwrap());
    assert_eq!(c, checksum(&msg[..n - 8]), "torn or corrupt message");
    u64::from_le_bytes(msg[..8].try_into().unwrap())
}

/// Fast check for large payloads: sample bytes instead of hashing all.
pub fn make_large(seq: u64, out: &mut [u8]) {
    let n = out.len();
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[n - 8..].copy_from_slice(&(!seq).to_le_bytes());
    let mut i = 8;
    while i + 8 <= n - 8 {
        out[i..i + 8].copy_from_slice(&(seq ^ i as u64).to_le_bytes());
        i += 4096;
    }
}

/// Checks [`make_large`]; returns the sequence number.
pub fn check_large(msg: &[u8]) -> u64 {
    let n = msg.len();
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(msg[n - 8..].try_into().unwrap()),
        !seq,
        "torn large message"
    );
    let mut i = 8;
    while i + 8 <= n - 8 {
        assert_eq!(
            u64::from_le_bytes(msg[i..i + 8].try_into().unwrap()),
            seq ^ i as u64,
            "torn large message at {i}"
        );
        i += 4096;
    }
    seq
}

/// Whether pending futures in a tokio runtime wait through io_uring here
/// (feature `tokio` on a kernel with io_uring `FUTEX_WAIT`), rather than
/// through the waiter thread.
#[cfg(all(feature = "async", not(loom)))]
#[allow(dead_code)]
pub fn uses_uring() -> bool {
    #[cfg(feature = "tokio")]
    return shmkit::aio::uses_uring();
    #[cfg(not(feature = "tokio"))]
    false
}

/// Waits registered in this process, on either backend: futex words of
/// the waiter threads, or io_uring waits in the kernel.
#[cfg(all(feature = "async", not(loom)))]
#[allow(dead_code)]
pub fn pending_waits() -> usize {
    #[cfg(feature = "tokio")]
    let uring = shmkit::aio::uring_stats().2;
    #[cfg(not(feature = "tokio"))]
    let uring = 0;
    shmkit::aio::stats().1 + uring
}

/// `(registrations, waits in the kernel)` of the io_uring fast path;
/// zeros without the feature `tokio`.
#[cfg(all(feature = "async", not(loom)))]
#[allow(dead_code)]
pub fn uring_waits() -> (usize, usize) {
    #[cfg(feature = "tokio")]
    {
        let (_, regs, waits) = shmkit::aio::uring_stats();
        (regs, waits)
    }
    #[cfg(not(feature = "tokio"))]
    (0, 0)
}
