//! Names of everything the harness creates, and its removal.
//!
//! - shmkit segments (floor, shmkit contenders): `shmkit-bench-<pid>-<n>`,
//!   unique per job, created with lifetime `UntilLastDetach` and removed by
//!   the parent after the job in any case.
//! - iceoryx2: its root directory is moved from `/tmp/iceoryx2/` to
//!   `/tmp/shmkit-bench-<pid>/iceoryx2/` and its file prefix from `iox2_` to
//!   `iox2sb<pid>_`; its shared memory objects appear in `/dev/shm` under
//!   that prefix. Both are removed after every job and at the end.
//! - A run that was killed cannot clean up: the next run removes the files
//!   of runs whose pid no longer exists.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::job::PeerSpec;

const SHM_DIR: &str = "/dev/shm";

/// A fresh resource base name for one job.
pub fn next_resource() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a counter; uniqueness only needs atomicity.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{}{n}", resource_prefix())
}

/// Prefix of every shmkit segment name of this run.
pub fn resource_prefix() -> String {
    format!("shmkit-bench-{}-", std::process::id())
}

/// iceoryx2 file prefix of this run.
pub fn iox_prefix() -> String {
    format!("iox2sb{}_", std::process::id())
}

/// Per-run directory (iceoryx2's root lives inside).
pub fn run_dir() -> String {
    format!("/tmp/shmkit-bench-{}", std::process::id())
}

/// iceoryx2 root directory of this run (must end with `/`).
pub fn iox_root() -> String {
    format!("{}/iceoryx2/", run_dir())
}

/// Names in `/dev/shm` that belong to this run.
pub fn leftovers() -> Vec<String> {
    let (res, iox) = (resource_prefix(), iox_prefix());
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(SHM_DIR) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(&res) || name.starts_with(&iox) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// The pid in a name made by an earlier run: `iox2sb<pid>_…`,
/// `shmkit.shmkit-bench-<pid>-…` or `shmkit-bench-<pid>`.
fn pid_in(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("iox2sb")
        .or_else(|| name.strip_prefix("shmkit.shmkit-bench-"))
        .or_else(|| name.strip_prefix("shmkit-bench-"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether a process with this pid exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what earlier runs that were killed (so never cleaned up) left
/// in `/dev/shm` and `/tmp`; returns the names removed.
pub fn stale_from_dead_runs() -> Vec<String> {
    let mut removed = Vec::new();
    for (dir, is_dir) in [(SHM_DIR, false), ("/tmp", true)] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = pid_in(&name) else { continue };
            if pid == std::process::id() || alive(pid) {
                continue;
            }
            let path = Path::new(dir).join(&name);
            let ok = if is_dir {
                name.starts_with("shmkit-bench-") && std::fs::remove_dir_all(&path).is_ok()
            } else {
                std::fs::remove_file(&path).is_ok()
            };
            if ok {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

/// Removes what a finished job may have left (nothing, normally; a killed
/// peer can leave iceoryx2 files).
pub fn after_job(_spec: &PeerSpec) {
    for name in leftovers() {
        let _ = std::fs::remove_file(Path::new(SHM_DIR).join(name));
    }
}

/// Removes everything of this run; returns what had to be removed from
/// `/dev/shm` (should be empty).
pub fn at_exit() -> Vec<String> {
    let left = leftovers();
    for name in &left {
        let _ = std::fs::remove_file(Path::new(SHM_DIR).join(name));
    }
    let _ = std::fs::remove_dir_all(run_dir());
    left
}
