//! Error types of the channel operations, one per family.

use crate::segment;

/// Why a channel endpoint could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The segment layer failed (not found, wrong kind, type mismatch,
    /// corrupt header, permission...).
    #[error(transparent)]
    Segment(#[from] segment::Error),
    /// Another live process already plays this role.
    #[error("{name:?}: the {role} role is already taken by a live process")]
    RoleTaken {
        /// Segment name.
        name: String,
        /// "producer", "consumer" or "publisher".
        role: &'static str,
    },
    /// Every subscriber slot of the pub/sub channel is taken.
    #[error("{name:?}: all {max} subscriber slots are taken")]
    NoSubscriberSlot {
        /// Segment name.
        name: String,
        /// The maximum set at creation.
        max: u32,
    },
    /// The creation parameters are out of range.
    #[error("{name:?}: {reason}")]
    InvalidConfig {
        /// Segment name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An OS call about role locks failed.
    #[error("{name:?}: {source}")]
    Io {
        /// Segment name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a send (or a pub/sub loan) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No room now (`try_` forms only).
    #[error("channel is full")]
    Full,
    /// No room before the deadline (`_timeout`/`_deadline` forms).
    #[error("timed out waiting for room in the channel")]
    Timeout,
    /// The receiving side closed or died: nobody will read this.
    #[error("the receiving side is gone")]
    Disconnected,
    /// The message is longer than the channel's maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// Shared state failed a bounds check: a peer is broken or hostile.
    #[error("corrupt channel: {0}")]
    Corrupt(String),
}

/// Why a receive returned no message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing to receive now (`try_` forms only).
    #[error("channel is empty")]
    Empty,
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The sender closed the channel and every message was received.
    #[error("the sender closed the channel")]
    Disconnected,
    /// The sender died; every whole message it sent was received.
    #[error("the sender died (every whole message it sent was delivered)")]
    SenderDied,
    /// Shared state failed a bounds check: a peer is broken or hostile.
    #[error("corrupt channel: {0}")]
    Corrupt(String),
}
