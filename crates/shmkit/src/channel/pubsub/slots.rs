//! Where a slot's metadata and a publication's queue entry live: the
//! metadata at the start of each payload slot (layout v2: an 8-byte
//! sample and its ownership word share one cache line), and queue entries
//! stamped with their position.

use std::marker::PhantomData;

use super::MAX_SLOTS;
use crate::primitive::AtomicU64;

/// Metadata of one payload slot: the first 32 bytes of the slot (the
/// payload starts at `PubSubLayout::hdr`, 32 when `align <= 32`).
#[repr(C, align(32))]
pub(crate) struct SlotMeta {
    /// Ownership word: pending bits (0..32) and held bits (32..64), see
    /// the module docs. 0 = free.
    pub(crate) refs: AtomicU64,
    /// Position the slot was last published at.
    pub(crate) seq: AtomicU64,
    /// Payload length of that publication.
    pub(crate) len: AtomicU64,
}

impl SlotMeta {
    #[allow(dead_code)]
    pub(crate) fn new() -> SlotMeta {
        SlotMeta {
            refs: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            len: AtomicU64::new(0),
        }
    }
}

/// The slots' metadata, `stride` bytes apart: a slice in model tests, one
/// per payload slot in a segment. Indexing is bounds-checked.
#[derive(Clone, Copy)]
pub(crate) struct Metas<'a> {
    base: *const u8,
    stride: usize,
    len: usize,
    _borrow: PhantomData<&'a [SlotMeta]>,
}

// SAFETY: a `Metas<'a>` only hands out `&'a SlotMeta` (atomics, `Sync`),
// exactly as a `&'a [SlotMeta]` would: sharing or sending it across
// threads is as safe as sharing that slice.
unsafe impl Send for Metas<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Metas<'_> {}

impl<'a> Metas<'a> {
    /// The metadata in a slice.
    pub(crate) fn from_slice(s: &'a [SlotMeta]) -> Metas<'a> {
        Metas {
            base: s.as_ptr().cast(),
            stride: std::mem::size_of::<SlotMeta>(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// `len` metadata blocks at `base + i * stride`.
    ///
    /// # Safety
    ///
    /// For every `i < len`, `base + i * stride` is aligned for `SlotMeta`
    /// and points to `size_of::<SlotMeta>()` bytes valid for `'a`, accessed
    /// only atomically by every process (any bit pattern is a valid
    /// `SlotMeta`: atomics only).
    pub(crate) unsafe fn strided(base: *const u8, stride: usize, len: usize) -> Metas<'a> {
        Metas {
            base,
            stride,
            len,
            _borrow: PhantomData,
        }
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slot `i`'s metadata, if `i < len`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&'a SlotMeta> {
        if i < self.len {
            // SAFETY: `i < len`: valid and aligned for `'a` (the contract
            // of `strided`, or a slice element for `from_slice`).
            Some(unsafe { &*self.base.add(i * self.stride).cast::<SlotMeta>() })
        } else {
            None
        }
    }

    /// Every slot's metadata, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a SlotMeta> + 'a {
        let m = *self;
        (0..m.len).filter_map(move |i| m.get(i))
    }
}

impl<'a> From<&'a [SlotMeta]> for Metas<'a> {
    fn from(s: &'a [SlotMeta]) -> Metas<'a> {
        Metas::from_slice(s)
    }
}

impl<'a> From<&'a Vec<SlotMeta>> for Metas<'a> {
    fn from(s: &'a Vec<SlotMeta>) -> Metas<'a> {
        Metas::from_slice(s)
    }
}

impl std::ops::Index<usize> for Metas<'_> {
    type Output = SlotMeta;
    #[inline]
    fn index(&self, i: usize) -> &SlotMeta {
        match self.get(i) {
            Some(m) => m,
            None => panic!("slot {i} out of range ({} slots)", self.len),
        }
    }
}

/// Bits of a queue entry holding the slot number (`MAX_SLOTS` = 2^16).
const ENTRY_SLOT_BITS: u32 = 16;
const _: () = assert!(MAX_SLOTS <= 1 << ENTRY_SLOT_BITS);

/// The queue entry of publication `pos` in `slot`: the slot number, and
/// `pos + 1` (0 = never written) modulo 2^48 above it. The stamp lets a
/// subscriber poll its next entry instead of `tail`.
#[inline]
pub(crate) fn entry(pos: u64, slot: usize) -> u64 {
    (pos.wrapping_add(1) << ENTRY_SLOT_BITS) | slot as u64
}

/// Whether queue entry `e` was written for position `pos` (modulo 2^48:
/// an entry `2^48` positions older matches too; the `seq` check after the
/// slot is held rejects it).
#[inline]
pub(crate) fn entry_is(e: u64, pos: u64) -> bool {
    (e ^ (pos.wrapping_add(1) << ENTRY_SLOT_BITS)) >> ENTRY_SLOT_BITS == 0
}

/// The slot number of queue entry `e` (unchecked: callers bound it).
#[inline]
pub(crate) fn entry_slot(e: u64) -> usize {
    (e & ((1 << ENTRY_SLOT_BITS) - 1)) as usize
}
