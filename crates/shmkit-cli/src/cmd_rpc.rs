//! `shmkit serve NAME -- CMD` and `shmkit call NAME [FILE]`: a tiny local
//! service from the shell, on `shmkit::channel::rpc`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use clap::Args;
use shmkit::channel::rpc::{Client, RpcError, RpcOptions, Server};
use shmkit::channel::Wait;

use crate::signals;
use crate::util::{parse_duration, parse_size, CliError, CliResult};

/// `shmkit serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Service name.
    pub name: String,
    /// Clients served at the same time.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Largest request.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_request: u64,
    /// Largest reply (a longer CMD output is an error for that request).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_reply: u64,
    /// The command run for each request: the request on its stdin, the
    /// reply is its stdout.
    #[arg(last = true, required = true, num_args = 1..)]
    pub cmd: Vec<String>,
}

/// `shmkit call`
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Service name.
    pub name: String,
    /// The request (default: stdin).
    pub file: Option<PathBuf>,
    /// Give up after this long (default: wait for ever).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

fn rpc_err(e: RpcError) -> CliError {
    CliError::fail(e.to_string())
}

/// Runs `cmd` with `input` on its stdin; returns its stdout.
fn run_cmd(cmd: &[String], input: &[u8]) -> CliResult<Vec<u8>> {
    let mut child = Process::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::fail(format!("cannot run {:?}: {e}", cmd[0])))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // Write from a thread: a CMD that answers before reading all of its
    // input would otherwise deadlock with us on full pipes.
    let writer = std::thread::spawn(move || {
        // A CMD that does not read its stdin closes the pipe: not an error.
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child.stdout.take().expect("piped").read_to_end(&mut out)?;
    let status = child.wait()?;
    let _ = writer.join();
    if !status.success() {
        eprintln!("shmkit: serve: {:?} exited with {status}", cmd[0]);
    }
    Ok(out)
}

/// `shmkit serve NAME -- CMD...`: until SIGINT/SIGTERM, then removes the
/// service.
pub fn serve(a: &ServeArgs) -> CliResult {
    let opts = RpcOptions::new()
        .clients(a.clients)
        .max_request(a.max_request)
        .max_reply(a.max_reply);
    let mut server = Server::create(&a.name, &opts).map_err(rpc_err)?;
    signals::install_stop_handler();
    while !signals::stop_requested() {
        // Short waits so a stop request is seen promptly.
        let (token, req) = match server.recv(Wait::timeout(Duration::from_millis(100))) {
            Ok(r) => r,
            Err(RpcError::Timeout) => continue,
            Err(e) => return Err(rpc_err(e)),
        };
        let reply = match run_cmd(&a.cmd, &req) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("shmkit: serve: {e}");
                Vec::new()
            }
        };
        match server.reply(token, &reply) {
            Ok(()) => {}
            Err(e @ RpcError::TooLarge { .. }) => {
                eprintln!("shmkit: serve: reply dropped: {e}");
                // The caller must not wait for ever: answer empty.
                server.reply(token, &[]).map_err(rpc_err)?;
            }
            Err(e) => return Err(rpc_err(e)),
        }
    }
    Ok(())
}

/// `shmkit call NAME [FILE]`: prints the reply to stdout.
pub fn call(a: &CallArgs) -> CliResult {
    let req = match &a.file {
        Some(p) => std::fs::read(p).map_err(|e| CliError::fail(format!("{}: {e}", p.display())))?,
        None => {
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v)?;
            v
        }
    };
    let mut client = Client::connect(&a.name).map_err(rpc_err)?;
    let reply = match a.timeout {
        Some(t) => client.call_timeout(&req, t),
        None => client.call(&req),
    }
    .map_err(rpc_err)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)?;
    out.flush()?;
    Ok(())
}
