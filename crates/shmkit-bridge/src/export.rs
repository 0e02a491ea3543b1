//! Local channel → Zenoh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmkit::channel::pubsub::Subscriber;
use shmkit::channel::ring::Receiver;
use shmkit::channel::{RecvError, Wait};
use tokio::sync::mpsc;
use zenoh::handlers::{FifoChannel, FifoChannelHandler};
use zenoh::pubsub::Subscriber as ZSubscriber;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::Session;

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

enum Item {
    /// A message and how many the local pub/sub reported missed before it.
    Msg(Vec<u8>, u64),
    End(Ended),
    Failed(String),
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

/// [`export`] with options. Cancelling the future stops the reading thread
/// within 100 ms; [`Shutdown::trigger`] also waits for it, so the local
/// endpoint is closed cleanly when this returns.
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

    // Whether an importer listens, kept current by a matching listener.
    let matching = Arc::new(AtomicBool::new(false));
    let m2 = matching.clone();
    let _listener = publisher
        .matching_listener()
        .callback(move |s| m2.store(s.matching(), Ordering::Release))
        .await
        .map_err(|e| Error::Zenoh(format!("matching listener {key:?}: {e}")))?;
    let now = publisher
        .matching_status()
        .await
        .map_err(|e| Error::Zenoh(format!("matching status {key:?}: {e}")))?
        .matching();
    // Release/Acquire: plain flag; the listener may have stored a newer
    // value already, in which case both agree or the listener's wins soon.
    matching.fetch_or(now, Ordering::Release);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (tx, mut rx) = mpsc::channel::<Item>(2);
    let gate = if opts.wait_for_importer {
        Some(matching.clone())
    } else {
        None
    };
    let reader = std::thread::Builder::new()
        .name(format!("export {name}"))
        .spawn({
            let stop = stop.clone();
            move || read_loop(source, tx, stop, gate)
        })
        .map_err(|e| Error::Local {
            name: name.clone(),
            msg: format!("spawning the reader thread: {e}"),
        })?;

    let stream = crate::stream_id();
    // The importer acknowledges the end of the stream once it delivered
    // everything: closing the session earlier could discard data still
    // queued in Zenoh.
    let ack = session
        .declare_subscriber(crate::wire::ack_key(stream))
        .with(FifoChannel::new(4))
        .await
        .map_err(|e| Error::Zenoh(format!("declaring the end-of-stream subscriber: {e}")))?;
    let mut seq = 0u64;
    tracing::info!(channel = %name, key, stream = format_args!("{stream:016x}"), "exporting");
    let result = loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = opts.shutdown.triggered() => break Ok(Ended::Shutdown),
        };
        let (payload, kind) = match item {
            Some(Item::Msg(m, missed)) => {
                if missed > 0 {
                    Stats::add(&opts.stats.missed_local, missed);
                    tracing::warn!(channel = %name, missed, "the local channel dropped messages before the bridge read them");
                }
                (m, Kind::Data)
            }
            Some(Item::End(Ended::Closed)) => (Vec::new(), Kind::End),
            Some(Item::End(_)) => (Vec::new(), Kind::Died),
            Some(Item::Failed(msg)) => {
                break Err(Error::Local {
                    name: name.clone(),
                    msg,
                })
            }
            None => {
                break Err(Error::Local {
                    name: name.clone(),
                    msg: "the reader thread stopped unexpectedly".into(),
                })
            }
        };
        let len = payload.len() as u64;
        let header = Header { stream, seq, kind }.encode();
        publisher
            .put(payload)
            .attachment(header.to_vec())
            .await
            .map_err(|e| Error::Zenoh(format!("put {key:?}: {e}")))?;
        seq += 1;
        match kind {
            Kind::Data => {
                Stats::add(&opts.stats.messages, 1);
                Stats::add(&opts.stats.bytes, len);
            }
            Kind::End | Kind::Died => {
                wait_for_ack(&ack, &matching, &opts.shutdown, key).await;
                break Ok(if kind == Kind::End {
                    Ended::Closed
                } else {
                    Ended::SenderDied
                });
            }
        }
    };
    // Stop and join the reader so the local endpoint is closed on return.
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
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

/// The reading thread: local channel → bounded queue. Takes a message only
/// when the gate (an importer matches) is open.
fn read_loop(
    mut source: Source,
    tx: mpsc::Sender<Item>,
    stop: Arc<AtomicBool>,
    gate: Option<Arc<AtomicBool>>,
) {
    let mut logged = false;
    loop {
        // Relaxed: a plain stop request, polled.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(g) = &gate {
            // Acquire: pairs with the listener's Release (a plain flag).
            if !g.load(Ordering::Acquire) {
                if !logged {
                    tracing::info!("no importer matches the key yet: holding the local channel");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if logged {
                tracing::info!("an importer matches: forwarding");
                logged = false;
            }
        }
        let r = match &mut source {
            Source::Ring(r) => r.recv_timeout(SLICE).map(|m| (m, 0)),
            Source::PubSub(s) => {
                let mut buf = Vec::new();
                s.recv_into(Wait::timeout(SLICE), &mut buf)
                    .map(|missed| (buf, missed))
            }
        };
        let item = match r {
            Ok((m, missed)) => Item::Msg(m, missed),
            Err(RecvError::Timeout) | Err(RecvError::Empty) => continue,
            Err(RecvError::Disconnected) => Item::End(Ended::Closed),
            Err(RecvError::SenderDied) => Item::End(Ended::SenderDied),
            Err(e) => Item::Failed(e.to_string()),
        };
        let last = !matches!(item, Item::Msg(..));
        if tx.blocking_send(item).is_err() || last {
            return;
        }
    }
}
