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
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use shmkit::channel::pubsub::{self, Policy, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{self, Receiver, RingOptions, Sender};
use shmkit::channel::{OpenError, RecvError, SendError, Wait};
use shmkit::segment::{Kind, Segment, SegmentInfo};

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

    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        match self {
            Out::Ring(s) => s.send(msg),
            Out::PubSub(p) => p.send(msg),
        }
    }
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
/// for a subscriber.
pub fn send(a: &SendArgs) -> CliResult {
    let seg = open_segment(&a.name)?;
    let mut out = match seg.kind() {
        Kind::Ring => Out::Ring(Sender::from_segment(seg).map_err(open_err)?),
        _ => {
            let p = Publisher::from_segment(seg).map_err(open_err)?;
            // Messages published with nobody subscribed go nowhere: wait
            // for the first subscriber so that `send | recv` round trips.
            while p.subscribers() == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            Out::PubSub(p)
        }
    };
    let max = out.max();
    let input: Box<dyn Read> = match &a.file {
        Some(p) => {
            Box::new(File::open(p).map_err(|e| CliError::fail(format!("{}: {e}", p.display())))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut input = BufReader::with_capacity(1 << 20, input);
    let fail = |e: SendError| CliError::fail(format!("send {:?}: {e}", a.name));
    let read_err = |e: io::Error| CliError::fail(format!("send {:?}: reading input: {e}", a.name));
    match a.chunk {
        Some(0) => return Err(CliError::usage("send: --chunk must be at least 1 byte")),
        Some(c) if c > max as u64 => {
            return Err(CliError::usage(format!(
                "send: --chunk {c} exceeds the channel's largest message ({max} bytes)"
            )))
        }
        Some(c) => {
            let mut buf = vec![0u8; c as usize];
            loop {
                let n = fill(&mut input, &mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                out.send(&buf[..n]).map_err(fail)?;
                if n < buf.len() {
                    break;
                }
            }
        }
        None => {
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = input.read_until(b'\n', &mut line).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                for part in line.chunks(max) {
                    out.send(part).map_err(fail)?;
                }
            }
        }
    }
    // Dropping the sender closes the channel: `recv` ends with status 0.
    drop(out);
    Ok(())
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

/// Runs `shmkit recv`: messages to stdout, each exactly as sent. Waits
/// for a sender that has not started yet; ends with status 0 when the
/// sender closes the channel (after every message), with an error when it
/// dies (after every whole message it sent).
pub fn recv(a: &RecvArgs) -> CliResult {
    let seg = open_segment(&a.name)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let wait = || match a.timeout {
        Some(t) => Wait::timeout(t),
        None => Wait::Forever,
    };
    let mut received = 0u64;
    let mut write_err = None;
    let mut write = |out: &mut io::BufWriter<_>, m: &[u8]| {
        if write_err.is_none() {
            if let Err(e) = out.write_all(m) {
                write_err = Some(e);
            }
        }
    };
    let end: Result<(), RecvError> = match seg.kind() {
        Kind::Ring => {
            let mut rx = Receiver::from_segment(seg).map_err(open_err)?;
            loop {
                if a.count.is_some_and(|c| received >= c) {
                    break Ok(());
                }
                // Flush before blocking, so a reader of our stdout sees
                // every message that has arrived.
                let r = match rx.recv_with(Wait::No, |m| write(&mut out, m)) {
                    Err(RecvError::Empty) => {
                        let _ = out.flush();
                        rx.recv_with(wait(), |m| write(&mut out, m))
                    }
                    r => r,
                };
                match r {
                    Ok(()) => received += 1,
                    Err(e) => break Err(e),
                }
            }
        }
        _ => {
            let sub = Subscriber::from_segment(seg).map_err(open_err)?;
            let mut missed = 0u64;
            loop {
                if a.count.is_some_and(|c| received >= c) {
                    break Ok(());
                }
                let r = match sub.try_recv() {
                    Err(RecvError::Empty) => {
                        let _ = out.flush();
                        sub.recv_wait(wait())
                    }
                    r => r,
                };
                match r {
                    Ok(s) => {
                        missed += s.missed();
                        write(&mut out, &s);
                        received += 1;
                    }
                    Err(e) => break Err(e),
                }
            }
            .inspect(|_| {
                if missed > 0 {
                    eprintln!("shmkit: recv {:?}: missed {missed} messages", a.name);
                }
            })
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
    match end {
        Ok(()) | Err(RecvError::Disconnected) => Ok(()),
        Err(RecvError::SenderDied) => Err(CliError::fail(format!(
            "recv {:?}: the sender died after {received} messages (every whole message was delivered)",
            a.name
        ))),
        Err(RecvError::Timeout) => Err(CliError::fail(format!(
            "recv {:?}: no message within {}",
            a.name,
            a.timeout
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|| "the timeout".into())
        ))),
        Err(e) => Err(CliError::fail(format!("recv {:?}: {e}", a.name))),
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
