//! Batches: many messages per shared-index store and per wake-up check.
//!
//! [`Sender::send_batch`] publishes each message through its slot's stamp
//! as soon as it is written (the consumer, which polls stamps, may start
//! on it at once), stores the shared `tail` once at the end and checks for
//! a sleeping consumer once. [`Receiver::recv_batch`] reads every waiting
//! message (up to a limit) in place and frees all their slots with one
//! `head` store and one check for a sleeping producer.
//!
//! Crash semantics are those of single messages: a producer killed inside
//! a batch published exactly the messages whose stamps it stored (a new
//! producer or consumer finds them by scanning stamps past `tail`); a
//! consumer killed inside a batch had freed none of them, so its successor
//! receives them again (at-least-once).

use super::*;

impl Sender {
    /// Sends messages from `msgs` in order, as many as the ring has room
    /// for, waiting (under `wait`) only while none fits. Returns how many
    /// were sent: at least 1 unless `msgs` is empty. Like
    /// [`std::io::Write::write`], call again with the rest.
    ///
    /// A message longer than `max_message` stops the batch before it: the
    /// count of those sent is returned, or [`SendError::TooLarge`] if it is
    /// the first.
    pub fn send_batch<M: AsRef<[u8]>>(
        &mut self,
        msgs: &[M],
        wait: Wait,
    ) -> Result<usize, SendError> {
        let Some(first) = msgs.first() else {
            return Ok(0);
        };
        let max = self.sh.layout.max;
        let first_len = first.as_ref().len();
        if first_len as u64 > max {
            return Err(SendError::TooLarge {
                len: first_len,
                max: max as usize,
            });
        }
        // Relaxed: an early, advisory check, as in `send_with` (a close
        // from before we attached does not count).
        let cons = self.sh.core().cons_state.0.load(Ordering::Relaxed);
        if self.stale.closed_since(cons) {
            return Err(SendError::Disconnected);
        }
        let mut pos = match self.cur.try_reserve(self.sh.core(), self.sh.layout.cap) {
            Ok(pos) => pos,
            Err(Stuck::Corrupt(m)) => return Err(SendError::Corrupt(m)),
            Err(Stuck::Blocked) => self.wait_room(wait)?,
        };
        let cap = self.sh.layout.cap;
        let prefix = self.sh.layout.prefix as usize;
        let mut sent = 0;
        loop {
            let msg = msgs[sent].as_ref();
            let slot = self.sh.slot(pos);
            // SAFETY:
            // - `slot + prefix + msg.len() <= slot + stride`: the length is
            //   at most `max` (checked above for the first message, below
            //   for the others) and `stride >= prefix + max`;
            // - the slot is ours: `pos < head + cap` (`try_reserve`), so
            //   the consumer is done with it, and it will not read it
            //   before the stamp store below; no other producer exists.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), slot.add(prefix), msg.len());
            }
            // Relaxed: published by the Release store of the stamp.
            self.sh
                .len_word(slot)
                .store(msg.len() as u32, Ordering::Relaxed);
            self.cur.stamp(self.sh.stamp_word(slot));
            sent += 1;
            let Some(next) = msgs.get(sent) else { break };
            if next.as_ref().len() as u64 > max {
                break;
            }
            pos = match self.cur.try_reserve(self.sh.core(), cap) {
                Ok(pos) => pos,
                Err(_) => break, // full (or corrupt: reported next call)
            };
        }
        let core = self.sh.core();
        self.cur.store_tail(core);
        notify_armed(&core.data_seq.0, &core.cons_sleepers.0, &core.data_armed.0);
        Ok(sent)
    }
}

impl Receiver {
    /// Receives up to `max` messages, waiting (under `wait`) for the
    /// first: calls `f` on each in place, in order, then frees all their
    /// slots at once. Returns how many `f` saw (at least 1 if `max > 0`).
    ///
    /// After the producer closes or dies, the messages it sent are still
    /// delivered; then [`RecvError::Disconnected`] or
    /// [`RecvError::SenderDied`], as for [`Receiver::recv`]. The views
    /// point into shared memory, as for [`Receiver::recv_with`].
    pub fn recv_batch(
        &mut self,
        max: usize,
        wait: Wait,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        if max == 0 {
            return Ok(0);
        }
        let cap = self.sh.layout.cap;
        let mut pos = match self.cur.try_peek(cap, self.sh.stamp_of(self.cur.head)) {
            Ok(pos) => pos,
            Err(Stuck::Corrupt(m)) => return Err(RecvError::Corrupt(m)),
            Err(Stuck::Blocked) => {
                self.wait_message(wait)?;
                self.cur.head
            }
        };
        let mut got = 0;
        let result = loop {
            let slot = self.sh.slot(pos);
            // Relaxed: ordered after the Acquire load of the stamp that
            // showed this message (in `try_peek`).
            let len = u64::from(self.sh.len_word(slot).load(Ordering::Relaxed));
            if len > self.sh.layout.max {
                break Err(RecvError::Corrupt(format!(
                    "message length {len} exceeds the maximum {}",
                    self.sh.layout.max
                )));
            }
            // SAFETY:
            // - `slot + prefix + len <= slot + stride` (len checked against
            //   max, stride >= prefix + max): in bounds of the mapping;
            // - the producer wrote these bytes before its Release store of
            //   the stamp, which we loaded with Acquire, and will not touch
            //   the slot before our Release store of `head` below.
            let bytes = unsafe {
                std::slice::from_raw_parts(slot.add(self.sh.layout.prefix as usize), len as usize)
            };
            f(bytes);
            self.cur.advance();
            got += 1;
            if got == max {
                break Ok(got);
            }
            pos = match self.cur.try_peek(cap, self.sh.stamp_of(self.cur.head)) {
                Ok(pos) => pos,
                Err(Stuck::Blocked) => break Ok(got),
                Err(Stuck::Corrupt(m)) => break Err(RecvError::Corrupt(m)),
            };
        };
        if got > 0 {
            let core = self.sh.core();
            self.cur.store_head(core);
            notify_armed(
                &core.space_seq.0,
                &core.prod_sleepers.0,
                &core.space_armed.0,
            );
        }
        match result {
            // Corruption after good messages: deliver those, report the
            // corruption on the next call (which finds it again).
            Err(_) if got > 0 => Ok(got),
            r => r,
        }
    }

    /// Receives every waiting message (at least one, waiting under `wait`)
    /// into `out` as owned copies; returns how many were added.
    pub fn drain_into(&mut self, out: &mut Vec<Vec<u8>>, wait: Wait) -> Result<usize, RecvError> {
        let cap = self.sh.layout.cap as usize;
        self.recv_batch(cap, wait, |b| out.push(b.to_vec()))
    }
}
