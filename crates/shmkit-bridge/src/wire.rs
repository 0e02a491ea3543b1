//! The bridge's framing on Zenoh: the payload of every data sample is the
//! message's bytes exactly (a plain Zenoh subscriber can read them); the
//! attachment carries a 17-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | stream id (u64 LE), random per exporter run |
//! | 8..16 | sequence number (u64 LE), 0, 1, 2... per stream |
//! | 16 | kind: 0 data, 1 end (the local sender closed), 2 the local sender died |
//!
//! The importer uses the sequence numbers to count messages lost on the
//! way (congestion control `Drop`, or a bridge killed with messages in
//! flight) and the kind to close its local channel when the stream ends;
//! then it puts an empty sample on [`ack_key`] of the stream.

/// The key on which an importer acknowledges the end of `stream` (after
/// delivering every message before it); the exporter waits for it before
/// closing its session, which could otherwise discard queued data. A
/// verbatim (`@`) chunk: `**` subscriptions do not see it.
pub fn ack_key(stream: u64) -> String {
    format!("@shmkit-bridge/ack/{stream:016x}")
}

/// What a sample means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message.
    Data,
    /// The exporter's local sender closed the channel: the stream ended.
    End,
    /// The exporter's local sender died: the stream ended abnormally.
    Died,
}

/// Length of the attachment header.
pub const HEADER_LEN: usize = 17;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Random per exporter run.
    pub stream: u64,
    /// Position of the sample in its stream.
    pub seq: u64,
    /// Data or end of stream.
    pub kind: Kind,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&self.stream.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16] = match self.kind {
            Kind::Data => 0,
            Kind::End => 1,
            Kind::Died => 2,
        };
        b
    }

    /// Decodes a header; `None` if `b` is not one (wrong length or kind):
    /// the sample did not come from a bridge exporter.
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() != HEADER_LEN {
            return None;
        }
        let kind = match b[16] {
            0 => Kind::Data,
            1 => Kind::End,
            2 => Kind::Died,
            _ => return None,
        };
        Some(Header {
            stream: u64::from_le_bytes(b[..8].try_into().ok()?),
            seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for kind in [Kind::Data, Kind::End, Kind::Died] {
            let h = Header {
                stream: 0x0102_0304_0506_0708,
                seq: u64::MAX - 1,
                kind,
            };
            assert_eq!(Header::decode(&h.encode()), Some(h));
        }
        let mut b = Header {
            stream: 1,
            seq: 2,
            kind: Kind::Data,
        }
        .encode();
        b[16] = 3;
        assert_eq!(Header::decode(&b), None);
        assert_eq!(Header::decode(&b[..16]), None);
        assert_eq!(Header::decode(&[]), None);
    }
}
