//! Results of a run and their three renderings: a Markdown table, a JSON
//! file with raw figures and machine info, and SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::plan::{size_label, Scenario};

/// The machine, as the run saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// /proc/loadavg when the run started.
    pub loadavg_start: String,
    /// /proc/loadavg when it ended.
    pub loadavg_end: String,
}

impl Machine {
    /// Reads what it can; unknown fields say so.
    pub fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu,
            cores,
            kernel,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// What one contender achieved in one case, over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Scenario name.
    pub scenario: Scenario,
    /// Payload bytes per message.
    pub size: usize,
    /// Contender name.
    pub contender: String,
    /// Latency percentiles in ns (latency scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Throughput (stream and bandwidth scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    /// Errors of failed jobs (empty when all went well).
    pub errors: Vec<String>,
}

/// The percentiles kept for the HDR percentile plots.
pub const PLOT_PERCENTILES: [f64; 14] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.8, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// One-way latency in nanoseconds over every recorded round trip.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Recorded samples.
    pub samples: u64,
    /// Minimum.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Maximum after warm-up (warm-up round trips are never recorded).
    pub max_ns: u64,
    /// `(percentile, ns)` at [`PLOT_PERCENTILES`], for the percentile plots.
    pub percentiles: Vec<(f64, u64)>,
    /// Mean.
    pub mean_ns: f64,
    /// The median of each round's batch, in round order (drift check).
    pub batch_p50_ns: Vec<u64>,
}

/// Throughput: the median over rounds, with every round's figure.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Median messages per second.
    pub msgs_per_s: f64,
    /// Median payload gigabytes (1e9 B) per second.
    pub gb_per_s: f64,
    /// Each round's messages per second.
    pub batch_msgs_per_s: Vec<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    /// Quick mode?
    pub quick: bool,
    /// Rounds (each contender ran each case once per round).
    pub rounds: u32,
    /// Busy-poll jobs: parent pinned to CPU 0, peer to CPU 1.
    pub pinned: bool,
    /// Unix time of the start.
    pub started_unix: u64,
    /// Seconds the run took.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// Every (case, contender).
    pub results: Vec<CaseResult>,
}

/// `123 ns`, `12.3 µs`, `1.23 ms`.
pub fn fmt_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.3} µs", f / 1e3)
    } else {
        format!("{:.3} ms", f / 1e6)
    }
}

/// Axis label for a byte count: `10 B`, `98 KiB`, `10 MiB`.
fn axis_bytes(x: f64) -> String {
    if x < 1024.0 {
        format!("{x:.0} B")
    } else if x < 1024.0 * 1024.0 {
        format!("{:.0} KiB", x / 1024.0)
    } else {
        format!("{:.0} MiB", x / (1024.0 * 1024.0))
    }
}

/// Axis label for nanoseconds: `100 ns`, `10 µs`, `1 ms`.
fn axis_ns(y: f64) -> String {
    if y < 1e3 {
        format!("{y:.0} ns")
    } else if y < 1e6 {
        format!("{:.0} µs", y / 1e3)
    } else {
        format!("{:.0} ms", y / 1e6)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}×"),
        _ => "–".into(),
    }
}

impl Report {
    fn find(&self, scenario: Scenario, size: usize, contender: &str) -> Option<&CaseResult> {
        self.results
            .iter()
            .find(|r| r.scenario == scenario && r.size == size && r.contender == contender)
    }

    /// Time ratio of `r` to `reference` (> 1: slower than the reference).
    fn time_ratio(&self, r: &CaseResult, reference: &str) -> Option<f64> {
        let base = self.find(r.scenario, r.size, reference)?;
        match (&r.latency, &base.latency, &r.throughput, &base.throughput) {
            (Some(a), Some(b), _, _) if b.p50_ns > 0 => Some(a.p50_ns as f64 / b.p50_ns as f64),
            (_, _, Some(a), Some(b)) if a.msgs_per_s > 0.0 => Some(b.msgs_per_s / a.msgs_per_s),
            _ => None,
        }
    }

    /// The Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Machine: {} ({} logical CPUs), Linux {}; load average {} at start, {} at end. \
             Mode: {}, {} round(s), {:.0} s, {}.\n",
            m.cpu,
            m.cores,
            m.kernel,
            m.loadavg_start,
            m.loadavg_end,
            if self.quick { "quick" } else { "full" },
            self.rounds,
            self.duration_s,
            if self.pinned {
                "busy-poll jobs pinned to CPUs 0 and 1, blocking jobs not pinned"
            } else {
                "not pinned"
            }
        );
        let _ = writeln!(
            s,
            "Ratios are time ratios against the named reference in the same run: \
             1.50× = takes 1.5 times as long (p50 latency, or time per message); \
             below 1 = faster.\n"
        );
        let _ = writeln!(s, "### One-way latency (half a round trip, payload written and checksummed on both sides)\n");
        let _ = writeln!(
            s,
            "| payload | contender | p50 | p90 | p99 | p99.9 | max after warm-up | p50 − floor | p50 vs floor | p50 vs iceoryx2 |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self
            .results
            .iter()
            .filter(|r| r.scenario == Scenario::Latency)
        {
            match &r.latency {
                Some(l) => {
                    let over = self
                        .find(r.scenario, r.size, "floor")
                        .and_then(|f| f.latency.as_ref())
                        .map_or("–".to_string(), |f| {
                            let d = l.p50_ns as i64 - f.p50_ns as i64;
                            let sign = if d < 0 { "−" } else { "" };
                            format!("{sign}{}", fmt_ns(d.unsigned_abs()))
                        });
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        size_label(r.size),
                        r.contender,
                        fmt_ns(l.p50_ns),
                        fmt_ns(l.p90_ns),
                        fmt_ns(l.p99_ns),
                        fmt_ns(l.p999_ns),
                        fmt_ns(l.max_ns),
                        over,
                        fmt_ratio(self.time_ratio(r, "floor")),
                        fmt_ratio(self.time_ratio(r, "iceoryx2")),
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | FAILED | | | | | | | |",
                        size_label(r.size),
                        r.contender
                    );
                }
            }
        }
        self.fixed_rate_table(&mut s);
        for (sc, title, unit) in [
            (
                Scenario::Stream,
                "Streaming throughput (back-to-back messages)",
                "messages/s",
            ),
            (
                Scenario::Bandwidth,
                "Large-frame bandwidth",
                "GB/s (1e9 B/s)",
            ),
        ] {
            if !self.results.iter().any(|r| r.scenario == sc) {
                continue;
            }
            let _ = writeln!(s, "\n### {title}\n");
            let _ = writeln!(
                s,
                "| message | contender | {unit} | vs floor | vs iceoryx2 |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|");
            for r in self.results.iter().filter(|r| r.scenario == sc) {
                let v = match (&r.throughput, sc) {
                    (Some(t), Scenario::Bandwidth) => format!("{:.2}", t.gb_per_s),
                    (Some(t), _) => fmt_rate(t.msgs_per_s),
                    (None, _) => "FAILED".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    size_label(r.size),
                    r.contender,
                    v,
                    fmt_ratio(self.time_ratio(r, "floor")),
                    fmt_ratio(self.time_ratio(r, "iceoryx2")),
                );
            }
        }
        let failed: Vec<_> = self
            .results
            .iter()
            .filter(|r| !r.errors.is_empty())
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\n### Failures\n");
            for r in failed {
                for e in &r.errors {
                    let _ = writeln!(
                        s,
                        "- {} {} {}: {e}",
                        r.scenario.name(),
                        size_label(r.size),
                        r.contender
                    );
                }
            }
        }
        s
    }

    /// The fixed-rate table: round trips timed from the intended send time.
    fn fixed_rate_table(&self, s: &mut String) {
        let rows: Vec<&CaseResult> = self
            .results
            .iter()
            .filter(|r| r.scenario == Scenario::FixedRate)
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### Fixed-rate round trip, from the intended send time (no coordinated omission)\n"
        );
        let _ = writeln!(
            s,
            "Rates: {}. A late reply delays the next request, and that delay counts \
             against it.\n",
            crate::plan::FIXED_RATES
                .iter()
                .map(|(size, rate)| format!("{} at {}", size_label(*size), fmt_rate(*rate as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "| payload | contender | p50 | p99 | p99.9 | p99.99 | max after warm-up | p99.9 vs floor | p99.9 vs iceoryx2 |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            let Some(l) = &r.latency else {
                let _ = writeln!(
                    s,
                    "| {} | {} | FAILED | | | | | | |",
                    size_label(r.size),
                    r.contender
                );
                continue;
            };
            let p9999 = l
                .percentiles
                .iter()
                .find(|(p, _)| *p == 99.99)
                .map_or(0, |&(_, v)| v);
            let ratio = |reference: &str| {
                let b = self.find(r.scenario, r.size, reference)?.latency.as_ref()?;
                (b.p999_ns > 0).then(|| l.p999_ns as f64 / b.p999_ns as f64)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size_label(r.size),
                r.contender,
                fmt_ns(l.p50_ns),
                fmt_ns(l.p99_ns),
                fmt_ns(l.p999_ns),
                fmt_ns(p9999),
                fmt_ns(l.max_ns),
                fmt_ratio(ratio("floor")),
                fmt_ratio(ratio("iceoryx2")),
            );
        }
    }

    /// Writes `results.md`, `results.json`, `latency_p50.svg`,
    /// `latency_p99.svg` and the percentile plots `hdr_8B.svg`,
    /// `hdr_1MiB.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let md = self.markdown();
        std::fs::write(dir.join("results.md"), &md).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
        for (file, pick, what) in [
            ("latency_p50.svg", 50u8, "p50"),
            ("latency_p99.svg", 99u8, "p99"),
        ] {
            self.plot(&dir.join(file), pick, what)
                .map_err(|e| format!("{file}: {e}"))?;
        }
        for (file, size) in [("hdr_8B.svg", 8usize), ("hdr_1MiB.svg", 1 << 20)] {
            if self
                .results
                .iter()
                .any(|r| r.scenario == Scenario::Latency && r.size == size && r.latency.is_some())
            {
                self.plot_hdr(&dir.join(file), size)
                    .map_err(|e| format!("{file}: {e}"))?;
            }
        }
        Ok(())
    }

    /// An HDR percentile plot: latency against percentile, the x axis
    /// stretched as `1 / (1 - p)` so that the tail gets the room.
    fn plot_hdr(&self, path: &Path, size: usize) -> Result<(), Box<dyn std::error::Error>> {
        let rows: Vec<&CaseResult> = self
            .results
            .iter()
            .filter(|r| r.scenario == Scenario::Latency && r.size == size)
            .collect();
        // x = 1 / (1 - p/100), capped where p = 100 (the max).
        let xmax = 1e6;
        let x_of = |p: f64| {
            if p >= 100.0 {
                xmax
            } else {
                (1.0 / (1.0 - p / 100.0)).min(xmax)
            }
        };
        let series: Vec<(&str, Vec<(f64, f64)>)> = rows
            .iter()
            .filter_map(|r| {
                let l = r.latency.as_ref()?;
                let pts = l
                    .percentiles
                    .iter()
                    .map(|&(p, v)| (x_of(p), v.max(1) as f64))
                    .collect();
                Some((r.contender.as_str(), pts))
            })
            .collect();
        let ys = || series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
        let ymax = ys().fold(1_000.0f64, f64::max);
        let ymin = ys().fold(f64::MAX, f64::min).min(ymax / 10.0);
        let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "One-way latency by percentile, {} payload (log-log, lower is better)",
                    size_label(size)
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (1.0f64..xmax).log_scale(),
                (ymin / 2.0..ymax * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("one-way latency (ns)")
            .x_label_formatter(&|x| {
                if *x >= xmax {
                    "max".into()
                } else {
                    let p = 100.0 * (1.0 - 1.0 / x);
                    format!("{p:.3}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string()
                        + "%"
                }
            })
            .y_label_formatter(&|y| axis_ns(*y))
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }

    fn plot(&self, path: &Path, pick: u8, what: &str) -> Result<(), Box<dyn std::error::Error>> {
        let mut contenders: Vec<&str> = Vec::new();
        for r in &self.results {
            if !contenders.contains(&r.contender.as_str()) {
                contenders.push(&r.contender);
            }
        }
        let series: Vec<(&str, Vec<(f64, f64)>)> = contenders
            .iter()
            .map(|c| {
                let pts = self
                    .results
                    .iter()
                    .filter(|r| r.scenario == Scenario::Latency && r.contender == *c)
                    .filter_map(|r| {
                        let l = r.latency.as_ref()?;
                        let v = if pick == 50 { l.p50_ns } else { l.p99_ns };
                        Some((r.size as f64, v.max(1) as f64))
                    })
                    .collect();
                (*c, pts)
            })
            .collect();
        let ymax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
            .fold(1_000.0f64, f64::max);
        let ymin = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
            .fold(f64::MAX, f64::min)
            .min(ymax / 10.0);
        let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("One-way latency {what} vs payload (log-log, lower is better)"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (4.0f64..32.0 * 1024.0 * 1024.0).log_scale(),
                (ymin / 2.0..ymax * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("payload bytes")
            .y_desc(format!("one-way latency {what} (ns)"))
            .x_label_formatter(&|x| axis_bytes(*x))
            .y_label_formatter(&|y| axis_ns(*y))
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
