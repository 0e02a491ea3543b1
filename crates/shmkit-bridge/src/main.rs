//! `shmkit-bridge`: carry shmkit channels between machines over Zenoh.
//!
//! ```text
//! # machine A: a ring "cam" read by the bridge, put under key "lab/cam"
//! shmkit-bridge export cam --key lab/cam --connect tcp/10.0.0.2:7447
//! # machine B: samples of "lab/cam" published into pub/sub "cam"
//! shmkit-bridge import lab/cam --into cam --listen tcp/10.0.0.2:7447 \
//!     --slots 8 --slot-size 16MiB --max-subscribers 4
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shmkit::channel::pubsub::{self, Policy, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::OpenError;
use shmkit::segment::{Kind, Segment};
use shmkit_bridge::{
    Congestion, Ended, Error, ExportOptions, ImportOptions, Mode, SessionOptions, Shutdown, Sink,
    Stats,
};

/// Bridge shmkit channels across machines over Zenoh.
///
/// Errors go to stderr as one line starting "shmkit-bridge: "; exit status
/// 0 when the stream ended normally or on SIGINT/SIGTERM, 1 on failure or
/// when the local sender died, 2 on usage errors.
#[derive(Debug, Parser)]
#[command(name = "shmkit-bridge", version)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv Zenoh's debug too). RUST_LOG
    /// overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a local ring (as its consumer) or pub/sub channel (as a
    /// subscriber) and put every message to Zenoh under KEY. Ends after
    /// the local sender closes the channel (the end is forwarded).
    Export(ExportArgs),
    /// Subscribe to KEYEXPR and deliver every sample into a local ring (as
    /// its producer) or pub/sub channel (as its publisher), created if
    /// missing. Closes the local channel when a stream ends and re-opens it
    /// for the next; runs until SIGINT/SIGTERM (or --once).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ZenohArgs {
    /// Listen on ENDPOINT, e.g. tcp/127.0.0.1:7447 (repeatable). Without
    /// --config, the bridge listens only on these.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Connect to ENDPOINT, e.g. tcp/192.168.1.2:7447 (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// Zenoh mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// A Zenoh JSON5 configuration file (the options above override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Turn multicast scouting off.
    #[arg(long)]
    no_multicast_scouting: bool,
    /// Turn gossip scouting off.
    #[arg(long)]
    no_gossip: bool,
    /// Fail if no --connect endpoint answers within this many seconds
    /// (default: 10 when --connect is given; 0 = retry in the background
    /// for ever).
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<f64>,
    /// Print a stats line to stderr every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Peer,
    Client,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CongestionArg {
    Block,
    Drop,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Local channel (ring or pub/sub).
    channel: String,
    /// Zenoh key to put under.
    #[arg(long)]
    key: String,
    /// Zenoh congestion control (default: block for a ring or a Block
    /// pub/sub channel, drop for a drop-oldest one).
    #[arg(long, value_enum)]
    congestion: Option<CongestionArg>,
    /// Take messages even while no importer listens (they are lost).
    #[arg(long)]
    no_wait_for_importer: bool,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Ring,
    Pubsub,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyArg {
    Block,
    DropOldest,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Zenoh key expression to subscribe to.
    key: String,
    /// Local channel to deliver into.
    #[arg(long, value_name = "CHANNEL")]
    into: String,
    /// Return after the first stream ends.
    #[arg(long)]
    once: bool,
    /// Kind of channel to create if missing (default: pubsub with --slots,
    /// ring with --capacity).
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Ring: messages it holds.
    #[arg(long)]
    capacity: Option<u64>,
    /// Ring: largest message, e.g. 16MiB.
    #[arg(long, value_parser = parse_size)]
    max_message: Option<u64>,
    /// Pub/sub: payload slots.
    #[arg(long)]
    slots: Option<u64>,
    /// Pub/sub: bytes per slot, e.g. 16MiB.
    #[arg(long, value_parser = parse_size)]
    slot_size: Option<u64>,
    /// Pub/sub: most subscribers at once (default 4).
    #[arg(long)]
    max_subscribers: Option<u32>,
    /// Pub/sub: policy (default block).
    #[arg(long, value_enum)]
    policy: Option<PolicyArg>,
    /// Permission bits of a created channel (octal).
    #[arg(long, value_parser = parse_mode, default_value = "600")]
    mode_bits: u32,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("invalid mode {s:?}: expected octal like 600"))
}

/// Plain bytes or a number with K/KiB, M/MiB, G/GiB (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number like 4096 or 16MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

enum Fail {
    Usage(String),
    Run(String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Run(e.to_string())
    }
}

impl From<OpenError> for Fail {
    fn from(e: OpenError) -> Fail {
        Fail::Run(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shmkit-bridge: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(run(cli.command));
    // Zenoh's background tasks must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(2));
    match r {
        Ok(Ended::Closed | Ended::Shutdown) => ExitCode::SUCCESS,
        Ok(Ended::SenderDied) => {
            eprintln!("shmkit-bridge: the sender died (every whole message was forwarded)");
            ExitCode::from(1)
        }
        Err(Fail::Usage(m)) => {
            eprintln!("shmkit-bridge: {m}");
            ExitCode::from(2)
        }
        Err(Fail::Run(m)) => {
            eprintln!("shmkit-bridge: {m}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(v: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match v {
        0 => "warn",
        1 => "warn,shmkit_bridge=info",
        2 => "info,shmkit_bridge=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn session_options(z: &ZenohArgs) -> Result<SessionOptions, Fail> {
    let connect_timeout = match z.connect_timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(Fail::Usage(format!(
                "--connect-timeout {t}: not a duration"
            )))
        }
        Some(0.0) => None,
        Some(t) => Some(Duration::from_secs_f64(t)),
        None if !z.connect.is_empty() => Some(Duration::from_secs(10)),
        None => None,
    };
    Ok(SessionOptions {
        config: z.config.clone(),
        listen: z.listen.clone(),
        connect: z.connect.clone(),
        mode: z.mode.map(|m| match m {
            ModeArg::Peer => Mode::Peer,
            ModeArg::Client => Mode::Client,
        }),
        no_multicast_scouting: z.no_multicast_scouting,
        no_gossip: z.no_gossip,
        connect_timeout,
    })
}

/// Triggers `shutdown` on SIGINT or SIGTERM.
fn on_signals(shutdown: Shutdown) -> Result<(), Fail> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Fail::Run(format!("SIGINT: {e}")))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Fail::Run(format!("SIGTERM: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: shutting down");
        shutdown.trigger();
        // A backstop: the bridge stops within ~100 ms unless a thread is
        // stuck inside Zenoh (a blocked put); do not hang for ever then.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(10));
            eprintln!("shmkit-bridge: did not stop within 10 s of the signal; exiting");
            std::process::exit(1);
        });
    });
    Ok(())
}

/// Prints `stats` to stderr every `secs` seconds.
fn stats_ticker(secs: Option<f64>, what: String, stats: Arc<Stats>) -> Result<(), Fail> {
    let Some(s) = secs else { return Ok(()) };
    if !(s.is_finite() && s > 0.0) {
        return Err(Fail::Usage(format!("--stats {s}: expected seconds > 0")));
    }
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs_f64(s));
        t.tick().await;
        loop {
            t.tick().await;
            eprintln!("shmkit-bridge: stats {what}: {}", stats.line());
        }
    });
    Ok(())
}

async fn run(cmd: Command) -> Result<Ended, Fail> {
    let shutdown = Shutdown::default();
    on_signals(shutdown.clone())?;
    let stats = Arc::new(Stats::default());
    match cmd {
        Command::Export(a) => {
            let sopts = session_options(&a.zenoh)?;
            let seg = open_channel(&a.channel)?;
            // The session first: a bridge that cannot connect leaves the
            // local channel's roles untouched.
            let session = sopts.open().await?;
            let (source, default_cc): (shmkit_bridge::Source, _) = match seg.kind() {
                Kind::Ring => (Receiver::from_segment(seg)?.into(), Congestion::Block),
                _ => {
                    let policy = pubsub::stats(&seg)
                        .map_err(|e| Fail::Run(e.to_string()))?
                        .policy;
                    let cc = match policy {
                        Policy::DropOldest => Congestion::Drop,
                        _ => Congestion::Block,
                    };
                    (Subscriber::from_segment(seg)?.into(), cc)
                }
            };
            let congestion = match a.congestion {
                Some(CongestionArg::Block) => Congestion::Block,
                Some(CongestionArg::Drop) => Congestion::Drop,
                None => default_cc,
            };
            stats_ticker(
                a.zenoh.stats,
                format!("export {}", a.channel),
                stats.clone(),
            )?;
            let opts = ExportOptions {
                congestion,
                wait_for_importer: !a.no_wait_for_importer,
                stats: stats.clone(),
                shutdown,
            };
            let r = shmkit_bridge::export_with(&session, source, &a.key, opts).await;
            close(session).await;
            if a.zenoh.stats.is_some() {
                eprintln!(
                    "shmkit-bridge: stats export {}: {}",
                    a.channel,
                    stats.line()
                );
            }
            Ok(r?)
        }
        Command::Import(a) => {
            let sopts = session_options(&a.zenoh)?;
            let seg = open_or_create(&a)?;
            let session = sopts.open().await?;
            let sink = sink_of(seg, &a.into)?;
            stats_ticker(a.zenoh.stats, format!("import {}", a.into), stats.clone())?;
            let opts = ImportOptions {
                once: a.once,
                stats: stats.clone(),
                shutdown,
            };
            let r = shmkit_bridge::import_with(&session, &a.key, sink, opts).await;
            close(session).await;
            if a.zenoh.stats.is_some() {
                eprintln!("shmkit-bridge: stats import {}: {}", a.into, stats.line());
            }
            Ok(r?)
        }
    }
}

async fn close(session: shmkit_bridge::zenoh::Session) {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(2), session.close()).await {
        tracing::warn!("closing the Zenoh session: {e}");
    }
}

fn open_channel(name: &str) -> Result<Segment, Fail> {
    let seg = Segment::open(name).map_err(|e| Fail::Run(e.to_string()))?;
    match seg.kind() {
        Kind::Ring | Kind::PubSub => Ok(seg),
        k => Err(Fail::Run(format!(
            "{name:?} is a {k} segment, not a channel (ring or pubsub)"
        ))),
    }
}

fn open_or_create(a: &ImportArgs) -> Result<Segment, Fail> {
    match Segment::open(&a.into) {
        Ok(seg) => Ok(seg),
        Err(e) if e.is_not_found() => create_channel(a),
        Err(e) => Err(Fail::Run(e.to_string())),
    }
}

fn sink_of(seg: Segment, name: &str) -> Result<Sink, Fail> {
    match seg.kind() {
        Kind::Ring => Ok(Sink::Ring(Sender::from_segment(seg)?)),
        Kind::PubSub => {
            let policy = pubsub::stats(&seg)
                .map_err(|e| Fail::Run(e.to_string()))?
                .policy;
            Ok(Sink::PubSub(Publisher::from_segment(seg)?, policy))
        }
        k => Err(Fail::Run(format!(
            "{name:?} is a {k} segment, not a channel (ring or pubsub)"
        ))),
    }
}

/// Creates the channel of `import --into` (it stays until `shmkit rm`).
fn create_channel(a: &ImportArgs) -> Result<Segment, Fail> {
    let kind = match a.kind {
        Some(k) => k,
        None if a.slots.is_some() || a.slot_size.is_some() => KindArg::Pubsub,
        None if a.capacity.is_some() || a.max_message.is_some() => KindArg::Ring,
        None => {
            return Err(Fail::Usage(format!(
                "import: channel {:?} does not exist; give --slots and --slot-size (pub/sub) \
                 or --capacity and --max-message (ring) to create it",
                a.into
            )))
        }
    };
    let need = |v: Option<u64>, flag: &str| {
        v.ok_or_else(|| Fail::Usage(format!("import: --{flag} is needed to create {:?}", a.into)))
    };
    let seg = match kind {
        KindArg::Ring => RingOptions::new(
            need(a.capacity, "capacity")?,
            need(a.max_message, "max-message")?,
        )
        .mode(a.mode_bits)
        .create(&a.into)?,
        KindArg::Pubsub => {
            let policy = match a.policy.unwrap_or(PolicyArg::Block) {
                PolicyArg::Block => Policy::Block,
                PolicyArg::DropOldest => Policy::DropOldest,
            };
            PubSubOptions::new(
                need(a.slots, "slots")?,
                need(a.slot_size, "slot-size")?,
                a.max_subscribers.unwrap_or(4),
            )
            .policy(policy)
            .mode(a.mode_bits)
            .create(&a.into)?
        }
    };
    tracing::info!(channel = %a.into, "created the channel");
    Ok(seg)
}
