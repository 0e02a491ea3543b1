//! The OS layer: every system call shmkit makes goes through here.
//!
//! Linux only for now. The places a second backend would differ:
//!
//! - **macOS**: POSIX shm names are limited to 31 bytes (`PSHMNAMLEN`), shm
//!   objects are not files (no `O_TMPFILE`+`linkat` publication, no
//!   `/proc/locks`), there are no robust mutexes and no timed semaphore
//!   waits; `os_sync_wait_on_address` (macOS 14.4) replaces the futex.
//! - **Windows**: named file mappings (`CreateFileMappingW`) are freed by
//!   the kernel when the last handle closes, `WAIT_ABANDONED` reports a dead
//!   mutex owner, `WaitOnAddress` is process-private so cross-process waits
//!   need named events.

pub mod flock;
pub mod futex;
pub mod mmap;
pub mod ofd_lock;
pub mod process;
pub mod robust_mutex;
pub mod shm;
pub mod sysv;
