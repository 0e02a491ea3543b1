//! The native part of the `shmkit` Python package (`shmkit._shmkit`): a
//! thin layer over the Rust library, so segments, locks and channels are
//! the same objects the CLI and Rust programs use. The public Python API
//! is `shmkit/__init__.py`, which wraps these.

mod buffer;
mod channel;
mod errors;
mod ffi;
mod segment;
mod sync;
mod wait;

use pyo3::prelude::*;

/// Live exports (memoryviews, `numpy.frombuffer` arrays) of a `Buffer`.
#[pyfunction]
fn buffer_exports(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(buffer::inner_of(obj)?.exports())
}

/// Refuses new exports of a `Buffer` from now on.
#[pyfunction]
fn buffer_close(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    buffer::inner_of(obj)?.close();
    Ok(())
}

/// Refuses writable exports of a `Buffer` from now on.
#[pyfunction]
fn buffer_freeze(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    buffer::inner_of(obj)?.freeze();
    Ok(())
}

/// Whether a `Buffer` still holds its loan or sample.
#[pyfunction]
fn buffer_holds(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(buffer::inner_of(obj)?.holds_payload())
}

/// The module.
#[pymodule]
fn _shmkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Buffer", buffer::buffer_type(py)?)?;
    m.add_class::<segment::SegmentHandle>()?;
    m.add_function(wrap_pyfunction!(segment::segment_create, m)?)?;
    m.add_function(wrap_pyfunction!(segment::segment_open, m)?)?;
    m.add_function(wrap_pyfunction!(segment::segment_open_or_create, m)?)?;
    m.add_function(wrap_pyfunction!(segment::remove, m)?)?;
    m.add_function(wrap_pyfunction!(segment::remove_when_unused, m)?)?;
    m.add_function(wrap_pyfunction!(segment::list_segments, m)?)?;
    m.add_class::<sync::PyMutex>()?;
    m.add_class::<sync::PySemaphore>()?;
    m.add_class::<sync::PyEvent>()?;
    m.add_class::<channel::PySender>()?;
    m.add_class::<channel::PyReceiver>()?;
    m.add_class::<channel::PyPublisher>()?;
    m.add_class::<channel::PySubscriber>()?;
    m.add_function(wrap_pyfunction!(channel::release_sample, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_exports, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_close, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_freeze, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_holds, m)?)?;
    Ok(())
}
