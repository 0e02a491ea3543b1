//! iceoryx2 publish/subscribe over `ipc` (shared memory) between the two
//! processes: one service per direction, payload type `[u8]` with the loan
//! API (the sender writes straight into the loaned shared-memory sample,
//! the receiver reads the sample in place), busy-poll receive, back-pressure
//! (`enable_safe_overflow(false)` + `RetryUntilDelivered`) so a stream loses
//! nothing.
//!
//! Every file iceoryx2 makes goes under a per-run root directory and a
//! per-run file prefix (see [`crate::cleanup`]), so the harness can remove
//! them all afterwards.

use std::sync::atomic::Ordering;
use std::time::Instant;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;

use crate::job::{Job, PeerSpec, ACK_LEN};
use crate::link::{spin_until, Link, Result, PEER_EXITED};

fn err(what: &str) -> impl Fn(&dyn std::fmt::Debug) -> String + '_ {
    move |e| format!("iceoryx2 {what}: {e:?}")
}

/// Subscriber queue depth and maximum slice length per direction.
fn shape(job: &Job) -> ((usize, usize), (usize, usize)) {
    match *job {
        Job::PingPong { size, .. } | Job::FixedRate { size, .. } => ((2, size), (2, size)),
        Job::Stream { size, .. } => {
            let depth = if size <= 4096 { 256 } else { 4 };
            ((depth, size), (2, ACK_LEN))
        }
    }
}

/// One side of the iceoryx2 link.
pub struct Iox2Link {
    // Ports first: they must be dropped before the node.
    publisher: Publisher<ipc::Service, [u8], ()>,
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    _node: Node<ipc::Service>,
}

impl Iox2Link {
    fn new(spec: &PeerSpec, is_parent: bool) -> Result<Iox2Link> {
        iceoryx2::prelude::set_log_level(LogLevel::Error);
        let mut config = Config::default();
        config.global.prefix =
            FileName::new(spec.iox_prefix.as_bytes()).map_err(|e| err("prefix")(&e))?;
        config
            .global
            .set_root_path(&Path::new(spec.iox_root.as_bytes()).map_err(|e| err("root path")(&e))?);
        let node = NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(|e| err("node")(&e))?;
        let (down, up) = shape(&spec.job);
        let open = |dir: &str, (depth, _len): (usize, usize)| {
            let name = format!("shmkit-bench/{}/{dir}", spec.resource);
            let name: ServiceName = name
                .as_str()
                .try_into()
                .map_err(|e| err("service name")(&e))?;
            node.service_builder(&name)
                .publish_subscribe::<[u8]>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(depth)
                .history_size(0)
                .max_publishers(1)
                .max_subscribers(1)
                .max_nodes(2)
                .open_or_create()
                .map_err(|e| err("service")(&e))
        };
        let down_svc = open("down", down)?;
        let up_svc = open("up", up)?;
        let (tx_svc, tx_shape, rx_svc, rx_shape) = if is_parent {
            (down_svc, down, up_svc, up)
        } else {
            (up_svc, up, down_svc, down)
        };
        // With the subscriber's queue full, `send` retries (yield, then
        // sleep) until delivered; it does not notice a dead subscriber. The
        // handler ends the retries when the peer exited or the job's
        // deadline passed, so a failed peer fails the job instead of
        // hanging it.
        let deadline = spec.deadline();
        let publisher = tx_svc
            .publisher_builder()
            .initial_max_slice_len(tx_shape.1)
            .max_loaned_samples(2)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .set_backpressure_handler(move |_: &BackpressureInfo| {
                // Relaxed: a hint, see `PEER_EXITED`.
                if PEER_EXITED.load(Ordering::Relaxed) || Instant::now() > deadline {
                    BackpressureAction::DiscardDataAndFail
                } else {
                    BackpressureAction::Retry
                }
            })
            .create()
            .map_err(|e| err("publisher")(&e))?;
        let subscriber = rx_svc
            .subscriber_builder()
            .buffer_size(rx_shape.0)
            .create()
            .map_err(|e| err("subscriber")(&e))?;
        Ok(Iox2Link {
            publisher,
            subscriber,
            _node: node,
        })
    }

    /// The parent's side (creates both services).
    pub fn parent(spec: &PeerSpec) -> Result<Iox2Link> {
        Iox2Link::new(spec, true)
    }

    /// The child's side (opens them).
    pub fn child(spec: &PeerSpec) -> Result<Iox2Link> {
        Iox2Link::new(spec, false)
    }
}

impl Link for Iox2Link {
    #[inline]
    fn send(
        &mut self,
        len: usize,
        _deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()> {
        let mut sample = self
            .publisher
            .loan_slice_uninit(len)
            .map_err(|e| err("loan")(&e))?;
        let dst = sample.payload_mut();
        if dst.len() != len {
            return Err(format!("iceoryx2 loaned {} B, asked {len}", dst.len()));
        }
        fill(dst.as_mut_ptr().cast::<u8>(), len);
        // SAFETY: `fill` wrote all `len` bytes of the loaned slice.
        let sample = unsafe { sample.assume_init() };
        sample.send().map_err(|e| err("send")(&e))?;
        Ok(())
    }

    #[inline]
    fn recv<R>(
        &mut self,
        len: usize,
        deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let mut got = None;
        let mut failure = None;
        spin_until(deadline, "an iceoryx2 sample", || {
            match self.subscriber.receive() {
                Ok(Some(s)) => {
                    got = Some(s);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    failure = Some(err("receive")(&e));
                    true
                }
            }
        })?;
        if let Some(f) = failure {
            return Err(f);
        }
        let sample = got.ok_or("iceoryx2: no sample")?;
        let payload = sample.payload();
        if payload.len() != len {
            return Err(format!(
                "iceoryx2 sample of {} B, expected {len}",
                payload.len()
            ));
        }
        Ok(read(payload))
    }
}
