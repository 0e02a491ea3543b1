//! Byte-stream contenders: an anonymous pipe per direction, and a Unix
//! domain stream socket pair. Messages have the fixed length of the
//! scenario, so no framing is needed. The sender fills its buffer and
//! issues one `write` per message (IPC must not hold messages back); the
//! receiver reads whatever is available into a buffer, as a buffered reader
//! would, and checks each message in that buffer.
//!
//! The child gets its ends as file descriptors 3 (read) and 4 (write).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::job::PeerSpec;
use crate::link::{Link, Result};

/// The child's read end.
pub const CHILD_READ_FD: i32 = 3;
/// The child's write end.
pub const CHILD_WRITE_FD: i32 = 4;

/// Receive buffer size floor: what a buffered reader would use.
const MIN_BUF: usize = 64 * 1024;

/// One side of a pipe pair or socket.
pub struct StreamLink {
    rd: File,
    wr: File,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
}

impl StreamLink {
    fn new(rd: OwnedFd, wr: OwnedFd, spec: &PeerSpec) -> StreamLink {
        let max = spec.job.max_len();
        StreamLink {
            rd: File::from(rd),
            wr: File::from(wr),
            tx_buf: vec![0; max],
            rx_buf: vec![0; max.max(MIN_BUF)],
            rx_start: 0,
            rx_end: 0,
        }
    }

    /// Parent side of the pipe contender, and the child's two ends.
    pub fn pipe_parent(spec: &PeerSpec) -> Result<(StreamLink, Vec<OwnedFd>)> {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (down_r, down_w) = rustix::pipe::pipe_with(flags).map_err(|e| format!("pipe: {e}"))?;
        let (up_r, up_w) = rustix::pipe::pipe_with(flags).map_err(|e| format!("pipe: {e}"))?;
        Ok((StreamLink::new(up_r, down_w, spec), vec![down_r, up_w]))
    }

    /// Parent side of the Unix socket contender, and the child's two ends
    /// (both the same socket).
    pub fn uds_parent(spec: &PeerSpec) -> Result<(StreamLink, Vec<OwnedFd>)> {
        let (mine, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mine2 = mine.try_clone().map_err(|e| format!("dup: {e}"))?;
        let theirs2 = theirs.try_clone().map_err(|e| format!("dup: {e}"))?;
        Ok((
            StreamLink::new(mine.into(), mine2.into(), spec),
            vec![theirs.into(), theirs2.into()],
        ))
    }

    /// The child's side: descriptors 3 and 4, inherited.
    pub fn child(spec: &PeerSpec) -> Result<StreamLink> {
        // SAFETY: the parent placed our read and write ends at these
        // descriptors (dup2 before exec) and nothing else in this process
        // owns them.
        let (rd, wr) = unsafe {
            (
                OwnedFd::from_raw_fd(CHILD_READ_FD),
                OwnedFd::from_raw_fd(CHILD_WRITE_FD),
            )
        };
        Ok(StreamLink::new(rd, wr, spec))
    }
}

impl Link for StreamLink {
    #[inline]
    fn send(
        &mut self,
        len: usize,
        _deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()> {
        let buf = self
            .tx_buf
            .get_mut(..len)
            .ok_or_else(|| format!("message of {len} B exceeds the job's maximum"))?;
        fill(buf.as_mut_ptr(), len);
        // Blocking write; a dead peer gives EPIPE (SIGPIPE is ignored by the
        // Rust runtime), and the parent's watchdog kills a hung child.
        self.wr.write_all(buf).map_err(|e| format!("write: {e}"))
    }

    #[inline]
    fn recv<R>(
        &mut self,
        len: usize,
        _deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        if len > self.rx_buf.len() {
            return Err(format!("message of {len} B exceeds the receive buffer"));
        }
        if self.rx_end - self.rx_start < len {
            // Move the partial message to the front, then read until whole.
            self.rx_buf.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
            while self.rx_end < len {
                match self.rd.read(&mut self.rx_buf[self.rx_end..]) {
                    Ok(0) => return Err("peer closed the stream".to_string()),
                    Ok(n) => self.rx_end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }
        let r = read(&self.rx_buf[self.rx_start..self.rx_start + len]);
        self.rx_start += len;
        Ok(r)
    }
}
