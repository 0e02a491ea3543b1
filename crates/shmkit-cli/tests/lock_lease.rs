//! `shmkit lock NAME -- CMD` keeps flock(1)'s promise: CMD never runs
//! without the lock, also when the wrapper is killed with SIGKILL while CMD
//! runs (the lease, see docs/sync.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

/// The critical section, run by `sh -c CS sh DIR SECONDS`: enters by
/// creating `DIR/in` (atomic), records its pid there, sleeps, leaves. A
/// second CMD inside at the same time finds `DIR/in` and logs an overlap
/// to `DIR/errors`, with whether the recorded holder is still alive.
/// Every CMD first appends its parent's pid (the wrapper's) to
/// `DIR/started`.
const CS: &str = r#"
echo "$PPID" >> "$1/started"
if ! mkdir "$1/in" 2>/dev/null; then
    p=$(cat "$1/in/pid" 2>/dev/null)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then alive=alive; else alive=gone; fi
    echo "overlap: $$ entered while ${p:-?} was inside ($alive)" >> "$1/errors"
    exit 0
fi
echo $$ > "$1/in/pid"
sleep "$2"
rm -f "$1/in/pid"
rmdir "$1/in"
"#;

fn locker(name: &str, dir: &Path, secs: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["lock", name, "--", "sh", "-c", CS, "sh"])
        .arg(dir)
        .arg(secs)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Removes the mutex and the directory when dropped.
struct Cleanup(String, PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Kills and reaps a child when dropped (a failing test leaves no stray
/// wrapper).
struct Kid(Child);
impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn started_by(dir: &Path, pid: u32) -> bool {
    std::fs::read_to_string(dir.join("started"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == pid.to_string())
}

#[test]
fn killed_wrapper_never_lets_two_commands_run() {
    let name = format!("t-lease-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmkit-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _g = Cleanup(name.clone(), dir.clone());
    let out = Command::new(BIN)
        .args(["mutex", "create", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Two contenders take the lock in a loop with short commands.
    let stop = Arc::new(AtomicBool::new(false));
    let contenders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, name, dir) = (stop.clone(), name.clone(), dir.clone());
            std::thread::spawn(move || {
                let mut runs = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let st = locker(&name, &dir, "0.01").status().unwrap();
                    assert!(st.success(), "contender: {st:?}");
                    runs += 1;
                }
                runs
            })
        })
        .collect();

    // 50 wrappers killed with SIGKILL: half at a random point after
    // start (waiting for the lock, taking the lease, spawning...), half
    // while their command runs.
    let mut seed = u64::from(std::process::id()) | 1;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut killed_mid_command = 0;
    for round in 0..50 {
        let secs = format!("0.{:02}", 5 + rand(15));
        let mut victim = Kid(locker(&name, &dir, &secs).spawn().unwrap());
        let pid = victim.0.id();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rand(50)));
        } else {
            let t0 = Instant::now();
            while !started_by(&dir, pid) {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "round {round}: the wrapper never ran its command"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rand(40)));
        }
        victim.0.kill().unwrap();
        victim.0.wait().unwrap();
        if started_by(&dir, pid) {
            killed_mid_command += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let runs: u32 = contenders.into_iter().map(|t| t.join().unwrap()).sum();
    // Wait until every orphaned command is done: taking the lock waits for
    // the lease they hold.
    let st = Command::new(BIN)
        .args(["lock", &name, "--timeout", "30s", "--", "true"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let errors = std::fs::read_to_string(dir.join("errors")).unwrap_or_default();
    eprintln!(
        "50 wrappers killed ({killed_mid_command} while their command ran), \
         {runs} contender runs"
    );
    assert!(errors.is_empty(), "two holders at once:\n{errors}");
    assert!(killed_mid_command >= 25, "{killed_mid_command}");
    assert!(runs > 0);
}

#[test]
fn lease_wait_honours_the_timeout() {
    let name = format!("t-lease-to-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmkit-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _g = Cleanup(name.clone(), dir.clone());
    let out = Command::new(BIN)
        .args(["mutex", "create", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A wrapper killed while its command (2 s) runs.
    let mut victim = Kid(locker(&name, &dir, "2").spawn().unwrap());
    let pid = victim.0.id();
    let t0 = Instant::now();
    while !started_by(&dir, pid) {
        assert!(t0.elapsed() < Duration::from_secs(30), "never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    // The orphaned command holds the lease: a short --timeout expires.
    let out = Command::new(BIN)
        .args(["lock", &name, "--timeout", "200ms", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("still runs") && err.contains("timed out"),
        "{err}"
    );
    // Then the lock is free again once the command ended.
    let out = Command::new(BIN)
        .args(["lock", &name, "--timeout", "30s", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.join("in").exists(), "the command had not finished");
}
