//! `shmkit-bench`: shmkit against the floor, pipes, Unix sockets and
//! iceoryx2, side by side in one run. See `BENCHMARKS.md` at the repository
//! root for the method and the latest results.
//!
//! ```text
//! cargo run --release -p shmkit-bench -- --quick          # < 60 s, CI
//! cargo run --release -p shmkit-bench -- --out report     # full run
//! ```
//!
//! Every job runs between two processes: this binary re-executes itself
//! with `__peer <json>` for the peer role. Contenders alternate within each
//! round (the order rotates from case to case and round to round) so that
//! drift of a noisy machine hits all of them alike.

mod cleanup;
mod contender;
mod job;
mod link;
mod peer;
mod plan;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;

use contender::ContenderId;
use job::{Outcome, PeerSpec};
use plan::{size_label, Case, Scenario};
use report::{CaseResult, Latency, Machine, Report, Throughput};

/// Side-by-side IPC benchmark between two processes.
#[derive(Debug, Parser)]
#[command(name = "shmkit-bench", version, about)]
struct Args {
    /// Every contender and scenario briefly (well under 60 s); exits
    /// non-zero if any contender fails.
    #[arg(long)]
    quick: bool,
    /// Folder for results.md, results.json and the SVG plots.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Rounds (each contender runs each case once per round); default 1
    /// quick, 5 full.
    #[arg(long)]
    rounds: Option<u32>,
    /// Comma-separated contenders (default: all). Known: see --list.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Comma-separated scenarios: latency, stream, bandwidth, fixedrate
    /// (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Comma-separated payload sizes in bytes to keep (default: all of
    /// each scenario's sizes).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Print the contenders and exit.
    #[arg(long)]
    list: bool,
    /// Do not pin busy-poll jobs' two processes to CPUs 0 and 1.
    #[arg(long)]
    no_pin: bool,
}

/// What accumulates over the rounds for one (case, contender).
#[derive(Default)]
struct Acc {
    hist: Option<Histogram<u64>>,
    batch_p50: Vec<u64>,
    rates: Vec<f64>,
    errors: Vec<String>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(peer::PEER_ARG) {
        let spec = argv.get(2).map(String::as_str).unwrap_or("");
        return match peer::peer_main(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmkit-bench peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(args, argv.join(" ")) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shmkit-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args, command: String) -> Result<bool, String> {
    if args.list {
        for c in ContenderId::all() {
            println!("{}", c.name());
        }
        return Ok(true);
    }
    let contenders: Vec<ContenderId> = if args.contenders.is_empty() {
        ContenderId::all()
    } else {
        args.contenders
            .iter()
            .map(|n| ContenderId::parse(n).ok_or_else(|| format!("unknown contender {n:?}")))
            .collect::<Result<_, _>>()?
    };
    let mut cases = plan::cases(args.quick);
    if !args.scenarios.is_empty() {
        for s in &args.scenarios {
            if !["latency", "stream", "bandwidth", "fixedrate"].contains(&s.as_str()) {
                return Err(format!("unknown scenario {s:?}"));
            }
        }
        cases.retain(|c| args.scenarios.iter().any(|s| s == c.scenario.name()));
    }
    if !args.sizes.is_empty() {
        cases.retain(|c| args.sizes.contains(&c.size));
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let timeout_ms = if args.quick { 30_000 } else { 180_000 };

    let stale = cleanup::stale_from_dead_runs();
    if !stale.is_empty() {
        eprintln!(
            "shmkit-bench: removed {} file(s) left by killed earlier runs",
            stale.len()
        );
    }
    let mut machine = Machine::probe();
    let pin = !args.no_pin && link::online_cpus() >= 2;
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "shmkit-bench: {} contenders × {} cases × {rounds} round(s); {} ({} CPUs), load {}",
        contenders.len(),
        cases.len(),
        machine.cpu,
        machine.cores,
        machine.loadavg_start
    );

    let mut acc: HashMap<(usize, ContenderId), Acc> = HashMap::new();
    for round in 0..rounds as usize {
        for (ci, case) in cases.iter().enumerate() {
            let n = contenders.len();
            let mut line = format!(
                "round {}/{rounds} {:>9} {:>7}:",
                round + 1,
                case.scenario.name(),
                size_label(case.size)
            );
            for k in 0..n {
                let c = contenders[(k + round + ci) % n];
                if !c.runs(case.scenario) {
                    continue;
                }
                let spec = PeerSpec {
                    contender: c,
                    job: case.job,
                    resource: cleanup::next_resource(),
                    iox_prefix: cleanup::iox_prefix(),
                    iox_root: cleanup::iox_root(),
                    timeout_ms,
                    pin: pin && c.busy_poll(),
                };
                let a = acc.entry((ci, c)).or_default();
                match peer::run_job(&spec) {
                    Ok(out) => line += &format!(" {}={}", c.name(), record(a, case, out)),
                    Err(e) => {
                        line += &format!(" {}=FAILED", c.name());
                        a.errors.push(e);
                    }
                }
            }
            eprintln!("{line}");
        }
    }
    machine.loadavg_end = report::loadavg();
    let left = cleanup::at_exit();

    let mut results = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        for &c in contenders.iter().filter(|c| c.runs(case.scenario)) {
            let a = acc.remove(&(ci, c)).unwrap_or_default();
            results.push(summarise(case, c, a));
        }
    }
    let report = Report {
        command,
        quick: args.quick,
        rounds,
        pinned: pin,
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        results,
    };
    report.write(&args.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "shmkit-bench: report written to {} (results.md, results.json, SVG plots) in {:.0} s",
        args.out.display(),
        report.duration_s
    );
    let failures: usize = report.results.iter().map(|r| r.errors.len()).sum();
    if !left.is_empty() {
        eprintln!("shmkit-bench: had to remove leftovers from /dev/shm: {left:?}");
    }
    if failures > 0 {
        eprintln!("shmkit-bench: {failures} job(s) failed (see the Failures section)");
    }
    Ok(failures == 0 && left.is_empty())
}

/// Adds one job's outcome; returns a short figure for the progress line.
fn record(a: &mut Acc, case: &Case, out: Outcome) -> String {
    match out {
        Outcome::Latencies(v) => {
            let h = a.hist.get_or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
            });
            let mut batch =
                Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
            for &ns in &v {
                h.saturating_record(ns.max(1));
                batch.saturating_record(ns.max(1));
            }
            let p50 = batch.value_at_quantile(0.5);
            a.batch_p50.push(p50);
            report::fmt_ns(p50).replace(' ', "")
        }
        Outcome::Elapsed(d) => {
            let count = match case.job {
                job::Job::Stream { count, .. } => count,
                job::Job::PingPong { iters, .. } | job::Job::FixedRate { iters, .. } => iters,
            };
            let rate = count as f64 / d.as_secs_f64().max(1e-12);
            a.rates.push(rate);
            if case.scenario == Scenario::Bandwidth {
                format!("{:.2}GB/s", rate * case.size as f64 / 1e9)
            } else {
                format!("{:.2}M/s", rate / 1e6)
            }
        }
    }
}

fn summarise(case: &Case, c: ContenderId, a: Acc) -> CaseResult {
    let latency = a.hist.as_ref().map(|h| Latency {
        samples: h.len(),
        min_ns: h.min(),
        p50_ns: h.value_at_quantile(0.5),
        p90_ns: h.value_at_quantile(0.9),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
        percentiles: report::PLOT_PERCENTILES
            .iter()
            .map(|&p| (p, h.value_at_quantile(p / 100.0)))
            .collect(),
        mean_ns: h.mean(),
        batch_p50_ns: a.batch_p50.clone(),
    });
    let throughput = if a.rates.is_empty() {
        None
    } else {
        let mut r = a.rates.clone();
        r.sort_by(f64::total_cmp);
        let med = r[r.len() / 2];
        Some(Throughput {
            msgs_per_s: med,
            gb_per_s: med * case.size as f64 / 1e9,
            batch_msgs_per_s: a.rates.clone(),
        })
    };
    CaseResult {
        scenario: case.scenario,
        size: case.size,
        contender: c.name().to_string(),
        latency,
        throughput,
        errors: a.errors,
    }
}
