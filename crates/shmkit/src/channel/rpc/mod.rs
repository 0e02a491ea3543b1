//! Request/response between processes: a [`Server`] answers the calls of
//! up to `clients` [`Client`]s at a time, built on the SPSC [`ring`](super::ring)s.
//!
//! ```no_run
//! use shmkit::channel::rpc::{Client, RpcOptions, Server};
//!
//! // Process A: serve (here: echo in upper case).
//! let mut server = Server::create("upper", &RpcOptions::new())?;
//! # if false {
//! server.serve(|req: &[u8]| req.to_ascii_uppercase())?;
//! # }
//!
//! // Process B: call.
//! let mut client = Client::connect("upper")?;
//! assert_eq!(client.call(b"hi")?, b"HI");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! Each client *slot* `i` is a pair of byte rings, `NAME.rpc.req.i`
//! (client → server) and `NAME.rpc.rep.i` (server → client), plus one
//! semaphore `NAME.rpc.bell` that a client posts after each request so a
//! sleeping server wakes (one futex word for any number of clients; the
//! server then scans the slots). Per-client rings rather than one shared
//! multi-producer ring because:
//!
//! - the SPSC rings exist, are model-checked and lock-free; a shared ring
//!   would need a multi-producer commit protocol, and a client killed in
//!   the middle of it would block or corrupt everyone's requests;
//! - liveness comes for free: a client holds its slot's role locks (OFD
//!   locks, dropped by the kernel when it dies), so a dead client's slot
//!   is free for the next [`Client::connect`] at once, and the server's
//!   replies to it never block (see below); a dead server shows as
//!   [`RecvError::SenderDied`] on the reply ring: [`RpcError::ServerDied`];
//! - replies need no routing: each goes back on its client's own ring.
//!
//! Every message starts with a 16-byte header: the client's *session*
//! (random per connect) and the call's sequence number. A client discards
//! replies that are not for its current call: those of calls it gave up
//! on (`call_timeout`) and those addressed to a previous, dead holder of
//! its slot. The server replies with `try_send`, never waiting on a
//! client: a reply ring can only be full of stale replies of a dead or
//! timed-out client, and that reply is dropped.
//!
//! Limits: one call in flight per client (a client is `&mut` for the
//! whole call); at most `clients` clients at a time ([`RpcError::NoSlot`]
//! beyond); requests up to `max_request`, replies up to `max_reply` bytes.

mod client;
mod server;

pub use client::Client;
pub use server::{Server, Token};

use super::{OpenError, RecvError};
use crate::segment;

/// Header before every request and reply: session, then call number.
pub(crate) const HEADER: usize = 16;

/// Name of the request ring of slot `i`.
pub(crate) fn req_name(name: &str, i: u32) -> String {
    format!("{name}.rpc.req.{i}")
}

/// Name of the reply ring of slot `i`.
pub(crate) fn rep_name(name: &str, i: u32) -> String {
    format!("{name}.rpc.rep.{i}")
}

/// Name of the doorbell semaphore.
pub(crate) fn bell_name(name: &str) -> String {
    format!("{name}.rpc.bell")
}

pub(crate) fn encode_header(buf: &mut [u8], session: u64, seq: u64) {
    buf[..8].copy_from_slice(&session.to_le_bytes());
    buf[8..HEADER].copy_from_slice(&seq.to_le_bytes());
}

/// `(session, seq)` of a message, `None` if it is shorter than a header.
pub(crate) fn decode_header(msg: &[u8]) -> Option<(u64, u64)> {
    if msg.len() < HEADER {
        return None;
    }
    let session = u64::from_le_bytes(msg[..8].try_into().ok()?);
    let seq = u64::from_le_bytes(msg[8..HEADER].try_into().ok()?);
    Some((session, seq))
}

/// Creation parameters of a service.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    pub(crate) clients: u32,
    pub(crate) max_request: u64,
    pub(crate) max_reply: u64,
    pub(crate) remove_on_drop: bool,
    pub(crate) wait_strategy: crate::channel::WaitStrategy,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions::new()
    }
}

impl RpcOptions {
    /// 8 client slots, requests and replies up to 64 KiB, segments
    /// removed when the server is dropped, the default wait strategy.
    pub fn new() -> RpcOptions {
        RpcOptions {
            clients: 8,
            max_request: 64 << 10,
            max_reply: 64 << 10,
            remove_on_drop: true,
            wait_strategy: crate::channel::WaitStrategy::default(),
        }
    }

    /// How the server waits for a request, as a ring end waits
    /// (default `SpinThenSleep { spins: 200 }`): with `SpinThenSleep` it
    /// watches its request rings that many times (each a load per slot)
    /// before it sleeps on the doorbell; `Sleep` sleeps at once; `BusyPoll`
    /// never sleeps (blocking server only; the async server caps its spin,
    /// see `docs/async.md`).
    pub fn wait_strategy(mut self, strategy: crate::channel::WaitStrategy) -> Self {
        self.wait_strategy = strategy;
        self
    }

    /// Clients served at the same time (1..=1024).
    pub fn clients(mut self, n: u32) -> Self {
        self.clients = n;
        self
    }

    /// Largest request payload, in bytes.
    pub fn max_request(mut self, bytes: u64) -> Self {
        self.max_request = bytes;
        self
    }

    /// Largest reply payload, in bytes.
    pub fn max_reply(mut self, bytes: u64) -> Self {
        self.max_reply = bytes;
        self
    }

    /// Whether dropping the server removes the service's segments
    /// (default `true`; a killed server leaves them for its successor).
    pub fn remove_on_drop(mut self, yes: bool) -> Self {
        self.remove_on_drop = yes;
        self
    }
}

/// Why a call (or serving) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The server died (before or during the call): no reply will come.
    /// The client stays usable: a restarted server answers later calls.
    #[error("the server died")]
    ServerDied,
    /// The server closed the service cleanly.
    #[error("the server closed the service")]
    ServerClosed,
    /// No reply before the deadline (`call_timeout`). A late reply is
    /// discarded by the next call.
    #[error("timed out waiting for the reply")]
    Timeout,
    /// The request or reply exceeds the service's maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Every client slot is taken by a live client.
    #[error("{name:?}: all {slots} client slots are taken")]
    NoSlot {
        /// Service name.
        name: String,
        /// Slots of the service.
        slots: u32,
    },
    /// A server with this name is already running.
    #[error("{0:?}: a live server already serves this name")]
    ServerRunning(String),
    /// The rings failed to open or create.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The doorbell semaphore failed to open or create.
    #[error(transparent)]
    Segment(#[from] segment::Error),
    /// Shared state failed a check: a peer is broken or hostile.
    #[error("corrupt service: {0}")]
    Corrupt(String),
}

impl RpcError {
    pub(crate) fn from_recv(e: RecvError) -> RpcError {
        match e {
            RecvError::SenderDied => RpcError::ServerDied,
            RecvError::Disconnected => RpcError::ServerClosed,
            RecvError::Timeout | RecvError::Empty => RpcError::Timeout,
            RecvError::Corrupt(m) => RpcError::Corrupt(m),
        }
    }
}
