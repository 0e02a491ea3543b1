//! The slot ownership word and its state machine: loan, publish,
//! receive, release, reclaim (drop-oldest), join, leave and reaping.
//! The algorithm is described in the parent module.

use super::*;

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
