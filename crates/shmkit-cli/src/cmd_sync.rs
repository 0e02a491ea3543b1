//! `shmkit sem ...`, `shmkit mutex ...` and `shmkit lock`: named
//! semaphores and robust mutexes from the shell.

use std::os::unix::process::CommandExt;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shmkit::segment::{Kind, Segment, SegmentInfo};
use shmkit::sync::lease::Lease;
use shmkit::sync::{
    describe, EventMode, LockError, MutexState, NamedEvent, NamedMutex, NamedSemaphore, State,
    WaitError, SEM_VALUE_MAX,
};

use crate::util::{parse_duration, CliError, CliResult};

/// The synchronisation commands, flattened into the top-level command.
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Named counting semaphores.
    #[command(subcommand)]
    Sem(SemCommand),
    /// Named robust mutexes.
    #[command(subcommand)]
    Mutex(MutexCommand),
    /// Named auto- or manual-reset events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Run a command while holding a named mutex (like flock(1)).
    ///
    /// If the previous holder died holding the mutex, a note goes to
    /// stderr and the command runs anyway. Exits with the command's status
    /// (128+N if it was killed by signal N). SIGINT/SIGTERM to shmkit are
    /// passed to the command as SIGTERM; the lock is released when it ends.
    ///
    /// The command never runs without the lock, even if shmkit is killed
    /// (kill -9): besides the mutex, shmkit holds a lease (an OFD lock on
    /// the mutex's segment file) through a descriptor that the command
    /// inherits. If shmkit dies, the command keeps the lease until it
    /// exits, and the next `shmkit lock` waits for that before it runs its
    /// own command. As with flock(1), processes that inherit the
    /// descriptor from the command keep the lease while they run, unless
    /// the command closes it (its number is in $SHMKIT_LOCK_FD); it is
    /// released when the command ends normally.
    Lock(LockArgs),
}

/// `shmkit sem ...`
#[derive(Debug, Subcommand)]
pub enum SemCommand {
    /// Create a semaphore.
    Create {
        /// Semaphore name.
        name: String,
        /// Initial value.
        #[arg(long, default_value_t = 0)]
        value: u32,
    },
    /// Add to the value, waking waiters.
    Post {
        /// Semaphore name.
        name: String,
        /// How much to add.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Take one unit, waiting for it if the value is 0 (exit 1 on timeout).
    Wait {
        /// Semaphore name.
        name: String,
        /// Give up after this long (e.g. 500ms, 5s); default: wait forever.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Print the current value.
    Value {
        /// Semaphore name.
        name: String,
    },
}

/// `shmkit mutex ...`
#[derive(Debug, Subcommand)]
pub enum MutexCommand {
    /// Create a mutex (to be used with `shmkit lock`).
    Create {
        /// Mutex name.
        name: String,
    },
}

/// `shmkit event ...`
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Create an event, initially unset.
    Create {
        /// Event name.
        name: String,
        /// Manual-reset (stays set until `reset`) instead of auto-reset.
        #[arg(long)]
        manual: bool,
    },
    /// Signal the event.
    Set {
        /// Event name.
        name: String,
    },
    /// Unset the event.
    Reset {
        /// Event name.
        name: String,
    },
    /// Wait until the event is set (exit 1 on timeout).
    Wait {
        /// Event name.
        name: String,
        /// Give up after this long; default: wait forever.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

/// `shmkit lock NAME [--timeout D] -- COMMAND [ARGS...]`
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Mutex name (created with `shmkit mutex create`, or any mutex).
    pub name: String,
    /// Give up (exit 1) if the lock (mutex and lease) is not free within
    /// this time.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The command to run and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs one synchronisation command.
pub fn run(cmd: SyncCommand) -> CliResult {
    match cmd {
        SyncCommand::Sem(c) => run_sem(c),
        SyncCommand::Mutex(MutexCommand::Create { name }) => {
            NamedMutex::<()>::create(&name, ())?;
            Ok(())
        }
        SyncCommand::Event(c) => run_event(c),
        SyncCommand::Lock(a) => run_lock(a),
    }
}

fn wait_err(what: &str, name: &str, e: WaitError) -> CliError {
    match e {
        WaitError::Timeout => CliError::fail(format!("{what} {name:?}: timed out")),
        e => CliError::fail(format!("{what} {name:?}: {e}")),
    }
}

fn run_sem(c: SemCommand) -> CliResult {
    match c {
        SemCommand::Create { name, value } => {
            if value > SEM_VALUE_MAX {
                return Err(CliError::usage(format!(
                    "--value {value} exceeds {SEM_VALUE_MAX}"
                )));
            }
            NamedSemaphore::create(&name, value)?;
        }
        SemCommand::Post { name, count } => {
            let s = NamedSemaphore::open(&name)?;
            s.post_n(count)
                .map_err(|e| CliError::fail(format!("post {name:?}: {e}")))?;
        }
        SemCommand::Wait { name, timeout } => {
            let s = NamedSemaphore::open(&name)?;
            match timeout {
                Some(t) => s.wait_timeout(t),
                None => s.wait(),
            }
            .map_err(|e| wait_err("wait", &name, e))?;
        }
        SemCommand::Value { name } => {
            let s = NamedSemaphore::open(&name)?;
            let v = s
                .value()
                .map_err(|e| CliError::fail(format!("value {name:?}: {e}")))?;
            println!("{v}");
        }
    }
    Ok(())
}

fn run_event(c: EventCommand) -> CliResult {
    match c {
        EventCommand::Create { name, manual } => {
            let mode = if manual {
                EventMode::ManualReset
            } else {
                EventMode::AutoReset
            };
            NamedEvent::create(&name, mode)?;
        }
        EventCommand::Set { name } => {
            NamedEvent::open(&name)?
                .set()
                .map_err(|e| CliError::fail(format!("set {name:?}: {e}")))?;
        }
        EventCommand::Reset { name } => {
            NamedEvent::open(&name)?
                .reset()
                .map_err(|e| CliError::fail(format!("reset {name:?}: {e}")))?;
        }
        EventCommand::Wait { name, timeout } => {
            let e = NamedEvent::open(&name)?;
            match timeout {
                Some(t) => e.wait_timeout(t),
                None => e.wait(),
            }
            .map_err(|e| wait_err("wait", &name, e))?;
        }
    }
    Ok(())
}

fn run_lock(a: LockArgs) -> CliResult {
    let name = &a.name;
    let deadline = a.timeout.and_then(|t| Instant::now().checked_add(t));
    let m = NamedMutex::<()>::open_untyped(name)?;
    let r = match deadline {
        Some(d) => m.lock_timeout(d.saturating_duration_since(Instant::now())),
        None => m.lock(),
    };
    let timed_out = || CliError::fail(format!("lock {name:?}: timed out"));
    let guard = match r {
        Ok(g) => g,
        Err(LockError::OwnerDied(mut g)) => {
            eprintln!(
                "shmkit: lock {name:?}: the previous holder died while holding it; continuing"
            );
            // The CLI protects no data of its own: nothing to repair.
            g.mark_consistent();
            g
        }
        Err(LockError::Timeout) => return Err(timed_out()),
        Err(e) => return Err(CliError::fail(format!("lock {name:?}: {e}"))),
    };
    // The lease (see `shmkit lock --help` and docs/sync.md): a command
    // whose wrapper was killed may still run and hold it; wait for it to
    // end, under the same deadline.
    let seg = m.segment();
    let lease_err = |e| CliError::fail(format!("lock {name:?}: lease: {e}"));
    let lease = match Lease::try_acquire(seg).map_err(lease_err)? {
        Some(l) => l,
        None => {
            eprintln!(
                "shmkit: lock {name:?}: the previous holder's command still runs; waiting for it"
            );
            match Lease::acquire(seg, deadline).map_err(lease_err)? {
                Some(l) => l,
                None => return Err(timed_out()),
            }
        }
    };
    let (prog, args) = a
        .command
        .split_first()
        .ok_or_else(|| CliError::usage("lock: missing COMMAND"))?;
    // SIGINT/SIGTERM must not kill us while we hold the lock (the next
    // locker would be told we died): catch them, pass SIGTERM on to the
    // command, and unlock when it ends. A caught signal's handler is reset
    // to the default in the command by exec, so it reacts normally.
    crate::signals::install_stop_handler();
    let fd = lease.raw_fd();
    let mut cmd = Process::new(prog);
    cmd.args(args).env("SHMKIT_LOCK_FD", fd.to_string());
    // SAFETY: the closure runs in the child between fork and exec and
    // only calls fcntl(2), which is async-signal-safe; `fd` is open in the
    // child (inherited from us, we keep it open until the child is
    // reaped).
    unsafe {
        cmd.pre_exec(move || {
            // Inherit the lease's descriptor (clear FD_CLOEXEC): the
            // command shares the open file description that holds it.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(lease);
            drop(guard);
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(CliError::with_code(
                code,
                format!("lock {name:?}: cannot run {prog:?}: {e}"),
            ));
        }
    };
    let code = wait_forwarding_stop(child.id() as libc::pid_t);
    // The command ended: release the lease, then the mutex (the next
    // locker takes the mutex first, then finds the lease free).
    drop(lease);
    drop(guard);
    let code = code.map_err(|e| CliError::fail(format!("lock {name:?}: wait: {e}")))?;
    if code != 0 {
        // The command's own status, with no message of ours.
        return Err(CliError::with_code(code, ""));
    }
    Ok(())
}

/// Reaps `pid`, forwarding a stop request (SIGINT/SIGTERM caught by us)
/// to it as SIGTERM once. Returns its exit code, or 128+N if signal N
/// killed it.
fn wait_forwarding_stop(pid: libc::pid_t) -> std::io::Result<i32> {
    let mut forwarded = false;
    loop {
        // Checked before every wait, and the wait never blocks: a stop
        // signal that arrives between a check and a blocking `waitpid`
        // would otherwise go unforwarded until the command ends on its own.
        if crate::signals::stop_requested() && !forwarded {
            // SAFETY: kill(2) of our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            forwarded = true;
        }
        let mut st: libc::c_int = 0;
        // SAFETY: `pid` is our unreaped child (std's `Child` never waits
        // on it: we only dropped the handle); `st` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Ok(if libc::WIFSIGNALED(st) {
                128 + libc::WTERMSIG(st)
            } else {
                libc::WEXITSTATUS(st)
            });
        }
        if r == 0 {
            // Still running: poll at 100 Hz (a stop request is forwarded
            // within 10 ms).
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// State of a mutex, semaphore or event segment for `shmkit ls`/`stat`:
/// a one-line summary and a JSON object; `None` for other kinds (or if
/// the segment vanished). Never locks or changes anything.
pub fn describe_info(info: &SegmentInfo) -> Option<(String, Value)> {
    let kind = info.header.as_ref().ok()?.kind;
    if !matches!(kind, Kind::Mutex | Kind::Semaphore | Kind::Event) {
        return None;
    }
    let seg = Segment::builder(&info.name).read_only().open().ok()?;
    let state = match describe(&seg) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error: {e}");
            return Some((msg.clone(), json!({ "error": msg })));
        }
    };
    let v = match &state {
        State::Mutex(m) => match m {
            MutexState::Free => json!({ "state": "free" }),
            MutexState::Held {
                pid,
                tid,
                repairing,
            } => json!({ "state": "held", "pid": pid, "tid": tid, "repairing": repairing }),
            MutexState::OwnerDied => json!({ "state": "owner-died" }),
            MutexState::Unrecoverable => json!({ "state": "unrecoverable" }),
        },
        State::Semaphore { value, sleepers } => json!({ "value": value, "sleepers": sleepers }),
        State::Event {
            mode,
            set,
            sleepers,
        } => json!({ "mode": mode.as_str(), "set": set, "sleepers": sleepers }),
    };
    Some((state.to_string(), v))
}
