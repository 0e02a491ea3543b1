//! The serving side of a service.

use super::*;
use crate::channel::ring::{Receiver, RingOptions, Sender};
use crate::channel::{SendError, Wait, WaitStrategy};
use crate::sync::{NamedSemaphore, WaitError};

/// Depth of each request and reply ring: one call in flight per client,
/// plus room for the stale messages of calls given up on.
const DEPTH: u64 = 4;

/// One client slot: its request ring (we consume) and reply ring (we
/// produce).
#[derive(Debug)]
struct Slot {
    req: Receiver,
    rep: Sender,
}

/// Where a reply goes: returned with each request by
/// [`Server::recv_with`], given back to [`Server::reply`] /
/// [`Server::reply_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    slot: u32,
    session: u64,
    seq: u64,
}

/// The serving side of a service: answers the calls of up to `clients`
/// [`Client`]s. One server per name at a time.
#[derive(Debug)]
pub struct Server {
    name: String,
    slots: Vec<Slot>,
    bell: NamedSemaphore,
    /// Where the next scan starts (round robin: no client starves).
    next: usize,
    max_reply: usize,
    remove_on_drop: bool,
    strategy: WaitStrategy,
}

fn is_exists(e: &OpenError) -> bool {
    matches!(e, OpenError::Segment(segment::Error::AlreadyExists { .. }))
}

fn role_taken(name: &str, e: OpenError) -> RpcError {
    match e {
        OpenError::RoleTaken { .. } => RpcError::ServerRunning(name.to_owned()),
        e => RpcError::Open(e),
    }
}

impl Server {
    /// Creates the service `name` (or takes over the segments a dead
    /// server left) and becomes its server. Fails with
    /// [`RpcError::ServerRunning`] if a live server has it.
    pub fn create(name: &str, options: &RpcOptions) -> Result<Server, RpcError> {
        if !(1..=1024).contains(&options.clients) {
            return Err(RpcError::Open(OpenError::InvalidConfig {
                name: name.to_owned(),
                reason: format!("clients {} not in 1..=1024", options.clients),
            }));
        }
        let bell = NamedSemaphore::open_or_create(&bell_name(name), 0)?;
        let mut slots = Vec::with_capacity(options.clients as usize);
        for i in 0..options.clients {
            let (rq, rp) = (req_name(name, i), rep_name(name, i));
            let req_opts = RingOptions::new(DEPTH, options.max_request + HEADER as u64);
            let req = match Receiver::create(&rq, &req_opts) {
                Err(e) if is_exists(&e) => Receiver::open(&rq),
                r => r,
            }
            .map_err(|e| role_taken(name, e))?;
            let rep_opts = RingOptions::new(DEPTH, options.max_reply + HEADER as u64);
            let rep = match Sender::create(&rp, &rep_opts) {
                Err(e) if is_exists(&e) => Sender::open(&rp),
                r => r,
            }
            .map_err(|e| role_taken(name, e))?;
            slots.push(Slot { req, rep });
        }
        let max_reply = slots
            .iter()
            .map(|s| s.rep.max_message() - HEADER)
            .min()
            .unwrap_or(0);
        Ok(Server {
            name: name.to_owned(),
            slots,
            bell,
            next: 0,
            max_reply,
            remove_on_drop: options.remove_on_drop,
            strategy: options.wait_strategy,
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Client slots.
    pub fn clients(&self) -> usize {
        self.slots.len()
    }

    /// Sets how the server waits for a request (see
    /// [`RpcOptions::wait_strategy`]).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Watches the request rings for up to `spins` rounds (a load of two
    /// indices per slot, no system call): whether a request showed up.
    fn spin(&self, spins: u64) -> bool {
        for _ in 0..spins {
            crate::primitive::spin_hint();
            if self.slots.iter().any(|s| !s.req.is_empty()) {
                return true;
            }
        }
        false
    }

    /// After a request was found without a wait on the doorbell: take its
    /// unit if it is there, so that the doorbell's count does not grow
    /// with every request a spin or scan caught (it stays at most the
    /// requests posted and not yet found). Safe because a client commits
    /// its request before it posts: a unit taken here belongs to a request
    /// already visible, which the next scan (before any sleep) finds.
    fn take_unit(&self) {
        let _ = self.bell.try_wait();
    }

    /// One pass over the slots: the first request found, handed to `f` in
    /// place. Requests from dead or closed clients, and malformed ones,
    /// are skipped: a client cannot stop the server.
    pub(crate) fn scan<R>(
        &mut self,
        f: &mut Option<impl FnOnce(&[u8]) -> R>,
    ) -> Option<(Token, R)> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let r = self.slots[i].req.try_recv_with(|m| {
                let (session, seq) = decode_header(m)?;
                let f = f.take().expect("called once");
                Some((session, seq, f(&m[HEADER..])))
            });
            if let Ok(Some((session, seq, r))) = r {
                self.next = (i + 1) % n;
                let token = Token {
                    slot: i as u32,
                    session,
                    seq,
                };
                return Some((token, r));
            }
            // Empty, a gone client (its slot is free for the next one),
            // a malformed message (dropped) or a corrupt ring: next slot.
        }
        None
    }

    /// Receives the next request, waiting as `wait` says, and calls `f` on
    /// its payload in place (zero-copy). Returns the [`Token`] to reply
    /// with and `f`'s result; [`RpcError::Timeout`] if none came in time.
    pub fn recv_with<R>(
        &mut self,
        wait: Wait,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<(Token, R), RpcError> {
        let mut f = Some(f);
        // Whether the last unit taken was taken by a wait in this call.
        let mut waited = false;
        let spins = match self.strategy {
            WaitStrategy::Sleep => 0,
            WaitStrategy::SpinThenSleep { spins } => u64::from(spins),
            WaitStrategy::BusyPoll => u64::MAX,
        };
        let mut spun = false;
        loop {
            if let Some(r) = self.scan(&mut f) {
                if !waited {
                    self.take_unit();
                }
                return Ok(r);
            }
            if wait == Wait::No {
                return Err(RpcError::Timeout);
            }
            // Spin first, as a ring end does (once per call: a request
            // seen goes back to the scan). BusyPoll never sleeps but
            // still honours the deadline.
            if !spun && spins > 0 {
                spun = spins != u64::MAX;
                if self.spin(spins.min(1 << 16)) {
                    continue;
                }
                if !spun {
                    if let Wait::Until(d) = wait {
                        if std::time::Instant::now() >= d {
                            return Err(RpcError::Timeout);
                        }
                    }
                    continue;
                }
            }
            // Nothing: sleep on the doorbell. Its count is at least the
            // number of requests posted since we last took a unit, so a
            // request sent after our scan always wakes us.
            let r = match wait {
                Wait::No => return Err(RpcError::Timeout),
                Wait::Until(d) => self.bell.wait_deadline(d),
                Wait::Forever => self.bell.wait(),
            };
            waited = r.is_ok();
            match r {
                Ok(()) => {}
                Err(WaitError::Timeout) | Err(WaitError::WouldBlock) => {
                    return match self.scan(&mut f) {
                        Some(r) => Ok(r),
                        None => Err(RpcError::Timeout),
                    };
                }
                Err(WaitError::Corrupt(c)) => return Err(RpcError::Corrupt(c.to_string())),
            }
        }
    }

    /// Receives the next request as a copy.
    pub fn recv(&mut self, wait: Wait) -> Result<(Token, Vec<u8>), RpcError> {
        self.recv_with(wait, <[u8]>::to_vec)
    }

    /// Replies to the request of `token`.
    pub fn reply(&mut self, token: Token, reply: &[u8]) -> Result<(), RpcError> {
        self.reply_with(token, reply.len(), |b| b.copy_from_slice(reply))
    }

    /// Zero-copy reply: `fill` writes the `len` bytes of the reply in
    /// place in the client's reply ring. Never waits: a reply to a client
    /// that is gone or gave up is dropped (`Ok`).
    pub fn reply_with(
        &mut self,
        token: Token,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), RpcError> {
        if len > self.max_reply {
            return Err(RpcError::TooLarge {
                len,
                max: self.max_reply,
            });
        }
        let slot = self
            .slots
            .get_mut(token.slot as usize)
            .ok_or_else(|| RpcError::Corrupt(format!("no slot {}", token.slot)))?;
        match slot.rep.send_with(len + HEADER, Wait::No, |b| {
            encode_header(b, token.session, token.seq);
            fill(&mut b[HEADER..]);
        }) {
            Ok(()) | Err(SendError::Full) | Err(SendError::Disconnected) => Ok(()),
            Err(SendError::Corrupt(m)) => Err(RpcError::Corrupt(m)),
            Err(e) => Err(RpcError::Corrupt(e.to_string())),
        }
    }

    /// Serves one request with `handler` (request in, reply out), waiting
    /// as `wait` says.
    pub fn serve_one(
        &mut self,
        wait: Wait,
        handler: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<(), RpcError> {
        let (token, reply) = self.recv_with(wait, handler)?;
        self.reply(token, &reply)
    }

    /// Serves requests for ever with `handler`; returns only on an error
    /// of the service itself (corruption).
    pub fn serve(&mut self, mut handler: impl FnMut(&[u8]) -> Vec<u8>) -> Result<(), RpcError> {
        loop {
            let (token, reply) = self.recv_with(Wait::Forever, &mut handler)?;
            match self.reply(token, &reply) {
                // A reply too large for the ring: the caller times out or
                // sees nothing; keep serving the others.
                Err(RpcError::TooLarge { .. }) => {}
                r => r?,
            }
        }
    }

    /// Removes the segments of the service `name` (all slots found).
    pub fn remove(name: &str) -> Result<(), RpcError> {
        let _ = segment::remove(&bell_name(name));
        for i in 0.. {
            let a = segment::remove(&req_name(name, i));
            let b = segment::remove(&rep_name(name, i));
            if a.is_err() && b.is_err() {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = Server::remove(&self.name);
        }
    }
}

#[cfg(all(feature = "async", not(loom)))]
impl Server {
    /// Async [`recv_with`](Self::recv_with) waiting for ever.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a request is taken in the poll that returns it, or not
    /// at all.
    pub async fn recv_with_async<R>(
        &mut self,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<(Token, R), RpcError> {
        let mut f = Some(f);
        let mut waited = false;
        let spins = u64::from(crate::aio::park::spins_for(self.strategy));
        let mut spun = false;
        loop {
            if let Some(r) = self.scan(&mut f) {
                if !waited {
                    self.take_unit();
                }
                return Ok(r);
            }
            // A bounded spin (the strategy's, capped: an executor thread
            // must not be held long), then the doorbell.
            if !spun && spins > 0 {
                spun = true;
                if self.spin(spins) {
                    continue;
                }
            }
            match self.bell.wait_async().await {
                Ok(()) => waited = true,
                Err(e) => return Err(RpcError::Corrupt(e.to_string())),
            }
        }
    }

    /// Async [`serve`](Self::serve).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only awaits while no request is taken; a request
    /// taken is handled and answered in the same poll, so dropping the
    /// future loses no request and leaves none unanswered.
    pub async fn serve_async(
        &mut self,
        mut handler: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> Result<(), RpcError> {
        loop {
            let (token, reply) = self.recv_with_async(&mut handler).await?;
            match self.reply(token, &reply) {
                Err(RpcError::TooLarge { .. }) => {}
                r => r?,
            }
        }
    }
}
