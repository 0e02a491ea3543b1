//! Zenoh → local channel.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmkit::channel::pubsub::{Policy, Publisher};
use shmkit::channel::ring::Sender;
use shmkit::channel::{SendError, Wait};
use zenoh::bytes::ZBytes;
use zenoh::sample::Sample;
use zenoh::{Session, Wait as _};

use crate::wire::{Header, Kind};
use crate::{Ended, Error, Shutdown, Stats, StopOnDrop};

/// How often a blocked helper re-checks the stop flag.
const SLICE: Duration = Duration::from_millis(100);

/// The local end an importer writes.
pub enum Sink {
    /// A ring, as its producer.
    Ring(Sender),
    /// A pub/sub channel, as its publisher. `policy` is the channel's:
    /// under [`Policy::Block`] the importer waits for a first local
    /// subscriber before delivering (like `shmkit send`), so that nothing
    /// is published to nobody; under drop-oldest it never waits.
    PubSub(Publisher, Policy),
}

impl From<Sender> for Sink {
    fn from(s: Sender) -> Sink {
        Sink::Ring(s)
    }
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Sink::Ring(s) => s.name().to_owned(),
            Sink::PubSub(p, _) => p.name().to_owned(),
        }
    }

    /// Re-takes the producer role of the channel after a stream ended.
    fn reopen(kind: &SinkKind, name: &str) -> Result<Sink, Error> {
        Ok(match kind {
            SinkKind::Ring => Sink::Ring(Sender::open(name)?),
            SinkKind::PubSub(p) => Sink::PubSub(Publisher::open(name)?, *p),
        })
    }
}

#[derive(Clone, Copy)]
enum SinkKind {
    Ring,
    PubSub(Policy),
}

/// Options of [`import_with`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Return after the first stream ends (default: close the local
    /// channel at the end of a stream, then re-open it for the next one).
    pub once: bool,
    /// Counters, shared with the caller.
    pub stats: Arc<Stats>,
    /// Stop switch.
    pub shutdown: Shutdown,
}

/// Delivers every sample of `key` into `sink`, closing the local channel
/// when a stream ends and re-opening it for the next; runs until shut
/// down. See [`import_with`].
pub async fn import(session: &Session, key: &str, sink: impl Into<Sink>) -> Result<Ended, Error> {
    import_with(session, key, sink, ImportOptions::default()).await
}

/// [`import`] with options. Returns [`Ended::Shutdown`] after
/// [`Shutdown::trigger`] (local endpoint closed cleanly), or with
/// `once` the end of the first stream.
pub async fn import_with(
    session: &Session,
    key: &str,
    sink: impl Into<Sink>,
    opts: ImportOptions,
) -> Result<Ended, Error> {
    let sink = sink.into();
    let name = sink.name();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let deliver = Arc::new(Mutex::new(Deliver::new(
        sink,
        session.clone(),
        opts.stats.clone(),
        stop.clone(),
    )));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    // Samples are delivered in arrival order by one of two paths, never
    // both at once (see `Lane`): small ones inline in Zenoh's callback
    // (no thread hand-off per sample), large ones, and anything arriving
    // while the worker still has work, by the delivery thread, so that
    // Zenoh's receiving task reads the next message while the previous one
    // is copied into the local channel.
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Sample>(QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    let worker = {
        let deliver = deliver.clone();
        let pending = pending.clone();
        let events_tx = events_tx.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("import {name}"))
            .spawn(move || worker(jobs_rx, &deliver, &pending, &events_tx, &stop))
            .map_err(|e| Error::Local {
                name: name.clone(),
                msg: format!("spawning the delivery thread: {e}"),
            })?
    };
    let lane = Lane {
        deliver: deliver.clone(),
        jobs: jobs_tx,
        pending,
        events: events_tx,
    };
    let subscriber = session
        .declare_subscriber(key.to_owned())
        .callback(move |sample| lane.sample(sample))
        .await
        .map_err(|e| Error::Zenoh(format!("declaring subscriber {key:?}: {e}")))?;
    tracing::info!(channel = %name, key, "importing");
    let mut shutdown = std::pin::pin!(opts.shutdown.triggered());
    let result = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Ok(end)) if opts.once => break Ok(end),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Err(Error::Zenoh("the subscriber's callback was dropped".into())),
            },
            _ = &mut shutdown => break Ok(Ended::Shutdown),
        }
    };
    // Relaxed: a plain stop request, polled by a delivery in progress and
    // by the delivery thread.
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = subscriber.undeclare().await {
        tracing::warn!(key, error = %e, "undeclaring the subscriber");
    }
    // The delivery thread ends within one SLICE of the stop request (a
    // delivery in progress polls it); its end also wakes a callback blocked
    // on the full queue.
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    // Close the local endpoint now (after any delivery in progress).
    drop(
        deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sink
            .take(),
    );
    match &result {
        Ok(e) => {
            tracing::info!(channel = %name, key, ended = ?e, stats = %opts.stats.line(), "import finished")
        }
        Err(e) => tracing::error!(channel = %name, key, error = %e, "import failed"),
    }
    result
}

/// Samples at least this long go to the delivery thread (a Zenoh batch is
/// at most 64 KiB: anything longer arrived fragmented, and copying it
/// costs more than the hand-off).
const LARGE: usize = 64 << 10;

/// Samples waiting for the delivery thread, beyond the one it is
/// delivering. When full, Zenoh's callback blocks: back-pressure goes on
/// through Zenoh and TCP as with inline delivery.
const QUEUE: usize = 2;

type Events = tokio::sync::mpsc::UnboundedSender<Result<Ended, Error>>;

/// The callback's side: decides, per sample, inline delivery or the queue.
struct Lane {
    deliver: Arc<Mutex<Deliver>>,
    jobs: std::sync::mpsc::SyncSender<Sample>,
    /// Samples handed to the delivery thread and not yet delivered.
    pending: Arc<AtomicUsize>,
    events: Events,
}

impl Lane {
    fn sample(&self, sample: Sample) {
        // Acquire: pairs with the worker's Release decrement after a
        // delivery, so that an inline delivery that sees 0 comes after
        // every queued one (the Deliver mutex orders their effects too).
        // One publisher's samples come through one Zenoh transport, which
        // calls back for them one at a time: for that stream, 0 stays 0
        // until this callback enqueues. (Samples of other publishers may
        // be delivered concurrently; the mutex serialises them, and each
        // stream keeps its order.)
        if sample.payload().len() < LARGE && self.pending.load(Ordering::Acquire) == 0 {
            let r = self
                .deliver
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(&sample);
            report(&self.events, r);
            return;
        }
        // Relaxed: the channel's send/recv orders the sample itself; the
        // counter is read with Acquire above (and only this thread adds).
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(sample).is_err() {
            // The delivery thread ended (stop requested): nothing more is
            // delivered.
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The delivery thread: delivers queued samples in order until stop.
fn worker(
    jobs: std::sync::mpsc::Receiver<Sample>,
    deliver: &Mutex<Deliver>,
    pending: &AtomicUsize,
    events: &Events,
    stop: &AtomicBool,
) {
    // Relaxed: a plain stop request, polled.
    while !stop.load(Ordering::Relaxed) {
        let sample = match jobs.recv_timeout(SLICE) {
            Ok(s) => s,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let r = deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(&sample);
        // Hand the Zenoh buffers back before announcing the slot free.
        drop(sample);
        // Release: publishes this delivery (its effects on the Deliver
        // state and the local channel) to the callback's Acquire load.
        pending.fetch_sub(1, Ordering::Release);
        report(events, r);
    }
}

fn report(events: &Events, r: Result<Option<Ended>, Error>) {
    match r {
        Ok(None) => {}
        Ok(Some(end)) => {
            let _ = events.send(Ok(end));
        }
        Err(e) => {
            let _ = events.send(Err(e));
        }
    }
}

/// Delivery state, shared by the callback's inline path and the delivery
/// thread (used by one at a time, see `Lane`).
struct Deliver {
    sink: Option<Sink>,
    kind: SinkKind,
    name: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// (stream id, next expected sequence number).
    stream: Option<(u64, u64)>,
    session: Session,
}

impl Deliver {
    fn new(sink: Sink, session: Session, stats: Arc<Stats>, stop: Arc<AtomicBool>) -> Deliver {
        let kind = match &sink {
            Sink::Ring(_) => SinkKind::Ring,
            Sink::PubSub(_, p) => SinkKind::PubSub(*p),
        };
        Deliver {
            name: sink.name(),
            sink: Some(sink),
            kind,
            stats,
            stop,
            stream: None,
            session,
        }
    }

    fn stopping(&self) -> bool {
        // Relaxed: a plain stop request, polled.
        self.stop.load(Ordering::Relaxed)
    }

    /// Handles one sample; `Some(end)` when it ended a stream.
    fn sample(&mut self, sample: &Sample) -> Result<Option<Ended>, Error> {
        let header = sample
            .attachment()
            .and_then(|a| Header::decode(&a.to_bytes()));
        if let Some(h) = header {
            self.check_sequence(h);
            match h.kind {
                Kind::Data => {}
                Kind::End | Kind::Died => {
                    let end = if h.kind == Kind::End {
                        tracing::info!(channel = %self.name, "the remote sender closed: closing the local channel");
                        Ended::Closed
                    } else {
                        tracing::warn!(channel = %self.name, "the remote sender died: closing the local channel");
                        Ended::SenderDied
                    };
                    self.stream = None;
                    // Dropping the producer closes the channel: local
                    // receivers end after the last message.
                    self.sink = None;
                    // Everything before the end is delivered: let the
                    // exporter close its session.
                    if let Err(e) = self
                        .session
                        .put(crate::wire::ack_key(h.stream), Vec::<u8>::new())
                        .wait()
                    {
                        tracing::warn!(channel = %self.name, error = %e, "acknowledging the end of the stream");
                    }
                    return Ok(Some(end));
                }
            }
        }
        self.deliver(sample.payload())?;
        Ok(None)
    }

    fn check_sequence(&mut self, h: Header) {
        let expected = match self.stream {
            Some((s, next)) if s == h.stream => next,
            Some(_) => {
                tracing::warn!(channel = %self.name, stream = format_args!("{:016x}", h.stream),
                    "a new exporter stream began before the previous one ended (exporter restarted?)");
                0
            }
            None => 0,
        };
        if h.seq > expected {
            let lost = h.seq - expected;
            Stats::add(&self.stats.dropped, lost);
            tracing::warn!(channel = %self.name, lost, "messages lost on the way (congestion drop or a bridge killed mid-stream)");
        } else if h.seq < expected {
            tracing::warn!(channel = %self.name, seq = h.seq, expected, "out-of-order sample");
        }
        self.stream = Some((h.stream, h.seq + 1));
    }

    fn deliver(&mut self, payload: &ZBytes) -> Result<(), Error> {
        let len = payload.len();
        let mut waiting_logged = false;
        loop {
            if self.stopping() {
                return Ok(());
            }
            if self.sink.is_none() {
                match Sink::reopen(&self.kind, &self.name) {
                    Ok(s) => self.sink = Some(s),
                    Err(e) => {
                        if !waiting_logged {
                            tracing::warn!(channel = %self.name, error = %e, "cannot re-open the local channel; retrying");
                            waiting_logged = true;
                        }
                        std::thread::sleep(SLICE);
                        continue;
                    }
                }
            }
            let Some(sink) = self.sink.as_mut() else {
                continue;
            };
            let r = match sink {
                Sink::Ring(s) => s.send_with(len, Wait::timeout(SLICE), |buf| copy(payload, buf)),
                Sink::PubSub(p, policy) => {
                    if *policy == Policy::Block && p.subscribers() == 0 {
                        if !waiting_logged {
                            tracing::info!(channel = %self.name, "waiting for a first local subscriber");
                            waiting_logged = true;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    match p.loan_wait(len, Wait::timeout(SLICE)) {
                        Ok(mut loan) => {
                            copy(payload, &mut loan);
                            loan.publish();
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match r {
                Ok(()) => {
                    Stats::add(&self.stats.messages, 1);
                    Stats::add(&self.stats.bytes, len as u64);
                    return Ok(());
                }
                Err(SendError::Timeout) | Err(SendError::Full) => {}
                Err(SendError::Disconnected) => {
                    if !waiting_logged {
                        tracing::warn!(channel = %self.name, "the local receiver is gone: holding the stream until one attaches");
                        waiting_logged = true;
                    }
                    std::thread::sleep(SLICE);
                }
                Err(SendError::TooLarge { len, max }) => {
                    Stats::add(&self.stats.rejected, 1);
                    tracing::error!(channel = %self.name, len, max, "sample larger than the local channel's maximum message: not delivered");
                    return Ok(());
                }
                Err(e) => {
                    return Err(Error::Local {
                        name: self.name.clone(),
                        msg: e.to_string(),
                    })
                }
            }
        }
    }
}

/// Copies a (possibly fragmented) Zenoh payload into a slot of exactly its
/// length.
fn copy(payload: &ZBytes, buf: &mut [u8]) {
    let mut at = 0;
    for s in payload.slices() {
        buf[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    }
    debug_assert_eq!(at, buf.len());
}
