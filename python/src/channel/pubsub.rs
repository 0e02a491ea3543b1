//! Pub/sub `Publisher`/`Subscriber` with zero-copy loans and samples.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shmkit::channel::pubsub::{Loan, Policy, PubSubOptions, Publisher, Sample, Subscriber};
use shmkit::channel::{OpenError, RecvError, SendError, Wait};
use shmkit::segment::Segment;

use super::{check_how, closed};
use crate::buffer::{self, Inner, Shadow};
use crate::errors;
use crate::ffi::Acquired;
use crate::wait::{deadline, sliced, SameThread};

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
