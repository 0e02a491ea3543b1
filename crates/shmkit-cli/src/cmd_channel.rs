//! Channel subcommands: `send`, `recv`, the channel half of `create`
//! (`--kind ring|pubsub`) and the channel line of `stat`/`ls`.
//!
//! Round trip: `send` turns its input into messages (one per line, the
//! newline included, or one per `--chunk` bytes) and `recv` writes each
//! message's bytes exactly as sent, so `send` then `recv` reproduces the
//! input byte for byte.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use shmkit::channel::pubsub::{self, Policy, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{self, Receiver, RingOptions, Sender};
use shmkit::channel::{OpenError, RecvError, SendError, Wait};
use shmkit::segment::{Kind, Segment, SegmentInfo};

use crate::signals;
use crate::util::{parse_duration, parse_size, CliError, CliResult};

/// What a channel segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelKind {
    /// Single-producer single-consumer ring of messages.
    Ring,
    /// One publisher, many subscribers, zero-copy slots.
    Pubsub,
}

/// `--kind` of `shmkit create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CreateKind {
    /// Plain bytes (needs --size).
    Raw,
    /// Single-producer single-consumer ring (needs --capacity, --max-message).
    Ring,
    /// Publish/subscribe (needs --slots, --slot-size, --max-subscribers).
    Pubsub,
}

/// `shmkit create` with channel kinds: the segment layer's arguments plus
/// `--kind` and the channel options. (Until the lead folds `--kind` into
/// `cmd_segment::CreateArgs`.)
#[derive(Debug, Args)]
pub struct CreateAnyArgs {
    #[command(flatten)]
    pub base: crate::cmd_segment::CreateArgs,
    /// What the segment holds.
    #[arg(long, value_enum, default_value = "raw")]
    pub kind: CreateKind,
    #[command(flatten)]
    pub channel: ChannelCreateArgs,
}

/// Runs `shmkit create` for any kind.
pub fn create_cmd(a: &CreateAnyArgs) -> CliResult {
    let kind = match a.kind {
        CreateKind::Raw => return crate::cmd_segment::create_raw(&a.base),
        CreateKind::Ring => ChannelKind::Ring,
        CreateKind::Pubsub => ChannelKind::Pubsub,
    };
    if a.base.size.is_some() {
        return Err(CliError::usage(
            "create: --size is for raw segments; a channel's size follows from its options",
        ));
    }
    create(&a.base.name, kind, &a.channel, a.base.mode)
}

/// `--policy` for pub/sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// The publisher waits for slow subscribers (back-pressure).
    Block,
    /// Slow subscribers lose the oldest messages and are told how many.
    DropOldest,
}

/// Channel options of `shmkit create` (flatten into its arguments).
#[derive(Debug, Clone, Default, Args)]
pub struct ChannelCreateArgs {
    /// Ring: number of messages it holds (rounded up to a power of two).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// Ring: largest message, e.g. 4KiB.
    #[arg(long, value_parser = parse_size)]
    pub max_message: Option<u64>,
    /// Pub/sub: number of payload slots.
    #[arg(long)]
    pub slots: Option<u64>,
    /// Pub/sub: bytes per slot (largest message), e.g. 16MiB.
    #[arg(long, value_parser = parse_size)]
    pub slot_size: Option<u64>,
    /// Pub/sub: most subscribers at once (at most 32).
    #[arg(long)]
    pub max_subscribers: Option<u32>,
    /// Pub/sub: what happens when a subscriber falls behind.
    #[arg(long, value_enum)]
    pub policy: Option<PolicyArg>,
}

fn open_err(e: OpenError) -> CliError {
    CliError::fail(e.to_string())
}

/// Creates a channel segment of `kind` named `name` with permission bits
/// `mode` (the segment stays until `shmkit rm`).
pub fn create(name: &str, kind: ChannelKind, a: &ChannelCreateArgs, mode: u32) -> CliResult {
    let need = |v: Option<u64>, flag: &str| {
        v.ok_or_else(|| {
            CliError::usage(format!(
                "create: --{flag} is required for --kind {}",
                match kind {
                    ChannelKind::Ring => "ring",
                    ChannelKind::Pubsub => "pubsub",
                }
            ))
        })
    };
    let seg = match kind {
        ChannelKind::Ring => {
            if a.slots.is_some() || a.slot_size.is_some() || a.max_subscribers.is_some() {
                return Err(CliError::usage(
                    "create: --slots, --slot-size and --max-subscribers are for --kind pubsub",
                ));
            }
            create_ring(
                name,
                need(a.capacity, "capacity")?,
                need(a.max_message, "max-message")?,
                mode,
            )?
        }
        ChannelKind::Pubsub => {
            if a.capacity.is_some() || a.max_message.is_some() {
                return Err(CliError::usage(
                    "create: --capacity and --max-message are for --kind ring",
                ));
            }
            let policy = match a.policy.unwrap_or(PolicyArg::Block) {
                PolicyArg::Block => Policy::Block,
                PolicyArg::DropOldest => Policy::DropOldest,
            };
            create_pubsub(
                name,
                need(a.slots, "slots")?,
                need(a.slot_size, "slot-size")?,
                need(a.max_subscribers.map(u64::from), "max-subscribers")? as u32,
                policy,
                mode,
            )?
        }
    };
    seg.detach()?;
    Ok(())
}

/// Creates a byte ring; returns the creator's handle (no role taken).
pub fn create_ring(name: &str, capacity: u64, max_message: u64, mode: u32) -> CliResult<Segment> {
    RingOptions::new(capacity, max_message)
        .mode(mode)
        .create(name)
        .map_err(open_err)
}

/// Creates a byte pub/sub channel; returns the creator's handle.
pub fn create_pubsub(
    name: &str,
    slots: u64,
    slot_size: u64,
    max_subscribers: u32,
    policy: Policy,
    mode: u32,
) -> CliResult<Segment> {
    PubSubOptions::new(slots, slot_size, max_subscribers)
        .policy(policy)
        .mode(mode)
        .create(name)
        .map_err(open_err)
}

/// `shmkit send`.
#[derive(Debug, Args)]
#[command(after_help = SEND_HELP)]
pub struct SendArgs {
    /// Channel (ring or pub/sub) to send into.
    pub name: String,
    /// One message per line, the newline included (default). Lines longer
    /// than the channel's largest message are split.
    #[arg(long, conflicts_with = "chunk")]
    pub lines: bool,
    /// One message per SIZE bytes of input (the last may be shorter).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub chunk: Option<u64>,
    /// Read this file instead of stdin.
    pub file: Option<PathBuf>,
}

const SEND_HELP: &str = "\
A channel is reusable: after a transfer, the next `send` and `recv` on it
work again, whichever starts first. A receiver that had already left when
`send` started is not a reason to stop: `send` waits for the next one (on a
full ring, or for a first subscriber on pub/sub). It fails if the receiver
it was sending to leaves.

SIGINT/SIGTERM: closes the channel cleanly (the receiver ends as at end of
input), then exits with 128+N (130, 143).";

/// Either kind of sending end.
enum Out {
    Ring(Sender),
    PubSub(Publisher),
}

impl Out {
    fn max(&self) -> usize {
        match self {
            Out::Ring(s) => s.max_message(),
            Out::PubSub(p) => p.slot_size(),
        }
    }

    fn send_wait(&mut self, msg: &[u8], wait: Wait) -> Result<(), SendError> {
        match self {
            Out::Ring(s) => s.send_wait(msg, wait),
            Out::PubSub(p) => p.send_wait(msg, wait),
        }
    }

    /// Sends a prefix of `msgs` (at least one message unless it is empty);
    /// returns how many. A ring takes as many as it has room for with one
    /// index store and one wake-up check ([`Sender::send_batch`]); pub/sub
    /// has no batch form, so one message.
    fn send_batch(&mut self, msgs: &[&[u8]], wait: Wait) -> Result<usize, SendError> {
        match (self, msgs.first()) {
            (_, None) => Ok(0),
            (Out::Ring(s), _) => s.send_batch(msgs, wait),
            (Out::PubSub(p), Some(m)) => p.send_wait(m, wait).map(|()| 1),
        }
    }
}

/// Most lines `send --lines` gathers into one batch.
const LINE_BATCH: usize = 256;
/// Most input bytes it gathers into one batch.
const LINE_BATCH_BYTES: usize = 256 << 10;

/// How often a blocked `send`/`recv` looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Why a sliced wait ended without a result.
enum Ended<E> {
    /// SIGINT/SIGTERM (the signal's number).
    Stopped(i32),
    /// The operation's own error (its timeout included, once the overall
    /// deadline passed).
    Err(E),
}

/// Runs a blocking channel operation in slices of [`STOP_POLL`], so that a
/// stop request is seen while it waits; `timeout` bounds the whole wait.
fn sliced<T, E>(
    timeout: Option<Duration>,
    is_timeout: impl Fn(&E) -> bool,
    mut op: impl FnMut(Wait) -> Result<T, E>,
) -> Result<T, Ended<E>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        if let Some(sig) = signals::stop_signal() {
            return Err(Ended::Stopped(sig));
        }
        let slice = Instant::now() + STOP_POLL;
        let until = deadline.map_or(slice, |d| d.min(slice));
        match op(Wait::Until(until)) {
            Err(e) if is_timeout(&e) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Ended::Err(e));
                }
            }
            Err(e) => return Err(Ended::Err(e)),
            Ok(v) => return Ok(v),
        }
    }
}

/// Input that reports a stop request: a `read` interrupted by
/// SIGINT/SIGTERM fails (instead of being retried, as `read_until` does
/// with `Interrupted`).
struct StopRead<R>(R);

impl<R: Read> Read for StopRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if signals::stop_requested() {
                return Err(io::Error::other(STOPPED));
            }
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

/// The message of [`StopRead`]'s error.
const STOPPED: &str = "stopped by a signal";

/// Exit status after a stop by signal `sig`, as a shell reports a command
/// killed by it; nothing printed (the user asked for it).
fn stopped(sig: i32) -> CliError {
    CliError::silent(128 + sig)
}

fn open_segment(name: &str) -> CliResult<Segment> {
    let seg = Segment::open(name)?;
    match seg.kind() {
        Kind::Ring | Kind::PubSub => Ok(seg),
        k => Err(CliError::fail(format!(
            "{name:?} is a {k} segment, not a channel (ring or pubsub)"
        ))),
    }
}

/// Runs `shmkit send`: input into the channel, then closes it (the
/// receiver then ends with status 0). On a pub/sub channel it first waits
/// for a subscriber. SIGINT/SIGTERM close the channel cleanly.
pub fn send(a: &SendArgs) -> CliResult {
    signals::install_stop_handler();
    let seg = open_segment(&a.name)?;
    let mut out = match seg.kind() {
        Kind::Ring => Out::Ring(Sender::from_segment(seg).map_err(open_err)?),
        _ => {
            let p = Publisher::from_segment(seg).map_err(open_err)?;
            // Messages published with nobody subscribed go nowhere: wait
            // for the first subscriber so that `send | recv` round trips.
            while p.subscribers() == 0 {
                if let Some(sig) = signals::stop_signal() {
                    drop(p);
                    return Err(stopped(sig));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Out::PubSub(p)
        }
    };
    let r = send_input(a, &mut out);
    // Dropping the sender closes the channel: `recv` ends with status 0.
    drop(out);
    match r {
        Err(Ended::Stopped(sig)) => Err(stopped(sig)),
        Err(Ended::Err(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

fn send_input(a: &SendArgs, out: &mut Out) -> Result<(), Ended<CliError>> {
    let max = out.max();
    let input: Box<dyn Read> = match &a.file {
        Some(p) => Box::new(
            File::open(p)
                .map_err(|e| Ended::Err(CliError::fail(format!("{}: {e}", p.display()))))?,
        ),
        None => Box::new(io::stdin().lock()),
    };
    let mut input = BufReader::with_capacity(1 << 20, StopRead(input));
    let name = &a.name;
    let read_err = |e: io::Error| match signals::stop_signal() {
        Some(sig) if e.to_string() == STOPPED => Ended::Stopped(sig),
        _ => Ended::Err(CliError::fail(format!("send {name:?}: reading input: {e}"))),
    };
    let mut send = |msg: &[u8]| -> Result<(), Ended<CliError>> {
        sliced(
            None,
            |e| *e == SendError::Timeout,
            |w| out.send_wait(msg, w),
        )
        .map_err(send_failed(name))
    };
    match a.chunk {
        Some(0) => {
            return Err(Ended::Err(CliError::usage(
                "send: --chunk must be at least 1 byte",
            )))
        }
        Some(c) if c > max as u64 => {
            return Err(Ended::Err(CliError::usage(format!(
                "send: --chunk {c} exceeds the channel's largest message ({max} bytes)"
            ))))
        }
        Some(c) => {
            let mut buf = vec![0u8; c as usize];
            loop {
                let n = fill(&mut input, &mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                send(&buf[..n])?;
                if n < buf.len() {
                    break;
                }
            }
        }
        None => send_lines(&mut input, out, max, name, read_err)?,
    }
    Ok(())
}

/// How `send` reports a failed send: a stop passes through, an error is
/// named after the channel.
fn send_failed(name: &str) -> impl Fn(Ended<SendError>) -> Ended<CliError> + '_ {
    move |e| match e {
        Ended::Stopped(sig) => Ended::Stopped(sig),
        Ended::Err(e) => Ended::Err(CliError::fail(format!("send {name:?}: {e}"))),
    }
}

/// `send --lines`: gathers the lines already buffered (up to
/// [`LINE_BATCH`] messages or [`LINE_BATCH_BYTES`]) and sends them with
/// [`Out::send_batch`]. It never waits for more input while holding lines:
/// when the input buffer runs dry the batch goes out first, so lines typed
/// one by one are delivered one by one.
fn send_lines(
    input: &mut BufReader<impl Read>,
    out: &mut Out,
    max: usize,
    name: &str,
    read_err: impl Fn(io::Error) -> Ended<CliError>,
) -> Result<(), Ended<CliError>> {
    let mut arena: Vec<u8> = Vec::new();
    let mut parts: Vec<(usize, usize)> = Vec::new();
    loop {
        arena.clear();
        parts.clear();
        let mut eof = false;
        while parts.len() < LINE_BATCH && arena.len() < LINE_BATCH_BYTES {
            let start = arena.len();
            if input.read_until(b'\n', &mut arena).map_err(&read_err)? == 0 {
                eof = true;
                break;
            }
            // A line longer than a message goes as several, in order.
            let mut s = start;
            while s < arena.len() {
                let e = (s + max).min(arena.len());
                parts.push((s, e));
                s = e;
            }
            if input.buffer().is_empty() {
                break; // the next read may block: send what we hold first
            }
        }
        let msgs: Vec<&[u8]> = parts.iter().map(|&(s, e)| &arena[s..e]).collect();
        let mut sent = 0;
        while sent < msgs.len() {
            sent += sliced(
                None,
                |e| *e == SendError::Timeout,
                |w| out.send_batch(&msgs[sent..], w),
            )
            .map_err(send_failed(name))?;
        }
        if eof {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or end of input; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `shmkit recv`.
#[derive(Debug, Args)]
#[command(after_help = RECV_HELP)]
pub struct RecvArgs {
    /// Channel (ring or pub/sub) to receive from.
    pub name: String,
    /// Stop after N messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Fail if no message arrives for this long (e.g. 500ms, 5s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

const RECV_HELP: &str = "\
`recv` ends when the sender it receives from closes the channel, after
every message that sender sent. If the last sender had already finished
when `recv` started and left nothing unread, `recv` waits for the next
sender instead of ending at once: a channel can be used again and again,
in either start order. If a new sender attaches before `recv` noticed the
previous one's close, `recv` goes on with the new sender's messages;
nothing is lost.

Exit status:
  0    the sender closed the channel; every message was delivered
       (or --count messages were)
  1    error: the sender died (every whole message it sent was delivered),
       no message within --timeout, a corrupt channel, ...
  3    messages were lost (pub/sub with --policy drop-oldest: this
       subscriber fell behind); stderr says how many:
       shmkit: recv \"NAME\": missed N messages
  130, 143  stopped by SIGINT/SIGTERM; the channel was closed cleanly";

/// Most ring messages `recv` takes per `recv_batch` call.
const RECV_BATCH: usize = 256;

/// Exit status of `recv` when messages were missed (drop-oldest).
pub const EXIT_MISSED: i32 = 3;

/// Runs `shmkit recv`: messages to stdout, each exactly as sent. Waits
/// for a sender that has not started yet; ends with status 0 when the
/// sender closes the channel (after every message), with an error when it
/// dies (after every whole message it sent), with [`EXIT_MISSED`] when
/// messages were dropped, 128+N after SIGINT/SIGTERM (cleanly closed).
pub fn recv(a: &RecvArgs) -> CliResult {
    signals::install_stop_handler();
    let seg = open_segment(&a.name)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut received = 0u64;
    let mut missed = 0u64;
    let mut write_err = None;
    let mut write = |out: &mut io::BufWriter<_>, m: &[u8]| {
        if write_err.is_none() {
            if let Err(e) = out.write_all(m) {
                write_err = Some(e);
            }
        }
    };
    let is_timeout = |e: &RecvError| *e == RecvError::Timeout;
    let end: Result<(), Ended<RecvError>> = match seg.kind() {
        Kind::Ring => {
            let mut rx = Receiver::from_segment(seg).map_err(open_err)?;
            loop {
                // Up to RECV_BATCH messages per call: one release of their
                // slots instead of one per message; never beyond --count.
                let max = a.count.map_or(RECV_BATCH, |c| {
                    usize::try_from(c.saturating_sub(received))
                        .map_or(RECV_BATCH, |r| r.min(RECV_BATCH))
                });
                if max == 0 {
                    break Ok(());
                }
                // Flush before blocking, so a reader of our stdout sees
                // every message that has arrived.
                let r = match rx.recv_batch(max, Wait::No, |m| write(&mut out, m)) {
                    Err(RecvError::Empty) => {
                        let _ = out.flush();
                        sliced(a.timeout, is_timeout, |w| {
                            rx.recv_batch(max, w, |m| write(&mut out, m))
                        })
                    }
                    r => r.map_err(Ended::Err),
                };
                match r {
                    Ok(n) => received += n as u64,
                    Err(e) => break Err(e),
                }
            }
        }
        _ => {
            let sub = Subscriber::from_segment(seg).map_err(open_err)?;
            let end = loop {
                if a.count.is_some_and(|c| received >= c) {
                    break Ok(());
                }
                let r = match sub.try_recv() {
                    Err(RecvError::Empty) => {
                        let _ = out.flush();
                        sliced(a.timeout, is_timeout, |w| sub.recv_wait(w))
                    }
                    r => r.map_err(Ended::Err),
                };
                match r {
                    Ok(s) => {
                        missed = missed.saturating_add(s.missed());
                        write(&mut out, &s);
                        received += 1;
                    }
                    Err(e) => break Err(e),
                }
            };
            // Losses after the last message received count too.
            missed = missed.saturating_add(sub.missed_unreported());
            end
        }
    };
    let flushed = out.flush();
    if let Some(e) = write_err.or(flushed.err()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(CliError::fail(format!(
            "recv {:?}: writing output: {e}",
            a.name
        )));
    }
    let missed_err = (missed > 0).then(|| {
        CliError::with_code(
            EXIT_MISSED,
            format!("recv {:?}: missed {missed} messages", a.name),
        )
    });
    let err = match end {
        Ok(()) | Err(Ended::Err(RecvError::Disconnected)) => None,
        Err(Ended::Stopped(sig)) => Some(stopped(sig)),
        Err(Ended::Err(RecvError::SenderDied)) => Some(CliError::fail(format!(
            "recv {:?}: the sender died after {received} messages (every whole message was delivered)",
            a.name
        ))),
        Err(Ended::Err(RecvError::Timeout)) => Some(CliError::fail(format!(
            "recv {:?}: no message within {}",
            a.name,
            a.timeout
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|| "the timeout".into())
        ))),
        Err(Ended::Err(e)) => Some(CliError::fail(format!("recv {:?}: {e}", a.name))),
    };
    match (missed_err, err) {
        (None, None) => Ok(()),
        (Some(m), None) => Err(m),
        (None, Some(e)) => Err(e),
        // Both reach the user; the other failure decides the status.
        (Some(m), Some(e)) => {
            eprintln!("shmkit: {}", m.message);
            Err(e)
        }
    }
}

/// Kind-specific state for `shmkit ls`/`stat`: a short text summary and a
/// JSON object, or `None` if `info` is not a channel or cannot be read.
pub fn describe(info: &SegmentInfo) -> Option<(String, Value)> {
    let kind = info.header.as_ref().ok()?.kind;
    if !matches!(kind, Kind::Ring | Kind::PubSub) {
        return None;
    }
    let seg = Segment::builder(&info.name).read_only().open().ok()?;
    match kind {
        Kind::Ring => {
            let s = ring::stats(&seg).ok()?;
            Some((
                format!(
                    "depth {}/{}, max message {}, producer {}, consumer {}",
                    s.depth,
                    s.capacity,
                    s.max_message,
                    peer_str(s.producer),
                    peer_str(s.consumer)
                ),
                json!({
                    "depth": s.depth,
                    "capacity": s.capacity,
                    "max_message": s.max_message,
                    "producer": peer_str(s.producer),
                    "consumer": peer_str(s.consumer),
                }),
            ))
        }
        _ => {
            let s = pubsub::stats(&seg).ok()?;
            Some((
                format!(
                    "depth {}, slots in use {}/{}, subscribers {}/{} ({} lagging), {} published, policy {}, publisher {}",
                    s.depth,
                    s.slots_in_use,
                    s.slots,
                    s.subscribers,
                    s.max_subscribers,
                    s.lagging,
                    s.published,
                    s.policy.as_str(),
                    peer_str(s.publisher)
                ),
                json!({
                    "depth": s.depth,
                    "slots": s.slots,
                    "slot_size": s.slot_size,
                    "slots_in_use": s.slots_in_use,
                    "subscribers": s.subscribers,
                    "max_subscribers": s.max_subscribers,
                    "lagging_subscribers": s.lagging,
                    "published": s.published,
                    "policy": s.policy.as_str(),
                    "publisher": peer_str(s.publisher),
                }),
            ))
        }
    }
}

fn peer_str(p: shmkit::channel::PeerState) -> &'static str {
    use shmkit::channel::PeerState;
    match p {
        PeerState::NotYet => "never attached",
        PeerState::Alive => "alive",
        PeerState::Closed => "closed",
        PeerState::Dead => "dead",
    }
}
