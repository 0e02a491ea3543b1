//! `bridge-bench`: the bridge on loopback against plain Zenoh pub/sub and
//! direct shmkit, in the same run.
//!
//! ```text
//! cargo run --release --manifest-path crates/shmkit-bridge/Cargo.toml --bin bridge-bench [-- --quick] [--rounds N] [--case 8B-rate|8B-latency|1MiB|16MiB]...
//! ```
//!
//! Three paths, each process to process on this machine:
//!
//! - `shmkit`: driver → ring → receiver process;
//! - `zenoh`: driver (Zenoh publisher, Block) → TCP 127.0.0.1 → receiver
//!   process (Zenoh subscriber);
//! - `bridge`: driver → ring A → `shmkit-bridge export` → TCP 127.0.0.1 →
//!   `shmkit-bridge import` → ring B → receiver process.
//!
//! The driver writes a CLOCK_MONOTONIC timestamp in the first 8 bytes of
//! each message (the rest is pre-filled); the receiver reads the stamp
//! and the last byte (not every byte) and reports the arrival time of
//! the last message. Throughput = bytes / (last arrival - first send);
//! latency = arrival - stamp, one way, paced at 1 message per 500 µs.
//! Each case runs `--rounds` times (default 3; 1 with `--quick`), paths
//! alternating, and the median round is shown.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{Wait, WaitStrategy};
use shmkit::segment::Lifetime;
use shmkit_bridge::zenoh;
use shmkit_bridge::SessionOptions;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) this process used so far, ns.
fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as u64 * 1_000_000_000 + v.tv_usec as u64 * 1_000;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU time (user + system) of process `pid` so far, ns (clock-tick
/// resolution, from /proc/PID/stat); 0 if it is gone.
fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces): state is
    // field 3; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000_000 / hz
}

/// What a receiver measured.
#[derive(Debug, Clone, Copy)]
struct Result {
    count: u64,
    last_arrival: u64,
    p50: u64,
    p99: u64,
    /// CPU the receiver used from "ready" to its last message, ns.
    cpu: u64,
}

impl Result {
    fn parse(line: &str) -> Result {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("receiver output"))
            .collect();
        Result {
            count: v[0],
            last_arrival: v[1],
            p50: v[2],
            p99: v[3],
            cpu: v[4],
        }
    }
}

/// Latency histogram and end time, printed by receivers.
struct Meter {
    cpu0: u64,
    h: hdrhistogram::Histogram<u64>,
    count: u64,
    last: u64,
    sink: u8,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            cpu0: self_cpu_ns(),
            h: hdrhistogram::Histogram::new(3).expect("histogram"),
            count: 0,
            last: 0,
            sink: 0,
        }
    }

    fn seen(&mut self, first8: &[u8], last_byte: u8) {
        let t = now_ns();
        let stamp = u64::from_le_bytes(first8[..8].try_into().expect("8 bytes"));
        let _ = self.h.record(t.saturating_sub(stamp).max(1));
        self.count += 1;
        self.last = t;
        self.sink ^= last_byte;
    }

    fn print(&self) {
        std::hint::black_box(self.sink);
        println!(
            "{} {} {} {} {}",
            self.count,
            self.last,
            self.h.value_at_quantile(0.5),
            self.h.value_at_quantile(0.99),
            self_cpu_ns() - self.cpu0,
        );
    }
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

struct Kid(Child);

impl Drop for Kid {
    /// SIGTERM, up to 5 s for a clean exit (a bridge closes its channel
    /// roles), then SIGKILL.
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child, not yet reaped (checked above).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the named segments when dropped (whatever happened to the
/// processes that used them).
struct Names(Vec<String>);

impl Drop for Names {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = shmkit::segment::remove(n);
        }
    }
}

impl Kid {
    fn spawn(cmd: &mut Command) -> Kid {
        die_with_parent(cmd);
        Kid(cmd.spawn().expect("spawn"))
    }

    /// Reads the receiver's result line.
    fn result(&mut self) -> Result {
        let out = self.0.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("read");
        assert!(!line.is_empty(), "receiver died");
        let _ = self.0.wait();
        Result::parse(&line)
    }

    fn ready(&mut self) {
        // Receivers print "ready" once attached.
        self.expect_line(b"ready\n");
    }

    /// Waits until the receiver got the warm-up messages.
    fn warm(&mut self) {
        self.expect_line(b"warm\n");
    }

    fn expect_line(&mut self, want: &[u8]) {
        let out = self.0.stdout.as_mut().expect("piped");
        let mut b = vec![0u8; want.len()];
        std::io::Read::read_exact(out, &mut b).expect("receiver line");
        assert_eq!(b, want, "receiver said something else");
    }
}

fn me() -> std::path::PathBuf {
    std::env::current_exe().expect("current exe")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

fn ep(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// Child role: receive `warm` messages, say "warm", then measure `count`
/// messages from ring `name`. `spin`: spin 2000 times before sleeping
/// (the direct path's local best case); otherwise the library's default
/// wait strategy (a short spin, then the futex), as a user's program on
/// B waits (`shmkit recv` included).
fn role_ring_recv(name: &str, warm: u64, count: u64, spin: bool) {
    let mut rx = Receiver::open(name).expect("open ring");
    if spin {
        rx.set_wait_strategy(WaitStrategy::SpinThenSleep { spins: 2000 });
    }
    println!("ready");
    for _ in 0..warm {
        rx.recv_with(Wait::timeout(Duration::from_secs(60)), |_| ())
            .expect("recv");
    }
    println!("warm");
    let mut m = Meter::new();
    for _ in 0..count {
        rx.recv_with(Wait::timeout(Duration::from_secs(60)), |msg| {
            m.seen(msg, msg[msg.len() - 1])
        })
        .expect("recv");
    }
    m.print();
}

/// Child role: Zenoh subscriber listening on `port`. Samples are taken in
/// a callback, on Zenoh's receive task, as the bridge's importer takes
/// them: a FIFO handler would add a hand-off per sample (and, with a
/// small FIFO, back-pressure on Zenoh's receive task) that the bridge
/// path does not pay, making plain Zenoh look slower than it is.
fn role_zenoh_recv(port: u16, key: &str, warm: u64, count: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = SessionOptions::loopback(&[ep(port)], &[])
            .open()
            .await
            .expect("session");
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Meter>();
        let mut state = Some((Meter::new(), done_tx));
        let mut warming = warm;
        let sub = s
            .declare_subscriber(key.to_owned())
            .callback_mut(move |sample| {
                let Some((m, _)) = state.as_mut() else {
                    return;
                };
                if warming > 0 {
                    warming -= 1;
                    if warming == 0 {
                        println!("warm");
                        *m = Meter::new();
                    }
                    return;
                }
                let p = sample.payload();
                let mut first = [0u8; 8];
                let mut at = 0;
                let mut last = 0u8;
                for sl in p.slices() {
                    let n = (8 - at.min(8)).min(sl.len());
                    first[at.min(8)..at.min(8) + n].copy_from_slice(&sl[..n]);
                    at += sl.len();
                    last = *sl.last().unwrap_or(&0);
                }
                m.seen(&first, last);
                if m.count == count {
                    if let Some((m, tx)) = state.take() {
                        let _ = tx.send(m);
                    }
                }
            })
            .await
            .expect("subscriber");
        println!("ready");
        if warm == 0 {
            println!("warm");
        }
        let m = tokio::task::spawn_blocking(move || done_rx.recv().expect("all samples"))
            .await
            .expect("join");
        m.print();
        drop(sub);
        let _ = s.close().await;
    });
}

#[derive(Clone, Copy)]
struct Case {
    size: usize,
    count: u64,
    /// Pause between sends (latency runs).
    pace: Option<Duration>,
}

fn fill(buf: &mut [u8], template: &[u8]) {
    buf.copy_from_slice(template);
    buf[..8].copy_from_slice(&now_ns().to_le_bytes());
}

fn pace(p: Option<Duration>) {
    if let Some(p) = p {
        let end = now_ns() + p.as_nanos() as u64;
        while now_ns() < end {
            std::hint::spin_loop();
        }
    }
}

/// Untimed messages sent first on every path, so that what is measured is
/// the steady state: the first lap of a fresh ring faults its pages in
/// (8 faults per 1 MiB message in each process that touches it), Zenoh
/// allocates its batches and buffers.
fn warm_up(case: Case) -> u64 {
    if case.pace.is_some() {
        64
    } else {
        ring_capacity(case.size)
    }
}

fn ring_capacity(size: usize) -> u64 {
    match size {
        s if s >= 16 << 20 => 4,
        s if s >= 1 << 20 => 32,
        _ => 4096,
    }
}

/// Sends `n` messages of `case` into ring `tx`; returns the first send
/// time.
fn send_ring(tx: &mut Sender, case: Case, n: u64, template: &[u8]) -> u64 {
    let t0 = now_ns();
    for _ in 0..n {
        tx.send_with(case.size, Wait::Forever, |b| fill(b, template))
            .expect("send");
        pace(case.pace);
    }
    t0
}

/// CPU time of each process of a path during one round, ns.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    driver: u64,
    exporter: u64,
    importer: u64,
    receiver: u64,
}

impl Cpu {
    fn total(&self) -> u64 {
        self.driver + self.exporter + self.importer + self.receiver
    }
}

fn run_shmkit(case: Case, tag: &str) -> (u64, Result, Cpu) {
    let name = format!("bb{}-{tag}-direct", std::process::id());
    let _names = Names(vec![name.clone()]);
    let seg = RingOptions::new(ring_capacity(case.size), case.size as u64)
        .lifetime(Lifetime::UntilLastDetach)
        .create(&name)
        .expect("create ring");
    let mut kid = Kid::spawn(
        Command::new(me())
            .args(["ring-recv", &name])
            .args([warm_up(case), case.count].map(|n| n.to_string()))
            .arg("spin")
            .stdout(Stdio::piped()),
    );
    kid.ready();
    let mut tx = Sender::from_segment(seg).expect("sender");
    let template = vec![0xa5u8; case.size];
    send_ring(&mut tx, case, warm_up(case), &template);
    kid.warm();
    let c0 = self_cpu_ns();
    let t0 = send_ring(&mut tx, case, case.count, &template);
    let r = kid.result();
    let cpu = Cpu {
        driver: self_cpu_ns() - c0,
        receiver: r.cpu,
        ..Cpu::default()
    };
    (t0, r, cpu)
}

fn run_zenoh(rt: &tokio::runtime::Runtime, case: Case, tag: &str) -> (u64, Result, Cpu) {
    let port = free_port();
    let key = format!("bridge-bench/{}/{tag}/zenoh", std::process::id());
    let mut kid = Kid::spawn(
        Command::new(me())
            .args([
                "zenoh-recv",
                &port.to_string(),
                &key,
                &warm_up(case).to_string(),
                &case.count.to_string(),
            ])
            .stdout(Stdio::piped()),
    );
    kid.ready();
    rt.block_on(async {
        let s = SessionOptions::loopback(&[], &[ep(port)])
            .open()
            .await
            .expect("session");
        let p = s
            .declare_publisher(key.clone())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("publisher");
        while !p.matching_status().await.expect("matching").matching() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let template = vec![0xa5u8; case.size];
        let put = || {
            // A fresh buffer per message: Zenoh's `put` takes ownership.
            let mut v = template.clone();
            v[..8].copy_from_slice(&now_ns().to_le_bytes());
            p.put(v)
        };
        for _ in 0..warm_up(case) {
            put().await.expect("put");
            pace(case.pace);
        }
        let mut kid = tokio::task::spawn_blocking(move || {
            kid.warm();
            kid
        })
        .await
        .expect("join");
        let c0 = self_cpu_ns();
        let t0 = now_ns();
        for _ in 0..case.count {
            put().await.expect("put");
            pace(case.pace);
        }
        let r = tokio::task::spawn_blocking(move || kid.result())
            .await
            .expect("join");
        let cpu = Cpu {
            driver: self_cpu_ns() - c0,
            receiver: r.cpu,
            ..Cpu::default()
        };
        let _ = s.close().await;
        (t0, r, cpu)
    })
}

fn run_bridge(case: Case, tag: &str) -> (u64, Result, Cpu) {
    let bridge = me().with_file_name("shmkit-bridge");
    let port = free_port();
    let key = format!("bridge-bench/{}/{tag}/bridge", std::process::id());
    let a = format!("bb{}-{tag}-a", std::process::id());
    let b = format!("bb{}-{tag}-b", std::process::id());
    let _names = Names(vec![a.clone(), b.clone()]);
    let cap = ring_capacity(case.size);
    let seg_a = RingOptions::new(cap, case.size as u64)
        .lifetime(Lifetime::UntilLastDetach)
        .create(&a)
        .expect("ring a");
    let seg_b = RingOptions::new(cap, case.size as u64)
        .lifetime(Lifetime::UntilLastDetach)
        .create(&b)
        .expect("ring b");
    let quiet = ["--no-multicast-scouting", "--no-gossip"];
    // Errors only from the bridges (Zenoh warns that gossip is off).
    let imp = Kid::spawn(
        Command::new(&bridge)
            .args(["import", &key, "--into", &b, "--listen", &ep(port)])
            .args(quiet)
            .env("RUST_LOG", "error"),
    );
    let exp = Kid::spawn(
        Command::new(&bridge)
            .args(["export", &a, "--key", &key, "--connect", &ep(port)])
            .args(quiet)
            .env("RUST_LOG", "error"),
    );
    let mut kid = Kid::spawn(
        Command::new(me())
            .args(["ring-recv", &b])
            .args([warm_up(case), case.count].map(|n| n.to_string()))
            .arg("default")
            .stdout(Stdio::piped()),
    );
    kid.ready();
    drop(seg_b);
    let mut tx = Sender::from_segment(seg_a).expect("sender");
    let template = vec![0xa5u8; case.size];
    send_ring(&mut tx, case, warm_up(case), &template);
    kid.warm();
    let (e0, i0, c0) = (
        proc_cpu_ns(exp.0.id()),
        proc_cpu_ns(imp.0.id()),
        self_cpu_ns(),
    );
    let t0 = send_ring(&mut tx, case, case.count, &template);
    let r = kid.result();
    let cpu = Cpu {
        driver: self_cpu_ns() - c0,
        exporter: proc_cpu_ns(exp.0.id()).saturating_sub(e0),
        importer: proc_cpu_ns(imp.0.id()).saturating_sub(i0),
        receiver: r.cpu,
    };
    (t0, r, cpu)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ring-recv") => {
            return role_ring_recv(
                &args[2],
                args[3].parse().expect("warm"),
                args[4].parse().expect("count"),
                args[5] == "spin",
            )
        }
        Some("zenoh-recv") => {
            return role_zenoh_recv(
                args[2].parse().expect("port"),
                &args[3],
                args[4].parse().expect("warm"),
                args[5].parse().expect("count"),
            )
        }
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.parse().expect("--rounds N"))
        .unwrap_or(if quick { 1 } else { 3 });
    // `--case TAG` (repeatable): run only these cases.
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--case")
        .map(|w| w[1].as_str())
        .collect();
    let k = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cases = [
        (
            "8B-rate",
            Case {
                size: 8,
                count: 200_000 / k,
                pace: None,
            },
        ),
        (
            "8B-latency",
            Case {
                size: 8,
                count: 4_000 / k,
                pace: Some(Duration::from_micros(500)),
            },
        ),
        (
            "1MiB",
            Case {
                size: 1 << 20,
                count: 1_000 / k,
                pace: None,
            },
        ),
        (
            "16MiB",
            Case {
                size: 16 << 20,
                count: 96 / k.min(8),
                pace: None,
            },
        ),
    ];
    println!(
        "bridge-bench: loopback, {}, {rounds} round(s) per case and path (median shown), load average {}",
        if quick { "quick" } else { "full" },
        loadavg()
    );
    println!(
        "{:<11} {:<7} {:>8} {:>12} {:>9} {:>10} {:>10}",
        "case", "path", "msgs", "msg/s", "GB/s", "p50 us", "p99 us"
    );
    const PATHS: [&str; 3] = ["shmkit", "zenoh", "bridge"];
    for (tag, case) in cases {
        if !only.is_empty() && !only.contains(&tag) {
            continue;
        }
        // Per path: (seconds per message, p50, p99) of each round.
        let mut per: [Vec<(f64, u64, u64)>; 3] = Default::default();
        // Per path: CPU of each round.
        let mut cpus: [Vec<Cpu>; 3] = Default::default();
        for round in 0..rounds {
            for (i, path) in PATHS.iter().enumerate() {
                let tag = format!("{tag}-{round}");
                let (t0, r, cpu) = match *path {
                    "shmkit" => run_shmkit(case, &tag),
                    "zenoh" => run_zenoh(&rt, case, &tag),
                    _ => run_bridge(case, &tag),
                };
                assert_eq!(r.count, case.count, "{path}: messages lost");
                let secs = r.last_arrival.saturating_sub(t0) as f64 / 1e9;
                per[i].push((secs / case.count as f64, r.p50, r.p99));
                cpus[i].push(cpu);
            }
        }
        let median = |v: &mut Vec<(f64, u64, u64)>| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            let t = v[v.len() / 2].0;
            v.sort_by_key(|x| x.1);
            let p50 = v[v.len() / 2].1;
            v.sort_by_key(|x| x.2);
            (t, p50, v[v.len() / 2].2)
        };
        let m: Vec<(f64, u64, u64)> = per.iter_mut().map(median).collect();
        for (i, path) in PATHS.iter().enumerate() {
            let (t, p50, p99) = m[i];
            if case.pace.is_some() {
                println!(
                    "{:<11} {:<7} {:>8} {:>12} {:>9} {:>10.1} {:>10.1}",
                    tag,
                    path,
                    case.count,
                    "paced",
                    "-",
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3
                );
            } else {
                println!(
                    "{:<11} {:<7} {:>8} {:>12.0} {:>9.3} {:>10} {:>10}",
                    tag,
                    path,
                    case.count,
                    1.0 / t,
                    case.size as f64 / t / 1e9,
                    "-",
                    "-"
                );
            }
        }
        if case.pace.is_some() {
            println!(
                "{tag:<11} p50: bridge/zenoh {:.2}x, bridge/shmkit {:.0}x",
                m[2].1 as f64 / m[1].1 as f64,
                m[2].1 as f64 / m[0].1 as f64
            );
        } else {
            // CPU per message (all processes of the path, median round by
            // total): less sensitive to a loaded machine than wall time.
            let mut med = [Cpu::default(); 3];
            for (i, path) in PATHS.iter().enumerate() {
                cpus[i].sort_by_key(Cpu::total);
                let c = cpus[i][cpus[i].len() / 2];
                med[i] = c;
                let us = |ns: u64| ns as f64 / case.count as f64 / 1e3;
                println!(
                    "{tag:<11} {path:<7} CPU us/msg: total {:.2} = driver {:.2} + exporter {:.2} + importer {:.2} + receiver {:.2}",
                    us(c.total()),
                    us(c.driver),
                    us(c.exporter),
                    us(c.importer),
                    us(c.receiver)
                );
            }
            println!(
                "{tag:<11} CPU per message: bridge/zenoh {:.2}x",
                med[2].total() as f64 / med[1].total() as f64
            );
            println!(
                "{tag:<11} time per message: bridge/zenoh {:.2}x (bridge adds {:+.0}% to Zenoh), bridge/shmkit {:.1}x",
                m[2].0 / m[1].0,
                (m[2].0 / m[1].0 - 1.0) * 100.0,
                m[2].0 / m[0].0
            );
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
