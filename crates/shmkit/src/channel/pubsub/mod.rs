//! Publish/subscribe with zero-copy loans: one publisher, up to
//! [`MAX_SUBSCRIBERS`] subscribers that join and leave at any time.
//!
//! ```no_run
//! use shmkit::channel::pubsub::{Policy, PubSubOptions, Publisher, Subscriber};
//!
//! // Publisher process: 8 slots of 16 MiB, up to 4 subscribers.
//! let mut publisher = Publisher::create("cam", &PubSubOptions::new(8, 16 << 20, 4))?;
//! // Subscriber process:
//! let sub = Subscriber::open("cam")?;
//!
//! let mut loan = publisher.loan(1920 * 1080 * 4)?; // a slot, in place
//! loan.fill(0x80); // write the frame directly into shared memory
//! loan.publish();
//!
//! let frame = sub.recv()?; // a read-only view of the same memory
//! assert_eq!(frame.len(), 1920 * 1080 * 4);
//! println!("missed before this one: {}", frame.missed());
//! drop(frame); // the slot returns to the pool when every reader is done
//!
//! // With a publisher you do not trust: a private copy instead of a view.
//! let mut buf = Vec::new();
//! let missed = sub.recv_into(shmkit::channel::Wait::Forever, &mut buf)?;
//! # let _ = missed;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Zero-copy views need trusted peers
//!
//! [`Sample`], [`Loan`] and the typed views hand out `&[u8]` / `&T` that
//! point into shared memory. Bounds never depend on the peer (a hostile
//! segment yields `Corrupt` errors, never an out-of-bounds access), but
//! the *bytes* can: a process with write access to the segment can change
//! them while you look, and the compiler may read a byte twice where your
//! code reads it once (a check, then a use: time-of-check/time-of-use).
//! So use views only with peers you trust: by default the segment layer
//! refuses segments owned by another uid
//! ([`SegmentBuilder::allow_any_owner`](crate::segment::SegmentBuilder::allow_any_owner)
//! turns that off), and mode `0o600` keeps other users out. With an
//! untrusted publisher, use [`Subscriber::recv_into`] (one copy, each
//! byte read once) and validate the copy.
//!
//! # Algorithm
//!
//! Shared state: `slots` payload slots, each with a metadata line
//! (`refs`, `seq`, `len`); a queue of `Q >= slots` entries (a power of
//! two), each a slot number stamped with `position + 1`; the publication
//! counter `tail`; an `active` mask of joined subscriber numbers.
//!
//! `refs` (the ownership word of a slot) has two bits per subscriber `i`:
//! *pending* (bit `i`: addressed to `i`, not yet received) and *held*
//! (bit `32 + i`: `i` holds a [`Sample`] of it). A slot is free exactly
//! when `refs == 0`; only the publisher moves it away from 0.
//!
//! - **loan**: the publisher takes a slot with `refs == 0` (`Acquire`:
//!   every reader's last access happened before). Nothing in shared
//!   memory records the loan, so a publisher killed mid-loan leaves a free
//!   slot that was never visible.
//! - **publish** `pos`: store `seq = pos`, `len`, then `refs = active`'s
//!   pending bits (`Release`), then `queue[pos % Q] = (pos, slot)`
//!   (`Release`: this commits the publication), then `tail = pos + 1`
//!   (`Release`), then a `SeqCst` fence (the sleeper check, and the
//!   publisher's half of the join and leave Dekker pairs). A publisher
//!   killed between the entry and `tail` stores left `pos` visible: the
//!   next publisher moves `tail` past it before anything else.
//! - **receive** `pos`: load our next entry `queue[pos % Q]` (`Acquire`;
//!   while messages arrive, the only shared line read before the slot's).
//!   If it does not show `pos`, load `tail` (`SeqCst`): nothing new, or
//!   lapped (skip ahead, counting). Then, with the entry's slot
//!   (bounds-checked), CAS pending → held on our two bits of `refs`
//!   (`Acquire`). While we hold it the slot cannot be republished, so we
//!   then check `seq == pos`; if not, the queue entry was overwritten
//!   (drop-oldest lapped us), we flip held back to pending and count the
//!   message as missed.
//! - **release** (drop the sample): clear our held bit (`Release`); who
//!   brings `refs` to 0 wakes a publisher waiting for a slot.
//! - **back-pressure** ([`Policy::Block`]): a subscriber `Q` messages
//!   behind would need `Q >= slots` slots pending for it plus the loan,
//!   more than exist, so the publisher waits in `loan` first: the queue
//!   never overruns a subscriber.
//! - **drop-oldest** ([`Policy::DropOldest`]): with no free slot, the
//!   publisher takes the oldest slot that nobody *holds* by CAS-ing its
//!   pending-only `refs` to 0; the subscribers whose pending bits vanished
//!   count it as missed ([`Sample::missed`]). Never silent loss.
//! - **joining** subscriber `i`: take `i`'s role lock, set `active` bit
//!   `i`, read `tail` as the start (`SeqCst` on both, pairing with the
//!   publisher's `active` load and `tail` store): at most the one
//!   publication in flight at `join_pos` lacks our bit, and it is skipped
//!   silently (under drop-oldest a missing bit there is ambiguous, so it
//!   counts as missed: `missed` may over-count by one right after a join,
//!   never under-count). Stale bits left by a dead previous holder of `i` are
//!   cleared (held bits all, pending bits of publications before
//!   `join_pos`); each such slot is pinned first (our held bit, set by a
//!   CAS that checks our bit is still there), so it can be neither
//!   reclaimed nor republished while we read its `seq`.
//! - **dead or departed subscribers**: when `loan` finds no free slot,
//!   the publisher tries each active subscriber's role lock; one it can
//!   take belongs to nobody, so it clears that subscriber's bits in every
//!   slot and its `active` bit, then unlocks. A subscriber killed while
//!   holding samples thus gives them back.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::error::{OpenError, RecvError, SendError};
use super::peer::{self, PeerState};
use super::wait::{notify, wait_loop, wait_loop_marked, wake, Wait, WaitStrategy};
use super::CachePadded;
use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use crate::segment::{self, Fingerprint, Kind, Lifetime, Segment};
use crate::sys::ofd_lock;

/// Most subscribers a pub/sub channel can have (two bits each in `refs`).
pub const MAX_SUBSCRIBERS: u32 = 32;
/// Most slots.
pub const MAX_SLOTS: u64 = 1 << 16;
/// Largest slot size in bytes.
pub const MAX_SLOT_SIZE: u64 = 1 << 36;

const PUBLISHER: u64 = 0;
/// Largest position accepted from shared memory at attach: far beyond any
/// real count, and far enough from `u64::MAX` that `+ 1` never overflows.
const MAX_POSITION: u64 = 1 << 63;
const fn sub_role(i: usize) -> u64 {
    1 + i as u64
}
const LAYOUT_TAG: u64 = 0x5055_4253_0002; // "PUBS" v2: stamped queue entries
const SUBS_OFF: u64 = 1024;
const HELD_SHIFT: u32 = 32;
const HELD_MASK: u64 = !0u64 << HELD_SHIFT;

/// What the publisher does when a slow subscriber keeps every slot busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Back-pressure: `loan` waits (or fails with [`SendError::Full`]).
    Block,
    /// Reclaim the oldest slot nobody is reading; the subscribers that had
    /// not received it are told how many they missed.
    DropOldest,
}

impl Policy {
    /// Lower-case name, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropOldest => "drop-oldest",
        }
    }
}

#[cfg(all(feature = "async", not(loom)))]
mod aio;
mod membership;
mod pool;
mod publisher;
mod slots;
mod subscriber;
#[cfg(all(test, not(loom)))]
mod tests;
mod typed;

#[cfg(all(feature = "async", not(loom)))]
pub use aio::{LoanFuture, SampleStream, SubRecvFuture};
pub(crate) use pool::*;
use publisher::live_subscribers;
pub use publisher::{Loan, Publisher};
pub(crate) use slots::*;
pub use subscriber::{Sample, Subscriber};
pub use typed::{PodRef, TypedLoan, TypedPublisher, TypedSample, TypedSubscriber};

/// Validated geometry of a pub/sub segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PubSubLayout {
    slots: u64,
    slot_size: u64,
    max_subs: u64,
    policy: Policy,
    align: u64,
    q: u64,
    queue_off: u64,
    data_off: u64,
    /// Offset of the payload in a slot (after its `SlotMeta`).
    hdr: u64,
    stride: u64,
    total: u64,
}

fn round_up(x: u64, to: u64) -> Option<u64> {
    x.checked_next_multiple_of(to)
}

impl PubSubLayout {
    fn new(
        slots: u64,
        slot_size: u64,
        max_subs: u64,
        policy: Policy,
        align: u64,
    ) -> Result<PubSubLayout, String> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(format!("slots {slots} not in 1..={MAX_SLOTS}"));
        }
        if slot_size == 0 || slot_size > MAX_SLOT_SIZE {
            return Err(format!("slot size {slot_size} not in 1..={MAX_SLOT_SIZE}"));
        }
        if max_subs == 0 || max_subs > u64::from(MAX_SUBSCRIBERS) {
            return Err(format!(
                "max subscribers {max_subs} not in 1..={MAX_SUBSCRIBERS}"
            ));
        }
        if !align.is_power_of_two() || align > 4096 {
            return Err(format!("alignment {align} is not a power of two <= 4096"));
        }
        const { assert!(std::mem::size_of::<PubCore>() <= SUBS_OFF as usize || cfg!(loom)) };
        let q = slots.next_power_of_two();
        let queue_off = SUBS_OFF + max_subs * 128;
        let data_off = round_up(queue_off + q * 8, 4096).ok_or("overflow")?;
        // Each slot: its `SlotMeta`, then the payload, aligned; with
        // `align <= 32` the payload starts at 32, in the metadata's line.
        const { assert!(std::mem::size_of::<SlotMeta>() <= 32 || cfg!(loom)) };
        let hdr = align.max(32);
        let stride = round_up(hdr + slot_size, align.max(64)).ok_or("slot size overflows")?;
        let total = stride
            .checked_mul(slots)
            .and_then(|b| b.checked_add(data_off))
            .filter(|t| *t <= isize::MAX as u64 / 2)
            .ok_or_else(|| format!("{slots} slots of {stride} bytes are too large"))?;
        Ok(PubSubLayout {
            slots,
            slot_size,
            max_subs,
            policy,
            align,
            q,
            queue_off,
            data_off,
            hdr,
            stride,
            total,
        })
    }

    fn params(&self) -> [u64; 8] {
        let policy = match self.policy {
            Policy::Block => 0,
            Policy::DropOldest => 1,
        };
        [
            self.slots,
            self.slot_size,
            self.max_subs,
            policy,
            self.align,
            LAYOUT_TAG,
            0,
            0,
        ]
    }

    fn from_params(p: &[u64; 8], data_len: usize) -> Result<PubSubLayout, String> {
        if p[5] != LAYOUT_TAG {
            return Err(format!("unknown pub/sub layout tag {:#x}", p[5]));
        }
        let policy = match p[3] {
            0 => Policy::Block,
            1 => Policy::DropOldest,
            n => return Err(format!("unknown policy {n}")),
        };
        let l = PubSubLayout::new(p[0], p[1], p[2], policy, p[4])?;
        if l.total > data_len as u64 {
            return Err(format!(
                "pub/sub needs {} bytes, segment has {data_len}",
                l.total
            ));
        }
        Ok(l)
    }
}

/// Creation parameters of a pub/sub channel.
#[derive(Debug, Clone)]
pub struct PubSubOptions {
    slots: u64,
    slot_size: u64,
    max_subscribers: u32,
    policy: Policy,
    align: u64,
    fingerprint: Fingerprint,
    mode: u32,
    lifetime: Lifetime,
}

impl PubSubOptions {
    /// `slots` payload slots of `slot_size` bytes, up to `max_subscribers`
    /// (at most [`MAX_SUBSCRIBERS`]), [`Policy::Block`].
    pub fn new(slots: u64, slot_size: u64, max_subscribers: u32) -> PubSubOptions {
        PubSubOptions {
            slots,
            slot_size,
            max_subscribers,
            policy: Policy::Block,
            align: 1,
            fingerprint: Fingerprint::BYTES,
            mode: 0o600,
            lifetime: Lifetime::Persistent,
        }
    }

    /// Slots sized and aligned for one `T` each (for [`TypedPublisher`]).
    pub fn typed<T>(slots: u64, max_subscribers: u32) -> PubSubOptions {
        PubSubOptions {
            align: std::mem::align_of::<T>() as u64,
            fingerprint: Fingerprint::of::<T>(),
            ..PubSubOptions::new(
                slots,
                std::mem::size_of::<T>().max(1) as u64,
                max_subscribers,
            )
        }
    }

    /// What to do when a subscriber falls behind (default `Block`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
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

    /// Creates the segment (taking no role).
    pub fn create(&self, name: &str) -> Result<Segment, OpenError> {
        let l = PubSubLayout::new(
            self.slots,
            self.slot_size,
            u64::from(self.max_subscribers),
            self.policy,
            self.align,
        )
        .map_err(|reason| OpenError::InvalidConfig {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Segment::builder(name)
            .size(l.total)
            .kind(Kind::PubSub)
            .fingerprint(self.fingerprint)
            .params(l.params())
            .mode(self.mode)
            .lifetime(self.lifetime)
            .init(|_| Ok(()))
            .create()?)
    }
}

/// A mapped pub/sub segment with its validated layout, and the pool view
/// of it (computed once: every operation starts from it).
struct Shared {
    /// Borrows the mapping of `seg` (see `Shared::new`): declared first
    /// only for clarity, it has no drop glue.
    pool: Pool<'static>,
    seg: Segment,
    l: PubSubLayout,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("seg", &self.seg)
            .field("l", &self.l)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn open(name: &str, fp: Fingerprint) -> Result<Shared, OpenError> {
        let seg = Segment::builder(name)
            .kind(Kind::PubSub)
            .fingerprint(fp)
            .open()?;
        Shared::from_segment(seg, fp)
    }

    fn from_segment(seg: Segment, fp: Fingerprint) -> Result<Shared, OpenError> {
        let l = check_segment(&seg, "open pubsub")?;
        if seg.header().fingerprint != fp {
            return Err(segment::Error::TypeMismatch {
                op: "open pubsub",
                name: seg.name().to_owned(),
                expected: fp.to_string(),
                found: seg.header().fingerprint.to_string(),
            }
            .into());
        }
        if !seg.is_writable() {
            return Err(segment::Error::PermissionDenied {
                op: "open pubsub",
                name: seg.name().to_owned(),
            }
            .into());
        }
        Ok(Shared::new(seg, l))
    }

    fn new(seg: Segment, l: PubSubLayout) -> Shared {
        let pool = pool_of(&seg, &l);
        // SAFETY: only the lifetime changes. The references point into
        // the mapping of `seg`, which `Shared` owns for its whole life and
        // never remaps (a `Segment` unmaps only when dropped); moving
        // `seg` moves the handle, not the mapping. `Pool` has no drop
        // glue, and `pool()` hands the view out only for a borrow of
        // `self`, so no reference outlives the mapping.
        let pool = unsafe { std::mem::transmute::<Pool<'_>, Pool<'static>>(pool) };
        Shared { pool, seg, l }
    }

    /// The pool view, for as long as `self` is borrowed.
    #[inline]
    fn pool(&self) -> &Pool<'_> {
        &self.pool
    }

    /// For the typed endpoints: the (untrusted) layout must give every
    /// slot room and alignment for one `T`, or the typed views could not
    /// be made. An error here, never a panic in `deref`.
    fn typed<T>(self) -> Result<Shared, OpenError> {
        let (size, align) = (
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        );
        if self.l.slot_size < size
            || self.l.align < align
            || self.l.stride % align != 0
            || self.l.hdr % align != 0
        {
            return Err(segment::Error::corrupt(
                "open pubsub",
                self.seg.name(),
                format!(
                    "slots of {} bytes aligned to {} cannot hold a {} ({size} bytes, alignment {align})",
                    self.l.slot_size,
                    self.l.align,
                    std::any::type_name::<T>()
                ),
            )
            .into());
        }
        Ok(self)
    }

    /// Payload of `slot` (`< slots`, checked by the callers via `Pool`).
    #[inline]
    fn payload(&self, slot: usize) -> *mut u8 {
        assert!((slot as u64) < self.l.slots);
        // SAFETY: `slot < slots` and `hdr + slot_size <= stride`, so the
        // payload ends at or before `data_off + (slot + 1) * stride <=
        // total <= seg.len()` (checked by `from_params`): in bounds.
        unsafe {
            self.seg
                .as_ptr()
                .add((self.l.data_off + slot as u64 * self.l.stride + self.l.hdr) as usize)
        }
    }
}

fn check_segment(seg: &Segment, op: &'static str) -> Result<PubSubLayout, segment::Error> {
    if seg.kind() != Kind::PubSub {
        return Err(segment::Error::WrongKind {
            op,
            name: seg.name().to_owned(),
            expected: Kind::PubSub,
            found: seg.kind(),
        });
    }
    PubSubLayout::from_params(&seg.header().params, seg.len())
        .map_err(|r| segment::Error::corrupt(op, seg.name(), r))
}

fn pool_of<'a>(seg: &'a Segment, l: &PubSubLayout) -> Pool<'a> {
    let base = seg.as_ptr();
    // The line of each slot's payload worth a prefetch hint: the payload's
    // first when it has its own (`hdr >= 64`), else its second when it can
    // reach it (the first is the metadata's, fetched anyway), else none.
    let hint = if l.hdr >= 64 {
        Some(l.hdr)
    } else if l.slot_size > 64 - l.hdr {
        Some(64)
    } else {
        None
    };
    // SAFETY: (all four regions)
    // - the data area is page aligned and `l.total <= seg.len()` (checked
    //   by `from_params`); each region below lies inside it at an offset
    //   aligned for its type (SUBS_OFF and the 128-byte sub lines,
    //   queue_off a multiple of 128; the slots' metadata at `data_off`, a
    //   multiple of 4096, plus multiples of `stride`, itself a multiple
    //   of 64, and `slots * stride <= total - data_off`);
    // - the types are atomics only: any bit pattern is valid, and every
    //   process accesses them atomically;
    // - the references live no longer than the borrow of `seg`;
    // - the hint addresses are only used for prefetch hints (never
    //   dereferenced), and lie in the slots anyway.
    unsafe {
        let pool = Pool::new(
            &*(base as *const PubCore),
            std::slice::from_raw_parts(
                base.add(SUBS_OFF as usize) as *const SubShared,
                l.max_subs as usize,
            ),
            std::slice::from_raw_parts(
                base.add(l.queue_off as usize) as *const AtomicU64,
                l.q as usize,
            ),
            Metas::strided(
                base.add(l.data_off as usize),
                l.stride as usize,
                l.slots as usize,
            ),
            l.slot_size,
            l.policy,
        );
        match hint {
            Some(h) => pool.with_payloads(base.add((l.data_off + h) as usize), l.stride as usize),
            None => pool,
        }
    }
}

/// Facts about a pub/sub channel for `shmkit stat`, read without taking a
/// role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubStats {
    /// Largest number of unread messages of a live subscriber.
    pub depth: u64,
    /// Number of slots.
    pub slots: u64,
    /// Bytes per slot.
    pub slot_size: u64,
    /// Slots not free (loaned ones are counted as free: loans are private).
    pub slots_in_use: u64,
    /// Live subscribers.
    pub subscribers: u32,
    /// The maximum set at creation.
    pub max_subscribers: u32,
    /// Live subscribers with at least half the slots' worth unread.
    pub lagging: u32,
    /// The policy.
    pub policy: Policy,
    /// Publications so far.
    pub published: u64,
    /// The publisher's state.
    pub publisher: PeerState,
}

/// Reads a pub/sub channel's statistics.
pub fn stats(seg: &Segment) -> Result<PubSubStats, segment::Error> {
    let l = check_segment(seg, "stat")?;
    let pool = pool_of(seg, &l);
    // Relaxed: informational snapshots throughout.
    let tail = pool.core.tail.0.load(Ordering::Relaxed);
    let live = live_subscribers(seg, &l);
    let behind: Vec<u64> = live
        .iter()
        .map(|&i| {
            tail.saturating_sub(pool.subs[i].next.load(Ordering::Relaxed))
                .min(l.q)
        })
        .collect();
    let lag_limit = l.slots.div_ceil(2).max(1);
    Ok(PubSubStats {
        depth: behind.iter().copied().max().unwrap_or(0),
        slots: l.slots,
        slot_size: l.slot_size,
        slots_in_use: pool
            .meta
            .iter()
            .filter(|m| m.refs.load(Ordering::Relaxed) != 0)
            .count() as u64,
        subscribers: live.len() as u32,
        max_subscribers: l.max_subs as u32,
        lagging: behind.iter().filter(|&&b| b >= lag_limit).count() as u32,
        policy: l.policy,
        published: tail,
        publisher: peer::status(seg.fd(), &pool.core.pub_state.0, PUBLISHER),
    })
}
