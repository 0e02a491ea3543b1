//! The one place atomics come from.
//!
//! Every algorithm in `sync` and `channel` imports its atomics, fences and
//! spin hints from here, so that a `RUSTFLAGS="--cfg loom"` build swaps them
//! for loom's model-checked versions (the same trick as crossbeam-utils'
//! `primitive` module and tokio's `loom` module). Code that places these
//! types in shared memory only does so outside `cfg(loom)`: loom's atomics
//! carry model state and cannot live in a mapping, so model tests build the
//! same structures on the heap instead.

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// Busy-wait hint; under loom a yield so the model checker can schedule the
/// thread we are waiting for.
#[inline]
#[allow(dead_code)]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
