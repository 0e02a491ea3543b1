//! Channels: the ring `Sender`/`Receiver` (bytes, copied) and pub/sub
//! `Publisher`/`Subscriber` with zero-copy loans and samples.
//!
//! Endpoints are `unsendable`: like the Rust types (which are `!Sync`),
//! each belongs to the Python thread that made it.
//!
//! # Loans and samples as buffers
//!
//! `loan` and `recv` return a `Buffer` whose payload is the Rust `Loan` /
//! `Sample`: holding the payload holds the slot. The Rust value borrows
//! the endpoint inside an `Arc` that the payload also holds, so the
//! endpoint outlives it even if Python closes the endpoint first. The
//! buffer's memory is the endpoint's shadow mapping (see
//! [`crate::buffer`]), so no view ever dangles.

mod pubsub;
mod ring;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors;

pub(crate) use pubsub::{release_sample, PyPublisher, PySubscriber};
pub(crate) use ring::{PyReceiver, PySender};

pub(super) fn closed(py: Python<'_>, what: &str, name: &str) -> PyErr {
    errors::new(py, "Closed", format!("{what} {name:?} is closed"))
}

pub(super) fn check_how(how: &str) -> PyResult<()> {
    match how {
        "create" | "open" => Ok(()),
        _ => Err(PyValueError::new_err("how must be \"create\" or \"open\"")),
    }
}
