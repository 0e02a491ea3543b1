//! Signal handling for long-running commands: SIGINT/SIGTERM set a flag so
//! the command can detach cleanly; SIGPIPE is restored to its default so
//! `shmkit read x | head` ends quietly like other Unix tools.
//!
//! The handler is installed without `SA_RESTART`: a blocking `read`,
//! `waitpid` or futex wait returns `EINTR`, and the command polls the flag.

use std::sync::atomic::{AtomicI32, Ordering};

/// The number of the first SIGINT/SIGTERM received, 0 if none.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    // Relaxed: a lone flag polled by the main loop; nothing else is
    // published with it. (Only async-signal-safe work here.) The first
    // signal is kept.
    let _ = STOP.compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM request a clean stop instead of killing us.
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_stop` is an `extern "C" fn(c_int)` that only does an
        // atomic compare-exchange, which is async-signal-safe; `sigaction`
        // is given a fully initialised struct (zeroed, then the handler
        // set; no SA_RESTART, see the module docs).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_stop_handler`].
pub fn stop_requested() -> bool {
    stop_signal().is_some()
}

/// The first of SIGINT/SIGTERM that arrived, if any.
pub fn stop_signal() -> Option<i32> {
    // Relaxed: see `on_stop`.
    match STOP.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Restores SIGPIPE's default action (terminate quietly).
pub fn default_sigpipe() {
    // SAFETY: setting a standard disposition for SIGPIPE before any thread
    // is started; SIG_DFL is always a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
