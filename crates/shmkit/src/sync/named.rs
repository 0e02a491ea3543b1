//! Named objects: a primitive alone in a segment of its own kind.
//!
//! The object sits at offset 0 of the data area (page aligned, so any
//! alignment up to 4096 holds). `params[0]` records the layout version and
//! `params[1]` the object size (the others must be 0); all are checked at
//! open together with the
//! segment kind, the type fingerprint, the data size and the object's own
//! magic word, so a segment made by something else is an error, not a
//! reinterpretation.

use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;

use super::{Corrupt, Event, EventMode, Mutex, Semaphore};
use crate::segment::{self, Fingerprint, Kind, Segment, SegmentBuilder};

/// Version of the object layouts below; bump on any change.
pub(crate) const LAYOUT_VERSION: u64 = 1;

/// A primitive in a segment of its own, opened by name. Derefs to the
/// primitive. Dropping it detaches from the segment.
pub struct Named<O> {
    /// Keeps the mapping alive for as long as `obj` is used.
    seg: Segment,
    /// Points into `seg`'s mapping at offset 0; validated at open.
    obj: NonNull<O>,
    _own: PhantomData<O>,
}

/// A [`Mutex<T>`] in a segment of kind [`Kind::Mutex`].
pub type NamedMutex<T> = Named<Mutex<T>>;
/// A [`Semaphore`] in a segment of kind [`Kind::Semaphore`].
pub type NamedSemaphore = Named<Semaphore>;
/// An [`Event`] in a segment of kind [`Kind::Event`].
pub type NamedEvent = Named<Event>;

// SAFETY: `Named<O>` is a shared reference to an `O` plus a segment
// handle (which is Send + Sync): sharing or sending it is sharing `&O`.
unsafe impl<O: Sync> Send for Named<O> {}
// SAFETY: as above.
unsafe impl<O: Sync> Sync for Named<O> {}

impl<O> Deref for Named<O> {
    type Target = O;
    #[inline]
    fn deref(&self) -> &O {
        // SAFETY: `obj` points into the mapping owned by `self.seg`, which
        // lives as long as `self`; it was validated at open/create and
        // `O` is only ever accessed through `&O` (interior mutability via
        // atomics and the lock).
        unsafe { self.obj.as_ref() }
    }
}

impl<O> std::fmt::Debug for Named<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named")
            .field("name", &self.seg.name())
            .field("kind", &self.seg.kind())
            .finish_non_exhaustive()
    }
}

impl<O> Named<O> {
    /// The underlying segment (name, header, attached pids, detach).
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Create,
    Open,
    OpenOrCreate,
}

/// Checks the header params and size of `seg` for an object `O` at
/// offset 0 and returns a pointer to it (not yet validated itself).
/// `exact`: the recorded object size must be `size_of::<O>()`; otherwise
/// `O` is a prefix of the stored object (the untyped mutex header).
fn locate<O>(op: &'static str, seg: &Segment, exact: bool) -> segment::Result<NonNull<O>> {
    let h = seg.header();
    let size = std::mem::size_of::<O>() as u64;
    if h.params[0] != LAYOUT_VERSION {
        return Err(segment::Error::corrupt(
            op,
            seg.name(),
            format!(
                "sync layout version {} (expected {LAYOUT_VERSION})",
                h.params[0]
            ),
        ));
    }
    if h.params[2..].iter().any(|&p| p != 0) {
        return Err(segment::Error::corrupt(
            op,
            seg.name(),
            format!("unexpected sync params {:?}", &h.params[2..]),
        ));
    }
    let size_ok = if exact {
        h.params[1] == size
    } else {
        h.params[1] >= size
    };
    if !size_ok || (seg.len() as u64) < h.params[1] {
        return Err(segment::Error::corrupt(
            op,
            seg.name(),
            format!(
                "object size {} in a {}-byte data area (expected {size})",
                h.params[1],
                seg.len()
            ),
        ));
    }
    let p = seg.as_ptr();
    if (p as usize) % std::mem::align_of::<O>() != 0 {
        return Err(segment::Error::corrupt(
            op,
            seg.name(),
            "misaligned data area",
        ));
    }
    NonNull::new(p.cast::<O>()).ok_or_else(|| segment::Error::corrupt(op, seg.name(), "null"))
}

/// A validated shared view of the object in `seg` (for `describe`).
pub(crate) fn view<'a, O: Placed>(op: &'static str, seg: &'a Segment) -> segment::Result<&'a O> {
    let p = locate::<O>(op, seg, false)?;
    // SAFETY: `locate` checked size and alignment; the mapping lives as
    // long as `seg`; `O: Placed` may be viewed over arbitrary bytes as
    // long as `validate` runs before any other use (it only does atomic
    // loads).
    let obj = unsafe { p.as_ref() };
    obj.validate()
        .map_err(|e| segment::Error::corrupt(op, seg.name(), e.to_string()))?;
    Ok(obj)
}

/// An object that can live at offset 0 of its own segment.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]`, made only of atomics, `UnsafeCell`s
/// and plain data for which every bit pattern is valid, so that forming
/// `&Self` over any initialised bytes is sound; `validate` must only read.
pub(crate) unsafe trait Placed: Sync {
    const KIND: Kind;
    fn validate(&self) -> Result<(), Corrupt>;
}

/// `fingerprint: None`: open only, no type check, `O` a prefix of the
/// stored object (see [`Named::<Mutex<()>>::open_untyped`]).
fn attach<'a, O: Placed>(
    op: &'static str,
    builder: SegmentBuilder<'a>,
    fingerprint: Option<Fingerprint>,
    mode: Mode,
    init: impl FnOnce(*mut O) -> Result<(), String> + 'a,
) -> segment::Result<Named<O>> {
    let mut params = [0u64; 8];
    params[0] = LAYOUT_VERSION;
    params[1] = std::mem::size_of::<O>() as u64;
    let exact = fingerprint.is_some();
    let mut builder = builder
        .kind(O::KIND)
        .params(params)
        .size(std::mem::size_of::<O>() as u64);
    if let Some(fp) = fingerprint {
        builder = builder.fingerprint(fp);
    }
    let seg = match mode {
        Mode::Open => builder.open()?,
        Mode::Create | Mode::OpenOrCreate => {
            let b = builder.init(move |data: &mut [u8]| {
                // The data area is page aligned and at least
                // size_of::<O>() (we asked for exactly that).
                init(data.as_mut_ptr().cast::<O>()).map_err(|reason| {
                    segment::Error::InvalidArgument {
                        op,
                        name: String::new(),
                        reason,
                    }
                })
            });
            if matches!(mode, Mode::Create) {
                b.create()?
            } else {
                b.open_or_create()?
            }
        }
    };
    if !seg.is_writable() {
        // Locking, posting and waiting all write the object: a read-only
        // mapping would fault. (`describe` reads through `view` instead.)
        return Err(segment::Error::PermissionDenied {
            op,
            name: seg.name().to_owned(),
        });
    }
    let obj = locate::<O>(op, &seg, exact)?;
    // SAFETY: located in our live mapping (size and alignment checked).
    let r = unsafe { obj.as_ref() };
    r.validate()
        .map_err(|e| segment::Error::corrupt(op, seg.name(), e.to_string()))?;
    Ok(Named {
        seg,
        obj,
        _own: PhantomData,
    })
}

impl<T: zerocopy::FromBytes + Send> Named<Mutex<T>> {
    /// Creates a new mutex segment holding `value`; `AlreadyExists` if
    /// the name is taken.
    pub fn create(name: &str, value: T) -> segment::Result<Self> {
        Self::create_with(Segment::builder(name), value)
    }

    /// Opens an existing mutex segment; `TypeMismatch` if it was created
    /// for another `T`, `WrongKind` if it is not a mutex.
    pub fn open(name: &str) -> segment::Result<Self> {
        Self::open_with(Segment::builder(name))
    }

    /// Opens the mutex, creating it with `value` if it does not exist
    /// (exactly one process creates).
    pub fn open_or_create(name: &str, value: T) -> segment::Result<Self> {
        Self::open_or_create_with(Segment::builder(name), value)
    }

    /// [`create`](Self::create) with a builder carrying mode and lifetime
    /// (kind, fingerprint, size, params and init are set here).
    pub fn create_with(builder: SegmentBuilder<'_>, value: T) -> segment::Result<Self> {
        attach(
            "create",
            builder,
            Some(Fingerprint::of::<T>()),
            Mode::Create,
            |p| {
                // SAFETY: `p` is the start of a fresh, exclusive, page-aligned
                // data area of size_of::<Mutex<T>>() bytes (see `attach`).
                unsafe { Mutex::init_at(p, value) }.map_err(|e| e.to_string())
            },
        )
    }

    /// [`open`](Self::open) with a builder (e.g. `read_only` is not
    /// useful for a mutex; `open_timeout` is).
    pub fn open_with(builder: SegmentBuilder<'_>) -> segment::Result<Self> {
        attach(
            "open",
            builder,
            Some(Fingerprint::of::<T>()),
            Mode::Open,
            |_| Ok(()),
        )
    }

    /// [`open_or_create`](Self::open_or_create) with a builder.
    pub fn open_or_create_with(builder: SegmentBuilder<'_>, value: T) -> segment::Result<Self> {
        attach(
            "open_or_create",
            builder,
            Some(Fingerprint::of::<T>()),
            Mode::OpenOrCreate,
            |p| {
                // SAFETY: as in `create_with`.
                unsafe { Mutex::init_at(p, value) }.map_err(|e| e.to_string())
            },
        )
    }
}

impl Named<Mutex<()>> {
    /// Opens any mutex segment, whatever its `T`, to use it as a bare lock
    /// (as `shmkit lock` does). The data is not accessible this way.
    pub fn open_untyped(name: &str) -> segment::Result<Self> {
        attach("open", Segment::builder(name), None, Mode::Open, |_| Ok(()))
    }
}

fn sem_fp() -> Fingerprint {
    Fingerprint::named::<Semaphore>("shmkit::sync::Semaphore/1")
}

fn event_fp() -> Fingerprint {
    Fingerprint::named::<Event>("shmkit::sync::Event/1")
}

impl Named<Semaphore> {
    /// Creates a semaphore segment with initial count `value`.
    pub fn create(name: &str, value: u32) -> segment::Result<Self> {
        Self::create_with(Segment::builder(name), value)
    }

    /// Opens an existing semaphore segment.
    pub fn open(name: &str) -> segment::Result<Self> {
        Self::open_with(Segment::builder(name))
    }

    /// Opens the semaphore, creating it with `value` if needed.
    pub fn open_or_create(name: &str, value: u32) -> segment::Result<Self> {
        Self::open_or_create_with(Segment::builder(name), value)
    }

    /// [`create`](Self::create) with a builder carrying mode and lifetime.
    pub fn create_with(builder: SegmentBuilder<'_>, value: u32) -> segment::Result<Self> {
        attach("create", builder, Some(sem_fp()), Mode::Create, |p| {
            // SAFETY: fresh, exclusive, aligned data area (see `attach`).
            unsafe { Semaphore::init_at(p, value) }.map_err(|e| e.to_string())
        })
    }

    /// [`open`](Self::open) with a builder.
    pub fn open_with(builder: SegmentBuilder<'_>) -> segment::Result<Self> {
        attach("open", builder, Some(sem_fp()), Mode::Open, |_| Ok(()))
    }

    /// [`open_or_create`](Self::open_or_create) with a builder.
    pub fn open_or_create_with(builder: SegmentBuilder<'_>, value: u32) -> segment::Result<Self> {
        attach(
            "open_or_create",
            builder,
            Some(sem_fp()),
            Mode::OpenOrCreate,
            |p| {
                // SAFETY: fresh, exclusive, aligned data area (see `attach`).
                unsafe { Semaphore::init_at(p, value) }.map_err(|e| e.to_string())
            },
        )
    }
}

impl Named<Event> {
    /// Creates an event segment, initially unset.
    pub fn create(name: &str, mode: EventMode) -> segment::Result<Self> {
        Self::create_with(Segment::builder(name), mode)
    }

    /// Opens an existing event segment.
    pub fn open(name: &str) -> segment::Result<Self> {
        Self::open_with(Segment::builder(name))
    }

    /// Opens the event, creating it (unset) if needed.
    pub fn open_or_create(name: &str, mode: EventMode) -> segment::Result<Self> {
        Self::open_or_create_with(Segment::builder(name), mode)
    }

    /// [`create`](Self::create) with a builder carrying mode and lifetime.
    pub fn create_with(builder: SegmentBuilder<'_>, mode: EventMode) -> segment::Result<Self> {
        attach("create", builder, Some(event_fp()), Mode::Create, |p| {
            // SAFETY: fresh, exclusive, aligned data area (see `attach`).
            unsafe { Event::init_at(p, mode) }.map_err(|e| e.to_string())
        })
    }

    /// [`open`](Self::open) with a builder.
    pub fn open_with(builder: SegmentBuilder<'_>) -> segment::Result<Self> {
        attach("open", builder, Some(event_fp()), Mode::Open, |_| Ok(()))
    }

    /// [`open_or_create`](Self::open_or_create) with a builder.
    pub fn open_or_create_with(
        builder: SegmentBuilder<'_>,
        mode: EventMode,
    ) -> segment::Result<Self> {
        attach(
            "open_or_create",
            builder,
            Some(event_fp()),
            Mode::OpenOrCreate,
            |p| {
                // SAFETY: fresh, exclusive, aligned data area (see `attach`).
                unsafe { Event::init_at(p, mode) }.map_err(|e| e.to_string())
            },
        )
    }
}
