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
            Errno::LOOP | Errno::NOTDIR | Errno::ISDIR => Error::Corrupt {
                op,
                name,
                reason: "not a regular shm file".into(),
            },
            e => Error::Io {
                op,
                name,
                source: io::Error::from_raw_os_error(e.raw_os_error()),
            },
        }
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
