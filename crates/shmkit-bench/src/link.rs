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

    /// Sends messages `seq`, `seq + 1`, ... (at most `n`, at least 1 if
    /// `n > 0`), patterned, of `len` bytes each; returns how many. The
    /// default sends one through [`Link::send`]; a link with a batch API
    /// sends as many as it takes at once.
    #[inline]
    fn send_many(&mut self, len: usize, seq: u64, n: u64, deadline: Instant) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        send_seq(self, len, seq, deadline).map(|()| 1)
    }

    /// Receives and checks messages `seq`, `seq + 1`, ... (at most `n`, at
    /// least 1 if `n > 0`) of `len` bytes each; returns how many. The
    /// default receives one through [`Link::recv`].
    #[inline]
    fn recv_many(&mut self, len: usize, seq: u64, n: u64, deadline: Instant) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        recv_seq(self, len, seq, deadline).map(|()| 1)
    }
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
pub fn send_seq<L: Link + ?Sized>(
    link: &mut L,
    len: usize,
    seq: u64,
    deadline: Instant,
) -> Result<()> {
    // SAFETY: `Link::send` hands a pointer valid for `len` bytes of writes.
    link.send(len, deadline, |p, n| unsafe { fill_raw(p, n, seq) })
}

/// Receives message `seq` of `len` bytes and verifies every byte of it.
#[inline]
pub fn recv_seq<L: Link + ?Sized>(
    link: &mut L,
    len: usize,
    seq: u64,
    deadline: Instant,
) -> Result<()> {
    if link.recv(len, deadline, |b| check(b, seq))? {
        Ok(())
    } else {
        Err(format!(
            "payload of message {seq} ({len} B) failed its checksum"
        ))
    }
}

/// Set by the parent's watchdog when the peer process has exited; a
/// spinning parent then gives up at its next deadline check instead of
/// spinning until the deadline. Always false in the peer.
pub static PEER_EXITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Busy-polls until `ready()` returns true: a pure spin, as a user's
/// `loop { if let Some(m) = try_receive() { .. } }` would be, and as
/// shmkit's `WaitStrategy::BusyPoll` is; the deadline is checked every
/// 4096 polls. The floor and iceoryx2 wait through this function.
#[inline]
pub fn spin_until(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    loop {
        for _ in 0..4096 {
            if ready() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        // Relaxed: a hint; the poll above already had its chance to see
        // anything the peer published before exiting.
        if PEER_EXITED.load(std::sync::atomic::Ordering::Relaxed) && !ready() {
            return Err(format!("the peer exited while we waited for {what}"));
        }
    }
}

/// Pins the calling process to CPU `cpu`, or with `None` lets it run on
/// every online CPU again. Busy-poll jobs pin the parent to CPU 0 and the
/// peer to CPU 1, so two spinners never share a core; blocking jobs are
/// left to the scheduler (which may run a synchronous hand-off on one core).
pub fn set_affinity(cpu: Option<usize>) -> Result<()> {
    // Online CPUs, not `available_parallelism` (which shrinks to the
    // affinity mask once we are pinned, and children inherit the mask).
    // SAFETY: plain libc query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: `cpu_set_t` is a plain bitmask struct; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let cpus: Vec<usize> = match cpu {
        Some(c) => vec![c % n],
        None => (0..n).collect(),
    };
    for c in cpus {
        // SAFETY: `c < n <= CPU_SETSIZE` on any machine we run on; `set`
        // is a valid cpu_set_t.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: plain syscall with a valid pointer and its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "sched_setaffinity({cpu:?}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Number of online CPUs.
pub fn online_cpus() -> usize {
    // SAFETY: plain libc query.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
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
