//! Rust errors as the Python exceptions of `shmkit/_errors.py`, with the
//! Rust messages.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use shmkit::channel::{OpenError, RecvError, SendError};
use shmkit::segment;
use shmkit::sync::{Corrupt, WaitError};

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class `shmkit._errors.<class>`.
pub(crate) fn class<'py>(py: Python<'py>, class: &str) -> PyResult<Bound<'py, PyAny>> {
    let m = ERRORS.get_or_try_init(py, || py.import("shmkit._errors").map(Bound::unbind))?;
    m.bind(py).getattr(class)
}

/// An instance of `shmkit._errors.<class>` carrying `msg`.
pub(crate) fn new(py: Python<'_>, class: &str, msg: impl Into<String>) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = self::class(py, class)?;
        Ok(PyErr::from_value(cls.call1((msg.into(),))?))
    };
    build().unwrap_or_else(|e| e)
}

/// Whether a segment error is "no space left" (`ENOSPC` / `EFBIG` from
/// the OS, or the library's own no-space variant when it has one).
fn is_no_space(e: &segment::Error) -> bool {
    if let segment::Error::Io { source, .. } = e {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EFBIG)
        ) {
            return true;
        }
    }
    // `segment::Error` is `#[non_exhaustive]`; a dedicated no-space
    // variant, where the library has one, debug-prints its name first.
    format!("{e:?}").starts_with("NoSpace")
}

/// A segment error.
pub(crate) fn segment(py: Python<'_>, e: segment::Error) -> PyErr {
    use segment::Error as E;
    let class = match &e {
        _ if is_no_space(&e) => "NoSpace",
        E::InvalidName { .. } => "InvalidName",
        E::NotFound { .. } => "NotFound",
        E::AlreadyExists { .. } => "AlreadyExists",
        E::WrongKind { .. } | E::TypeMismatch { .. } => "WrongKind",
        E::VersionMismatch { .. } | E::Corrupt { .. } => "Corrupt",
        E::PermissionDenied { .. } | E::ForeignOwner { .. } => "PermissionDenied",
        E::MarkedForRemoval { .. } => "MarkedForRemoval",
        E::OutOfBounds { .. } | E::InvalidArgument { .. } => "InvalidArgument",
        E::Busy { .. } => "Busy",
        _ => "Error",
    };
    new(py, class, e.to_string())
}

/// A channel open error.
pub(crate) fn open(py: Python<'_>, e: OpenError) -> PyErr {
    match e {
        OpenError::Segment(s) => segment(py, s),
        OpenError::RoleTaken { .. } | OpenError::NoSubscriberSlot { .. } => {
            new(py, "RoleTaken", e.to_string())
        }
        OpenError::InvalidConfig { .. } => new(py, "InvalidArgument", e.to_string()),
        e => new(py, "Error", e.to_string()),
    }
}

/// A send or loan error.
pub(crate) fn send(py: Python<'_>, e: SendError) -> PyErr {
    let class = match &e {
        SendError::Full | SendError::Timeout => "Timeout",
        SendError::Disconnected => "Disconnected",
        SendError::TooLarge { .. } => "TooLarge",
        SendError::Corrupt(_) => "Corrupt",
        _ => "Error",
    };
    new(py, class, e.to_string())
}

/// A receive error.
pub(crate) fn recv(py: Python<'_>, e: RecvError) -> PyErr {
    let class = match &e {
        RecvError::Empty | RecvError::Timeout => "Timeout",
        RecvError::Disconnected => "Disconnected",
        RecvError::SenderDied => "SenderDied",
        RecvError::Corrupt(_) => "Corrupt",
        _ => "Error",
    };
    new(py, class, e.to_string())
}

/// A semaphore or event wait error.
pub(crate) fn wait(py: Python<'_>, e: WaitError) -> PyErr {
    match e {
        WaitError::WouldBlock | WaitError::Timeout => new(py, "Timeout", e.to_string()),
        WaitError::Corrupt(c) => corrupt(py, c),
    }
}

/// A damaged synchronisation object.
pub(crate) fn corrupt(py: Python<'_>, c: Corrupt) -> PyErr {
    new(py, "Corrupt", c.to_string())
}
