//! `shmkit demo`: the seed's example, with real processes.
//!
//! Process A creates a segment with lifetime until-last-detach, writes a
//! payload and a checksum, waits for B to attach, and detaches. Process B
//! attaches, reads and verifies, and detaches last, which deletes the
//! segment. The parent (this command) starts both and checks the segment
//! is gone.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use shmkit::segment::{self, Lifetime, Segment};

use crate::util::{human_size, parse_size, CliError, CliResult};

/// `shmkit demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Payload size.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
}

/// Hidden: one side of the demo.
#[derive(Debug, Args)]
pub struct DemoPeerArgs {
    /// "writer" or "reader".
    pub role: String,
    /// Segment name.
    pub name: String,
    /// Payload size.
    pub size: u64,
}

const WAIT: Duration = Duration::from_secs(20);

fn rate(bytes: u64, d: Duration) -> String {
    format!(
        "{}/s",
        human_size((bytes as f64 / d.as_secs_f64().max(1e-9)) as u64)
    )
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn checksum(buf: &[u8]) -> u64 {
    // FNV-1a over 8-byte words: fast enough for 64 MiB in a demo.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in buf.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h ^= u64::from_le_bytes(w);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Runs the demo: spawns A and B as separate processes of this binary.
pub fn demo(a: &DemoArgs) -> CliResult {
    if a.size == 0 {
        return Err(CliError::usage("demo: --size must be greater than zero"));
    }
    let name = format!("demo-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shmkit demo: two processes share {} through segment {name:?}",
        human_size(a.size)
    )?;
    let spawn = |role: &str| {
        Command::new(&exe)
            .args(["demo-peer", role, &name, &a.size.to_string()])
            .stdout(Stdio::piped())
            .spawn()
    };
    let mut writer = spawn("writer")?;
    let mut wlines = BufReader::new(writer.stdout.take().expect("piped")).lines();
    // Relay A's lines until it says the data is in place.
    loop {
        match wlines.next() {
            Some(Ok(l)) if l == "ready" => break,
            Some(Ok(l)) => writeln!(out, "{l}")?,
            _ => {
                let _ = writer.wait();
                return Err(CliError::fail(
                    "demo: process A failed before writing its data (its error is above)",
                ));
            }
        }
    }
    out.flush()?;
    let mut reader = spawn("reader")?;
    let rlines = BufReader::new(reader.stdout.take().expect("piped")).lines();
    // Both sides print in their own order; A's remaining lines first.
    for l in wlines.map_while(Result::ok) {
        writeln!(out, "{l}")?;
    }
    let a_ok = writer.wait()?.success();
    for l in rlines.map_while(Result::ok) {
        writeln!(out, "{l}")?;
    }
    let b_ok = reader.wait()?.success();
    if !(a_ok && b_ok) {
        let _ = segment::remove(&name);
        return Err(CliError::fail("demo: a peer process failed (see above)"));
    }
    match segment::stat(&name) {
        Err(e) if e.is_not_found() => {
            writeln!(
                out,
                "after both detached: segment {name:?} is gone (lifetime until-last-detach)"
            )?;
            Ok(())
        }
        _ => {
            let _ = segment::remove(&name);
            Err(CliError::fail(format!(
                "demo: segment {name:?} still exists after both detached"
            )))
        }
    }
}

/// One side of the demo.
pub fn demo_peer(a: &DemoPeerArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let pid = std::process::id();
    match a.role.as_str() {
        "writer" => {
            let seg = Segment::builder(&a.name)
                .size(a.size + 8)
                .lifetime(Lifetime::UntilLastDetach)
                .create()?;
            writeln!(
                out,
                "A (pid {pid}): created {:?}, {} + 8-byte checksum, lifetime until-last-detach",
                a.name,
                human_size(a.size)
            )?;
            let mut payload = vec![0u8; a.size as usize];
            fill(&mut payload, pid as u64);
            let sum = checksum(&payload);
            let t = Instant::now();
            seg.write_at(8, &payload)?;
            let dt = t.elapsed();
            seg.write_at(0, &sum.to_le_bytes())?;
            writeln!(
                out,
                "A (pid {pid}): wrote {} in {:.2?} ({}), checksum {sum:016x}",
                human_size(a.size),
                dt,
                rate(a.size, dt)
            )?;
            writeln!(out, "ready")?;
            out.flush()?;
            if !wait_until(|| seg.attached_pids().len() >= 2) {
                return Err(CliError::fail("demo: B never attached"));
            }
            writeln!(
                out,
                "A (pid {pid}): B attached; A detaches (segment stays: B is still attached)"
            )?;
            seg.detach()?;
            Ok(())
        }
        "reader" => {
            let seg = Segment::open(&a.name)?;
            writeln!(
                out,
                "B (pid {pid}): attached to {:?}, {} bytes",
                a.name,
                seg.len()
            )?;
            let mut sum = [0u8; 8];
            seg.read_at(0, &mut sum)?;
            let mut payload = vec![0u8; seg.len() - 8];
            let t = Instant::now();
            seg.read_at(8, &mut payload)?;
            let dt = t.elapsed();
            let ok = checksum(&payload) == u64::from_le_bytes(sum);
            writeln!(
                out,
                "B (pid {pid}): read {} in {:.2?} ({}), checksum {}",
                human_size(payload.len() as u64),
                dt,
                rate(payload.len() as u64, dt),
                if ok { "verified" } else { "MISMATCH" }
            )?;
            if !ok {
                return Err(CliError::fail("demo: checksum mismatch"));
            }
            if !wait_until(|| seg.attached_pids() == [pid]) {
                return Err(CliError::fail("demo: A never detached"));
            }
            let removed = seg.detach()?;
            writeln!(
                out,
                "B (pid {pid}): detached last; segment removed: {}",
                if removed { "yes" } else { "no" }
            )?;
            Ok(())
        }
        r => Err(CliError::usage(format!("demo-peer: unknown role {r:?}"))),
    }
}
