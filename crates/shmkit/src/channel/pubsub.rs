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
//! (`refs`, `seq`, `len`); a queue of `Q >= slots` slot numbers (a power
//! of two); the publication counter `tail`; an `active` mask of joined
//! subscriber numbers.
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
//!   pending bits (`Release`), then `queue[pos % Q] = slot`, then `tail =
//!   pos + 1` (`SeqCst`).
//! - **receive** `pos`: load `tail` (`SeqCst`), read `queue[pos % Q]`
//!   (bounds-checked), then CAS pending → held on our two bits of `refs`
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
//!   `join_pos`; a slot with our bit cannot be republished, so its `seq`
//!   is stable while we look).
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
use super::wait::{notify, wait_loop, wake, Wait, WaitStrategy};
use super::CachePadded;
use crate::primitive::{fence, spin_hint, AtomicU32, AtomicU64, Ordering};
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
const LAYOUT_TAG: u64 = 0x5055_4253_0001; // "PUBS" v1
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

/// The publisher's control block. All zero is the initial state.
#[repr(C)]
pub(crate) struct PubCore {
    /// Publications ever. Written only by the publisher (`SeqCst`, after
    /// the queue entry); read by subscribers.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Futex word subscribers sleep on; bumped only if `sub_sleepers > 0`.
    pub(crate) data_seq: CachePadded<AtomicU32>,
    /// Subscribers sleeping or about to.
    pub(crate) sub_sleepers: CachePadded<AtomicU32>,
    /// Futex word the publisher sleeps on (waiting for a free slot).
    pub(crate) free_seq: CachePadded<AtomicU32>,
    /// Publishers sleeping or about to (0 or 1).
    pub(crate) pub_sleepers: CachePadded<AtomicU32>,
    /// Publisher role state ([`peer::NEVER`], `ATTACHED`, `CLOSED`).
    pub(crate) pub_state: CachePadded<AtomicU32>,
    /// Bit `i`: subscriber number `i` joined and has not been reaped.
    /// Set by the joiner, cleared only by a reaper holding `i`'s lock.
    pub(crate) active: CachePadded<AtomicU64>,
}

impl PubCore {
    /// A fresh control block (heap copy, for model tests).
    #[allow(dead_code)]
    pub(crate) fn new() -> PubCore {
        PubCore {
            tail: CachePadded(AtomicU64::new(0)),
            data_seq: CachePadded(AtomicU32::new(0)),
            sub_sleepers: CachePadded(AtomicU32::new(0)),
            free_seq: CachePadded(AtomicU32::new(0)),
            pub_sleepers: CachePadded(AtomicU32::new(0)),
            pub_state: CachePadded(AtomicU32::new(0)),
            active: CachePadded(AtomicU64::new(0)),
        }
    }
}

/// Per-subscriber shared state, on its own line.
#[repr(C, align(128))]
pub(crate) struct SubShared {
    /// Next position this subscriber will read (for `stat` only; the
    /// subscriber's own copy is private).
    pub(crate) next: AtomicU64,
    /// Role state of subscriber number `i`.
    pub(crate) state: AtomicU32,
}

impl SubShared {
    #[allow(dead_code)]
    pub(crate) fn new() -> SubShared {
        SubShared {
            next: AtomicU64::new(0),
            state: AtomicU32::new(0),
        }
    }
}

/// Metadata of one payload slot.
#[repr(C, align(64))]
pub(crate) struct SlotMeta {
    /// Ownership word: pending bits (0..32) and held bits (32..64), see
    /// the module docs. 0 = free.
    pub(crate) refs: AtomicU64,
    /// Position the slot was last published at.
    pub(crate) seq: AtomicU64,
    /// Payload length of that publication.
    pub(crate) len: AtomicU64,
}

impl SlotMeta {
    #[allow(dead_code)]
    pub(crate) fn new() -> SlotMeta {
        SlotMeta {
            refs: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            len: AtomicU64::new(0),
        }
    }
}

/// Bits of subscriber `i` in `refs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bits {
    pending: u64,
    held: u64,
}

impl Bits {
    pub(crate) fn of(i: usize) -> Bits {
        Bits {
            pending: 1 << i,
            held: 1 << (i as u32 + HELD_SHIFT),
        }
    }
}

/// A view of the shared pool: the algorithm, independent of where the
/// memory lives (a mapping, or the heap in model tests).
pub(crate) struct Pool<'a> {
    pub(crate) core: &'a PubCore,
    pub(crate) subs: &'a [SubShared],
    pub(crate) queue: &'a [AtomicU32],
    pub(crate) meta: &'a [SlotMeta],
    pub(crate) slot_size: u64,
    pub(crate) policy: Policy,
}

/// A subscriber's private cursor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubCursor {
    pub(crate) idx: usize,
    pub(crate) next: u64,
    pub(crate) join_pos: u64,
    pub(crate) missed: u64,
}

/// A received slot (held by the receiving subscriber).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) slot: usize,
    pub(crate) len: u64,
    pub(crate) missed: u64,
}

impl Pool<'_> {
    fn qmask(&self) -> u64 {
        self.queue.len() as u64 - 1
    }

    /// Publisher: a free slot, starting the search at `*rr` (round robin,
    /// so that the first candidate is the least recently published).
    pub(crate) fn take_free(&self, rr: &mut usize) -> Option<usize> {
        let n = self.meta.len();
        for k in 0..n {
            let s = (*rr + k) % n;
            // Acquire: pairs with the Release `fetch_and` in `release`
            // (and the AcqRel reaping RMWs): every reader's accesses to
            // the payload happen before our writes to it.
            if self.meta[s].refs.load(Ordering::Acquire) == 0 {
                *rr = (s + 1) % n;
                return Some(s);
            }
        }
        if self.policy == Policy::DropOldest {
            return self.reclaim_oldest(rr);
        }
        None
    }

    /// Drop-oldest: takes the least recently published slot that nobody
    /// holds (pending bits only), so its readers-to-be count it missed.
    #[cold]
    fn reclaim_oldest(&self, rr: &mut usize) -> Option<usize> {
        let held_mask = HELD_MASK;
        for _attempt in 0..self.meta.len() {
            let mut best: Option<(usize, u64, u64)> = None;
            for (s, m) in self.meta.iter().enumerate() {
                // Relaxed: a candidate only; the CAS below decides.
                let r = m.refs.load(Ordering::Relaxed);
                if r & held_mask != 0 {
                    continue;
                }
                let seq = m.seq.load(Ordering::Relaxed);
                if best.is_none_or(|(_, _, b)| seq < b) {
                    best = Some((s, r, seq));
                }
            }
            let (s, r, _) = best?;
            // Acquire on success: as in `take_free` (r may be 0 if it was
            // freed meanwhile). A failed CAS means a subscriber took it or
            // released: look again.
            if self.meta[s]
                .refs
                .compare_exchange(r, 0, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                *rr = (s + 1) % self.meta.len();
                return Some(s);
            }
        }
        None
    }

    /// Publisher: publishes `slot` (its payload written) as position
    /// `*tail`, then advances `*tail`.
    pub(crate) fn publish(&self, tail: &mut u64, slot: usize, len: u64) {
        let pos = *tail;
        let m = &self.meta[slot];
        // Relaxed: published by the Release store of `refs` below.
        m.seq.store(pos, Ordering::Relaxed);
        m.len.store(len, Ordering::Relaxed);
        // SeqCst: with the SeqCst fence at the end of the previous
        // `publish`, pairs with the joiner's `active` fetch_or + fence +
        // `tail` load (Dekker; see module docs: at most one publication
        // misses a joiner).
        let pending = self.core.active.0.load(Ordering::SeqCst) & 0xffff_ffff;
        // Release: a subscriber whose CAS on `refs` (Acquire) reads this
        // value sees the payload, `seq` and `len` written before. (A plain
        // store: an `xchg` here costs an extra serialised cache-line
        // transfer per message, measured +40 % on the hand-off.)
        m.refs.store(pending, Ordering::Release);
        // Relaxed: published by the `tail` store below.
        self.queue[(pos & self.qmask()) as usize].store(slot as u32, Ordering::Relaxed);
        *tail = pos + 1;
        // SeqCst: Release for the queue entry (pairs with the subscriber's
        // load of `tail`), and part of the join protocol.
        self.core.tail.0.store(pos + 1, Ordering::SeqCst);
        // Its SeqCst fence also orders the `active` re-load below.
        notify(&self.core.data_seq.0, &self.core.sub_sleepers.0);
        // Relaxed: after the SeqCst fence in `notify`, which pairs with the
        // fence in `leave` (Dekker): a subscriber that left after our first
        // `active` load either sees our `refs` in its sweep, or we see its
        // bit gone here and withdraw it. No slot stays addressed to a
        // subscriber that is gone.
        let gone = pending & !self.core.active.0.load(Ordering::Relaxed);
        if gone != 0 {
            self.withdraw(m, gone);
        }
    }

    /// Publisher: removes the pending bits `gone` (subscribers that left)
    /// from the slot just published. Other subscribers may be taking it
    /// already: the RMW touches only the departed ones' bits.
    #[cold]
    fn withdraw(&self, m: &SlotMeta, gone: u64) {
        // AcqRel: as the sweep in `leave`.
        let prev = m.refs.fetch_and(!gone, Ordering::AcqRel);
        if self.made_available(prev, prev & !gone) {
            notify(&self.core.free_seq.0, &self.core.pub_sleepers.0);
        }
    }

    /// Whether clearing bits `prev & !now` made a slot available to the
    /// publisher: free (`refs == 0`) under `Block`; under `DropOldest`
    /// also reclaimable (no held bit left).
    fn made_available(&self, prev: u64, now: u64) -> bool {
        if prev == now {
            return false;
        }
        match self.policy {
            Policy::Block => now == 0,
            Policy::DropOldest => now & HELD_MASK == 0,
        }
    }

    /// Publisher taking over at `tail`: a previous publisher killed
    /// between setting a slot's `refs` and storing `tail` left a slot
    /// addressed to subscribers but never visible (its `seq` is `tail`):
    /// free it, or it would never come back. No subscriber can hold it:
    /// they only read positions below `tail`.
    ///
    /// A subscriber lapped by drop-oldest may briefly hold such a slot
    /// while it finds that `seq` is not the position it wanted (it then
    /// flips its bit back to pending): the slot is freed with a CAS that
    /// never clears a held bit, retrying a bounded number of times.
    pub(crate) fn recover(&self, tail: u64) -> usize {
        let mut freed = 0;
        for m in self.meta {
            // Relaxed: we hold the publisher role; `seq` is only written by
            // publishers, and the previous one is gone.
            if m.seq.load(Ordering::Relaxed) < tail {
                continue;
            }
            // Relaxed: the CAS below decides.
            let mut r = m.refs.load(Ordering::Relaxed);
            for _ in 0..100_000 {
                if r == 0 {
                    break;
                }
                if r & HELD_MASK != 0 {
                    // A transient holder: it flips back at once.
                    spin_hint();
                    // Relaxed: as above.
                    r = m.refs.load(Ordering::Relaxed);
                    continue;
                }
                // AcqRel: Acquire as in `take_free`; Release as `release`.
                match m
                    .refs
                    .compare_exchange_weak(r, 0, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => {
                        freed += 1;
                        break;
                    }
                    Err(v) => r = v,
                }
            }
        }
        freed
    }

    /// Subscriber: the next message addressed to `cur`, held, if any.
    pub(crate) fn try_take(&self, cur: &mut SubCursor) -> Result<Option<Taken>, String> {
        let bits = Bits::of(cur.idx);
        let q = self.queue.len() as u64;
        loop {
            // SeqCst: Acquire for the queue entry and slot (pairs with the
            // store in `publish`); SeqCst for the join protocol.
            let tail = self.core.tail.0.load(Ordering::SeqCst);
            if tail < cur.next {
                return Err(format!("tail {tail} went back below {}", cur.next));
            }
            if tail == cur.next {
                return Ok(None);
            }
            if tail - cur.next > q {
                // Lapped beyond the queue (drop-oldest): those entries are
                // gone. Under `Block` only the publication at `join_pos`
                // (never addressed to us, so holding none of "our" slots)
                // can be lapped, right after a join: not a miss. Under
                // drop-oldest counting `join_pos` may over-count by one
                // (see `silent`), never under-count.
                let to = tail - q;
                let mut lost = to - cur.next;
                if self.policy == Policy::Block && (cur.next..to).contains(&cur.join_pos) {
                    lost -= 1;
                }
                cur.missed = cur.missed.saturating_add(lost);
                cur.next = to;
            }
            let pos = cur.next;
            cur.next += 1;
            // The publication at `join_pos` may have been made before our
            // `active` bit was visible (see the join protocol): if it is
            // not ours, it was never addressed to us, so skip it silently.
            // Under drop-oldest it may also have been addressed to us and
            // reclaimed: count it then (over-reporting by at most one
            // message right after joining beats silent loss).
            let silent = pos == cur.join_pos && self.policy == Policy::Block;
            // Relaxed: ordered by the SeqCst load of `tail` above.
            let slot = self.queue[(pos & self.qmask()) as usize].load(Ordering::Relaxed) as usize;
            let Some(m) = self.meta.get(slot) else {
                return Err(format!("slot number {slot} out of range"));
            };
            // Relaxed: the CAS below re-reads it with Acquire.
            let mut r = m.refs.load(Ordering::Relaxed);
            let took = loop {
                if r & bits.pending == 0 {
                    break false;
                }
                // Acquire: pairs with the Release store in `publish`
                // (payload, seq, len visible). Relaxed on failure: retry.
                match m.refs.compare_exchange_weak(
                    r,
                    (r & !bits.pending) | bits.held,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break true,
                    Err(v) => r = v,
                }
            };
            if !took {
                // Reclaimed by drop-oldest (or the one publication that
                // raced our join).
                if !silent {
                    cur.missed = cur.missed.saturating_add(1);
                }
                continue;
            }
            // Relaxed: ordered by our Acquire CAS; stable while we hold it.
            let seq = m.seq.load(Ordering::Relaxed);
            if seq != pos {
                // Give it back as still pending: held 1 -> 0, pending 0 -> 1
                // (nobody else touches our two bits while we hold it).
                // Release: our (non-)accesses are trivially ordered; AcqRel
                // keeps the RMW chain simple to reason about.
                let prev = m.refs.fetch_xor(bits.held | bits.pending, Ordering::AcqRel);
                // Under drop-oldest the slot may now be reclaimable by a
                // publisher that saw it held and went to sleep.
                if self.made_available(prev, prev ^ (bits.held | bits.pending)) {
                    notify(&self.core.free_seq.0, &self.core.pub_sleepers.0);
                }
                if seq < pos {
                    return Err(format!("slot {slot} has position {seq}, expected {pos}"));
                }
                if !silent {
                    cur.missed = cur.missed.saturating_add(1);
                }
                continue;
            }
            // Relaxed: as `seq`.
            let len = m.len.load(Ordering::Relaxed);
            if len > self.slot_size {
                self.release(cur.idx, slot);
                return Err(format!(
                    "slot {slot} length {len} exceeds the slot size {}",
                    self.slot_size
                ));
            }
            // Relaxed: informational, for `stat`.
            self.subs[cur.idx].next.store(cur.next, Ordering::Relaxed);
            let missed = std::mem::take(&mut cur.missed);
            return Ok(Some(Taken { slot, len, missed }));
        }
    }

    /// Subscriber `idx` is done with `slot`.
    pub(crate) fn release(&self, idx: usize, slot: usize) {
        let bits = Bits::of(idx);
        // Release: our reads of the payload happen before the publisher's
        // reuse (pairs with the Acquire load in `take_free`).
        let prev = self.meta[slot]
            .refs
            .fetch_and(!bits.held, Ordering::Release);
        // Block: we freed it. DropOldest: also when we were its last
        // holder (pending bits left): the publisher can reclaim it now.
        if self.made_available(prev, prev & !bits.held) {
            notify(&self.core.free_seq.0, &self.core.pub_sleepers.0);
        }
    }

    /// Subscriber `idx` leaves: clears its `active` bit, then every bit
    /// of it in every slot. The caller holds `idx`'s role lock and no
    /// sample of `idx` is alive (its owner dropped it, or is dead).
    ///
    /// A publication that loaded `active` before our clear may set
    /// `refs` with our pending bit after our sweep; `publish` re-loads
    /// `active` after a SeqCst fence that pairs with ours (Dekker): either
    /// our sweep sees its `refs`, or it sees our bit gone and withdraws it.
    pub(crate) fn leave(&self, idx: usize) {
        let bits = Bits::of(idx);
        // SeqCst: the next `publish` no longer addresses `idx`; then the
        // fence pairs with the one in `publish` (see above).
        self.core.active.0.fetch_and(!(1 << idx), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut freed = false;
        for m in self.meta {
            // Relaxed: after our fence, this sees a `refs` store that
            // precedes the publisher's fence (Dekker, see above); a slot
            // without our bits needs no RMW (only `publish` adds pending
            // bits, and it withdraws ours if it sets them after this).
            if m.refs.load(Ordering::Relaxed) & (bits.held | bits.pending) == 0 {
                continue;
            }
            // AcqRel: Acquire so the departed reader's accesses happen
            // before a reuse that follows; Release as in `release`.
            let prev = m
                .refs
                .fetch_and(!(bits.held | bits.pending), Ordering::AcqRel);
            freed |= self.made_available(prev, prev & !(bits.held | bits.pending));
        }
        if freed {
            notify(&self.core.free_seq.0, &self.core.pub_sleepers.0);
        }
    }

    /// Reaps subscriber `idx` (the caller holds its role lock; its owner
    /// died without leaving): as [`Pool::leave`].
    pub(crate) fn reap(&self, idx: usize) {
        self.leave(idx);
    }

    /// Joins as subscriber `idx` (whose role lock the caller holds):
    /// returns the cursor, after clearing stale bits of a previous holder.
    pub(crate) fn join(&self, idx: usize) -> SubCursor {
        let bits = Bits::of(idx);
        // SeqCst: pairs with the SeqCst `active` load in `publish`.
        self.core.active.0.fetch_or(1 << idx, Ordering::SeqCst);
        // Pairs with the fence after the publisher's `tail` store (in
        // `notify`): either the next publication sees our `active` bit, or
        // we see its `tail` (Dekker).
        fence(Ordering::SeqCst);
        // SeqCst: see the join protocol in the module docs.
        let join_pos = self.core.tail.0.load(Ordering::SeqCst);
        let mut freed = false;
        for m in self.meta {
            // Acquire: `seq` below belongs to the publication whose bits
            // we see.
            let r = m.refs.load(Ordering::Acquire);
            if r & (bits.held | bits.pending) == 0 {
                continue;
            }
            // While our bit is set nobody can republish the slot: `seq` is
            // stable. Pending bits from before our join are stale.
            let seq = m.seq.load(Ordering::Relaxed);
            let stale = bits.held | if seq < join_pos { bits.pending } else { 0 };
            // AcqRel: as in `reap`.
            let prev = m.refs.fetch_and(!stale, Ordering::AcqRel);
            freed |= self.made_available(prev, prev & !stale);
        }
        if freed {
            notify(&self.core.free_seq.0, &self.core.pub_sleepers.0);
        }
        // Relaxed: informational.
        self.subs[idx].next.store(join_pos, Ordering::Relaxed);
        SubCursor {
            idx,
            next: join_pos,
            join_pos,
            missed: 0,
        }
    }
}

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
    meta_off: u64,
    data_off: u64,
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
        let meta_off = round_up(queue_off + q * 4, 64).ok_or("overflow")?;
        let data_off = round_up(meta_off + slots * 64, 4096).ok_or("overflow")?;
        let stride = round_up(slot_size, align.max(64)).ok_or("slot size overflows")?;
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
            meta_off,
            data_off,
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

/// A mapped pub/sub segment with its validated layout.
#[derive(Debug)]
struct Shared {
    seg: Segment,
    l: PubSubLayout,
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
        Ok(Shared { seg, l })
    }

    fn pool(&self) -> Pool<'_> {
        pool_of(&self.seg, &self.l)
    }

    /// For the typed endpoints: the (untrusted) layout must give every
    /// slot room and alignment for one `T`, or the typed views could not
    /// be made. An error here, never a panic in `deref`.
    fn typed<T>(self) -> Result<Shared, OpenError> {
        let (size, align) = (
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        );
        if self.l.slot_size < size || self.l.align < align || self.l.stride % align != 0 {
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
    fn payload(&self, slot: usize) -> *mut u8 {
        assert!((slot as u64) < self.l.slots);
        // SAFETY: `slot < slots`, so `data_off + (slot + 1) * stride <=
        // total <= seg.len()` (checked by `from_params`): in bounds.
        unsafe {
            self.seg
                .as_ptr()
                .add((self.l.data_off + slot as u64 * self.l.stride) as usize)
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
    // SAFETY: (all four regions)
    // - the data area is page aligned and `l.total <= seg.len()` (checked
    //   by `from_params`); each region below lies inside it at an offset
    //   aligned for its type (SUBS_OFF and the 128-byte sub lines,
    //   queue_off a multiple of 128, meta_off of 64);
    // - the types are atomics only: any bit pattern is valid, and every
    //   process accesses them atomically;
    // - the references live no longer than the borrow of `seg`.
    unsafe {
        Pool {
            core: &*(base as *const PubCore),
            subs: std::slice::from_raw_parts(
                base.add(SUBS_OFF as usize) as *const SubShared,
                l.max_subs as usize,
            ),
            queue: std::slice::from_raw_parts(
                base.add(l.queue_off as usize) as *const AtomicU32,
                l.q as usize,
            ),
            meta: std::slice::from_raw_parts(
                base.add(l.meta_off as usize) as *const SlotMeta,
                l.slots as usize,
            ),
            slot_size: l.slot_size,
            policy: l.policy,
        }
    }
}

/// The publishing end. One per channel at a time.
#[derive(Debug)]
pub struct Publisher {
    sh: Shared,
    tail: u64,
    rr: usize,
    strategy: WaitStrategy,
    /// Loans until the next periodic [`reap_dead`].
    until_reap: u32,
}

/// Loans between two periodic reaps of dead subscribers (a lock probe per
/// active subscriber): a dead subscriber's slots come back even when slots
/// never run out (drop-oldest).
const REAP_EVERY: u32 = 256;

impl Publisher {
    /// Creates a byte pub/sub channel and becomes its publisher.
    pub fn create(name: &str, options: &PubSubOptions) -> Result<Publisher, OpenError> {
        Publisher::from_segment(options.create(name)?)
    }

    /// Opens the byte pub/sub channel `name` as its publisher.
    pub fn open(name: &str) -> Result<Publisher, OpenError> {
        Publisher::attach(Shared::open(name, Fingerprint::BYTES)?)
    }

    /// Becomes the publisher of the byte channel in `seg` (a handle used by
    /// no other endpoint).
    pub fn from_segment(seg: Segment) -> Result<Publisher, OpenError> {
        Publisher::attach(Shared::from_segment(seg, Fingerprint::BYTES)?)
    }

    fn attach(sh: Shared) -> Result<Publisher, OpenError> {
        let name = sh.seg.name().to_owned();
        let tail = {
            let pool = sh.pool();
            peer::claim(
                sh.seg.fd(),
                &pool.core.pub_state.0,
                PUBLISHER,
                &name,
                "publisher",
            )?;
            // Acquire: continue after a previous publisher's last
            // publication; the role is ours, so `tail` is too.
            let tail = pool.core.tail.0.load(Ordering::Acquire);
            if tail > MAX_POSITION {
                peer::close(sh.seg.fd(), &pool.core.pub_state.0, PUBLISHER);
                return Err(segment::Error::corrupt(
                    "open pubsub",
                    &name,
                    format!("publication counter {tail} is out of range"),
                )
                .into());
            }
            // Relaxed: nobody else can be sleeping for a slot: we are the
            // only publisher; a count left by a killed one is reset.
            pool.core.pub_sleepers.0.store(0, Ordering::Relaxed);
            pool.recover(tail);
            tail
        };
        Ok(Publisher {
            sh,
            tail,
            rr: 0,
            strategy: WaitStrategy::default(),
            until_reap: REAP_EVERY,
        })
    }

    /// Sets how `loan` waits for a free slot.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.sh.seg.name()
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.sh.l.slot_size as usize
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.sh.l.slots as usize
    }

    /// Publications so far.
    pub fn published(&self) -> u64 {
        self.tail
    }

    /// Borrows a free slot for a message of `len` bytes, waiting for one
    /// under [`Policy::Block`].
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_wait(len, Wait::Forever)
    }

    /// Borrows a free slot if one is free now ([`SendError::Full`]).
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_wait(len, Wait::No)
    }

    /// Borrows a free slot, waiting at most `timeout`.
    pub fn loan_timeout(&mut self, len: usize, timeout: Duration) -> Result<Loan<'_>, SendError> {
        self.loan_wait(len, Wait::timeout(timeout))
    }

    /// Borrows a free slot, waiting until `deadline`.
    pub fn loan_deadline(&mut self, len: usize, deadline: Instant) -> Result<Loan<'_>, SendError> {
        self.loan_wait(len, Wait::Until(deadline))
    }

    /// Borrows a free slot under the given wait policy.
    pub fn loan_wait(&mut self, len: usize, wait: Wait) -> Result<Loan<'_>, SendError> {
        if len as u64 > self.sh.l.slot_size {
            return Err(SendError::TooLarge {
                len,
                max: self.sh.l.slot_size as usize,
            });
        }
        self.until_reap -= 1;
        if self.until_reap == 0 {
            self.until_reap = REAP_EVERY;
            self.reap();
        }
        let slot = match self.sh.pool().take_free(&mut self.rr) {
            Some(s) => s,
            None => self.wait_slot(wait)?,
        };
        Ok(Loan {
            publisher: self,
            slot,
            len,
        })
    }

    /// Copies `msg` into a slot and publishes it (waiting for a slot).
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_wait(msg, Wait::Forever)
    }

    /// Copies `msg` into a slot and publishes it, if a slot is free now.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_wait(msg, Wait::No)
    }

    /// Copies `msg` into a slot and publishes it, under a wait policy.
    pub fn send_wait(&mut self, msg: &[u8], wait: Wait) -> Result<(), SendError> {
        let mut loan = self.loan_wait(msg.len(), wait)?;
        loan.copy_from_slice(msg);
        loan.publish();
        Ok(())
    }

    #[cold]
    fn wait_slot(&mut self, wait: Wait) -> Result<usize, SendError> {
        let Publisher {
            sh, rr, strategy, ..
        } = self;
        let pool = sh.pool();
        let fd = sh.seg.fd();
        let cursor = Cell::new(*rr);
        let take = || {
            let mut c = cursor.get();
            let r = pool.take_free(&mut c);
            cursor.set(c);
            r
        };
        let r = wait_loop(
            *strategy,
            wait,
            &pool.core.free_seq.0,
            &pool.core.pub_sleepers.0,
            take,
            || {
                reap_dead(&pool, fd, sh.l.max_subs as usize);
                take()
            },
        );
        *rr = cursor.get();
        match r {
            Some(s) => Ok(s),
            None if wait == Wait::No => Err(SendError::Full),
            None => Err(SendError::Timeout),
        }
    }

    /// Reclaims the slots of subscribers that died or left without
    /// cleaning up. `loan` does this by itself when no slot is free.
    pub fn reap(&mut self) -> usize {
        reap_dead(
            &self.sh.pool(),
            self.sh.seg.fd(),
            self.sh.l.max_subs as usize,
        )
    }

    /// Subscribers joined and alive now (a system call per subscriber
    /// slot ever used). A subscriber counted here receives every message
    /// published afterwards.
    pub fn subscribers(&self) -> usize {
        live_subscribers(&self.sh.seg, &self.sh.l).len()
    }
}

/// Tries every active subscriber's role lock; reaps those nobody holds.
fn reap_dead(pool: &Pool<'_>, fd: std::os::fd::BorrowedFd<'_>, max: usize) -> usize {
    // Relaxed: a candidate list; the lock decides.
    let active = pool.core.active.0.load(Ordering::Relaxed);
    let mut reaped = 0;
    for i in 0..max {
        if active & (1 << i) == 0 {
            continue;
        }
        let off = peer::ROLE_BASE + sub_role(i);
        if let Ok(true) = ofd_lock::try_lock(fd, off) {
            pool.reap(i);
            let _ = ofd_lock::unlock(fd, off);
            reaped += 1;
        }
    }
    reaped
}

/// Subscribers that finished joining and are alive.
fn live_subscribers(seg: &Segment, l: &PubSubLayout) -> Vec<usize> {
    let pool = pool_of(seg, l);
    (0..l.max_subs as usize)
        .filter(|&i| peer::status(seg.fd(), &pool.subs[i].state, sub_role(i)) == PeerState::Alive)
        .collect()
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let pool = self.sh.pool();
        peer::close(self.sh.seg.fd(), &pool.core.pub_state.0, PUBLISHER);
        wake(&pool.core.data_seq.0);
    }
}

/// A slot borrowed from the pool: fill it in place, then
/// [`publish`](Loan::publish). Dropping it unpublished returns the slot.
#[derive(Debug)]
pub struct Loan<'a> {
    publisher: &'a mut Publisher,
    slot: usize,
    len: usize,
}

impl Loan<'_> {
    /// Shrinks the message to `len` bytes (no more than loaned).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes the slot visible to every subscriber joined now.
    pub fn publish(self) {
        let p = &mut *self.publisher;
        p.sh.pool().publish(&mut p.tail, self.slot, self.len as u64);
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `slot < slots` (from `take_free`) and `len <= slot_size
        // <= stride`: in bounds; the slot is free (refs == 0, Acquire), so
        // no subscriber reads it, and only this publisher (the role holder)
        // writes it, through this exclusive loan.
        unsafe { std::slice::from_raw_parts(self.publisher.sh.payload(self.slot), self.len) }
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.publisher.sh.payload(self.slot), self.len) }
    }
}

/// A subscriber. Samples borrow it, so it outlives them; `recv` takes
/// `&self`, so a subscriber can hold several samples at once.
#[derive(Debug)]
pub struct Subscriber {
    sh: Shared,
    cur: Cell<SubCursor>,
    idx: usize,
    strategy: Cell<WaitStrategy>,
    alive: peer::AliveCache,
}

impl Subscriber {
    /// Joins the byte pub/sub channel `name`. Fails with
    /// [`OpenError::NoSubscriberSlot`] when the maximum is reached.
    pub fn open(name: &str) -> Result<Subscriber, OpenError> {
        Subscriber::attach(Shared::open(name, Fingerprint::BYTES)?)
    }

    /// Joins the byte channel in `seg` (a handle used by no other
    /// endpoint).
    pub fn from_segment(seg: Segment) -> Result<Subscriber, OpenError> {
        Subscriber::attach(Shared::from_segment(seg, Fingerprint::BYTES)?)
    }

    fn attach(sh: Shared) -> Result<Subscriber, OpenError> {
        let name = sh.seg.name().to_owned();
        let max = sh.l.max_subs as usize;
        for i in 0..max {
            let pool = sh.pool();
            let mut cur = None;
            // Joined before it is published as ATTACHED, so a publisher
            // that counts this subscriber also addresses it.
            match peer::claim_then(sh.seg.fd(), &pool.subs[i].state, sub_role(i), || {
                cur = Some(pool.join(i))
            }) {
                Ok(true) => {
                    let cur = cur.expect("joined under the lock");
                    if cur.join_pos > MAX_POSITION {
                        pool.leave(i);
                        peer::close(sh.seg.fd(), &pool.subs[i].state, sub_role(i));
                        return Err(segment::Error::corrupt(
                            "open pubsub",
                            &name,
                            format!("publication counter {} is out of range", cur.join_pos),
                        )
                        .into());
                    }
                    return Ok(Subscriber {
                        cur: Cell::new(cur),
                        idx: i,
                        sh,
                        strategy: Cell::new(WaitStrategy::default()),
                        alive: peer::AliveCache::default(),
                    });
                }
                Ok(false) => continue,
                Err(source) => return Err(OpenError::Io { name, source }),
            }
        }
        Err(OpenError::NoSubscriberSlot {
            name,
            max: max as u32,
        })
    }

    /// Sets how `recv` waits.
    pub fn set_wait_strategy(&self, strategy: WaitStrategy) {
        self.strategy.set(strategy);
    }

    /// This subscriber's number (`0..max_subscribers`).
    pub fn index(&self) -> usize {
        self.idx
    }

    /// Messages published and not yet received by this subscriber.
    pub fn len(&self) -> usize {
        let pool = self.sh.pool();
        // Relaxed: a snapshot.
        let tail = pool.core.tail.0.load(Ordering::Relaxed);
        let next = self.with_cur(|c| c.next);
        tail.saturating_sub(next).min(self.sh.l.q) as usize
    }

    /// Whether nothing is waiting for this subscriber.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the publisher is doing (one system call).
    pub fn peer(&self) -> PeerState {
        peer::status(
            self.sh.seg.fd(),
            &self.sh.pool().core.pub_state.0,
            PUBLISHER,
        )
    }

    fn with_cur<R>(&self, f: impl FnOnce(&mut SubCursor) -> R) -> R {
        let mut cur = self.cur.get();
        let r = f(&mut cur);
        self.cur.set(cur);
        r
    }

    /// Receives the next message, waiting for one.
    pub fn recv(&self) -> Result<Sample<'_>, RecvError> {
        self.recv_wait(Wait::Forever)
    }

    /// Receives the next message if one is waiting.
    pub fn try_recv(&self) -> Result<Sample<'_>, RecvError> {
        self.recv_wait(Wait::No)
    }

    /// Receives the next message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Sample<'_>, RecvError> {
        self.recv_wait(Wait::timeout(timeout))
    }

    /// Receives the next message, waiting until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Sample<'_>, RecvError> {
        self.recv_wait(Wait::Until(deadline))
    }

    /// Receives the next message as a private copy in `buf` (replacing its
    /// contents) and returns how many messages were missed just before it.
    ///
    /// The API for peers you do not trust: the payload is read exactly
    /// once, so checks on `buf` hold; a hostile writer can only make the
    /// copy contain garbage. The slot is released before returning.
    pub fn recv_into(&self, wait: Wait, buf: &mut Vec<u8>) -> Result<u64, RecvError> {
        let sample = self.recv_wait(wait)?;
        buf.clear();
        buf.reserve(sample.len);
        // SAFETY: the source is `sample.len` bytes inside the segment (as in
        // `Sample::deref`), read through a raw pointer (no reference to
        // bytes a peer might write); the destination has room for `len`
        // bytes (reserved above) and does not overlap shared memory; `u8`
        // has no invalid values, so `set_len` exposes initialised bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.sh.payload(sample.slot),
                buf.as_mut_ptr(),
                sample.len,
            );
            buf.set_len(sample.len);
        }
        Ok(sample.missed)
    }

    /// Receives the next message under a wait policy.
    pub fn recv_wait(&self, wait: Wait) -> Result<Sample<'_>, RecvError> {
        let pool = self.sh.pool();
        let poll = || match self.with_cur(|c| pool.try_take(c)) {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(m) => Some(Err(RecvError::Corrupt(m))),
        };
        let taken = match poll() {
            Some(r) => r?,
            None => {
                let fd = self.sh.seg.fd();
                let r = wait_loop(
                    self.strategy.get(),
                    wait,
                    &pool.core.data_seq.0,
                    &pool.core.sub_sleepers.0,
                    poll,
                    || match self.alive.status(
                        wait == Wait::No,
                        fd,
                        &pool.core.pub_state.0,
                        PUBLISHER,
                    ) {
                        PeerState::Closed => Some(Err(RecvError::Disconnected)),
                        PeerState::Dead => Some(Err(RecvError::SenderDied)),
                        PeerState::NotYet | PeerState::Alive => None,
                    },
                );
                match r {
                    Some(Ok(t)) => t,
                    Some(Err(e @ (RecvError::Disconnected | RecvError::SenderDied))) => {
                        // Deliver what was published before the close.
                        match poll() {
                            Some(r) => r?,
                            None => return Err(e),
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None if wait == Wait::No => return Err(RecvError::Empty),
                    None => return Err(RecvError::Timeout),
                }
            }
        };
        Ok(Sample {
            sub: self,
            slot: taken.slot,
            len: taken.len as usize,
            missed: taken.missed,
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let pool = self.sh.pool();
        // Samples borrow `self`, so none is alive (a `mem::forget`-ten one
        // is given back here too): we hold our role lock, so leave
        // ourselves (`active` bit, pending and held bits): the publisher
        // stops addressing us at once.
        pool.leave(self.idx);
        peer::close(
            self.sh.seg.fd(),
            &pool.subs[self.idx].state,
            sub_role(self.idx),
        );
    }
}

/// A received message: a read-only view of the publisher's slot. The slot
/// returns to the pool when every subscriber that received it dropped its
/// sample.
#[derive(Debug)]
pub struct Sample<'a> {
    sub: &'a Subscriber,
    slot: usize,
    len: usize,
    missed: u64,
}

impl Sample<'_> {
    /// Messages this subscriber missed just before this one (drop-oldest
    /// policy; always 0 under `Block`).
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

impl Deref for Sample<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY:
        // - `slot < slots` (bounds-checked in `try_take`) and `len <=
        //   slot_size <= stride` (checked there too): in bounds;
        // - we hold the slot (our held bit): an honest publisher does not
        //   write it until every holder released it (Acquire/Release on
        //   `refs`); a hostile writer can change bytes, not bounds.
        unsafe { std::slice::from_raw_parts(self.sub.sh.payload(self.slot), self.len) }
    }
}

impl Drop for Sample<'_> {
    fn drop(&mut self) {
        self.sub.sh.pool().release(self.sub.idx, self.slot);
    }
}

/// Bounds for typed pub/sub messages.
pub trait PodRef: FromBytes + IntoBytes + Immutable + KnownLayout {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> PodRef for T {}

/// A publisher of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedPublisher<T: PodRef> {
    inner: Publisher,
    _t: PhantomData<fn(T)>,
}

impl<T: PodRef> TypedPublisher<T> {
    /// Creates a channel of `T` (from [`PubSubOptions::typed`]) and
    /// becomes its publisher.
    pub fn create(name: &str, options: &PubSubOptions) -> Result<Self, OpenError> {
        if options.fingerprint != Fingerprint::of::<T>() {
            return Err(OpenError::InvalidConfig {
                name: name.to_owned(),
                reason: format!(
                    "options are not for {} (use PubSubOptions::typed)",
                    std::any::type_name::<T>()
                ),
            });
        }
        let sh =
            Shared::from_segment(options.create(name)?, Fingerprint::of::<T>())?.typed::<T>()?;
        Ok(TypedPublisher {
            inner: Publisher::attach(sh)?,
            _t: PhantomData,
        })
    }

    /// Opens the channel of `T` named `name` as its publisher.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(TypedPublisher {
            inner: Publisher::attach(Shared::open(name, Fingerprint::of::<T>())?.typed::<T>()?)?,
            _t: PhantomData,
        })
    }

    /// The byte-level publisher.
    pub fn as_raw(&mut self) -> &mut Publisher {
        &mut self.inner
    }

    /// Borrows a slot as a `&mut T` (its previous contents, any bytes
    /// being a valid `T`), waiting for one.
    pub fn loan(&mut self) -> Result<TypedLoan<'_, T>, SendError> {
        let loan = self.inner.loan(std::mem::size_of::<T>())?;
        Ok(TypedLoan {
            loan,
            _t: PhantomData,
        })
    }
}

/// A loaned slot viewed as `T`.
#[derive(Debug)]
pub struct TypedLoan<'a, T: PodRef> {
    loan: Loan<'a>,
    _t: PhantomData<&'a mut T>,
}

impl<T: PodRef> TypedLoan<'_, T> {
    /// Publishes the value.
    pub fn publish(self) {
        self.loan.publish()
    }
}

impl<T: PodRef> Deref for TypedLoan<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // The slot is aligned to align_of::<T>() and sized for T (checked
        // at open by `Shared::typed`), and the loan is size_of::<T>().
        T::ref_from_bytes(&self.loan).expect("typed slot fits T")
    }
}

impl<T: PodRef> DerefMut for TypedLoan<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        T::mut_from_bytes(&mut self.loan).expect("typed slot fits T")
    }
}

/// A subscriber of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedSubscriber<T: PodRef> {
    inner: Subscriber,
    _t: PhantomData<fn() -> T>,
}

impl<T: PodRef> TypedSubscriber<T> {
    /// Joins the channel of `T` named `name`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(TypedSubscriber {
            inner: Subscriber::attach(Shared::open(name, Fingerprint::of::<T>())?.typed::<T>()?)?,
            _t: PhantomData,
        })
    }

    /// The byte-level subscriber.
    pub fn as_raw(&self) -> &Subscriber {
        &self.inner
    }

    /// Receives the next value in place, under a wait policy.
    pub fn recv_wait(&self, wait: Wait) -> Result<TypedSample<'_, T>, RecvError> {
        let s = self.inner.recv_wait(wait)?;
        if T::ref_from_bytes(&s).is_err() {
            return Err(RecvError::Corrupt(format!(
                "message of {} bytes is not a {}",
                s.len(),
                std::any::type_name::<T>()
            )));
        }
        Ok(TypedSample {
            sample: s,
            _t: PhantomData,
        })
    }

    /// Receives the next value in place, waiting for one.
    pub fn recv(&self) -> Result<TypedSample<'_, T>, RecvError> {
        self.recv_wait(Wait::Forever)
    }

    /// Receives the next value if one is waiting.
    pub fn try_recv(&self) -> Result<TypedSample<'_, T>, RecvError> {
        self.recv_wait(Wait::No)
    }
}

/// A received `T`, in place.
#[derive(Debug)]
pub struct TypedSample<'a, T: PodRef> {
    sample: Sample<'a>,
    _t: PhantomData<&'a T>,
}

impl<T: PodRef> TypedSample<'_, T> {
    /// Messages missed just before this one.
    pub fn missed(&self) -> u64 {
        self.sample.missed()
    }
}

impl<T: PodRef> Deref for TypedSample<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Checked in `recv_wait`; the sample's bytes do not move.
        T::ref_from_bytes(&self.sample).expect("checked at receive")
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Untrusted header params never panic, and an accepted layout
        /// always fits in the data area it was checked against.
        #[test]
        fn any_params_are_checked(p in proptest::array::uniform8(proptest::num::u64::ANY),
                                  len in 0usize..1 << 30, tag in proptest::bool::ANY) {
            let mut p = p;
            if tag {
                p[5] = LAYOUT_TAG;
                p[0] &= 0x3ff;
                p[1] &= 0xfffff;
                p[2] &= 0x3f;
                p[3] &= 1;
                p[4] &= 0x1fff;
            }
            if let Ok(l) = PubSubLayout::from_params(&p, len) {
                proptest::prop_assert!(l.total <= len as u64);
                proptest::prop_assert!(l.q >= l.slots && l.q.is_power_of_two());
                proptest::prop_assert!(l.max_subs <= u64::from(MAX_SUBSCRIBERS));
                proptest::prop_assert!(l.queue_off >= SUBS_OFF + l.max_subs * 128);
                proptest::prop_assert!(l.meta_off >= l.queue_off + l.q * 4);
                proptest::prop_assert!(l.data_off >= l.meta_off + l.slots * 64);
                proptest::prop_assert!(l.stride >= l.slot_size);
            }
        }
    }

    /// A typed channel whose (untrusted) layout does not align slots for
    /// `T` is refused at open, instead of panicking in `deref` later.
    #[test]
    fn typed_open_checks_alignment() {
        #[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[repr(C, align(256))]
        struct Big([u8; 256]);
        let name = format!("t-pubsub-align-{}", std::process::id());
        struct Rm(String);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = segment::remove(&self.0);
            }
        }
        let _rm = Rm(name.clone());
        let mut opts = PubSubOptions::typed::<Big>(2, 1);
        opts.align = 1; // what a hostile creator could write
        opts.create(&name).unwrap();
        let e = TypedSubscriber::<Big>::open(&name).unwrap_err();
        assert!(e.to_string().contains("cannot hold"), "{e}");
        assert!(TypedPublisher::<Big>::open(&name).is_err());
        segment::remove(&name).unwrap();
        // Properly made: fine.
        let mut p =
            TypedPublisher::<Big>::create(&name, &PubSubOptions::typed::<Big>(2, 1)).unwrap();
        let s = TypedSubscriber::<Big>::open(&name).unwrap();
        let mut l = p.loan().unwrap();
        l.0[0] = 7;
        l.publish();
        assert_eq!(s.try_recv().unwrap().0[0], 7);
    }

    /// Under `Block`, the publication racing a join (not addressed to the
    /// joiner) lets the publisher get `slots + 1` ahead; when the queue is
    /// no longer than `slots`, the joiner is "lapped" by that one entry,
    /// which is not a miss.
    #[test]
    fn block_join_race_is_not_a_miss() {
        let core = PubCore::new();
        let subs: Vec<SubShared> = (0..1).map(|_| SubShared::new()).collect();
        let queue: Vec<AtomicU32> = (0..2).map(|_| AtomicU32::new(0)).collect();
        let meta: Vec<SlotMeta> = (0..2).map(|_| SlotMeta::new()).collect();
        let pool = Pool {
            core: &core,
            subs: &subs,
            queue: &queue,
            meta: &meta,
            slot_size: 8,
            policy: Policy::Block,
        };
        let (mut tail, mut rr) = (0, 0);
        // Position 0 is in flight (active loaded, no subscriber yet) when
        // subscriber 0 joins at position 0.
        let s0 = pool.take_free(&mut rr).unwrap();
        let mut cur = pool.join(0);
        assert_eq!(cur.join_pos, 0);
        pool.publish(&mut tail, s0, 8);
        // Undo what `publish` saw: position 0 was not addressed to us.
        meta[s0].refs.store(0, Ordering::Relaxed);
        for _ in 0..2 {
            let s = pool.take_free(&mut rr).unwrap();
            pool.publish(&mut tail, s, 8);
        }
        assert_eq!(tail, 3);
        let t = pool.try_take(&mut cur).unwrap().unwrap();
        assert_eq!(t.missed, 0);
    }

    #[test]
    fn orphan_publication_is_reclaimed() {
        let core = PubCore::new();
        let subs: Vec<SubShared> = (0..2).map(|_| SubShared::new()).collect();
        let queue: Vec<AtomicU32> = (0..2).map(|_| AtomicU32::new(0)).collect();
        let meta: Vec<SlotMeta> = (0..2).map(|_| SlotMeta::new()).collect();
        let pool = Pool {
            core: &core,
            subs: &subs,
            queue: &queue,
            meta: &meta,
            slot_size: 8,
            policy: Policy::Block,
        };
        let mut cur = pool.join(0);
        let (mut tail, mut rr) = (0, 0);
        let s = pool.take_free(&mut rr).unwrap();
        pool.publish(&mut tail, s, 8);
        // A publisher dies after addressing slot 1 (position 1) to the
        // subscriber but before storing `tail`.
        meta[1].seq.store(1, Ordering::Relaxed);
        meta[1].refs.store(1, Ordering::Relaxed);
        assert_eq!(pool.recover(core.tail.0.load(Ordering::Relaxed)), 1);
        assert_eq!(meta[1].refs.load(Ordering::Relaxed), 0);
        // The visible publication is untouched.
        let t = pool.try_take(&mut cur).unwrap().unwrap();
        assert_eq!(t.slot, s);
    }

    #[test]
    fn layout_examples() {
        let l = PubSubLayout::new(3, 100, 2, Policy::Block, 1).unwrap();
        assert_eq!(l.q, 4);
        assert_eq!(l.stride, 128);
        assert_eq!(
            PubSubLayout::from_params(&l.params(), l.total as usize),
            Ok(l)
        );
        assert!(PubSubLayout::from_params(&l.params(), l.total as usize - 1).is_err());
        assert!(PubSubLayout::new(1, 1, 33, Policy::Block, 1).is_err());
        assert!(PubSubLayout::new(0, 1, 1, Policy::Block, 1).is_err());
    }
}
