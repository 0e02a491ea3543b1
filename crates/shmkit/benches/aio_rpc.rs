//! Async wake and request/response round trips, two processes, against
//! baselines measured in the same run.
//!
//! ```text
//! cargo bench -p shmkit --features tokio --bench aio_rpc
//! SHMKIT_BENCH_QUICK=1 cargo bench -p shmkit --features tokio --bench aio_rpc
//! ```
//!
//! Every case is a ping-pong between this process and a child (this binary
//! re-executed): the parent sends N bytes, the child answers N bytes, the
//! parent measures the round trip. Cases:
//!
//! - `ring/blocking-sleep`: byte ring, both ends `WaitStrategy::Sleep`
//!   (every hand-off is a futex wake of a sleeping thread): the blocking
//!   wake the async one is compared with;
//! - `ring/blocking-default`: the same with the default spin-then-sleep;
//! - `ring/async-sleep`: both ends tokio (current-thread runtime) with
//!   `recv_async`/`send_async`, `WaitStrategy::Sleep` (no spin): each
//!   hand-off is an io_uring `FUTEX_WAIT` completing in the runtime's own
//!   `epoll_wait` (the feature `tokio` fast path); compared with
//!   `ring/blocking-sleep`;
//! - `ring/async-default`: the same with the default strategy (the future
//!   spins the same 200 times before it goes pending); compared with
//!   `ring/blocking-default`;
//! - `ring/async-sleep-thread`, `ring/async-default-thread`: the same two
//!   with the fast path off (`aio::set_uring(false)`, and
//!   `SHMKIT_AIO_URING=0` in the child): each hand-off goes through the
//!   waiter thread (futex_waitv) and then the executor's wake, as with any
//!   executor other than tokio;
//! - `ring/async-sleep-mt`: `ring/async-sleep` with both ends in the
//!   `block_on` body of a two-worker multi-threaded runtime (as
//!   `#[tokio::main]` runs `main`): not a worker thread, so the waiter
//!   thread serves it;
//! - `ring/async-sleep-mt-task`, `ring/async-sleep-mt-task-thread`: the
//!   same in a task spawned on that runtime (on a worker), io_uring and
//!   waiter thread;
//! - `wake/tokio-notify`: two tokio current-thread runtimes on two threads
//!   of this process ping-ponging through `tokio::sync::Notify`: the cost
//!   of waking an executor from another thread, which every async
//!   hand-off pays on top of the futex wake;
//! - `uds/tokio`: a tokio `UnixStream` ping-pong (both ends tokio);
//! - `rpc/call`: `Client::call` against a child `Server::serve`, 8 B and
//!   1 MiB requests and replies, default strategy (both spin, then sleep);
//! - `rpc/call-sleep`: the same at 8 B with `WaitStrategy::Sleep` on both
//!   sides (compared with `ring/blocking-sleep`);
//! - `uds/reqrep`: the same request/response over a blocking
//!   `std::os::unix::net::UnixStream` with a length prefix.
//!
//! Printed: criterion's estimates, then a table of round-trip p50/p99/mean
//! from per-call samples with the ratios the issue asks about (by p50 and
//! by mean).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::Criterion;
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::rpc::{Client, RpcOptions, Server};
use shmkit::channel::WaitStrategy;

const ROLE: &str = "SHMKIT_BENCH_ROLE";
const NAME: &str = "SHMKIT_BENCH_NAME";
const SIZE: &str = "SHMKIT_BENCH_SIZE";

fn quick() -> bool {
    std::env::var_os("SHMKIT_BENCH_QUICK").is_some()
}

fn name(tag: &str) -> String {
    format!("bench-aio-{tag}-{}", std::process::id())
}

fn spawn(role: &str, name: &str, size: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(NAME, name)
        .env(SIZE, size.to_string())
        // The waiter-thread cases: the child's fast path off too.
        .env(
            "SHMKIT_AIO_URING",
            if role.ends_with("-thread") { "0" } else { "1" },
        )
        .spawn()
        .expect("spawn bench child")
}

/// The runtime of an async ring case: multi-threaded (two workers, the
/// `#[tokio::main]` default) for the `-mt` roles, else current-thread.
fn runtime_for(role: &str) -> tokio::runtime::Runtime {
    if role.contains("-mt") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        current_thread()
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}.sock"))
}

fn write_frame(s: &mut UnixStream, buf: &[u8]) {
    s.write_all(&(buf.len() as u64).to_le_bytes()).unwrap();
    s.write_all(buf).unwrap();
}

fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> bool {
    let mut len = [0u8; 8];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    buf.resize(u64::from_le_bytes(len) as usize, 0);
    s.read_exact(buf).is_ok()
}

/// The child's ends of a ring case, with the case's wait strategy.
fn open_ring(role: &str, name: &str) -> (Receiver, Sender) {
    let mut rx = Receiver::open(&format!("{name}.ping")).unwrap();
    let mut tx = Sender::open(&format!("{name}.pong")).unwrap();
    if role.contains("sleep") {
        rx.set_wait_strategy(WaitStrategy::Sleep);
        tx.set_wait_strategy(WaitStrategy::Sleep);
    }
    (rx, tx)
}

/// The echoing side of each case.
fn child(role: &str) {
    let name = std::env::var(NAME).unwrap();
    let size: usize = std::env::var(SIZE).unwrap().parse().unwrap();
    match role {
        "ring-sleep" | "ring-default" => {
            let (mut rx, mut tx) = open_ring(role, &name);
            while let Ok(m) = rx.recv() {
                if tx.send(&m).is_err() {
                    break;
                }
            }
        }
        "ring-async-sleep"
        | "ring-async-default"
        | "ring-async-sleep-thread"
        | "ring-async-default-thread"
        | "ring-async-sleep-mt" => runtime_for(role).block_on(async {
            let (mut rx, mut tx) = open_ring(role, &name);
            while let Ok(m) = rx.recv_async().await {
                if tx.send_async(&m).await.is_err() {
                    break;
                }
            }
        }),
        "ring-async-sleep-mt-task" | "ring-async-sleep-mt-task-thread" => {
            let (mut rx, mut tx) = open_ring(role, &name);
            runtime_for(role).block_on(async {
                tokio::spawn(async move {
                    while let Ok(m) = rx.recv_async().await {
                        if tx.send_async(&m).await.is_err() {
                            break;
                        }
                    }
                })
                .await
                .unwrap()
            })
        }
        "uds-tokio" => current_thread().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::UnixStream::connect(socket_path(&name))
                .await
                .unwrap();
            let mut buf = vec![0u8; size];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }),
        "rpc-server" | "rpc-server-sleep" => {
            let strategy = if role.ends_with("sleep") {
                WaitStrategy::Sleep
            } else {
                WaitStrategy::default()
            };
            let mut s = Server::create(
                &name,
                &RpcOptions::new()
                    .clients(1)
                    .max_request(size as u64)
                    .max_reply(size as u64)
                    .remove_on_drop(false)
                    .wait_strategy(strategy),
            )
            .unwrap();
            // Reply with as many bytes as the request, read in place and
            // written in place (zero-copy on both sides).
            loop {
                let (t, n) = s
                    .recv_with(shmkit::channel::Wait::Forever, |r| {
                        std::hint::black_box(r.iter().map(|&b| u64::from(b)).sum::<u64>());
                        r.len()
                    })
                    .unwrap();
                s.reply_with(t, n, |b| b.fill(1)).unwrap();
            }
        }
        "uds-reqrep" => {
            let mut s = UnixStream::connect(socket_path(&name)).unwrap();
            let mut buf = Vec::new();
            while read_frame(&mut s, &mut buf) {
                write_frame(&mut s, &buf);
            }
        }
        r => panic!("unknown role {r}"),
    }
}

/// One ping-pong partner: `round_trip` does one and times it.
trait Case {
    fn round_trip(&mut self) -> Duration;

    /// `n` round trips, each timed. The async cases override it to run
    /// them all in one `block_on` (as an async program would), so that
    /// entering the runtime for every round trip is not counted.
    fn round_trips(&mut self, n: u64) -> Vec<Duration> {
        (0..n).map(|_| self.round_trip()).collect()
    }
}

struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct RingCase {
    tx: Sender,
    rx: Receiver,
    msg: Vec<u8>,
    _kid: Kid,
    name: String,
}

impl RingCase {
    fn new(role: &str, size: usize) -> RingCase {
        let name = name(role);
        let opts = RingOptions::new(4, size as u64);
        let mut tx = Sender::create(&format!("{name}.ping"), &opts).unwrap();
        let mut rx = Receiver::create(&format!("{name}.pong"), &opts).unwrap();
        if role.contains("sleep") {
            tx.set_wait_strategy(WaitStrategy::Sleep);
            rx.set_wait_strategy(WaitStrategy::Sleep);
        }
        let kid = Kid(spawn(role, &name, size));
        RingCase {
            tx,
            rx,
            msg: vec![7; size],
            _kid: kid,
            name,
        }
    }
}

impl Drop for RingCase {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&format!("{}.ping", self.name));
        let _ = shmkit::segment::remove(&format!("{}.pong", self.name));
    }
}

impl Case for RingCase {
    fn round_trip(&mut self) -> Duration {
        let t0 = Instant::now();
        self.tx.send(&self.msg).unwrap();
        let m = self.rx.recv().unwrap();
        let d = t0.elapsed();
        assert_eq!(m.len(), self.msg.len());
        d
    }
}

struct AsyncRingCase {
    /// `None` only while a spawned task holds it (`spawn`).
    inner: Option<RingCase>,
    /// Run the round trips in a spawned task (on a worker thread of a
    /// multi-threaded runtime) instead of `block_on`'s own thread.
    spawn: bool,
    rt: tokio::runtime::Runtime,
    /// Whether this case uses the io_uring fast path (else the waiter
    /// thread); the child gets the same through its role.
    uring: bool,
}

impl Case for AsyncRingCase {
    fn round_trip(&mut self) -> Duration {
        self.round_trips(1)[0]
    }

    fn round_trips(&mut self, n: u64) -> Vec<Duration> {
        shmkit::aio::set_uring(self.uring);
        let mut c = self.inner.take().expect("not held by a task");
        let run = async move {
            let mut out = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t0 = Instant::now();
                c.tx.send_async(&c.msg).await.unwrap();
                let m = c.rx.recv_async().await.unwrap();
                out.push(t0.elapsed());
                assert_eq!(m.len(), c.msg.len());
            }
            (c, out)
        };
        let (c, out) = if self.spawn {
            self.rt.block_on(async { tokio::spawn(run).await.unwrap() })
        } else {
            self.rt.block_on(run)
        };
        self.inner = Some(c);
        out
    }
}

/// Two current-thread runtimes on two threads, ping-ponging through two
/// `Notify`s: each round trip is two cross-thread executor wakes.
struct NotifyCase {
    rt: tokio::runtime::Runtime,
    ping: std::sync::Arc<tokio::sync::Notify>,
    pong: std::sync::Arc<tokio::sync::Notify>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peer: Option<std::thread::JoinHandle<()>>,
}

impl NotifyCase {
    fn new() -> NotifyCase {
        use std::sync::Arc;
        let ping = Arc::new(tokio::sync::Notify::new());
        let pong = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peer = {
            let (ping, pong, stop) = (ping.clone(), pong.clone(), stop.clone());
            std::thread::spawn(move || {
                current_thread().block_on(async {
                    loop {
                        ping.notified().await;
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        pong.notify_one();
                    }
                })
            })
        };
        NotifyCase {
            rt: current_thread(),
            ping,
            pong,
            stop,
            peer: Some(peer),
        }
    }
}

impl Drop for NotifyCase {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.ping.notify_one();
        if let Some(p) = self.peer.take() {
            let _ = p.join();
        }
    }
}

impl Case for NotifyCase {
    fn round_trip(&mut self) -> Duration {
        self.round_trips(1)[0]
    }

    fn round_trips(&mut self, n: u64) -> Vec<Duration> {
        let (ping, pong) = (&self.ping, &self.pong);
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t0 = Instant::now();
                ping.notify_one();
                pong.notified().await;
                out.push(t0.elapsed());
            }
            out
        })
    }
}

struct TokioUdsCase {
    rt: tokio::runtime::Runtime,
    s: tokio::net::UnixStream,
    msg: Vec<u8>,
    _kid: Kid,
}

impl TokioUdsCase {
    fn new(size: usize) -> TokioUdsCase {
        let name = name("uds-tokio");
        let path = socket_path(&name);
        let _ = std::fs::remove_file(&path);
        let rt = current_thread();
        let listener = rt.block_on(async { tokio::net::UnixListener::bind(&path).unwrap() });
        let kid = Kid(spawn("uds-tokio", &name, size));
        let s = rt.block_on(async { listener.accept().await.unwrap().0 });
        let _ = std::fs::remove_file(&path);
        TokioUdsCase {
            rt,
            s,
            msg: vec![7; size],
            _kid: kid,
        }
    }
}

impl Case for TokioUdsCase {
    fn round_trip(&mut self) -> Duration {
        self.round_trips(1)[0]
    }

    fn round_trips(&mut self, n: u64) -> Vec<Duration> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (s, msg) = (&mut self.s, &mut self.msg);
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t0 = Instant::now();
                s.write_all(msg).await.unwrap();
                s.read_exact(msg).await.unwrap();
                out.push(t0.elapsed());
            }
            out
        })
    }
}

struct RpcCase {
    c: Client,
    size: usize,
    _kid: Kid,
    name: String,
}

impl RpcCase {
    /// `sleep`: server and client wait with `WaitStrategy::Sleep`.
    fn new(size: usize, sleep: bool) -> RpcCase {
        let name = name(&format!("rpc{size}{}", if sleep { "s" } else { "" }));
        let role = if sleep {
            "rpc-server-sleep"
        } else {
            "rpc-server"
        };
        let kid = Kid(spawn(role, &name, size));
        let t0 = Instant::now();
        let c = loop {
            match Client::connect(&name) {
                Ok(c) => break c,
                Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        };
        let mut c = c;
        if sleep {
            c.set_wait_strategy(WaitStrategy::Sleep);
        }
        RpcCase {
            c,
            size,
            _kid: kid,
            name,
        }
    }
}

impl Drop for RpcCase {
    fn drop(&mut self) {
        let _ = Server::remove(&self.name);
    }
}

impl Case for RpcCase {
    fn round_trip(&mut self) -> Duration {
        let t0 = Instant::now();
        let n = self
            .c
            .call_with(
                self.size,
                shmkit::channel::Wait::Forever,
                |b| b.fill(7),
                |r| std::hint::black_box(r.iter().map(|&b| u64::from(b)).sum::<u64>()),
            )
            .unwrap();
        let d = t0.elapsed();
        assert_eq!(n, self.size as u64);
        d
    }
}

struct UdsReqRepCase {
    s: UnixStream,
    msg: Vec<u8>,
    buf: Vec<u8>,
    _kid: Kid,
}

impl UdsReqRepCase {
    fn new(size: usize) -> UdsReqRepCase {
        let name = name("uds-reqrep");
        let path = socket_path(&name);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let kid = Kid(spawn("uds-reqrep", &name, size));
        let (s, _) = listener.accept().unwrap();
        let _ = std::fs::remove_file(&path);
        UdsReqRepCase {
            s,
            msg: vec![7; size],
            buf: Vec::new(),
            _kid: kid,
        }
    }
}

impl Case for UdsReqRepCase {
    fn round_trip(&mut self) -> Duration {
        let t0 = Instant::now();
        write_frame(&mut self.s, &self.msg);
        assert!(read_frame(&mut self.s, &mut self.buf));
        let d = t0.elapsed();
        std::hint::black_box(self.buf.iter().map(|&b| u64::from(b)).sum::<u64>());
        d
    }
}

fn make(id: &str) -> Box<dyn Case> {
    match id {
        "ring/blocking-sleep/8" => Box::new(RingCase::new("ring-sleep", 8)),
        "ring/blocking-default/8" => Box::new(RingCase::new("ring-default", 8)),
        "ring/async-sleep/8"
        | "ring/async-default/8"
        | "ring/async-sleep-thread/8"
        | "ring/async-default-thread/8"
        | "ring/async-sleep-mt/8"
        | "ring/async-sleep-mt-task/8"
        | "ring/async-sleep-mt-task-thread/8" => {
            let role = id.replace("ring/", "ring-").replace("/8", "");
            Box::new(AsyncRingCase {
                inner: Some(RingCase::new(&role, 8)),
                spawn: role.contains("-task"),
                rt: runtime_for(&role),
                uring: !id.contains("-thread"),
            })
        }
        "wake/tokio-notify" => Box::new(NotifyCase::new()),
        "uds/tokio/8" => Box::new(TokioUdsCase::new(8)),
        "rpc/call/8" => Box::new(RpcCase::new(8, false)),
        "rpc/call-sleep/8" => Box::new(RpcCase::new(8, true)),
        "rpc/call/1MiB" => Box::new(RpcCase::new(1 << 20, false)),
        "uds/reqrep/8" => Box::new(UdsReqRepCase::new(8)),
        "uds/reqrep/1MiB" => Box::new(UdsReqRepCase::new(1 << 20)),
        _ => unreachable!(),
    }
}

const CASES: [&str; 16] = [
    "ring/blocking-sleep/8",
    "ring/blocking-default/8",
    "ring/async-sleep/8",
    "ring/async-default/8",
    "ring/async-sleep-thread/8",
    "ring/async-default-thread/8",
    "ring/async-sleep-mt/8",
    "ring/async-sleep-mt-task/8",
    "ring/async-sleep-mt-task-thread/8",
    "wake/tokio-notify",
    "uds/tokio/8",
    "rpc/call/8",
    "uds/reqrep/8",
    "rpc/call/1MiB",
    "uds/reqrep/1MiB",
    "rpc/call-sleep/8",
];

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(if quick() { 200 } else { 500 }))
        .measurement_time(Duration::from_secs(if quick() { 1 } else { 3 }))
        .sample_size(20)
        .configure_from_args();
    // (id, p50 µs, p99 µs, mean µs)
    let mut rows: Vec<(&str, f64, f64, f64)> = Vec::new();
    // SHMKIT_BENCH_ONLY=ring: only the cases whose id contains "ring".
    let only = std::env::var("SHMKIT_BENCH_ONLY").unwrap_or_default();
    // SHMKIT_BENCH_SAMPLES=N: no criterion, N timed round trips per case
    // (for `strace -c` / `perf` counts per round trip).
    let samples: Option<usize> = std::env::var("SHMKIT_BENCH_SAMPLES")
        .ok()
        .map(|v| v.parse().expect("SHMKIT_BENCH_SAMPLES: a number"));
    for id in CASES.into_iter().filter(|id| id.contains(only.as_str())) {
        let mut case = make(id);
        if samples.is_none() {
            c.bench_function(id, |b| {
                b.iter_custom(|iters| case.round_trips(iters).into_iter().sum())
            });
        }
        let n = samples.unwrap_or(if quick() || id.ends_with("MiB") {
            2_000
        } else {
            20_000
        });
        let mut s: Vec<f64> = case
            .round_trips(n as u64)
            .into_iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        s.sort_by(f64::total_cmp);
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        rows.push((id, s[s.len() / 2], s[s.len() * 99 / 100], mean));
    }
    c.final_summary();
    println!(
        "\n== round trip (µs, {} samples per case after criterion) ==",
        if quick() {
            "2,000"
        } else {
            "20,000 (2,000 at 1 MiB)"
        }
    );
    for (id, p50, p99, mean) in &rows {
        println!("{id:<26} p50 {p50:>10.2}  p99 {p99:>10.2}  mean {mean:>10.2}");
    }
    let p50 = |id: &str| rows.iter().find(|r| r.0 == id).map_or(f64::NAN, |r| r.1);
    let mean = |id: &str| rows.iter().find(|r| r.0 == id).map_or(f64::NAN, |r| r.3);
    println!("\n== ratios (p50, then mean; NaN: a case was filtered out) ==");
    let floor = |m: &dyn Fn(&str) -> f64| {
        (m("ring/blocking-sleep/8") + m("wake/tokio-notify")) / m("ring/blocking-sleep/8")
    };
    // (what, numerator case, denominator case, goal)
    let ratios: [(&str, &str, &str, &str); 10] = [
        (
            "async wake / blocking wake, no spin (async-sleep / blocking-sleep)",
            "ring/async-sleep/8",
            "ring/blocking-sleep/8",
            " (goal <= 1.3x)",
        ),
        (
            "async wake / blocking wake, spin (async-default / blocking-default)",
            "ring/async-default/8",
            "ring/blocking-default/8",
            " (goal <= 1.3x)",
        ),
        (
            "waiter thread, no spin (async-sleep-thread / blocking-sleep)",
            "ring/async-sleep-thread/8",
            "ring/blocking-sleep/8",
            "",
        ),
        (
            "waiter thread, spin (async-default-thread / blocking-default)",
            "ring/async-default-thread/8",
            "ring/blocking-default/8",
            "",
        ),
        (
            "async shmkit (sleep) / tokio UnixStream",
            "ring/async-sleep/8",
            "uds/tokio/8",
            "",
        ),
        (
            "rpc 8 B / ring ping-pong (blocking-default)",
            "rpc/call/8",
            "ring/blocking-default/8",
            " (goal <= 2x)",
        ),
        (
            "rpc 8 B / ring ping-pong (blocking-sleep)",
            "rpc/call/8",
            "ring/blocking-sleep/8",
            "",
        ),
        (
            "rpc 8 B, server and client sleeping / ring (blocking-sleep)",
            "rpc/call-sleep/8",
            "ring/blocking-sleep/8",
            " (goal <= 2x)",
        ),
        (
            "rpc 8 B / Unix-socket request/response",
            "rpc/call/8",
            "uds/reqrep/8",
            "",
        ),
        (
            "rpc 1 MiB / Unix-socket request/response",
            "rpc/call/1MiB",
            "uds/reqrep/1MiB",
            "",
        ),
    ];
    for (what, num, den, goal) in ratios {
        println!(
            "{:<70}{:>6.2}x {:>6.2}x{goal}",
            format!("{what}:"),
            p50(num) / p50(den),
            mean(num) / mean(den)
        );
    }
    println!(
        "{:<70}{:>6.2}x {:>6.2}x",
        "floor: (blocking-sleep + tokio-notify) / blocking-sleep:",
        floor(&p50),
        floor(&mean)
    );
}
