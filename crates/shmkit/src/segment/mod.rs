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

mod error;
pub mod header;
mod name;
mod registry;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use error::{Error, Result};
pub use header::Header;
pub use name::{file_name, validate as validate_name, MAX_NAME_LEN, PREFIX};
pub use registry::{
    gc, gc_report, list, remove, remove_when_unused, stat, Collected, GcReport, SegmentInfo,
};

use crate::sys::{flock, mmap::Mapping, process, shm};

/// What a segment holds. Stored in the header; `open` of a typed object
/// checks it so a ring is never mistaken for a mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Raw bytes.
    Raw,
    /// A [`crate::sync`] mutex.
    Mutex,
    /// A [`crate::sync`] semaphore.
    Semaphore,
    /// A [`crate::sync`] event.
    Event,
    /// A [`crate::channel`] ring buffer.
    Ring,
    /// A [`crate::channel`] publish/subscribe pool.
    PubSub,
    /// A kind this version does not know.
    Other(u32),
}

impl Kind {
    /// Header encoding.
    pub fn to_raw(self) -> u32 {
        match self {
            Kind::Raw => 1,
            Kind::Mutex => 2,
            Kind::Semaphore => 3,
            Kind::Event => 4,
            Kind::Ring => 5,
            Kind::PubSub => 6,
            Kind::Other(n) => n,
        }
    }

    /// Header decoding; unknown values become [`Kind::Other`].
    pub fn from_raw(v: u32) -> Kind {
        match v {
            1 => Kind::Raw,
            2 => Kind::Mutex,
            3 => Kind::Semaphore,
            4 => Kind::Event,
            5 => Kind::Ring,
            6 => Kind::PubSub,
            n => Kind::Other(n),
        }
    }

    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Mutex => "mutex",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Ring => "ring",
            Kind::PubSub => "pubsub",
            Kind::Other(_) => "unknown",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Other(n) => write!(f, "unknown kind {n}"),
            k => f.write_str(k.as_str()),
        }
    }
}

/// When a segment is deleted without anyone calling [`remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lifetime {
    /// Lives until [`remove`] or [`remove_when_unused`] (or reboot).
    #[default]
    Persistent,
    /// Deleted when the number of attached processes drops to zero,
    /// including by their death.
    UntilLastDetach,
}

impl Lifetime {
    /// Header encoding.
    pub fn to_raw(self) -> u32 {
        match self {
            Lifetime::Persistent => 0,
            Lifetime::UntilLastDetach => 1,
        }
    }

    /// Header decoding.
    pub fn from_raw(v: u32) -> Option<Lifetime> {
        match v {
            0 => Some(Lifetime::Persistent),
            1 => Some(Lifetime::UntilLastDetach),
            _ => None,
        }
    }

    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Persistent => "persistent",
            Lifetime::UntilLastDetach => "until-last-detach",
        }
    }
}

/// Identity of the type stored in a segment: size, alignment and a hash of
/// its Rust type name. Two programs that disagree on a layout get
/// [`Error::TypeMismatch`] instead of reinterpreting each other's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// `size_of::<T>()`.
    pub size: u64,
    /// `align_of::<T>()`.
    pub align: u64,
    /// FNV-1a of `type_name::<T>()` (or of a name chosen by the caller).
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of untyped bytes.
    pub const BYTES: Fingerprint = Fingerprint {
        size: 1,
        align: 1,
        hash: 0,
    };

    /// The fingerprint of `T`, named by its Rust type name.
    pub fn of<T>() -> Fingerprint {
        Fingerprint::named::<T>(std::any::type_name::<T>())
    }

    /// The fingerprint of `T` under an explicit, stable name: use this when
    /// programs built by different compilers or crates share a type.
    pub fn named<T>(name: &str) -> Fingerprint {
        Fingerprint {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            hash: header::fnv1a(name.as_bytes()),
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(size {}, align {}, hash {:016x})",
            self.size, self.align, self.hash
        )
    }
}

type InitFn<'a> = Box<dyn FnOnce(&mut [u8]) -> Result<()> + 'a>;

/// Options for creating or opening a segment. Start with
/// [`Segment::builder`], finish with [`create`](SegmentBuilder::create),
/// [`open`](SegmentBuilder::open) or
/// [`open_or_create`](SegmentBuilder::open_or_create).
pub struct SegmentBuilder<'a> {
    name: String,
    size: Option<u64>,
    mode: u32,
    lifetime: Lifetime,
    kind: Option<Kind>,
    fingerprint: Option<Fingerprint>,
    params: [u64; 8],
    writable: bool,
    init: Option<InitFn<'a>>,
    open_timeout: Duration,
    any_owner: bool,
    sparse: bool,
}

impl std::fmt::Debug for SegmentBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("lifetime", &self.lifetime)
            .field("kind", &self.kind)
            .field("sparse", &self.sparse)
            .finish_non_exhaustive()
    }
}

impl<'a> SegmentBuilder<'a> {
    /// Size of the data area in bytes (required to create; > 0).
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Permission bits for a new segment (default `0o600`). Applied
    /// exactly: the umask does not trim them.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// When a new segment is deleted (default [`Lifetime::Persistent`]).
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The kind to create, and to require when opening. Without it,
    /// `create` makes [`Kind::Raw`] and `open` accepts any kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// The stored type to record, and to require when opening.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Kind-specific parameters recorded in the header (creation only).
    pub fn params(mut self, params: [u64; 8]) -> Self {
        self.params = params;
        self
    }

    /// Attach read-only (`O_RDONLY`, `PROT_READ`). Writes then fail with
    /// [`Error::PermissionDenied`]. Only for `open`.
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// Accept a segment owned by another user. By default `open` (and
    /// `open_or_create`) refuse one with [`Error::ForeignOwner`]: `/dev/shm`
    /// is world-writable, so another user could create the name first, and
    /// whoever can write a segment can corrupt the objects in it. Pass this
    /// only when you trust that user (for example, processes of several
    /// users sharing a group-writable segment). Raw bytes are not safe
    /// either: the owner of a segment you write into reads your data, and
    /// the owner of one you read from chose what you read.
    pub fn allow_any_owner(mut self) -> Self {
        self.any_owner = true;
        self
    }

    /// Do not reserve the memory at creation (default `false`).
    ///
    /// By default `create` allocates every page of a new segment with
    /// `fallocate` before giving it its name, so a full `/dev/shm` fails
    /// at once with [`Error::NoSpace`]. A sparse segment takes memory only
    /// when a page is first touched, which lets one create segments larger
    /// than the free space; but then **any process touching a page when
    /// `/dev/shm` is full is killed by SIGBUS**, in the middle of a write,
    /// a lock or a send. Use it only when you control the space.
    pub fn sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// How long `open` waits for a segment that another process holds
    /// exclusively while deciding whether to delete it (default 2 s).
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Runs `init` on the zero-filled data area of a new segment before any
    /// other process can see it. Objects that live in segments (mutexes,
    /// rings) are set up here, so they are never seen half-initialised.
    pub fn init(mut self, init: impl FnOnce(&mut [u8]) -> Result<()> + 'a) -> Self {
        self.init = Some(Box::new(init));
        self
    }

    /// Creates a new segment; [`Error::AlreadyExists`] if the name is taken
    /// ([`Error::NotASegment`] if it is taken by something that is not a
    /// regular file), [`Error::NoSpace`] if `/dev/shm` has no room for it.
    pub fn create(self) -> Result<Segment> {
        validate_name("create", &self.name)?;
        match self.create_inner("create")? {
            Ok(seg) => Ok(seg),
            Err(builder) => {
                if let Ok(info) = shm::lstat(&file_name(&builder.name)) {
                    if let Some(e) = Error::not_regular("create", &builder.name, info.file_type) {
                        return Err(e);
                    }
                }
                Err(Error::AlreadyExists {
                    op: "create",
                    name: builder.name,
                })
            }
        }
    }

    /// Opens an existing segment; [`Error::NotFound`] if there is none,
    /// [`Error::NotASegment`] if the name is a FIFO, directory, socket,
    /// symbolic link or device (never blocking on it).
    pub fn open(self) -> Result<Segment> {
        validate_name("open", &self.name)?;
        self.open_inner("open")
    }

    /// Opens the segment, creating it if it does not exist. Race-free: when
    /// many processes call this at once, exactly one creates (see
    /// [`Segment::created`]) and all get the same, fully initialised
    /// segment. An existing segment must match `size`, kind and type.
    pub fn open_or_create(self) -> Result<Segment> {
        const OP: &str = "open_or_create";
        validate_name(OP, &self.name)?;
        let mut this = self;
        // A segment removed between our failed create and our open makes
        // us loop; each turn is progress by someone else, so bound it.
        for _ in 0..100 {
            this = match this.create_inner(OP)? {
                Ok(seg) => return Ok(seg),
                Err(builder) => builder,
            };
            match this.open_inner(OP) {
                Err(Error::NotFound { .. }) => continue,
                Ok(seg) => {
                    let want = this.size.unwrap_or(seg.len() as u64);
                    if want != seg.len() as u64 {
                        return Err(Error::InvalidArgument {
                            op: OP,
                            name: this.name.clone(),
                            reason: format!(
                                "exists with a data size of {} bytes, not {want}",
                                seg.len()
                            ),
                        });
                    }
                    return Ok(seg);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Busy {
            op: OP,
            name: this.name,
        })
    }

    /// `Ok(Err(self))` when the name is taken, so the caller can open it.
    fn create_inner(mut self, op: &'static str) -> Result<std::result::Result<Segment, Self>> {
        let name = self.name.clone();
        let err = |e| Error::from_errno(op, &name, e);
        let data_len = match self.size {
            Some(0) | None => {
                return Err(Error::InvalidArgument {
                    op,
                    name,
                    reason: "a new segment needs a size greater than zero".into(),
                })
            }
            Some(n) => n,
        };
        if self.mode & !0o777 != 0 {
            return Err(Error::InvalidArgument {
                op,
                name,
                reason: format!("mode {:o} has bits outside 0o777", self.mode),
            });
        }
        let total = header::HEADER_SIZE
            .checked_add(data_len)
            .filter(|t| usize::try_from(*t).is_ok() && *t <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidArgument {
                op,
                name: name.clone(),
                reason: format!("size {data_len} is too large"),
            })?;
        let no_space = |space: Option<shm::Space>| Error::NoSpace {
            op,
            name: name.clone(),
            asked: Some(total),
            free: space.map(|s| s.free),
            total: space.map(|s| s.total),
        };
        let fd = shm::create_unnamed_with(self.mode, total, self.sparse).map_err(|e| match e {
            rustix::io::Errno::NOSPC => no_space(shm::space().ok()),
            rustix::io::Errno::FBIG => Error::FileSizeLimit {
                op,
                name: name.clone(),
                asked: Some(total),
                limit: shm::file_size_limit(),
            },
            e => err(e),
        })?;
        let map = Mapping::new(fd.as_fd(), total as usize, true).map_err(|e| match e {
            rustix::io::Errno::NOMEM => Error::InvalidArgument {
                op,
                name: name.clone(),
                reason: format!(
                    "{} does not fit in this process's address space (mmap refused it)",
                    error::human(total)
                ),
            },
            e => err(e),
        })?;
        let created_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let header = Header {
            kind: self.kind.unwrap_or(Kind::Raw),
            lifetime: self.lifetime,
            mode: self.mode,
            creator_pid: process::current_pid(),
            created_at_ns,
            data_len,
            fingerprint: self.fingerprint.unwrap_or(Fingerprint::BYTES),
            params: self.params,
        };
        let bytes = header.encode();
        // SAFETY:
        // - the mapping is `total >= HEADER_SIZE > bytes.len()` bytes long
        //   and writable;
        // - the file is unnamed, so no other process can map it yet and no
        //   Rust reference to these bytes exists.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_ptr(), bytes.len()) };
        if let Some(init) = self.init.take() {
            // SAFETY:
            // - `HEADER_SIZE + data_len == total` bytes are mapped, so the
            //   data area is in bounds;
            // - nobody else can reach the unnamed file, and this is the only
            //   reference, dropped before the segment is published.
            let data = unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_ptr().add(header::HEADER_SIZE as usize),
                    data_len as usize,
                )
            };
            init(data)?;
        }
        // Attached before it has a name: there is no instant at which the
        // published segment has no holder and could be collected.
        if !flock::try_shared(fd.as_fd()).map_err(err)? {
            return Err(Error::corrupt(op, &name, "fresh unnamed file was locked"));
        }
        let file = file_name(&name);
        let info = shm::stat_fd(fd.as_fd()).map_err(err)?;
        // linkat is a full barrier for our stores: any process that finds
        // the name (a later syscall) sees the header and object written.
        match shm::publish(fd.as_fd(), &file) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                // A stale, due segment may hold the name: collect it and retry once.
                if registry::collect_if_due(&name).unwrap_or(false) {
                    match shm::publish(fd.as_fd(), &file) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::EXIST) => return Ok(Err(self)),
                        Err(e) => return Err(err(e)),
                    }
                } else {
                    return Ok(Err(self));
                }
            }
            Err(e) => return Err(err(e)),
        }
        Ok(Ok(Segment {
            name,
            fd,
            map,
            id: info.id,
            header,
            writable: true,
            created: true,
            detached: false,
        }))
    }

    fn open_inner(&self, op: &'static str) -> Result<Segment> {
        let name = &self.name;
        let file = file_name(name);
        let err = |e| Error::from_errno(op, name, e);
        let deadline = Instant::now() + self.open_timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            let (fd, _) = open_file(op, name, self.writable)?;
            // Alone (exclusive) or one of many (shared)? Exclusive first so a
            // due segment whose holders all died is collected right here.
            let alone = flock::try_exclusive(fd.as_fd()).map_err(err)?;
            if !alone && !flock::try_shared(fd.as_fd()).map_err(err)? {
                // Someone holds it exclusively: a detacher deleting it, `gc`,
                // or another opener about to downgrade. Brief; wait.
                if Instant::now() >= deadline {
                    return Err(Error::Busy {
                        op,
                        name: name.clone(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
                continue;
            }
            let info = shm::stat_fd(fd.as_fd()).map_err(err)?;
            // Holding our lock (taken before this fstat), make
            // sure the file still has its name: a deleter may have won the
            // race before we locked. Unlinked means nlink == 0; no extra
            // system call needed.
            if info.nlink == 0 {
                if Instant::now() >= deadline {
                    return Err(Error::NotFound {
                        op,
                        name: name.clone(),
                    });
                }
                continue;
            }
            let (header, flags) = read_header(op, name, &fd, info.size)?;
            let euid = rustix::process::geteuid().as_raw();
            if !self.any_owner && info.uid != euid {
                return Err(Error::ForeignOwner {
                    op,
                    name: name.clone(),
                    owner: info.uid,
                    euid,
                });
            }
            let due =
                header.lifetime == Lifetime::UntilLastDetach || flags & header::FLAG_MARKED != 0;
            if alone && due {
                // Nobody alive is attached to a segment that is due: it is
                // garbage. Remove it and report it absent.
                shm::unlink_if_same(&file, info.id).map_err(err)?;
                return Err(Error::NotFound {
                    op,
                    name: name.clone(),
                });
            }
            if flags & header::FLAG_MARKED != 0 {
                return Err(Error::MarkedForRemoval {
                    op,
                    name: name.clone(),
                });
            }
            if alone && !flock::try_shared(fd.as_fd()).map_err(err)? {
                continue;
            }
            if let Some(kind) = self.kind {
                if kind != header.kind {
                    return Err(Error::WrongKind {
                        op,
                        name: name.clone(),
                        expected: kind,
                        found: header.kind,
                    });
                }
            }
            if let Some(fp) = self.fingerprint {
                if fp != header.fingerprint {
                    return Err(Error::TypeMismatch {
                        op,
                        name: name.clone(),
                        expected: fp.to_string(),
                        found: header.fingerprint.to_string(),
                    });
                }
            }
            let map = Mapping::new(fd.as_fd(), info.size as usize, self.writable).map_err(err)?;
            return Ok(Segment {
                name: name.clone(),
                fd,
                map,
                id: info.id,
                header,
                writable: self.writable,
                created: false,
                detached: false,
            });
        }
    }
}

/// Opens the file of segment `name` without blocking or following links,
/// and refuses anything that is not a regular file with
/// [`Error::NotASegment`]: `/dev/shm` is world-writable, so the name may be
/// a FIFO, a directory or a socket made by another user.
pub(crate) fn open_file(
    op: &'static str,
    name: &str,
    writable: bool,
) -> Result<(OwnedFd, shm::FileInfo)> {
    let err = |e| Error::from_errno(op, name, e);
    let fd = shm::open(&file_name(name), writable).map_err(|e| {
        // ELOOP, ENXIO, EISDIR...: say exactly what the name is.
        match shm::lstat(&file_name(name)) {
            Ok(info) if e != rustix::io::Errno::NOENT => {
                Error::not_regular(op, name, info.file_type).unwrap_or_else(|| err(e))
            }
            _ => err(e),
        }
    })?;
    let info = shm::stat_fd(fd.as_fd()).map_err(err)?;
    match Error::not_regular(op, name, info.file_type) {
        Some(e) => Err(e),
        None => Ok((fd, info)),
    }
}

/// Reads and validates the header with `pread`: a short or hostile file
/// gives an error, never a SIGBUS.
pub(crate) fn read_header(
    op: &'static str,
    name: &str,
    fd: &OwnedFd,
    size: u64,
) -> Result<(Header, u32)> {
    let mut buf = [0u8; header::READ_LEN];
    let n = shm::read_at(fd.as_fd(), &mut buf, 0).map_err(|e| Error::from_errno(op, name, e))?;
    Header::decode(op, name, &buf[..n], size)
}

/// An attachment to a named segment. Dropping it detaches (and deletes
/// the segment if it is due and this was the last attachment).
///
/// The data area is `len()` bytes at `as_ptr()`, page aligned, shared with
/// every other process attached to the same segment.
#[derive(Debug)]
pub struct Segment {
    name: String,
    /// Holds our shared `flock`: the proof that we are attached.
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

    /// Detaches now, reporting whether this removed the segment (it was
    /// due and this was the last attachment). Dropping does the same and
    /// ignores errors.
    pub fn detach(mut self) -> Result<bool> {
        self.detached = true;
        detach_protocol(
            &self.name,
            &self.fd,
            &self.map,
            self.id,
            self.header.lifetime,
        )
        // `self` drops here: unmaps, then closes the fd (releasing the lock).
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if !self.detached {
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

/// The detach protocol (the mapping and fd are released by the caller).
fn detach_protocol(
    name: &str,
    fd: &OwnedFd,
    map: &Mapping,
    id: shm::FileId,
    lifetime: Lifetime,
) -> Result<bool> {
    const OP: &str = "detach";
    let err = |e| Error::from_errno(OP, name, e);
    // Upgrade: succeeds only if no other handle, in any process, is
    // attached. A failed upgrade leaves us holding nothing, which is fine:
    // we are leaving, and whoever is still attached will do this check.
    if !flock::try_exclusive(fd.as_fd()).map_err(err)? {
        return Ok(false);
    }
    // Read the flags only after the exclusive lock: `remove_when_unused`
    // sets the bit before its own flock attempt, and the kernel's lock
    // list is serialised, so if its attempt failed because of us, we see
    // the bit here.
    // Acquire: pairs with the SeqCst fetch_or in `remove_when_unused`
    // (the flock syscalls between them order the two processes).
    let marked = flags_word(map).load(Ordering::Acquire) & header::FLAG_MARKED != 0;
    if lifetime == Lifetime::UntilLastDetach || marked {
        return shm::unlink_if_same(&file_name(name), id).map_err(err);
    }
    let _ = flock::unlock(fd.as_fd());
    Ok(false)
}
