//! The scenarios, their sizes, and the alternating schedule.

use serde::Serialize;

use crate::job::Job;

/// What a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Ping-pong one-way latency.
    Latency,
    /// Small-message streaming throughput (messages/s).
    Stream,
    /// Large-frame bandwidth (GB/s).
    Bandwidth,
    /// Round trips at a fixed request rate, timed from the intended send
    /// time (no coordinated omission).
    FixedRate,
}

impl Scenario {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Stream => "stream",
            Scenario::Bandwidth => "bandwidth",
            Scenario::FixedRate => "fixedrate",
        }
    }
}

/// One (scenario, size) with its job parameters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Case {
    /// What it measures.
    pub scenario: Scenario,
    /// Payload bytes per message.
    pub size: usize,
    /// The job each contender runs for this case, once per round.
    #[serde(skip)]
    pub job: Job,
}

/// Latency payload sizes.
pub const LATENCY_SIZES: [usize; 6] = [8, 64, 4 << 10, 64 << 10, 1 << 20, 16 << 20];
/// Streaming message sizes.
pub const STREAM_SIZES: [usize; 2] = [8, 64];
/// Bandwidth frame sizes.
pub const FRAME_SIZES: [usize; 2] = [1 << 20, 16 << 20];
/// Fixed-rate cases: (payload, requests per second). The rates leave every
/// contender's round trip well inside the period on an idle machine, so
/// what the tail shows is stalls, not saturation.
pub const FIXED_RATES: [(usize, u64); 2] = [(8, 100_000), (1 << 20, 1_000)];

/// The cases of a run; `quick` shrinks every count.
pub fn cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    for size in LATENCY_SIZES {
        let iters: u64 = match (size, quick) {
            (s, false) if s <= 4096 => 20_000,
            (s, true) if s <= 4096 => 1_000,
            (s, false) if s <= 65536 => 4_000,
            (s, true) if s <= 65536 => 200,
            (s, false) if s <= 1 << 20 => 300,
            (s, true) if s <= 1 << 20 => 20,
            (_, false) => 24,
            (_, true) => 4,
        };
        let warmup = (iters / 10).max(4);
        v.push(Case {
            scenario: Scenario::Latency,
            size,
            job: Job::PingPong {
                size,
                warmup,
                iters,
            },
        });
    }
    for size in STREAM_SIZES {
        let count = if quick { 20_000 } else { 500_000 };
        v.push(Case {
            scenario: Scenario::Stream,
            size,
            job: Job::Stream {
                size,
                warmup: count / 10,
                count,
            },
        });
    }
    for size in FRAME_SIZES {
        let count = match (size, quick) {
            (s, false) if s <= 1 << 20 => 200,
            (s, true) if s <= 1 << 20 => 10,
            (_, false) => 16,
            (_, true) => 3,
        };
        v.push(Case {
            scenario: Scenario::Bandwidth,
            size,
            job: Job::Stream {
                size,
                warmup: (count / 10).max(8),
                count,
            },
        });
    }
    for (size, rate) in FIXED_RATES {
        // About 1 s per job in a full run, 0.1 s in quick mode.
        let iters = if quick { rate / 10 } else { rate };
        v.push(Case {
            scenario: Scenario::FixedRate,
            size,
            job: Job::FixedRate {
                size,
                rate,
                warmup: iters / 10,
                iters,
            },
        });
    }
    v
}

/// Human size: `8 B`, `4 KiB`, `16 MiB`.
pub fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}
