//! Two simulated machines on one host, for the bridge's tests.
//!
//! Each [`Machine`] is a mount namespace with its own tmpfs on `/dev/shm`
//! (`unshare -m`, then `mount -t tmpfs`), held by a `sleep` process;
//! commands run inside it through `nsenter -m`. The two machines' shared
//! memory is invisible to each other, as on two hosts; only TCP on
//! 127.0.0.1 connects them.
//!
//! Fallback where `unshare` is not allowed (not root, no CAP_SYS_ADMIN):
//! both machines share the real `/dev/shm` and differ only by a name
//! prefix. It is used only when the namespace cannot be made AND we are
//! not root, or when `SHMKIT_BRIDGE_TEST_FALLBACK=1` forces it; as root
//! (CI) a failing `unshare` fails the test instead of silently falling
//! back.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bridge binary under test.
pub fn bridge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shmkit-bridge")
}

/// The `shmkit` CLI: `$SHMKIT_BIN`, else built once from the root
/// workspace (`cargo build -p shmkit-cli`).
pub fn shmkit_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SHMKIT_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "shmkit-cli",
                "--message-format=json",
                "--manifest-path",
            ])
            .arg(root.join("Cargo.toml"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build -p shmkit-cli");
        assert!(out.status.success(), "cargo build -p shmkit-cli failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let key = "\"executable\":\"";
        for line in text.lines() {
            if let Some(i) = line.find(key) {
                let rest = &line[i + key.len()..];
                let path = &rest[..rest.find('"').expect("json string")];
                if path.ends_with("/shmkit") {
                    return PathBuf::from(path);
                }
            }
        }
        panic!("cargo build -p shmkit-cli did not report the shmkit executable");
    })
}

/// A free TCP port on 127.0.0.1 (the kernel's choice; bind then release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// `tcp/127.0.0.1:PORT`.
pub fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) {
    let end = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn isolation_forced_off() -> bool {
    std::env::var_os("SHMKIT_BRIDGE_TEST_FALLBACK").is_some_and(|v| v == "1")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sets PR_SET_PDEATHSIG(SIGKILL) in the child: it dies with the test.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls
    // prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now (the test's "kill -9").
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` (e.g. SIGTERM).
    pub fn signal(&mut self, sig: i32) {
        // A reaped child's pid may belong to someone else by now.
        if self.child.try_wait().expect("try_wait").is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, not yet reaped (checked).
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Exit status if it ended within `d`.
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit status within `d`, or panics showing its stderr.
    pub fn expect_exit(&mut self, d: Duration) -> ExitStatus {
        match self.wait_timeout(d) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "{} still running after {d:?}; stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Takes the piped stdin (writes go to the process).
    pub fn stdin(&mut self) -> std::process::ChildStdin {
        self.child.stdin.take().expect("stdin was not piped")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One simulated machine.
pub struct Machine {
    /// The namespace holder (`None` in fallback mode).
    holder: Option<Child>,
    /// Unique per test: channel names, temp files.
    pub prefix: String,
    pub dir: PathBuf,
    names: std::sync::Mutex<Vec<String>>,
}

impl Machine {
    /// A new machine named `label` ("a", "b").
    pub fn new(label: &str) -> Machine {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bt{}-{n}{label}-", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmkit-bridge-test-{prefix}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let holder = if isolation_forced_off() {
            eprintln!("machine {label}: SHMKIT_BRIDGE_TEST_FALLBACK=1: name prefixes instead of mount namespaces");
            None
        } else {
            match Self::namespace() {
                Ok(h) => Some(h),
                Err(e) if is_root() => panic!(
                    "cannot make a mount namespace for machine {label} as root: {e} \
                     (set SHMKIT_BRIDGE_TEST_FALLBACK=1 to use name prefixes instead)"
                ),
                Err(e) => {
                    eprintln!(
                        "machine {label}: no mount namespace ({e}); FALLBACK to name prefixes"
                    );
                    None
                }
            }
        };
        Machine {
            holder,
            prefix,
            dir,
            names: Default::default(),
        }
    }

    fn namespace() -> Result<Child, String> {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1g,mode=1777 tmpfs /dev/shm && echo ready && exec sleep 100000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("unshare: {e}"))?;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped");
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("unshare/mount failed: {}", err.trim()));
        }
        Ok(child)
    }

    /// Whether this machine is a real mount namespace.
    pub fn isolated(&self) -> bool {
        self.holder.is_some()
    }

    /// The channel name `base` on this machine (prefixed, so that the
    /// fallback mode keeps the two machines apart too).
    pub fn name(&self, base: &str) -> String {
        let n = format!("{}{base}", self.prefix);
        self.names.lock().unwrap().push(n.clone());
        n
    }

    /// A command running `program` on this machine.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match &self.holder {
            Some(h) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &h.id().to_string(), "-m", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        die_with_parent(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Spawns `cmd` (from [`command`](Machine::command)) with stderr to a
    /// file in the machine's temp dir.
    pub fn spawn(&self, what: &str, mut cmd: Command) -> Proc {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr_path = self.dir.join(format!("{n}-{}.err", what.replace(' ', "_")));
        cmd.stderr(File::create(&stderr_path).expect("stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
            stderr_path,
        }
    }

    /// Runs `shmkit ARGS` to completion; returns stdout, panics on failure.
    pub fn shmkit(&self, args: &[&str]) -> String {
        let mut cmd = self.command(shmkit_bin());
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = cmd.output().expect("running shmkit");
        assert!(
            out.status.success(),
            "shmkit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `shmkit-bridge ARGS` as a command on this machine.
    pub fn bridge(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(bridge_bin());
        cmd.args(args);
        cmd
    }

    /// The ring's depth (`shmkit stat --json`).
    pub fn ring_depth(&self, name: &str) -> u64 {
        let out = self.shmkit(&["stat", name, "--json"]);
        let key = "\"depth\": ";
        let i = out.find(key).expect("depth in stat --json") + key.len();
        out[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("depth number")
    }

    /// Removes this machine's channels; asserts nothing of ours is left in
    /// its /dev/shm.
    pub fn clean(&self) {
        let names = self.names.lock().unwrap().clone();
        for n in &names {
            let mut cmd = self.command(shmkit_bin());
            cmd.args(["rm", n]).stderr(Stdio::null());
            let _ = cmd.status();
        }
        let mut cmd = self.command("ls");
        cmd.arg("/dev/shm").stdout(Stdio::piped());
        let out = cmd.output().expect("ls /dev/shm");
        let listing = String::from_utf8_lossy(&out.stdout);
        let left: Vec<&str> = listing
            .lines()
            .filter(|l| l.contains(&self.prefix))
            .collect();
        assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(h) = &mut self.holder {
            let _ = h.kill();
            let _ = h.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Session flags every test bridge gets: no scouting of any kind.
pub const QUIET: [&str; 2] = ["--no-multicast-scouting", "--no-gossip"];
