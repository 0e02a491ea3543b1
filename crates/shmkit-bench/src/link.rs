//! The one abstraction every contender implements: a bidirectional,
//! message-oriented link between two processes, plus the payload pattern
//! that the sender writes in full and the receiver reads (checksums) in full.

use std::time::Instant;

/// Errors of the harness: a one-line description.
pub type BenchError = String;

/// Result of the harness.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// One endpoint of a link. Messages have a length known to both sides
/// (fixed per scenario); `send` lets the caller write the payload in place
/// (zero-copy where the mechanism allows it), `recv` lets the caller read it
/// in place.
pub trait Link {
    /// Sends one message of `len` bytes; `fill` writes all of them at `dst`.
    ///
    /// `fill` is given a raw pointer because some mechanisms (iceoryx2 loans,
    /// shared-memory slots) hand out uninitialised or shared memory that must
    /// not be turned into `&mut [u8]`. It must write exactly `len` bytes.
    fn send(
        &mut self,
        len: usize,
        deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()>;

    /// Receives one message, which must be `len` bytes long, and runs `read`
    /// on it in place.
    fn recv<R>(
        &mut self,
        len: usize,
        deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R>;
}

/// Writes the pattern of message `seq` into `len` bytes at `dst`: 64-bit
/// little-endian words `seq + i`. `len` must be a multiple of 8.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
#[inline]
pub unsafe fn fill_raw(dst: *mut u8, len: usize, seq: u64) {
    debug_assert!(len.is_multiple_of(8));
    for i in 0..len / 8 {
        let w = seq.wrapping_add(i as u64).to_le();
        // SAFETY: `i * 8 + 8 <= len` and the caller guarantees `dst` is
        // valid for `len` bytes; unaligned writes need no alignment.
        unsafe { dst.add(i * 8).cast::<u64>().write_unaligned(w) };
    }
}

/// Writes the pattern of message `seq` into `buf`.
#[cfg(test)]
fn fill(buf: &mut [u8], seq: u64) {
    // SAFETY: `buf` is valid for writes of its whole length.
    unsafe { fill_raw(buf.as_mut_ptr(), buf.len(), seq) }
}

/// Reads every byte of `buf` and checks it against the pattern of message
/// `seq` (sum of the words; closed form on the sender's side).
#[inline]
pub fn check(buf: &[u8], seq: u64) -> bool {
    let mut sum = 0u64;
    for c in buf.chunks_exact(8) {
        sum = sum.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
    sum == expected_sum(buf.len() / 8, seq)
}

/// Sum of the words `seq + i` for `i` in `0..n`, wrapping.
fn expected_sum(n: usize, seq: u64) -> u64 {
    let n = n as u64;
    // n * (n - 1) / 2 without overflow for any n the harness uses.
    let tri = if n.is_multiple_of(2) {
        (n / 2).wrapping_mul(n.wrapping_sub(1))
    } else {
        n.wrapping_mul(n.wrapping_sub(1) / 2)
    };
    n.wrapping_mul(seq).wrapping_add(tri)
}

/// Sends message `seq`, patterned, of `len` bytes.
#[inline]
pub fn send_seq<L: Link>(link: &mut L, len: usize, seq: u64, deadline: Instant) -> Result<()> {
    // SAFETY: `Link::send` hands a pointer valid for `len` bytes of writes.
    link.send(len, deadline, |p, n| unsafe { fill_raw(p, n, seq) })
}

/// Receives message `seq` of `len` bytes and verifies every byte of it.
#[inline]
pub fn recv_seq<L: Link>(link: &mut L, len: usize, seq: u64, deadline: Instant) -> Result<()> {
    if link.recv(len, deadline, |b| check(b, seq))? {
        Ok(())
    } else {
        Err(format!(
            "payload of message {seq} ({len} B) failed its checksum"
        ))
    }
}

/// How long a waiter spins before it starts yielding the CPU between polls.
pub const PURE_SPIN: std::time::Duration = std::time::Duration::from_micros(10);

/// Busy-polls until `ready()` returns true. For the first [`PURE_SPIN`]
/// it spins; after that every poll also calls `sched_yield`: on a machine
/// with fewer free cores than spinning processes, a pure spin would burn the
/// time slice the peer needs to make progress. The deadline is checked
/// every few hundred polls. Every busy-poll contender waits through this
/// function, so they all get the same policy.
#[inline]
pub fn spin_until(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..64 {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        for _ in 0..64 {
            if ready() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        polls = polls.wrapping_add(1);
        let now = Instant::now();
        if now.duration_since(start) > PURE_SPIN {
            std::thread::yield_now();
            if polls.is_multiple_of(256) && now > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_detects_corruption() {
        for len in [8usize, 64, 4096, 65536] {
            let mut b = vec![0u8; len];
            fill(&mut b, 12345);
            assert!(check(&b, 12345));
            assert!(!check(&b, 12346));
            b[len / 2] ^= 1;
            assert!(!check(&b, 12345));
        }
    }
}
