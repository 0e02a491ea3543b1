//! Signal handling for long-running commands: SIGINT/SIGTERM set a flag so
//! the command can detach cleanly; SIGPIPE is restored to its default so
//! `shmkit read x | head` ends quietly like other Unix tools.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    // Relaxed: a lone flag polled by the main loop; nothing else is
    // published with it. (Only async-signal-safe work here.)
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM request a clean stop instead of killing us.
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_stop` is an `extern "C" fn(c_int)` that only stores to
        // an atomic, which is async-signal-safe; `sigaction` is given a
        // fully initialised struct (zeroed, then the handler set).
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
    // Relaxed: see `on_stop`.
    STOP.load(Ordering::Relaxed)
}

/// Restores SIGPIPE's default action (terminate quietly).
pub fn default_sigpipe() {
    // SAFETY: setting a standard disposition for SIGPIPE before any thread
    // is started; SIG_DFL is always a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
