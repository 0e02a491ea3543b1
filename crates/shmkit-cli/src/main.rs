//! `shmkit`: create, inspect, read, write and remove shared memory
//! segments, and synchronise and message through them.

mod cmd_bench;
mod cmd_channel;
mod cmd_demo;
mod cmd_rpc;
mod cmd_segment;
mod cmd_sync;
mod cmd_sysv;
mod signals;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use shmkit::segment::SegmentInfo;

use util::{CliError, CliResult};

/// Shared memory segments, locks and channels between processes.
///
/// Segments live in /dev/shm as shmkit.NAME. Sizes accept bytes, K/M/G/T
/// (powers of 1000) and KiB/MiB/GiB/TiB (powers of 1024), fractions too
/// (1.5GiB); durations accept 500ms, 5s, 2m. Errors go to stderr on a line
/// starting "shmkit: " (tips may follow); exit status 1 on failure, 2 on
/// usage errors.
#[derive(Debug, Parser)]
#[command(name = "shmkit", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a segment.
    Create(cmd_channel::CreateAnyArgs),
    /// Write FILE (or stdin) into a segment; nothing is written if it does not fit.
    Write(cmd_segment::WriteArgs),
    /// Read a segment's bytes to FILE (or stdout).
    Read(cmd_segment::ReadArgs),
    /// List shmkit segments (collects those due for deletion).
    Ls(cmd_segment::LsArgs),
    /// Show a segment's header, attached pids and state.
    Stat(cmd_segment::StatArgs),
    /// Attach and stay attached until killed or the duration ends.
    Attach(cmd_segment::AttachArgs),
    /// Remove segments now, or when unused with --when-unused.
    Rm(cmd_segment::RmArgs),
    /// Remove due segments nobody alive is attached to.
    Gc(cmd_segment::GcArgs),
    /// Writer and reader processes share a payload through a segment.
    Demo(cmd_demo::DemoArgs),
    /// Measure IPC latency on this machine: shared memory vs pipe vs socket.
    Bench(cmd_bench::BenchArgs),
    /// Internal: the echoing side of `shmkit bench`.
    #[command(hide = true)]
    BenchPeer(cmd_bench::BenchPeerArgs),
    /// Send stdin (or FILE) into a ring or pub/sub channel, one message per
    /// line or per --chunk bytes; closes the channel at end of input. On a
    /// pub/sub channel, waits for the first subscriber.
    Send(cmd_channel::SendArgs),
    /// Receive messages from a ring or pub/sub channel to stdout, each
    /// exactly as sent; ends when the sender closes the channel.
    Recv(cmd_channel::RecvArgs),
    /// Internal: one side of `shmkit demo`.
    #[command(hide = true)]
    DemoPeer(cmd_demo::DemoPeerArgs),
    /// Serve requests with a command: for each request, run CMD with the
    /// request on its stdin and reply with its stdout (until Ctrl-C).
    Serve(cmd_rpc::ServeArgs),
    /// Send one request (FILE or stdin) to a service and print the reply.
    Call(cmd_rpc::CallArgs),
    #[command(flatten)]
    Sync(cmd_sync::SyncCommand),
    /// System V shared memory (shmget keys): ls, stat, read, write, rm, create.
    Sysv(cmd_sysv::SysvArgs),
}

/// Kind-specific state for `ls`/`stat`.
fn describe(info: &SegmentInfo) -> Option<(String, Value)> {
    cmd_sync::describe_info(info).or_else(|| cmd_channel::describe(info))
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Create(a) => {
            if a.base.sparse && !matches!(a.kind, cmd_channel::CreateKind::Raw) {
                return Err(CliError::usage(
                    "create: --sparse is for raw segments (channels reserve their memory)",
                ));
            }
            if a.base.huge && !matches!(a.kind, cmd_channel::CreateKind::Raw) {
                return Err(CliError::usage("create: --huge is for raw segments"));
            }
            cmd_channel::create_cmd(&a)
        }
        Command::Write(a) => cmd_segment::write(&a),
        Command::Read(a) => cmd_segment::read(&a),
        Command::Ls(a) => cmd_segment::ls(&a, describe),
        Command::Stat(a) => cmd_segment::stat(&a, describe),
        Command::Attach(a) => cmd_segment::attach(&a),
        Command::Rm(a) => cmd_segment::rm(&a),
        Command::Gc(a) => cmd_segment::gc(&a),
        Command::Bench(a) => cmd_bench::bench(&a),
        Command::BenchPeer(a) => cmd_bench::bench_peer(&a),
        Command::Send(a) => cmd_channel::send(&a),
        Command::Recv(a) => cmd_channel::recv(&a),
        Command::Demo(a) => cmd_demo::demo(&a),
        Command::DemoPeer(a) => cmd_demo::demo_peer(&a),
        Command::Serve(a) => cmd_rpc::serve(&a),
        Command::Call(a) => cmd_rpc::call(&a),
        Command::Sync(c) => cmd_sync::run(c),
        Command::Sysv(a) => cmd_sysv::run(&a),
    }
}

/// Makes a write past `ulimit -f` fail with EFBIG instead of killing us
/// with SIGXFSZ. A handler, not SIG_IGN: handlers are reset by exec, so
/// commands started by `shmkit lock` get the default back.
fn handle_sigxfsz() {
    extern "C" fn ignore(_sig: libc::c_int) {}
    // SAFETY: `ignore` is an `extern "C" fn(c_int)` that does nothing
    // (async-signal-safe); the struct is zeroed, then the handler and an
    // empty mask set; called before any thread starts.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGXFSZ, &sa, std::ptr::null_mut());
    }
}

/// clap's rendered error as our message: the first line, with what clap
/// lists under it (the missing `<NAME>`...) joined to it, then its tips
/// ("a similar subcommand exists: 'create'") on their own lines.
fn usage_message(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid usage");
    let mut first = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim_end()
        .to_owned();
    let mut tips = Vec::new();
    for line in lines {
        let t = line.trim();
        if t.starts_with("Usage:") || t.starts_with("For more information") {
            break;
        }
        if t.is_empty() {
            continue;
        }
        if t.starts_with("tip:") {
            tips.push(t.to_owned());
        } else {
            first.push(' ');
            first.push_str(t);
        }
    }
    let mut out = format!("{first} (see 'shmkit --help')");
    for tip in tips {
        out.push_str("\n  ");
        out.push_str(&tip);
    }
    out
}

fn main() -> ExitCode {
    signals::default_sigpipe();
    handle_sigxfsz();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One `shmkit:` line like every other error, then clap's tips;
            // the full usage is in --help.
            let err = CliError::usage(usage_message(&e.render().to_string()));
            eprintln!("shmkit: {err}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("shmkit: {e}");
            }
            ExitCode::from(e.code.clamp(1, 255) as u8)
        }
    }
}
