//! The sending end of a byte ring.

use super::*;

/// The sending end of a byte ring. One per ring at a time.
#[derive(Debug)]
pub struct Sender {
    pub(super) sh: Shared,
    pub(super) cur: ProdCursor,
    pub(super) strategy: WaitStrategy,
    pub(super) alive: peer::AliveCache,
    /// Async sleeps taken while this direction's arming was not yet
    /// acknowledged (see [`super::super::wait::arm`]): sets the futures'
    /// short, doubling slice.
    #[cfg_attr(not(all(feature = "async", not(loom))), allow(dead_code))]
    pub(super) unacked: u32,
    /// A consumer that had closed or died before we attached: not a
    /// reason to fail; we wait for the next one.
    pub(super) stale: peer::Stale,
}

impl Sender {
    /// Creates a new byte ring named `name` and becomes its producer.
    pub fn create(name: &str, options: &RingOptions) -> Result<Sender, OpenError> {
        Sender::from_segment(options.create(name)?)
    }

    /// Opens the byte ring `name` as its producer. Fails with
    /// [`OpenError::RoleTaken`] if a live process is producing.
    pub fn open(name: &str) -> Result<Sender, OpenError> {
        Sender::attach(Shared::open(name, Fingerprint::BYTES)?)
    }

    /// Becomes the producer of the byte ring in `seg` (a handle opened by
    /// the caller, used by no other endpoint).
    pub fn from_segment(seg: Segment) -> Result<Sender, OpenError> {
        Sender::attach(Shared::from_segment(seg, Fingerprint::BYTES)?)
    }

    pub(super) fn attach(sh: Shared) -> Result<Sender, OpenError> {
        let core = sh.core();
        let name = sh.seg.name().to_owned();
        peer::claim(sh.seg.fd(), &core.prod_state.0, PRODUCER, &name, "producer")?;
        let cur = match ProdCursor::resume(core, sh.layout.cap, |p| sh.stamp_of(p)) {
            Ok(cur) => cur,
            Err(reason) => {
                peer::close(sh.seg.fd(), &core.prod_state.0, PRODUCER);
                return Err(segment::Error::corrupt("open ring", &name, reason).into());
            }
        };
        // After our claim: a consumer gone before now is not the one we
        // will send to.
        let stale = peer::Stale::snapshot(sh.seg.fd(), &core.cons_state.0, CONSUMER);
        Ok(Sender {
            cur,
            sh,
            strategy: WaitStrategy::default(),
            alive: peer::AliveCache::default(),
            unacked: 0,
            stale,
        })
    }

    /// Sets how this end waits when the ring is full.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.sh.seg.name()
    }

    /// Messages the ring holds (a snapshot).
    pub fn len(&self) -> usize {
        self.sh.depth() as usize
    }

    /// Whether the ring holds no message (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.sh.layout.cap as usize
    }

    /// Largest message, in bytes.
    pub fn max_message(&self) -> usize {
        self.sh.layout.max as usize
    }

    /// What the consumer is doing (one system call). A consumer that
    /// closed or died before this sender attached is reported as such,
    /// though this sender does not fail because of it: it waits for the
    /// next consumer.
    pub fn peer(&self) -> PeerState {
        peer::status(self.sh.seg.fd(), &self.sh.core().cons_state.0, CONSUMER)
    }

    /// Sends `msg`, waiting while the ring is full.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_wait(msg, Wait::Forever)
    }

    /// Sends `msg` if there is room now ([`SendError::Full`] otherwise).
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_wait(msg, Wait::No)
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send_wait(msg, Wait::timeout(timeout))
    }

    /// Sends `msg`, waiting until `deadline` for room.
    pub fn send_deadline(&mut self, msg: &[u8], deadline: Instant) -> Result<(), SendError> {
        self.send_wait(msg, Wait::Until(deadline))
    }

    /// Sends `msg` under the given wait policy.
    #[inline]
    pub fn send_wait(&mut self, msg: &[u8], wait: Wait) -> Result<(), SendError> {
        self.send_with(msg.len(), wait, |buf| buf.copy_from_slice(msg))
    }

    /// Zero-copy send: reserves a slot, lets `fill` write the `len` bytes
    /// of the message in place, then publishes it. A process killed inside
    /// `fill` publishes nothing.
    #[inline]
    pub fn send_with(
        &mut self,
        len: usize,
        wait: Wait,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SendError> {
        let max = self.sh.layout.max;
        if len as u64 > max {
            return Err(SendError::TooLarge {
                len,
                max: max as usize,
            });
        }
        // Relaxed: an early, advisory check; a consumer closing after it
        // just never reads this message (as if it closed right after). A
        // close from before we attached does not count.
        let cons = self.sh.core().cons_state.0.load(Ordering::Relaxed);
        if self.stale.closed_since(cons) {
            return Err(SendError::Disconnected);
        }
        let pos = match self.cur.try_reserve(self.sh.core(), self.sh.layout.cap) {
            Ok(pos) => pos,
            Err(Stuck::Corrupt(m)) => return Err(SendError::Corrupt(m)),
            Err(Stuck::Blocked) => self.wait_room(wait)?,
        };
        let core = self.sh.core();
        let slot = self.sh.slot(pos);
        let prefix = self.sh.layout.prefix as usize;
        // SAFETY:
        // - `slot + prefix + len <= slot + stride`: `len <= max` (checked)
        //   and `stride >= prefix + max`; in bounds of the mapping;
        // - the slot is ours: `pos < head + cap`, so the consumer finished
        //   with it (Acquire on `head`) and will not read it before our
        //   Release of `tail`; no other producer exists (role lock).
        let buf = unsafe { std::slice::from_raw_parts_mut(slot.add(prefix), len) };
        fill(buf);
        // Relaxed: published by the Release store of `tail` in `commit`.
        self.sh.len_word(slot).store(len as u32, Ordering::Relaxed);
        self.cur.commit(core, self.sh.stamp_word(slot));
        notify_armed(&core.data_seq.0, &core.cons_sleepers.0, &core.data_armed.0);
        Ok(())
    }

    #[cold]
    pub(super) fn wait_room(&mut self, wait: Wait) -> Result<u64, SendError> {
        let Sender {
            sh,
            cur,
            strategy,
            alive,
            stale,
            ..
        } = self;
        let core = sh.core();
        let cap = sh.layout.cap;
        let fd = sh.seg.fd();
        let r = wait_loop_armed(
            *strategy,
            wait,
            &core.space_seq.0,
            &core.prod_sleepers.0,
            &core.space_armed.0,
            || match cur.try_reserve(core, cap) {
                Ok(pos) => Some(Ok(pos)),
                Err(Stuck::Blocked) => None,
                Err(Stuck::Corrupt(m)) => Some(Err(SendError::Corrupt(m))),
            },
            || match alive.status(wait == Wait::No, fd, &core.cons_state.0, CONSUMER, *stale) {
                PeerState::Closed | PeerState::Dead => Some(Err(SendError::Disconnected)),
                PeerState::NotYet | PeerState::Alive => None,
            },
        );
        match r {
            Some(r) => r,
            None if wait == Wait::No => Err(SendError::Full),
            None => Err(SendError::Timeout),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let core = self.sh.core();
        peer::close(self.sh.seg.fd(), &core.prod_state.0, PRODUCER);
        // Always wake: a sleeping consumer learns of the close now rather
        // than at the end of its slice.
        wake(&core.data_seq.0);
    }
}
