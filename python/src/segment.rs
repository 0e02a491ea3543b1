//! Segments: the native half of `shmkit.Segment` (whose Python class
//! subclasses `Buffer`) and the module-level segment functions.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shmkit::segment::{self, Lifetime, Segment};

use crate::buffer::{self, Inner, Shadow};
use crate::errors;

/// Parses a lifetime name as the CLI spells it.
pub(crate) fn lifetime(s: &str) -> PyResult<Lifetime> {
    match s {
        "persistent" => Ok(Lifetime::Persistent),
        "until-last-detach" | "until_last_detach" => Ok(Lifetime::UntilLastDetach),
        _ => Err(PyValueError::new_err(format!(
            "lifetime must be \"persistent\" or \"until-last-detach\", not {s:?}"
        ))),
    }
}

/// An attachment to a segment, plus the shadow mapping that its views use.
#[pyclass(module = "shmkit._shmkit", name = "SegmentHandle", frozen)]
pub(crate) struct SegmentHandle {
    seg: Mutex<Option<Segment>>,
    name: String,
    size: usize,
    writable: bool,
    created: bool,
    lifetime: &'static str,
    shadow: Arc<Shadow>,
}

impl SegmentHandle {
    fn new(seg: Segment) -> PyResult<SegmentHandle> {
        // SAFETY: the data area of a live segment mapping: page aligned
        // (after the 4096-byte header), `len()` bytes, MAP_SHARED.
        let shadow = unsafe { Shadow::new(seg.as_ptr(), seg.len())? };
        Ok(SegmentHandle {
            name: seg.name().to_owned(),
            size: seg.len(),
            writable: seg.is_writable(),
            created: seg.created(),
            lifetime: seg.lifetime().as_str(),
            shadow: Arc::new(shadow),
            seg: Mutex::new(Some(seg)),
        })
    }

    fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&Segment) -> R) -> PyResult<R> {
        let g = self.seg.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(s) => Ok(f(s)),
            None => Err(errors::new(
                py,
                "Closed",
                format!("segment {:?} is closed", self.name),
            )),
        }
    }
}

fn builder<'a>(
    name: &str,
    mode: u32,
    life: &str,
    read_only: bool,
) -> PyResult<segment::SegmentBuilder<'a>> {
    let mut b = Segment::builder(name).mode(mode).lifetime(lifetime(life)?);
    if read_only {
        b = b.read_only();
    }
    Ok(b)
}

/// Creates a segment of `size` bytes (`AlreadyExists` if the name is taken).
#[pyfunction]
#[pyo3(signature = (name, size, mode=0o600, lifetime="persistent"))]
pub(crate) fn segment_create(
    py: Python<'_>,
    name: &str,
    size: u64,
    mode: u32,
    lifetime: &str,
) -> PyResult<SegmentHandle> {
    let b = builder(name, mode, lifetime, false)?.size(size);
    let seg = crate::wait::unlocked(py, || b.create()).map_err(|e| errors::segment(py, e))?;
    SegmentHandle::new(seg)
}

/// Opens an existing segment.
#[pyfunction]
#[pyo3(signature = (name, read_only=false))]
pub(crate) fn segment_open(py: Python<'_>, name: &str, read_only: bool) -> PyResult<SegmentHandle> {
    let b = builder(name, 0o600, "persistent", read_only)?;
    let seg = crate::wait::unlocked(py, || b.open()).map_err(|e| errors::segment(py, e))?;
    SegmentHandle::new(seg)
}

/// Opens `name`, creating it with these parameters if it does not exist.
#[pyfunction]
#[pyo3(signature = (name, size, mode=0o600, lifetime="persistent"))]
pub(crate) fn segment_open_or_create(
    py: Python<'_>,
    name: &str,
    size: u64,
    mode: u32,
    lifetime: &str,
) -> PyResult<SegmentHandle> {
    let b = builder(name, mode, lifetime, false)?.size(size);
    let seg =
        crate::wait::unlocked(py, || b.open_or_create()).map_err(|e| errors::segment(py, e))?;
    SegmentHandle::new(seg)
}

#[pymethods]
impl SegmentHandle {
    /// The segment's key.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Size of the data area in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// Whether this handle may write.
    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }

    /// Whether this handle created the segment.
    #[getter]
    fn created(&self) -> bool {
        self.created
    }

    /// "persistent" or "until-last-detach".
    #[getter]
    fn lifetime(&self) -> &'static str {
        self.lifetime
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.seg.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Pids of every process attached now.
    fn attached_pids(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        self.with(py, |s| s.attached_pids())
    }

    /// Binds `obj` (an unbound `Buffer`) to this segment's data area.
    fn bind(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let keep: Arc<Shadow> = self.shadow.clone();
        buffer::bind(
            obj,
            Inner::new(keep.base(), self.size, self.writable, None, Box::new(keep)),
        )
    }

    /// Detaches (idempotent). The last detach of an until-last-detach
    /// segment deletes it.
    fn close(&self, py: Python<'_>) {
        let seg = self.seg.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(seg) = seg {
            crate::wait::unlocked(py, || drop(seg));
        }
    }
}

/// Deletes the segment `name` now (POSIX `shm_unlink`).
#[pyfunction]
pub(crate) fn remove(py: Python<'_>, name: &str) -> PyResult<()> {
    crate::wait::unlocked(py, || segment::remove(name)).map_err(|e| errors::segment(py, e))
}

/// Marks `name` for deletion by its last detach; `True` if it went now.
#[pyfunction]
pub(crate) fn remove_when_unused(py: Python<'_>, name: &str) -> PyResult<bool> {
    crate::wait::unlocked(py, || segment::remove_when_unused(name))
        .map_err(|e| errors::segment(py, e))
}

/// Every shmkit segment, as dicts (the fields of `shmkit ls --json`).
#[pyfunction]
pub(crate) fn list_segments(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let infos = crate::wait::unlocked(py, segment::list).map_err(|e| errors::segment(py, e))?;
    infos
        .into_iter()
        .map(|i| {
            let d = PyDict::new(py);
            d.set_item("name", &i.name)?;
            match &i.header {
                Ok(h) => {
                    d.set_item("kind", h.kind.as_str())?;
                    d.set_item("size", h.data_len)?;
                    d.set_item("lifetime", h.lifetime.as_str())?;
                    d.set_item("creator_pid", h.creator_pid)?;
                    d.set_item("error", py.None())?;
                }
                Err(e) => {
                    d.set_item("kind", py.None())?;
                    d.set_item("size", py.None())?;
                    d.set_item("lifetime", py.None())?;
                    d.set_item("creator_pid", py.None())?;
                    d.set_item("error", e)?;
                }
            }
            d.set_item("mode", i.mode)?;
            d.set_item("uid", i.uid)?;
            d.set_item("attached", i.attached)?;
            d.set_item("pids", &i.pids)?;
            d.set_item("marked_for_removal", i.marked)?;
            Ok(d)
        })
        .collect()
}
