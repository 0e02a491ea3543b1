//! Zero-copy publish/subscribe: one publisher loans a slot, fills it in
//! place and publishes it; each subscriber reads it in place and releases
//! it.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Mutex;

use shmkit::channel::pubsub::{Loan, PubSubOptions, Publisher, Sample, Subscriber};

use crate::ring::exclusive;
use crate::{call, clear, cstr, put, shmkit_status, wait_of, Error, Registry};

/// The publishing end of a pub/sub channel (opaque).
pub struct shmkit_publisher {
    _opaque: [u8; 0],
}

/// A subscriber of a pub/sub channel (opaque).
pub struct shmkit_subscriber {
    _opaque: [u8; 0],
}

/// A received message, read in place in shared memory: valid until
/// shmkit_sub_release(sub, &sample) or shmkit_sub_close.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmkit_sample {
    /// The message bytes (read-only; shared with the publisher).
    pub data: *const u8,
    /// Their number.
    pub len: usize,
    /// Messages this subscriber missed just before this one (drop-oldest
    /// channels; 0 otherwise).
    pub missed: u64,
    /// Identifies the sample to shmkit_sub_release.
    pub id: u64,
}

/// A publisher and its outstanding loan, which borrows it.
struct PubState {
    /// Borrows `*publisher` (dropped first, in `Drop`).
    loan: Option<Loan<'static>>,
    /// Owned (from `Box::into_raw`); freed in `Drop`. Only reached
    /// through `loan` while one exists.
    publisher: NonNull<Publisher>,
}

// SAFETY: the publisher and its loan move between threads together and are
// only used under the handle's `Mutex`, one thread at a time.
unsafe impl Send for PubState {}

impl Drop for PubState {
    fn drop(&mut self) {
        // An unpublished loan returns its slot; it must go before the
        // publisher it borrows.
        self.loan = None;
        // SAFETY: from `Box::into_raw` in `new`, freed only here, and no
        // borrow of it remains (`loan` is gone).
        drop(unsafe { Box::from_raw(self.publisher.as_ptr()) });
    }
}

impl PubState {
    fn new(p: Publisher) -> PubState {
        PubState {
            loan: None,
            publisher: NonNull::from(Box::leak(Box::new(p))),
        }
    }
}

/// A subscriber and the samples it handed out, which borrow it.
struct SubState {
    /// By id; each borrows `*sub` (all dropped first, in `Drop`).
    samples: BTreeMap<u64, Sample<'static>>,
    next: u64,
    /// Owned (from `Box::into_raw`); freed in `Drop`.
    sub: NonNull<Subscriber>,
}

// SAFETY: the subscriber (whose cursor is a `Cell`) and its samples move
// between threads together and are only used under the handle's `Mutex`,
// one thread at a time.
unsafe impl Send for SubState {}

impl Drop for SubState {
    fn drop(&mut self) {
        self.samples.clear();
        // SAFETY: from `Box::into_raw`, freed only here; no sample
        // borrows it any more.
        drop(unsafe { Box::from_raw(self.sub.as_ptr()) });
    }
}

static PUBLISHERS: Registry<Mutex<PubState>> = Registry::new("publisher handle");
static SUBSCRIBERS: Registry<Mutex<SubState>> = Registry::new("subscriber handle");

/// Creates the pub/sub channel `name` with `slots` slots of `slot_size`
/// bytes and room for `max_subscribers` subscribers (1 to 32), and takes
/// the publisher role. A publisher waits for a free slot when every slot
/// is held (blocking policy).
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_pub_create(
    name: *const c_char,
    slots: u64,
    slot_size: u64,
    max_subscribers: u32,
    out: *mut *mut shmkit_publisher,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let opts = PubSubOptions::new(slots, slot_size, max_subscribers);
        let p = Publisher::create(name, &opts)?;
        // SAFETY: per the contract.
        unsafe { put("out", out, PUBLISHERS.insert(Mutex::new(PubState::new(p)))) }
    })
}

/// Takes the publisher role of the existing channel `name`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_pub_open(
    name: *const c_char,
    out: *mut *mut shmkit_publisher,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let p = Publisher::open(name)?;
        // SAFETY: per the contract.
        unsafe { put("out", out, PUBLISHERS.insert(Mutex::new(PubState::new(p)))) }
    })
}

/// Loans a free slot for a message of `len` bytes (at most the slot
/// size), waiting up to `timeout_ns` for one; `*data` points to it. Fill
/// it, then shmkit_pub_publish. One loan at a time (SHMKIT_EBUSY).
///
/// # Safety
///
/// `data` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_pub_loan(
    p: *mut shmkit_publisher,
    len: usize,
    timeout_ns: u64,
    data: *mut *mut c_void,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(data) };
        let h = PUBLISHERS.get(p)?;
        if data.is_null() {
            return Err(Error::null("data"));
        }
        let mut st = exclusive(&h)?;
        if st.loan.is_some() {
            return Err(Error::new(
                shmkit_status::SHMKIT_EBUSY,
                "a loan is outstanding: publish it first",
            ));
        }
        // SAFETY: `publisher` is live (owned by `st`) and not borrowed (no
        // loan); the loan's `'static` is bounded by `PubState::drop`,
        // which drops it before freeing the publisher.
        let publisher: &'static mut Publisher = unsafe { &mut *st.publisher.as_ptr() };
        let mut loan = publisher.loan_wait(len, wait_of(timeout_ns))?;
        let ptr = loan.as_mut_ptr();
        st.loan = Some(loan);
        // SAFETY: per the contract.
        unsafe { put("data", data, ptr.cast()) }
    })
}

/// Publishes the loaned slot with its first `len` bytes (no more than
/// loaned) to every subscriber joined now. SHMKIT_EINVAL without a loan.
#[no_mangle]
pub extern "C" fn shmkit_pub_publish(p: *mut shmkit_publisher, len: usize) -> c_int {
    call(|| {
        let h = PUBLISHERS.get(p)?;
        let mut st = exclusive(&h)?;
        let Some(mut loan) = st.loan.take() else {
            return Err(Error::new(
                shmkit_status::SHMKIT_EINVAL,
                "no loan to publish (call shmkit_pub_loan first)",
            ));
        };
        if len > loan.len() {
            let had = loan.len();
            st.loan = Some(loan);
            return Err(Error::new(
                shmkit_status::SHMKIT_EINVAL,
                format!("publish of {len} bytes from a loan of {had}"),
            ));
        }
        loan.truncate(len);
        loan.publish();
        Ok(())
    })
}

/// Closes the publisher (an unpublished loan is returned): subscribers get
/// SHMKIT_EDISCONNECTED after the messages already published.
#[no_mangle]
pub extern "C" fn shmkit_pub_close(p: *mut shmkit_publisher) -> c_int {
    call(|| PUBLISHERS.remove(p).map(drop))
}

/// Joins the pub/sub channel `name` as a new subscriber (SHMKIT_EBUSY if
/// every subscriber place is taken). It receives what is published from
/// now on.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sub_open(
    name: *const c_char,
    out: *mut *mut shmkit_subscriber,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        unsafe { clear(out) };
        // SAFETY: per the contract.
        let name = unsafe { cstr("name", name) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let s = Subscriber::open(name)?;
        let st = SubState {
            samples: BTreeMap::new(),
            next: 1,
            sub: NonNull::from(Box::leak(Box::new(s))),
        };
        // SAFETY: per the contract.
        unsafe { put("out", out, SUBSCRIBERS.insert(Mutex::new(st))) }
    })
}

/// Receives the next message, waiting up to `timeout_ns`, into `*sample`
/// (zero-copy: `sample->data` points into the publisher's slot). Release
/// it with shmkit_sub_release when done; a subscriber may hold several.
/// SHMKIT_EDISCONNECTED / SHMKIT_EPEERDIED once the publisher closed /
/// died and everything it published was received.
///
/// # Safety
///
/// `sample` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sub_recv(
    s: *mut shmkit_subscriber,
    timeout_ns: u64,
    sample: *mut shmkit_sample,
) -> c_int {
    call(|| {
        let h = SUBSCRIBERS.get(s)?;
        if sample.is_null() {
            return Err(Error::null("sample"));
        }
        let mut st = exclusive(&h)?;
        // SAFETY: `sub` is live (owned by `st`); samples borrow it shared,
        // and `SubState::drop` drops them all before freeing it.
        let sub: &'static Subscriber = unsafe { &*st.sub.as_ptr() };
        let got = sub.recv_wait(wait_of(timeout_ns))?;
        let id = st.next;
        st.next += 1;
        let out = shmkit_sample {
            data: got.as_ptr(),
            len: got.len(),
            missed: got.missed(),
            id,
        };
        st.samples.insert(id, got);
        // SAFETY: per the contract.
        unsafe { put("sample", sample, out) }
    })
}

/// Gives back a sample from shmkit_sub_recv; its data is invalid
/// afterwards. SHMKIT_EINVAL if it is not outstanding on this subscriber.
///
/// # Safety
///
/// `sample` is valid for a read.
#[no_mangle]
pub unsafe extern "C" fn shmkit_sub_release(
    s: *mut shmkit_subscriber,
    sample: *const shmkit_sample,
) -> c_int {
    call(|| {
        let h = SUBSCRIBERS.get(s)?;
        if sample.is_null() {
            return Err(Error::null("sample"));
        }
        // SAFETY: non-NULL and readable per the contract.
        let id = unsafe { (*sample).id };
        let mut st = exclusive(&h)?;
        match st.samples.remove(&id) {
            Some(_) => Ok(()),
            None => Err(Error::new(
                shmkit_status::SHMKIT_EINVAL,
                format!("sample {id} is not outstanding on this subscriber"),
            )),
        }
    })
}

/// Leaves the channel, releasing every sample still held.
#[no_mangle]
pub extern "C" fn shmkit_sub_close(s: *mut shmkit_subscriber) -> c_int {
    call(|| SUBSCRIBERS.remove(s).map(drop))
}
