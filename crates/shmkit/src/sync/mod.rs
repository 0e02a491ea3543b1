//! Process-shared synchronisation primitives that live inside a segment.
//!
//! - [`Mutex<T>`]: a robust mutex (kernel-assisted owner-death detection)
//!   around a plain-old-data `T`.
//! - [`Semaphore`]: a counting semaphore on a futex.
//! - [`Event`]: auto-reset or manual-reset event on a futex.
//!
//! Each can be used two ways:
//!
//! - **named**, as a segment of its own ([`NamedMutex`], [`NamedSemaphore`],
//!   [`NamedEvent`]): created, opened or open-or-created by key, with the
//!   segment [`Kind`] and (for the mutex) the type fingerprint checked at
//!   open;
//! - **placed** inside a user's own `#[repr(C)]` layout in a segment:
//!   the creator calls `init_at` once (typically in
//!   [`SegmentBuilder::init`](crate::segment::SegmentBuilder::init), so
//!   nobody sees it half-initialised), everyone else `from_ptr`, which
//!   validates the object.
//!
//! ```no_run
//! use shmkit::sync::{LockError, NamedMutex};
//!
//! let m = NamedMutex::<u64>::open_or_create("counter", 0)?;
//! let mut guard = match m.lock() {
//!     Ok(g) => g,
//!     Err(LockError::OwnerDied(mut g)) => {
//!         // The previous holder died inside its critical section:
//!         // repair the data, then say so.
//!         *g = 0;
//!         g.mark_consistent();
//!         g
//!     }
//!     Err(e) => panic!("{e}"),
//! };
//! *guard += 1;
//! # Ok::<(), shmkit::segment::Error>(())
//! ```
//!
//! All waits loop on `EINTR` and spurious wake-ups and turn a timeout into
//! a deadline once, at the top. Every word read from shared memory is
//! validated: a damaged object gives [`Corrupt`], never undefined
//! behaviour. Design, orderings and measurements: `docs/sync.md`.

#[cfg(all(feature = "async", not(loom)))]
mod aio;
mod event;
#[cfg(not(loom))]
pub mod lease;
mod mutex;
#[cfg(not(loom))]
mod named;
mod semaphore;

use std::time::{Duration, Instant};

#[cfg(all(feature = "async", not(loom)))]
pub use aio::{EventWait, LockFuture, SemWait};
pub use event::{Event, EventMode};
pub use mutex::{LockError, Mutex, MutexGuard, MutexState};
#[cfg(not(loom))]
pub use named::{Named, NamedEvent, NamedMutex, NamedSemaphore};
pub use semaphore::{PostError, Semaphore, MAX_VALUE as SEM_VALUE_MAX};

#[cfg(not(loom))]
use crate::segment::{self, Kind, Segment};

/// A synchronisation object's shared state failed validation (bad magic,
/// impossible lock state or count). The object is unusable; nothing was
/// read or written out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {object}: {reason}")]
pub struct Corrupt {
    /// "mutex", "semaphore" or "event".
    pub object: &'static str,
    /// What check failed.
    pub reason: String,
}

impl Corrupt {
    pub(crate) fn new(object: &'static str, reason: impl Into<String>) -> Corrupt {
        Corrupt {
            object,
            reason: reason.into(),
        }
    }
}

/// Why a [`Semaphore`] or [`Event`] wait did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// `try_wait` only: not available right now.
    #[error("would block")]
    WouldBlock,
    /// `wait_timeout`/`wait_deadline` only: the deadline passed.
    #[error("timed out")]
    Timeout,
    /// The shared state is damaged.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Converts a timeout to a deadline once; `None` (wait forever) if it
/// overflows.
#[inline]
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Whether `p` can hold a `T` at all: not null and aligned for `T`. Every
/// `init_at`/`from_ptr` checks this before touching the place.
pub(crate) fn placeable<T>(p: *const T) -> bool {
    !p.is_null() && p.is_aligned()
}

/// The longest a semaphore or event waiter sleeps in the kernel before it
/// re-checks the shared state on its own. A wake-up can be lost for good
/// only through a crash (a poster killed between its count CAS and its
/// `FUTEX_WAKE`, or a waiter chosen by `FUTEX_WAKE` killed before it took
/// the unit): without a bound, the other sleepers would then sleep forever
/// although the count is positive. With it, they notice within one slice.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Whether the public waits sleep in [`SLICE`]s. Under loom they do not:
/// there an untimed futex wait really blocks (a lost wake-up shows up as a
/// deadlock, as it must), and the models of crash recovery ask for slices
/// explicitly.
pub(crate) const SLICED: bool = !cfg!(loom);

/// Why [`sleep`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, interrupted, the word differed, or a slice ended: re-check.
    Again,
    /// The caller's own deadline passed.
    Deadline,
}

/// One bounded futex sleep on `word` while it equals `expected`: until
/// woken, `deadline`, or (if `sliced`) the end of a [`SLICE`], whichever
/// comes first. The deadline stays exact: a slice that would end after it
/// is cut to it.
pub(crate) fn sleep(
    word: &crate::primitive::AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
    sliced: bool,
) -> Slept {
    use crate::sys::futex::{wait, WaitOutcome};
    let (until, is_deadline) = if sliced {
        match (deadline, Instant::now().checked_add(SLICE)) {
            (Some(d), Some(end)) if d <= end => (Some(d), true),
            (_, Some(end)) => (Some(end), false),
            (d, None) => (d, true),
        }
    } else {
        (deadline, true)
    };
    match wait(word, expected, until) {
        WaitOutcome::Woken => Slept::Again,
        WaitOutcome::TimedOut if is_deadline => Slept::Deadline,
        WaitOutcome::TimedOut => {
            // A slice ended. Under loom (where a timed wait may also time
            // out at once): let the other threads run before polling
            // again (bounds the model).
            crate::primitive::spin_hint();
            Slept::Again
        }
    }
}

/// The observable state of a synchronisation object, for `shmkit stat`
/// and `shmkit ls`. Read without taking any lock: a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A mutex segment.
    Mutex(MutexState),
    /// A semaphore segment.
    Semaphore {
        /// Current count.
        value: u32,
        /// Processes sleeping in (or about to enter) `wait`. A waiter
        /// killed while asleep stays counted: posts then make a futex
        /// call they did not need, nothing worse.
        sleepers: u32,
    },
    /// An event segment.
    Event {
        /// Auto- or manual-reset.
        mode: EventMode,
        /// Whether it is signalled.
        set: bool,
        /// Processes sleeping in `wait` (see the semaphore's note).
        sleepers: u32,
    },
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Mutex(m) => m.fmt(f),
            State::Semaphore { value, sleepers } => {
                write!(f, "value {value}, {sleepers} sleeping")
            }
            State::Event {
                mode,
                set,
                sleepers,
            } => write!(
                f,
                "{} {}, {sleepers} sleeping",
                mode.as_str(),
                if *set { "set" } else { "unset" }
            ),
        }
    }
}

/// Describes the state of the mutex, semaphore or event stored in `seg`
/// (any `T` for a mutex), without locking or changing anything.
#[cfg(not(loom))]
///
/// Errors: [`segment::Error::WrongKind`] for other kinds of segments,
/// [`segment::Error::Corrupt`] if the object fails validation.
pub fn describe(seg: &Segment) -> segment::Result<State> {
    const OP: &str = "describe";
    let corrupt = |e: Corrupt| segment::Error::corrupt(OP, seg.name(), e.to_string());
    match seg.kind() {
        Kind::Mutex => {
            let raw = named::view::<mutex::RawMutex>(OP, seg)?;
            raw.describe().map(State::Mutex).map_err(corrupt)
        }
        Kind::Semaphore => {
            let s = named::view::<Semaphore>(OP, seg)?;
            let (value, sleepers) = s.snapshot().map_err(corrupt)?;
            Ok(State::Semaphore { value, sleepers })
        }
        Kind::Event => {
            let e = named::view::<Event>(OP, seg)?;
            let (mode, set, sleepers) = e.snapshot().map_err(corrupt)?;
            Ok(State::Event {
                mode,
                set,
                sleepers,
            })
        }
        found => Err(segment::Error::WrongKind {
            op: OP,
            name: seg.name().to_owned(),
            expected: Kind::Mutex,
            found,
        }),
    }
}
