//! Every open path of the library run on one (possibly hostile) segment
//! file, and a script of operations on whatever opened.
//!
//! All operations are the non-blocking or zero-timeout forms, so an
//! iteration never waits on a peer that does not exist: a hang is a bug.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use shmkit::channel::pubsub::{Publisher, Subscriber, TypedPublisher, TypedSubscriber};
use shmkit::channel::ring::{Receiver, Sender, TypedReceiver, TypedSender};
use shmkit::channel::{self, pubsub, ring, Wait};
use shmkit::segment::{self, Kind, Segment};
use shmkit::sync::{self, EventMode, LockError, NamedEvent, NamedMutex, NamedSemaphore};

use crate::header::{FLAGS_OFFSET, HEADER_SIZE};
use crate::scratch::{path_of, Scratch};

/// One scripted operation: `code` picks it, `x` and `y` are its arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Op {
    /// Which operation (taken modulo the number of operations).
    pub code: u8,
    /// Small argument: an index, a length or an offset.
    pub x: u32,
    /// Large argument: a value to write.
    pub y: u64,
}

/// Number of distinct operation codes.
pub const OPS: u8 = 35;

/// Deepest nesting of held samples.
const MAX_DEPTH: u32 = 4;

/// Most subscribers opened at once.
const MAX_SUBS: usize = 4;

/// Bytes of a [`shmkit::sync::Mutex`] that glibc owns: the
/// `pthread_mutex_t` after shmkit's two `u32` words. glibc trusts them
/// (robust-list pointers, kind), as the mutex documentation says, so
/// nothing here ever writes them while the process may lock the mutex.
pub fn glibc_range() -> Range<u64> {
    8..8 + std::mem::size_of::<libc::pthread_mutex_t>() as u64
}

/// Offset of the glibc lock word and of `__owner` inside the mutex: the
/// only glibc fields the fuzzer may set, and only before opening (see
/// `mutex_prefix_ok`).
pub const MUTEX_LOCK_WORD: u64 = 8;
/// See [`MUTEX_LOCK_WORD`].
pub const MUTEX_OWNER_WORD: u64 = 16;

/// Whether a write of `len` bytes at `off` in the data area of a mutex
/// segment keeps glibc's bytes as glibc wrote them.
pub fn outside_glibc(off: u64, len: u64) -> bool {
    let g = glibc_range();
    off.saturating_add(len) <= g.start || off >= g.end
}

enum Tx {
    Raw(Sender),
    Typed(TypedSender<u64>),
}

impl Tx {
    fn raw(&mut self) -> &mut Sender {
        match self {
            Tx::Raw(s) => s,
            Tx::Typed(t) => t.as_raw(),
        }
    }
}

enum Rx {
    Raw(Receiver),
    Typed(TypedReceiver<u64>),
}

impl Rx {
    fn raw(&mut self) -> &mut Receiver {
        match self {
            Rx::Raw(r) => r,
            Rx::Typed(t) => t.as_raw(),
        }
    }
}

enum Pub {
    Raw(Publisher),
    Typed(TypedPublisher<u64>),
}

impl Pub {
    fn raw(&mut self) -> &mut Publisher {
        match self {
            Pub::Raw(p) => p,
            Pub::Typed(t) => t.as_raw(),
        }
    }
}

enum Sub {
    Raw(Subscriber),
    Typed(TypedSubscriber<u64>),
}

impl Sub {
    fn raw(&self) -> &Subscriber {
        match self {
            Sub::Raw(s) => s,
            Sub::Typed(t) => t.as_raw(),
        }
    }
}

/// Everything opened on the segment, except the subscribers (kept apart
/// so that held samples can borrow them while the rest changes).
pub struct World<'s> {
    scratch: &'s Scratch,
    /// Whether the mutex may be locked: only when its glibc bytes are the
    /// ones `pthread_mutex_init` wrote (the ops target), never on a file
    /// made of arbitrary bytes (the raw target).
    lock_mutex: bool,
    /// A plain read-write attachment: the "hostile peer" that pokes bytes.
    poker: Option<Segment>,
    /// Word offsets worth poking (control words, slot headers).
    hot: Vec<u64>,
    sem: Option<NamedSemaphore>,
    ev: Option<NamedEvent>,
    mtx: Option<NamedMutex<u64>>,
    mtx_any: Option<NamedMutex<()>>,
    tx: Option<Tx>,
    rx: Option<Rx>,
    publ: Option<Pub>,
    /// `params[1]` of the header (a pool's slot size): no sample may be
    /// longer. `None` if the raw open failed (then nothing opened).
    limit: Option<u64>,
}

/// Runs every library call that reads a segment by name without
/// attaching a role: stat, a read-only open with the `describe`/`stats`
/// paths the CLI's `ls`/`stat` use, and (if `list`) the full listing and
/// a `gc` dry run.
pub fn inspect(name: &str, list: bool) {
    if let Ok(info) = segment::stat(name) {
        let _ = (info.size(), info.created_at(), info.marked, info.pids.len());
    }
    if let Ok(ro) = Segment::builder(name).read_only().open() {
        describe_all(&ro);
        let mut buf = [0u8; 64];
        let n = buf.len().min(ro.len());
        ro.read_at(0, &mut buf[..n]).expect("in bounds");
        assert!(ro.write_at(0, b"x").is_err(), "read-only handle wrote");
    }
    if list {
        if let Ok(all) = segment::list() {
            for i in all.iter().filter(|i| i.name == name) {
                let _ = (i.size(), &i.header);
            }
        }
        // A dry run reports what `gc` would collect, removing nothing.
        let _ = segment::gc(true);
    }
}

fn describe_all(seg: &Segment) {
    let _ = sync::describe(seg).map(|s| s.to_string());
    let _ = channel::describe(seg);
    if let Ok(s) = ring::stats(seg) {
        assert!(s.depth <= s.capacity, "{s:?}");
    }
    if let Ok(s) = pubsub::stats(seg) {
        assert!(s.subscribers <= s.max_subscribers, "{s:?}");
        assert!(s.slots_in_use <= s.slots, "{s:?}");
    }
}

/// Word offsets (8-aligned) in a data area of `len` bytes that the layout
/// in the header gives meaning to: the fuzzer pokes these more often.
/// Recomputed from the documented layouts (`docs/channel.md`); a wrong
/// guess only makes a poke less interesting, never unsound.
pub fn hot_words(kind: Kind, p: &[u64; 8], len: u64) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    match kind {
        Kind::Mutex | Kind::Semaphore | Kind::Event => v.extend([0, 4, 8, 12, 48]),
        Kind::Ring => {
            v.extend((0..8).map(|i| i * 128));
            let (cap, max, prefix) = (p[0], p[1], p[2]);
            if prefix > 0 {
                let stride = prefix
                    .saturating_add(max)
                    .div_ceil(prefix)
                    .saturating_mul(prefix);
                for i in 0..cap.min(64) {
                    let s = 4096u64.saturating_add(i.saturating_mul(stride));
                    v.extend([s, s.saturating_add(8)]);
                }
            }
        }
        Kind::PubSub => {
            v.extend((0..7).map(|i| i * 128));
            let (slots, max_subs) = (p[0].min(1 << 16), p[2].min(64));
            for i in 0..max_subs {
                v.extend([1024 + i * 128, 1024 + i * 128 + 8]);
            }
            // Layout v2: 8-byte stamped queue entries; from the next page,
            // slots of `stride` bytes, each starting with refs, seq, len.
            let q = slots.max(1).next_power_of_two();
            let queue_off = 1024 + max_subs * 128;
            for i in 0..q.min(64) {
                v.push(queue_off + 8 * i);
            }
            let data_off = (queue_off + q * 8).div_ceil(4096) * 4096;
            let (slot_size, align) = (p[1].min(1 << 36), p[4].clamp(1, 4096));
            let line = align.max(64);
            let stride = (align.max(32) + slot_size).div_ceil(line) * line;
            for i in 0..slots.min(64) {
                let s = data_off.saturating_add(i.saturating_mul(stride));
                v.extend([s, s.saturating_add(8), s.saturating_add(16)]);
            }
        }
        _ => v.extend([0, 8, 16]),
    }
    v.retain(|&o| o.saturating_add(8) <= len);
    v
}

impl<'s> World<'s> {
    /// Runs every open path on the segment file of `scratch`. `lock_mutex`:
    /// see the field.
    pub fn open_all(scratch: &'s Scratch, lock_mutex: bool) -> World<'s> {
        let name = scratch.name.as_str();
        let poker = Segment::open(name).ok();
        if let Some(p) = &poker {
            let file = std::fs::metadata(path_of(name)).map(|m| m.len());
            if let Ok(size) = file {
                assert_eq!(p.len() as u64 + HEADER_SIZE, size, "mapping vs file size");
            }
            let _ = (p.header(), p.is_marked_for_removal(), p.kind().as_str());
        }
        let hot = poker
            .as_ref()
            .map(|p| hot_words(p.kind(), &p.header().params, p.len() as u64))
            .unwrap_or_default();
        let mut w = World {
            scratch,
            lock_mutex,
            poker,
            hot,
            sem: None,
            ev: None,
            mtx: None,
            mtx_any: None,
            tx: None,
            rx: None,
            publ: None,
            limit: None,
        };
        w.open_sync();
        w.tx = open_tx(name, false).or_else(|| open_tx(name, true));
        w.rx = open_rx(name, false).or_else(|| open_rx(name, true));
        w.publ = open_pub(name, false).or_else(|| open_pub(name, true));
        if let Some(p) = &w.poker {
            w.limit = Some(p.header().params[1]);
        }
        w
    }

    fn open_sync(&mut self) {
        let name = self.scratch.name.as_str();
        self.sem = NamedSemaphore::open(name).ok();
        self.ev = NamedEvent::open(name).ok();
        self.mtx = NamedMutex::<u64>::open(name).ok();
        self.mtx_any = NamedMutex::open_untyped(name).ok();
        if let Some(m) = &self.mtx {
            let _ = m.state();
        }
    }

    /// Opens up to `n` subscribers (raw, or typed if that fails).
    pub fn open_subs(&self, n: usize) -> Vec<SubHandle> {
        let name = self.scratch.name.as_str();
        (0..n.min(MAX_SUBS))
            .filter_map(|i| open_sub(name, i % 2 == 1).or_else(|| open_sub(name, i % 2 == 0)))
            .map(SubHandle)
            .collect()
    }

    /// Runs `ops`; `subs` may be extended or shrunk by them.
    pub fn run(&mut self, subs: &mut Vec<SubHandle>, ops: &[Op]) {
        self.run_ops(Subs::Mut(subs), ops, 0);
    }

    fn run_ops(&mut self, mut subs: Subs<'_>, ops: &[Op], depth: u32) {
        for (k, op) in ops.iter().enumerate() {
            if op.code % OPS == 26 {
                // Hold a sample while the rest of the script runs.
                let all = subs.slice();
                if depth < MAX_DEPTH && !all.is_empty() {
                    let s = all[op.x as usize % all.len()].0.raw();
                    if let Ok(sample) = s.try_recv() {
                        self.check_sample(sample.len());
                        let _ = sample.iter().fold(0u8, |a, b| a ^ b);
                        self.run_ops(Subs::Frozen(all), &ops[k + 1..], depth + 1);
                        let _ = sample.missed();
                        drop(sample);
                        return;
                    }
                }
                continue;
            }
            self.step(&mut subs, *op);
        }
    }

    fn check_sample(&self, len: usize) {
        if let Some(limit) = self.limit {
            assert!(len as u64 <= limit, "sample of {len} > slot size {limit}");
        }
    }

    fn step(&mut self, subs: &mut Subs<'_>, op: Op) {
        let name = self.scratch.name.clone();
        let (x, y) = (op.x, op.y);
        let zero = Duration::ZERO;
        match op.code % OPS {
            0 => self.poke(u64::from(x), y, x >> 30),
            1 if !self.hot.is_empty() => {
                let at = self.hot[x as usize % self.hot.len()];
                self.poke(at, y, x >> 30)
            }
            2 => {
                // The header's flags word (removal mark), through the file.
                if let Ok(f) = self.scratch.edit() {
                    let _ = f.write_all_at(&(y as u32).to_le_bytes(), FLAGS_OFFSET as u64);
                }
            }
            3 => {
                if let Some(p) = &self.poker {
                    describe_all(p);
                }
                inspect(&name, x % 8 == 0);
            }
            4 => {
                if let Some(s) = &self.sem {
                    let _ = s.try_wait();
                }
            }
            5 => {
                if let Some(s) = &self.sem {
                    let _ = if x % 2 == 0 {
                        s.post()
                    } else {
                        s.post_n(x >> 1)
                    };
                }
            }
            6 => {
                if let Some(s) = &self.sem {
                    let _ = (s.wait_timeout(zero), s.value(), s.sleepers());
                }
            }
            7 => {
                if let Some(e) = &self.ev {
                    let _ = e.set();
                }
            }
            8 => {
                if let Some(e) = &self.ev {
                    let _ = e.reset();
                }
            }
            9 => {
                if let Some(e) = &self.ev {
                    let _ = (e.try_wait(), e.wait_timeout(zero), e.is_set(), e.mode());
                }
            }
            10 | 11 if self.lock_mutex => {
                if let Some(m) = &self.mtx {
                    let r = if op.code % OPS == 10 {
                        m.try_lock()
                    } else {
                        m.lock_timeout(zero)
                    };
                    match r {
                        Ok(mut g) => *g = g.wrapping_add(y),
                        Err(LockError::OwnerDied(mut g)) => {
                            *g = y;
                            if x % 2 == 0 {
                                g.mark_consistent();
                            }
                        }
                        Err(_) => {}
                    }
                    let _ = m.state();
                }
            }
            12 if self.lock_mutex => {
                if let Some(m) = &self.mtx_any {
                    match m.try_lock() {
                        Ok(g) => drop(g),
                        Err(LockError::OwnerDied(mut g)) if x % 2 == 0 => g.mark_consistent(),
                        Err(_) => {}
                    }
                }
            }
            13 => {
                if let Some(m) = &self.mtx {
                    let _ = m.state();
                }
                if let Some(m) = &self.mtx_any {
                    let _ = m.state();
                }
            }
            14 | 15 => {
                if let Some(t) = &mut self.tx {
                    let t = t.raw();
                    let max = t.max_message();
                    let msg = payload(x as usize % (max.min(1 << 16) + 2), y);
                    let _ = if op.code % OPS == 14 {
                        t.try_send(&msg)
                    } else {
                        t.send_timeout(&msg, zero)
                    };
                    let _ = (t.len(), t.is_empty(), t.capacity(), t.peer());
                }
            }
            16 => match &mut self.tx {
                Some(Tx::Typed(t)) => {
                    let _ = t.try_send(&y);
                }
                Some(Tx::Raw(t)) => {
                    let n = 8.min(t.max_message());
                    let _ = t.send_with(n, Wait::No, |b| b.fill(y as u8));
                }
                None => {}
            },
            17..=19 => {
                if let Some(r) = &mut self.rx {
                    if op.code % OPS == 19 {
                        if let Rx::Typed(t) = r {
                            let _ = t.try_recv();
                            return;
                        }
                    }
                    let r = r.raw();
                    let max = r.max_message();
                    let got = match op.code % OPS {
                        17 => r.try_recv().map(|v| v.len()),
                        18 => r.try_recv_with(|b| b.len()),
                        _ => r.recv_timeout(zero).map(|v| v.len()),
                    };
                    if let Ok(n) = got {
                        assert!(n <= max, "ring message of {n} bytes > max {max}");
                    }
                    let _ = (r.len(), r.is_empty(), r.capacity(), r.peer());
                }
            }
            20 => {
                self.tx = None;
                self.tx = open_tx(&name, x % 2 == 1);
            }
            21 => {
                self.rx = None;
                self.rx = open_rx(&name, x % 2 == 1);
            }
            22 => {
                if let Some(p) = &mut self.publ {
                    let p = p.raw();
                    let want = x as usize % (p.slot_size().min(1 << 16) + 2);
                    if let Ok(mut loan) = p.try_loan(want) {
                        assert_eq!(loan.len(), want, "loan length");
                        loan.fill(y as u8);
                        if x & (1 << 20) != 0 {
                            loan.truncate((y as usize) % (want + 1));
                        }
                        if x & (1 << 21) == 0 {
                            loan.publish();
                        }
                    }
                    let _ = (p.published(), p.slots(), p.subscribers());
                }
            }
            23 => {
                if let Some(p) = &mut self.publ {
                    let p = p.raw();
                    let msg = payload(x as usize % (p.slot_size().min(1 << 16) + 2), y);
                    let _ = p.try_send(&msg);
                }
            }
            24 | 25 | 31 => {
                let all = subs.slice();
                if all.is_empty() {
                    return;
                }
                let s = &all[x as usize % all.len()].0;
                match op.code % OPS {
                    24 => {
                        if let Ok(sample) = s.raw().try_recv() {
                            self.check_sample(sample.len());
                            let _ = (sample.missed(), sample.first().copied());
                        }
                    }
                    25 => {
                        let mut buf = Vec::new();
                        if s.raw().recv_into(Wait::No, &mut buf).is_ok() {
                            self.check_sample(buf.len());
                        }
                    }
                    _ => {
                        if let Sub::Typed(t) = s {
                            if let Ok(v) = t.try_recv() {
                                let _ = (*v, v.missed());
                            }
                        }
                        let _ = (
                            s.raw().len(),
                            s.raw().is_empty(),
                            s.raw().peer(),
                            s.raw().index(),
                        );
                    }
                }
            }
            27 => {
                if let Subs::Mut(v) = subs {
                    if v.len() < MAX_SUBS {
                        if let Some(s) = open_sub(&name, x % 2 == 1) {
                            v.push(SubHandle(s));
                        }
                    }
                }
            }
            28 => {
                if let Subs::Mut(v) = subs {
                    if !v.is_empty() {
                        let i = x as usize % v.len();
                        v.remove(i);
                    }
                }
            }
            29 => {
                self.publ = None;
                self.publ = open_pub(&name, x % 2 == 1);
            }
            30 => {
                if let Some(p) = &mut self.publ {
                    let p = p.raw();
                    let _ = (p.reap(), p.subscribers());
                }
            }
            32 => {
                // Plain byte copies through the raw handle.
                if let Some(p) = &self.poker {
                    let len = (y as usize) % 512;
                    let mut buf = vec![0u8; len];
                    let ok = p.read_at(u64::from(x), &mut buf).is_ok();
                    let fits = u64::from(x) + len as u64 <= p.len() as u64;
                    assert_eq!(ok, fits, "read_at bounds");
                }
            }
            33 => {
                // Reopen the sync objects (re-validation after pokes).
                self.sem = None;
                self.ev = None;
                self.mtx = None;
                self.mtx_any = None;
                self.open_sync();
            }
            34 => {
                // Scribble a range through the file (a peer's memset).
                let Some(p) = &self.poker else { return };
                let len = p.len() as u64;
                if len == 0 {
                    return;
                }
                let start = u64::from(x) % len;
                let n = (y >> 40) % (len - start) + 1;
                if p.kind() == Kind::Mutex && !outside_glibc(start, n) {
                    return;
                }
                if let Ok(f) = self.scratch.edit() {
                    let _ = fill(&f, HEADER_SIZE + start, n, y);
                }
            }
            _ => {}
        }
    }

    /// Writes `y` (8, 4, 2 or 1 bytes by `width`) at `off` (modulo the
    /// data length, aligned to the width) through the raw handle, never
    /// into glibc's part of a mutex.
    fn poke(&self, off: u64, y: u64, width: u32) {
        let Some(p) = &self.poker else { return };
        let len = p.len() as u64;
        let w = [8u64, 4, 2, 1][width as usize % 4];
        if len < w {
            return;
        }
        let at = (off % (len - w + 1)) / w * w;
        if p.kind() == Kind::Mutex && !outside_glibc(at, w) {
            return;
        }
        let bytes = y.to_le_bytes();
        p.write_at(at, &bytes[..w as usize])
            .expect("poke in bounds");
    }
}

/// Subscribers, either owned by the running script (which may open and
/// close them) or frozen because a held sample borrows one.
enum Subs<'a> {
    Mut(&'a mut Vec<SubHandle>),
    Frozen(&'a [SubHandle]),
}

impl<'a> Subs<'a> {
    fn slice(&self) -> &[SubHandle] {
        match self {
            Subs::Mut(v) => v,
            Subs::Frozen(s) => s,
        }
    }
}

/// An open subscriber (raw or typed).
pub struct SubHandle(Sub);

/// Writes `n` bytes at file offset `at`: the 8 bytes of `v`, repeated.
pub fn fill(f: &std::fs::File, at: u64, n: u64, v: u64) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..n.min(1 << 16))
        .map(|i| (v >> (8 * (i % 8))) as u8)
        .collect();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(chunk.len() as u64);
        f.write_all_at(&chunk[..k as usize], at + done)?;
        done += k;
    }
    Ok(())
}

fn payload(len: usize, y: u64) -> Vec<u8> {
    (0..len).map(|i| (y >> (8 * (i % 8))) as u8).collect()
}

fn open_tx(name: &str, typed: bool) -> Option<Tx> {
    if typed {
        TypedSender::<u64>::open(name).ok().map(Tx::Typed)
    } else {
        Sender::open(name).ok().map(Tx::Raw)
    }
}

fn open_rx(name: &str, typed: bool) -> Option<Rx> {
    if typed {
        TypedReceiver::<u64>::open(name).ok().map(Rx::Typed)
    } else {
        Receiver::open(name).ok().map(Rx::Raw)
    }
}

fn open_pub(name: &str, typed: bool) -> Option<Pub> {
    if typed {
        TypedPublisher::<u64>::open(name).ok().map(Pub::Typed)
    } else {
        Publisher::open(name).ok().map(Pub::Raw)
    }
}

fn open_sub(name: &str, typed: bool) -> Option<Sub> {
    if typed {
        TypedSubscriber::<u64>::open(name).ok().map(Sub::Typed)
    } else {
        Subscriber::open(name).ok().map(Sub::Raw)
    }
}

/// Event mode from a byte.
pub fn event_mode(b: u8) -> EventMode {
    if b.is_multiple_of(2) {
        EventMode::AutoReset
    } else {
        EventMode::ManualReset
    }
}
