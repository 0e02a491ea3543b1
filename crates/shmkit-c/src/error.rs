//! Status codes, the thread-local last error and the panic barrier.

use std::cell::RefCell;
use std::ffi::{c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmkit::channel::{OpenError, RecvError, SendError};
use shmkit::segment;
use shmkit::sync::{LockError, PostError, WaitError};

/// Status codes: every function returns `SHMKIT_OK` (0) or one of these
/// negative values (as an `int`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum shmkit_status {
    /// Success.
    SHMKIT_OK = 0,
    /// An argument is invalid (NULL pointer, bad name, zero size...).
    SHMKIT_EINVAL = -1,
    /// The handle is not open (closed, forged, or of another type).
    SHMKIT_EBADHANDLE = -2,
    /// No segment has this name.
    SHMKIT_ENOENT = -3,
    /// A segment with this name exists already.
    SHMKIT_EEXIST = -4,
    /// Permission denied (mode bits, another user's segment, read-only).
    SHMKIT_EACCES = -5,
    /// The segment holds another kind of object, or another type or
    /// format version.
    SHMKIT_EKIND = -6,
    /// The shared state failed validation (damaged or hostile peer).
    SHMKIT_ECORRUPT = -7,
    /// An offset or length is outside the segment.
    SHMKIT_ERANGE = -8,
    /// Busy: a channel role is taken, a loan is outstanding, the handle is
    /// in use by another call, or a segment is being deleted.
    SHMKIT_EBUSY = -9,
    /// Not possible now (try forms: lock held, count zero, ring full or
    /// empty).
    SHMKIT_EAGAIN = -10,
    /// The timeout expired.
    SHMKIT_ETIMEDOUT = -11,
    /// The lock is yours, but its previous owner died holding it: repair
    /// the data, then call shmkit_mutex_consistent (like EOWNERDEAD).
    SHMKIT_EOWNERDEAD = -12,
    /// The mutex is permanently unusable (an owner died and nobody
    /// repaired it).
    SHMKIT_ENOTRECOVERABLE = -13,
    /// This thread already holds the lock.
    SHMKIT_EDEADLK = -14,
    /// This thread does not hold the lock.
    SHMKIT_EPERM = -15,
    /// The other side of the channel closed (and everything it sent was
    /// received).
    SHMKIT_EDISCONNECTED = -16,
    /// The sender died (and every whole message it sent was received).
    SHMKIT_EPEERDIED = -17,
    /// The message is larger than the channel's maximum.
    SHMKIT_EMSGSIZE = -18,
    /// The caller's buffer is too small: the needed length was stored and
    /// the message kept for the next call.
    SHMKIT_EBUFFER = -19,
    /// The semaphore count would overflow.
    SHMKIT_EOVERFLOW = -20,
    /// The segment is marked for removal and takes no new attachments.
    SHMKIT_EREMOVED = -21,
    /// Another operating system error.
    SHMKIT_EIO = -22,
    /// A bug in shmkit (a Rust panic), caught at the boundary.
    SHMKIT_EPANIC = -23,
}

use shmkit_status as S;

/// A failure: its status and message.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) status: shmkit_status,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(status: shmkit_status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Error {
        Error::new(S::SHMKIT_EINVAL, format!("{what} is NULL"))
    }
}

impl From<segment::Error> for Error {
    fn from(e: segment::Error) -> Error {
        use segment::Error as E;
        let status = match &e {
            E::InvalidName { .. } | E::InvalidArgument { .. } => S::SHMKIT_EINVAL,
            E::NotFound { .. } => S::SHMKIT_ENOENT,
            E::AlreadyExists { .. } => S::SHMKIT_EEXIST,
            E::WrongKind { .. } | E::TypeMismatch { .. } | E::VersionMismatch { .. } => {
                S::SHMKIT_EKIND
            }
            E::Corrupt { .. } => S::SHMKIT_ECORRUPT,
            E::PermissionDenied { .. } | E::ForeignOwner { .. } => S::SHMKIT_EACCES,
            E::MarkedForRemoval { .. } => S::SHMKIT_EREMOVED,
            E::OutOfBounds { .. } => S::SHMKIT_ERANGE,
            E::Busy { .. } => S::SHMKIT_EBUSY,
            _ => S::SHMKIT_EIO,
        };
        Error::new(status, e.to_string())
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        match e {
            OpenError::Segment(s) => s.into(),
            e @ (OpenError::RoleTaken { .. } | OpenError::NoSubscriberSlot { .. }) => {
                Error::new(S::SHMKIT_EBUSY, e.to_string())
            }
            e @ OpenError::InvalidConfig { .. } => Error::new(S::SHMKIT_EINVAL, e.to_string()),
            e => Error::new(S::SHMKIT_EIO, e.to_string()),
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        let status = match &e {
            SendError::Full => S::SHMKIT_EAGAIN,
            SendError::Timeout => S::SHMKIT_ETIMEDOUT,
            SendError::Disconnected => S::SHMKIT_EDISCONNECTED,
            SendError::TooLarge { .. } => S::SHMKIT_EMSGSIZE,
            SendError::Corrupt(_) => S::SHMKIT_ECORRUPT,
            _ => S::SHMKIT_EIO,
        };
        Error::new(status, e.to_string())
    }
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Error {
        let status = match &e {
            RecvError::Empty => S::SHMKIT_EAGAIN,
            RecvError::Timeout => S::SHMKIT_ETIMEDOUT,
            RecvError::Disconnected => S::SHMKIT_EDISCONNECTED,
            RecvError::SenderDied => S::SHMKIT_EPEERDIED,
            RecvError::Corrupt(_) => S::SHMKIT_ECORRUPT,
            _ => S::SHMKIT_EIO,
        };
        Error::new(status, e.to_string())
    }
}

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Error {
        let status = match &e {
            WaitError::WouldBlock => S::SHMKIT_EAGAIN,
            WaitError::Timeout => S::SHMKIT_ETIMEDOUT,
            WaitError::Corrupt(_) => S::SHMKIT_ECORRUPT,
        };
        Error::new(status, e.to_string())
    }
}

impl From<PostError> for Error {
    fn from(e: PostError) -> Error {
        let status = match &e {
            PostError::Overflow => S::SHMKIT_EOVERFLOW,
            PostError::Corrupt(_) => S::SHMKIT_ECORRUPT,
        };
        Error::new(status, e.to_string())
    }
}

impl From<shmkit::sync::Corrupt> for Error {
    fn from(e: shmkit::sync::Corrupt) -> Error {
        Error::new(S::SHMKIT_ECORRUPT, e.to_string())
    }
}

impl<G> From<&LockError<G>> for Error {
    fn from(e: &LockError<G>) -> Error {
        let status = match e {
            LockError::OwnerDied(_) => S::SHMKIT_EOWNERDEAD,
            LockError::Unrecoverable => S::SHMKIT_ENOTRECOVERABLE,
            LockError::WouldBlock => S::SHMKIT_EAGAIN,
            LockError::Timeout => S::SHMKIT_ETIMEDOUT,
            LockError::Deadlock => S::SHMKIT_EDEADLK,
            LockError::Corrupt(_) => S::SHMKIT_ECORRUPT,
        };
        Error::new(status, e.to_string())
    }
}

thread_local! {
    /// The message of this thread's last failure.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last(message: &str) {
    // An interior NUL cannot come from our messages, but a name could
    // carry one in theory: cut there rather than fail.
    let bytes: Vec<u8> = message.bytes().take_while(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; then the
    // message is simply not kept.
    let _ = LAST.try_with(|l| *l.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const std::ffi::c_char {
    LAST.try_with(|l| l.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Runs the body of an exported function: its error becomes a status code
/// and the thread's last error; a panic becomes `SHMKIT_EPANIC`.
pub(crate) fn call(f: impl FnOnce() -> Result<(), Error>) -> std::ffi::c_int {
    // AssertUnwindSafe: after a panic we touch nothing the closure had
    // borrowed; the handle registries recover from poisoning.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => S::SHMKIT_OK as c_int,
        Ok(Err(e)) => {
            set_last(&e.message);
            e.status as c_int
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last(&format!("internal error (panic): {what}"));
            S::SHMKIT_EPANIC as c_int
        }
    }
}

/// Static text of each status.
pub(crate) fn describe(status: c_int) -> &'static std::ffi::CStr {
    const TABLE: [(shmkit_status, &std::ffi::CStr); 24] = [
        (S::SHMKIT_OK, c"success"),
        (S::SHMKIT_EINVAL, c"invalid argument"),
        (S::SHMKIT_EBADHANDLE, c"invalid or closed handle"),
        (S::SHMKIT_ENOENT, c"no such segment"),
        (S::SHMKIT_EEXIST, c"segment already exists"),
        (S::SHMKIT_EACCES, c"permission denied"),
        (S::SHMKIT_EKIND, c"wrong kind, type or version of segment"),
        (S::SHMKIT_ECORRUPT, c"corrupt shared state"),
        (S::SHMKIT_ERANGE, c"out of bounds"),
        (S::SHMKIT_EBUSY, c"busy"),
        (S::SHMKIT_EAGAIN, c"would block"),
        (S::SHMKIT_ETIMEDOUT, c"timed out"),
        (S::SHMKIT_EOWNERDEAD, c"previous lock owner died"),
        (S::SHMKIT_ENOTRECOVERABLE, c"mutex not recoverable"),
        (S::SHMKIT_EDEADLK, c"lock already held by this thread"),
        (S::SHMKIT_EPERM, c"lock not held by this thread"),
        (S::SHMKIT_EDISCONNECTED, c"the other side closed"),
        (S::SHMKIT_EPEERDIED, c"the sender died"),
        (S::SHMKIT_EMSGSIZE, c"message too large"),
        (S::SHMKIT_EBUFFER, c"buffer too small"),
        (S::SHMKIT_EOVERFLOW, c"semaphore count overflow"),
        (S::SHMKIT_EREMOVED, c"segment marked for removal"),
        (S::SHMKIT_EIO, c"operating system error"),
        (S::SHMKIT_EPANIC, c"internal error"),
    ];
    TABLE
        .iter()
        .find(|(s, _)| *s as c_int == status)
        .map_or(c"unknown status", |(_, d)| d)
}
