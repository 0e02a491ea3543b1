//! The segment header, written from its documented format (ARCHITECTURE.md,
//! "Header (format version 1)") rather than with the library's encoder, so
//! the fuzzer checks the documentation and the decoder independently.
//! `tests::matches_the_library` keeps the two in step.

/// Header page size; the data area starts here.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes covered by the checksum (the checksum itself is at this offset).
pub const CHECKED: usize = 152;
/// Offset of the mutable flags word (bit 0: marked for removal).
pub const FLAGS_OFFSET: usize = 192;
/// `b"SHMKIT\0\x01"`.
pub const MAGIC: [u8; 8] = *b"SHMKIT\x00\x01";

/// Kind numbers of the header's kind field.
pub mod kind {
    /// Raw bytes.
    pub const RAW: u32 = 1;
    /// Robust mutex.
    pub const MUTEX: u32 = 2;
    /// Semaphore.
    pub const SEMAPHORE: u32 = 3;
    /// Event.
    pub const EVENT: u32 = 4;
    /// SPSC ring.
    pub const RING: u32 = 5;
    /// Publish/subscribe pool.
    pub const PUBSUB: u32 = 6;
}

/// FNV-1a, 64 bit (the header checksum).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Every field of the immutable header part, as raw numbers (so that any
/// value, valid or not, can be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// Format version (1).
    pub version: u32,
    /// Header size (4096).
    pub header_size: u32,
    /// Kind number.
    pub kind: u32,
    /// 0 persistent, 1 until last detach.
    pub lifetime: u32,
    /// Mode at creation.
    pub mode: u32,
    /// Creator pid.
    pub pid: u32,
    /// Creation time, ns.
    pub created_ns: u64,
    /// Data offset (4096).
    pub data_off: u64,
    /// Data length.
    pub data_len: u64,
    /// Total length (= data offset + data length = file size).
    pub total: u64,
    /// Stored type: size, alignment, name hash.
    pub fp: [u64; 3],
    /// Kind parameters.
    pub params: [u64; 8],
}

fn get4(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get8(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Fields {
    /// A valid header for `kind` with a data area of `data_len` bytes.
    pub fn new(kind: u32, data_len: u64) -> Fields {
        Fields {
            version: 1,
            header_size: HEADER_SIZE as u32,
            kind,
            lifetime: 0,
            mode: 0o600,
            pid: 1,
            created_ns: 0,
            data_off: HEADER_SIZE,
            data_len,
            total: HEADER_SIZE.wrapping_add(data_len),
            fp: [1, 1, 0],
            params: [0; 8],
        }
    }

    /// Parses bytes `0..CHECKED` (no validation: any bytes give fields).
    pub fn parse(b: &[u8; CHECKED]) -> Fields {
        let mut params = [0u64; 8];
        for (i, p) in params.iter_mut().enumerate() {
            *p = get8(b, 88 + 8 * i);
        }
        Fields {
            version: get4(b, 8),
            header_size: get4(b, 12),
            kind: get4(b, 16),
            lifetime: get4(b, 20),
            mode: get4(b, 24),
            pid: get4(b, 28),
            created_ns: get8(b, 32),
            data_off: get8(b, 40),
            data_len: get8(b, 48),
            total: get8(b, 56),
            fp: [get8(b, 64), get8(b, 72), get8(b, 80)],
            params,
        }
    }

    /// Bytes `0..CHECKED + 8`: magic, fields, and a correct checksum.
    pub fn encode(&self) -> [u8; CHECKED + 8] {
        let mut b = [0u8; CHECKED + 8];
        b[0..8].copy_from_slice(&MAGIC);
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(8, &self.version.to_le_bytes());
        put(12, &self.header_size.to_le_bytes());
        put(16, &self.kind.to_le_bytes());
        put(20, &self.lifetime.to_le_bytes());
        put(24, &self.mode.to_le_bytes());
        put(28, &self.pid.to_le_bytes());
        put(32, &self.created_ns.to_le_bytes());
        put(40, &self.data_off.to_le_bytes());
        put(48, &self.data_len.to_le_bytes());
        put(56, &self.total.to_le_bytes());
        for (i, v) in self.fp.iter().enumerate() {
            put(64 + 8 * i, &v.to_le_bytes());
        }
        for (i, v) in self.params.iter().enumerate() {
            put(88 + 8 * i, &v.to_le_bytes());
        }
        let sum = fnv1a(&b[..CHECKED]);
        b[CHECKED..].copy_from_slice(&sum.to_le_bytes());
        b
    }
}

/// Panics unless this encoder and parser agree with the library's on a
/// sample header. Run once per fuzzing process (and by `cargo test`), so
/// a format change cannot silently turn every input into a checksum error.
pub fn check_against_library() {
    use shmkit::segment::{Fingerprint, Header, Kind, Lifetime};
    let h = Header {
        kind: Kind::Ring,
        lifetime: Lifetime::UntilLastDetach,
        mode: 0o640,
        creator_pid: 4242,
        created_at_ns: 123_456_789,
        data_len: 8192,
        fingerprint: Fingerprint::of::<u64>(),
        params: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let lib = h.encode();
    let mut f = Fields::new(kind::RING, 8192);
    f.lifetime = 1;
    f.mode = 0o640;
    f.pid = 4242;
    f.created_ns = 123_456_789;
    f.fp = [h.fingerprint.size, h.fingerprint.align, h.fingerprint.hash];
    f.params = h.params;
    let ours = f.encode();
    assert_eq!(&lib[..ours.len()], &ours[..], "header encoders disagree");
    let parsed = Fields::parse(lib[..CHECKED].try_into().expect("CHECKED bytes"));
    assert_eq!(parsed, f, "header parsers disagree");
    let (back, _) = Header::decode("t", "n", &lib, HEADER_SIZE + 8192).expect("decodes");
    assert_eq!(back, h);
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_library() {
        super::check_against_library();
    }
}
