//! Running one job: the parent builds its end, spawns this same binary in
//! the peer role (`__peer <json spec>`), waits until the child says it is
//! ready, runs its role, and reaps the child. A watchdog kills a child that
//! outlives the job's deadline; the child dies with the parent
//! (`PR_SET_PDEATHSIG`).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::contender::channel::{PubSubLink, RingLink};
use crate::contender::floor::FloorLink;
#[cfg(feature = "iceoryx2")]
use crate::contender::iox2::Iox2Link;
use crate::contender::stream::{StreamLink, CHILD_READ_FD};
use crate::contender::ContenderId;
use crate::job::{child_role, parent_role, Outcome, PeerSpec};
use crate::link::{Link, Result, PEER_EXITED};

/// The first argument that selects the peer role.
pub const PEER_ARG: &str = "__peer";

/// Runs one job in the parent role and returns what it measured.
pub fn run_job(spec: &PeerSpec) -> Result<Outcome> {
    crate::link::set_affinity(if spec.pin { Some(0) } else { None })?;
    let out = match spec.contender {
        ContenderId::Floor => drive(FloorLink::parent(spec)?, Vec::new(), spec),
        ContenderId::RingSpin => drive(RingLink::parent(spec, true)?, Vec::new(), spec),
        ContenderId::RingSpinBatch => drive(
            RingLink::parent(spec, true)?.batched(spec),
            Vec::new(),
            spec,
        ),
        ContenderId::RingBlock => drive(RingLink::parent(spec, false)?, Vec::new(), spec),
        ContenderId::PubSubSpin => drive(PubSubLink::parent(spec, true)?, Vec::new(), spec),
        ContenderId::PubSubBlock => drive(PubSubLink::parent(spec, false)?, Vec::new(), spec),
        ContenderId::Pipe => {
            let (l, fds) = StreamLink::pipe_parent(spec)?;
            drive(l, fds, spec)
        }
        ContenderId::Uds => {
            let (l, fds) = StreamLink::uds_parent(spec)?;
            drive(l, fds, spec)
        }
        #[cfg(feature = "iceoryx2")]
        ContenderId::Iceoryx2 => drive(Iox2Link::parent(spec)?, Vec::new(), spec),
        #[cfg(not(feature = "iceoryx2"))]
        ContenderId::Iceoryx2 => Err("built without the iceoryx2 feature".to_string()),
    };
    crate::cleanup::after_job(spec);
    out
}

/// The peer role's main: builds the child's end, reports ready on stdout,
/// runs the child's role.
pub fn peer_main(spec_json: &str) -> Result<()> {
    let spec: PeerSpec =
        serde_json::from_str(spec_json).map_err(|e| format!("bad peer spec: {e}"))?;
    let deadline = spec.deadline();
    // The peer inherits the parent's mask: pin or release explicitly.
    crate::link::set_affinity(if spec.pin { Some(1) } else { None })?;
    match spec.contender {
        ContenderId::Floor => serve(FloorLink::child(&spec)?, &spec, deadline),
        ContenderId::RingSpin => serve(RingLink::child(&spec, true)?, &spec, deadline),
        ContenderId::RingSpinBatch => serve(
            RingLink::child(&spec, true)?.batched(&spec),
            &spec,
            deadline,
        ),
        ContenderId::RingBlock => serve(RingLink::child(&spec, false)?, &spec, deadline),
        ContenderId::PubSubSpin => serve(PubSubLink::child(&spec, true)?, &spec, deadline),
        ContenderId::PubSubBlock => serve(PubSubLink::child(&spec, false)?, &spec, deadline),
        ContenderId::Pipe | ContenderId::Uds => serve(StreamLink::child(&spec)?, &spec, deadline),
        #[cfg(feature = "iceoryx2")]
        ContenderId::Iceoryx2 => serve(Iox2Link::child(&spec)?, &spec, deadline),
        #[cfg(not(feature = "iceoryx2"))]
        ContenderId::Iceoryx2 => Err("built without the iceoryx2 feature".to_string()),
    }
}

fn serve<L: Link>(mut link: L, spec: &PeerSpec, deadline: Instant) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot report ready: {e}"))?;
    drop(out);
    child_role(&mut link, &spec.job, deadline)
}

/// Watches the child until cancelled: notes its exit, kills it at the
/// deadline. It kills through the shared [`Child`], which never signals a
/// reaped child, so a recycled pid is never hit.
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Polls the child every 10 ms: flags [`PEER_EXITED`] when it has
    /// exited, kills it when `timeout` has passed.
    fn start(child: Arc<Mutex<Child>>, timeout: Duration) -> Watchdog {
        // Relaxed: a hint read by `spin_until`; reset before the child runs.
        PEER_EXITED.store(false, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<()>();
        let deadline = Instant::now() + timeout;
        let thread = std::thread::spawn(move || loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Ok(mut c) = child.lock() else { return };
            if let Ok(Some(_)) = c.try_wait() {
                // Relaxed: see above.
                PEER_EXITED.store(true, Ordering::Relaxed);
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return;
            }
        });
        Watchdog {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn(spec: &PeerSpec, child_fds: Vec<OwnedFd>) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
    // Move the child's descriptors out of the way of 3, 4 first, so the
    // dup2 calls below cannot clobber one another.
    let mut high = Vec::new();
    for fd in &child_fds {
        // SAFETY: plain syscall on a descriptor we own.
        let h = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if h < 0 {
            return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `h` is a fresh descriptor that we now own.
        high.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(h) });
    }
    drop(child_fds);
    let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(exe);
    cmd.arg(PEER_ARG)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, dup2) on values captured by copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (k, &fd) in raw.iter().enumerate() {
                // dup2 clears FD_CLOEXEC on the target.
                if libc::dup2(fd, CHILD_READ_FD + k as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("spawn peer: {e}"))?;
    drop(high);
    Ok(child)
}

/// Waits (bounded) for the child's `ready` line.
fn wait_ready(stdout: &mut ChildStdout, deadline: Instant) -> Result<()> {
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            return Err("peer did not become ready in time".to_string());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        let mut b = [0u8; 64];
        match stdout.read(&mut b) {
            Ok(0) => return Err("peer exited before becoming ready".to_string()),
            Ok(k) => got.extend_from_slice(&b[..k]),
            Err(e) => return Err(format!("reading peer: {e}")),
        }
    }
    if got != b"ready\n" {
        return Err(format!("peer said {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// Waits (bounded) for the child to exit and checks its status; kills it
/// at the deadline.
fn reap(child: &Mutex<Child>, deadline: Instant) -> Result<()> {
    loop {
        let mut c = child.lock().map_err(|_| "child lock poisoned")?;
        match c.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("peer failed: {st}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = c.kill();
                let _ = c.wait();
                return Err("peer did not exit in time".to_string());
            }
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn drive<L: Link>(mut link: L, child_fds: Vec<OwnedFd>, spec: &PeerSpec) -> Result<Outcome> {
    let deadline = spec.deadline();
    let mut child = spawn(spec, child_fds)?;
    let mut stdout = child.stdout.take().ok_or("no child stdout")?;
    let child = Arc::new(Mutex::new(child));
    let watchdog = Watchdog::start(Arc::clone(&child), Duration::from_millis(spec.timeout_ms));
    let result = wait_ready(&mut stdout, deadline)
        .and_then(|()| parent_role(&mut link, &spec.job, deadline));
    // Our end goes first: a child blocked on a stream then sees EOF.
    drop(link);
    let reaped = match &result {
        Ok(_) => reap(&child, deadline + Duration::from_secs(5)),
        Err(_) => {
            if let Ok(mut c) = child.lock() {
                let _ = c.kill();
                let _ = c.wait();
            }
            Ok(())
        }
    };
    drop(watchdog);
    let out = result?;
    reaped?;
    Ok(out)
}
