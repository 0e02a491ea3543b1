//! Fuzzing harness for shmkit: hostile segment files through every open
//! path, then operations on whatever opened.
//!
//! Two targets share this code:
//!
//! - `segment_raw`: the input *is* the segment file, byte for byte. Covers
//!   the header decoder and every open path's validation; the operations
//!   are a fixed script, and the mutex is never locked (its glibc bytes
//!   are arbitrary here, and glibc trusts them: see [`world::glibc_range`]).
//! - `segment_ops`: the input chooses a kind and its creation options, the
//!   library creates a real segment, then the input edits header fields
//!   (re-checksummed, so they reach the kind layers), resizes the file,
//!   patches the body, and drives a script of operations in which a raw
//!   attachment keeps poking bytes as a hostile peer would.
//!
//! Every iteration uses a fresh name (`fz<pid>.<n>`) and deletes its file
//! at the end, whatever happened ([`scratch::Scratch`]).

pub mod header;
pub mod scratch;
pub mod seeds;
pub mod world;

use std::os::unix::fs::FileExt;

use libfuzzer_sys::arbitrary::Unstructured;
use shmkit::channel::pubsub::{Policy, PubSubOptions};
use shmkit::channel::ring::RingOptions;
use shmkit::segment::{self, Kind, Segment};
use shmkit::sync::{NamedEvent, NamedMutex, NamedSemaphore, SEM_VALUE_MAX};

use header::{Fields, CHECKED, FLAGS_OFFSET, HEADER_SIZE};
use scratch::Scratch;
use world::{inspect, Op, World};

/// Largest file the ops target makes (sparse: only touched pages cost).
pub const MAX_FILE: u64 = 16 << 20;

/// The fixed script the raw target runs on whatever opened: a little of
/// everything, and a held sample around the last publisher operations.
const RAW_SCRIPT: &[(u8, u32, u64)] = &[
    (3, 0, 0),
    (13, 0, 0),
    (4, 0, 0),
    (5, 0, 0),
    (6, 0, 0),
    (7, 0, 0),
    (9, 0, 0),
    (8, 0, 0),
    (17, 0, 0),
    (14, 5, 0x0102_0304_0506_0708),
    (16, 0, 7),
    (18, 0, 0),
    (19, 0, 0),
    (22, 9, 0x55),
    (23, 3, 0x66),
    (24, 0, 0),
    (25, 1, 0),
    (31, 0, 0),
    (26, 0, 0),
    (22, 4, 0x77),
    (30, 0, 0),
    (32, 0, 64),
    (3, 8, 0),
];

/// Checks, once per process, that the fuzzer's header encoder still
/// matches the library's.
fn once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(header::check_against_library);
}

/// `segment_raw`: `data` is the whole segment file.
pub fn run_raw(data: &[u8]) {
    once();
    let scratch = Scratch::new();
    scratch.write_file(data).expect("write scratch file");
    inspect(&scratch.name, false);
    let mut w = World::open_all(&scratch, false);
    let mut subs = w.open_subs(2);
    let ops: Vec<Op> = RAW_SCRIPT
        .iter()
        .map(|&(code, x, y)| Op { code, x, y })
        .collect();
    w.run(&mut subs, &ops);
    drop(subs);
    drop(w);
    // `list` walks all of /dev/shm: only now and then.
    inspect(&scratch.name, data.len() % 16 == 1);
}

/// Creates the segment the input asks for, through the library. `None`
/// if the library refused (that is fine: the options were invalid).
fn create(u: &mut Unstructured<'_>, name: &str) -> Option<()> {
    let sel: u8 = u.arbitrary().ok()?;
    let a: u32 = u.arbitrary().ok()?;
    let b: u32 = u.arbitrary().ok()?;
    let c: u8 = u.arbitrary().ok()?;
    let typed = c & 0x80 != 0;
    match sel % 7 {
        0 => drop(Segment::create(name, 1 + u64::from(a % 65536)).ok()?),
        1 => drop(NamedMutex::<u64>::create(name, u64::from(b)).ok()?),
        2 => drop(NamedSemaphore::create(name, b % (SEM_VALUE_MAX + 1)).ok()?),
        3 => drop(NamedEvent::create(name, world::event_mode(c)).ok()?),
        4 => {
            let cap = 1 + u64::from(a % 64);
            let opts = if typed {
                RingOptions::typed::<u64>(cap)
            } else {
                RingOptions::new(cap, 1 + u64::from(b % 300))
            };
            drop(opts.create(name).ok()?);
        }
        5 => {
            let slots = 1 + u64::from(a % 16);
            let subs = 1 + u32::from(c % 4);
            let opts = if typed {
                PubSubOptions::typed::<u64>(slots, subs)
            } else {
                PubSubOptions::new(slots, 1 + u64::from(b % 300), subs)
            };
            let policy = if c & 0x40 != 0 {
                Policy::DropOldest
            } else {
                Policy::Block
            };
            drop(opts.policy(policy).create(name).ok()?);
        }
        _ => drop(
            Segment::builder(name)
                .kind(Kind::Other(7 + a % 100))
                .size(1 + u64::from(b % 8192))
                .create()
                .ok()?,
        ),
    }
    Some(())
}

/// A new value for a header field: the old one nudged, a bit flipped, or
/// a value from the input.
fn mutate(old: u64, how: u8, v: u64) -> u64 {
    match how % 4 {
        0 => v,
        1 => old.wrapping_add(v % 16).wrapping_sub(8),
        2 => old ^ (1 << (v % 64)),
        _ => old.wrapping_mul(2).max(v % 4096),
    }
}

/// Edits header fields (re-checksummed unless the input says otherwise)
/// and the file size.
fn edit_header(u: &mut Unstructured<'_>, s: &Scratch) -> std::io::Result<()> {
    let f = s.edit()?;
    let mut bytes = [0u8; CHECKED];
    f.read_exact_at(&mut bytes, 0)?;
    let mut h = Fields::parse(&bytes);
    let n: u8 = u.arbitrary().unwrap_or(0);
    for _ in 0..n % 5 {
        let field: u8 = u.arbitrary().unwrap_or(0);
        let how: u8 = u.arbitrary().unwrap_or(0);
        let v: u64 = u.arbitrary().unwrap_or(0);
        match field % 22 {
            0 => h.version = mutate(h.version.into(), how, v) as u32,
            1 => h.header_size = mutate(h.header_size.into(), how, v) as u32,
            2 => h.kind = mutate(h.kind.into(), how, v) as u32,
            3 => h.lifetime = mutate(h.lifetime.into(), how, v) as u32,
            4 => h.mode = mutate(h.mode.into(), how, v) as u32,
            5 => h.pid = mutate(h.pid.into(), how, v) as u32,
            6 => h.created_ns = mutate(h.created_ns, how, v),
            7 => h.data_off = mutate(h.data_off, how, v),
            8 => {
                // Data length and total together, and the file to match
                // when it stays small enough.
                h.data_len = mutate(h.data_len, how, v);
                h.total = HEADER_SIZE.wrapping_add(h.data_len);
                if h.total <= MAX_FILE && h.data_len > 0 {
                    f.set_len(h.total)?;
                }
            }
            9 => h.total = mutate(h.total, how, v),
            10..=12 => {
                let i = usize::from(field % 22 - 10);
                h.fp[i] = mutate(h.fp[i], how, v);
            }
            13..=20 => {
                let i = usize::from(field % 22 - 13);
                h.params[i] = mutate(h.params[i], how, v);
            }
            _ => {
                // The file alone changes size.
                let size = mutate(h.total, how, v) % (MAX_FILE + 1);
                f.set_len(size)?;
            }
        }
    }
    let mut enc = h.encode();
    let bad_sum: u8 = u.arbitrary().unwrap_or(0);
    if bad_sum == 0xff {
        enc[CHECKED] ^= 1;
    }
    f.write_all_at(&enc, 0)?;
    let flags: u8 = u.arbitrary().unwrap_or(0);
    if flags >= 0xf0 {
        f.write_all_at(&u32::from(flags & 3).to_le_bytes(), FLAGS_OFFSET as u64)?;
    }
    Ok(())
}

/// Patches the data area before anyone opens it. On a mutex, glibc's
/// bytes are left as `pthread_mutex_init` wrote them, except its lock
/// word and owner field (plain integers glibc checks; never a pointer).
fn patch_body(u: &mut Unstructured<'_>, s: &Scratch) -> std::io::Result<()> {
    let f = s.edit()?;
    let size = f.metadata()?.len();
    if size <= HEADER_SIZE {
        return Ok(());
    }
    let len = size - HEADER_SIZE;
    let mut head = [0u8; CHECKED];
    f.read_exact_at(&mut head, 0)?;
    let h = Fields::parse(&head);
    let hot = world::hot_words(Kind::from_raw(h.kind), &h.params, len);
    let n: u8 = u.arbitrary().unwrap_or(0);
    for _ in 0..n % 9 {
        let sel: u8 = u.arbitrary().unwrap_or(0);
        let off: u32 = u.arbitrary().unwrap_or(0);
        let v: u64 = u.arbitrary().unwrap_or(0);
        if sel & 8 != 0 {
            // A scribbled range: `v` repeated over up to the whole area.
            let start = u64::from(off) % len;
            let n = (v >> 40) % (len - start) + 1;
            if h.kind == header::kind::MUTEX && !world::outside_glibc(start, n) {
                continue;
            }
            world::fill(&f, HEADER_SIZE + start, n, v)?;
            continue;
        }
        let w = [8u64, 4, 2, 1][usize::from(sel % 4)];
        if len < w {
            continue;
        }
        let at = if sel & 4 != 0 && !hot.is_empty() {
            hot[off as usize % hot.len()]
        } else {
            (u64::from(off) % (len - w + 1)) / w * w
        };
        if h.kind == header::kind::MUTEX
            && !world::outside_glibc(at, w)
            && !(at == world::MUTEX_LOCK_WORD || at == world::MUTEX_OWNER_WORD)
        {
            continue;
        }
        if h.kind == header::kind::MUTEX
            && (at == world::MUTEX_LOCK_WORD || at == world::MUTEX_OWNER_WORD)
            && w != 4
        {
            continue;
        }
        f.write_all_at(&v.to_le_bytes()[..w as usize], HEADER_SIZE + at)?;
    }
    if h.kind == header::kind::MUTEX && len >= world::MUTEX_OWNER_WORD + 4 {
        // The lock word (owner tid, FUTEX_OWNER_DIED, FUTEX_WAITERS) and
        // glibc's owner field: held, dead-owner and unrecoverable states.
        let sel: u8 = u.arbitrary().unwrap_or(0);
        let word: u32 = u.arbitrary().unwrap_or(0);
        if sel & 1 != 0 {
            let word = match sel >> 1 & 3 {
                0 => word,
                1 => word | 0x4000_0000,
                2 => std::process::id() | (word & 0xc000_0000),
                _ => 0x4000_0000 | (word & 0x3fff_ffff),
            };
            f.write_all_at(&word.to_le_bytes(), HEADER_SIZE + world::MUTEX_LOCK_WORD)?;
        }
        if sel & 8 != 0 {
            let owner: u32 = u.arbitrary().unwrap_or(0);
            let owner = if sel & 16 != 0 {
                0x7fff_ffff - (owner % 2)
            } else {
                owner
            };
            f.write_all_at(&owner.to_le_bytes(), HEADER_SIZE + world::MUTEX_OWNER_WORD)?;
        }
    }
    Ok(())
}

/// `segment_ops`: see the crate documentation.
pub fn run_ops(data: &[u8]) {
    once();
    let mut u = Unstructured::new(data);
    let scratch = Scratch::new();
    if create(&mut u, &scratch.name).is_none() {
        return;
    }
    edit_header(&mut u, &scratch).expect("edit header");
    patch_body(&mut u, &scratch).expect("patch body");
    let list: u8 = u.arbitrary().unwrap_or(0);
    inspect(&scratch.name, list == 0xff);
    let nsubs: u8 = u.arbitrary().unwrap_or(0);
    let mut w = World::open_all(&scratch, true);
    let mut subs = w.open_subs(usize::from(nsubs % 4));
    let mut ops = Vec::new();
    while ops.len() < 48 && !u.is_empty() {
        let code: u8 = u.arbitrary().unwrap_or(0);
        let x: u32 = u.arbitrary().unwrap_or(0);
        let y: u64 = u.arbitrary().unwrap_or(0);
        ops.push(Op { code, x, y });
    }
    w.run(&mut subs, &ops);
    drop(subs);
    drop(w);
    inspect(&scratch.name, false);
    // Deferred removal on the way out (the Scratch guard removes the rest).
    let _ = segment::remove_when_unused(&scratch.name);
}
