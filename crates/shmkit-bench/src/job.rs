//! What one parent/child pair does: a [`Job`], described to the child by a
//! [`PeerSpec`] passed as JSON on its command line, and the two roles that
//! run it over any [`Link`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::contender::ContenderId;
use crate::link::{recv_seq, send_seq, Link, Result};

/// Sequence numbers of replies and acknowledgements live far above the
/// numbers of requests, so a message can never pass for another.
const REPLY: u64 = 1 << 40;
const ACK: u64 = 1 << 48;

/// Length of the acknowledgement that ends a stream.
pub const ACK_LEN: usize = 8;

/// One measurement between two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// The parent sends `size` bytes, the child checks them and answers
    /// with `size` bytes of its own, which the parent checks; one-way
    /// latency is half the round trip. `warmup` round trips are not
    /// recorded.
    PingPong {
        /// Payload bytes each way.
        size: usize,
        /// Unrecorded round trips first.
        warmup: u64,
        /// Recorded round trips.
        iters: u64,
    },
    /// The parent sends `count` messages of `size` bytes back to back, the
    /// child checks each and acknowledges the last; preceded by `warmup`
    /// messages and their own acknowledgement.
    Stream {
        /// Bytes per message.
        size: usize,
        /// Messages of the untimed warm-up pass.
        warmup: u64,
        /// Messages of the timed pass.
        count: u64,
    },
    /// Ping-pong at a fixed rate, free of coordinated omission: request `i`
    /// is due at `start + i / rate`; the parent waits (spinning) until then
    /// and sends, and the recorded figure is the time from the *intended*
    /// send time to the receipt of the reply. A stall therefore counts
    /// against every request that should have been sent during it, not only
    /// the one that met it (as Aeron's and wrk2's benchmarks measure).
    FixedRate {
        /// Payload bytes each way.
        size: usize,
        /// Requests per second.
        rate: u64,
        /// Unrecorded requests first (at the same rate).
        warmup: u64,
        /// Recorded requests.
        iters: u64,
    },
}

impl Job {
    /// Largest message either side sends.
    pub fn max_len(&self) -> usize {
        match *self {
            Job::PingPong { size, .. } | Job::FixedRate { size, .. } => size,
            Job::Stream { size, .. } => size.max(ACK_LEN),
        }
    }
}

/// Everything the child needs to build its end and run its role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSpec {
    /// Which mechanism.
    pub contender: ContenderId,
    /// What to do.
    pub job: Job,
    /// Unique base name for this job's named resources (segments,
    /// services).
    pub resource: String,
    /// Per-run iceoryx2 file prefix and root directory (so that cleanup can
    /// find every file it made).
    pub iox_prefix: String,
    /// See `iox_prefix`.
    pub iox_root: String,
    /// Time the whole job may take, in milliseconds.
    pub timeout_ms: u64,
    /// Pin the peer to CPU 1 (the parent pins itself to CPU 0); set for
    /// busy-poll contenders only.
    pub pin: bool,
}

impl PeerSpec {
    /// The deadline of this job, counted from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.timeout_ms)
    }
}

/// What the parent measured.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// One-way latencies in nanoseconds (half of each round trip); for
    /// [`Job::FixedRate`], whole round trips from the intended send time.
    Latencies(Vec<u64>),
    /// Time of the timed stream pass, from the first send to the receipt of
    /// the acknowledgement.
    Elapsed(Duration),
}

/// The parent's role: sends, times, checks.
pub fn parent_role<L: Link>(link: &mut L, job: &Job, deadline: Instant) -> Result<Outcome> {
    match *job {
        Job::PingPong {
            size,
            warmup,
            iters,
        } => {
            let mut out = Vec::with_capacity(iters as usize);
            for i in 0..warmup + iters {
                let t0 = Instant::now();
                send_seq(link, size, i, deadline)?;
                recv_seq(link, size, i + REPLY, deadline)?;
                let rtt = t0.elapsed().as_nanos() as u64;
                if i >= warmup {
                    out.push(rtt / 2);
                }
            }
            Ok(Outcome::Latencies(out))
        }
        Job::Stream {
            size,
            warmup,
            count,
        } => {
            let mut i = 0;
            while i < warmup {
                i += link.send_many(size, i, warmup - i, deadline)?;
            }
            recv_seq(link, ACK_LEN, ACK, deadline)?;
            let t0 = Instant::now();
            let mut i = 0;
            while i < count {
                i += link.send_many(size, warmup + i, count - i, deadline)?;
            }
            recv_seq(link, ACK_LEN, ACK + 1, deadline)?;
            Ok(Outcome::Elapsed(t0.elapsed()))
        }
        Job::FixedRate {
            size,
            rate,
            warmup,
            iters,
        } => {
            let period_ns = 1_000_000_000 / rate.max(1);
            let mut out = Vec::with_capacity(iters as usize);
            let start = Instant::now();
            for i in 0..warmup + iters {
                let due = start + Duration::from_nanos(i * period_ns);
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                send_seq(link, size, i, deadline)?;
                recv_seq(link, size, i + REPLY, deadline)?;
                if i >= warmup {
                    out.push(due.elapsed().as_nanos() as u64);
                }
            }
            Ok(Outcome::Latencies(out))
        }
    }
}

/// The child's role: mirrors [`parent_role`].
pub fn child_role<L: Link>(link: &mut L, job: &Job, deadline: Instant) -> Result<()> {
    match *job {
        Job::PingPong {
            size,
            warmup,
            iters,
        }
        | Job::FixedRate {
            size,
            warmup,
            iters,
            ..
        } => {
            for i in 0..warmup + iters {
                recv_seq(link, size, i, deadline)?;
                send_seq(link, size, i + REPLY, deadline)?;
            }
        }
        Job::Stream {
            size,
            warmup,
            count,
        } => {
            let mut i = 0;
            while i < warmup {
                i += link.recv_many(size, i, warmup - i, deadline)?;
            }
            send_seq(link, ACK_LEN, ACK, deadline)?;
            let mut i = 0;
            while i < count {
                i += link.recv_many(size, warmup + i, count - i, deadline)?;
            }
            send_seq(link, ACK_LEN, ACK + 1, deadline)?;
        }
    }
    Ok(())
}
