//! The contenders: each provides a parent-side and a child-side [`Link`]
//! constructor. The parent side creates every shared resource (segments,
//! services, pipes) before the child is spawned and removes it afterwards.
//!
//! [`Link`]: crate::link::Link

pub mod channel;
pub mod floor;
#[cfg(feature = "iceoryx2")]
pub mod iox2;
pub mod stream;

use serde::{Deserialize, Serialize};

use crate::plan::Scenario;

/// Every contender the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum ContenderId {
    /// Two processes handing a slot of raw shared memory back and forth; no
    /// library.
    Floor,
    /// An anonymous pipe per direction.
    Pipe,
    /// A Unix domain stream socket pair.
    Uds,
    /// iceoryx2 publish/subscribe over `ipc`, busy-poll, loan API.
    Iceoryx2,
    /// shmkit SPSC ring, busy-poll.
    RingSpin,
    /// shmkit SPSC ring, busy-poll, streaming through the batch API
    /// (`send_batch` / `recv_batch`); stream scenario only.
    RingSpinBatch,
    /// shmkit SPSC ring, blocking (futex).
    RingBlock,
    /// shmkit publish/subscribe, busy-poll.
    PubSubSpin,
    /// shmkit publish/subscribe, blocking (futex).
    PubSubBlock,
}

impl ContenderId {
    /// Short stable name used in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ContenderId::Floor => "floor",
            ContenderId::Pipe => "pipe",
            ContenderId::Uds => "unix-socket",
            ContenderId::Iceoryx2 => "iceoryx2",
            ContenderId::RingSpin => "shmkit-ring-spin",
            ContenderId::RingSpinBatch => "shmkit-ring-spin-batch",
            ContenderId::RingBlock => "shmkit-ring-block",
            ContenderId::PubSubSpin => "shmkit-pubsub-spin",
            ContenderId::PubSubBlock => "shmkit-pubsub-block",
        }
    }

    /// Whether its waits spin (it needs a core per process).
    pub fn busy_poll(self) -> bool {
        matches!(
            self,
            ContenderId::Floor
                | ContenderId::Iceoryx2
                | ContenderId::RingSpin
                | ContenderId::RingSpinBatch
                | ContenderId::PubSubSpin
        )
    }

    /// Every contender compiled into this build, in table order.
    pub fn all() -> Vec<ContenderId> {
        let mut v = vec![
            ContenderId::Floor,
            ContenderId::RingSpin,
            ContenderId::RingSpinBatch,
            ContenderId::PubSubSpin,
            ContenderId::RingBlock,
            ContenderId::PubSubBlock,
        ];
        if cfg!(feature = "iceoryx2") {
            v.push(ContenderId::Iceoryx2);
        }
        v.extend([ContenderId::Pipe, ContenderId::Uds]);
        v
    }

    /// Whether it takes part in `scenario`: the batch variant only
    /// streams small messages (a ping-pong has nothing to batch).
    pub fn runs(self, scenario: Scenario) -> bool {
        self != ContenderId::RingSpinBatch || scenario == Scenario::Stream
    }

    /// Parses [`ContenderId::name`].
    pub fn parse(s: &str) -> Option<ContenderId> {
        ContenderId::all().into_iter().find(|c| c.name() == s)
    }
}
