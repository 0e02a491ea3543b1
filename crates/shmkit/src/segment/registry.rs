//! Operations on segments by name, without attaching: list, stat, the
//! three deletions and garbage collection.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::header::{self, Header};
use super::name::{self, file_name, PREFIX};
use super::{read_header, Error, Lifetime, Result};
use crate::sys::{flock, mmap::Mapping, process, shm};

/// What `list` and `stat` know about one segment.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Key (without the namespace prefix).
    pub name: String,
    /// Size of the whole file (header page + data) in bytes.
    pub file_size: u64,
    /// Permission bits now (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// The header, or why it could not be read.
    pub header: std::result::Result<Header, String>,
    /// Marked for deferred removal.
    pub marked: bool,
    /// Number of live attachments (one per attached handle).
    pub attached: usize,
    /// Attached pids, sorted, one per process.
    pub pids: Vec<u32>,
}

impl SegmentInfo {
    /// Creation time, if the header could be read.
    pub fn created_at(&self) -> Option<SystemTime> {
        let h = self.header.as_ref().ok()?;
        Some(UNIX_EPOCH + Duration::from_nanos(h.created_at_ns))
    }

    /// Data area size, if the header could be read.
    pub fn size(&self) -> Option<u64> {
        self.header.as_ref().ok().map(|h| h.data_len)
    }
}

/// A segment that [`gc`] removed (or would remove, on a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Key.
    pub name: String,
    /// Why it was due.
    pub reason: &'static str,
}

enum Probe {
    /// Open failed with this error (vanished, permission...).
    Gone(Error),
    /// We hold an exclusive lock: nobody is attached.
    Alone(
        OwnedFd,
        shm::FileInfo,
        std::result::Result<(Header, u32), Error>,
    ),
    /// Somebody is attached.
    Attached(
        OwnedFd,
        shm::FileInfo,
        std::result::Result<(Header, u32), Error>,
    ),
}

fn probe(op: &'static str, name: &str) -> Probe {
    let file = file_name(name);
    let fd = match shm::open(&file, false) {
        Ok(fd) => fd,
        Err(e) => return Probe::Gone(Error::from_errno(op, name, e)),
    };
    let info = match shm::stat_fd(fd.as_fd()) {
        Ok(i) => i,
        Err(e) => return Probe::Gone(Error::from_errno(op, name, e)),
    };
    let header = read_header(op, name, &fd, info.size);
    match flock::try_exclusive(fd.as_fd()) {
        Ok(true) => Probe::Alone(fd, info, header),
        Ok(false) => Probe::Attached(fd, info, header),
        Err(e) => Probe::Gone(Error::from_errno(op, name, e)),
    }
}

fn due_reason(header: &Header, flags: u32) -> Option<&'static str> {
    if flags & header::FLAG_MARKED != 0 {
        Some("marked for removal, nobody attached")
    } else if header.lifetime == Lifetime::UntilLastDetach {
        Some("until-last-detach, nobody attached")
    } else {
        None
    }
}

/// Removes `name` if it is due (lifetime or mark) and nobody is attached.
/// Returns whether it removed it.
pub(crate) fn collect_if_due(name: &str) -> Result<bool> {
    const OP: &str = "collect";
    match probe(OP, name) {
        Probe::Alone(_fd, info, Ok((h, flags))) if due_reason(&h, flags).is_some() => {
            // We hold the exclusive lock until `_fd` drops, after unlink.
            shm::unlink_if_same(&file_name(name), info.id)
                .map_err(|e| Error::from_errno(OP, name, e))
        }
        _ => Ok(false),
    }
}

fn info_of(
    name: &str,
    info: shm::FileInfo,
    header: std::result::Result<(Header, u32), Error>,
    holders: &std::collections::HashMap<shm::FileId, Vec<u32>>,
) -> SegmentInfo {
    let mut pids = holders.get(&info.id).cloned().unwrap_or_default();
    let attached = pids.len();
    pids.sort_unstable();
    pids.dedup();
    let (header, marked) = match header {
        Ok((h, flags)) => (Ok(h), flags & header::FLAG_MARKED != 0),
        Err(e) => (Err(e.to_string()), false),
    };
    SegmentInfo {
        name: name.to_owned(),
        file_size: info.size,
        mode: info.mode,
        uid: info.uid,
        header,
        marked,
        attached,
        pids,
    }
}

/// Every shmkit segment, sorted by name. Segments that are due and have
/// nobody alive attached are removed on the way and not listed; segments
/// with a damaged header are listed with the reason in `header`.
pub fn list() -> Result<Vec<SegmentInfo>> {
    const OP: &str = "list";
    let names =
        shm::names_with_prefix(PREFIX).map_err(|e| Error::from_errno(OP, shm::SHM_DIR, e))?;
    let mut out = Vec::new();
    let mut probed = Vec::new();
    for file in names {
        let name = &file[PREFIX.len()..];
        if name::validate(OP, name).is_err() {
            continue;
        }
        match probe(OP, name) {
            Probe::Gone(_) => {}
            Probe::Alone(fd, info, Ok((h, flags))) if due_reason(&h, flags).is_some() => {
                let _ = shm::unlink_if_same(&file, info.id);
                drop(fd);
            }
            Probe::Alone(fd, info, header) | Probe::Attached(fd, info, header) => {
                drop(fd); // release our own lock before reading /proc/locks
                probed.push((name.to_owned(), info, header));
            }
        }
    }
    let holders = process::flock_holders();
    for (name, info, header) in probed {
        out.push(info_of(&name, info, header, &holders));
    }
    Ok(out)
}

/// Information about one segment, without attaching to it. A due segment
/// with nobody attached is collected and reported as [`Error::NotFound`].
pub fn stat(name: &str) -> Result<SegmentInfo> {
    const OP: &str = "stat";
    name::validate(OP, name)?;
    match probe(OP, name) {
        Probe::Gone(e) => Err(e),
        Probe::Alone(_fd, info, Ok((h, flags))) if due_reason(&h, flags).is_some() => {
            let _ = shm::unlink_if_same(&file_name(name), info.id);
            Err(Error::NotFound {
                op: OP,
                name: name.to_owned(),
            })
        }
        Probe::Alone(fd, info, header) | Probe::Attached(fd, info, header) => {
            drop(fd);
            Ok(info_of(name, info, header, &process::flock_holders()))
        }
    }
}

/// Deletes `name` now: the name disappears at once; processes attached
/// keep their mapping and the memory is freed when the last one detaches
/// (POSIX `shm_unlink` semantics).
pub fn remove(name: &str) -> Result<()> {
    const OP: &str = "remove";
    name::validate(OP, name)?;
    shm::unlink(&file_name(name)).map_err(|e| Error::from_errno(OP, name, e))
}

/// Marks `name` for deferred removal (System V `IPC_RMID`): it is deleted
/// when the last attached process detaches or dies, at once if nobody is
/// attached (then this returns `true`). New opens fail with
/// [`Error::MarkedForRemoval`].
pub fn remove_when_unused(name: &str) -> Result<bool> {
    const OP: &str = "remove_when_unused";
    name::validate(OP, name)?;
    let err = |e| Error::from_errno(OP, name, e);
    let file = file_name(name);
    let fd = shm::open(&file, true).map_err(err)?;
    let info = shm::stat_fd(fd.as_fd()).map_err(err)?;
    read_header(OP, name, &fd, info.size)?;
    let page = Mapping::new(fd.as_fd(), header::HEADER_SIZE as usize, true).map_err(err)?;
    // The file is at least HEADER_SIZE bytes (checked by read_header).
    let flags = super::flags_word(&page);
    // SeqCst store before our flock attempt: a holder that makes our
    // attempt fail will, on its own detach, take the exclusive lock after
    // us in the kernel's order and load the bit (Acquire) there.
    flags.fetch_or(header::FLAG_MARKED, Ordering::SeqCst);
    drop(page);
    if flock::try_exclusive(fd.as_fd()).map_err(err)? {
        return shm::unlink_if_same(&file, info.id).map_err(err);
    }
    Ok(false)
}

/// Removes every segment that is due (lifetime
/// [`Lifetime::UntilLastDetach`] or marked for removal) and that nobody
/// alive is attached to. With `dry_run`, only reports them. Never touches
/// a persistent, unmarked segment, nor one whose header is damaged.
///
/// Segments whose creator died during initialisation cannot exist: a new
/// segment has no name until it is fully initialised (see the module
/// docs), so there is nothing of that kind to collect.
pub fn gc(dry_run: bool) -> Result<Vec<Collected>> {
    const OP: &str = "gc";
    let names =
        shm::names_with_prefix(PREFIX).map_err(|e| Error::from_errno(OP, shm::SHM_DIR, e))?;
    let mut out = Vec::new();
    for file in names {
        let name = &file[PREFIX.len()..];
        if name::validate(OP, name).is_err() {
            continue;
        }
        if let Probe::Alone(fd, info, Ok((h, flags))) = probe(OP, name) {
            if let Some(reason) = due_reason(&h, flags) {
                let removed = dry_run || shm::unlink_if_same(&file, info.id).unwrap_or(false);
                if removed {
                    out.push(Collected {
                        name: name.to_owned(),
                        reason,
                    });
                }
            }
            drop(fd);
        }
    }
    Ok(out)
}
