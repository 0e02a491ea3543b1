//! Blocking calls from Python: the GIL is released while waiting, and the
//! wait is cut into short slices so that Ctrl-C (`KeyboardInterrupt`) and
//! other signal handlers run within [`SLICE`].

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Longest time between two signal checks of a waiting call.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Wraps a value that does not cross threads, so that it may be captured
/// by `Python::detach`.
pub(crate) struct SameThread<T>(pub(crate) T);

// SAFETY: `Python::detach` runs its closure on the calling thread and
// returns before the caller goes on; its `Send` bound exists to keep
// GIL-bound Python references out of the closure, and the values we wrap
// are Rust endpoints, guards and byte slices holding no Python reference.
unsafe impl<T> Send for SameThread<T> {}

/// The deadline of a Python `timeout=` argument: `None` waits for ever; a
/// negative or NaN timeout is a `ValueError`.
pub(crate) fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err(
            "timeout must be a non-negative number of seconds or None",
        )),
        Some(t) => Ok(Duration::try_from_secs_f64(t)
            .ok()
            .and_then(|d| Instant::now().checked_add(d))),
    }
}

/// Runs `attempt(slice)` with the GIL released until it gives anything but
/// a timeout (`timed_out`), the deadline passes, or a signal handler
/// raises (that exception is returned). Every slice is at most [`SLICE`];
/// a zero timeout makes exactly one attempt with a zero slice.
pub(crate) fn sliced<T, E>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(Duration) -> Result<T, E>,
    timed_out: impl Fn(&E) -> bool,
) -> PyResult<Result<T, E>> {
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        let f = SameThread(&mut attempt);
        let r = py
            .detach(move || {
                let f = f;
                SameThread((f.0)(slice))
            })
            .0;
        match r {
            Err(e) if timed_out(&e) => {
                py.check_signals()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Err(e));
                }
            }
            r => return Ok(r),
        }
    }
}

/// Runs `f` with the GIL released (for calls that may block briefly:
/// opening, creating, detaching).
pub(crate) fn unlocked<T>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    let f = SameThread(f);
    py.detach(move || {
        let f = f;
        SameThread((f.0)())
    })
    .0
}
