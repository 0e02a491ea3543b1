//! The SPSC ring of byte messages: one sender, one receiver.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Mutex, MutexGuard, TryLockError};

use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::Wait;

use crate::{call, clear, cstr, put, shmkit_status, wait_of, Error, Registry};

/// The sending end of a ring (opaque).
pub struct shmkit_ring_sender {
    _opaque: [u8; 0],
}

/// The receiving end of a ring (opaque).
pub struct shmkit_ring_receiver {
    _opaque: [u8; 0],
}

/// Called by shmkit_ring_recv_with with the message in place in shared
/// memory (`len` bytes at `data`, valid only during the call).
pub type shmkit_recv_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, data: *const u8, len: usize)>;

struct RecvState {
    rx: Receiver,
    /// A message taken from the ring that did not fit the caller's buffer:
    /// delivered first by the next receive.
    stash: Option<Vec<u8>>,
}

static SENDERS: Registry<Mutex<Sender>> = Registry::new("ring sender handle");
static RECEIVERS: Registry<Mutex<RecvState>> = Registry::new("ring receiver handle");

/// One call at a time per handle; a second, concurrent one is told so
/// instead of blocking behind a possibly endless wait.
pub(crate) fn exclusive<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Error> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        // The state is consistent between calls; a panic mid-call left
        // nothing half-done that a later call could trip on.
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Error::new(
            shmkit_status::SHMKIT_EBUSY,
            "the handle is in use by another call",
        )),
    }
}

/// Creates the ring `name` holding up to `capacity` messages (rounded up
/// to a power of two) of at most `max_message` bytes each, and takes the
/// sender role. SHMKIT_EINVAL if either is 0 or too large.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_sender_create(
    name: *const c_char,
    capacity: u64,
    max_message: u64,
    out: *mut *mut shmkit_ring_sender,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let tx = Sender::create(name, &RingOptions::new(capacity, max_message))?;
        // SAFETY: per the contract.
        unsafe { put("out", out, SENDERS.insert(Mutex::new(tx))) }
    })
}

/// Takes the sender role of the existing ring `name` (SHMKIT_EBUSY if a
/// live process has it).
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_sender_open(
    name: *const c_char,
    out: *mut *mut shmkit_ring_sender,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let tx = Sender::open(name)?;
        // SAFETY: per the contract.
        unsafe { put("out", out, SENDERS.insert(Mutex::new(tx))) }
    })
}

/// Creates the ring `name` (as shmkit_ring_sender_create) and takes the
/// receiver role.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_receiver_create(
    name: *const c_char,
    capacity: u64,
    max_message: u64,
    out: *mut *mut shmkit_ring_receiver,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let rx = Receiver::create(name, &RingOptions::new(capacity, max_message))?;
        let st = RecvState { rx, stash: None };
        // SAFETY: per the contract.
        unsafe { put("out", out, RECEIVERS.insert(Mutex::new(st))) }
    })
}

/// Takes the receiver role of the existing ring `name`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_receiver_open(
    name: *const c_char,
    out: *mut *mut shmkit_ring_receiver,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let rx = Receiver::open(name)?;
        let st = RecvState { rx, stash: None };
        // SAFETY: per the contract.
        unsafe { put("out", out, RECEIVERS.insert(Mutex::new(st))) }
    })
}

/// Borrows `len` bytes at `data` (NULL allowed when `len` is 0).
///
/// # Safety
///
/// `data` is NULL or valid for reads of `len` bytes.
unsafe fn bytes<'a>(data: *const c_void, len: usize) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Error::null("data"));
    }
    // SAFETY: non-NULL and readable for `len` bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts(data.cast(), len) })
}

/// # Safety
///
/// `data` is NULL or valid for reads of `len` bytes.
unsafe fn send(tx: *mut shmkit_ring_sender, data: *const c_void, len: usize, wait: Wait) -> c_int {
    call(|| {
        let s = SENDERS.get(tx)?;
        // SAFETY: per the contract.
        let msg = unsafe { bytes(data, len) }?;
        let mut tx = exclusive(&s)?;
        tx.send_wait(msg, wait)?;
        Ok(())
    })
}

/// Sends `len` bytes from `data`, waiting for room. SHMKIT_EMSGSIZE if
/// longer than the ring's maximum; SHMKIT_EDISCONNECTED if the receiver
/// closed or died.
///
/// # Safety
///
/// `data` is valid for reads of `len` bytes (may be NULL if `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_send(
    tx: *mut shmkit_ring_sender,
    data: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { send(tx, data, len, Wait::Forever) }
}

/// Sends if there is room now; SHMKIT_EAGAIN if the ring is full.
///
/// # Safety
///
/// As shmkit_ring_send.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_try_send(
    tx: *mut shmkit_ring_sender,
    data: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { send(tx, data, len, Wait::No) }
}

/// Sends, waiting at most `timeout_ns` nanoseconds for room
/// (SHMKIT_ETIMEDOUT).
///
/// # Safety
///
/// As shmkit_ring_send.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_send_timeout(
    tx: *mut shmkit_ring_sender,
    data: *const c_void,
    len: usize,
    timeout_ns: u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { send(tx, data, len, wait_of(timeout_ns)) }
}

/// Closes the sender: the receiver gets SHMKIT_EDISCONNECTED once it has
/// received every message sent.
#[no_mangle]
pub extern "C" fn shmkit_ring_sender_close(tx: *mut shmkit_ring_sender) -> c_int {
    call(|| SENDERS.remove(tx).map(drop))
}

/// Receives a message into `buf` (capacity `cap` bytes), waiting up to
/// `timeout_ns` (0: do not wait, SHMKIT_EAGAIN if empty; SHMKIT_FOREVER).
/// On success `*len` is the message length. If the message is longer than
/// `cap`, returns SHMKIT_EBUFFER with the needed length in `*len` and keeps
/// the message for the next call (pass `cap` 0 and `buf` NULL to ask for
/// the length). After the sender closed (or died) and every message was
/// received: SHMKIT_EDISCONNECTED (SHMKIT_EPEERDIED).
///
/// # Safety
///
/// `buf` is valid for writes of `cap` bytes (may be NULL if `cap` is 0);
/// `len` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_recv(
    rx: *mut shmkit_ring_receiver,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    timeout_ns: u64,
) -> c_int {
    call(|| {
        let r = RECEIVERS.get(rx)?;
        if len.is_null() {
            return Err(Error::null("len"));
        }
        if buf.is_null() && cap > 0 {
            return Err(Error::null("buf"));
        }
        let mut st = exclusive(&r)?;
        let copy = |m: &[u8]| -> Result<usize, Vec<u8>> {
            if m.len() > cap {
                return Err(m.to_vec());
            }
            if !m.is_empty() {
                // SAFETY: `buf` has room for `cap >= m.len()` bytes (the
                // contract) and is the caller's private memory, so it does
                // not overlap the ring.
                unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast(), m.len()) };
            }
            Ok(m.len())
        };
        let got = match st.stash.take() {
            Some(m) => copy(&m),
            None => st.rx.recv_with(wait_of(timeout_ns), copy)?,
        };
        match got {
            Ok(n) => {
                // SAFETY: `len` is non-NULL and writable (contract).
                unsafe { len.write(n) };
                Ok(())
            }
            Err(m) => {
                let need = m.len();
                st.stash = Some(m);
                // SAFETY: as above.
                unsafe { len.write(need) };
                Err(Error::new(
                    shmkit_status::SHMKIT_EBUFFER,
                    format!(
                        "the message is {need} bytes, the buffer {cap}; kept for the next call"
                    ),
                ))
            }
        }
    })
}

/// Zero-copy receive: waits up to `timeout_ns` for a message and calls
/// `cb(user, data, len)` with it in place in shared memory; the slot is
/// freed when `cb` returns. Do not keep `data`, and do not call into this
/// receiver from `cb` (SHMKIT_EBUSY). The bytes are shared with the
/// sender: only trust them as much as you trust it.
///
/// # Safety
///
/// `cb` is a valid function; `user` is whatever `cb` expects.
#[no_mangle]
pub unsafe extern "C" fn shmkit_ring_recv_with(
    rx: *mut shmkit_ring_receiver,
    timeout_ns: u64,
    cb: shmkit_recv_fn,
    user: *mut c_void,
) -> c_int {
    call(|| {
        let r = RECEIVERS.get(rx)?;
        let cb = cb.ok_or_else(|| Error::null("cb"))?;
        let mut st = exclusive(&r)?;
        let deliver = |m: &[u8]| {
            // SAFETY: `cb` is a valid function per the contract; the slice
            // is valid for the duration of the call.
            unsafe { cb(user, m.as_ptr(), m.len()) }
        };
        match st.stash.take() {
            Some(m) => deliver(&m),
            None => st.rx.recv_with(wait_of(timeout_ns), deliver)?,
        }
        Ok(())
    })
}

/// Closes the receiver: the sender then gets SHMKIT_EDISCONNECTED.
#[no_mangle]
pub extern "C" fn shmkit_ring_receiver_close(rx: *mut shmkit_ring_receiver) -> c_int {
    call(|| RECEIVERS.remove(rx).map(drop))
}
