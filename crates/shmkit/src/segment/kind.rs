//! What a segment holds, when it is deleted, and the identity of its type.

use super::*;

/// What a segment holds. Stored in the header; `open` of a typed object
/// checks it so a ring is never mistaken for a mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Raw bytes.
    Raw,
    /// A [`crate::sync`] mutex.
    Mutex,
    /// A [`crate::sync`] semaphore.
    Semaphore,
    /// A [`crate::sync`] event.
    Event,
    /// A [`crate::channel`] ring buffer.
    Ring,
    /// A [`crate::channel`] publish/subscribe pool.
    PubSub,
    /// A kind this version does not know.
    Other(u32),
}

impl Kind {
    /// Header encoding.
    pub fn to_raw(self) -> u32 {
        match self {
            Kind::Raw => 1,
            Kind::Mutex => 2,
            Kind::Semaphore => 3,
            Kind::Event => 4,
            Kind::Ring => 5,
            Kind::PubSub => 6,
            Kind::Other(n) => n,
        }
    }

    /// Header decoding; unknown values become [`Kind::Other`].
    pub fn from_raw(v: u32) -> Kind {
        match v {
            1 => Kind::Raw,
            2 => Kind::Mutex,
            3 => Kind::Semaphore,
            4 => Kind::Event,
            5 => Kind::Ring,
            6 => Kind::PubSub,
            n => Kind::Other(n),
        }
    }

    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Mutex => "mutex",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Ring => "ring",
            Kind::PubSub => "pubsub",
            Kind::Other(_) => "unknown",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Other(n) => write!(f, "unknown kind {n}"),
            k => f.write_str(k.as_str()),
        }
    }
}

/// When a segment is deleted without anyone calling [`remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lifetime {
    /// Lives until [`remove`] or [`remove_when_unused`] (or reboot).
    #[default]
    Persistent,
    /// Deleted when the number of attached processes drops to zero,
    /// including by their death.
    UntilLastDetach,
}

impl Lifetime {
    /// Header encoding.
    pub fn to_raw(self) -> u32 {
        match self {
            Lifetime::Persistent => 0,
            Lifetime::UntilLastDetach => 1,
        }
    }

    /// Header decoding.
    pub fn from_raw(v: u32) -> Option<Lifetime> {
        match v {
            0 => Some(Lifetime::Persistent),
            1 => Some(Lifetime::UntilLastDetach),
            _ => None,
        }
    }

    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Persistent => "persistent",
            Lifetime::UntilLastDetach => "until-last-detach",
        }
    }
}

/// Identity of the type stored in a segment: size, alignment and a hash of
/// its Rust type name. Two programs that disagree on a layout get
/// [`Error::TypeMismatch`] instead of reinterpreting each other's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// `size_of::<T>()`.
    pub size: u64,
    /// `align_of::<T>()`.
    pub align: u64,
    /// FNV-1a of `type_name::<T>()` (or of a name chosen by the caller).
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of untyped bytes.
    pub const BYTES: Fingerprint = Fingerprint {
        size: 1,
        align: 1,
        hash: 0,
    };

    /// The fingerprint of `T`, named by its Rust type name.
    pub fn of<T>() -> Fingerprint {
        Fingerprint::named::<T>(std::any::type_name::<T>())
    }

    /// The fingerprint of `T` under an explicit, stable name: use this when
    /// programs built by different compilers or crates share a type.
    pub fn named<T>(name: &str) -> Fingerprint {
        Fingerprint {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            hash: header::fnv1a(name.as_bytes()),
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(size {}, align {}, hash {:016x})",
            self.size, self.align, self.hash
        )
    }
}
