//! The on-memory header at the start of every segment.
//!
//! Layout (little-endian, offsets in bytes). The header occupies the first
//! 4096 bytes (one page) so the data area is page aligned:
//!
//! | offset | size | field | mutable? |
//! |---|---|---|---|
//! | 0   | 8  | magic `b"SHMKIT\0\x01"` | no |
//! | 8   | 4  | format version (1) | no |
//! | 12  | 4  | header size (4096) | no |
//! | 16  | 4  | kind ([`Kind`]) | no |
//! | 20  | 4  | lifetime (0 persistent, 1 until last detach) | no |
//! | 24  | 4  | mode given at creation | no |
//! | 28  | 4  | creator pid | no |
//! | 32  | 8  | created at, ns since the Unix epoch | no |
//! | 40  | 8  | data offset (4096) | no |
//! | 48  | 8  | data length | no |
//! | 56  | 8  | total length = data offset + data length | no |
//! | 64  | 8  | stored type: size | no |
//! | 72  | 8  | stored type: alignment | no |
//! | 80  | 8  | stored type: name hash | no |
//! | 88  | 64 | kind parameters, 8 × u64 | no |
//! | 152 | 8  | FNV-1a 64 checksum of bytes 0..152 | no |
//! | 192 | 4  | flags (bit 0: marked for removal), atomic | yes |
//!
//! The immutable part is written once, before the segment gets its name,
//! and checked (checksum included) by every `open`.

use super::{Error, Fingerprint, Kind, Lifetime, Result};

/// `b"SHMKIT\0\x01"`.
pub const MAGIC: [u8; 8] = *b"SHMKIT\x00\x01";
/// Format version this library reads and writes.
pub const VERSION: u32 = 1;
/// Bytes reserved for the header; the data area starts here.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes covered by the checksum.
const CHECKED: usize = 152;
/// Bytes read by `open`.
pub const READ_LEN: usize = 196;
/// Offset of the atomic flags word.
pub const FLAGS_OFFSET: usize = 192;
/// Flag bit: marked for deferred removal.
pub const FLAG_MARKED: u32 = 1;

/// The immutable header fields, as parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the segment holds.
    pub kind: Kind,
    /// When it is deleted.
    pub lifetime: Lifetime,
    /// Mode given at creation.
    pub mode: u32,
    /// Pid of the creating process.
    pub creator_pid: u32,
    /// Creation time, ns since the Unix epoch.
    pub created_at_ns: u64,
    /// Data area length in bytes.
    pub data_len: u64,
    /// Stored type.
    pub fingerprint: Fingerprint,
    /// Kind-specific parameters (capacity, slot size, ...), validated by
    /// the layer that owns the kind.
    pub params: [u64; 8],
}

/// FNV-1a, 64 bit. Not cryptographic: it detects damage, not forgery.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Header {
    /// Serialises the immutable part, checksum included.
    pub fn encode(&self) -> [u8; READ_LEN] {
        let mut b = [0u8; READ_LEN];
        let put4 = |b: &mut [u8; READ_LEN], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        let put8 = |b: &mut [u8; READ_LEN], at: usize, v: u64| {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        b[0..8].copy_from_slice(&MAGIC);
        put4(&mut b, 8, VERSION);
        put4(&mut b, 12, HEADER_SIZE as u32);
        put4(&mut b, 16, self.kind.to_raw());
        put4(&mut b, 20, self.lifetime.to_raw());
        put4(&mut b, 24, self.mode);
        put4(&mut b, 28, self.creator_pid);
        put8(&mut b, 32, self.created_at_ns);
        put8(&mut b, 40, HEADER_SIZE);
        put8(&mut b, 48, self.data_len);
        put8(&mut b, 56, HEADER_SIZE + self.data_len);
        put8(&mut b, 64, self.fingerprint.size);
        put8(&mut b, 72, self.fingerprint.align);
        put8(&mut b, 80, self.fingerprint.hash);
        for (i, p) in self.params.iter().enumerate() {
            put8(&mut b, 88 + 8 * i, *p);
        }
        let sum = fnv1a(&b[..CHECKED]);
        put8(&mut b, CHECKED, sum);
        b
    }

    /// Parses and validates `bytes` (what `pread` returned) against the
    /// file's real size. Returns the header and the flags word.
    pub fn decode(
        op: &'static str,
        name: &str,
        bytes: &[u8],
        file_size: u64,
    ) -> Result<(Header, u32)> {
        let corrupt = |why: String| Err(Error::corrupt(op, name, why));
        if bytes.len() < READ_LEN || file_size < HEADER_SIZE {
            return corrupt(format!(
                "file is {file_size} bytes, shorter than the {HEADER_SIZE}-byte header"
            ));
        }
        let get4 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let get8 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes[0..8] != MAGIC {
            return corrupt("bad magic: not a shmkit segment".into());
        }
        let version = get4(8);
        if version != VERSION {
            return Err(Error::VersionMismatch {
                op,
                name: name.to_owned(),
                found: version,
                supported: VERSION,
            });
        }
        if fnv1a(&bytes[..CHECKED]) != get8(CHECKED) {
            return corrupt("header checksum mismatch".into());
        }
        if u64::from(get4(12)) != HEADER_SIZE || get8(40) != HEADER_SIZE {
            return corrupt(format!(
                "header size {} / data offset {} (expected {HEADER_SIZE})",
                get4(12),
                get8(40)
            ));
        }
        let data_len = get8(48);
        let total = get8(56);
        if HEADER_SIZE.checked_add(data_len) != Some(total) {
            return corrupt(format!(
                "data length {data_len} + header != total length {total}"
            ));
        }
        if total != file_size {
            return corrupt(format!(
                "header says {total} bytes but the file has {file_size}"
            ));
        }
        if usize::try_from(total).is_err() {
            return corrupt(format!("total length {total} does not fit in memory"));
        }
        let kind = Kind::from_raw(get4(16));
        let Some(lifetime) = Lifetime::from_raw(get4(20)) else {
            return corrupt(format!("unknown lifetime {}", get4(20)));
        };
        let mut params = [0u64; 8];
        for (i, p) in params.iter_mut().enumerate() {
            *p = get8(88 + 8 * i);
        }
        let header = Header {
            kind,
            lifetime,
            mode: get4(24),
            creator_pid: get4(28),
            created_at_ns: get8(32),
            data_len,
            fingerprint: Fingerprint {
                size: get8(64),
                align: get8(72),
                hash: get8(80),
            },
            params,
        };
        Ok((header, get4(FLAGS_OFFSET)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Raw,
            lifetime: Lifetime::UntilLastDetach,
            mode: 0o600,
            creator_pid: 42,
            created_at_ns: 7,
            data_len: 100,
            fingerprint: Fingerprint::BYTES,
            params: [1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        let (back, flags) = Header::decode("t", "n", &h.encode(), HEADER_SIZE + 100).unwrap();
        assert_eq!(back, h);
        assert_eq!(flags, 0);
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let good = sample().encode();
        for i in 0..CHECKED + 8 {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(
                Header::decode("t", "n", &b, HEADER_SIZE + 100).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn size_disagreeing_with_file_is_corrupt() {
        let b = sample().encode();
        assert!(matches!(
            Header::decode("t", "n", &b, HEADER_SIZE + 99),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Header::decode("t", "n", &b[..10], 10),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Header::decode("t", "n", &[0u8; READ_LEN], 8192),
            Err(Error::Corrupt { .. })
        ));
    }
}

#[cfg(test)]
mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary bytes and file sizes never panic the decoder, and
        /// whatever it accepts is self-consistent with the file size.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), size in any::<u64>()) {
            if let Ok((h, _)) = Header::decode("t", "n", &bytes, size) {
                prop_assert_eq!(HEADER_SIZE + h.data_len, size);
            }
        }

        /// Random mutations of a valid header are either rejected or
        /// decode to a header consistent with the file.
        #[test]
        fn mutated_headers_are_rejected_or_consistent(at in 0usize..READ_LEN, val in any::<u8>(), len in 1u64..1 << 40) {
            let mut h = Header {
                kind: Kind::Ring,
                lifetime: Lifetime::Persistent,
                mode: 0o600,
                creator_pid: 1,
                created_at_ns: 2,
                data_len: len,
                fingerprint: Fingerprint::BYTES,
                params: [0; 8],
            };
            let mut b = h.encode();
            b[at] = val;
            if let Ok((back, _)) = Header::decode("t", "n", &b, HEADER_SIZE + len) {
                // Only bytes outside the checksummed range may differ.
                h.data_len = back.data_len;
                prop_assert_eq!(back, h);
            }
        }
    }
}
