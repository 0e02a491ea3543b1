//! The ring `Sender`/`Receiver`: bytes in, bytes out (copied).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{RecvError, SendError, Wait};

use super::{check_how, closed};
use crate::errors;
use crate::ffi::Acquired;
use crate::wait::{deadline, sliced, SameThread};

/// Sending end of a ring (one per channel at a time).
#[pyclass(module = "shmkit._shmkit", name = "Sender", unsendable)]
pub(crate) struct PySender {
    tx: Option<Sender>,
    name: String,
}

#[pymethods]
impl PySender {
    /// `how="create"` makes the ring (`capacity` messages of at most
    /// `max_message` bytes); `"open"` joins an existing one.
    #[new]
    #[pyo3(signature = (name, how="open", capacity=1024, max_message=65536, mode=0o600, lifetime="persistent"))]
    fn new(
        py: Python<'_>,
        name: &str,
        how: &str,
        capacity: u64,
        max_message: u64,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PySender> {
        check_how(how)?;
        let opts = RingOptions::new(capacity, max_message)
            .mode(mode)
            .lifetime(crate::segment::lifetime(lifetime)?);
        let tx = if how == "create" {
            crate::wait::unlocked(py, || Sender::create(name, &opts))
        } else {
            crate::wait::unlocked(py, || Sender::open(name))
        }
        .map_err(|e| errors::open(py, e))?;
        Ok(PySender {
            tx: Some(tx),
            name: name.to_owned(),
        })
    }

    /// Creates a ring of `capacity` messages of at most `max_message`
    /// bytes and becomes its sender.
    #[staticmethod]
    #[pyo3(signature = (name, capacity=1024, max_message=65536, mode=0o600, lifetime="until-last-detach"))]
    fn create(
        py: Python<'_>,
        name: &str,
        capacity: u64,
        max_message: u64,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PySender> {
        PySender::new(py, name, "create", capacity, max_message, mode, lifetime)
    }

    /// Becomes the sender of an existing ring.
    #[staticmethod]
    fn open(py: Python<'_>, name: &str) -> PyResult<PySender> {
        PySender::new(py, name, "open", 0, 0, 0o600, "persistent")
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Messages the ring holds at most.
    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.tx(py)?.capacity())
    }

    /// Longest message in bytes.
    #[getter]
    fn max_message(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.tx(py)?.max_message())
    }

    /// Messages sent and not yet received.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.tx(py)?.len())
    }

    /// Copies `data` (any bytes-like object) into the ring, waiting at
    /// most `timeout` seconds for room (`None`: for ever). Raises
    /// `Timeout`, `Disconnected` (the receiver left or died), `TooLarge`.
    #[pyo3(signature = (data, timeout=None))]
    fn send(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let dl = deadline(timeout)?;
        let buf = Acquired::new(data, false)?;
        let name = self.name.clone();
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| closed(py, "sender", &name))?;
        let msg = SameThread((buf.as_ptr(), buf.len()));
        let r = sliced(
            py,
            dl,
            |d| {
                // SAFETY: the buffer stays acquired (so valid and not
                // resized) until `buf` drops after this call; other code
                // may write it concurrently, which only changes the bytes
                // copied.
                let m = unsafe { std::slice::from_raw_parts(msg.0 .0, msg.0 .1) };
                tx.send_wait(m, Wait::timeout(d))
            },
            |e| matches!(e, SendError::Timeout),
        )?;
        drop(buf);
        r.map_err(|e| errors::send(py, e))
    }

    /// Sends if there is room now; `False` if the ring is full.
    fn try_send(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        let buf = Acquired::new(data, false)?;
        let name = self.name.clone();
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| closed(py, "sender", &name))?;
        // SAFETY: acquired above, released after the copy.
        let m = unsafe { std::slice::from_raw_parts(buf.as_ptr(), buf.len()) };
        match tx.try_send(m) {
            Ok(()) => Ok(true),
            Err(SendError::Full) => Ok(false),
            Err(e) => Err(errors::send(py, e)),
        }
    }

    /// Closes the channel for the receiver (it gets every message sent,
    /// then `Disconnected`). Idempotent.
    fn close(&mut self) {
        self.tx = None;
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }
}

impl PySender {
    fn tx(&self, py: Python<'_>) -> PyResult<&Sender> {
        self.tx
            .as_ref()
            .ok_or_else(|| closed(py, "sender", &self.name))
    }
}

/// Receiving end of a ring (one per channel at a time). Iterating yields
/// messages until the sender closes.
#[pyclass(module = "shmkit._shmkit", name = "Receiver", unsendable)]
pub(crate) struct PyReceiver {
    rx: Option<Receiver>,
    name: String,
}

#[pymethods]
impl PyReceiver {
    /// As `Sender(...)`.
    #[new]
    #[pyo3(signature = (name, how="open", capacity=1024, max_message=65536, mode=0o600, lifetime="persistent"))]
    fn new(
        py: Python<'_>,
        name: &str,
        how: &str,
        capacity: u64,
        max_message: u64,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PyReceiver> {
        check_how(how)?;
        let opts = RingOptions::new(capacity, max_message)
            .mode(mode)
            .lifetime(crate::segment::lifetime(lifetime)?);
        let rx = if how == "create" {
            crate::wait::unlocked(py, || Receiver::create(name, &opts))
        } else {
            crate::wait::unlocked(py, || Receiver::open(name))
        }
        .map_err(|e| errors::open(py, e))?;
        Ok(PyReceiver {
            rx: Some(rx),
            name: name.to_owned(),
        })
    }

    /// Creates a ring of `capacity` messages of at most `max_message`
    /// bytes and becomes its receiver.
    #[staticmethod]
    #[pyo3(signature = (name, capacity=1024, max_message=65536, mode=0o600, lifetime="until-last-detach"))]
    fn create(
        py: Python<'_>,
        name: &str,
        capacity: u64,
        max_message: u64,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PyReceiver> {
        PyReceiver::new(py, name, "create", capacity, max_message, mode, lifetime)
    }

    /// Becomes the receiver of an existing ring.
    #[staticmethod]
    fn open(py: Python<'_>, name: &str) -> PyResult<PyReceiver> {
        PyReceiver::new(py, name, "open", 0, 0, 0o600, "persistent")
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Longest message in bytes.
    #[getter]
    fn max_message(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.rx_ref(py)?.max_message())
    }

    /// Messages waiting.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.rx_ref(py)?.len())
    }

    /// The next message, waiting at most `timeout` seconds (`None`: for
    /// ever). Raises `Timeout`, `Disconnected` (sender closed, all
    /// received) or `SenderDied`.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &mut self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let dl = deadline(timeout)?;
        let name = self.name.clone();
        let rx = self
            .rx
            .as_mut()
            .ok_or_else(|| closed(py, "receiver", &name))?;
        let r = sliced(
            py,
            dl,
            |d| rx.recv_timeout(d),
            |e| matches!(e, RecvError::Timeout),
        )?;
        r.map(|v| PyBytes::new(py, &v))
            .map_err(|e| errors::recv(py, e))
    }

    /// The next message if one is waiting, else `None`.
    fn try_recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let name = self.name.clone();
        let rx = self
            .rx
            .as_mut()
            .ok_or_else(|| closed(py, "receiver", &name))?;
        match rx.try_recv() {
            Ok(v) => Ok(Some(PyBytes::new(py, &v))),
            Err(RecvError::Empty) => Ok(None),
            Err(e) => Err(errors::recv(py, e)),
        }
    }

    /// Receives the next message into `buffer` (a writable bytes-like
    /// object) and returns its length. A message longer than `buffer` is
    /// not lost: `TooLarge` is raised with it as the `message` attribute.
    #[pyo3(signature = (buffer, timeout=None))]
    fn recv_into(
        &mut self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        let dl = deadline(timeout)?;
        let out = Acquired::new(buffer, true)?;
        let name = self.name.clone();
        let rx = self
            .rx
            .as_mut()
            .ok_or_else(|| closed(py, "receiver", &name))?;
        let dst = SameThread((out.as_mut_ptr(), out.len()));
        let r = sliced(
            py,
            dl,
            |d| {
                rx.recv_with(Wait::timeout(d), |m: &[u8]| {
                    if m.len() > dst.0 .1 {
                        return Err(m.to_vec());
                    }
                    // SAFETY: `out` stays acquired writable until after
                    // this call; `m.len()` bytes fit (checked); shared
                    // memory and the target cannot overlap.
                    unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), dst.0 .0, m.len()) };
                    Ok(m.len())
                })
            },
            |e| matches!(e, RecvError::Timeout),
        )?;
        drop(out);
        match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(msg)) => {
                let e = errors::new(
                    py,
                    "TooLarge",
                    format!(
                        "message of {} bytes does not fit in a buffer of {}",
                        msg.len(),
                        dst.0 .1
                    ),
                );
                e.value(py).setattr("message", PyBytes::new(py, &msg))?;
                Err(e)
            }
            Err(e) => Err(errors::recv(py, e)),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        match self.recv(py, None) {
            Ok(b) => Ok(Some(b)),
            Err(e)
                if e.is_instance(py, &errors::class(py, "Disconnected")?)
                    && !e.is_instance(py, &errors::class(py, "SenderDied")?) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Leaves the channel. Idempotent.
    fn close(&mut self) {
        self.rx = None;
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }
}

impl PyReceiver {
    fn rx_ref(&self, py: Python<'_>) -> PyResult<&Receiver> {
        self.rx
            .as_ref()
            .ok_or_else(|| closed(py, "receiver", &self.name))
    }
}
