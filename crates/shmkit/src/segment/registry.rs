//! Operations on segments by name, without attaching: list, stat, the
//! three deletions and garbage collection.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::header::{self, Header};
use super::name::{self, file_name, FileName, PREFIX};
use super::{open_file, read_header, Error, Lifetime, Result};
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
    /// `Some("a FIFO")` etc. when the name is not a regular file, so not a
    /// segment at all (made by someone else in the world-writable
    /// `/dev/shm`); `header` then says so too.
    pub not_a_segment: Option<&'static str>,
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
    let (fd, info) = match open_file(op, name, false) {
        Ok(x) => x,
        Err(e) => return Probe::Gone(e),
    };
    // The lock first, then the header: a collector decides on the flags
    // word (the removal mark), which must be read after its lock
    // operation. A marker whose lock attempt our exclusive lock made fail
    // stored its mark before that attempt, so before our read.
    let alone = match flock::try_exclusive(fd.as_fd()) {
        Ok(alone) => alone,
        Err(e) => return Probe::Gone(Error::from_errno(op, name, e)),
    };
    let header = read_header(op, name, &fd, info.size);
    if alone {
        Probe::Alone(fd, info, header)
    } else {
        Probe::Attached(fd, info, header)
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
        not_a_segment: None,
    }
}

/// The entry for a name that is not a regular file, from `lstat` (never
/// opened, so never blocked on); `None` if it vanished.
fn not_a_segment_info(name: &str, what: &'static str) -> Option<SegmentInfo> {
    let info = shm::lstat(file_name(name).as_str()).ok()?;
    Some(SegmentInfo {
        name: name.to_owned(),
        file_size: info.size,
        mode: info.mode,
        uid: info.uid,
        header: Err(format!("not a shmkit segment: {what}")),
        marked: false,
        attached: 0,
        pids: Vec::new(),
        not_a_segment: Some(what),
    })
}

/// Every shmkit segment, sorted by name. Segments that are due and have
/// nobody alive attached are removed on the way and not listed; segments
/// with a damaged header are listed with the reason in `header`; names
/// that are not regular files (FIFOs, directories...) are listed with
/// [`SegmentInfo::not_a_segment`] set, without being opened for real.
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
            Probe::Gone(Error::NotASegment { what, .. }) => {
                out.extend(not_a_segment_info(name, what));
            }
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
    out.sort_by(|a, b| a.name.cmp(&b.name));
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
    shm::unlink(FileName::new(name).as_c_str()).map_err(|e| Error::from_errno(OP, name, e))
}

/// Marks `name` for deferred removal (System V `IPC_RMID`): it is deleted
/// when the last attached process detaches or dies, at once if nobody is
/// attached (then this returns `true`; `false` if a collector, such as a
/// concurrent `list` or [`gc`], saw the mark and deleted it first). New opens fail with
/// [`Error::MarkedForRemoval`]. [`Error::Busy`] if another process held
/// the segment exclusively for 2 s (brief, unless forged: see the trust
/// model in ARCHITECTURE.md); the mark is then set, and the deletion is
/// left to the last process to leave or to the next `open`, `list` or
/// [`gc`] that finds nobody attached.
pub fn remove_when_unused(name: &str) -> Result<bool> {
    const OP: &str = "remove_when_unused";
    name::validate(OP, name)?;
    let err = |e| Error::from_errno(OP, name, e);
    let file = file_name(name);
    let (fd, info) = open_file(OP, name, true)?;
    read_header(OP, name, &fd, info.size)?;
    // The mark makes the owner's next detach or `ls` delete the segment:
    // only someone who may delete it now may set it. Checked before the
    // mark, so a refusal changes nothing.
    if !may_unlink(&info) {
        return Err(Error::PermissionDenied {
            op: OP,
            name: name.to_owned(),
        });
    }
    let page = Mapping::new(fd.as_fd(), header::HEADER_SIZE as usize, true).map_err(err)?;
    // The file is at least HEADER_SIZE bytes (checked by read_header).
    let flags = super::flags_word(&page);
    // SeqCst store before our lock attempts: a holder that makes one of
    // them fail will, on its own detach, take the exclusive lock after us
    // in the kernel's order and read the word there.
    flags.fetch_or(header::FLAG_MARKED, Ordering::SeqCst);
    drop(page);
    let mut deadline = None;
    let mut pause = Duration::from_micros(50);
    loop {
        if flock::try_exclusive(fd.as_fd()).map_err(err)? {
            // Nobody attached: delete now (we hold the lock until `fd`
            // drops, after the unlink).
            return shm::unlink_if_same(&file, info.id).map_err(err);
        }
        // Someone holds a lock (and we hold nothing). An attached handle
        // (shared lock) will see the mark when it leaves, since its
        // upgrade comes after our failed attempt. An exclusive holder
        // will not necessarily: a last detacher, or a collector, may have
        // read the flags before our store and be leaving. Tell them apart
        // by attaching ourselves: with our shared lock held, nobody can
        // hold or take an exclusive one.
        if flock::try_shared(fd.as_fd()).map_err(err)? {
            // Then leave as a detacher does. If the upgrade fails, what
            // made it fail is a shared lock taken before it (ours excluded
            // any exclusive one), so an attachment that will see the mark.
            if flock::try_exclusive(fd.as_fd()).map_err(err)? {
                return shm::unlink_if_same(&file, info.id).map_err(err);
            }
            return Ok(false);
        }
        // An exclusive holder, for microseconds: wait for it to go, then
        // look again.
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + MARK_TIMEOUT);
        if Instant::now() >= deadline {
            return Err(Error::Busy {
                op: OP,
                name: name.to_owned(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// How long [`remove_when_unused`] waits for an exclusive holder to go.
const MARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this process may delete the name of the file `info` from the
/// shm directory (`unlink(2)` rules: write permission on the directory
/// and, in a sticky directory like `/dev/shm`, owning the file or the
/// directory, or being privileged).
fn may_unlink(info: &shm::FileInfo) -> bool {
    if !shm::dir_writable() {
        return false;
    }
    let euid = rustix::process::geteuid().as_raw();
    match shm::dir_owner_and_sticky() {
        Ok((_, false)) => true,
        // Root stands for CAP_FOWNER here: an unprivileged process with
        // that capability is refused (it can still use `remove`).
        Ok((dir_uid, true)) => euid == 0 || euid == info.uid || euid == dir_uid,
        Err(_) => false,
    }
}

/// What [`gc_report`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Segments removed (or that would be, on a dry run).
    pub collected: Vec<Collected>,
    /// Names under the prefix that are not regular files, so not segments
    /// (key, what it is: "a FIFO"...). Left alone.
    pub not_segments: Vec<(String, &'static str)>,
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
    gc_report(dry_run).map(|r| r.collected)
}

/// [`gc`], also reporting the names it skipped because they are not
/// segments at all.
pub fn gc_report(dry_run: bool) -> Result<GcReport> {
    const OP: &str = "gc";
    let names =
        shm::names_with_prefix(PREFIX).map_err(|e| Error::from_errno(OP, shm::SHM_DIR, e))?;
    let mut out = GcReport::default();
    for file in names {
        let name = &file[PREFIX.len()..];
        if name::validate(OP, name).is_err() {
            continue;
        }
        match probe(OP, name) {
            Probe::Alone(fd, info, Ok((h, flags))) => {
                if let Some(reason) = due_reason(&h, flags) {
                    let removed = dry_run || shm::unlink_if_same(&file, info.id).unwrap_or(false);
                    if removed {
                        out.collected.push(Collected {
                            name: name.to_owned(),
                            reason,
                        });
                    }
                }
                drop(fd);
            }
            Probe::Gone(Error::NotASegment { what, .. }) => {
                out.not_segments.push((name.to_owned(), what));
            }
            _ => {}
        }
    }
    Ok(out)
}
