//! End-to-end tests of `shmkit serve NAME -- CMD` and `shmkit call`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

/// A `shmkit serve` child: SIGTERMed (a clean stop that removes the
/// service), then killed if needed, when dropped.
struct Serve(Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = shmkit::channel::rpc::Server::remove(&self.1);
    }
}

fn name(what: &str) -> String {
    format!("t-rpccli-{what}-{}", std::process::id())
}

fn call(name: &str, input: &[u8], extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN)
        .arg("call")
        .arg(name)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

fn start(name: &str, cmd: &[&str]) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", name, "--"])
        .args(cmd)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve(child, name.to_owned());
    // Ready when a call goes through.
    let t0 = Instant::now();
    loop {
        let o = call(name, b"", &["--timeout", "2s"]);
        if o.status.success() {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "serve never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_runs_cmd_per_request_and_call_prints_the_reply() {
    let n = name("tr");
    let _s = start(&n, &["tr", "a-z", "A-Z"]);
    let o = call(&n, b"hello, world\n", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"HELLO, WORLD\n");
    // From a file, and several callers at once.
    let dir = std::env::temp_dir().join(format!("rpccli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("req");
    std::fs::write(&f, b"from a file").unwrap();
    let out = Command::new(BIN)
        .args(["call", &n])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"FROM A FILE");
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let n = n.clone();
            std::thread::spawn(move || {
                let msg = format!("caller {i}");
                let o = call(&n, msg.as_bytes(), &[]);
                assert_eq!(o.stdout, msg.to_uppercase().as_bytes());
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn call_without_a_server_fails_and_times_out() {
    let n = name("none");
    let o = call(&n, b"x", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("shmkit: "));
    // A slow CMD (5 s for a non-empty request): --timeout ends the call.
    let slow = name("slow");
    let _t = start(
        &slow,
        &["sh", "-c", "read x || true; [ -n \"$x\" ] && sleep 5; true"],
    );
    let t0 = Instant::now();
    let o = call(&slow, b"wait\n", &["--timeout", "300ms"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    assert!(t0.elapsed() < Duration::from_secs(4));
}
