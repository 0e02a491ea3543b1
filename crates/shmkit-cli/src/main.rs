//! `shmkit`: create, inspect, read, write and remove shared memory
//! segments, and synchronise and message through them.

mod cmd_bench;
mod cmd_channel;
mod cmd_demo;
mod cmd_rpc;
mod cmd_segment;
mod cmd_sync;
mod signals;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use shmkit::segment::SegmentInfo;

use util::{CliError, CliResult};

/// Shared memory segments, locks and channels between processes.
///
/// Segments live in /dev/shm as shmkit.NAME. Sizes accept bytes or K/KiB,
/// M/MiB, G/GiB; durations accept 500ms, 5s, 2m. Errors go to stderr as one
/// line starting "shmkit: "; exit status 1 on failure, 2 on usage errors.
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
}

/// Kind-specific state for `ls`/`stat`.
fn describe(info: &SegmentInfo) -> Option<(String, Value)> {
    cmd_sync::describe_info(info).or_else(|| cmd_channel::describe(info))
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Create(a) => cmd_channel::create_cmd(&a),
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
    }
}

fn main() -> ExitCode {
    signals::default_sigpipe();
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
            // One line, like every other error; the full usage is in --help.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let err = CliError::usage(format!("{first} (see 'shmkit --help')"));
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
