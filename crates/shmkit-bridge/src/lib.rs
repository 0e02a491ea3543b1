//! Bridge shmkit channels across machines over [Zenoh](https://zenoh.io).
//!
//! - [`export`]: read a local ring (as its consumer) or pub/sub channel (as
//!   a subscriber) and put every message to Zenoh under a key.
//! - [`import`]: subscribe to a key in Zenoh and deliver every sample into
//!   a local ring (as its producer) or pub/sub channel (as its publisher).
//!
//! Both are async functions over a [`zenoh::Session`] that you open
//! yourself (or with [`SessionOptions::open`]), so a Rust program can embed
//! the bridge; the `shmkit-bridge` binary wraps them.
//!
//! Semantics (details in `docs/bridge.md`):
//!
//! - Order is kept per key: one exporter, one Zenoh publisher, reliable
//!   TCP; the importer delivers samples in arrival order.
//! - A message passes whole or not at all (Zenoh reassembles fragments and
//!   drops an incomplete message; the local side publishes only complete
//!   copies), up to the local channel's maximum (16 MiB frames included).
//! - Back-pressure: [`Congestion::Block`] blocks end to end (a full ring
//!   on B stops the importer, which stops Zenoh's reader, TCP, the
//!   exporter's put, and finally A's sender); [`Congestion::Drop`] lets
//!   Zenoh drop under congestion, and the importer counts the lost messages
//!   from the sequence numbers ([`Stats::dropped`]).
//! - The exporter waits for a matching subscriber (an importer) before it
//!   takes a message from the local channel, so nothing is taken while
//!   nobody listens: A's sender blocks when the ring is full.
//! - The stream's end travels: when A's sender closes, the importer closes
//!   B's channel after the last message (B's receivers end normally).

#![warn(missing_docs)]

mod export;
mod import;
mod session;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use export::{export, export_with, Congestion, ExportOptions, Source};
pub use import::{import, import_with, ImportOptions, Sink};
pub use session::{Mode, SessionOptions};
pub use zenoh;

/// Why a bridge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The sending side closed the channel (exporter: A's local sender;
    /// importer: the remote stream's end marker), every message forwarded.
    Closed,
    /// The sending side died (exporter: A's local sender; importer: the
    /// remote exporter reported it); every whole message was forwarded.
    SenderDied,
    /// [`Shutdown::trigger`] was called.
    Shutdown,
}

/// Errors of the bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Zenoh operation failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Opening or creating the local channel failed.
    #[error(transparent)]
    Open(#[from] shmkit::channel::OpenError),
    /// The local channel failed (corrupt shared memory).
    #[error("local channel {name:?}: {msg}")]
    Local {
        /// Channel name.
        name: String,
        /// What happened.
        msg: String,
    },
}

/// Counters of one bridge direction, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages forwarded (exporter: put to Zenoh; importer: delivered).
    pub messages: AtomicU64,
    /// Payload bytes forwarded.
    pub bytes: AtomicU64,
    /// Importer: messages lost on the way (sequence gaps: congestion
    /// control `Drop`, or a bridge killed with messages in flight).
    pub dropped: AtomicU64,
    /// Exporter: messages the local pub/sub channel reported missed
    /// (drop-oldest on A, before the bridge saw them).
    pub missed_local: AtomicU64,
    /// Importer: samples refused by the local channel (larger than its
    /// maximum message), each logged as an error.
    pub rejected: AtomicU64,
}

impl Stats {
    /// One line for logs: `messages=.. bytes=.. dropped=.. ...`.
    pub fn line(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "messages={} bytes={} dropped={} missed_local={} rejected={}",
            l(&self.messages),
            l(&self.bytes),
            l(&self.dropped),
            l(&self.missed_local),
            l(&self.rejected)
        )
    }

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        // Relaxed: independent counters, read for reporting only.
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A shared stop switch: [`trigger`](Shutdown::trigger) makes a running
/// [`export`]/[`import`] stop within about 100 ms, close its local
/// endpoint cleanly and return [`Ended::Shutdown`].
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Shutdown {
    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`trigger`](Shutdown::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once triggered.
    pub async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone, impossible while we hold it.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Sets a flag when dropped: stops a helper thread when the async function
/// that owns it returns or is cancelled.
pub(crate) struct StopOnDrop(pub(crate) Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // Relaxed: the helper polls the flag; no data is published with it.
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A random-enough stream id: time, pid and a counter mixed.
pub(crate) fn stream_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ ((std::process::id() as u64) << 32) ^ N.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
