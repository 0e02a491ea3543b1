//! `shmkit bench`: a small built-in benchmark so anyone can measure their
//! own machine in seconds: one-way latency (half of a ping-pong round trip)
//! between two processes, for a few payload sizes, through
//!
//! - `floor`: raw shared memory, one slot per message with a stamp word,
//!   no library (the least two processes can do);
//! - `shmkit`: shmkit's SPSC ring, busy-poll, zero-copy `send_with` /
//!   `recv_with`;
//! - `pipe`: a pipe per direction; `unix-socket`: a socket pair.
//!
//! Each side writes every payload byte and checks every byte it receives.
//! Mechanisms alternate within each round. The spinning ones (floor,
//! shmkit) run pinned to CPUs 0 and 1; pipe and socket are not pinned. The full harness with more
//! scenarios and iceoryx2 is `cargo run --release -p shmkit-bench`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{Wait, WaitStrategy};
use shmkit::segment::{self, Lifetime, Segment};

use crate::util::{parse_size, table, CliError, CliResult};

/// `shmkit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Payload sizes (repeatable), e.g. `--size 8 --size 64KiB`.
    #[arg(long = "size", value_parser = parse_size, default_values = ["8", "4KiB", "64KiB"])]
    pub sizes: Vec<u64>,
    /// Round trips per mechanism, size and round.
    #[arg(long, default_value_t = 2000)]
    pub iters: u64,
    /// Rounds; mechanisms alternate within each.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Hidden: the echoing side of `shmkit bench`.
#[derive(Debug, Args)]
pub struct BenchPeerArgs {
    /// Mechanism name.
    pub mech: String,
    /// Segment name (shared memory mechanisms).
    pub name: String,
    /// Payload bytes.
    pub size: usize,
    /// Round trips to serve.
    pub count: u64,
}

const MECHS: [&str; 4] = ["floor", "shmkit", "pipe", "unix-socket"];
const TIMEOUT: Duration = Duration::from_secs(30);
const REPLY: u64 = 1 << 40;

/// One side of a bidirectional link. Payloads are 64-bit words `seq + i`,
/// written in full by `send` and summed in full by `recv`.
trait Link {
    fn send(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String>;
    fn recv(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String>;
}

/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
unsafe fn fill(dst: *mut u8, len: usize, seq: u64) {
    for i in 0..len / 8 {
        // SAFETY: `i * 8 + 8 <= len`; the caller guarantees `len` bytes.
        unsafe {
            dst.add(i * 8)
                .cast::<u64>()
                .write_unaligned(seq.wrapping_add(i as u64).to_le())
        };
    }
}

fn check(buf: &[u8], seq: u64) -> Result<(), String> {
    let mut sum = 0u64;
    for c in buf.chunks_exact(8) {
        sum = sum.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
    let n = (buf.len() / 8) as u64;
    let tri = if n % 2 == 0 {
        (n / 2).wrapping_mul(n.wrapping_sub(1))
    } else {
        n.wrapping_mul(n.wrapping_sub(1) / 2)
    };
    if sum == n.wrapping_mul(seq).wrapping_add(tri) {
        Ok(())
    } else {
        Err(format!("message {seq}: payload checksum mismatch"))
    }
}

/// Pure spin with a deadline check every 4096 polls (as shmkit's
/// `WaitStrategy::BusyPoll` does).
fn spin_until(deadline: Instant, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    loop {
        for _ in 0..4096 {
            if ready() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for the peer".into());
        }
    }
}

/// The floor: per direction two slots of `[stamp u64][payload]`; stamp
/// `pos` = free for message `pos`, `pos + 1` = holds it, the reader frees
/// it with `pos + 2`.
struct Floor {
    seg: Segment,
    stride: usize,
    tx_off: usize,
    rx_off: usize,
    tx_pos: u64,
    rx_pos: u64,
}

impl Floor {
    fn stride(size: usize) -> usize {
        (8 + size).div_ceil(64) * 64
    }

    fn create(name: &str, size: usize) -> Result<Floor, String> {
        let stride = Floor::stride(size);
        let seg = Segment::builder(name)
            .size((4 * stride) as u64)
            .lifetime(Lifetime::UntilLastDetach)
            .init(|d| {
                for k in 0..4 {
                    let v = (k % 2) as u64;
                    d[k * stride..k * stride + 8].copy_from_slice(&v.to_ne_bytes());
                }
                Ok(())
            })
            .create()
            .map_err(|e| e.to_string())?;
        Floor::new(seg, size, true)
    }

    fn open(name: &str, size: usize) -> Result<Floor, String> {
        Floor::new(Segment::open(name).map_err(|e| e.to_string())?, size, false)
    }

    fn new(seg: Segment, size: usize, parent: bool) -> Result<Floor, String> {
        let stride = Floor::stride(size);
        if seg.len() < 4 * stride {
            return Err("floor segment too small".into());
        }
        let (a, b) = (0, 2 * stride);
        let (tx_off, rx_off) = if parent { (a, b) } else { (b, a) };
        Ok(Floor {
            seg,
            stride,
            tx_off,
            rx_off,
            tx_pos: 0,
            rx_pos: 0,
        })
    }

    fn slot(&self, off: usize, pos: u64) -> (*mut u8, &std::sync::atomic::AtomicU64) {
        // SAFETY: `off + (pos % 2) * stride + stride <= 4 * stride <= len`
        // (checked in `new`); the mapping lives as long as `self.seg`.
        let p = unsafe {
            self.seg
                .as_ptr()
                .add(off + (pos % 2) as usize * self.stride)
        };
        // SAFETY: 64-byte aligned (page-aligned base, stride a multiple of
        // 64) and only ever accessed atomically by both processes.
        (p, unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }
}

impl Link for Floor {
    fn send(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String> {
        let pos = self.tx_pos;
        let (p, stamp) = self.slot(self.tx_off, pos);
        // Acquire: pairs with the reader's Release freeing the slot.
        spin_until(deadline, || stamp.load(Ordering::Acquire) == pos)?;
        // SAFETY: payload area inside the slot (`8 + len <= stride`); the
        // reader does not touch it until the Release below.
        unsafe { fill(p.add(8), len, seq) };
        // Release: publishes the payload; pairs with the reader's Acquire.
        stamp.store(pos + 1, Ordering::Release);
        self.tx_pos += 1;
        Ok(())
    }

    fn recv(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String> {
        let pos = self.rx_pos;
        let (p, stamp) = self.slot(self.rx_off, pos);
        // Acquire: pairs with the writer's Release; the payload is complete.
        spin_until(deadline, || stamp.load(Ordering::Acquire) == pos + 1)?;
        // SAFETY: inside the slot; the writer leaves it alone until freed.
        let r = check(unsafe { std::slice::from_raw_parts(p.add(8), len) }, seq);
        // Release: our reads happen before the writer reuses the slot.
        stamp.store(pos + 2, Ordering::Release);
        self.rx_pos += 1;
        r
    }
}

/// shmkit's SPSC ring, one per direction, `WaitStrategy::BusyPoll`,
/// zero-copy `send_with` / `recv_with` with a deadline.
struct ShmRing {
    tx: Sender,
    rx: Receiver,
}

impl ShmRing {
    fn names(name: &str) -> (String, String) {
        (format!("{name}-down"), format!("{name}-up"))
    }

    fn create(name: &str, size: usize) -> Result<ShmRing, String> {
        let (down, up) = ShmRing::names(name);
        let opts = RingOptions::new(4, size as u64).lifetime(Lifetime::UntilLastDetach);
        let tx = Sender::create(&down, &opts).map_err(|e| e.to_string())?;
        let rx = Receiver::create(&up, &opts).map_err(|e| e.to_string())?;
        Ok(ShmRing::spinning(tx, rx))
    }

    fn open(name: &str) -> Result<ShmRing, String> {
        let (down, up) = ShmRing::names(name);
        let rx = Receiver::open(&down).map_err(|e| e.to_string())?;
        let tx = Sender::open(&up).map_err(|e| e.to_string())?;
        Ok(ShmRing::spinning(tx, rx))
    }

    fn spinning(mut tx: Sender, mut rx: Receiver) -> ShmRing {
        tx.set_wait_strategy(WaitStrategy::BusyPoll);
        rx.set_wait_strategy(WaitStrategy::BusyPoll);
        ShmRing { tx, rx }
    }

    fn remove(name: &str) {
        let (down, up) = ShmRing::names(name);
        let _ = segment::remove(&down);
        let _ = segment::remove(&up);
    }
}

impl Link for ShmRing {
    fn send(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String> {
        self.tx
            .send_with(len, Wait::Until(deadline), |buf| {
                // SAFETY: `buf` is the reserved slot, valid for its length.
                unsafe { fill(buf.as_mut_ptr(), buf.len(), seq) }
            })
            .map_err(|e| format!("ring send: {e}"))
    }

    fn recv(&mut self, len: usize, seq: u64, deadline: Instant) -> Result<(), String> {
        self.rx
            .recv_with(Wait::Until(deadline), |b| {
                if b.len() == len {
                    check(b, seq)
                } else {
                    Err(format!("ring message of {} B, expected {len}", b.len()))
                }
            })
            .map_err(|e| format!("ring recv: {e}"))?
    }
}

/// Pipe or socket: one `write` per message, `read_exact` on the other end.
struct Stream {
    rd: File,
    wr: File,
    buf: Vec<u8>,
}

impl Link for Stream {
    fn send(&mut self, len: usize, seq: u64, _deadline: Instant) -> Result<(), String> {
        let b = &mut self.buf[..len];
        // SAFETY: `b` is valid for `len` bytes.
        unsafe { fill(b.as_mut_ptr(), len, seq) };
        self.wr.write_all(b).map_err(|e| format!("write: {e}"))
    }

    fn recv(&mut self, len: usize, seq: u64, _deadline: Instant) -> Result<(), String> {
        let b = &mut self.buf[..len];
        self.rd.read_exact(b).map_err(|e| format!("read: {e}"))?;
        check(b, seq)
    }
}

/// A pipe, both ends close-on-exec: `(read, write)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded: both descriptors are fresh and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spinning mechanisms need a core per process: they run with the parent on
/// CPU 0 and the peer on CPU 1; blocking ones are left to the scheduler.
fn spins(mech: &str) -> bool {
    matches!(mech, "floor" | "shmkit")
}

/// Pins this process to `cpu`, or with `None` to every online CPU. Does
/// nothing on a one-CPU machine.
fn set_affinity(cpu: Option<usize>) -> Result<(), String> {
    // SAFETY: plain libc query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if n < 2 {
        return Ok(());
    }
    // SAFETY: `cpu_set_t` is a plain bitmask; all-zero is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in 0..n {
        if cpu.is_none_or(|p| p % n == c) {
            // SAFETY: `c < n <= CPU_SETSIZE`; `set` is a valid cpu_set_t.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: plain syscall with a valid pointer and its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a counter; only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("bench-{}-{n}", std::process::id())
}

/// Runs `count` round trips as the measuring side; returns one-way ns.
fn measure(link: &mut dyn Link, size: usize, count: u64, warmup: u64) -> Result<Vec<u64>, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        link.send(size, i, deadline)?;
        link.recv(size, i + REPLY, deadline)?;
        if i >= warmup {
            out.push(t0.elapsed().as_nanos() as u64 / 2);
        }
    }
    Ok(out)
}

fn spawn_peer(
    mech: &str,
    name: &str,
    size: usize,
    count: u64,
    io: Option<(OwnedFd, OwnedFd)>,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench-peer",
        mech,
        name,
        &size.to_string(),
        &count.to_string(),
    ])
    .stderr(Stdio::inherit());
    match io {
        Some((i, o)) => cmd.stdin(Stdio::from(i)).stdout(Stdio::from(o)),
        None => cmd.stdin(Stdio::null()).stdout(Stdio::null()),
    };
    cmd.spawn().map_err(|e| format!("spawn: {e}"))
}

/// One (mechanism, size) batch: builds the link, spawns the echoing peer,
/// measures, reaps. A watchdog kills a peer that outlives the timeout (our
/// blocking read then sees EOF).
fn batch(mech: &str, size: usize, iters: u64) -> Result<Vec<u64>, String> {
    let warmup = (iters / 10).max(4);
    let name = unique_name();
    set_affinity(spins(mech).then_some(0))?;
    let total = iters + warmup;
    let (mut link, child): (Box<dyn Link>, Child) = match mech {
        "floor" => {
            let l = Floor::create(&name, size)?;
            let c = spawn_peer(mech, &name, size, total, None)?;
            (Box::new(l), c)
        }
        "shmkit" => {
            let l = ShmRing::create(&name, size)?;
            let c = spawn_peer(mech, &name, size, total, None)?;
            (Box::new(l), c)
        }
        "pipe" => {
            let (down_r, down_w) = pipe()?;
            let (up_r, up_w) = pipe()?;
            let c = spawn_peer(mech, &name, size, total, Some((down_r, up_w)))?;
            let l = Stream {
                rd: File::from(up_r),
                wr: File::from(down_w),
                buf: vec![0; size],
            };
            (Box::new(l), c)
        }
        "unix-socket" => {
            let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
            let theirs2 = theirs.try_clone().map_err(|e| e.to_string())?;
            let c = spawn_peer(
                mech,
                &name,
                size,
                total,
                Some((theirs.into(), theirs2.into())),
            )?;
            let w = mine.try_clone().map_err(|e| e.to_string())?;
            let l = Stream {
                rd: File::from(OwnedFd::from(mine)),
                wr: File::from(OwnedFd::from(w)),
                buf: vec![0; size],
            };
            (Box::new(l), c)
        }
        other => return Err(format!("unknown mechanism {other}")),
    };
    let child = Arc::new(Mutex::new(child));
    let (cancel, rx) = mpsc::channel::<()>();
    let dog = {
        let child = Arc::clone(&child);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TIMEOUT) {
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                }
            }
        })
    };
    let result = measure(link.as_mut(), size, iters, warmup);
    drop(link);
    let status = {
        let mut c = child.lock().map_err(|_| "lock poisoned")?;
        if result.is_err() {
            let _ = c.kill();
        }
        c.wait()
    };
    drop(cancel);
    let _ = dog.join();
    let _ = segment::remove(&name);
    ShmRing::remove(&name);
    let out = result?;
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(format!("peer failed: {s}")),
        Err(e) => Err(format!("wait: {e}")),
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

/// `shmkit bench`.
pub fn bench(args: &BenchArgs) -> CliResult {
    if args.iters == 0 || args.rounds == 0 {
        return Err(CliError::usage("--iters and --rounds must be at least 1"));
    }
    let mut sizes = Vec::new();
    for &s in &args.sizes {
        if s < 8 || s % 8 != 0 || s > 64 << 20 {
            return Err(CliError::usage(format!(
                "--size {s}: must be a multiple of 8 between 8 B and 64 MiB"
            )));
        }
        sizes.push(s as usize);
    }
    let mut samples: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); MECHS.len()]; sizes.len()];
    for round in 0..args.rounds as usize {
        for (si, &size) in sizes.iter().enumerate() {
            // Fewer round trips for big payloads: seconds, not minutes.
            let iters = (args.iters * 4096 / size.max(4096) as u64).max(20);
            for k in 0..MECHS.len() {
                let m = (k + round + si) % MECHS.len();
                let v = batch(MECHS[m], size, iters)
                    .map_err(|e| CliError::fail(format!("bench {} {size} B: {e}", MECHS[m])))?;
                samples[si][m].extend(v);
            }
        }
    }
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (si, &size) in sizes.iter().enumerate() {
        let mut floor_p50 = 0;
        for (m, mech) in MECHS.iter().enumerate() {
            let v = &mut samples[si][m];
            v.sort_unstable();
            let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
            if m == 0 {
                floor_p50 = p50.max(1);
            }
            let ratio = p50 as f64 / floor_p50 as f64;
            rows.push(vec![
                crate::util::human_size(size as u64),
                mech.to_string(),
                fmt_ns(p50),
                fmt_ns(p99),
                format!("{ratio:.2}x"),
            ]);
            json_rows.push(json!({
                "size": size, "mechanism": mech, "samples": v.len(),
                "p50_ns": p50, "p99_ns": p99, "p50_vs_floor": ratio,
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(json_rows));
    } else {
        print!(
            "{}",
            table(&["SIZE", "MECHANISM", "P50", "P99", "VS FLOOR"], &rows)
        );
        eprintln!(
            "one-way latency = half a ping-pong round trip between two processes; \
             ratio = p50 time / floor p50 time"
        );
    }
    Ok(())
}

/// The hidden peer: echoes `count` messages, checking each.
pub fn bench_peer(args: &BenchPeerArgs) -> CliResult {
    let deadline = Instant::now() + TIMEOUT;
    set_affinity(spins(&args.mech).then_some(1)).map_err(CliError::fail)?;
    let mut link: Box<dyn Link> = match args.mech.as_str() {
        "floor" => Box::new(Floor::open(&args.name, args.size).map_err(CliError::fail)?),
        "shmkit" => Box::new(ShmRing::open(&args.name).map_err(CliError::fail)?),
        "pipe" | "unix-socket" => Box::new(Stream {
            rd: File::from(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(CliError::from)?,
            ),
            wr: File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(CliError::from)?,
            ),
            buf: vec![0; args.size],
        }),
        other => return Err(CliError::usage(format!("unknown mechanism {other}"))),
    };
    for i in 0..args.count {
        link.recv(args.size, i, deadline).map_err(CliError::fail)?;
        link.send(args.size, i + REPLY, deadline)
            .map_err(CliError::fail)?;
    }
    Ok(())
}
