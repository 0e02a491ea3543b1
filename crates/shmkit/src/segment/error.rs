//! The error type of every segment operation.

use std::io;

use super::Kind;

/// Result of a segment operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, on which segment, while doing what.
///
/// Every variant names the operation (`op`: "create", "open", "remove"...)
/// and the segment, so the message alone tells a user what was tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name is not a valid segment key. Nothing was asked of the OS.
    #[error("{op} {name:?}: invalid name: {reason}")]
    InvalidName {
        /// Operation tried.
        op: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No segment has this name.
    #[error("{op} {name:?}: no such segment")]
    NotFound {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
    },
    /// A segment with this name exists already.
    #[error("{op} {name:?}: a segment with this name already exists")]
    AlreadyExists {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
    },
    /// The segment holds another kind of object.
    #[error("{op} {name:?}: segment holds a {found}, expected a {expected}")]
    WrongKind {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// What the caller asked for.
        expected: Kind,
        /// What the header says.
        found: Kind,
    },
    /// The stored type's size, alignment or name hash differ from the
    /// caller's: two programs disagree on a layout.
    #[error("{op} {name:?}: stored type {found} does not match expected {expected}")]
    TypeMismatch {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The caller's type.
        expected: String,
        /// The type recorded in the header.
        found: String,
    },
    /// The header was written by another format version of shmkit.
    #[error("{op} {name:?}: format version {found}, this shmkit reads version {supported}")]
    VersionMismatch {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// Version in the header.
        found: u32,
        /// Version this library speaks.
        supported: u32,
    },
    /// The header or object state is damaged or inconsistent.
    #[error("{op} {name:?}: corrupt segment: {reason}")]
    Corrupt {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// What check failed.
        reason: String,
    },
    /// The OS refused access (mode bits or ownership).
    #[error("{op} {name:?}: permission denied")]
    PermissionDenied {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
    },
    /// The segment belongs to another user and the caller did not opt in
    /// with [`allow_any_owner`](super::SegmentBuilder::allow_any_owner).
    #[error("{op} {name:?}: segment is owned by uid {owner}, not by this process's uid {euid}; refusing to trust it (see allow_any_owner)")]
    ForeignOwner {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// Owner of the segment file.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// The segment is marked for deferred removal and takes no new
    /// attachments; it disappears when its last process detaches.
    #[error("{op} {name:?}: segment is marked for removal and accepts no new attachments")]
    MarkedForRemoval {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
    },
    /// An access outside the data area, or to a read-only attachment.
    #[error("{op} {name:?}: {len} bytes at offset {offset} do not fit in {size} bytes")]
    OutOfBounds {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Size of the data area.
        size: u64,
    },
    /// An argument the caller gave makes no sense (zero size, bad mode...).
    #[error("{op} {name:?}: {reason}")]
    InvalidArgument {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Another process kept the segment locked for deletion too long.
    #[error("{op} {name:?}: segment stayed busy (being deleted or collected by another process)")]
    Busy {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
    },
    /// The name exists in the shm directory but is not a regular file (a
    /// FIFO, directory, socket, symbolic link or device, made by someone
    /// else): it is refused without reading it or blocking on it.
    #[error("{op} {name:?}: /dev/shm/shmkit.{name} is {what}, not a shmkit segment (it was not made by shmkit; `shmkit rm` deletes it if you may)")]
    NotASegment {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// What the file is: "a FIFO", "a directory"...
        what: &'static str,
    },
    /// The shm file system (`/dev/shm`) has not enough free space for the
    /// memory the segment needs. Nothing was created.
    #[error("{op} {name:?}: {} does not fit: /dev/shm has {} free; give it more room (docker run --shm-size=..., or mount -o remount,size=... /dev/shm) or ask for less", no_space_asked(*asked), no_space_free(*free, *total))]
    NoSpace {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// Bytes asked for (header page included), if known.
        asked: Option<u64>,
        /// Bytes free in `/dev/shm` just after the failure (`statvfs`).
        free: Option<u64>,
        /// Size of `/dev/shm` (`statvfs`).
        total: Option<u64>,
    },
    /// The segment file would be larger than this process may write
    /// (`RLIMIT_FSIZE`, `ulimit -f`). Nothing was created, and no SIGXFSZ
    /// was raised.
    #[error("{op} {name:?}: {} is over this process's file size limit ({}; see ulimit -f)", no_space_asked(*asked), no_space_asked(*limit))]
    FileSizeLimit {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// Bytes asked for (header page included), if known.
        asked: Option<u64>,
        /// The soft limit in bytes.
        limit: Option<u64>,
    },
    /// Any other OS error.
    #[error("{op} {name:?}: {source}")]
    Io {
        /// Operation tried.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Maps an errno from an OS call to the matching variant.
    pub(crate) fn from_errno(op: &'static str, name: &str, e: rustix::io::Errno) -> Error {
        use rustix::io::Errno;
        let name = name.to_owned();
        match e {
            Errno::NOENT => Error::NotFound { op, name },
            Errno::EXIST => Error::AlreadyExists { op, name },
            Errno::ACCESS | Errno::PERM | Errno::ROFS => Error::PermissionDenied { op, name },
            Errno::LOOP => Error::NotASegment {
                op,
                name,
                what: "a symbolic link",
            },
            Errno::ISDIR | Errno::NOTDIR => Error::NotASegment {
                op,
                name,
                what: "a directory",
            },
            // open(2) of a socket.
            Errno::NXIO => Error::NotASegment {
                op,
                name,
                what: "a socket or a device without a driver",
            },
            // pread/pwrite on a FIFO or socket.
            Errno::SPIPE => Error::NotASegment {
                op,
                name,
                what: "a pipe or socket (cannot seek in it)",
            },
            Errno::NOSPC | Errno::DQUOT => {
                let space = crate::sys::shm::space().ok();
                Error::NoSpace {
                    op,
                    name,
                    asked: None,
                    free: space.map(|s| s.free),
                    total: space.map(|s| s.total),
                }
            }
            Errno::FBIG => Error::FileSizeLimit {
                op,
                name,
                asked: None,
                limit: crate::sys::shm::file_size_limit(),
            },
            e => Error::Io {
                op,
                name,
                source: io::Error::from_raw_os_error(e.raw_os_error()),
            },
        }
    }

    /// [`Error::NotASegment`] for a file of type `t`, or `None` for a
    /// regular file.
    pub(crate) fn not_regular(
        op: &'static str,
        name: &str,
        t: rustix::fs::FileType,
    ) -> Option<Error> {
        use rustix::fs::FileType as T;
        let what = match t {
            T::RegularFile => return None,
            T::Fifo => "a FIFO (named pipe)",
            T::Directory => "a directory",
            T::Socket => "a socket",
            T::Symlink => "a symbolic link",
            T::CharacterDevice => "a character device",
            T::BlockDevice => "a block device",
            T::Unknown => "not a regular file",
        };
        Some(Error::NotASegment {
            op,
            name: name.to_owned(),
            what,
        })
    }

    pub(crate) fn corrupt(op: &'static str, name: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            op,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// `64 MiB (67112960 bytes)`, or "the segment" when unknown.
fn no_space_asked(n: Option<u64>) -> String {
    match n {
        Some(n) => format!("{} ({n} bytes)", human(n)),
        None => "the segment".to_owned(),
    }
}

fn no_space_free(free: Option<u64>, total: Option<u64>) -> String {
    match (free, total) {
        (Some(f), Some(t)) if t > 0 => format!("{} of {}", human(f), human(t)),
        (Some(f), _) => human(f),
        _ => "an unknown amount".to_owned(),
    }
}

/// Byte count in binary units: `8 MiB`, `1.5 GiB`, `100 TiB`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else if (v * 10.0).round() % 10.0 == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
