//! Channel benchmarks: two processes, payload bytes written by the sender
//! and read by the receiver, against baselines measured in the same run.
//!
//! ```text
//! cargo bench -p shmkit --bench channel            # everything
//! cargo bench -p shmkit --bench channel -- ring    # a subset (criterion filter)
//! SHMKIT_BENCH_QUICK=1 cargo bench -p shmkit --bench channel   # shorter
//! ```
//!
//! Latency is measured as a ping-pong: the parent sends a message of N
//! bytes, the child (this binary re-executed) reads every byte and answers
//! with a message of N bytes that the parent reads; one-way latency is half
//! the round trip. Baselines:
//!
//! - `floor`: two processes bouncing one cache line (a shared counter);
//! - `futex`: the same with the waiter sleeping on a raw futex;
//! - `bare_ring`: a minimal SPSC ring (no liveness, no sleepers, no
//!   bounds checks) for the throughput comparison.
//!
//! After criterion's groups, a table of one-way p50/p99 (from per-message
//! samples) and ratios to the floor is printed.

use std::hint::black_box;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use shmkit::channel::pubsub::{PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{Wait, WaitStrategy};
use shmkit::segment::{self, Segment};
use shmkit::sys::futex;

const ROLE: &str = "SHMKIT_BENCH_ROLE";
const NAME: &str = "SHMKIT_BENCH_NAME";
const SIZE: &str = "SHMKIT_BENCH_SIZE";
const STRAT: &str = "SHMKIT_BENCH_STRATEGY";

const SIZES: [usize; 4] = [8, 4 << 10, 1 << 20, 16 << 20];

fn quick() -> bool {
    std::env::var_os("SHMKIT_BENCH_QUICK").is_some()
}

fn strategy(busy: bool) -> WaitStrategy {
    if busy {
        WaitStrategy::BusyPoll
    } else {
        WaitStrategy::Sleep
    }
}

/// Writes every byte of the payload (the sender's share of the work).
#[inline]
fn fill(buf: &mut [u8], v: u8) {
    buf.fill(v);
}

/// Reads every byte of the payload (the receiver's share of the work).
#[inline]
fn consume(buf: &[u8]) -> u64 {
    let mut acc = 0u64;
    let (words, rest) = buf.split_at(buf.len() / 8 * 8);
    for w in words.chunks_exact(8) {
        acc ^= u64::from_ne_bytes(w.try_into().unwrap());
    }
    for &b in rest {
        acc ^= u64::from(b);
    }
    black_box(acc)
}

struct Guard(Vec<String>);
impl Drop for Guard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = segment::remove(n);
        }
    }
}

fn name(tag: &str) -> String {
    format!("bench-chan-{}-{tag}", std::process::id())
}

fn spawn(role: &str, name: &str, size: usize, busy: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(NAME, name)
        .env(SIZE, size.to_string())
        .env(STRAT, if busy { "busy" } else { "sleep" })
        .spawn()
        .expect("spawn bench child")
}

/// Shared words of the cache-line and futex baselines.
#[repr(C, align(128))]
struct Line {
    ping: AtomicU64,
    _pad: [u8; 120],
    pong: AtomicU64,
}

#[repr(C, align(128))]
struct FutexPair {
    ping: AtomicU32,
    _pad: [u8; 124],
    pong: AtomicU32,
}

fn line(seg: &Segment) -> &Line {
    assert!(seg.len() >= std::mem::size_of::<Line>());
    // SAFETY: page-aligned data area of sufficient size (asserted);
    // atomics only, any bit pattern valid.
    unsafe { &*(seg.as_ptr() as *const Line) }
}

fn futex_pair(seg: &Segment) -> &FutexPair {
    assert!(seg.len() >= std::mem::size_of::<FutexPair>());
    // SAFETY: as in `line`.
    unsafe { &*(seg.as_ptr() as *const FutexPair) }
}

/// A minimal SPSC ring of 64-byte slots for the throughput baseline.
#[repr(C, align(128))]
struct Bare {
    tail: AtomicU64,
    _p1: [u8; 120],
    head: AtomicU64,
    _p2: [u8; 120],
}
const BARE_CAP: u64 = 1024;
const BARE_SLOT: usize = 64;

fn bare(seg: &Segment) -> (&Bare, *mut u8) {
    assert!(seg.len() >= 4096 + BARE_CAP as usize * BARE_SLOT);
    // SAFETY: as in `line`; slots start at 4096 and fit (asserted).
    unsafe { (&*(seg.as_ptr() as *const Bare), seg.as_ptr().add(4096)) }
}

// ---------------------------------------------------------------- children

fn child(role: &str) {
    let name = std::env::var(NAME).unwrap();
    let size: usize = std::env::var(SIZE).unwrap().parse().unwrap();
    let busy = std::env::var(STRAT).unwrap() == "busy";
    match role {
        "floor" => {
            let seg = Segment::open(&name).unwrap();
            let l = line(&seg);
            let mut last = 0;
            loop {
                let v = l.ping.load(Ordering::Acquire);
                if v == u64::MAX {
                    return;
                }
                if v != last {
                    last = v;
                    l.pong.store(v, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        }
        "futex" => {
            let seg = Segment::open(&name).unwrap();
            let f = futex_pair(&seg);
            let mut last = 0;
            loop {
                let v = f.ping.load(Ordering::Acquire);
                if v == u32::MAX {
                    return;
                }
                if v == last {
                    futex::wait(&f.ping, v, Some(Instant::now() + Duration::from_secs(1)));
                    continue;
                }
                last = v;
                f.pong.store(v, Ordering::Release);
                futex::wake(&f.pong);
            }
        }
        "ring" => {
            let mut rx = Receiver::open(&format!("{name}-ping")).unwrap();
            let mut tx = Sender::open(&format!("{name}-pong")).unwrap();
            rx.set_wait_strategy(strategy(busy));
            tx.set_wait_strategy(strategy(busy));
            let mut v = 0u8;
            while rx.recv_with(Wait::Forever, consume).is_ok() {
                v = v.wrapping_add(1);
                tx.send_with(size, Wait::Forever, |b| fill(b, v)).unwrap();
            }
        }
        "pubsub0" | "pubsub1" => {
            let sub = Subscriber::open(&format!("{name}-ping")).unwrap();
            let mut publisher = Publisher::open(&format!("{name}-pong")).unwrap();
            sub.set_wait_strategy(strategy(busy));
            publisher.set_wait_strategy(strategy(busy));
            let touch = role == "pubsub1";
            let mut v = 0u8;
            while let Ok(s) = sub.recv() {
                if touch {
                    consume(&s);
                }
                drop(s);
                v = v.wrapping_add(1);
                let mut loan = publisher.loan(size).unwrap();
                if touch {
                    fill(&mut loan, v);
                } else {
                    loan[0] = v;
                }
                loan.publish();
            }
        }
        "sink" => {
            // Throughput: receive until the marker, then acknowledge.
            let mut rx = Receiver::open(&format!("{name}-ping")).unwrap();
            let mut tx = Sender::open(&format!("{name}-pong")).unwrap();
            rx.set_wait_strategy(WaitStrategy::BusyPoll);
            loop {
                match rx.recv_with(Wait::Forever, |m| (m[0], consume(m))) {
                    Ok((0xff, _)) => tx.send(&[1]).unwrap(),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
        "bare_sink" => {
            let seg = Segment::open(&name).unwrap();
            let (b, slots) = bare(&seg);
            let mut head = 0u64;
            loop {
                let tail = b.tail.load(Ordering::Acquire);
                while head < tail {
                    // SAFETY: slot index masked into the asserted area.
                    let m = unsafe {
                        std::slice::from_raw_parts(
                            slots.add((head % BARE_CAP) as usize * BARE_SLOT),
                            size,
                        )
                    };
                    let first = m[0];
                    consume(m);
                    head += 1;
                    b.head.store(head, Ordering::Release);
                    if first == 0xfe {
                        return;
                    }
                }
                std::hint::spin_loop();
            }
        }
        r => panic!("unknown role {r}"),
    }
}

// ------------------------------------------------------------- parent side

/// One round trip of a baseline or channel; returns its duration.
trait PingPong {
    fn round_trip(&mut self) -> Duration;
}

struct Floor {
    seg: Segment,
    n: u64,
}
impl PingPong for Floor {
    fn round_trip(&mut self) -> Duration {
        let l = line(&self.seg);
        self.n += 1;
        let t = Instant::now();
        l.ping.store(self.n, Ordering::Release);
        while l.pong.load(Ordering::Acquire) != self.n {
            std::hint::spin_loop();
        }
        t.elapsed()
    }
}

struct FutexHandoff {
    seg: Segment,
    n: u32,
}
impl PingPong for FutexHandoff {
    fn round_trip(&mut self) -> Duration {
        let f = futex_pair(&self.seg);
        self.n += 1;
        let t = Instant::now();
        f.ping.store(self.n, Ordering::Release);
        futex::wake(&f.ping);
        loop {
            let v = f.pong.load(Ordering::Acquire);
            if v == self.n {
                break;
            }
            futex::wait(&f.pong, v, Some(Instant::now() + Duration::from_secs(1)));
        }
        t.elapsed()
    }
}

struct RingPP {
    tx: Sender,
    rx: Receiver,
    size: usize,
    v: u8,
}
impl PingPong for RingPP {
    fn round_trip(&mut self) -> Duration {
        self.v = self.v.wrapping_add(1);
        let (v, size) = (self.v, self.size);
        let t = Instant::now();
        self.tx
            .send_with(size, Wait::Forever, |b| fill(b, v))
            .unwrap();
        self.rx.recv_with(Wait::Forever, consume).unwrap();
        t.elapsed()
    }
}

struct PubSubPP {
    publisher: Publisher,
    sub: Subscriber,
    size: usize,
    touch: bool,
    v: u8,
}
impl PingPong for PubSubPP {
    fn round_trip(&mut self) -> Duration {
        self.v = self.v.wrapping_add(1);
        let t = Instant::now();
        let mut loan = self.publisher.loan(self.size).unwrap();
        if self.touch {
            fill(&mut loan, self.v);
        } else {
            loan[0] = self.v;
        }
        loan.publish();
        let s = self.sub.recv().unwrap();
        if self.touch {
            consume(&s);
        }
        drop(s);
        t.elapsed()
    }
}

/// A running case: the parent's side, the child, and the segments.
struct Case {
    pp: Box<dyn PingPong>,
    child: Child,
    _guard: Guard,
    stop: Box<dyn FnMut()>,
}

impl Drop for Case {
    fn drop(&mut self) {
        (self.stop)();
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(2) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn floor_case() -> Case {
    let n = name("floor");
    let guard = Guard(vec![n.clone()]);
    let seg = Segment::builder(&n).size(4096).create().unwrap();
    let child = spawn("floor", &n, 8, true);
    let stop_seg = Segment::open(&n).unwrap();
    Case {
        pp: Box::new(Floor { seg, n: 0 }),
        child,
        _guard: guard,
        stop: Box::new(move || line(&stop_seg).ping.store(u64::MAX, Ordering::Release)),
    }
}

fn futex_case() -> Case {
    let n = name("futex");
    let guard = Guard(vec![n.clone()]);
    let seg = Segment::builder(&n).size(4096).create().unwrap();
    let child = spawn("futex", &n, 8, false);
    let stop_seg = Segment::open(&n).unwrap();
    Case {
        pp: Box::new(FutexHandoff { seg, n: 0 }),
        child,
        _guard: guard,
        stop: Box::new(move || {
            let f = futex_pair(&stop_seg);
            f.ping.store(u32::MAX, Ordering::Release);
            futex::wake(&f.ping);
        }),
    }
}

fn ring_case(size: usize, busy: bool) -> Case {
    let n = name(&format!("ring{size}{busy}"));
    let (ping, pong) = (format!("{n}-ping"), format!("{n}-pong"));
    let guard = Guard(vec![ping.clone(), pong.clone()]);
    let cap = if size >= 1 << 20 { 2 } else { 64 };
    let opts = RingOptions::new(cap, size as u64);
    let mut tx = Sender::create(&ping, &opts).unwrap();
    let mut rx = Receiver::create(&pong, &opts).unwrap();
    tx.set_wait_strategy(strategy(busy));
    rx.set_wait_strategy(strategy(busy));
    let child = spawn("ring", &n, size, busy);
    Case {
        pp: Box::new(RingPP { tx, rx, size, v: 0 }),
        child,
        _guard: guard,
        // Dropping `tx` (with the Case) disconnects the child.
        stop: Box::new(|| {}),
    }
}

fn pubsub_case(size: usize, busy: bool, touch: bool) -> Case {
    let n = name(&format!("ps{size}{busy}{touch}"));
    let (ping, pong) = (format!("{n}-ping"), format!("{n}-pong"));
    let guard = Guard(vec![ping.clone(), pong.clone()]);
    let opts = PubSubOptions::new(4, size as u64, 1);
    let mut publisher = Publisher::create(&ping, &opts).unwrap();
    let _pong_seg = opts.create(&pong).unwrap();
    let sub = Subscriber::open(&pong).unwrap();
    publisher.set_wait_strategy(strategy(busy));
    sub.set_wait_strategy(strategy(busy));
    let child = spawn(if touch { "pubsub1" } else { "pubsub0" }, &n, size, busy);
    // Wait until the child subscribed to our pings (messages published
    // before that would go nowhere).
    let t = Instant::now();
    while publisher.subscribers() < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "child never subscribed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Case {
        pp: Box::new(PubSubPP {
            publisher,
            sub,
            size,
            touch,
            v: 0,
        }),
        child,
        _guard: guard,
        stop: Box::new(|| {}),
    }
}

/// Per-message one-way samples (half round trips), in nanoseconds.
fn samples(case: &mut Case, n: usize) -> Vec<f64> {
    for _ in 0..n.min(100) {
        case.pp.round_trip();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| case.pp.round_trip().as_nanos() as f64 / 2.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The criterion filter (first non-flag argument), applied to the
/// percentile pass too.
fn selected(id: &str) -> bool {
    match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(f) => id.contains(&f),
        None => true,
    }
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn run_case(
    g: &mut Group<'_>,
    report: &mut Vec<(String, f64, f64)>,
    what: &str,
    make: impl FnOnce() -> Case,
    size: usize,
) {
    if !selected(&format!("oneway/{what}/{size}")) {
        return;
    }
    let mut case = make();
    let id = BenchmarkId::new(what, size);
    g.bench_function(id, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| case.pp.round_trip()).sum::<Duration>() / 2)
    });
    let n = match size {
        s if s >= 16 << 20 => 60,
        s if s >= 1 << 20 => 400,
        _ if quick() => 2_000,
        _ => 20_000,
    };
    let s = samples(&mut case, n);
    report.push((format!("{what}/{size}"), pct(&s, 0.5), pct(&s, 0.99)));
}

fn bench_latency(c: &mut Criterion, report: &mut Vec<(String, f64, f64)>) {
    let mut g = c.benchmark_group("oneway");
    run_case(&mut g, report, "floor", floor_case, 8);
    run_case(&mut g, report, "futex", futex_case, 8);
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 1 << 20 {
            g.sample_size(10);
        }
        for busy in [true, false] {
            let mode = if busy { "busy" } else { "sleep" };
            let id = |what: &str| format!("{what}_{mode}");
            run_case(&mut g, report, &id("ring"), || ring_case(size, busy), size);
            let touch = || pubsub_case(size, busy, true);
            run_case(&mut g, report, &id("pubsub"), touch, size);
            run_case(
                &mut g,
                report,
                &id("pubsub_handoff"),
                || pubsub_case(size, busy, false),
                size,
            );
        }
    }
    g.finish();
}

/// Messages per second: `iters` messages then a marker the sink answers.
///
/// Both sinks run at once and the rounds alternate ring / bare ring, so
/// that load from other processes hits both alike; the report gives the
/// best round of each (the least disturbed by other processes) and the
/// median.
fn bench_throughput(c: &mut Criterion, report: &mut Vec<(String, f64, f64)>) {
    let mut g = c.benchmark_group("throughput");
    for size in [8usize, 64] {
        if !selected(&format!("throughput/ring/{size}")) {
            continue;
        }
        g.throughput(Throughput::Elements(1));
        // shmkit ring, busy-poll.
        let n = name(&format!("tp{size}"));
        let (ping, pong) = (format!("{n}-ping"), format!("{n}-pong"));
        let bn = name(&format!("bare{size}"));
        let _guard = Guard(vec![ping.clone(), pong.clone(), bn.clone()]);
        let opts = RingOptions::new(1024, size as u64);
        let mut tx = Sender::create(&ping, &opts).unwrap();
        let mut rx = Receiver::create(&pong, &RingOptions::new(4, 8)).unwrap();
        tx.set_wait_strategy(WaitStrategy::BusyPoll);
        rx.set_wait_strategy(WaitStrategy::BusyPoll);
        let mut ring_child = spawn("sink", &n, size, true);
        let mut run_ring = |iters: u64| {
            let t = Instant::now();
            for i in 0..iters {
                tx.send_with(size, Wait::Forever, |b| fill(b, (i % 200) as u8))
                    .unwrap();
            }
            tx.send_with(size, Wait::Forever, |b| fill(b, 0xff))
                .unwrap();
            rx.recv().unwrap();
            t.elapsed()
        };

        // Bare SPSC ring baseline.
        let seg = Segment::builder(&bn)
            .size(4096 + BARE_CAP * BARE_SLOT as u64)
            .create()
            .unwrap();
        let mut bare_child = spawn("bare_sink", &bn, size, true);
        let (b, slots) = bare(&seg);
        let mut tail = 0u64;
        let mut head_cache = 0u64;
        let mut push = |v: u8| {
            while tail - head_cache >= BARE_CAP {
                head_cache = b.head.load(Ordering::Acquire);
                std::hint::spin_loop();
            }
            // SAFETY: masked slot index inside the asserted area.
            let m = unsafe {
                std::slice::from_raw_parts_mut(
                    slots.add((tail % BARE_CAP) as usize * BARE_SLOT),
                    size,
                )
            };
            fill(m, v);
            tail += 1;
            b.tail.store(tail, Ordering::Release);
        };
        let run_bare = |iters: u64, push: &mut dyn FnMut(u8)| {
            let t = Instant::now();
            for i in 0..iters {
                push((i % 200) as u8);
            }
            // Wait until the sink consumed everything.
            let target = b.tail.load(Ordering::Relaxed);
            while b.head.load(Ordering::Acquire) < target {
                std::hint::spin_loop();
            }
            t.elapsed()
        };
        g.bench_function(BenchmarkId::new("ring", size), |bch| {
            bch.iter_custom(&mut run_ring)
        });
        g.bench_function(BenchmarkId::new("bare_ring", size), |bch| {
            bch.iter_custom(|iters| run_bare(iters, &mut push))
        });
        let m = if quick() { 200_000 } else { 1_000_000 };
        let (mut rr, mut br) = (Vec::new(), Vec::new());
        for _ in 0..if quick() { 3 } else { 7 } {
            rr.push(m as f64 / run_ring(m).as_secs_f64());
            br.push(m as f64 / run_bare(m, &mut push).as_secs_f64());
        }
        rr.sort_by(f64::total_cmp);
        br.sort_by(f64::total_cmp);
        push(0xfe);
        drop(tx);
        let _ = ring_child.wait();
        let _ = bare_child.wait();
        report.push((
            format!("throughput/ring/{size} (msg/s)"),
            *rr.last().unwrap(),
            rr[rr.len() / 2],
        ));
        report.push((
            format!("throughput/bare_ring/{size} (msg/s)"),
            *br.last().unwrap(),
            br[br.len() / 2],
        ));
    }
    g.finish();
}

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
    let mut report = Vec::new();
    bench_latency(&mut c, &mut report);
    bench_throughput(&mut c, &mut report);
    c.final_summary();

    println!("\n== one-way latency (ns, half round trip, payload written and read) ==");
    let floor = report
        .iter()
        .find(|r| r.0.starts_with("floor"))
        .map(|r| r.1);
    let fut = report
        .iter()
        .find(|r| r.0.starts_with("futex"))
        .map(|r| r.1);
    for (id, p50, p99) in &report {
        if id.starts_with("throughput") {
            continue;
        }
        let vs = |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.2}x", p50 / b));
        println!(
            "{id:<32} p50 {p50:>12.0}  p99 {p99:>12.0}  p50/floor {:>8}  p50/futex {:>8}",
            vs(floor),
            vs(fut)
        );
    }
    println!("\n== throughput (best round, median round) ==");
    for (id, best, median) in report.iter().filter(|r| r.0.starts_with("throughput")) {
        println!("{id:<40} best {best:>14.0}  median {median:>14.0}");
    }
    for size in [8, 64] {
        let get = |k: &str| {
            report
                .iter()
                .find(|r| r.0 == format!("throughput/{k}/{size} (msg/s)"))
                .map(|r| (r.1, r.2))
        };
        if let (Some(r), Some(b)) = (get("ring"), get("bare_ring")) {
            println!(
                "ring/bare ratio at {size} B: best {:.2}, median {:.2}",
                r.0 / b.0,
                r.1 / b.1
            );
        }
    }
}
