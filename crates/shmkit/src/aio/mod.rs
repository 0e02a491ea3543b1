//! Async waiting, runtime-agnostic (feature `async`).
//!
//! The futures returned by `recv_async`, `send_async`, `loan_async`,
//! `wait_async` and `lock_async` work with any executor: they never
//! busy-poll (one bounded spin per poll, by the endpoint's
//! `WaitStrategy`) and never block the polling thread. A pending future registers the
//! futex word it waits on with a per-process *waiter thread*, which blocks
//! in `futex_waitv` (Linux >= 5.16) on up to 127 such words plus a control
//! word of its own and wakes the `Waker`s of the words that change. More
//! distinct words spill to more threads (one per 127 words); futures
//! waiting on the same word share its slot. Without `futex_waitv` the
//! thread falls back to polling every armed future once per millisecond.
//!
//! An async waiter counts as a sleeper on the object it waits for, so the
//! waking side (which calls `FUTEX_WAKE` only when someone sleeps) always
//! wakes it; the handshake is in `park` and its loom model in
//! `loom_tests`. Peer death reaches async waiters through the same slices
//! as blocking ones: a pending future is polled again at least every
//! slice (20 ms for channels, 50 ms for semaphores and events) and checks.
//!
//! With the feature `tokio`, a future pending inside a tokio runtime
//! waits instead through io_uring `FUTEX_WAIT` on its runtime's ring,
//! which tokio's reactor polls: one thread wake per hand-off instead of
//! two (`uring`; loom model of its protocol in `loom_uring`). Outside
//! tokio, without IO in the runtime, on kernels without it (< 6.7) or
//! when switched off ([`set_uring`], `SHMKIT_AIO_URING=0`), the waiter
//! thread serves.
//!
//! Design, limits and measurements: `docs/async.md`.
//!
//! [`stats`] reports the waiter threads for monitoring and tests.

pub(crate) mod park;
pub(crate) mod reactor;
#[cfg(all(feature = "tokio", not(loom)))]
pub(crate) mod uring;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, loom))]
mod loom_uring;

/// `(waiter threads, futex words registered, waiter-thread passes)` of
/// this process: a snapshot for monitoring and tests. Passes count the
/// thread's loop iterations, so an idle process shows a constant value.
#[cfg(not(loom))]
pub fn stats() -> (usize, usize, u64) {
    reactor::Reactor::get().stats()
}

/// Whether this process's waiter threads poll (the fallback for kernels
/// without `futex_waitv`, or `SHMKIT_AIO_FALLBACK=1` at first use).
#[cfg(not(loom))]
pub fn is_fallback() -> bool {
    reactor::Reactor::get().is_fallback()
}

/// `(rings, registrations, waits in the kernel)` of the tokio fast path
/// (feature `tokio`) in this process: one ring per tokio runtime that has
/// had a pending future. For monitoring and tests.
#[cfg(all(feature = "tokio", not(loom)))]
pub fn uring_stats() -> (usize, usize, usize) {
    uring::stats()
}

/// Whether futures polled inside a tokio runtime wait through io_uring
/// (feature `tokio`; Linux >= 6.7, not switched off by
/// `SHMKIT_AIO_URING=0`, [`set_uring`] or a failed submission).
#[cfg(all(feature = "tokio", not(loom)))]
pub fn uses_uring() -> bool {
    uring::is_enabled()
}

/// Switches the tokio fast path (feature `tokio`) on or off for the
/// futures polled from now on; pending ones move at their next poll. On
/// by default where the kernel supports it; `SHMKIT_AIO_URING=0` in the
/// environment switches it off at start. Switching it on where the kernel
/// lacks io_uring `FUTEX_WAIT` changes nothing ([`uses_uring`] tells).
#[cfg(all(feature = "tokio", not(loom)))]
pub fn set_uring(on: bool) {
    uring::set_enabled(on)
}
