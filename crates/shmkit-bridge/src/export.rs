//! Local channel → Zenoh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmkit::channel::pubsub::Subscriber;
use shmkit::channel::ring::Receiver;
use shmkit::channel::{PeerState, RecvError, Wait};
use tokio::sync::oneshot;
use zenoh::bytes::ZBytes;
use zenoh::handlers::{FifoChannel, FifoChannelHandler};
use zenoh::pubsub::Publisher;
use zenoh::pubsub::Subscriber as ZSubscriber;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::{Session, Wait as _};

use crate::wire::{Header, Kind};
use crate::{Ended, Error, Shutdown, Stats, StopOnDrop};

/// How often a blocked helper re-checks the stop flag.
const SLICE: Duration = Duration::from_millis(100);

/// The local end an exporter reads.
pub enum Source {
    /// A ring, as its consumer.
    Ring(Receiver),
    /// A pub/sub channel, as one subscriber.
    PubSub(Subscriber),
}

impl From<Receiver> for Source {
    fn from(r: Receiver) -> Source {
        Source::Ring(r)
    }
}

impl From<Subscriber> for Source {
    fn from(s: Subscriber) -> Source {
        Source::PubSub(s)
    }
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Ring(r) => r.name().to_owned(),
            Source::PubSub(s) => format!("pub/sub subscriber #{}", s.index()),
        }
    }
}

/// Zenoh congestion control of the exporter's publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// Block the exporter when Zenoh's queue is full (back-pressure end to
    /// end). For rings and `Block` pub/sub channels.
    #[default]
    Block,
    /// Let Zenoh drop messages under congestion; the importer counts them.
    /// For drop-oldest pub/sub channels.
    Drop,
}

/// Options of [`export_with`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Congestion control (default [`Congestion::Block`]).
    pub congestion: Congestion,
    /// Take a message from the local channel only while some subscriber
    /// (an importer) matches the key (default true). Without it, messages
    /// put while nobody listens are lost.
    pub wait_for_importer: bool,
    /// Counters, shared with the caller.
    pub stats: Arc<Stats>,
    /// Stop switch.
    pub shutdown: Shutdown,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            congestion: Congestion::Block,
            wait_for_importer: true,
            stats: Arc::default(),
            shutdown: Shutdown::default(),
        }
    }
}

/// Forwards every message of `source` to Zenoh under `key` until the local
/// sender closes ([`Ended::Closed`]) or dies ([`Ended::SenderDied`]); the
/// end is forwarded too. Blocking congestion control, waits for an
/// importer. See [`export_with`].
pub async fn export(
    session: &Session,
    source: impl Into<Source>,
    key: &str,
) -> Result<Ended, Error> {
    export_with(session, source, key, ExportOptions::default()).await
}

/// [`export`] with options.
///
/// The forwarding runs on a thread of its own (a `Block` put can block for
/// as long as the far side is slow, and Zenoh's put blocks its caller).
/// [`Shutdown::trigger`] stops it between messages (at most a 100 ms
/// receive slice) and waits up to 2 s for it, so the local endpoint is
/// closed when this returns; a thread still stuck in a blocked put after
/// that is left to finish on its own. Dropping the future also stops it.
///
/// Messages of 64 KiB and more are put zero-copy under
/// [`Congestion::Block`]: Zenoh reads them in their slot of the local
/// channel (copying them once into its TX batches, as for any payload),
/// and the slot is freed only when Zenoh drops the payload, normally
/// inside `put`. A subscriber of `session` itself that keeps such a
/// sample keeps the slot (and the forwarding thread) with it. Shorter
/// messages, and every message under [`Congestion::Drop`], are copied out
/// of their slot before the put.
pub async fn export_with(
    session: &Session,
    source: impl Into<Source>,
    key: &str,
    opts: ExportOptions,
) -> Result<Ended, Error> {
    let source = source.into();
    let name = source.name();
    let cc = match opts.congestion {
        Congestion::Block => CongestionControl::Block,
        Congestion::Drop => CongestionControl::Drop,
    };
    let publisher = session
        .declare_publisher(key.to_owned())
        .congestion_control(cc)
        .await
        .map_err(|e| Error::Zenoh(format!("declaring publisher {key:?}: {e}")))?;

    // Whether an importer listens, kept current by a matching listener
    // that lives as long as the publisher.
    let matching = Arc::new(AtomicBool::new(false));
    let m2 = matching.clone();
    publisher
        .matching_listener()
        .callback(move |s| m2.store(s.matching(), Ordering::Release))
        .background()
        .await
        .map_err(|e| Error::Zenoh(format!("matching listener {key:?}: {e}")))?;
    let now = publisher
        .matching_status()
        .await
        .map_err(|e| Error::Zenoh(format!("matching status {key:?}: {e}")))?
        .matching();
    // Release: a plain flag, as the listener's stores.
    matching.fetch_or(now, Ordering::Release);

    let stream = crate::stream_id();
    // The importer acknowledges the end of the stream once it delivered
    // everything: closing the session earlier could discard data still
    // queued in Zenoh.
    let ack = session
        .declare_subscriber(crate::wire::ack_key(stream))
        .with(FifoChannel::new(4))
        .await
        .map_err(|e| Error::Zenoh(format!("declaring the end-of-stream subscriber: {e}")))?;

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (done_tx, mut done_rx) = oneshot::channel();
    let fwd = Forwarder {
        source,
        publisher,
        stream,
        stop: stop.clone(),
        gate: opts.wait_for_importer.then(|| matching.clone()),
        stats: opts.stats.clone(),
        key: key.to_owned(),
        congestion: opts.congestion,
    };
    std::thread::Builder::new()
        .name(format!("export {name}"))
        .spawn(move || {
            let _ = done_tx.send(fwd.run());
        })
        .map_err(|e| Error::Local {
            name: name.clone(),
            msg: format!("spawning the forwarding thread: {e}"),
        })?;
    tracing::info!(channel = %name, key, stream = format_args!("{stream:016x}"), "exporting");

    let result = tokio::select! {
        r = &mut done_rx => r.unwrap_or_else(|_| Err(Error::Local {
            name: name.clone(),
            msg: "the forwarding thread stopped unexpectedly".into(),
        })),
        _ = opts.shutdown.triggered() => {
            // Relaxed: a plain stop request, polled by the thread.
            stop.store(true, Ordering::Relaxed);
            if tokio::time::timeout(Duration::from_secs(2), &mut done_rx).await.is_err() {
                tracing::warn!(channel = %name, "the forwarding thread is blocked in Zenoh; not waiting for it");
            }
            Ok(Ended::Shutdown)
        }
    };
    let result = match result {
        Ok(end @ (Ended::Closed | Ended::SenderDied)) => {
            wait_for_ack(&ack, &matching, &opts.shutdown, key).await;
            Ok(end)
        }
        r => r,
    };
    match &result {
        Ok(e) => {
            tracing::info!(channel = %name, key, ended = ?e, stats = %opts.stats.line(), "export finished")
        }
        Err(e) => tracing::error!(channel = %name, key, error = %e, "export failed"),
    }
    result
}

/// How long the exporter waits for an importer to acknowledge the end.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until an importer acknowledges the end of the stream, no
/// importer matches any more, shutdown, or [`ACK_TIMEOUT`].
async fn wait_for_ack(
    ack: &ZSubscriber<FifoChannelHandler<Sample>>,
    matching: &AtomicBool,
    shutdown: &Shutdown,
    key: &str,
) {
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    loop {
        tokio::select! {
            r = ack.recv_async() => {
                if r.is_ok() {
                    tracing::debug!(key, "an importer acknowledged the end of the stream");
                }
                return;
            }
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                // Acquire: pairs with the listener's Release (plain flag).
                if !matching.load(Ordering::Acquire) {
                    tracing::warn!(key, "no importer left to acknowledge the end of the stream");
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(key, "no importer acknowledged the end of the stream within {ACK_TIMEOUT:?}");
                    return;
                }
            }
        }
    }
}

/// The forwarding thread's state: local channel → Zenoh put.
struct Forwarder {
    source: Source,
    publisher: Publisher<'static>,
    stream: u64,
    stop: Arc<AtomicBool>,
    /// Open while an importer matches (when waiting for one).
    gate: Option<Arc<AtomicBool>>,
    stats: Arc<Stats>,
    key: String,
    congestion: Congestion,
}

impl Forwarder {
    fn stopping(&self) -> bool {
        // Relaxed: a plain stop request, polled.
        self.stop.load(Ordering::Relaxed)
    }

    /// A sender that closed the channel (empty) before we attached is a
    /// previous stream's: wait for a new sender rather than forward an
    /// empty stream that ends at once.
    fn wait_for_a_new_sender(&self) {
        let (state, empty) = match &self.source {
            Source::Ring(r) => (r.peer(), r.is_empty()),
            Source::PubSub(s) => (s.peer(), s.is_empty()),
        };
        if state != PeerState::Closed || !empty {
            return;
        }
        tracing::info!(channel = %self.source.name(), "the local sender closed before the bridge attached: waiting for a new one");
        while !self.stopping() {
            let state = match &self.source {
                Source::Ring(r) => r.peer(),
                Source::PubSub(s) => s.peer(),
            };
            if state != PeerState::Closed {
                return;
            }
            std::thread::sleep(SLICE);
        }
    }

    /// Takes a message only when the gate is open, puts it, until the
    /// local sender closes or dies, or stop.
    fn run(mut self) -> Result<Ended, Error> {
        let mut seq = 0u64;
        let mut held = false;
        self.wait_for_a_new_sender();
        // Zero-copy only under `Block`: with `Drop`, Zenoh may give up on a
        // fragmented message and keep a reference to its buffer until the
        // next fragmented one, which the forwarder, waiting for the slot,
        // would never send (see `Out::take`).
        let zero_copy = self.congestion == Congestion::Block;
        loop {
            if self.stopping() {
                return Ok(Ended::Shutdown);
            }
            if let Some(g) = &self.gate {
                // Acquire: pairs with the listener's Release (plain flag).
                if !g.load(Ordering::Acquire) {
                    if !held {
                        tracing::info!(key = %self.key, "no importer matches the key: holding the local channel");
                        held = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                if held {
                    tracing::info!(key = %self.key, "an importer matches: forwarding");
                    held = false;
                }
            }
            let out = Out {
                publisher: &self.publisher,
                header: Header {
                    stream: self.stream,
                    seq,
                    kind: Kind::Data,
                },
                zero_copy,
                key: &self.key,
            };
            // The message is put while its slot is held (zero-copy) or
            // copied out and put after the slot is freed (`Taken::Copy`).
            let r = match &mut self.source {
                Source::Ring(r) => r
                    .recv_with(Wait::timeout(SLICE), |m| out.take(m))
                    .map(|t| (t, 0)),
                Source::PubSub(s) => s
                    .recv_wait(Wait::timeout(SLICE))
                    .map(|sample| (out.take(&sample), sample.missed())),
            };
            let (taken, kind) = match r {
                Ok((taken, missed)) => {
                    if missed > 0 {
                        Stats::add(&self.stats.missed_local, missed);
                        tracing::warn!(
                            missed,
                            "the local channel dropped messages before the bridge read them"
                        );
                    }
                    (taken, Kind::Data)
                }
                Err(RecvError::Timeout) | Err(RecvError::Empty) => continue,
                Err(RecvError::Disconnected) => (Taken::Copy(Vec::new()), Kind::End),
                Err(RecvError::SenderDied) => (Taken::Copy(Vec::new()), Kind::Died),
                Err(e) => {
                    return Err(Error::Local {
                        name: self.source.name(),
                        msg: e.to_string(),
                    })
                }
            };
            let len = match taken {
                Taken::Put(len, r) => r.map(|()| len)?,
                Taken::Copy(payload) => {
                    let out = Out {
                        header: Header {
                            stream: self.stream,
                            seq,
                            kind,
                        },
                        ..out
                    };
                    let len = payload.len();
                    out.put(payload)?;
                    len
                }
            };
            seq += 1;
            match kind {
                Kind::Data => {
                    Stats::add(&self.stats.messages, 1);
                    Stats::add(&self.stats.bytes, len as u64);
                }
                Kind::End => return Ok(Ended::Closed),
                Kind::Died => return Ok(Ended::SenderDied),
            }
        }
    }
}

/// Messages at least this long are put zero-copy (Zenoh reads them in
/// their slot); shorter ones fit one Zenoh batch, into which Zenoh copies
/// them anyway, and are copied out so that their slot is freed before the
/// put (no duplicate if the exporter is killed, see docs/bridge.md).
const ZERO_COPY_MIN: usize = 64 << 10;

/// What the forwarder did with a message while it held its slot.
enum Taken {
    /// Put zero-copy (length, result); the slot was held until Zenoh let
    /// go of it.
    Put(usize, Result<(), Error>),
    /// Copied out, to be put after the slot is freed.
    Copy(Vec<u8>),
}

/// One message's put.
struct Out<'a> {
    publisher: &'a Publisher<'static>,
    header: Header,
    zero_copy: bool,
    key: &'a str,
}

impl Out<'_> {
    fn put(&self, payload: impl Into<ZBytes>) -> Result<(), Error> {
        self.publisher
            .put(payload)
            .attachment(self.header.encode().to_vec())
            .wait()
            .map_err(|e| Error::Zenoh(format!("put {:?}: {e}", self.key)))
    }

    /// Called with the message in its slot, which stays held until this
    /// returns. A large message is put from the slot itself: Zenoh gets a
    /// [`SlotLoan`] as the payload's buffer and may keep it after `put`
    /// returns (it normally drops it inside `put`, after copying the bytes
    /// into its TX batches); this returns only once Zenoh dropped it, so
    /// the slot is freed only then.
    fn take(&self, m: &[u8]) -> Taken {
        if !self.zero_copy || m.len() < ZERO_COPY_MIN {
            return Taken::Copy(m.to_vec());
        }
        let wait = LoanWait::new();
        let loan = SlotLoan {
            ptr: m.as_ptr(),
            len: m.len(),
            back: wait.back.clone(),
        };
        let r = self.put(bytes::Bytes::from_owner(loan));
        // Dropping `wait` blocks until the loan is back (also if `put`
        // panicked): only then may the caller free the slot.
        drop(wait);
        Taken::Put(m.len(), r)
    }
}

/// The view of a message in its slot that Zenoh holds as the buffer of a
/// zero-copy payload; dropping it tells the forwarder that Zenoh let go.
struct SlotLoan {
    ptr: *const u8,
    len: usize,
    back: Arc<LoanBack>,
}

struct LoanBack {
    returned: AtomicBool,
    forwarder: std::thread::Thread,
}

// SAFETY: `SlotLoan` is a read-only view of `len` bytes at `ptr` in the
// mapping of the local channel. Reading it from any thread is sound while
// the mapping exists and the slot is held, and the forwarder keeps both
// (it does not return from `Out::take`, so neither frees the slot nor
// drops the channel) until the loan is dropped (`LoanWait`).
unsafe impl Send for SlotLoan {}

impl AsRef<[u8]> for SlotLoan {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is the message in its slot (a slice the
        // channel handed us), held and mapped until this loan is dropped
        // (see `unsafe impl Send`). An honest local sender does not write
        // a held slot; a hostile one could change bytes, never the bounds
        // (as for any zero-copy receive of shmkit).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for SlotLoan {
    fn drop(&mut self) {
        // Release: Zenoh's reads of the slot (before this drop, ordered by
        // the reference counts of `Bytes`) happen before the forwarder's
        // Acquire load, hence before it frees the slot for the sender.
        self.back.returned.store(true, Ordering::Release);
        self.back.forwarder.unpark();
    }
}

/// Waits, when dropped, until the loan made with it is back.
struct LoanWait {
    back: Arc<LoanBack>,
}

impl LoanWait {
    fn new() -> LoanWait {
        LoanWait {
            back: Arc::new(LoanBack {
                returned: AtomicBool::new(false),
                forwarder: std::thread::current(),
            }),
        }
    }
}

impl Drop for LoanWait {
    fn drop(&mut self) {
        let start = std::time::Instant::now();
        let mut warned = false;
        // Acquire: pairs with the loan's Release in its drop.
        while !self.back.returned.load(Ordering::Acquire) {
            std::thread::park_timeout(SLICE);
            if !warned && start.elapsed() > Duration::from_secs(1) {
                tracing::warn!("Zenoh still holds a message put zero-copy: its slot of the local channel stays held until Zenoh drops it");
                warned = true;
            }
        }
    }
}
