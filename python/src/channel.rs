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

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shmkit::channel::pubsub::{Loan, Policy, PubSubOptions, Publisher, Sample, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{OpenError, RecvError, SendError, Wait};
use shmkit::segment::Segment;

use crate::buffer::{self, Inner, Shadow};
use crate::errors;
use crate::ffi::Acquired;
use crate::wait::{deadline, sliced, SameThread};

fn closed(py: Python<'_>, what: &str, name: &str) -> PyErr {
    errors::new(py, "Closed", format!("{what} {name:?} is closed"))
}

fn check_how(how: &str) -> PyResult<()> {
    match how {
        "create" | "open" => Ok(()),
        _ => Err(PyValueError::new_err("how must be \"create\" or \"open\"")),
    }
}

// ---------------------------------------------------------------- ring

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

// ------------------------------------------------------------- pub/sub

/// The publisher and its shadow mapping; `loaned` guards the `&mut`.
struct PubCore {
    p: UnsafeCell<Publisher>,
    /// A loan (which holds `&mut` to `p`) exists: nothing else touches `p`.
    loaned: AtomicBool,
    shadow: Arc<Shadow>,
}

/// An unpublished loan: holding it holds the slot.
struct LoanPayload {
    // Dropped first (see Drop): it borrows `core.p`.
    loan: Option<Loan<'static>>,
    core: Arc<PubCore>,
}

impl Drop for LoanPayload {
    fn drop(&mut self) {
        self.loan = None;
        // Release: the loan's use of the publisher happens-before the next
        // `loan`/`send`, which checks the flag with Acquire.
        self.core.loaned.store(false, Ordering::Release);
    }
}

fn shadow_of(seg: &Segment) -> PyResult<Arc<Shadow>> {
    // SAFETY: the data area of a live shared segment mapping, page
    // aligned, `len()` bytes.
    let s = unsafe { Shadow::new(seg.as_ptr(), seg.len())? };
    Ok(Arc::new(s))
}

fn open_seg(py: Python<'_>, name: &str) -> PyResult<Segment> {
    crate::wait::unlocked(py, || Segment::open(name)).map_err(|e| errors::segment(py, e))
}

/// The publishing end of a pub/sub channel.
#[pyclass(module = "shmkit._shmkit", name = "Publisher", unsendable)]
pub(crate) struct PyPublisher {
    core: Option<Arc<PubCore>>,
    /// Publications on the channel (readable while a loan holds `&mut`).
    published: u64,
    name: String,
    slot_size: usize,
    slots: usize,
}

#[pymethods]
impl PyPublisher {
    /// `how="create"`: a new channel of `slots` slots of `slot_size`
    /// bytes for up to `max_subscribers`, `policy` "block" or
    /// "drop-oldest"; `"open"`: become the publisher of an existing one.
    #[new]
    #[pyo3(signature = (name, how="open", slots=4, slot_size=1<<20, max_subscribers=8, policy="block", mode=0o600, lifetime="persistent"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        how: &str,
        slots: u64,
        slot_size: u64,
        max_subscribers: u32,
        policy: &str,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PyPublisher> {
        check_how(how)?;
        let seg = if how == "create" {
            let policy = match policy {
                "block" => Policy::Block,
                "drop-oldest" | "drop_oldest" => Policy::DropOldest,
                _ => {
                    return Err(PyValueError::new_err(
                        "policy must be \"block\" or \"drop-oldest\"",
                    ))
                }
            };
            let opts = PubSubOptions::new(slots, slot_size, max_subscribers)
                .policy(policy)
                .mode(mode)
                .lifetime(crate::segment::lifetime(lifetime)?);
            crate::wait::unlocked(py, || opts.create(name)).map_err(|e| errors::open(py, e))?
        } else {
            open_seg(py, name)?
        };
        let shadow = shadow_of(&seg)?;
        let p = crate::wait::unlocked(py, || Publisher::from_segment(seg))
            .map_err(|e: OpenError| errors::open(py, e))?;
        Ok(PyPublisher {
            published: p.published(),
            name: name.to_owned(),
            slot_size: p.slot_size(),
            slots: p.slots(),
            // An Arc although the endpoint is unsendable: buffers holding a
            // clone may be freed by whichever thread drops their last
            // reference (with the GIL), so the count must be atomic.
            #[allow(clippy::arc_with_non_send_sync)]
            core: Some(Arc::new(PubCore {
                p: UnsafeCell::new(p),
                loaned: AtomicBool::new(false),
                shadow,
            })),
        })
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per slot (the largest message).
    #[getter]
    fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    #[getter]
    fn slots(&self) -> usize {
        self.slots
    }

    /// Messages published so far on this channel.
    #[getter]
    fn published(&self) -> u64 {
        self.published
    }

    /// Live subscribers now (an error while a loan is outstanding).
    #[getter]
    fn subscribers(&self, py: Python<'_>) -> PyResult<usize> {
        let core = self.core(py)?;
        self.with_publisher(py, &core, |p| p.subscribers())
    }

    /// Borrows a slot for `nbytes` bytes, waiting at most `timeout`
    /// seconds for one (`None`: for ever). Returns an unpublished loan as
    /// a writable `Buffer`; `publish` or `discard` it.
    #[pyo3(signature = (nbytes, timeout=None))]
    fn loan<'py>(
        &self,
        py: Python<'py>,
        nbytes: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dl = deadline(timeout)?;
        let core = self.core(py)?;
        // Acquire: pairs with the Release in `LoanPayload::drop`.
        if core.loaned.swap(true, Ordering::Acquire) {
            return Err(loan_busy(py, &self.name));
        }
        // SAFETY: `loaned` was false and is now ours: no other reference
        // to the publisher exists until the flag is cleared (by the
        // payload's Drop, or below on failure). The `'static` borrow is
        // kept alive by the Arc stored next to it in the payload, which
        // drops the loan first.
        let p: *mut Publisher = core.p.get();
        let r = sliced(
            py,
            dl,
            // SAFETY: see above; each attempt's loan (if any) is returned
            // at once, so the `&mut` of one attempt ends before the next.
            |d| unsafe { (*p).loan_timeout(nbytes, d) },
            |e| matches!(e, SendError::Timeout),
        );
        let loan = match r {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                // Release: our use of the publisher happens-before the next claim (Acquire swap).
                core.loaned.store(false, Ordering::Release);
                return Err(errors::send(py, e));
            }
            Err(e) => {
                // Release: our use of the publisher happens-before the next claim (Acquire swap).
                core.loaned.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let ptr = core.shadow.translate(loan.as_ptr(), loan.len());
        let ptr = match ptr {
            Ok(p) => p,
            Err(e) => {
                let _ = loan;
                // Release: our use of the publisher happens-before the next claim (Acquire swap).
                core.loaned.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let len = loan.len();
        let payload = LoanPayload {
            loan: Some(loan),
            core: core.clone(),
        };
        buffer::new_buffer(
            py,
            Inner::new(
                ptr,
                len,
                true,
                Some(Box::new(payload)),
                Box::new(core.shadow.clone()),
            ),
        )
    }

    /// Publishes a loan from `loan()` (its first `nbytes` bytes, default
    /// all). The buffer then refuses writable exports; views taken from
    /// it stay mapped but show whatever the slot holds later.
    #[pyo3(signature = (buffer, nbytes=None))]
    fn publish(
        &mut self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        nbytes: Option<usize>,
    ) -> PyResult<()> {
        let inner = buffer::inner_of(buffer)?;
        let core = Some(self.core(py)?);
        let payload = inner
            .take_payload_if::<LoanPayload>(|l| {
                core.as_ref().is_some_and(|c| Arc::ptr_eq(c, &l.core))
            })
            .ok_or_else(|| errors::new(py, "Error", "not an unpublished loan of this publisher"))?;
        let mut payload = payload;
        if let Some(mut loan) = payload.loan.take() {
            if let Some(n) = nbytes {
                if n > loan.len() {
                    return Err(PyValueError::new_err(format!(
                        "nbytes {n} exceeds the loan's {} bytes",
                        loan.len()
                    )));
                }
                loan.truncate(n);
            }
            loan.publish();
            self.published += 1;
        }
        drop(payload);
        inner.freeze();
        inner.close();
        Ok(())
    }

    /// Gives an unpublished loan's slot back (once its last view is gone).
    fn discard(&self, buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
        let inner = buffer::inner_of(buffer)?;
        inner.freeze();
        Ok(inner.finish_when_idle())
    }

    /// Copies `data` (bytes-like) into a slot and publishes it.
    #[pyo3(signature = (data, timeout=None))]
    fn send(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let dl = deadline(timeout)?;
        let core = self.core(py)?;
        let buf = Acquired::new(data, false)?;
        // Acquire: pairs with the Release store that ended the previous claim.
        if core.loaned.swap(true, Ordering::Acquire) {
            return Err(loan_busy(py, &self.name));
        }
        // SAFETY: as in `loan`; the flag is cleared right after.
        let p: &mut Publisher = unsafe { &mut *core.p.get() };
        let msg = SameThread((buf.as_ptr(), buf.len()));
        let r = sliced(
            py,
            dl,
            |d| {
                // SAFETY: `buf` stays acquired until after this call.
                let m = unsafe { std::slice::from_raw_parts(msg.0 .0, msg.0 .1) };
                p.send_wait(m, Wait::timeout(d))
            },
            |e| matches!(e, SendError::Timeout),
        );
        // Release: our use of the publisher happens-before the next claim (Acquire swap).
        core.loaned.store(false, Ordering::Release);
        drop(buf);
        r?.map_err(|e| errors::send(py, e))?;
        self.published += 1;
        Ok(())
    }

    /// Whether a loan is outstanding.
    #[getter]
    fn loaned(&self) -> bool {
        self.core
            .as_ref()
            // Acquire: pairs with the Release store ending a claim.
            .is_some_and(|c| c.loaned.load(Ordering::Acquire))
    }

    /// Stops publishing (subscribers get every message, then
    /// `Disconnected`). An outstanding loan keeps the role until it goes.
    fn close(&mut self) {
        self.core = None;
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

fn loan_busy(py: Python<'_>, name: &str) -> PyErr {
    errors::new(
        py,
        "Error",
        format!("publisher {name:?}: a loan is still outstanding (publish or discard it, and drop its views)"),
    )
}

impl PyPublisher {
    fn core(&self, py: Python<'_>) -> PyResult<Arc<PubCore>> {
        self.core
            .clone()
            .ok_or_else(|| closed(py, "publisher", &self.name))
    }

    fn with_publisher<R>(
        &self,
        py: Python<'_>,
        core: &PubCore,
        f: impl FnOnce(&Publisher) -> R,
    ) -> PyResult<R> {
        // Acquire: pairs with the Release store ending a claim; a false
        // means no `&mut` exists (only this thread can make one).
        if core.loaned.load(Ordering::Acquire) {
            return Err(loan_busy(py, &self.name));
        }
        // SAFETY: no loan holds `&mut` (flag false, and only this thread
        // can set it: the endpoint is unsendable).
        Ok(f(unsafe { &*core.p.get() }))
    }
}

/// The subscriber and its shadow mapping.
struct SubCore {
    s: Subscriber,
    shadow: Arc<Shadow>,
}

/// A received sample: holding it holds the slot.
struct SamplePayload {
    // Dropped first (see Drop): it borrows `_core.s`.
    sample: Option<Sample<'static>>,
    _core: Arc<SubCore>,
}

impl Drop for SamplePayload {
    fn drop(&mut self) {
        drop(self.sample.take());
    }
}

/// A subscribing end of a pub/sub channel.
#[pyclass(module = "shmkit._shmkit", name = "Subscriber", unsendable)]
pub(crate) struct PySubscriber {
    core: Option<Arc<SubCore>>,
    name: String,
}

#[pymethods]
impl PySubscriber {
    /// Joins the channel `name`.
    #[new]
    fn new(py: Python<'_>, name: &str) -> PyResult<PySubscriber> {
        let seg = open_seg(py, name)?;
        let shadow = shadow_of(&seg)?;
        let s = crate::wait::unlocked(py, || Subscriber::from_segment(seg))
            .map_err(|e| errors::open(py, e))?;
        Ok(PySubscriber {
            // An Arc: see `PyPublisher::new`.
            #[allow(clippy::arc_with_non_send_sync)]
            core: Some(Arc::new(SubCore { s, shadow })),
            name: name.to_owned(),
        })
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Messages waiting for this subscriber.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.core(py)?.s.len())
    }

    /// The next message as `(buffer, missed)`: a read-only `Buffer` over
    /// the slot, held until `release_sample(buffer)` and its last view
    /// are gone. Raises `Timeout`, `Disconnected`, `SenderDied`.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<(Bound<'py, PyAny>, u64)> {
        let dl = deadline(timeout)?;
        let core = self.core(py)?;
        let s: &Subscriber = &core.s;
        let r = sliced(
            py,
            dl,
            |d| s.recv_timeout(d),
            |e| matches!(e, RecvError::Timeout),
        )?;
        let sample = r.map_err(|e| errors::recv(py, e))?;
        let missed = sample.missed();
        let ptr = core.shadow.translate(sample.as_ptr(), sample.len())?;
        let len = sample.len();
        // SAFETY: the sample borrows `core.s`; the payload keeps the Arc
        // that owns it and drops the sample first.
        let sample: Sample<'static> =
            unsafe { std::mem::transmute::<Sample<'_>, Sample<'static>>(sample) };
        let payload = SamplePayload {
            sample: Some(sample),
            _core: core.clone(),
        };
        let b = buffer::new_buffer(
            py,
            Inner::new(
                ptr,
                len,
                false,
                Some(Box::new(payload)),
                Box::new(core.shadow.clone()),
            ),
        )?;
        Ok((b, missed))
    }

    /// The next message, copied (the slot is released at once).
    #[pyo3(signature = (timeout=None))]
    fn recv_bytes<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let dl = deadline(timeout)?;
        let core = self.core(py)?;
        let s: &Subscriber = &core.s;
        let mut v = Vec::new();
        let out = &mut v;
        let r = sliced(
            py,
            dl,
            |d| s.recv_into(Wait::timeout(d), out),
            |e| matches!(e, RecvError::Timeout),
        )?;
        r.map_err(|e| errors::recv(py, e))?;
        Ok(PyBytes::new(py, &v))
    }

    /// Leaves the channel (samples still held keep the subscription until
    /// they go). Idempotent.
    fn close(&mut self) {
        self.core = None;
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

impl PySubscriber {
    fn core(&self, py: Python<'_>) -> PyResult<Arc<SubCore>> {
        self.core
            .clone()
            .ok_or_else(|| closed(py, "subscriber", &self.name))
    }
}

/// Releases a sample from `Subscriber.recv` once its last view is gone
/// (now, if none is). Returns whether the slot went back now.
#[pyfunction]
pub(crate) fn release_sample(buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(buffer::inner_of(buffer)?.finish_when_idle())
}
