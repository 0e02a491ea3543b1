//! `shmkit`: create, inspect, read, write and remove shared memory
//! segments, and synchronise and message through them.

mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use util::CliResult;

/// Shared memory segments, locks and channels between processes.
#[derive(Debug, Parser)]
#[command(name = "shmkit", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

fn run(cli: Cli) -> CliResult {
    match cli.command {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmkit: {e}");
            ExitCode::from(e.code.clamp(1, 255) as u8)
        }
    }
}
