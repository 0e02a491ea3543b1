//! The calling side of a service.

use std::time::Duration;

use super::*;
use crate::channel::ring::{Receiver, Sender};
use crate::channel::{PeerState, SendError, Wait};
use crate::sync::NamedSemaphore;

/// The calling side of a service: holds one client slot of the
/// [`Server`] (freed when it is dropped, or by the kernel when its process
/// dies) and makes one call at a time.
#[derive(Debug)]
pub struct Client {
    name: String,
    slot: u32,
    req: Sender,
    rep: Receiver,
    bell: NamedSemaphore,
    session: u64,
    seq: u64,
}

/// A session number unlikely to repeat across processes and connects.
fn new_session() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Relaxed: only uniqueness within the process matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    (u64::from(std::process::id()) << 40)
        ^ t.rotate_left(17)
        ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Client {
    /// Connects to the service `name`, taking its first free client slot.
    /// [`RpcError::NoSlot`] if every slot has a live client; a segment
    /// `NotFound` error if no server ever created the service.
    pub fn connect(name: &str) -> Result<Client, RpcError> {
        let bell = NamedSemaphore::open(&bell_name(name))?;
        let mut i = 0;
        loop {
            let req = match Sender::open(&req_name(name, i)) {
                Ok(s) => s,
                Err(OpenError::RoleTaken { .. }) => {
                    i += 1;
                    continue;
                }
                Err(OpenError::Segment(e)) if e.is_not_found() && i > 0 => {
                    return Err(RpcError::NoSlot {
                        name: name.to_owned(),
                        slots: i,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let mut rep = match Receiver::open(&rep_name(name, i)) {
                Ok(r) => r,
                // A client between its two claims, or dying: next slot.
                Err(OpenError::RoleTaken { .. }) => {
                    i += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Replies left for a previous holder of the slot: discard.
            while rep.try_recv_with(|_| ()).is_ok() {}
            return Ok(Client {
                name: name.to_owned(),
                slot: i,
                req,
                rep,
                bell,
                session: new_session(),
                seq: 0,
            });
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets how the client waits for its reply (and for room in its
    /// request ring), as a ring end (default: `SpinThenSleep { spins: 200 }`).
    pub fn set_wait_strategy(&mut self, strategy: crate::channel::WaitStrategy) {
        self.req.set_wait_strategy(strategy);
        self.rep.set_wait_strategy(strategy);
    }

    /// The client slot this client holds.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Largest request payload.
    pub fn max_request(&self) -> usize {
        self.req.max_message() - HEADER
    }

    /// Calls the service with `req` and waits for the reply.
    pub fn call(&mut self, req: &[u8]) -> Result<Vec<u8>, RpcError> {
        self.call_with(
            req.len(),
            Wait::Forever,
            |b| b.copy_from_slice(req),
            <[u8]>::to_vec,
        )
    }

    /// [`call`](Self::call), giving up with [`RpcError::Timeout`] after
    /// `timeout` (for sending and for the reply together).
    pub fn call_timeout(&mut self, req: &[u8], timeout: Duration) -> Result<Vec<u8>, RpcError> {
        self.call_with(
            req.len(),
            Wait::timeout(timeout),
            |b| b.copy_from_slice(req),
            <[u8]>::to_vec,
        )
    }

    /// Zero-copy call: `fill` writes the `len` bytes of the request in
    /// place in the request ring; `on_reply` reads the reply in place in
    /// the reply ring (trusted servers only: see "Trust" in
    /// [`crate::channel`]).
    pub fn call_with<R>(
        &mut self,
        len: usize,
        wait: Wait,
        fill: impl FnOnce(&mut [u8]),
        on_reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RpcError> {
        let max = self.max_request();
        if len > max {
            return Err(RpcError::TooLarge { len, max });
        }
        self.seq += 1;
        let (session, seq) = (self.session, self.seq);
        self.req
            .send_with(len + HEADER, wait, |b| {
                encode_header(b, session, seq);
                fill(&mut b[HEADER..]);
            })
            .map_err(|e| self.send_error(e))?;
        self.ring_bell();
        self.await_reply(wait, on_reply)
    }

    fn ring_bell(&self) {
        // An overflowing count (2^31 unserved posts) already wakes the
        // server; a corrupt bell leaves it to its slices.
        let _ = self.bell.post();
    }

    fn await_reply<R>(
        &mut self,
        wait: Wait,
        on_reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RpcError> {
        let (session, seq) = (self.session, self.seq);
        let mut on_reply = Some(on_reply);
        loop {
            let r = self.rep.recv_with(wait, |m| match decode_header(m) {
                Some((s, q)) if s == session && q == seq => {
                    Some((on_reply.take().expect("called once"))(&m[HEADER..]))
                }
                // A reply to a call given up on, or to a previous holder
                // of this slot: discard.
                _ => None,
            });
            match r {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => continue,
                Err(e) => return Err(RpcError::from_recv(e)),
            }
        }
    }

    fn send_error(&self, e: SendError) -> RpcError {
        match e {
            SendError::Disconnected => match self.req.peer() {
                PeerState::Closed => RpcError::ServerClosed,
                _ => RpcError::ServerDied,
            },
            SendError::Timeout | SendError::Full => RpcError::Timeout,
            SendError::TooLarge { len, max } => RpcError::TooLarge {
                len: len.saturating_sub(HEADER),
                max: max.saturating_sub(HEADER),
            },
            SendError::Corrupt(m) => RpcError::Corrupt(m),
        }
    }
}

#[cfg(all(feature = "async", not(loom)))]
impl Client {
    /// Async [`call`](Self::call). The request is copied once more (into
    /// a header-prefixed buffer) than in the blocking path.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that matters for a call: a dropped
    /// future may have sent the request, and the server may run it; its
    /// reply is discarded by the next call. No slot or registration leaks.
    pub async fn call_async(&mut self, req: &[u8]) -> Result<Vec<u8>, RpcError> {
        let max = self.max_request();
        if req.len() > max {
            return Err(RpcError::TooLarge {
                len: req.len(),
                max,
            });
        }
        self.seq += 1;
        let (session, seq) = (self.session, self.seq);
        let mut buf = vec![0u8; HEADER + req.len()];
        encode_header(&mut buf, session, seq);
        buf[HEADER..].copy_from_slice(req);
        if let Err(e) = self.req.send_async(&buf).await {
            return Err(self.send_error(e));
        }
        self.ring_bell();
        loop {
            let r = self
                .rep
                .recv_with_async(move |m: &[u8]| match decode_header(m) {
                    Some((s, q)) if s == session && q == seq => Some(m[HEADER..].to_vec()),
                    _ => None,
                })
                .await;
            match r {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => continue,
                Err(e) => return Err(RpcError::from_recv(e)),
            }
        }
    }
}
