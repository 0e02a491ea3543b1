//! Named `Mutex`, `Semaphore` and `Event`.

use std::sync::{Arc, Mutex as StdMutex};
use std::thread::ThreadId;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use shmkit::sync::{
    EventMode, LockError, MutexGuard, NamedEvent, NamedMutex, NamedSemaphore, WaitError,
};

use crate::errors;
use crate::segment::lifetime;
use crate::wait::{deadline, sliced};

type RawNamed = NamedMutex<()>;

/// A held lock: the guard borrows the mutex inside the `Arc` next to it.
struct Held {
    thread: ThreadId,
    guard: MutexGuard<'static, ()>,
}

// SAFETY: the guard is only created, marked and dropped by the thread
// recorded in `thread` (checked by every method before touching it), as
// pthread requires; storing it in a `Send` struct only lets the Python
// object that holds it be freed elsewhere, in which case Drop leaks it
// instead of unlocking from the wrong thread (see `PyMutex`'s Drop).
unsafe impl Send for Held {}

/// A robust, process-shared mutex (a named segment of its own).
///
/// The lock is owned by the thread that acquired it, as with
/// `threading.Lock` used properly: only that thread may release it.
#[pyclass(module = "shmkit._shmkit", name = "Mutex", frozen)]
pub(crate) struct PyMutex {
    // Declared first: dropped before `m`, which its guard borrows.
    held: StdMutex<Option<Held>>,
    m: Arc<RawNamed>,
    name: String,
}

impl Drop for PyMutex {
    fn drop(&mut self) {
        if let Some(h) = self
            .held
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if h.thread == std::thread::current().id() {
                drop(h.guard);
            } else {
                // Unlocking a pthread mutex from another thread is
                // undefined: leave it locked (its holder thread is gone
                // from Python's view; the mutex segment stays valid
                // because the Arc below is leaked too).
                std::mem::forget(h.guard);
                std::mem::forget(self.m.clone());
            }
        }
    }
}

fn named_mutex(py: Python<'_>, name: &str, how: &str, mode: u32, life: &str) -> PyResult<RawNamed> {
    use shmkit::segment::Segment;
    let b = || -> PyResult<_> { Ok(Segment::builder(name).mode(mode).lifetime(lifetime(life)?)) };
    let r = match how {
        "create" => {
            let b = b()?;
            crate::wait::unlocked(py, || RawNamed::create_with(b, ()))
        }
        "open" => crate::wait::unlocked(py, || RawNamed::open_untyped(name)),
        _ => {
            let b = b()?;
            crate::wait::unlocked(py, || RawNamed::open_or_create_with(b, ()))
        }
    };
    r.map_err(|e| errors::segment(py, e))
}

#[pymethods]
impl PyMutex {
    /// `how`: "create", "open" or "open_or_create".
    #[new]
    #[pyo3(signature = (name, how="open_or_create", mode=0o600, lifetime="persistent"))]
    fn new(py: Python<'_>, name: &str, how: &str, mode: u32, lifetime: &str) -> PyResult<PyMutex> {
        if !matches!(how, "create" | "open" | "open_or_create") {
            return Err(PyValueError::new_err(
                "how must be create, open or open_or_create",
            ));
        }
        Ok(PyMutex {
            m: Arc::new(named_mutex(py, name, how, mode, lifetime)?),
            held: StdMutex::new(None),
            name: name.to_owned(),
        })
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lock, waiting at most `timeout` seconds (`None`: for
    /// ever). Returns `True`, or `False` if it timed out (`blocking=False`:
    /// a zero timeout), as `threading.Lock` does. Raises `OwnerDied` (the lock is then
    /// yours: repair, `mark_consistent()`, `release()`).
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(slf: &Bound<'_, Self>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let py = slf.py();
        let me = slf.get();
        let tid = std::thread::current().id();
        if let Some(h) = me.held.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if h.thread == tid {
                return Err(errors::new(
                    py,
                    "Error",
                    format!("mutex {:?}: this thread already holds it", me.name),
                ));
            }
        }
        let dl = deadline(if blocking { timeout } else { Some(0.0) })?;
        // SAFETY: the guard borrows the mutex inside `me.m`, an Arc that
        // `me` keeps until after `held` (field order, and Drop) is emptied.
        let m: &'static RawNamed = unsafe { &*Arc::as_ptr(&me.m) };
        let r = sliced(
            py,
            dl,
            |slice| m.lock_timeout(slice),
            |e| matches!(e, LockError::Timeout),
        )?;
        let store = |guard| {
            *me.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held { thread: tid, guard });
        };
        match r {
            Ok(g) => {
                store(g);
                Ok(true)
            }
            Err(LockError::OwnerDied(g)) => {
                store(g);
                let e = errors::new(
                    py,
                    "OwnerDied",
                    format!("mutex {:?}: {}", me.name, LockError::<()>::OwnerDied(())),
                );
                e.value(py).setattr("mutex", slf)?;
                Err(e)
            }
            Err(LockError::Timeout) => Ok(false),
            Err(LockError::Unrecoverable) => Err(errors::new(
                py,
                "Unrecoverable",
                format!("mutex {:?}: {}", me.name, LockError::<()>::Unrecoverable),
            )),
            Err(LockError::Corrupt(c)) => Err(errors::corrupt(py, c)),
            Err(e) => Err(errors::new(
                py,
                "Error",
                format!("mutex {:?}: {e}", me.name),
            )),
        }
    }

    /// Releases the lock held by this thread. After `OwnerDied` without
    /// `mark_consistent()`, the mutex becomes unrecoverable for everyone.
    fn release(&self) -> PyResult<()> {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(h) if h.thread == std::thread::current().id() => {
                drop(g.take());
                Ok(())
            }
            Some(_) => Err(PyRuntimeError::new_err(
                "release of a shmkit.Mutex held by another thread",
            )),
            None => Err(PyRuntimeError::new_err(
                "release of an unlocked shmkit.Mutex",
            )),
        }
    }

    /// After `OwnerDied`: declares the protected data repaired.
    fn mark_consistent(&self) -> PyResult<()> {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(h) if h.thread == std::thread::current().id() => {
                h.guard.mark_consistent();
                Ok(())
            }
            _ => Err(PyRuntimeError::new_err(
                "mark_consistent() needs the lock, held by this thread",
            )),
        }
    }

    /// Whether this thread holds the lock and it still needs repair.
    fn needs_repair(&self) -> bool {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        matches!(g.as_ref(), Some(h) if h.thread == std::thread::current().id() && h.guard.needs_repair())
    }

    /// Whether this thread holds the lock.
    fn held_by_me(&self) -> bool {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        matches!(g.as_ref(), Some(h) if h.thread == std::thread::current().id())
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<()> {
        PyMutex::acquire(slf, true, None).map(|_| ())
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }
}

/// A counting semaphore (a named segment of its own).
#[pyclass(module = "shmkit._shmkit", name = "Semaphore", frozen)]
pub(crate) struct PySemaphore {
    s: NamedSemaphore,
    name: String,
}

#[pymethods]
impl PySemaphore {
    #[new]
    #[pyo3(signature = (name, value=1, how="open_or_create", mode=0o600, lifetime="persistent"))]
    fn new(
        py: Python<'_>,
        name: &str,
        value: u32,
        how: &str,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PySemaphore> {
        use shmkit::segment::Segment;
        let b = Segment::builder(name)
            .mode(mode)
            .lifetime(crate::segment::lifetime(lifetime)?);
        let s = match how {
            "create" => crate::wait::unlocked(py, || NamedSemaphore::create_with(b, value)),
            "open" => crate::wait::unlocked(py, || NamedSemaphore::open(name)),
            "open_or_create" => {
                crate::wait::unlocked(py, || NamedSemaphore::open_or_create_with(b, value))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "how must be create, open or open_or_create",
                ))
            }
        }
        .map_err(|e| errors::segment(py, e))?;
        Ok(PySemaphore {
            s,
            name: name.to_owned(),
        })
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The count now.
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<u32> {
        self.s.value().map_err(|c| errors::corrupt(py, c))
    }

    /// Takes one unit, waiting at most `timeout` seconds (`None`: for
    /// ever). `False` on timeout (`blocking=False`: a zero timeout), as
    /// `threading.Semaphore` does.
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let dl = deadline(if blocking { timeout } else { Some(0.0) })?;
        let s = &*self.s;
        match sliced(
            py,
            dl,
            |d| s.wait_timeout(d),
            |e| matches!(e, WaitError::Timeout),
        )? {
            Ok(()) => Ok(true),
            Err(WaitError::Timeout | WaitError::WouldBlock) => Ok(false),
            Err(e) => Err(errors::wait(py, e)),
        }
    }

    /// Same as `acquire(timeout=timeout)`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.acquire(py, true, timeout)
    }

    /// Adds `n` units, waking waiters.
    #[pyo3(signature = (n=1))]
    fn release(&self, py: Python<'_>, n: u32) -> PyResult<()> {
        self.s
            .post_n(n)
            .map_err(|e| errors::new(py, "Error", format!("semaphore {:?}: {e}", self.name)))
    }

    /// Same as `release(n)`.
    #[pyo3(signature = (n=1))]
    fn post(&self, py: Python<'_>, n: u32) -> PyResult<()> {
        self.release(py, n)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        self.acquire(py, true, None).map(|_| ())
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release(py, 1)?;
        Ok(false)
    }
}

/// An auto- or manual-reset event (a named segment of its own).
#[pyclass(module = "shmkit._shmkit", name = "Event", frozen)]
pub(crate) struct PyEvent {
    e: NamedEvent,
    name: String,
}

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (name, manual_reset=true, how="open_or_create", mode=0o600, lifetime="persistent"))]
    fn new(
        py: Python<'_>,
        name: &str,
        manual_reset: bool,
        how: &str,
        mode: u32,
        lifetime: &str,
    ) -> PyResult<PyEvent> {
        use shmkit::segment::Segment;
        let m = if manual_reset {
            EventMode::ManualReset
        } else {
            EventMode::AutoReset
        };
        let b = Segment::builder(name)
            .mode(mode)
            .lifetime(crate::segment::lifetime(lifetime)?);
        let e = match how {
            "create" => crate::wait::unlocked(py, || NamedEvent::create_with(b, m)),
            "open" => crate::wait::unlocked(py, || NamedEvent::open(name)),
            "open_or_create" => crate::wait::unlocked(py, || NamedEvent::open_or_create_with(b, m)),
            _ => {
                return Err(PyValueError::new_err(
                    "how must be create, open or open_or_create",
                ))
            }
        }
        .map_err(|e| errors::segment(py, e))?;
        Ok(PyEvent {
            e,
            name: name.to_owned(),
        })
    }

    /// The key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Sets the event (wakes one waiter if auto-reset, all if manual).
    fn set(&self, py: Python<'_>) -> PyResult<()> {
        self.e.set().map_err(|c| errors::corrupt(py, c))
    }

    /// Clears the event.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.e.reset().map_err(|c| errors::corrupt(py, c))
    }

    /// Whether the event is set.
    fn is_set(&self, py: Python<'_>) -> PyResult<bool> {
        self.e.is_set().map_err(|c| errors::corrupt(py, c))
    }

    /// Waits until set; `timeout` in seconds (`None`: for ever). Returns
    /// `True` when set, `False` on timeout (like `threading.Event`).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let dl = deadline(timeout)?;
        let e = &*self.e;
        match sliced(
            py,
            dl,
            |d| e.wait_timeout(d),
            |e| matches!(e, WaitError::Timeout),
        )? {
            Ok(()) => Ok(true),
            Err(WaitError::Timeout | WaitError::WouldBlock) => Ok(false),
            Err(e) => Err(errors::wait(py, e)),
        }
    }
}
