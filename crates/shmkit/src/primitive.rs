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

/// The clock the channel wait loops read (slices and deadlines).
///
/// Outside loom, `Instant::now()`. Under loom a model clock: each call
/// advances the calling thread's time by [`MODEL_TICK`], so slices end and
/// deadlines pass after a fixed number of loop iterations, the same in
/// every execution (loom replays schedules and needs determinism; real
/// time would differ from one execution to the next).
#[cfg(not(loom))]
#[inline]
#[allow(dead_code)]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Model time one [`now`] call takes under loom.
#[cfg(loom)]
pub(crate) const MODEL_TICK: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(loom)]
loom::lazy_static! {
    static ref MODEL_EPOCH: std::time::Instant = std::time::Instant::now();
}

#[cfg(loom)]
loom::thread_local! {
    static MODEL_TICKS: core::cell::Cell<u32> = core::cell::Cell::new(0);
}

/// See the non-loom `now`.
#[cfg(loom)]
pub(crate) fn now() -> std::time::Instant {
    let t = MODEL_TICKS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    *MODEL_EPOCH + MODEL_TICK * t
}
