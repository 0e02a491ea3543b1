//! System V shared memory (`shmget`/`shmat`): attach to the segments of
//! legacy programs, with the same shape and error type as
//! [`crate::segment`].
//!
//! ```no_run
//! use shmkit::sysv::{self, SysvSegment};
//!
//! let key = sysv::ftok("/etc/hostname", b'A')?;
//! let seg = SysvSegment::open(key)?;
//! let mut buf = [0u8; 16];
//! seg.read_at(0, &mut buf)?;
//! # Ok::<(), shmkit::segment::Error>(())
//! ```
//!
//! A System V segment has no header: shmkit only knows its size
//! (`shm_segsz`, fixed at creation), and bounds every access by it. The
//! bytes are untrusted: [`SysvSegment::read_at`] and
//! [`write_at`](SysvSegment::write_at) copy through a raw pointer and
//! never form a reference to memory another process writes.
//!
//! Removal is `IPC_RMID` ([`remove`], [`SysvSegment::remove`]): the key is
//! freed at once (it then reads as `IPC_PRIVATE`, 0) and the kernel frees
//! the memory after the last detach, like
//! [`segment::remove_when_unused`](crate::segment::remove_when_unused).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::segment::{Error, Result};
use crate::sys::sysv as sys;

/// `IPC_PRIVATE`: the key of a segment that has none (private, or marked
/// for removal).
pub const IPC_PRIVATE: i32 = 0;
/// Mode flag: marked for removal (`IPC_RMID` done, still attached).
pub const SHM_DEST: u32 = 0o1000;
/// Mode flag: locked in memory (`SHM_LOCK`).
pub const SHM_LOCKED: u32 = 0o2000;

/// Formats a key the way `ipcs` does: `0x` and 8 hex digits.
pub fn key_hex(key: i32) -> String {
    format!("{:#010x}", key as u32)
}

/// Parses a key: `0x...` hex or a decimal (possibly negative) number.
pub fn parse_key(s: &str) -> std::result::Result<i32, String> {
    let t = s.trim();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).map(|v| v as i32).ok()
    } else {
        t.parse::<i32>().ok()
    };
    r.ok_or_else(|| format!("invalid key {s:?}: expected 0x1234abcd or a decimal number"))
}

/// `ftok(path, proj)`: the key legacy programs derive from a file.
pub fn ftok(path: impl AsRef<Path>, proj: u8) -> Result<i32> {
    let p = path.as_ref();
    sys::ftok(p, proj).map_err(|e| Error::from_errno("ftok", &p.display().to_string(), e))
}

fn key_name(key: i32) -> String {
    format!("sysv key {}", key_hex(key))
}

fn id_name(id: i32) -> String {
    format!("sysv id {id}")
}

/// What the kernel reports about one segment (`IPC_STAT` or a row of
/// `/proc/sysvipc/shm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysvInfo {
    /// The key (0, `IPC_PRIVATE`, for private or removed segments).
    pub key: i32,
    /// The segment id (`shmid`).
    pub id: i32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Creator uid.
    pub cuid: u32,
    /// Permission bits (`mode & 0o777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Current number of attaches.
    pub nattch: u64,
    /// Creator pid.
    pub cpid: i32,
    /// Pid of the last attach or detach.
    pub lpid: i32,
    /// Last attach (None if never).
    pub atime: Option<SystemTime>,
    /// Last detach (None if never).
    pub dtime: Option<SystemTime>,
    /// Last change (creation or `IPC_SET`).
    pub ctime: Option<SystemTime>,
    /// Marked for removal: gone after the last detach (`SHM_DEST`).
    pub dest: bool,
    /// Locked in memory (`SHM_LOCK`).
    pub locked: bool,
}

fn time(secs: i64) -> Option<SystemTime> {
    (secs > 0).then(|| UNIX_EPOCH + Duration::from_secs(secs as u64))
}

impl SysvInfo {
    fn from_stat(id: i32, s: &sys::ShmStat) -> SysvInfo {
        SysvInfo {
            key: s.key,
            id,
            uid: s.uid,
            gid: s.gid,
            cuid: s.cuid,
            mode: s.mode & 0o777,
            size: s.size,
            nattch: s.nattch,
            cpid: s.cpid,
            lpid: s.lpid,
            atime: time(s.atime),
            dtime: time(s.dtime),
            ctime: time(s.ctime),
            dest: s.mode & SHM_DEST != 0,
            locked: s.mode & SHM_LOCKED != 0,
        }
    }
}

/// Every System V segment of this IPC namespace, from
/// `/proc/sysvipc/shm` (so segments we may not attach are listed too).
pub fn list() -> Result<Vec<SysvInfo>> {
    let rows = sys::proc_table().map_err(|source| Error::Io {
        op: "list",
        name: "/proc/sysvipc/shm".into(),
        source,
    })?;
    Ok(rows
        .iter()
        .map(|r| SysvInfo::from_stat(r.id, &r.stat))
        .collect())
}

/// The id of the segment with `key` (`shmget(key, 0, 0)`).
pub fn id_of(key: i32) -> Result<i32> {
    if key == IPC_PRIVATE {
        return Err(Error::InvalidArgument {
            op: "open",
            name: key_name(key),
            reason: "IPC_PRIVATE (0) names no segment; use its id".into(),
        });
    }
    sys::shmget(key, 0, 0).map_err(|e| Error::from_errno("open", &key_name(key), e))
}

/// `IPC_STAT` of segment `id`.
pub fn stat_id(id: i32) -> Result<SysvInfo> {
    let s = sys::stat(id).map_err(|e| errno_for_id("stat", id, e))?;
    Ok(SysvInfo::from_stat(id, &s))
}

/// `IPC_STAT` of the segment with `key`.
pub fn stat(key: i32) -> Result<SysvInfo> {
    stat_id(id_of(key)?)
}

/// `IPC_RMID` on the segment with `key`.
pub fn remove(key: i32) -> Result<()> {
    remove_id(id_of(key)?)
}

/// `IPC_RMID` on segment `id`: destroyed after its last detach.
pub fn remove_id(id: i32) -> Result<()> {
    sys::rmid(id).map_err(|e| errno_for_id("remove", id, e))
}

/// An id that does not exist gives EINVAL (or EIDRM); say "not found".
fn errno_for_id(op: &'static str, id: i32, e: rustix::io::Errno) -> Error {
    use rustix::io::Errno;
    match e {
        Errno::INVAL | Errno::IDRM => Error::NotFound {
            op,
            name: id_name(id),
        },
        e => Error::from_errno(op, &id_name(id), e),
    }
}

/// An attachment (`shmat`) to a System V segment; detaches on drop.
#[derive(Debug)]
pub struct SysvSegment {
    id: i32,
    key: i32,
    /// Start of the attachment; valid for `len` bytes until drop.
    ptr: *mut u8,
    len: usize,
    writable: bool,
    name: String,
}

// SAFETY: the attachment is process-wide memory; the handle only hands out
// raw pointers and copies, so it may move and be shared between threads.
unsafe impl Send for SysvSegment {}
// SAFETY: as above: `&self` methods copy through raw pointers.
unsafe impl Sync for SysvSegment {}

impl SysvSegment {
    /// Attaches read-write to the segment with `key`.
    pub fn open(key: i32) -> Result<SysvSegment> {
        Self::attach(id_of(key)?, true)
    }

    /// Attaches read-only (`SHM_RDONLY`) to the segment with `key`.
    pub fn open_read_only(key: i32) -> Result<SysvSegment> {
        Self::attach(id_of(key)?, false)
    }

    /// Attaches to segment `id` (read-only unless `writable`).
    pub fn open_id(id: i32, writable: bool) -> Result<SysvSegment> {
        Self::attach(id, writable)
    }

    /// Creates a segment of `size` bytes with `key` and permission bits
    /// `mode` (`IPC_CREAT | IPC_EXCL`; [`Error::AlreadyExists`] if the
    /// key is taken) and attaches read-write. `key` [`IPC_PRIVATE`] makes
    /// a new keyless segment.
    pub fn create(key: i32, size: u64, mode: u32) -> Result<SysvSegment> {
        let name = key_name(key);
        if size == 0 || mode & !0o777 != 0 {
            return Err(Error::InvalidArgument {
                op: "create",
                name,
                reason: format!("size must be > 0 and mode at most 0777 (got {size}, {mode:o})"),
            });
        }
        let size = usize::try_from(size).map_err(|_| Error::InvalidArgument {
            op: "create",
            name: name.clone(),
            reason: "size too large".into(),
        })?;
        let id = sys::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode as i32).map_err(
            |e| match e {
                rustix::io::Errno::INVAL => Error::InvalidArgument {
                    op: "create",
                    name: name.clone(),
                    reason: format!("the kernel refused a size of {size} bytes (SHMMIN/SHMMAX)"),
                },
                e => Error::from_errno("create", &name, e),
            },
        )?;
        match Self::attach(id, true) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Do not leave a segment nobody knows about.
                let _ = sys::rmid(id);
                Err(e)
            }
        }
    }

    fn attach(id: i32, writable: bool) -> Result<SysvSegment> {
        let st = sys::stat(id).map_err(|e| errno_for_id("open", id, e))?;
        let len =
            usize::try_from(st.size).map_err(|_| Error::corrupt("open", &id_name(id), "size"))?;
        let ptr = sys::shmat(id, writable).map_err(|e| errno_for_id("open", id, e))?;
        // The size cannot change after creation (System V has no resize):
        // the `shm_segsz` read before attaching bounds the attachment.
        let name = if st.key == IPC_PRIVATE {
            id_name(id)
        } else {
            key_name(st.key)
        };
        Ok(SysvSegment {
            id,
            key: st.key,
            ptr,
            len,
            writable,
            name,
        })
    }

    /// The segment id.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The key it was opened with (0 for private segments).
    pub fn key(&self) -> i32 {
        self.key
    }

    /// Display name: `sysv key 0x...` or `sysv id N`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes (`shm_segsz`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (System V segments have at least 1 byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether attached read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Start of the attachment, valid for [`len`](Self::len) bytes while
    /// `self` lives. Other processes may write it at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, op: &'static str, offset: u64, len: usize) -> Result<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len as u64 => Ok(offset as usize),
            _ => Err(Error::OutOfBounds {
                op,
                name: self.name.clone(),
                offset,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.check("read", offset, buf.len())?;
        // SAFETY: `off + buf.len() <= len` (checked), inside the live
        // attachment; `buf` is private memory, so the ranges do not
        // overlap; raw copy, no reference to shared bytes is formed.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` to `offset`; [`Error::PermissionDenied`] on a
    /// read-only attachment.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::PermissionDenied {
                op: "write",
                name: self.name.clone(),
            });
        }
        let off = self.check("write", offset, buf.len())?;
        // SAFETY: in bounds (checked) of a writable attachment; `buf` is
        // private memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.add(off), buf.len()) };
        Ok(())
    }

    /// Current `IPC_STAT` (attach count, times, removal mark).
    pub fn stat(&self) -> Result<SysvInfo> {
        stat_id(self.id)
    }

    /// `IPC_RMID`: the key goes now, the memory after the last detach
    /// (this handle stays usable until dropped).
    pub fn remove(&self) -> Result<()> {
        remove_id(self.id)
    }

    /// Detaches now, reporting a failure of `shmdt` (drop ignores it).
    pub fn detach(self) -> Result<()> {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `ptr` came from `shmat` and `me` is never used again
        // (ManuallyDrop: drop will not detach a second time).
        let r = unsafe { sys::shmdt(me.ptr) };
        // SAFETY: `name` is read out once and `me` is forgotten.
        drop(unsafe { std::ptr::read(&me.name) });
        r.map_err(|e| errno_for_id("detach", me.id, e))
    }
}

impl Drop for SysvSegment {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `shmat`; this is the last use.
        let _ = unsafe { sys::shmdt(self.ptr) };
    }
}
