//! The slot ownership word and its state machine: loan, publish,
//! receive, release, reclaim (drop-oldest); join, leave and reaping are
//! in `membership.rs`. The algorithm is described in the parent module.

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
    /// 1 while subscriber `i` is counted in `PubCore::sub_sleepers` (see
    /// `wait::sleep_once_marked`): lets a reaper or the next joiner take
    /// a dead sleeper's count back out. Zero in older segments (this was
    /// padding), which only means there is nothing to take back.
    pub(crate) asleep: AtomicU32,
}

impl SubShared {
    #[allow(dead_code)]
    pub(crate) fn new() -> SubShared {
        SubShared {
            next: AtomicU64::new(0),
            state: AtomicU32::new(0),
            asleep: AtomicU32::new(0),
        }
    }
}

/// Bits of subscriber `i` in `refs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bits {
    pub(super) pending: u64,
    pub(super) held: u64,
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
    pub(crate) queue: &'a [AtomicU64],
    pub(crate) meta: Metas<'a>,
    pub(crate) slot_size: u64,
    pub(crate) policy: Policy,
    /// [`Pool::valid_bits`], computed once.
    valid: u64,
    /// Address of slot 0's payload and the distance between payloads,
    /// for prefetch hints only (never dereferenced); 0 = no hints.
    payload_base: usize,
    stride: usize,
}

/// The message of a `Corrupt` error, built out of line (keeps the
/// formatting machinery off the receive path).
#[cold]
#[inline(never)]
fn corrupt(args: std::fmt::Arguments<'_>) -> String {
    args.to_string()
}

/// Asks the CPU to start fetching the cache line at `addr`, for reading
/// (`WRITE == false`) or for writing (`prefetchw`: the line arrives
/// exclusive, so the store that follows needs no second transfer). A hint
/// only: it never faults, whatever the address, and changes nothing the
/// program can observe (on other targets, and under loom, it does
/// nothing; a CPU without `prefetchw` executes it as a no-op).
#[inline(always)]
fn prefetch<const WRITE: bool>(addr: usize) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    // SAFETY: `prefetcht0` and `prefetchw` are hints: they do not fault on
    // any address and have no architecturally visible effect; SSE is part
    // of the x86_64 baseline, and `prefetchw`'s opcode is a no-op where
    // the instruction is missing.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        if WRITE {
            _mm_prefetch::<_MM_HINT_ET0>(addr as *const i8)
        } else {
            _mm_prefetch::<_MM_HINT_T0>(addr as *const i8)
        }
    };
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = addr;
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

impl<'a> Pool<'a> {
    /// A view of the pool in these regions (`queue.len()` a power of two,
    /// `meta.len() >= 1`).
    pub(crate) fn new(
        core: &'a PubCore,
        subs: &'a [SubShared],
        queue: &'a [AtomicU64],
        meta: impl Into<Metas<'a>>,
        slot_size: u64,
        policy: Policy,
    ) -> Pool<'a> {
        let low = match subs.len() {
            n if n >= 32 => 0xffff_ffff,
            n => (1u64 << n) - 1,
        };
        Pool {
            core,
            subs,
            queue,
            meta: meta.into(),
            slot_size,
            policy,
            valid: low | low << HELD_SHIFT,
            payload_base: 0,
            stride: 0,
        }
    }

    /// Enables prefetch hints for payloads at `base + slot * stride`.
    pub(crate) fn with_payloads(mut self, base: *const u8, stride: usize) -> Pool<'a> {
        self.payload_base = base as usize;
        self.stride = stride;
        self
    }
}

impl Pool<'_> {
    /// Prefetch hint for the first line of `slot`'s payload (`slot` need
    /// not be valid: a hint never faults).
    #[inline(always)]
    fn prefetch_payload<const WRITE: bool>(&self, slot: usize) {
        if self.payload_base != 0 {
            prefetch::<WRITE>(
                self.payload_base
                    .wrapping_add(slot.wrapping_mul(self.stride)),
            );
        }
    }

    /// Publisher: hints the CPU to fetch the lines the next `take_free`
    /// most likely touches (slot `rr`'s metadata and payload), so that
    /// their transfer from a subscriber's core overlaps the caller's work.
    /// For writing: the publisher reads `refs`, then writes the line
    /// (payload, `seq`, `len`, `refs`), which a shared copy would make a
    /// second transfer (the upgrade).
    #[inline]
    pub(crate) fn prefetch_next(&self, rr: usize) {
        if let Some(m) = self.meta.get(rr) {
            prefetch::<true>(m as *const SlotMeta as usize);
            self.prefetch_payload::<true>(rr);
        }
    }

    fn qmask(&self) -> u64 {
        self.queue.len() as u64 - 1
    }

    /// The `refs` bits a subscriber of this channel can own: pending and
    /// held bits of numbers `0..max_subscribers` (`subs.len()`).
    #[inline]
    pub(crate) fn valid_bits(&self) -> u64 {
        self.valid
    }

    /// Publisher: a free slot, starting the search at `*rr` (round robin,
    /// so that the first candidate is the least recently published).
    #[inline]
    pub(crate) fn take_free(&self, rr: &mut usize) -> Option<usize> {
        let n = self.meta.len();
        // `*rr` is ours (private), but clamp it rather than trust it.
        let mut s = if *rr < n { *rr } else { 0 };
        for _ in 0..n {
            // Acquire: pairs with the Release `fetch_and` in `release`
            // (and the AcqRel reaping RMWs): every reader's accesses to
            // the payload happen before our writes to it.
            let free = self.meta[s].refs.load(Ordering::Acquire) == 0;
            // (A wrap instead of `% n`: a division per loan was measurable.)
            let next = if s + 1 == n { 0 } else { s + 1 };
            if free {
                *rr = next;
                return Some(s);
            }
            s = next;
        }
        if self.policy == Policy::DropOldest {
            return self.reclaim_oldest(rr);
        }
        None
    }

    /// Publisher busy-polling for a slot: takes slot `*rr` (the next in
    /// round-robin order) if it is free, without looking at the others.
    #[inline]
    pub(crate) fn take_next(&self, rr: &mut usize) -> Option<usize> {
        let n = self.meta.len();
        // `*rr` is ours (private), but clamp it rather than trust it.
        let s = if *rr < n { *rr } else { 0 };
        // Acquire: as in `take_free`.
        if self.meta[s].refs.load(Ordering::Acquire) != 0 {
            return None;
        }
        *rr = if s + 1 == n { 0 } else { s + 1 };
        Some(s)
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
    #[inline]
    pub(crate) fn publish(&self, tail: &mut u64, slot: usize, len: u64) {
        let pos = *tail;
        let m = &self.meta[slot];
        // Relaxed: published by the Release store of `refs` below.
        m.seq.store(pos, Ordering::Relaxed);
        m.len.store(len, Ordering::Relaxed);
        // SeqCst (a plain load on x86; Relaxed would do, see below): after
        // the SeqCst fence at the end of the previous `publish` (in
        // `notify`), it pairs with the joiner's `active` fetch_or + fence +
        // `tail` load (Dekker between the two fences; see module docs: at
        // most one publication misses a joiner).
        // Masked to real subscriber numbers: an `active` bit at or above
        // `max_subscribers` (damaged memory) would pin the slot for good.
        let pending = self.core.active.0.load(Ordering::SeqCst) & self.valid & 0xffff_ffff;
        // Release: a subscriber whose CAS on `refs` (Acquire) reads this
        // value sees the payload, `seq` and `len` written before. (A plain
        // store: an `xchg` here costs an extra serialised cache-line
        // transfer per message, measured +40 % on the hand-off.)
        m.refs.store(pending, Ordering::Release);
        // Release: this store commits the publication. A subscriber polls
        // its next entry (Acquire): one that reads this value sees the
        // payload, `seq`, `len` and `refs` stored before, so its CAS on
        // `refs` finds this publication's pending bits (not an older
        // value). A publisher killed right after it is finished by the next
        // one (`Pool::resume`).
        self.queue[(pos & self.qmask()) as usize].store(entry(pos, slot), Ordering::Release);
        *tail = pos + 1;
        // Release: subscribers that fall back to `tail` (lapped, or
        // nothing new in their entry) read the queue entry (and, through
        // it, the payload) after an Acquire load of this value. Joiners
        // start at it. The join protocol needs no SeqCst store here:
        // its Dekker pair is the SeqCst fence just below (in `notify`)
        // against the joiner's fence. If the joiner's fence comes first in
        // the single total order S, the `active` load of every later
        // `publish` (after our fence) sees the joiner's bit; otherwise the
        // joiner's `tail` load (after its fence) sees this store. (A
        // SeqCst store is an `xchg` on x86: a second full barrier per
        // message next to the fence.)
        self.core.tail.0.store(pos + 1, Ordering::Release);
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
    pub(super) fn made_available(&self, prev: u64, now: u64) -> bool {
        if prev == now {
            return false;
        }
        match self.policy {
            Policy::Block => now == 0,
            Policy::DropOldest => now & HELD_MASK == 0,
        }
    }

    /// Publisher taking over at `tail` (and, later, re-checking): frees
    /// the slots that can never come back by themselves. Returns how many.
    ///
    /// - An *orphan*: a previous publisher killed between setting a slot's
    ///   `refs` and storing `tail` left a slot addressed to subscribers but
    ///   never visible (its `seq` is `>= tail`). No subscriber can hold it
    ///   for good: they only read positions below `tail`. A subscriber
    ///   lapped by drop-oldest may hold it for a moment while it finds that
    ///   `seq` is not the position it wanted (it then flips its bit back to
    ///   pending); a dead one may hold it until it is reaped.
    /// - Bits of subscriber numbers at or above `max_subscribers` (damaged
    ///   memory): no subscriber can ever clear them.
    ///
    /// Bounded: one pass over `slots` (or over `chunk` of them, starting
    /// at `start`), a few CAS attempts per slot, no waiting. An orphan that
    /// is held right now is left for the next call: the publisher calls
    /// this again whenever it finds no free slot (and every few hundred
    /// loans on a rotating chunk), so it is never leaked, only freed later.
    /// Only the publisher calls this, never during its own `publish`.
    pub(crate) fn recover(&self, tail: u64) -> usize {
        self.repair(tail, 0, self.meta.len())
    }

    /// Publisher taking over at `tail` (read by the caller, `<=
    /// MAX_POSITION`): returns the position to continue at. The queue entry
    /// store commits a publication (subscribers poll entries), so a
    /// predecessor killed between its entry store and its `tail` store
    /// left position `tail` visible: it counts, and `tail` moves past it.
    /// (Then `recover` must use the new value, or that publication's slot
    /// would look like an orphan and be freed under its readers.)
    pub(crate) fn resume(&self, tail: u64) -> u64 {
        // Acquire: the predecessor's slot stores before the entry are
        // visible to our later `recover` (its `seq` read).
        let e = self.queue[(tail & self.qmask()) as usize].load(Ordering::Acquire);
        if !entry_is(e, tail) {
            return tail;
        }
        // Release: as the `tail` store in `publish`.
        self.core.tail.0.store(tail + 1, Ordering::Release);
        // A subscriber may have gone to sleep before that entry was
        // visible (its publisher died before its own wake-up check).
        notify(&self.core.data_seq.0, &self.core.sub_sleepers.0);
        tail + 1
    }

    /// [`Pool::recover`] on `chunk` slots from `start` (wrapping).
    pub(crate) fn repair(&self, tail: u64, start: usize, chunk: usize) -> usize {
        let n = self.meta.len();
        let valid = self.valid_bits();
        let mut freed = 0;
        let mut s = start % n;
        for _ in 0..chunk.min(n) {
            let m = &self.meta[s];
            s = if s + 1 == n { 0 } else { s + 1 };
            // Relaxed: the RMWs below decide.
            let r = m.refs.load(Ordering::Relaxed);
            if r & !valid != 0 {
                // AcqRel: Acquire as in `take_free` (a reuse follows);
                // Release as in `release`.
                // (No wake-up: only the publisher, which is us, waits for
                // slots.)
                m.refs.fetch_and(valid, Ordering::AcqRel);
                freed += 1;
            }
            // Relaxed: we hold the publisher role; `seq` is only written by
            // publishers, and no other one runs.
            if m.seq.load(Ordering::Relaxed) < tail {
                continue;
            }
            // Relaxed: the CAS below decides.
            let mut r = m.refs.load(Ordering::Relaxed);
            for _ in 0..4 {
                // Free already, or held (left for a later call).
                if r == 0 || r & HELD_MASK != 0 {
                    break;
                }
                // AcqRel: Acquire as in `take_free`; Release as `release`.
                match m
                    .refs
                    .compare_exchange(r, 0, Ordering::AcqRel, Ordering::Relaxed)
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
    #[inline]
    pub(crate) fn try_take(&self, cur: &mut SubCursor) -> Result<Option<Taken>, String> {
        let bits = Bits::of(cur.idx);
        let q = self.queue.len() as u64;
        loop {
            let pos = cur.next;
            let e = &self.queue[(pos & self.qmask()) as usize];
            // Acquire: pairs with the Release store of the entry in
            // `publish` (payload, `seq`, `len`, `refs` visible). Polling our
            // own next entry instead of `tail` saves a line transfer per
            // message: `tail` is read only when the entry does not show
            // `pos` (nothing new, or lapped).
            let mut v = e.load(Ordering::Acquire);
            if !entry_is(v, pos) {
                // Still the previous lap's entry (or never written): `pos`
                // is not published yet, as the entry store comes first. No
                // `tail` load: while we wait, the publisher's `tail` line
                // stays in its cache. (Modulo 2^48, an entry of a lap
                // 2^48 positions ahead also matches: a subscriber lapped
                // that far would wait one more lap before skipping ahead.)
                let unpublished = match pos.checked_sub(q) {
                    Some(before) => entry_is(v, before),
                    None => v == 0,
                };
                if unpublished {
                    return Ok(None);
                }
                // SeqCst: Acquire for the entries below it (pairs with the
                // Release store in `publish`); SeqCst for the join protocol.
                let tail = self.core.tail.0.load(Ordering::SeqCst);
                if tail <= pos {
                    // Entry `pos` may be visible a moment before `tail`
                    // covers it (and for good if its publisher was killed in
                    // between, until the next one resumes): `tail` may be
                    // one below `next`, never more.
                    if pos - tail > 1 {
                        return Err(corrupt(format_args!("tail {tail} went back below {pos}")));
                    }
                    return Ok(None);
                }
                if tail - pos > q {
                    // Lapped beyond the queue (drop-oldest): those entries
                    // are gone. Under `Block` only the publication at
                    // `join_pos` (never addressed to us, so holding none of
                    // "our" slots) can be lapped, right after a join: not a
                    // miss. Under drop-oldest counting `join_pos` may
                    // over-count by one (see `silent`), never under-count.
                    let to = tail - q;
                    let mut lost = to - pos;
                    if self.policy == Policy::Block && (pos..to).contains(&cur.join_pos) {
                        lost -= 1;
                    }
                    cur.missed = cur.missed.saturating_add(lost);
                    cur.next = to;
                    continue;
                }
                // `pos < tail`: published. Acquire: as above; after the
                // `tail` load, the entry shows `pos` or a later lap.
                v = e.load(Ordering::Acquire);
            }
            cur.next += 1;
            // The publication at `join_pos` may have been made before our
            // `active` bit was visible (see the join protocol): if it is
            // not ours, it was never addressed to us, so skip it silently.
            // Under drop-oldest it may also have been addressed to us and
            // reclaimed: count it then (over-reporting by at most one
            // message right after joining beats silent loss).
            let silent = pos == cur.join_pos && self.policy == Policy::Block;
            if !entry_is(v, pos) {
                // Overwritten since `tail` passed it: lapped (drop-oldest),
                // or damaged memory. Either way, not deliverable.
                if !silent {
                    cur.missed = cur.missed.saturating_add(1);
                }
                continue;
            }
            let slot = entry_slot(v);
            let Some(m) = self.meta.get(slot) else {
                return Err(corrupt(format_args!("slot number {slot} out of range")));
            };
            // The payload is read right after the CAS below, which a load
            // cannot pass (x86 locked instructions drain first): fetch its
            // line now, in parallel with the CAS's transfer of `refs`.
            self.prefetch_payload::<false>(slot);
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
                    return Err(corrupt(format_args!(
                        "slot {slot} has position {seq}, expected {pos}"
                    )));
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
                return Err(corrupt(format_args!(
                    "slot {slot} length {len} exceeds the slot size {}",
                    self.slot_size
                )));
            }
            // Relaxed: informational, for `stat`.
            self.subs[cur.idx].next.store(cur.next, Ordering::Relaxed);
            let missed = std::mem::take(&mut cur.missed);
            return Ok(Some(Taken { slot, len, missed }));
        }
    }

    /// Subscriber `idx` is done with `slot`.
    #[inline]
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
}

#[cfg(all(test, not(loom)))]
#[path = "pool_tests.rs"]
mod tests;
