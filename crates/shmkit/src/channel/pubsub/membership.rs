//! Subscribers joining and leaving a pool: `join` (clearing a previous
//! holder's stale bits), `leave`, and `reap` for a dead subscriber. They
//! act on the slot ownership words of `pool.rs`; the protocol is
//! described in the parent module.

use super::pool::{Bits, Pool, SubCursor};
use crate::channel::wait::{notify, take_back_sleeper};
use crate::primitive::{fence, Ordering};

impl Pool<'_> {
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
        // A subscriber killed asleep left its count in `sub_sleepers`:
        // take it back, or every publish pays a futex wake for good.
        take_back_sleeper(&self.core.sub_sleepers.0, &self.subs[idx].asleep);
        // SeqCst: the next `publish` no longer addresses `idx`; then the
        // fence pairs with the one in `publish` (see above).
        self.core.active.0.fetch_and(!(1 << idx), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut freed = false;
        for m in self.meta.iter() {
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
    ///
    /// A stale bit's slot is *pinned* before its `seq` is read: our held
    /// bit is set by a CAS that also checks our bit is still there, so the
    /// slot can be neither reclaimed (drop-oldest never takes a held slot)
    /// nor republished while we look. Without the pin, under drop-oldest
    /// the slot could be reclaimed and republished between our read of
    /// `refs` and our clear, and the clear would strip our bit from a
    /// message published after we joined (issue 14, bug 2; the model
    /// `pubsub_join_drop_oldest_keeps_new_bits`).
    pub(crate) fn join(&self, idx: usize) -> SubCursor {
        let bits = Bits::of(idx);
        // A previous holder of `idx` killed asleep: take its count back.
        take_back_sleeper(&self.core.sub_sleepers.0, &self.subs[idx].asleep);
        // SeqCst: pairs with the SeqCst `active` load in `publish`.
        self.core.active.0.fetch_or(1 << idx, Ordering::SeqCst);
        // Pairs with the fence after the publisher's `tail` store (in
        // `notify`): either the next publication sees our `active` bit, or
        // we see its `tail` (Dekker).
        fence(Ordering::SeqCst);
        // SeqCst: see the join protocol in the module docs.
        let join_pos = self.core.tail.0.load(Ordering::SeqCst);
        let mut freed = false;
        for m in self.meta.iter() {
            // Relaxed: the CAS below (or, for a held bit, the RMW that
            // clears it) is what we act on.
            let mut r = m.refs.load(Ordering::Relaxed);
            // Pin: make sure we hold the slot, unless a stale held bit of
            // ours already does.
            let pinned = loop {
                if r & (bits.held | bits.pending) == 0 {
                    break false;
                }
                if r & bits.held != 0 {
                    // Acquire: `seq` below belongs to the publication whose
                    // held bit we see (pairs with the Release `refs` store
                    // of that publication, through the RMW chain).
                    fence(Ordering::Acquire);
                    break true;
                }
                // Acquire: as the subscriber's CAS in `try_take` (`seq` is
                // that of the publication we now hold). Relaxed on
                // failure: look again.
                match m.refs.compare_exchange_weak(
                    r,
                    r | bits.held,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break true,
                    Err(v) => r = v,
                }
            };
            if !pinned {
                continue;
            }
            // Relaxed: ordered by the Acquire above; stable while we hold
            // the slot (nobody reclaims or republishes a held slot).
            let seq = m.seq.load(Ordering::Relaxed);
            // Our held bit (the pin, or a dead holder's) goes; our pending
            // bit too if it addresses a publication before our start.
            let stale = bits.held | if seq < join_pos { bits.pending } else { 0 };
            // AcqRel: Release so that our read of `seq` happens before a
            // reuse; Acquire as in `reap`.
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
