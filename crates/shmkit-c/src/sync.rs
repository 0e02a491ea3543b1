//! Robust mutex, semaphore and event, each a named segment of its own
//! (the same objects as Rust's `NamedMutex<()>`, `NamedSemaphore`,
//! `NamedEvent`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

use shmkit::sync::{EventMode, LockError, MutexGuard, NamedEvent, NamedMutex, NamedSemaphore};

use crate::{call, clear, cstr, put, shmkit_status, Error, Registry, SHMKIT_FOREVER};

/// A robust, process-shared mutex (opaque).
pub struct shmkit_mutex {
    _opaque: [u8; 0],
}

/// A process-shared counting semaphore (opaque).
pub struct shmkit_sem {
    _opaque: [u8; 0],
}

/// A process-shared event (opaque).
pub struct shmkit_event {
    _opaque: [u8; 0],
}

/// How an event resets.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum shmkit_event_mode {
    /// Each set releases one waiter, then the event is unset again.
    SHMKIT_AUTO_RESET = 0,
    /// A set releases all waiters until shmkit_event_reset.
    SHMKIT_MANUAL_RESET = 1,
}

static MUTEXES: Registry<NamedMutex<()>> = Registry::new("mutex handle");
static SEMS: Registry<NamedSemaphore> = Registry::new("semaphore handle");
static EVENTS: Registry<NamedEvent> = Registry::new("event handle");

/// A lock this thread holds: the guard, and the mutex it borrows from
/// (kept alive, and mapped, until the unlock).
struct Held {
    /// Borrows `*_keep` (the `'static` is a lie that `_keep` makes true:
    /// the guard is dropped, in `unlock`, before `_keep`).
    guard: ManuallyDrop<MutexGuard<'static, ()>>,
    _keep: ManuallyDrop<Arc<NamedMutex<()>>>,
}

impl Drop for Held {
    /// Runs only at thread exit with the lock still held (an explicit
    /// unlock takes the guard out first). Do what a dying pthread owner
    /// does: keep the lock held and the mapping alive (both leaked), so
    /// the kernel's robust-list walk marks the owner dead and the next
    /// locker gets SHMKIT_EOWNERDEAD rather than a lock freed behind a
    /// half-done critical section.
    fn drop(&mut self) {}
}

thread_local! {
    /// The locks this thread holds, by handle number.
    static HELD: RefCell<BTreeMap<usize, Held>> = const { RefCell::new(BTreeMap::new()) };
}

fn mode_of(v: c_int) -> Result<EventMode, Error> {
    match v {
        0 => Ok(EventMode::AutoReset),
        1 => Ok(EventMode::ManualReset),
        v => Err(Error::new(
            shmkit_status::SHMKIT_EINVAL,
            format!("event mode {v}: expected SHMKIT_AUTO_RESET or SHMKIT_MANUAL_RESET"),
        )),
    }
}

fn duration(ns: u64) -> Option<Duration> {
    (ns != SHMKIT_FOREVER).then(|| Duration::from_nanos(ns))
}

/// Shared body of the constructors: clear `out`, read `name`, make the
/// object, register it.
///
/// # Safety
///
/// `name` is NULL or NUL-terminated; `out` is NULL or writable.
unsafe fn make<T, H>(
    reg: &'static Registry<T>,
    name: *const c_char,
    out: *mut *mut H,
    f: impl FnOnce(&str) -> Result<T, Error>,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let obj = f(name)?;
        // SAFETY: per the contract.
        unsafe { put("out", out, reg.insert(obj)) }
    })
}

/// Creates the mutex `name` (a segment of its own, mode 0600).
/// SHMKIT_EEXIST if the name is taken.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_mutex_create(
    name: *const c_char,
    out: *mut *mut shmkit_mutex,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { make(&MUTEXES, name, out, |n| Ok(NamedMutex::create(n, ())?)) }
}

/// Opens the existing mutex `name` (also one created by Rust with any
/// protected type).
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_mutex_open(
    name: *const c_char,
    out: *mut *mut shmkit_mutex,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { make(&MUTEXES, name, out, |n| Ok(NamedMutex::open_untyped(n)?)) }
}

/// Opens the mutex `name`, creating it if needed (race-free).
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_mutex_open_or_create(
    name: *const c_char,
    out: *mut *mut shmkit_mutex,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        make(&MUTEXES, name, out, |n| {
            Ok(NamedMutex::open_or_create(n, ())?)
        })
    }
}

/// The locking calls: `how` is try (0), a timeout, or forever.
fn lock(m: *const shmkit_mutex, how: Option<Option<Duration>>) -> c_int {
    call(|| {
        let obj = MUTEXES.get(m)?;
        let key = m as usize;
        if HELD.with(|h| h.borrow().contains_key(&key)) {
            return Err(Error::new(
                shmkit_status::SHMKIT_EDEADLK,
                "this thread already holds the lock",
            ));
        }
        // SAFETY: the guard borrows the mutex inside `obj`'s mapping,
        // which `Held::_keep` (a clone of `obj`) keeps alive and mapped
        // until the guard is dropped in `unlock` (or leaked at thread
        // exit): the `'static` lifetime is never outlived.
        let mutex: &'static NamedMutex<()> = unsafe { &*Arc::as_ptr(&obj) };
        let r = match how {
            None => mutex.try_lock(),
            Some(None) => mutex.lock(),
            Some(Some(t)) => mutex.lock_timeout(t),
        };
        let (guard, err) = match r {
            Ok(g) => (g, None),
            Err(LockError::OwnerDied(g)) => {
                let e = Error::from(&LockError::<()>::OwnerDied(()));
                (g, Some(e))
            }
            Err(e) => return Err(Error::from(&e)),
        };
        let held = Held {
            guard: ManuallyDrop::new(guard),
            _keep: ManuallyDrop::new(obj),
        };
        HELD.with(|h| h.borrow_mut().insert(key, held));
        err.map_or(Ok(()), Err)
    })
}

/// Locks the mutex, waiting as long as it takes. Returns 0, or
/// SHMKIT_EOWNERDEAD: the lock is yours but its previous holder died in
/// its critical section; repair the data, call shmkit_mutex_consistent,
/// then unlock (unlocking without it makes the mutex
/// SHMKIT_ENOTRECOVERABLE for everyone). SHMKIT_EDEADLK if this thread
/// holds it already.
#[no_mangle]
pub extern "C" fn shmkit_mutex_lock(m: *mut shmkit_mutex) -> c_int {
    lock(m, Some(None))
}

/// Like shmkit_mutex_lock, but SHMKIT_EAGAIN at once if another thread
/// holds the lock.
#[no_mangle]
pub extern "C" fn shmkit_mutex_trylock(m: *mut shmkit_mutex) -> c_int {
    lock(m, None)
}

/// Like shmkit_mutex_lock, giving up with SHMKIT_ETIMEDOUT after
/// `timeout_ns` nanoseconds (SHMKIT_FOREVER: never).
#[no_mangle]
pub extern "C" fn shmkit_mutex_timedlock(m: *mut shmkit_mutex, timeout_ns: u64) -> c_int {
    lock(m, Some(duration(timeout_ns)))
}

/// After SHMKIT_EOWNERDEAD: declares the protected data repaired, so later
/// lockers get the mutex normally. SHMKIT_EPERM if this thread does not
/// hold the lock; a no-op on a normally taken lock.
#[no_mangle]
pub extern "C" fn shmkit_mutex_consistent(m: *mut shmkit_mutex) -> c_int {
    call(|| {
        // The lock this thread holds is found even if another thread closed
        // the handle meanwhile: it can still be repaired and released.
        let done = HELD.with(|h| {
            h.borrow_mut()
                .get_mut(&(m as usize))
                .map(|held| held.guard.mark_consistent())
        });
        match done {
            Some(()) => Ok(()),
            None => {
                MUTEXES.get(m)?;
                Err(not_held())
            }
        }
    })
}

fn not_held() -> Error {
    Error::new(
        shmkit_status::SHMKIT_EPERM,
        "this thread does not hold the lock",
    )
}

/// Unlocks. SHMKIT_EPERM if this thread does not hold the lock.
#[no_mangle]
pub extern "C" fn shmkit_mutex_unlock(m: *mut shmkit_mutex) -> c_int {
    call(|| match unlock_held(m as usize) {
        Some(()) => Ok(()),
        None => {
            MUTEXES.get(m)?;
            Err(not_held())
        }
    })
}

/// Unlocks handle `key` if this thread holds it.
fn unlock_held(key: usize) -> Option<()> {
    let mut held = HELD.with(|h| h.borrow_mut().remove(&key))?;
    // SAFETY: each field is dropped exactly once, the guard (which
    // borrows the mutex) before the Arc that keeps the mutex alive; `held`
    // itself then drops as a no-op.
    unsafe {
        ManuallyDrop::drop(&mut held.guard);
        ManuallyDrop::drop(&mut held._keep);
    }
    Some(())
}

/// Closes the handle (unlocking first if this thread holds the lock). A
/// thread of yours that holds the lock through this handle can still
/// unlock it (and mark it consistent) with the closed handle.
#[no_mangle]
pub extern "C" fn shmkit_mutex_close(m: *mut shmkit_mutex) -> c_int {
    call(|| {
        MUTEXES.remove(m)?;
        unlock_held(m as usize);
        Ok(())
    })
}

/// Creates the semaphore `name` with count `value`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sem_create(
    name: *const c_char,
    value: u32,
    out: *mut *mut shmkit_sem,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { make(&SEMS, name, out, |n| Ok(NamedSemaphore::create(n, value)?)) }
}

/// Opens the existing semaphore `name`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sem_open(name: *const c_char, out: *mut *mut shmkit_sem) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { make(&SEMS, name, out, |n| Ok(NamedSemaphore::open(n)?)) }
}

/// Opens the semaphore `name`, creating it with count `value` if needed.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sem_open_or_create(
    name: *const c_char,
    value: u32,
    out: *mut *mut shmkit_sem,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        make(&SEMS, name, out, |n| {
            Ok(NamedSemaphore::open_or_create(n, value)?)
        })
    }
}

/// Adds one to the count, waking a waiter. SHMKIT_EOVERFLOW at the
/// maximum count.
#[no_mangle]
pub extern "C" fn shmkit_sem_post(s: *mut shmkit_sem) -> c_int {
    call(|| Ok(SEMS.get(s)?.post()?))
}

/// Takes one from the count, waiting while it is zero.
#[no_mangle]
pub extern "C" fn shmkit_sem_wait(s: *mut shmkit_sem) -> c_int {
    call(|| Ok(SEMS.get(s)?.wait()?))
}

/// Takes one if the count is positive; SHMKIT_EAGAIN if it is zero.
#[no_mangle]
pub extern "C" fn shmkit_sem_trywait(s: *mut shmkit_sem) -> c_int {
    call(|| Ok(SEMS.get(s)?.try_wait()?))
}

/// Like shmkit_sem_wait, giving up with SHMKIT_ETIMEDOUT after
/// `timeout_ns` nanoseconds.
#[no_mangle]
pub extern "C" fn shmkit_sem_timedwait(s: *mut shmkit_sem, timeout_ns: u64) -> c_int {
    call(|| {
        let sem = SEMS.get(s)?;
        match duration(timeout_ns) {
            Some(t) => sem.wait_timeout(t)?,
            None => sem.wait()?,
        }
        Ok(())
    })
}

/// Stores the current count in `*value` (a snapshot).
///
/// # Safety
///
/// `value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sem_value(s: *mut shmkit_sem, value: *mut u32) -> c_int {
    call(|| {
        let v = SEMS.get(s)?.value()?;
        // SAFETY: per the contract.
        unsafe { put("value", value, v) }
    })
}

/// Closes the handle.
#[no_mangle]
pub extern "C" fn shmkit_sem_close(s: *mut shmkit_sem) -> c_int {
    call(|| SEMS.remove(s).map(drop))
}

/// Creates the event `name` with `mode` (a shmkit_event_mode), unset.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_event_create(
    name: *const c_char,
    mode: c_int,
    out: *mut *mut shmkit_event,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        make(&EVENTS, name, out, |n| {
            Ok(NamedEvent::create(n, mode_of(mode)?)?)
        })
    }
}

/// Opens the existing event `name`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_event_open(
    name: *const c_char,
    out: *mut *mut shmkit_event,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { make(&EVENTS, name, out, |n| Ok(NamedEvent::open(n)?)) }
}

/// Opens the event `name`, creating it with `mode` if needed.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_event_open_or_create(
    name: *const c_char,
    mode: c_int,
    out: *mut *mut shmkit_event,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        make(&EVENTS, name, out, |n| {
            Ok(NamedEvent::open_or_create(n, mode_of(mode)?)?)
        })
    }
}

/// Sets the event: releases one waiter (auto-reset) or all waiters until
/// reset (manual-reset).
#[no_mangle]
pub extern "C" fn shmkit_event_set(e: *mut shmkit_event) -> c_int {
    call(|| Ok(EVENTS.get(e)?.set()?))
}

/// Unsets the event.
#[no_mangle]
pub extern "C" fn shmkit_event_reset(e: *mut shmkit_event) -> c_int {
    call(|| Ok(EVENTS.get(e)?.reset()?))
}

/// Waits until the event is set (consuming the set of an auto-reset
/// event).
#[no_mangle]
pub extern "C" fn shmkit_event_wait(e: *mut shmkit_event) -> c_int {
    call(|| Ok(EVENTS.get(e)?.wait()?))
}

/// Like shmkit_event_wait, giving up with SHMKIT_ETIMEDOUT after
/// `timeout_ns` nanoseconds; 0 only checks (SHMKIT_EAGAIN if unset).
#[no_mangle]
pub extern "C" fn shmkit_event_timedwait(e: *mut shmkit_event, timeout_ns: u64) -> c_int {
    call(|| {
        let ev = EVENTS.get(e)?;
        match duration(timeout_ns) {
            Some(Duration::ZERO) => ev.try_wait()?,
            Some(t) => ev.wait_timeout(t)?,
            None => ev.wait()?,
        }
        Ok(())
    })
}

/// Closes the handle.
#[no_mangle]
pub extern "C" fn shmkit_event_close(e: *mut shmkit_event) -> c_int {
    call(|| EVENTS.remove(e).map(drop))
}
