//! The receiving end of a byte ring.

use super::*;

/// The receiving end of a byte ring. One per ring at a time.
#[derive(Debug)]
pub struct Receiver {
    pub(super) sh: Shared,
    pub(super) cur: ConsCursor,
    pub(super) strategy: WaitStrategy,
    pub(super) alive: peer::AliveCache,
    /// Async sleeps taken while this direction's arming was not yet
    /// acknowledged (see [`super::super::wait::arm`]): sets the futures'
    /// short, doubling slice.
    #[cfg_attr(not(all(feature = "async", not(loom))), allow(dead_code))]
    pub(super) unacked: u32,
    /// A producer that had closed or died before we attached, and `head`
    /// then: while we have received nothing (`cur.head` unchanged) its end
    /// is not ours, we wait for the next producer. Once we received a
    /// message, the end of whoever sent it ends us.
    pub(super) stale: (peer::Stale, u64),
}

impl Receiver {
    /// Creates a new byte ring named `name` and becomes its consumer.
    pub fn create(name: &str, options: &RingOptions) -> Result<Receiver, OpenError> {
        Receiver::from_segment(options.create(name)?)
    }

    /// Opens the byte ring `name` as its consumer.
    pub fn open(name: &str) -> Result<Receiver, OpenError> {
        Receiver::attach(Shared::open(name, Fingerprint::BYTES)?)
    }

    /// Becomes the consumer of the byte ring in `seg` (a handle opened by
    /// the caller, used by no other endpoint).
    pub fn from_segment(seg: Segment) -> Result<Receiver, OpenError> {
        Receiver::attach(Shared::from_segment(seg, Fingerprint::BYTES)?)
    }

    pub(super) fn attach(sh: Shared) -> Result<Receiver, OpenError> {
        let core = sh.core();
        let name = sh.seg.name().to_owned();
        peer::claim(sh.seg.fd(), &core.cons_state.0, CONSUMER, &name, "consumer")?;
        let cur = match ConsCursor::resume(core, sh.layout.cap, |p| sh.stamp_of(p)) {
            Ok(cur) => cur,
            Err(reason) => {
                peer::close(sh.seg.fd(), &core.cons_state.0, CONSUMER);
                return Err(segment::Error::corrupt("open ring", &name, reason).into());
            }
        };
        // After our claim: a producer gone before now, if we receive
        // nothing of it, is not the one we receive from.
        let stale = (
            peer::Stale::snapshot(sh.seg.fd(), &core.prod_state.0, PRODUCER),
            cur.head,
        );
        Ok(Receiver {
            cur,
            sh,
            strategy: WaitStrategy::default(),
            alive: peer::AliveCache::default(),
            unacked: 0,
            stale,
        })
    }

    /// Sets how this end waits when the ring is empty.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.sh.seg.name()
    }

    /// Messages waiting (a snapshot).
    pub fn len(&self) -> usize {
        self.sh.depth() as usize
    }

    /// Whether no message is waiting (a snapshot).
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

    /// What the producer is doing (one system call).
    pub fn peer(&self) -> PeerState {
        peer::status(self.sh.seg.fd(), &self.sh.core().prod_state.0, PRODUCER)
    }

    /// Receives a message, waiting for one. After the producer closes
    /// (or dies), the messages it sent are still delivered; then
    /// [`RecvError::Disconnected`] (or [`RecvError::SenderDied`]).
    ///
    /// A producer that had already closed or died when this receiver
    /// attached, and of which it received nothing (the ring was empty),
    /// does not end it: it waits for the next producer, whose close then
    /// ends it. With leftover messages, it receives them and then ends.
    pub fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        self.recv_with(Wait::Forever, <[u8]>::to_vec)
    }

    /// Receives a message if one is waiting ([`RecvError::Empty`] if not).
    pub fn try_recv(&mut self) -> Result<Vec<u8>, RecvError> {
        self.recv_with(Wait::No, <[u8]>::to_vec)
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.recv_with(Wait::timeout(timeout), <[u8]>::to_vec)
    }

    /// Receives a message, waiting until `deadline`.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Vec<u8>, RecvError> {
        self.recv_with(Wait::Until(deadline), <[u8]>::to_vec)
    }

    /// Zero-copy receive with [`Wait::No`].
    pub fn try_recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.recv_with(Wait::No, f)
    }

    /// Zero-copy receive: calls `f` on the message in place in the ring,
    /// then frees its slot.
    ///
    /// The slice points into shared memory that an honest producer does
    /// not touch until `f` returns; a hostile process with write access to
    /// the segment could change the bytes under it (never the bounds).
    #[inline]
    pub fn recv_with<R>(&mut self, wait: Wait, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        // The message to read is always the one at `head`, waited for or
        // not: its slot is computed once.
        let slot = self.sh.slot(self.cur.head);
        match self
            .cur
            .try_peek(self.sh.layout.cap, self.sh.stamp_word(slot))
        {
            Ok(_) => {}
            Err(Stuck::Corrupt(m)) => return Err(RecvError::Corrupt(m)),
            Err(Stuck::Blocked) => self.wait_message(wait)?,
        };
        // Relaxed: ordered after the Acquire load of the stamp that showed
        // this message (in `try_peek`).
        let len = u64::from(self.sh.len_word(slot).load(Ordering::Relaxed));
        if len > self.sh.layout.max {
            return Err(RecvError::Corrupt(format!(
                "message length {len} exceeds the maximum {}",
                self.sh.layout.max
            )));
        }
        // SAFETY:
        // - `slot + prefix + len <= slot + stride` (len checked against
        //   max, stride >= prefix + max): in bounds of the mapping;
        // - the producer wrote these bytes before its Release store of the
        //   stamp, which we loaded with Acquire, and will not touch the
        //   slot until our Release of `head` below (after `f` returns).
        let bytes = unsafe {
            std::slice::from_raw_parts(slot.add(self.sh.layout.prefix as usize), len as usize)
        };
        let r = f(bytes);
        let core = self.sh.core();
        self.cur.release(core);
        notify_armed(
            &core.space_seq.0,
            &core.prod_sleepers.0,
            &core.space_armed.0,
        );
        Ok(r)
    }

    /// Waits (under `wait`) until the message at `head` is published;
    /// `Ok` means it is, and its stamp was loaded with Acquire.
    #[cold]
    pub(super) fn wait_message(&mut self, wait: Wait) -> Result<(), RecvError> {
        let Receiver {
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
        // Nothing received since we attached: an end from before is not
        // ours. (Checked here, off the hot path: `head` moves only when we
        // receive.)
        let stale = if cur.head == stale.1 {
            stale.0
        } else {
            peer::Stale::NONE
        };
        // `head` does not move while we wait: one stamp word to poll.
        let stamp = sh.stamp_of(cur.head);
        let r = wait_loop_armed(
            *strategy,
            wait,
            &core.data_seq.0,
            &core.cons_sleepers.0,
            &core.data_armed.0,
            || match cur.try_peek(cap, stamp) {
                Ok(_) => Some(Ok(())),
                Err(Stuck::Blocked) => None,
                Err(Stuck::Corrupt(m)) => Some(Err(RecvError::Corrupt(m))),
            },
            || match alive.status(wait == Wait::No, fd, &core.prod_state.0, PRODUCER, stale) {
                PeerState::Closed => Some(Err(RecvError::Disconnected)),
                PeerState::Dead => Some(Err(RecvError::SenderDied)),
                PeerState::NotYet | PeerState::Alive => None,
            },
        );
        match r {
            Some(Ok(())) => Ok(()),
            // The producer closed or died: deliver what it committed
            // before (its last stamp store happened before the close or
            // death we just observed).
            Some(Err(e @ (RecvError::Disconnected | RecvError::SenderDied))) => {
                match cur.try_peek(cap, stamp) {
                    Ok(_) => Ok(()),
                    Err(Stuck::Corrupt(m)) => Err(RecvError::Corrupt(m)),
                    Err(Stuck::Blocked) => Err(e),
                }
            }
            Some(Err(e)) => Err(e),
            None if wait == Wait::No => Err(RecvError::Empty),
            None => Err(RecvError::Timeout),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let core = self.sh.core();
        peer::close(self.sh.seg.fd(), &core.cons_state.0, CONSUMER);
        wake(&core.space_seq.0);
    }
}
