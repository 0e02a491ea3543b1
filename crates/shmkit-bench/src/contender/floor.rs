//! The floor: no library, the least work two processes can do to hand a
//! message over through shared memory.
//!
//! Each direction is a ring of slots; a slot is `[stamp: u64][payload]`
//! rounded up to whole cache lines, so a message of up to 56 bytes moves
//! exactly one cache line and nothing else is shared (no head or tail
//! index: the per-slot stamp says whose turn it is, as in a bounded
//! Vyukov queue specialised to one producer and one consumer).
//!
//! Stamps, for the message at position `pos` in a ring of `cap` slots
//! (`cap >= 2`, so the two values never coincide):
//! - `stamp == pos`: the slot is free for the producer of `pos`;
//! - `stamp == pos + 1`: the slot holds message `pos` for the consumer;
//! - the consumer frees it with `stamp = pos + cap`.
//!
//! The mapping is a plain shmkit [`Segment`] (kind `Raw`); the
//! synchronisation is raw atomics in it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shmkit::segment::{self, Lifetime, Segment};

use crate::job::{Job, PeerSpec, ACK_LEN};
use crate::link::{spin_until, Link, Result};

const LINE: usize = 64;
const STAMP: usize = 8;

/// Shape of one direction.
#[derive(Debug, Clone, Copy)]
struct RingShape {
    cap: usize,
    stride: usize,
}

impl RingShape {
    fn new(cap: usize, max_payload: usize) -> RingShape {
        let stride = (STAMP + max_payload).div_ceil(LINE) * LINE;
        RingShape { cap, stride }
    }

    fn bytes(&self) -> usize {
        self.cap * self.stride
    }
}

/// The two rings of a job: `[parent→child][child→parent]`.
fn shapes(job: &Job) -> (RingShape, RingShape) {
    match *job {
        Job::PingPong { size, .. } | Job::FixedRate { size, .. } => {
            (RingShape::new(2, size), RingShape::new(2, size))
        }
        Job::Stream { size, .. } => {
            let cap = if size <= 4096 { 256 } else { 4 };
            (RingShape::new(cap, size), RingShape::new(2, ACK_LEN))
        }
    }
}

/// One direction, seen from one side.
struct Ring {
    base: *mut u8,
    shape: RingShape,
    pos: u64,
}

impl Ring {
    fn slot(&self) -> (*mut u8, &AtomicU64) {
        let idx = (self.pos % self.shape.cap as u64) as usize;
        // SAFETY: `idx < cap`, so the slot lies inside this ring, which lies
        // inside the mapping (checked against `seg.len()` in `FloorLink::new`).
        let slot = unsafe { self.base.add(idx * self.shape.stride) };
        // SAFETY: the slot is 64-byte aligned (page-aligned base, stride a
        // multiple of 64), stays mapped while `self` lives (the segment is
        // owned by the link), and its first 8 bytes are only ever accessed
        // atomically by both processes.
        let stamp = unsafe { AtomicU64::from_ptr(slot.cast::<u64>()) };
        (slot, stamp)
    }
}

/// One side of the floor.
pub struct FloorLink {
    tx: Ring,
    rx: Ring,
    name: String,
    is_parent: bool,
    // Keeps the mapping alive; declared last so it is dropped after use.
    _seg: Segment,
}

// The raw pointers point into `_seg`'s mapping, which moves with the link.

impl FloorLink {
    fn new(seg: Segment, job: &Job, is_parent: bool) -> Result<FloorLink> {
        let (ab, ba) = shapes(job);
        if seg.len() < ab.bytes() + ba.bytes() {
            return Err(format!("floor segment {} is too small", seg.name()));
        }
        let base = seg.as_ptr();
        // SAFETY: `ab.bytes() <= seg.len()`, checked above.
        let ba_base = unsafe { base.add(ab.bytes()) };
        let (a, b) = (
            Ring {
                base,
                shape: ab,
                pos: 0,
            },
            Ring {
                base: ba_base,
                shape: ba,
                pos: 0,
            },
        );
        let (tx, rx) = if is_parent { (a, b) } else { (b, a) };
        Ok(FloorLink {
            tx,
            rx,
            name: seg.name().to_string(),
            is_parent,
            _seg: seg,
        })
    }

    /// The parent's side: creates the segment with every stamp initialised.
    pub fn parent(spec: &PeerSpec) -> Result<FloorLink> {
        let (ab, ba) = shapes(&spec.job);
        let seg = Segment::builder(&spec.resource)
            .size((ab.bytes() + ba.bytes()) as u64)
            .lifetime(Lifetime::UntilLastDetach)
            .init(|data| {
                for (off, shape) in [(0, ab), (ab.bytes(), ba)] {
                    for k in 0..shape.cap {
                        let at = off + k * shape.stride;
                        data[at..at + 8].copy_from_slice(&(k as u64).to_ne_bytes());
                    }
                }
                Ok(())
            })
            .create()
            .map_err(|e| e.to_string())?;
        FloorLink::new(seg, &spec.job, true)
    }

    /// The child's side: opens the segment the parent created.
    pub fn child(spec: &PeerSpec) -> Result<FloorLink> {
        let seg = Segment::open(&spec.resource).map_err(|e| e.to_string())?;
        FloorLink::new(seg, &spec.job, false)
    }
}

impl Drop for FloorLink {
    fn drop(&mut self) {
        if self.is_parent {
            // Lifetime UntilLastDetach removes it too; this covers a child
            // that never attached. NotFound is fine.
            let _ = segment::remove(&self.name);
        }
    }
}

impl Link for FloorLink {
    #[inline]
    fn send(
        &mut self,
        len: usize,
        deadline: Instant,
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<()> {
        if STAMP + len > self.tx.shape.stride {
            return Err(format!("floor: message of {len} B does not fit a slot"));
        }
        let pos = self.tx.pos;
        let (slot, stamp) = self.tx.slot();
        // Acquire: pairs with the consumer's Release in `recv` that freed the
        // slot, so its reads of the old payload are done before we overwrite.
        spin_until(deadline, "a free floor slot", || {
            stamp.load(Ordering::Acquire) == pos
        })?;
        // SAFETY: the payload area `slot+8 .. slot+8+len` is inside the slot
        // (checked above) and the consumer does not touch it until it sees
        // the Release store below.
        fill(unsafe { slot.add(STAMP) }, len);
        // Release: publishes the payload; pairs with the Acquire in `recv`.
        stamp.store(pos + 1, Ordering::Release);
        self.tx.pos += 1;
        Ok(())
    }

    #[inline]
    fn recv<R>(
        &mut self,
        len: usize,
        deadline: Instant,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        if STAMP + len > self.rx.shape.stride {
            return Err(format!("floor: message of {len} B does not fit a slot"));
        }
        let pos = self.rx.pos;
        let cap = self.rx.shape.cap as u64;
        let (slot, stamp) = self.rx.slot();
        // Acquire: pairs with the producer's Release in `send`: the payload
        // is fully written once we see the stamp.
        spin_until(deadline, "a floor message", || {
            stamp.load(Ordering::Acquire) == pos + 1
        })?;
        // SAFETY: inside the slot (checked above); the producer does not
        // write it again until we free the slot below.
        let r = read(unsafe { std::slice::from_raw_parts(slot.add(STAMP), len) });
        // Release: our reads are done before the producer may reuse the
        // slot; pairs with the Acquire in `send`.
        stamp.store(pos + cap, Ordering::Release);
        self.rx.pos += 1;
        Ok(r)
    }
}
