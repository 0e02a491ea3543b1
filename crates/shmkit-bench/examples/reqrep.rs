//! Request/response round trips between two processes, every contender in
//! the same run: iceoryx2 0.10 request-response, shmkit `channel::rpc`
//! and a Unix socket, at 8 B and 1 MiB (requests and replies the same
//! size), p50/p99 of the round trip.
//!
//! ```text
//! cargo run --release -p shmkit-bench --example reqrep
//! SHMKIT_REQREP_QUICK=1 cargo run --release -p shmkit-bench --example reqrep
//! ```
//!
//! Cases (the parent is the client, a child process this binary
//! re-executed is the server):
//!
//! - `iox2/busy-poll`: iceoryx2 `request_response::<[u8], [u8]>` over
//!   `ipc`, loaned requests and responses written and read in place;
//!   iceoryx2 has no blocking receive, so both sides busy-poll (as the
//!   harness's iceoryx2 pub/sub contender does);
//! - `rpc/busy-poll`: shmkit `Client::call_with` / `Server::recv_with` +
//!   `reply_with` (zero-copy), both sides `WaitStrategy::BusyPoll`: the
//!   like-for-like comparison with iceoryx2;
//! - `rpc/default`: the same with the default strategy (spin 200, then
//!   sleep on a futex), what a shmkit user gets;
//! - `uds/blocking`: a blocking Unix stream socket, length-prefixed
//!   request and reply.
//!
//! The client fills each request (bytes 7) and sums each reply; the server
//! sums each request and fills its reply (bytes 1), so every byte is
//! touched once on each side in every case.
//!
//! Files: shmkit segments `shmkit-reqrep-<pid>-…` (removed at the end);
//! iceoryx2 under the root `/tmp/shmkit-reqrep-<pid>/` with file prefix
//! `iox2rr<pid>_` (its `/dev/shm` objects too), removed at the end; the
//! socket under the temp directory, removed once connected. The child
//! dies with the parent (`PR_SET_PDEATHSIG`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmkit::channel::rpc::{Client, RpcOptions, Server};
use shmkit::channel::{Wait, WaitStrategy};

const ROLE: &str = "SHMKIT_REQREP_ROLE";
const NAME: &str = "SHMKIT_REQREP_NAME";
const SIZE: &str = "SHMKIT_REQREP_SIZE";

type Res<T> = Result<T, String>;

fn quick() -> bool {
    std::env::var_os("SHMKIT_REQREP_QUICK").is_some()
}

fn iox_root() -> String {
    format!("/tmp/shmkit-reqrep-{}/", parent_pid())
}

fn iox_prefix() -> String {
    format!("iox2rr{}_", parent_pid())
}

/// The pid of the measuring process (the child reads it from its name).
fn parent_pid() -> u32 {
    match std::env::var(NAME) {
        Ok(n) => n
            .split('-')
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        Err(_) => std::process::id(),
    }
}

/// One request/response partner: `round_trip` makes one call and times it.
trait Case {
    fn round_trip(&mut self) -> Res<Duration>;
}

fn fill_sum(buf: &[u8]) -> u64 {
    buf.iter().map(|&b| u64::from(b)).sum()
}

/// The child, killed and reaped on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server side and waits for its "ready" line.
fn spawn(role: &str, name: &str, size: usize) -> Res<Kid> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(ROLE, role)
        .env(NAME, name)
        .env(SIZE, size.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {role}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let kid = Kid(child);
    let mut line = [0u8; 6];
    out.read_exact(&mut line)
        .map_err(|e| format!("{role} did not start: {e}"))?;
    if &line != b"ready\n" {
        return Err(format!("{role}: unexpected start line"));
    }
    Ok(kid)
}

fn ready() {
    let mut o = std::io::stdout();
    let _ = o.write_all(b"ready\n");
    let _ = o.flush();
}

// --- shmkit rpc -------------------------------------------------------

struct RpcCase {
    c: Client,
    size: usize,
    name: String,
    _kid: Kid,
}

impl RpcCase {
    fn new(size: usize, busy: bool) -> Res<RpcCase> {
        let name = format!(
            "shmkit-reqrep-{}-rpc{size}{}",
            std::process::id(),
            if busy { "b" } else { "" }
        );
        let role = if busy { "rpc-busy" } else { "rpc-default" };
        let kid = spawn(role, &name, size)?;
        let mut c = Client::connect(&name).map_err(|e| e.to_string())?;
        if busy {
            c.set_wait_strategy(WaitStrategy::BusyPoll);
        }
        Ok(RpcCase {
            c,
            size,
            name,
            _kid: kid,
        })
    }
}

impl Drop for RpcCase {
    fn drop(&mut self) {
        let _ = Server::remove(&self.name);
    }
}

impl Case for RpcCase {
    fn round_trip(&mut self) -> Res<Duration> {
        let t0 = Instant::now();
        let n = self
            .c
            .call_with(
                self.size,
                Wait::Until(Instant::now() + Duration::from_secs(10)),
                |b| b.fill(7),
                |r| std::hint::black_box(fill_sum(r)),
            )
            .map_err(|e| e.to_string())?;
        let d = t0.elapsed();
        if n != self.size as u64 {
            return Err(format!("rpc reply sum {n}, want {}", self.size));
        }
        Ok(d)
    }
}

fn rpc_server(name: &str, size: usize, busy: bool) -> Res<()> {
    let strategy = if busy {
        WaitStrategy::BusyPoll
    } else {
        WaitStrategy::default()
    };
    let opts = RpcOptions::new()
        .clients(1)
        .max_request(size as u64)
        .max_reply(size as u64)
        .remove_on_drop(false)
        .wait_strategy(strategy);
    let mut s = Server::create(name, &opts).map_err(|e| e.to_string())?;
    ready();
    loop {
        let (t, n) = s
            .recv_with(Wait::Forever, |r| {
                std::hint::black_box(fill_sum(r));
                r.len()
            })
            .map_err(|e| e.to_string())?;
        s.reply_with(t, n, |b| b.fill(1))
            .map_err(|e| e.to_string())?;
    }
}

// --- Unix socket --------------------------------------------------------

fn write_frame(s: &mut UnixStream, buf: &[u8]) -> std::io::Result<()> {
    s.write_all(&(buf.len() as u64).to_le_bytes())?;
    s.write_all(buf)
}

fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 64 << 20 {
        return Err(std::io::Error::other("frame too large"));
    }
    buf.resize(n, 0);
    s.read_exact(buf)
}

struct UdsCase {
    s: UnixStream,
    msg: Vec<u8>,
    buf: Vec<u8>,
    _kid: Kid,
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}.sock"))
}

impl UdsCase {
    fn new(size: usize) -> Res<UdsCase> {
        let name = format!("shmkit-reqrep-{}-uds{size}", std::process::id());
        let path = socket_path(&name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| e.to_string())?;
        let kid = spawn("uds", &name, size);
        let accepted = kid.as_ref().ok().map(|_| listener.accept());
        let _ = std::fs::remove_file(&path);
        let kid = kid?;
        let (s, _) = accepted.expect("kid started").map_err(|e| e.to_string())?;
        Ok(UdsCase {
            s,
            msg: vec![0; size],
            buf: Vec::new(),
            _kid: kid,
        })
    }
}

impl Case for UdsCase {
    fn round_trip(&mut self) -> Res<Duration> {
        let t0 = Instant::now();
        self.msg.fill(7);
        write_frame(&mut self.s, &self.msg).map_err(|e| e.to_string())?;
        read_frame(&mut self.s, &mut self.buf).map_err(|e| e.to_string())?;
        let n = std::hint::black_box(fill_sum(&self.buf));
        let d = t0.elapsed();
        if n != self.msg.len() as u64 {
            return Err(format!("uds reply sum {n}"));
        }
        Ok(d)
    }
}

fn uds_server(name: &str) -> Res<()> {
    let mut s = UnixStream::connect(socket_path(name)).map_err(|e| e.to_string())?;
    ready();
    let mut buf = Vec::new();
    while read_frame(&mut s, &mut buf).is_ok() {
        std::hint::black_box(fill_sum(&buf));
        buf.fill(1);
        if write_frame(&mut s, &buf).is_err() {
            break;
        }
    }
    Ok(())
}

// --- iceoryx2 -----------------------------------------------------------

#[cfg(feature = "iceoryx2")]
mod iox {
    use super::*;
    use iceoryx2::port::client::Client as IoxClient;
    use iceoryx2::prelude::*;

    fn err(what: &'static str) -> impl Fn(&dyn std::fmt::Debug) -> String {
        move |e| format!("iceoryx2 {what}: {e:?}")
    }

    pub fn node() -> Res<Node<ipc::Service>> {
        set_log_level(LogLevel::Error);
        let mut config = Config::default();
        config.global.prefix =
            FileName::new(iox_prefix().as_bytes()).map_err(|e| err("prefix")(&e))?;
        config
            .global
            .set_root_path(&Path::new(iox_root().as_bytes()).map_err(|e| err("root")(&e))?);
        NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(|e| err("node")(&e))
    }

    fn service_name(size: usize) -> String {
        format!("shmkit-reqrep/{size}")
    }

    /// A deadline-bounded busy-poll.
    fn poll<T>(what: &str, mut f: impl FnMut() -> Res<Option<T>>) -> Res<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0u32;
        loop {
            if let Some(v) = f()? {
                return Ok(v);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(4096) && Instant::now() > deadline {
                return Err(format!("iceoryx2: no {what} within 10 s"));
            }
            std::hint::spin_loop();
        }
    }

    pub struct IoxCase {
        // Ports before the node: dropped first.
        client: IoxClient<ipc::Service, [u8], (), [u8], ()>,
        size: usize,
        _node: Node<ipc::Service>,
        _kid: Kid,
    }

    impl IoxCase {
        pub fn new(size: usize) -> Res<IoxCase> {
            let name = format!("shmkit-reqrep-{}-iox{size}", std::process::id());
            let kid = spawn("iox", &name, size)?;
            let node = node()?;
            let sn: ServiceName = service_name(size)
                .as_str()
                .try_into()
                .map_err(|e| err("service name")(&e))?;
            let service = node
                .service_builder(&sn)
                .request_response::<[u8], [u8]>()
                .open()
                .map_err(|e| err("open service")(&e))?;
            let client = service
                .client_builder()
                .initial_max_slice_len(size)
                .create()
                .map_err(|e| err("client")(&e))?;
            let mut case = IoxCase {
                client,
                size,
                _node: node,
                _kid: kid,
            };
            // The server learns of the client on its next receive: retry
            // the first call until a reply comes.
            let t0 = Instant::now();
            while case.call_once(Duration::from_millis(200)).is_err() {
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err("iceoryx2: the server never answered".into());
                }
            }
            Ok(case)
        }

        fn call_once(&mut self, limit: Duration) -> Res<u64> {
            let req = self
                .client
                .loan_slice_uninit(self.size)
                .map_err(|e| err("loan request")(&e))?;
            let pending = req
                .write_from_fn(|_| 7)
                .send()
                .map_err(|e| err("send request")(&e))?;
            let t0 = Instant::now();
            loop {
                if let Some(r) = pending.receive().map_err(|e| err("receive")(&e))? {
                    return Ok(std::hint::black_box(fill_sum(r.payload())));
                }
                if t0.elapsed() > limit {
                    return Err("iceoryx2: no response".into());
                }
                std::hint::spin_loop();
            }
        }
    }

    impl Case for IoxCase {
        fn round_trip(&mut self) -> Res<Duration> {
            let t0 = Instant::now();
            let n = self.call_once(Duration::from_secs(10))?;
            let d = t0.elapsed();
            if n != self.size as u64 {
                return Err(format!("iceoryx2 reply sum {n}"));
            }
            Ok(d)
        }
    }

    pub fn server(size: usize) -> Res<()> {
        let node = node()?;
        let sn: ServiceName = service_name(size)
            .as_str()
            .try_into()
            .map_err(|e| err("service name")(&e))?;
        let service = node
            .service_builder(&sn)
            .request_response::<[u8], [u8]>()
            .open_or_create()
            .map_err(|e| err("create service")(&e))?;
        let server = service
            .server_builder()
            .initial_max_slice_len(size)
            .create()
            .map_err(|e| err("server")(&e))?;
        ready();
        loop {
            let req = poll("request", || {
                server.receive().map_err(|e| err("receive")(&e))
            })?;
            let n = req.payload().len();
            std::hint::black_box(fill_sum(req.payload()));
            let rep = req
                .loan_slice_uninit(n)
                .map_err(|e| err("loan response")(&e))?;
            rep.write_from_fn(|_| 1)
                .send()
                .map_err(|e| err("send response")(&e))?;
        }
    }
}

fn child(role: &str) -> Res<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let name = std::env::var(NAME).map_err(|e| e.to_string())?;
    let size: usize = std::env::var(SIZE)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|e| format!("{e}"))?;
    match role {
        "rpc-busy" => rpc_server(&name, size, true),
        "rpc-default" => rpc_server(&name, size, false),
        "uds" => uds_server(&name),
        #[cfg(feature = "iceoryx2")]
        "iox" => iox::server(size),
        r => Err(format!("unknown role {r}")),
    }
}

/// `(p50, p99)` in µs of `n` round trips after `warm` untimed ones.
fn measure(case: &mut dyn Case, warm: usize, n: usize) -> Res<(f64, f64)> {
    for _ in 0..warm {
        case.round_trip()?;
    }
    let mut s = Vec::with_capacity(n);
    for _ in 0..n {
        s.push(case.round_trip()?.as_secs_f64() * 1e6);
    }
    s.sort_by(f64::total_cmp);
    Ok((s[s.len() / 2], s[s.len() * 99 / 100]))
}

fn make(id: &str, size: usize) -> Res<Box<dyn Case>> {
    Ok(match id {
        #[cfg(feature = "iceoryx2")]
        "iox2/busy-poll" => Box::new(iox::IoxCase::new(size)?),
        "rpc/busy-poll" => Box::new(RpcCase::new(size, true)?),
        "rpc/default" => Box::new(RpcCase::new(size, false)?),
        "uds/blocking" => Box::new(UdsCase::new(size)?),
        _ => return Err(format!("unknown case {id}")),
    })
}

fn run() -> Res<()> {
    let ids: Vec<&str> = [
        "iox2/busy-poll",
        "rpc/busy-poll",
        "rpc/default",
        "uds/blocking",
    ]
    .into_iter()
    .filter(|id| cfg!(feature = "iceoryx2") || !id.starts_with("iox2"))
    .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "request/response round trip, µs (load average: {})",
        load.trim()
    );
    println!("{:<18} {:>8} {:>10} {:>10}", "case", "size", "p50", "p99");
    let mut rows = Vec::new();
    for (size, label) in [(8usize, "8 B"), (1 << 20, "1 MiB")] {
        let (warm, n) = match (quick(), size) {
            (true, 8) => (200, 2_000),
            (true, _) => (10, 100),
            (false, 8) => (2_000, 20_000),
            (false, _) => (50, 1_000),
        };
        for id in &ids {
            let mut case = make(id, size)?;
            let (p50, p99) = measure(case.as_mut(), warm, n)?;
            drop(case);
            println!("{id:<18} {label:>8} {p50:>10.2} {p99:>10.2}");
            rows.push((*id, size, p50));
        }
    }
    let p50 = |id: &str, size: usize| {
        rows.iter()
            .find(|r| r.0 == id && r.1 == size)
            .map_or(f64::NAN, |r| r.2)
    };
    println!("\nratios (p50):");
    for (size, label) in [(8usize, "8 B"), (1 << 20, "1 MiB")] {
        println!(
            "  {label:>5}: rpc/busy-poll / iox2/busy-poll {:.2}x, rpc/default / uds/blocking {:.2}x",
            p50("rpc/busy-poll", size) / p50("iox2/busy-poll", size),
            p50("rpc/default", size) / p50("uds/blocking", size)
        );
    }
    Ok(())
}

fn cleanup() {
    let _ = std::fs::remove_dir_all(iox_root());
    let prefix = iox_prefix();
    let me = format!("shmkit-reqrep-{}-", std::process::id());
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) || n.contains(&me) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        if let Err(e) = child(&role) {
            eprintln!("reqrep child {role}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let r = run();
    cleanup();
    if let Err(e) = r {
        eprintln!("reqrep: {e}");
        std::process::exit(1);
    }
}
