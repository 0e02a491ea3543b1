//! Local channel → Zenoh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmkit::channel::pubsub::Subscriber;
use shmkit::channel::ring::Receiver;
use shmkit::channel::{PeerState, RecvError, Wait};
use tokio::sync::oneshot;
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
        let mut buf = Vec::new();
        self.wait_for_a_new_sender();
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
            let r = match &mut self.source {
                Source::Ring(r) => r.recv_timeout(SLICE).map(|m| (m, 0)),
                Source::PubSub(s) => s
                    .recv_into(Wait::timeout(SLICE), &mut buf)
                    .map(|missed| (std::mem::take(&mut buf), missed)),
            };
            let (payload, kind) = match r {
                Ok((m, missed)) => {
                    if missed > 0 {
                        Stats::add(&self.stats.missed_local, missed);
                        tracing::warn!(
                            missed,
                            "the local channel dropped messages before the bridge read them"
                        );
                    }
                    (m, Kind::Data)
                }
                Err(RecvError::Timeout) | Err(RecvError::Empty) => continue,
                Err(RecvError::Disconnected) => (Vec::new(), Kind::End),
                Err(RecvError::SenderDied) => (Vec::new(), Kind::Died),
                Err(e) => {
                    return Err(Error::Local {
                        name: self.source.name(),
                        msg: e.to_string(),
                    })
                }
            };
            let len = payload.len() as u64;
            let header = Header {
                stream: self.stream,
                seq,
                kind,
            }
            .encode();
            self.publisher
                .put(payload)
                .attachment(header.to_vec())
                .wait()
                .map_err(|e| Error::Zenoh(format!("put {:?}: {e}", self.key)))?;
            seq += 1;
            match kind {
                Kind::Data => {
                    Stats::add(&self.stats.messages, 1);
                    Stats::add(&self.stats.bytes, len);
                }
                Kind::End => return Ok(Ended::Closed),
                Kind::Died => return Ok(Ended::SenderDied),
            }
        }
    }
}
