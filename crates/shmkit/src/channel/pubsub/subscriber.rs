//! The subscribing end and its samples.

use super::*;

/// A subscriber. Samples borrow it, so it outlives them; `recv` takes
/// `&self`, so a subscriber can hold several samples at once.
#[derive(Debug)]
pub struct Subscriber {
    pub(super) sh: Shared,
    cur: Cell<SubCursor>,
    idx: usize,
    strategy: Cell<WaitStrategy>,
    alive: peer::AliveCache,
    /// A publisher that had closed or died before we joined: while we
    /// have received nothing, its end is not ours (we wait for the next
    /// publisher); cleared by the first message received.
    stale: Cell<peer::Stale>,
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

    pub(super) fn attach(sh: Shared) -> Result<Subscriber, OpenError> {
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
                    // After the join: a publisher gone before now is not
                    // the one we receive from, unless we receive from it
                    // (publications racing our join).
                    let stale =
                        peer::Stale::snapshot(sh.seg.fd(), &pool.core.pub_state.0, PUBLISHER);
                    return Ok(Subscriber {
                        cur: Cell::new(cur),
                        idx: i,
                        sh,
                        strategy: Cell::new(WaitStrategy::default()),
                        alive: peer::AliveCache::default(),
                        stale: Cell::new(stale),
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

    /// How `recv` waits (the async futures spin by it too).
    #[cfg(all(feature = "async", not(loom)))]
    pub(super) fn wait_strategy(&self) -> WaitStrategy {
        self.strategy.get()
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

    /// Messages missed (drop-oldest) after the last one received, not yet
    /// reported by a [`Sample::missed`]: check it when the publisher has
    /// closed, so that a loss at the very end is not silent.
    pub fn missed_unreported(&self) -> u64 {
        self.with_cur(|c| c.missed)
    }

    /// Receives the next message, waiting for one. After the publisher
    /// closes (or dies), what it published is still delivered; then
    /// [`RecvError::Disconnected`] (or [`RecvError::SenderDied`]). A
    /// publisher that had already closed or died when this subscriber
    /// joined does not end it: it waits for the next publisher.
    #[inline]
    pub fn recv(&self) -> Result<Sample<'_>, RecvError> {
        self.recv_wait(Wait::Forever)
    }

    /// Receives the next message if one is waiting.
    #[inline]
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
            std::ptr::copy_nonoverlapping(sample.ptr, buf.as_mut_ptr(), sample.len);
            buf.set_len(sample.len);
        }
        Ok(sample.missed)
    }

    /// Receives the next message under a wait policy.
    #[inline]
    pub fn recv_wait(&self, wait: Wait) -> Result<Sample<'_>, RecvError> {
        match self.take() {
            Ok(Some(t)) => Ok(self.sample(t)),
            Ok(None) => self.recv_slow(wait),
            Err(e) => Err(e),
        }
    }

    /// One attempt: the next message addressed to us, held, if any.
    #[inline]
    fn take(&self) -> Result<Option<Taken>, RecvError> {
        let mut cur = self.cur.get();
        let r = self.sh.pool().try_take(&mut cur);
        self.cur.set(cur);
        r.map_err(RecvError::Corrupt)
    }

    #[inline]
    fn sample(&self, taken: Taken) -> Sample<'_> {
        // A message: whoever sent it, its end is now ours.
        self.stale.set(peer::Stale::NONE);
        Sample {
            sub: self,
            ptr: self.sh.payload(taken.slot),
            slot: taken.slot,
            len: taken.len as usize,
            missed: taken.missed,
        }
    }

    /// Nothing was waiting: wait under `wait`'s policy.
    #[cold]
    #[inline(never)]
    fn recv_slow(&self, wait: Wait) -> Result<Sample<'_>, RecvError> {
        let pool = self.sh.pool();
        let poll = || match self.take() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        let fd = self.sh.seg.fd();
        let r = wait_loop_marked(
            self.strategy.get(),
            wait,
            &pool.core.data_seq.0,
            &pool.core.sub_sleepers.0,
            Some(&pool.subs[self.idx].asleep),
            poll,
            || match self.alive.status(
                wait == Wait::No,
                fd,
                &pool.core.pub_state.0,
                PUBLISHER,
                self.stale.get(),
            ) {
                PeerState::Closed => Some(Err(RecvError::Disconnected)),
                PeerState::Dead => Some(Err(RecvError::SenderDied)),
                PeerState::NotYet | PeerState::Alive => None,
            },
        );
        let taken = match r {
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
        };
        Ok(self.sample(taken))
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
    /// The payload of `slot` (`Shared::payload`, computed once).
    ptr: *const u8,
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
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY:
        // - `ptr` is the payload of `slot` (`Shared::payload`, which asserts
        //   `slot < slots`, also bounds-checked in `try_take`) and `len <=
        //   slot_size <= stride` (checked there too): in bounds;
        // - we hold the slot (our held bit): an honest publisher does not
        //   write it until every holder released it (Acquire/Release on
        //   `refs`); a hostile writer can change bytes, not bounds.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Sample<'_> {
    #[inline]
    fn drop(&mut self) {
        self.sub.sh.pool().release(self.sub.idx, self.slot);
    }
}
