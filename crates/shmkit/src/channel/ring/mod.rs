//! Single-producer single-consumer ring between two processes.
//!
//! A ring is a segment of kind [`Kind::Ring`] holding `capacity` fixed
//! slots of up to `max_message` bytes each. One process sends, one
//! receives; either may start first, and each may be replaced after it
//! closes or dies.
//!
//! ```no_run
//! use shmkit::channel::ring::{Receiver, RingOptions, Sender};
//!
//! // Process A: create the ring and send.
//! let mut tx = Sender::create("frames", &RingOptions::new(64, 4096))?;
//! tx.send(b"hello")?;
//!
//! // Process B: receive (waits for a sender that has not started yet).
//! let mut rx = Receiver::open("frames")?;
//! let msg = rx.recv()?;
//! assert_eq!(msg, b"hello");
//! // Zero-copy: look at the message in place.
//! # let _ =
//! rx.try_recv_with(|bytes: &[u8]| bytes.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Algorithm
//!
//! `tail` (messages ever committed) is written only by the producer and
//! `head` (messages ever consumed) only by the consumer; both are `u64`
//! and never wrap in practice. Slot of message `i` is `i & (capacity-1)`.
//!
//! - The producer writes the payload and its length into the slot, then
//!   stores `tail + 1` with `Release`. The consumer loads `tail` with
//!   `Acquire` and so sees the whole message: a message is visible
//!   entirely or not at all, and a producer killed mid-write leaves an
//!   invisible slot.
//! - The consumer reads the slot, then stores `head + 1` with `Release`;
//!   the producer loads `head` with `Acquire` before it overwrites that
//!   slot, so it never writes a slot still being read.
//! - Each side keeps its own index locally (never re-read from shared
//!   memory) and a cached copy of the other's index, refreshed only when
//!   the cache says full (producer) or empty (consumer): the hot path
//!   touches the other side's cache line once per ring turn, not once per
//!   message.
//! - Every index read from shared memory is checked against the local one
//!   (`head <= tail <= head + capacity`) and every length against
//!   `max_message`: corruption gives [`SendError::Corrupt`] /
//!   [`RecvError::Corrupt`], never an access outside the ring.
//!
//! Zero-copy views ([`Sender::send_with`], [`Receiver::recv_with`]) point
//! into shared memory: use them with trusted peers only; with an
//! untrusted producer use [`Receiver::recv`] (a private copy) and validate
//! the copy (see "Trust" in [`super`]).
//!
//! Waiting and waking follow [`super::wait`]; liveness follows
//! [`super::peer`].

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::error::{OpenError, RecvError, SendError};
use super::peer::{self, PeerState};
use super::wait::{notify_armed, wait_loop_armed, wake, Wait, WaitStrategy};
use super::CachePadded;
use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use crate::segment::{self, Fingerprint, Kind, Lifetime, Segment};

#[cfg(all(feature = "async", not(loom)))]
mod aio;
mod batch;
mod receiver;
mod sender;
#[cfg(all(test, not(loom)))]
mod tests;
mod typed;

#[cfg(all(feature = "async", not(loom)))]
pub use aio::{RecvFuture, RecvStream, RecvWithFuture, SendFuture, SendSink};
pub use receiver::Receiver;
pub use sender::Sender;
pub use typed::{Pod, TypedReceiver, TypedSender};

/// Role number of the producer (its lock byte is `ROLE_BASE + 0`).
const PRODUCER: u64 = 0;
/// Role number of the consumer.
const CONSUMER: u64 = 1;

/// Largest capacity (slots) a ring may have.
pub const MAX_CAPACITY: u64 = 1 << 24;
/// Largest `max_message` (the length is stored as a `u32`).
pub const MAX_MESSAGE: u64 = 1 << 31;

/// Offset of the first slot in the data area: the control block fits in
/// the first page, and the slots start page aligned.
const DATA_OFF: u64 = 4096;
/// Layout version stored in params[3]; bump when the layout changes.
/// v2: slot stride is a multiple of [`CACHE_LINE`] (v1: of the prefix).
/// v3: the `armed` words (a v2 notifier would never acknowledge).
const LAYOUT_TAG: u64 = 0x5249_4e47_0003; // "RING" v3
/// Slot strides are multiples of this.
const CACHE_LINE: u64 = 64;

/// The shared control block at the start of a ring's data area.
///
/// All zero is the initial state (a fresh segment is zero-filled). Each
/// field sits on its own 128-byte line (adjacent-line prefetch pairs 64-byte
/// lines) so that the producer's and consumer's stores never share one.
#[repr(C)]
pub(crate) struct RingCore {
    /// Messages ever committed. Written only by the producer (`Release`
    /// after the slot is filled); read by the consumer (`Acquire`).
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Messages ever consumed. Written only by the consumer (`Release`
    /// after the slot is read); read by the producer (`Acquire`).
    pub(crate) head: CachePadded<AtomicU64>,
    /// Futex word the consumer sleeps on; bumped by the producer only
    /// when `cons_sleepers != 0`.
    pub(crate) data_seq: CachePadded<AtomicU32>,
    /// Futex word the producer sleeps on (ring full).
    pub(crate) space_seq: CachePadded<AtomicU32>,
    /// Consumers sleeping or about to (0 or 1). Written rarely, read by
    /// every `send`: its own line stays shared in both caches.
    pub(crate) cons_sleepers: CachePadded<AtomicU32>,
    /// Producers sleeping or about to (0 or 1).
    pub(crate) prod_sleepers: CachePadded<AtomicU32>,
    /// Producer role state ([`peer::NEVER`], `ATTACHED`, `CLOSED`).
    pub(crate) prod_state: CachePadded<AtomicU32>,
    /// Consumer role state.
    pub(crate) cons_state: CachePadded<AtomicU32>,
    /// Whether producers must run the sleeper protocol on `data_seq`
    /// ([`UNARMED`](super::wait::UNARMED), `ARMED`, `ACKED`; see
    /// "Arming" in [`super::wait`]). Raised by the consumer, acknowledged
    /// by the producer, never lowered; read by every `send`.
    pub(crate) data_armed: CachePadded<AtomicU32>,
    /// The same for consumers and `space_seq` (raised by the producer).
    pub(crate) space_armed: CachePadded<AtomicU32>,
}

impl RingCore {
    /// A fresh control block (heap copy, for model tests).
    #[allow(dead_code)]
    pub(crate) fn new() -> RingCore {
        RingCore {
            tail: CachePadded(AtomicU64::new(0)),
            head: CachePadded(AtomicU64::new(0)),
            data_seq: CachePadded(AtomicU32::new(0)),
            space_seq: CachePadded(AtomicU32::new(0)),
            cons_sleepers: CachePadded(AtomicU32::new(0)),
            prod_sleepers: CachePadded(AtomicU32::new(0)),
            prod_state: CachePadded(AtomicU32::new(0)),
            cons_state: CachePadded(AtomicU32::new(0)),
            data_armed: CachePadded(AtomicU32::new(0)),
            space_armed: CachePadded(AtomicU32::new(0)),
        }
    }
}

/// Why a cursor could not move.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stuck {
    /// Full (producer) or empty (consumer).
    Blocked,
    /// The other side's index is impossible.
    Corrupt(String),
}

/// The producer's private view: its own `tail` and a cached `head`
/// (`default()`: a fresh ring, for the models).
#[derive(Debug, Default)]
pub(crate) struct ProdCursor {
    pub(crate) tail: u64,
    pub(crate) head_cache: u64,
}

impl ProdCursor {
    /// The position to write next, if there is room.
    #[inline]
    pub(crate) fn try_reserve(&mut self, core: &RingCore, cap: u64) -> Result<u64, Stuck> {
        if self.tail - self.head_cache < cap {
            return Ok(self.tail);
        }
        self.refresh(core, cap)
    }

    #[cold]
    fn refresh(&mut self, core: &RingCore, cap: u64) -> Result<u64, Stuck> {
        // Acquire: pairs with the Release store of `head` in
        // `ConsCursor::release`: the consumer's reads of the slot we are
        // about to overwrite happen before our writes.
        let head = core.head.0.load(Ordering::Acquire);
        if head > self.tail || self.tail - head > cap {
            return Err(Stuck::Corrupt(format!(
                "ring head {head} outside [{}, {}]",
                self.tail.saturating_sub(cap),
                self.tail
            )));
        }
        self.head_cache = head;
        if self.tail - head < cap {
            Ok(self.tail)
        } else {
            Err(Stuck::Blocked)
        }
    }

    /// Publishes the reserved slot (after its bytes are written); `stamp`
    /// is that slot's stamp word.
    #[inline]
    pub(crate) fn commit(&mut self, core: &RingCore, stamp: &AtomicU64) {
        let t = self.stamp(stamp);
        // Release: as in `store_tail` (`t` is `self.tail`, passed on so
        // that it is not read back after the stamp store).
        core.tail.0.store(t, Ordering::Release);
    }

    /// Publishes the reserved slot to the consumer (which polls stamps)
    /// without storing the shared `tail`: a batch stores it once at its
    /// end ([`Self::store_tail`]). A producer killed in between leaves
    /// published messages past `tail`; `resume` on either side scans the
    /// stamps past `tail` to find them.
    #[inline]
    pub(crate) fn stamp(&mut self, stamp: &AtomicU64) -> u64 {
        let t = self.tail + 1;
        self.tail = t;
        // Release: the slot's payload and length, written before, are
        // visible to a consumer that loads this stamp with Acquire (in
        // `ConsCursor::try_peek`).
        stamp.store(t, Ordering::Release);
        t
    }

    /// Stores the shared `tail` after one or more [`Self::stamp`]s.
    #[inline]
    pub(crate) fn store_tail(&self, core: &RingCore) {
        // Release: for `len()`, `stat` and a later producer resuming here;
        // the consumer's hot path never reads it.
        core.tail.0.store(self.tail, Ordering::Release);
    }
}

/// Largest index accepted from shared memory at attach: far beyond any real
/// count, and far from `u64::MAX`, so `+ 1` never overflows afterwards.
pub(crate) const MAX_POSITION: u64 = 1 << 63;

impl ProdCursor {
    /// A producer taking the role over: resumes after the last message a
    /// previous producer published. One killed between storing slots'
    /// stamps and storing `tail` (inside a batch, or between the two stores
    /// of `commit`) left those messages published: `tail` is advanced past
    /// them. `stamp_of` gives the stamp word of a position.
    pub(crate) fn resume<'a>(
        core: &RingCore,
        cap: u64,
        stamp_of: impl Fn(u64) -> &'a AtomicU64,
    ) -> Result<ProdCursor, String> {
        // Acquire: we hold the role, so `tail` is ours from now on; the
        // previous producer's stores happen before (its lock release).
        let stored = core.tail.0.load(Ordering::Acquire);
        // Acquire: pairs with the consumer's Release store of `head`.
        let head = core.head.0.load(Ordering::Acquire);
        if stored > MAX_POSITION || head > MAX_POSITION {
            return Err(format!("head {head} or tail {stored} out of range"));
        }
        let tail = published_end(stored, cap, &stamp_of);
        if tail != stored {
            // Release: as in `ProdCursor::store_tail`.
            core.tail.0.store(tail, Ordering::Release);
        }
        if head > tail || tail - head > cap {
            return Err(format!("head {head} and tail {tail} are inconsistent"));
        }
        // Relaxed: we are the only producer; a count left by a killed one
        // would make every later `recv` pay a wake system call.
        core.prod_sleepers.0.store(0, Ordering::Relaxed);
        Ok(ProdCursor {
            tail,
            head_cache: head,
        })
    }
}

/// The end of the run of published messages that starts at `tail`: a
/// producer stores each slot's stamp before the shared `tail` (once per
/// batch), so up to `cap` messages past `tail` may be published. Bounded
/// by `cap` steps whatever the stamps say.
fn published_end<'a>(tail: u64, cap: u64, stamp_of: &impl Fn(u64) -> &'a AtomicU64) -> u64 {
    let mut end = tail;
    // Acquire: pairs with the stamp's Release store in `ProdCursor::stamp`:
    // the message's bytes are visible to whoever reads it next.
    while end - tail < cap && stamp_of(end).load(Ordering::Acquire) == end + 1 {
        end += 1;
    }
    end
}

/// The consumer's private view: its own `head`.
#[derive(Debug)]
pub(crate) struct ConsCursor {
    pub(crate) head: u64,
}

impl ConsCursor {
    /// A consumer taking the role over: resumes at `head`. The consumer
    /// polls stamps, not `tail`, so it may be past `tail` (a producer
    /// stores stamps before `tail`, or died between the two): accepted
    /// when those messages' stamps say they were published.
    pub(crate) fn resume<'a>(
        core: &RingCore,
        cap: u64,
        stamp_of: impl Fn(u64) -> &'a AtomicU64,
    ) -> Result<ConsCursor, String> {
        // Acquire: we hold the role, so `head` is ours from now on.
        let head = core.head.0.load(Ordering::Acquire);
        // Acquire: pairs with the producer's Release store of `tail`.
        let tail = core.tail.0.load(Ordering::Acquire);
        if tail > MAX_POSITION || head > MAX_POSITION {
            return Err(format!("head {head} or tail {tail} out of range"));
        }
        let ahead_ok = head > tail && head <= published_end(tail, cap, &stamp_of);
        if (head > tail && !ahead_ok) || tail.saturating_sub(head) > cap {
            return Err(format!("head {head} and tail {tail} are inconsistent"));
        }
        // Relaxed: we are the only consumer; a count left by a killed one
        // would make every later `send` pay a wake system call.
        core.cons_sleepers.0.store(0, Ordering::Relaxed);
        Ok(ConsCursor { head })
    }

    /// The position to read next, if its message is published. `stamp` is
    /// the stamp word of the slot of `self.head`.
    #[inline]
    pub(crate) fn try_peek(&mut self, cap: u64, stamp: &AtomicU64) -> Result<u64, Stuck> {
        let want = self.head + 1;
        // Acquire: pairs with the Release store of the stamp in
        // `ProdCursor::commit`: the message's bytes are visible.
        let s = stamp.load(Ordering::Acquire);
        if s == want {
            return Ok(self.head);
        }
        // Not yet: the slot still holds the previous lap's message, or
        // none yet (stamp 0, while `head < cap`, which is when `want -
        // cap` saturates to 0). Any other value is impossible.
        if s == want.saturating_sub(cap) {
            return Err(Stuck::Blocked);
        }
        Err(Self::corrupt(s, want, cap))
    }

    #[cold]
    fn corrupt(s: u64, want: u64, cap: u64) -> Stuck {
        Stuck::Corrupt(format!(
            "slot stamp {s} is neither {want} nor {}",
            want.saturating_sub(cap)
        ))
    }

    /// Frees the slot just read.
    #[inline]
    pub(crate) fn release(&mut self, core: &RingCore) {
        let h = self.head + 1;
        self.head = h;
        // Release: as in `store_head`.
        core.head.0.store(h, Ordering::Release);
    }

    /// Moves past the slot just read without freeing it yet: a batch frees
    /// all its slots with one [`Self::store_head`]. A consumer killed in
    /// between had not freed them, and its successor receives them again
    /// (at-least-once, as for a consumer killed inside `recv_with`).
    #[inline]
    pub(crate) fn advance(&mut self) {
        self.head += 1;
    }

    /// Frees every slot before `head`.
    #[inline]
    pub(crate) fn store_head(&self, core: &RingCore) {
        // Release: our reads of the slots happen before the producer's
        // next writes to them (pairs with the Acquire in `ProdCursor`).
        core.head.0.store(self.head, Ordering::Release);
    }
}

/// Validated geometry of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingLayout {
    pub(crate) cap: u64,
    pub(crate) max: u64,
    /// Bytes before the payload in a slot (the `u64` stamp and the `u32`
    /// length, padded to the payload's alignment).
    pub(crate) prefix: u64,
    pub(crate) stride: u64,
    pub(crate) total: u64,
}

impl RingLayout {
    fn new(capacity: u64, max: u64, align: u64) -> Result<RingLayout, String> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(format!("capacity {capacity} not in 1..={MAX_CAPACITY}"));
        }
        if max == 0 || max > MAX_MESSAGE {
            return Err(format!("max message {max} not in 1..={MAX_MESSAGE}"));
        }
        if !align.is_power_of_two() || align > 4096 {
            return Err(format!("alignment {align} is not a power of two <= 4096"));
        }
        let cap = capacity.next_power_of_two();
        let prefix = align.max(16);
        // Slots are whole cache lines (or whole multiples of the payload's
        // alignment, if larger): two slots never share a line, so the
        // producer filling slot `k + 1` never steals the line the consumer
        // is reading slot `k` from (false sharing halved the 8-byte
        // streaming rate with 32-byte slots).
        let stride = (prefix + max)
            .checked_next_multiple_of(prefix.max(CACHE_LINE))
            .ok_or("slot size overflows")?;
        let total = cap
            .checked_mul(stride)
            .and_then(|b| b.checked_add(DATA_OFF))
            .filter(|t| *t <= isize::MAX as u64 / 2)
            .ok_or_else(|| format!("{cap} slots of {stride} bytes are too large"))?;
        Ok(RingLayout {
            cap,
            max,
            prefix,
            stride,
            total,
        })
    }

    fn params(&self) -> [u64; 8] {
        [self.cap, self.max, self.prefix, LAYOUT_TAG, 0, 0, 0, 0]
    }

    /// Re-derives the layout from untrusted header params and checks it
    /// fits in the data area.
    fn from_params(p: &[u64; 8], data_len: usize) -> Result<RingLayout, String> {
        if p[3] != LAYOUT_TAG {
            return Err(format!("unknown ring layout tag {:#x}", p[3]));
        }
        if !p[0].is_power_of_two() {
            return Err(format!("capacity {} is not a power of two", p[0]));
        }
        let l = RingLayout::new(p[0], p[1], p[2])?;
        if l.prefix != p[2] {
            return Err(format!("slot prefix {} is invalid", p[2]));
        }
        if l.total > data_len as u64 {
            return Err(format!(
                "ring needs {} bytes, segment has {data_len}",
                l.total
            ));
        }
        Ok(l)
    }
}

/// Creation parameters of a ring.
#[derive(Debug, Clone)]
pub struct RingOptions {
    capacity: u64,
    max_message: u64,
    align: u64,
    fingerprint: Fingerprint,
    mode: u32,
    lifetime: Lifetime,
}

impl RingOptions {
    /// A byte ring of `capacity` messages (rounded up to a power of two)
    /// of at most `max_message` bytes each. Memory: `capacity` slots of
    /// `16 + max_message` bytes rounded up to a multiple of 64.
    pub fn new(capacity: u64, max_message: u64) -> RingOptions {
        RingOptions {
            capacity,
            max_message,
            align: 1,
            fingerprint: Fingerprint::BYTES,
            mode: 0o600,
            lifetime: Lifetime::Persistent,
        }
    }

    /// A ring of `capacity` values of `T` (see [`TypedSender`]).
    pub fn typed<T>(capacity: u64) -> RingOptions {
        RingOptions {
            max_message: std::mem::size_of::<T>().max(1) as u64,
            align: std::mem::align_of::<T>() as u64,
            fingerprint: Fingerprint::of::<T>(),
            ..RingOptions::new(capacity, 1)
        }
    }

    /// Permission bits of the segment (default `0o600`).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// When the segment is deleted (default [`Lifetime::Persistent`]).
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    fn create_typed<T>(&self, name: &str) -> Result<Segment, OpenError> {
        if self.fingerprint != Fingerprint::of::<T>() {
            return Err(OpenError::InvalidConfig {
                name: name.to_owned(),
                reason: format!(
                    "options are not for {} (use RingOptions::typed)",
                    std::any::type_name::<T>()
                ),
            });
        }
        self.create(name)
    }

    /// Creates the ring's segment and returns a handle to it (no role is
    /// taken). Dropping the handle of a persistent ring leaves it in place.
    pub fn create(&self, name: &str) -> Result<Segment, OpenError> {
        let layout =
            RingLayout::new(self.capacity, self.max_message, self.align).map_err(|reason| {
                OpenError::InvalidConfig {
                    name: name.to_owned(),
                    reason,
                }
            })?;
        Ok(Segment::builder(name)
            .size(layout.total)
            .kind(Kind::Ring)
            .fingerprint(self.fingerprint)
            .params(layout.params())
            .mode(self.mode)
            .lifetime(self.lifetime)
            // The zero-filled control block is the initial state.
            .init(|_| Ok(()))
            .create()?)
    }
}

/// A mapped ring: the segment and its validated layout.
#[derive(Debug)]
struct Shared {
    seg: Segment,
    layout: RingLayout,
    /// Slot 0, so that a slot's address is one multiply-add on the hot
    /// paths (not a walk through the segment's mapping each time).
    slots: SlotBase,
}

/// The address of slot 0 inside a [`Shared`]'s own mapping.
#[derive(Debug, Clone, Copy)]
struct SlotBase(*mut u8);

// SAFETY: a plain address into the mapping owned by the `Shared` that holds
// it (the mapping lives exactly as long); every access through it follows
// the ring protocol, which is built for concurrent processes and so also
// for threads.
unsafe impl Send for SlotBase {}
// SAFETY: as for `Send`: shared access goes through atomics or through the
// role that owns the slot.
unsafe impl Sync for SlotBase {}

impl Shared {
    fn open(name: &str, fingerprint: Fingerprint) -> Result<Shared, OpenError> {
        let seg = Segment::builder(name)
            .kind(Kind::Ring)
            .fingerprint(fingerprint)
            .open()?;
        Shared::from_segment(seg, fingerprint)
    }

    fn from_segment(seg: Segment, fingerprint: Fingerprint) -> Result<Shared, OpenError> {
        let op = "open ring";
        if seg.kind() != Kind::Ring {
            return Err(segment::Error::WrongKind {
                op,
                name: seg.name().to_owned(),
                expected: Kind::Ring,
                found: seg.kind(),
            }
            .into());
        }
        let h = seg.header();
        let found = h.fingerprint;
        if found != fingerprint {
            return Err(segment::Error::TypeMismatch {
                op,
                name: seg.name().to_owned(),
                expected: fingerprint.to_string(),
                found: found.to_string(),
            }
            .into());
        }
        if !seg.is_writable() {
            return Err(segment::Error::PermissionDenied {
                op,
                name: seg.name().to_owned(),
            }
            .into());
        }
        let layout = RingLayout::from_params(&h.params, seg.len())
            .map_err(|r| segment::Error::corrupt(op, seg.name(), r))?;
        // SAFETY: `DATA_OFF <= layout.total <= seg.len()` (checked in
        // `from_params`): in bounds of the mapping.
        let slots = SlotBase(unsafe { seg.as_ptr().add(DATA_OFF as usize) });
        Ok(Shared { seg, layout, slots })
    }

    #[inline]
    fn core(&self) -> &RingCore {
        const { assert!(std::mem::size_of::<RingCore>() <= DATA_OFF as usize || cfg!(loom)) };
        // SAFETY:
        // - the data area is page aligned and at least `layout.total >=
        //   DATA_OFF >= size_of::<RingCore>()` bytes (checked in
        //   `from_params`), so the cast is aligned and in bounds;
        // - `RingCore` is atomics only: every bit pattern is a valid value,
        //   and other processes only ever access it atomically;
        // - the reference lives no longer than `self.seg`'s mapping.
        unsafe { &*(self.seg.as_ptr() as *const RingCore) }
    }

    /// Start of the slot for message `pos`.
    #[inline]
    fn slot(&self, pos: u64) -> *mut u8 {
        let i = pos & (self.layout.cap - 1);
        // SAFETY: `i < cap`, so `DATA_OFF + i * stride + stride <= total <=
        // seg.len()` (checked in `from_params`), and `slots` is the mapping
        // plus `DATA_OFF`: in bounds of the mapping.
        unsafe { self.slots.0.add((i * self.layout.stride) as usize) }
    }

    /// The stamp word at the start of a slot: `i + 1` once message `i` is
    /// published in it.
    #[inline]
    fn stamp_word(&self, slot: *mut u8) -> &AtomicU64 {
        // SAFETY: `slot` comes from `Self::slot`: in bounds, and 16-aligned
        // (page-aligned data + DATA_OFF + i * stride, stride a multiple of
        // prefix >= 16); only ever accessed atomically; any value is valid.
        unsafe { &*(slot as *const AtomicU64) }
    }

    /// The stamp word of the slot of message `pos`.
    #[inline]
    fn stamp_of(&self, pos: u64) -> &AtomicU64 {
        self.stamp_word(self.slot(pos))
    }

    /// The length word after the stamp.
    #[inline]
    fn len_word(&self, slot: *mut u8) -> &AtomicU32 {
        // SAFETY: as in `stamp_word`; `slot + 8 + 4 <= slot + prefix`.
        unsafe { &*(slot.add(8) as *const AtomicU32) }
    }

    fn depth(&self) -> u64 {
        let core = self.core();
        // Relaxed: an informational snapshot.
        let tail = core.tail.0.load(Ordering::Relaxed);
        let head = core.head.0.load(Ordering::Relaxed);
        tail.saturating_sub(head).min(self.layout.cap)
    }
}

/// Facts about a ring for `shmkit stat`, read without taking a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStats {
    /// Messages waiting.
    pub depth: u64,
    /// Slots.
    pub capacity: u64,
    /// Largest message in bytes.
    pub max_message: u64,
    /// The producer's state.
    pub producer: PeerState,
    /// The consumer's state.
    pub consumer: PeerState,
}

/// Reads a ring's statistics through a handle that plays no role in it.
pub fn stats(seg: &Segment) -> Result<RingStats, segment::Error> {
    if seg.kind() != Kind::Ring {
        return Err(segment::Error::WrongKind {
            op: "stat",
            name: seg.name().to_owned(),
            expected: Kind::Ring,
            found: seg.kind(),
        });
    }
    let layout = RingLayout::from_params(&seg.header().params, seg.len())
        .map_err(|r| segment::Error::corrupt("stat", seg.name(), r))?;
    // A borrowed view: `Shared` owns its segment, so build the pieces here.
    // SAFETY: as in `Shared::core`: `layout.total <= seg.len()` was just
    // checked and the data area is page aligned.
    let core = unsafe { &*(seg.as_ptr() as *const RingCore) };
    // Relaxed: an informational snapshot.
    let tail = core.tail.0.load(Ordering::Relaxed);
    let head = core.head.0.load(Ordering::Relaxed);
    Ok(RingStats {
        depth: tail.saturating_sub(head).min(layout.cap),
        capacity: layout.cap,
        max_message: layout.max,
        producer: peer::status(seg.fd(), &core.prod_state.0, PRODUCER),
        consumer: peer::status(seg.fd(), &core.cons_state.0, CONSUMER),
    })
}
