//! Named shared memory segments.
//!
//! A segment is a fixed-size region of memory with a name (its *key*) that
//! unrelated processes map. Each one starts with a validated header (see
//! [`header`]) followed by the data area.
//!
//! ```no_run
//! use shmkit::segment::{Lifetime, Segment};
//!
//! // Process A
//! let seg = Segment::builder("frames")
//!     .size(1 << 20)
//!     .lifetime(Lifetime::UntilLastDetach)
//!     .create()?;
//! seg.write_at(0, b"hello")?;
//!
//! // Process B
//! let seg = Segment::open("frames")?;
//! let mut buf = [0u8; 5];
//! seg.read_at(0, &mut buf)?;
//! # Ok::<(), shmkit::segment::Error>(())
//! ```
//!
//! # Lifecycle protocol
//!
//! - **Create**: an unnamed tmpfs file (`O_TMPFILE`) is sized, mapped, its
//!   header and object written, a shared `flock` taken (the creator is
//!   attached), and only then is it given its name with `linkat`, which
//!   fails atomically if the name is taken. Nobody can ever open a
//!   half-initialised segment; a creator killed before `linkat` leaves
//!   nothing behind.
//! - **Attach**: every handle holds a shared `flock` on its own open file
//!   description. The kernel releases it when the handle is dropped or the
//!   process dies, SIGKILL included: a dead process never counts.
//! - **Detach**: the handle unmaps, tries to upgrade to an exclusive lock
//!   and, if that works (nobody else attached) and the segment is due
//!   (lifetime [`Lifetime::UntilLastDetach`] or marked for removal),
//!   removes the name.
//! - **Stale segments** (due, but everyone attached died) are removed by
//!   the next `open`, `create`, [`list`] or [`gc`] that touches them.
//!
//! # Deleting a segment, three ways
//!
//! | how | when the name goes | when the memory goes |
//! |---|---|---|
//! | [`remove`] | now | when the last mapping goes (POSIX) |
//! | [`Lifetime::UntilLastDetach`] at creation | when the last process detaches or dies | same |
//! | [`remove_when_unused`] (System V `IPC_RMID`) | when the last process detaches or dies, now if none is attached; new opens fail with [`Error::MarkedForRemoval`] | same |

mod builder;
mod error;
pub mod header;
mod kind;
mod name;
mod registry;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use builder::SegmentBuilder;
pub(crate) use builder::{open_file, read_header};
pub use error::{Error, Result};
pub use header::Header;
pub use kind::{Fingerprint, Kind, Lifetime};
pub use name::{file_name, validate as validate_name, MAX_NAME_LEN, PREFIX};
pub use registry::{
    gc, gc_report, list, remove, remove_when_unused, stat, Collected, GcReport, SegmentInfo,
};

use crate::sys::{flock, mmap::Mapping, process, shm};
use name::FileName;

/// An attachment to a named segment. Dropping it detaches (and deletes
/// the segment if it is due and this was the last attachment).
///
/// The data area is `len()` bytes at `as_ptr()`, page aligned, shared with
/// every other process attached to the same segment.
#[derive(Debug)]
pub struct Segment {
    name: String,
    /// Holds our shared `flock`: the proof that we are attached. (The
    /// mapping holds the same open file description, so the lock outlives
    /// a `close` until the unmap: detach unlocks explicitly.)
    fd: OwnedFd,
    /// Header page + data area. Invariant: `map.len() == HEADER_SIZE +
    /// header.data_len`, checked against the file size at open.
    map: Mapping,
    id: shm::FileId,
    header: Header,
    writable: bool,
    created: bool,
    /// Set by `detach` so that drop does not run the protocol twice.
    detached: bool,
    /// The process that attached. A child forked from it shares the open
    /// file description, hence the attachment (one `flock` per
    /// description): dropping the inherited copy there must not detach
    /// the parent (nor delete the segment under it, nor leave its lock
    /// exclusive), so the child only closes and unmaps its copies.
    owner_pid: u32,
}

impl Segment {
    /// Starts building a create/open request for `name`.
    pub fn builder<'a>(name: &str) -> SegmentBuilder<'a> {
        SegmentBuilder {
            name: name.to_owned(),
            size: None,
            mode: 0o600,
            lifetime: Lifetime::Persistent,
            kind: None,
            fingerprint: None,
            params: [0; 8],
            writable: true,
            init: None,
            open_timeout: Duration::from_secs(2),
            any_owner: false,
            sparse: false,
            huge: false,
        }
    }

    /// Creates a persistent raw segment of `size` bytes, mode 0600.
    pub fn create(name: &str, size: u64) -> Result<Segment> {
        Segment::builder(name).size(size).create()
    }

    /// Opens an existing segment read-write, whatever its kind: this is
    /// also the way to reach the raw bytes of a mutex, ring or other
    /// object (what the CLI's `read`/`write --force` do). Writing those
    /// bytes corrupts the object for every process using it; to open an
    /// object, use its own type (`NamedMutex::open`, `Sender::open`...),
    /// which checks the kind. Pass [`Kind::Raw`] to
    /// [`SegmentBuilder::kind`] to accept raw segments only.
    pub fn open(name: &str) -> Result<Segment> {
        Segment::builder(name).open()
    }

    /// Opens `name`, creating a persistent raw segment of `size` bytes if
    /// it does not exist.
    pub fn open_or_create(name: &str, size: u64) -> Result<Segment> {
        Segment::builder(name).size(size).open_or_create()
    }

    /// The key this segment was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this handle created the segment (as opposed to opening it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Kind of object stored.
    pub fn kind(&self) -> Kind {
        self.header.kind
    }

    /// Lifetime policy.
    pub fn lifetime(&self) -> Lifetime {
        self.header.lifetime
    }

    /// Whether writes are allowed through this handle.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Size of the data area in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.header.data_len as usize
    }

    /// Whether the data area is empty (never, for a valid segment).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start of the data area: page aligned, `len()` bytes, shared with
    /// other processes. For zero-copy use. Other processes may write these
    /// bytes at any time: treat them as untrusted, synchronise with
    /// [`crate::sync`] or a [`crate::channel`], and never form a `&mut`
    /// that another party could write to at the same time. Writing through
    /// it on a read-only handle faults.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: the mapping is HEADER_SIZE + len bytes (struct
        // invariant), so HEADER_SIZE is in bounds.
        unsafe { self.map.as_ptr().add(header::HEADER_SIZE as usize) }
    }

    fn check_range(&self, op: &'static str, offset: u64, len: usize) -> Result<usize> {
        let size = self.len() as u64;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(offset as usize),
            _ => Err(Error::OutOfBounds {
                op,
                name: self.name.clone(),
                offset,
                len: len as u64,
                size,
            }),
        }
    }

    /// Copies `buf.len()` bytes from the data area at `offset` into `buf`.
    /// Fails with [`Error::OutOfBounds`] (copying nothing) if they do not
    /// fit. Bytes written concurrently by another process may be torn.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.check_range("read", offset, buf.len())?;
        // SAFETY:
        // - `at + buf.len() <= len()` (checked), so the source is inside
        //   the mapping; `buf` is a distinct, exclusive Rust buffer;
        // - shared bytes are only copied, never referenced, so a
        //   concurrent writer can tear the data but not break Rust's
        //   aliasing rules for any reference we hold.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `buf` into the data area at `offset`. Fails with
    /// [`Error::OutOfBounds`] (writing nothing) if it does not fit, or
    /// [`Error::PermissionDenied`] on a read-only handle.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::PermissionDenied {
                op: "write",
                name: self.name.clone(),
            });
        }
        let at = self.check_range("write", offset, buf.len())?;
        // SAFETY: as in `read_at`, with the mapping writable (checked).
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.as_ptr().add(at), buf.len()) };
        Ok(())
    }

    /// Like [`read_at`](Segment::read_at), but with `pread` on the file
    /// instead of the mapping: if another process truncated the file, this
    /// fails with [`Error::Corrupt`] where touching the mapping would kill
    /// the process with SIGBUS. Slower (a system call and a copy through
    /// the kernel); for tools that copy bytes of untrusted segments.
    pub fn pread_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.check_range("read", offset, buf.len())? as u64;
        let n = shm::read_at(self.fd.as_fd(), buf, header::HEADER_SIZE + at)
            .map_err(|e| Error::from_errno("read", &self.name, e))?;
        if n < buf.len() {
            return Err(self.truncated("read"));
        }
        Ok(())
    }

    /// Like [`write_at`](Segment::write_at), but with `pwrite` on the
    /// file: a file truncated by another process gives [`Error::Corrupt`],
    /// never SIGBUS (see [`pread_at`](Segment::pread_at)).
    pub fn pwrite_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::PermissionDenied {
                op: "write",
                name: self.name.clone(),
            });
        }
        let at = self.check_range("write", offset, buf.len())? as u64;
        let err = |e| Error::from_errno("write", &self.name, e);
        // pwrite past the end would grow a truncated file back silently:
        // check the size first (a truncation racing with this call is
        // harmless, the write just lands in a file that is no longer whole).
        let full = header::HEADER_SIZE + self.len() as u64;
        if shm::stat_fd(self.fd.as_fd()).map_err(err)?.size < full {
            return Err(self.truncated("write"));
        }
        shm::write_at(self.fd.as_fd(), buf, header::HEADER_SIZE + at).map_err(err)
    }

    fn truncated(&self, op: &'static str) -> Error {
        let now = shm::stat_fd(self.fd.as_fd()).map(|i| i.size).unwrap_or(0);
        Error::corrupt(
            op,
            &self.name,
            format!(
                "the file was truncated to {now} bytes by another process (it should be {})",
                header::HEADER_SIZE + self.len() as u64
            ),
        )
    }

    /// The segment's file descriptor, for layers that lock byte ranges of
    /// it (per-role liveness with OFD locks). Never close or lock it whole
    /// with `flock`: the shared `flock` on it is this handle's attachment.
    #[allow(dead_code)] // used by the channel layer
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the segment is marked for deferred removal.
    pub fn is_marked_for_removal(&self) -> bool {
        // Relaxed: an informational snapshot; detach re-reads it after
        // its exclusive flock, which is what correctness relies on.
        flags_word(&self.map).load(Ordering::Relaxed) & header::FLAG_MARKED != 0
    }

    /// Pids of the processes attached now (one per process, sorted), read
    /// from `/proc/locks`. Includes this process.
    pub fn attached_pids(&self) -> Vec<u32> {
        let mut pids = process::flock_holders()
            .remove(&self.id)
            .unwrap_or_default();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether this process made the attachment (not a child that
    /// inherited the handle through `fork`). No system call: the pid
    /// cache is reset in a forked child.
    fn attached_here(&self) -> bool {
        process::cached_pid() == self.owner_pid
    }

    /// Detaches now, reporting whether this removed the segment (it was
    /// due and this was the last attachment). Dropping does the same and
    /// ignores errors. In a child forked from the process that attached,
    /// the attachment is the parent's (shared through the inherited file
    /// description): there this only unmaps and closes, and returns
    /// `false`.
    pub fn detach(mut self) -> Result<bool> {
        self.detached = true;
        if !self.attached_here() {
            return Ok(false);
        }
        detach_protocol(
            &self.name,
            &self.fd,
            &self.map,
            self.id,
            self.header.lifetime,
        )
        // `self` drops here: closes the fd and unmaps.
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if !self.detached && self.attached_here() {
            let _ = detach_protocol(
                &self.name,
                &self.fd,
                &self.map,
                self.id,
                self.header.lifetime,
            );
        }
    }
}

/// The atomic flags word of the header mapped by `map` (bit 0: marked for
/// removal). Every mapping shmkit makes covers at least the header page.
pub(crate) fn flags_word(map: &Mapping) -> &AtomicU32 {
    assert!(
        map.len() >= header::HEADER_SIZE as usize,
        "mapping shorter than the header"
    );
    // SAFETY:
    // - FLAGS_OFFSET + 4 <= HEADER_SIZE <= map.len() (asserted), and
    //   FLAGS_OFFSET is 4-aligned in a page-aligned mapping;
    // - the word is only ever accessed atomically by shmkit processes; a
    //   hostile writer can change its value, not its validity (every u32 is
    //   a valid AtomicU32); the borrow ends before `map` is unmapped.
    unsafe { &*(map.as_ptr().add(header::FLAGS_OFFSET) as *const AtomicU32) }
}

/// Whether the segment is marked for removal, read after our successful
/// exclusive `flock`. With `pread` (the kernel copies the word after the
/// lock operation returned, so after the one that orders us with the
/// marker): reading it through the mapping would fault the header page
/// in, which nothing else in a plain life cycle does, and a page table
/// entry makes the `munmap` dearer. The mapping is the fallback if
/// `pread` fails.
fn marked_after_lock(fd: &OwnedFd, map: &Mapping) -> bool {
    let mut word = [0u8; 4];
    let flags = match shm::read_at(fd.as_fd(), &mut word, header::FLAGS_OFFSET as u64) {
        Ok(4) => u32::from_le_bytes(word),
        // Acquire: pairs with the SeqCst fetch_or of the marker, as the
        // kernel's lock ordering does for the `pread`.
        _ => flags_word(map).load(Ordering::Acquire),
    };
    flags & header::FLAG_MARKED != 0
}

/// The detach protocol (the caller then closes the fd and unmaps).
/// Returns whether it deleted the segment.
fn detach_protocol(
    name: &str,
    fd: &OwnedFd,
    map: &Mapping,
    id: shm::FileId,
    lifetime: Lifetime,
) -> Result<bool> {
    const OP: &str = "detach";
    let err = |e| Error::from_errno(OP, name, e);
    // Upgrade to exclusive, whatever the lifetime: it succeeds only if no
    // other handle, in any process, is attached. A failed upgrade leaves
    // us holding nothing, which is what a leaving handle wants: whoever is
    // still attached makes this check when it leaves. Two last handles
    // leaving at once: the kernel serialises the upgrades, and the second
    // finds the first gone, so exactly one succeeds.
    if !flock::try_exclusive(fd.as_fd()).map_err(err)? {
        return Ok(false);
    }
    // We were the last. On the deleting path we keep the lock: the file is
    // unlinked, and an opener that found it before meets the lock, backs
    // off and retries by name. Otherwise we release it at once: our open
    // file description may outlive this handle (a forked child that
    // inherited it, a second mapping of the file such as the Python
    // views' shadow), and a lingering exclusive lock there would make
    // every later open `Busy` until that reference goes.
    if lifetime == Lifetime::Persistent {
        // Due only if marked. `remove_when_unused` stores the mark (SeqCst
        // fetch_or) *before* its lock attempts. If an attempt of the
        // marker failed because of our shared lock, it came before our
        // upgrade in the kernel's order of lock operations on this file
        // (one spinlock), and our read, made after the upgrade returned,
        // sees the mark. If its attempts come after our upgrade, they meet
        // our exclusive lock: the marker then retries until we are gone
        // and deletes the segment itself, since we may have read the word
        // before its store.
        if !marked_after_lock(fd, map) {
            flock::unlock(fd.as_fd()).map_err(err)?;
            return Ok(false);
        }
    }
    shm::unlink_if_same(FileName::new(name).as_c_str(), id).map_err(err)
}
