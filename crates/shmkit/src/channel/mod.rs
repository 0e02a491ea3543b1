//! Channels between processes: an SPSC ring and zero-copy
//! publish/subscribe, built on [`crate::segment`] and the futex in
//! [`crate::sys::futex`].
//!
//! - [`ring`]: one producer, one consumer, bounded, typed (`T` plain old
//!   data, fingerprint-checked) or raw byte messages up to a maximum set
//!   at creation. Lock-free hot path without system calls.
//! - [`pubsub`]: one publisher, up to 32 subscribers joining and leaving
//!   at any time; the publisher fills a loaned slot in place and every
//!   subscriber reads it in place: a 16 MiB frame costs what an 8-byte one
//!   does.
//!
//! Both share:
//!
//! - [`WaitStrategy`]: busy-poll, spin-then-sleep or sleep, chosen per
//!   endpoint; a futex wake is paid only when the other side sleeps
//!   ([`wait`] explains the protocol).
//! - Liveness ([`peer`]): every role holds an OFD byte-range lock that the
//!   kernel drops when its process dies, so a survivor gets
//!   [`RecvError::SenderDied`] / [`SendError::Disconnected`] instead of
//!   waiting for ever, and a dead subscriber's slots are reclaimed.
//! - Untrusted shared memory: every index, length and slot number read from
//!   a segment is bounds-checked; a corrupt or hostile peer causes a
//!   `Corrupt` error, never an access outside the segment.
//!
//! # Trust: zero-copy views require trusted peers
//!
//! The zero-copy APIs ([`ring::Sender::send_with`],
//! [`ring::Receiver::recv_with`], [`pubsub::Loan`], [`pubsub::Sample`] and
//! the typed pub/sub views) give you `&[u8]` / `&mut [u8]` / `&T` over
//! shared memory. Bounds are always checked, but a peer with write access
//! to the segment can change the bytes under the view, and the compiler
//! may re-load a byte your code checked once: code that validates a view
//! and then uses it can be fooled (time-of-check/time-of-use). Use views
//! only with trusted peers: the segment layer refuses segments owned by
//! another uid unless `SegmentBuilder::allow_any_owner()` is set, and the
//! default mode `0o600` keeps other users out. Never rely on reading the
//! same byte of a view twice and getting the same value. With untrusted
//! peers use the copying APIs, which read each byte once into private
//! memory: [`ring::Receiver::recv`] / `try_recv` / `recv_timeout` (a
//! `Vec<u8>`), [`ring::TypedReceiver::recv`] (a `T` by value) and
//! [`pubsub::Subscriber::recv_into`], then validate the copy.
//!
//! ```no_run
//! use shmkit::channel::ring::{Receiver, RingOptions, Sender};
//! use shmkit::channel::WaitStrategy;
//!
//! let mut tx = Sender::create("ticks", &RingOptions::new(1024, 64))?;
//! let mut rx = Receiver::open("ticks")?; // usually in another process
//! rx.set_wait_strategy(WaitStrategy::Sleep);
//! tx.send(b"tick")?;
//! assert_eq!(rx.recv()?, b"tick");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The design note is `docs/channel.md`.

mod error;
pub mod peer;
pub mod pubsub;
pub mod ring;
#[cfg(not(loom))]
pub mod rpc;
pub mod wait;

#[cfg(all(test, loom))]
mod loom_batch;
#[cfg(all(test, loom))]
mod loom_reopen;
#[cfg(all(test, loom))]
mod loom_tests;

pub use error::{OpenError, RecvError, SendError};
pub use peer::PeerState;
pub use wait::{Wait, WaitStrategy};

use crate::segment::{self, Kind, Segment};

/// Aligns and pads a field to 128 bytes, so that fields written by
/// different processes never share a cache line (nor an adjacent-line
/// prefetch pair).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub(crate) struct CachePadded<T>(pub(crate) T);

/// Human-readable facts about a channel segment, for `shmkit stat`: pairs
/// of (field, value) in display order. Reads without taking any role.
/// Fails with `WrongKind` for segments that are not channels.
pub fn describe(seg: &Segment) -> Result<Vec<(&'static str, String)>, segment::Error> {
    let role = |s: PeerState| match s {
        PeerState::NotYet => "never attached".to_owned(),
        PeerState::Alive => "alive".to_owned(),
        PeerState::Closed => "closed".to_owned(),
        PeerState::Dead => "dead".to_owned(),
    };
    match seg.kind() {
        Kind::Ring => {
            let s = ring::stats(seg)?;
            Ok(vec![
                ("depth", s.depth.to_string()),
                ("capacity", s.capacity.to_string()),
                ("max message", s.max_message.to_string()),
                ("producer", role(s.producer)),
                ("consumer", role(s.consumer)),
            ])
        }
        Kind::PubSub => {
            let s = pubsub::stats(seg)?;
            Ok(vec![
                ("depth", s.depth.to_string()),
                ("slots", s.slots.to_string()),
                ("slot size", s.slot_size.to_string()),
                ("slots in use", s.slots_in_use.to_string()),
                (
                    "subscribers",
                    format!("{} of {}", s.subscribers, s.max_subscribers),
                ),
                ("lagging subscribers", s.lagging.to_string()),
                ("policy", s.policy.as_str().to_owned()),
                ("published", s.published.to_string()),
                ("publisher", role(s.publisher)),
            ])
        }
        found => Err(segment::Error::WrongKind {
            op: "stat",
            name: seg.name().to_owned(),
            expected: Kind::Ring,
            found,
        }),
    }
}
