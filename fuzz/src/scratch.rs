//! Scratch segment files: a unique name per process and iteration, and a
//! guard that deletes the file whatever happens to the iteration.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};

use shmkit::segment;

/// Where the file of segment `name` lives.
pub fn path_of(name: &str) -> String {
    format!("/dev/shm/{}", segment::file_name(name))
}

/// A segment name no other process (and no earlier iteration) uses:
/// `fz<pid>.<n>`. Starts with a letter, as keys must.
pub fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness within this process matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("fz{}.{n}", std::process::id())
}

/// Owns a scratch name; removes its file on drop (if the library has not
/// already removed it), so an iteration leaves nothing in `/dev/shm`.
pub struct Scratch {
    /// The segment key.
    pub name: String,
}

impl Scratch {
    /// A fresh unique name; no file yet.
    pub fn new() -> Scratch {
        Scratch {
            name: unique_name(),
        }
    }

    /// Writes `bytes` as the whole segment file (mode 0600, ours).
    pub fn write_file(&self, bytes: &[u8]) -> std::io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path_of(&self.name))?;
        f.write_all_at(bytes, 0)
    }

    /// Opens the existing file for direct edits (as a hostile peer would).
    pub fn edit(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path_of(&self.name))
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::fs::remove_file(path_of(&self.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", path_of(&self.name)),
        }
    }
}
