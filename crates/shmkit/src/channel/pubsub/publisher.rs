//! The publishing end and its loans.

use super::*;

/// The publishing end. One per channel at a time.
#[derive(Debug)]
pub struct Publisher {
    pub(super) sh: Shared,
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
/// Slots checked by each periodic repair (`Pool::repair`): each check
/// reads a slot's `refs` line, likely last written by a subscriber's core,
/// so a chunk of 32 costs about one line transfer per 8 loans (1024 cost
/// four per loan at 256 slots, measured 31 instructions/message). A full
/// pass over `MAX_SLOTS` takes about half a million loans; the wait path
/// (no free slot) still recovers every slot at once.
const REPAIR_CHUNK: usize = 32;
/// A publisher busy-polling for a slot scans every slot once per this many
/// polls (the others check only the next slot).
const FULL_SCAN_EVERY: u32 = 64;

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

    pub(super) fn attach(sh: Shared) -> Result<Publisher, OpenError> {
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
            let tail = pool.resume(tail);
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

    /// How `loan` waits (the async future spins by it too).
    #[cfg(all(feature = "async", not(loom)))]
    pub(super) fn wait_strategy(&self) -> WaitStrategy {
        self.strategy
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
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_wait(len, Wait::Forever)
    }

    /// Borrows a free slot if one is free now ([`SendError::Full`]).
    #[inline]
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
    #[inline]
    pub fn loan_wait(&mut self, len: usize, wait: Wait) -> Result<Loan<'_>, SendError> {
        if len as u64 > self.sh.l.slot_size {
            return Err(SendError::TooLarge {
                len,
                max: self.sh.l.slot_size as usize,
            });
        }
        self.until_reap -= 1;
        if self.until_reap == 0 {
            self.periodic_repair();
        }
        let slot = match self.sh.pool().take_free(&mut self.rr) {
            Some(s) => s,
            None => self.wait_slot(wait)?,
        };
        // The next loan most likely takes slot `rr`: start moving its lines
        // here while this one is filled and published.
        self.sh.pool().prefetch_next(self.rr);
        Ok(Loan {
            publisher: self,
            slot,
            len,
        })
    }

    /// Every [`REAP_EVERY`] loans: reap dead subscribers, repair a chunk.
    #[cold]
    #[inline(never)]
    fn periodic_repair(&mut self) {
        self.until_reap = REAP_EVERY;
        self.reap();
        // A rotating chunk of slots: orphans and damaged bits (see
        // `Pool::recover`), at a bounded cost per loan.
        let turn = self.tail / u64::from(REAP_EVERY);
        let start = turn.wrapping_mul(REPAIR_CHUNK as u64) % self.sh.l.slots;
        self.sh
            .pool()
            .repair(self.tail, start as usize, REPAIR_CHUNK);
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
    #[inline(never)]
    fn wait_slot(&mut self, wait: Wait) -> Result<usize, SendError> {
        let Publisher {
            sh,
            rr,
            strategy,
            tail,
            ..
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
        // Busy-polling under `Block`: poll only the next slot in round-robin
        // order (the least recently published, which a reader keeping up
        // frees first), with a full scan every `FULL_SCAN_EVERY` polls (a
        // reader holding an older sample) and at every slow check.
        // `take_free` on every poll read each slot's line, pulling all of
        // them from the subscribers' cores again and again. (Not when the
        // strategy sleeps: a poll after a wake-up must see any freed slot.)
        let fast = *strategy == WaitStrategy::BusyPoll && pool.policy == Policy::Block;
        let polls = Cell::new(0u32);
        let poll = || {
            let k = polls.get().wrapping_add(1);
            polls.set(k);
            if fast && k % FULL_SCAN_EVERY != 0 {
                let mut c = cursor.get();
                let r = pool.take_next(&mut c);
                cursor.set(c);
                r
            } else {
                take()
            }
        };
        let r = wait_loop(
            *strategy,
            wait,
            &pool.core.free_seq.0,
            &pool.core.pub_sleepers.0,
            poll,
            || {
                reap_dead(pool, fd, sh.l.max_subs as usize);
                // Orphaned or damaged slots come back here at the latest.
                pool.recover(*tail);
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
            self.sh.pool(),
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
pub(super) fn live_subscribers(seg: &Segment, l: &PubSubLayout) -> Vec<usize> {
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
    #[inline]
    pub fn publish(self) {
        let p = &mut *self.publisher;
        p.sh.pool().publish(&mut p.tail, self.slot, self.len as u64);
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `slot < slots` (from `take_free`) and `len <= slot_size
        // <= stride`: in bounds; the slot is free (refs == 0, Acquire), so
        // no subscriber reads it, and only this publisher (the role holder)
        // writes it, through this exclusive loan.
        unsafe { std::slice::from_raw_parts(self.publisher.sh.payload(self.slot), self.len) }
    }
}

impl DerefMut for Loan<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.publisher.sh.payload(self.slot), self.len) }
    }
}
