//! shmkit's own channels, each in two waiting modes:
//!
//! - ring: `channel::ring` SPSC, one ring per direction, zero-copy
//!   `send_with` / `recv_with` (the payload is written and read in place in
//!   the ring's slot);
//! - pub/sub: `channel::pubsub`, one channel per direction with one
//!   subscriber, back-pressure policy, `loan` → fill in place → `publish`,
//!   the subscriber reads the sample in place.
//!
//! - ring, batched (stream scenario only): the same rings, streamed with
//!   `send_batch` (up to [`BATCH`] messages per call, copied from the
//!   sender's buffers) and `recv_batch` (read in place, all their slots
//!   freed at once), as a user streaming small messages would.
//!
//! Both variants call the waiting forms with the job's deadline
//! (`send_with` / `recv_with` / `loan_deadline` / `recv_deadline` with
//! `Wait::Until`), as a user would; they differ in the endpoint's
//! [`WaitStrategy`]: `BusyPoll` (pure spin on the shared index, liveness
//! checked every few thousand spins — the same pure spin the floor and
//! iceoryx2 get from [`crate::link::spin_until`]) or `Sleep` (futex wait at
//! once).
//!
//! Not `try_recv` in a spin loop: on an empty channel it checks the
//! producer's liveness (an `fcntl(F_OFD_GETLK)` system call) on every call,
//! which costs a syscall per poll and, on a loaded machine, a preemption
//! point per poll.

use std::time::Instant;

use shmkit::channel::pubsub::{Policy, PubSubOptions, Publisher, Subscriber};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::{Wait, WaitStrategy};
use shmkit::segment::{self, Lifetime};

use crate::job::{Job, PeerSpec, ACK_LEN};
use crate::link::{check, Link, Result};

/// (slots, max message) per direction: (parent→child, child→parent).
fn shape(job: &Job) -> ((u64, usize), (u64, usize)) {
    match *job {
        Job::PingPong { size, .. } | Job::FixedRate { size, .. } => ((4, size), (4, size)),
        Job::Stream { size, .. } => {
            let slots = if size <= 4096 { 256 } else { 4 };
            ((slots, size), (4, ACK_LEN))
        }
    }
}

fn names(spec: &PeerSpec) -> (String, String) {
    (
        format!("{}-down", spec.resource),
        format!("{}-up", spec.resource),
    )
}

/// Removes the job's segments when the parent's side goes (lifetime
/// `UntilLastDetach` normally does it; this covers a child that never
/// attached).
struct Remover(Option<(String, String)>);

impl Drop for Remover {
    fn drop(&mut self) {
        if let Some((a, b)) = self.0.take() {
            let _ = segment::remove(&a);
            let _ = segment::remove(&b);
        }
    }
}

/// Most messages per `send_batch` / `recv_batch` of the batched variant.
pub const BATCH: usize = 32;

/// One side of a pair of shmkit rings.
pub struct RingLink {
    tx: Sender,
    rx: Receiver,
    /// The batched variant's message buffers (empty: per message).
    batch: Vec<Vec<u8>>,
    _rm: Remover,
}

impl RingLink {
    /// The parent's side: creates both rings.
    pub fn parent(spec: &PeerSpec, spin: bool) -> Result<RingLink> {
        let (down, up) = names(spec);
        let rm = Remover(Some((down.clone(), up.clone())));
        let ((ds, dm), (us, um)) = shape(&spec.job);
        let opts = |slots: u64, max: usize| {
            RingOptions::new(slots, max as u64).lifetime(Lifetime::UntilLastDetach)
        };
        let tx = Sender::create(&down, &opts(ds, dm)).map_err(|e| e.to_string())?;
        let rx = Receiver::create(&up, &opts(us, um)).map_err(|e| e.to_string())?;
        Ok(RingLink::with(tx, rx, spin, rm))
    }

    /// The child's side: opens them.
    pub fn child(spec: &PeerSpec, spin: bool) -> Result<RingLink> {
        let (down, up) = names(spec);
        let rx = Receiver::open(&down).map_err(|e| e.to_string())?;
        let tx = Sender::open(&up).map_err(|e| e.to_string())?;
        Ok(RingLink::with(tx, rx, spin, Remover(None)))
    }

    fn with(mut tx: Sender, mut rx: Receiver, spin: bool, rm: Remover) -> RingLink {
        let strategy = if spin {
            WaitStrategy::BusyPoll
        } else {
            WaitStrategy::Sleep
        };
        tx.set_wait_strategy(strategy);
        rx.set_wait_strategy(strategy);
        RingLink {
            tx,
            rx,
            batch: Vec::new(),
            _rm: rm,
        }
    }

    /// The batched variant: streams go through `send_batch` /
    /// `recv_batch` (other messages, the acknowledgements, one by one).
    pub fn batched(mut self, spec: &PeerSpec) -> RingLink {
        self.batch = vec![vec![0u8; spec.job.max_len()]; BATCH];
        self
    }
}

impl Link for RingLink {
    #[inline]
    fn send(
        &mut self,
        len: usize,
        deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()> {
        let mut fill = Some(fill);
        self.tx
            .send_with(len, Wait::Until(deadline), |buf| {
                if let Some(f) = fill.take() {
                    f(buf.as_mut_ptr(), buf.len());
                }
            })
            .map_err(|e| format!("ring send: {e}"))
    }

    #[inline]
    fn recv<R>(
        &mut self,
        len: usize,
        deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.rx
            .recv_with(Wait::Until(deadline), |b| {
                if b.len() == len {
                    Ok(read(b))
                } else {
                    Err(format!("ring message of {} B, expected {len}", b.len()))
                }
            })
            .map_err(|e| format!("ring recv: {e}"))?
    }

    #[inline]
    fn send_many(&mut self, len: usize, seq: u64, n: u64, deadline: Instant) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        if self.batch.is_empty() {
            return crate::link::send_seq(self, len, seq, deadline).map(|()| 1);
        }
        let k = (n as usize).min(BATCH);
        for (i, b) in self.batch[..k].iter_mut().enumerate() {
            b.resize(len, 0);
            // SAFETY: `b` holds `len` bytes.
            unsafe { crate::link::fill_raw(b.as_mut_ptr(), len, seq + i as u64) };
        }
        let sent = self
            .tx
            .send_batch(&self.batch[..k], Wait::Until(deadline))
            .map_err(|e| format!("ring send_batch: {e}"))?;
        Ok(sent as u64)
    }

    #[inline]
    fn recv_many(&mut self, len: usize, seq: u64, n: u64, deadline: Instant) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        if self.batch.is_empty() {
            return crate::link::recv_seq(self, len, seq, deadline).map(|()| 1);
        }
        let mut bad = None;
        let mut k = 0u64;
        let got = self
            .rx
            .recv_batch(n.min(BATCH as u64) as usize, Wait::Until(deadline), |b| {
                if bad.is_none() && (b.len() != len || !check(b, seq + k)) {
                    bad = Some(seq + k);
                }
                k += 1;
            })
            .map_err(|e| format!("ring recv_batch: {e}"))?;
        match bad {
            Some(s) => Err(format!(
                "message {s} ({len} B) failed its length or checksum"
            )),
            None => Ok(got as u64),
        }
    }
}

/// One side of a pair of shmkit publish/subscribe channels.
pub struct PubSubLink {
    publisher: Publisher,
    subscriber: Subscriber,
    _rm: Remover,
}

impl PubSubLink {
    /// The parent's side: creates both channels, publishes on `down`,
    /// subscribes to `up` before the child exists.
    pub fn parent(spec: &PeerSpec, spin: bool) -> Result<PubSubLink> {
        let (down, up) = names(spec);
        let rm = Remover(Some((down.clone(), up.clone())));
        let ((ds, dm), (us, um)) = shape(&spec.job);
        let opts = |slots: u64, max: usize| {
            PubSubOptions::new(slots, max as u64, 1)
                .policy(Policy::Block)
                .lifetime(Lifetime::UntilLastDetach)
        };
        let publisher = Publisher::create(&down, &opts(ds, dm)).map_err(|e| e.to_string())?;
        let seg = opts(us, um).create(&up).map_err(|e| e.to_string())?;
        let subscriber = Subscriber::from_segment(seg).map_err(|e| e.to_string())?;
        Ok(PubSubLink::with(publisher, subscriber, spin, rm))
    }

    /// The child's side: subscribes to `down` (before it reports ready),
    /// publishes on `up`.
    pub fn child(spec: &PeerSpec, spin: bool) -> Result<PubSubLink> {
        let (down, up) = names(spec);
        let subscriber = Subscriber::open(&down).map_err(|e| e.to_string())?;
        let publisher = Publisher::open(&up).map_err(|e| e.to_string())?;
        Ok(PubSubLink::with(publisher, subscriber, spin, Remover(None)))
    }

    fn with(mut publisher: Publisher, subscriber: Subscriber, spin: bool, rm: Remover) -> Self {
        let strategy = if spin {
            WaitStrategy::BusyPoll
        } else {
            WaitStrategy::Sleep
        };
        publisher.set_wait_strategy(strategy);
        subscriber.set_wait_strategy(strategy);
        PubSubLink {
            publisher,
            subscriber,
            _rm: rm,
        }
    }
}

impl Link for PubSubLink {
    #[inline]
    fn send(
        &mut self,
        len: usize,
        deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()> {
        let mut loan = self
            .publisher
            .loan_deadline(len, deadline)
            .map_err(|e| format!("pub/sub loan: {e}"))?;
        if loan.len() != len {
            return Err(format!("pub/sub loaned {} B, asked {len}", loan.len()));
        }
        fill(loan.as_mut_ptr(), len);
        loan.publish();
        Ok(())
    }

    #[inline]
    fn recv<R>(
        &mut self,
        len: usize,
        deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let sample = self
            .subscriber
            .recv_deadline(deadline)
            .map_err(|e| format!("pub/sub recv: {e}"))?;
        if sample.missed() != 0 {
            return Err(format!("pub/sub: {} messages missed", sample.missed()));
        }
        if sample.len() != len {
            return Err(format!(
                "pub/sub sample of {} B, expected {len}",
                sample.len()
            ));
        }
        Ok(read(&sample))
    }
}
