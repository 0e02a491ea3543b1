//! The waiter threads: each blocks in `futex_waitv` on up to
//! [`WORDS_PER_SHARD`] futex words registered by pending futures, plus a
//! control word of its own, and wakes the `Waker`s of the words that
//! changed. Design and limits: `docs/async.md`.
//!
//! # Table protocol
//!
//! A shard's [`Table`] (under its mutex) lists words with their waiters. A
//! waiter is *armed* (has a `Waker`) or *fired* (its waker was taken and
//! woken; it re-arms when its future is polled again). Every armed waiter
//! of a word was armed with the same expected value `val`, which the
//! arming thread read from the word itself under the table lock (it
//! borrows the endpoint, so the word is mapped). The shard thread never
//! reads a word: only the kernel does (`futex_waitv` compares and faults
//! safely), so a leaked future whose endpoint was unmapped cannot make the
//! thread touch unmapped memory.
//!
//! `sleeping` says what the thread's current (or imminent) `futex_waitv`
//! covers; it is `None` while the thread will re-read the table before it
//! sleeps. An arm whose `(word, val)` is not covered, or whose tick is
//! earlier than the thread's deadline, *kicks*: bumps `ctl` under the
//! lock (so the thread's wait, whose `ctl` value was read under the lock
//! before, fails or wakes) and `FUTEX_WAKE`s it. Hence an armed waiter is
//! always either covered by the running wait or will be seen by the next
//! pass, and a change of its word after the arming read ends that wait.
//!
//! # Lingering entries
//!
//! A word inside a shmkit segment mapping (`linger`: the channels) keeps
//! its entry, with its `uid`, when its last registration goes, so that the
//! endpoint's next future joins the same entry and, if the thread's wait
//! covers its value (`keep`), arms without a kick: a steady receive loop
//! costs no control-word wake. A lingering entry is valid only while the
//! address still maps the object it was made for; a registration vouches
//! for that while it lives (its future borrows the endpoint), and when it
//! goes it stamps the entry with the process's unmap count
//! (`sys::mmap::unmaps`). A later registration reuses the entry only if no
//! mapping was unmapped since; otherwise the entry is replaced (new `uid`,
//! kick). Lingering entries are also dropped when idle for [`LINGER`] (at
//! the thread's next pass), when a shard needs room, and on `EFAULT`. While
//! the thread keeps waiting on a lingering word, its wait ends at least
//! every [`LINGER_TICK`], so an arm with a slice tick is covered too.

use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::Mutex;

use crate::primitive::{AtomicU32, Ordering};
use crate::sys::futex::{self, WaitvOutcome};

/// Distinct words one thread waits on (`futex_waitv` takes 128; one is the
/// control word).
pub(crate) const WORDS_PER_SHARD: usize = futex::WAITV_MAX - 1;

/// Poll period of the fallback for kernels without `futex_waitv`.
pub(crate) const FALLBACK_PERIOD: Duration = Duration::from_millis(1);

/// On `EAGAIN`, the words are read one by one to fire only those that
/// moved, up to this many; past it every word fires.
const SELECTIVE_MAX: usize = 16;

/// A lingering entry (no registration) is dropped after this long.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// While the thread waits on a word nobody is armed on (kept for the next
/// future), its wait ends at least this often: no later than the tick of
/// any channel future (their slice, `channel::wait::SLICE`), so such an
/// arm is covered without a kick.
pub(crate) const LINGER_TICK: Duration = crate::channel::wait::SLICE;

/// The process's unmap count (see "Lingering entries"; the model tests
/// map nothing, so it stays put there).
fn unmap_gen() -> u64 {
    crate::sys::mmap::unmaps()
}

/// One waiter thread's state.
pub(crate) struct Shard {
    /// The thread's own futex word: bumped (under the table lock) to make
    /// it re-read the table.
    ctl: AtomicU32,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    words: Vec<WordEntry>,
    next_id: u64,
    /// What the thread waits on now; `None`: it re-reads the table first.
    sleeping: Option<Sleeping>,
    /// Use the polling fallback (no `futex_waitv`).
    fallback: bool,
    /// Ask the thread to exit (model tests).
    quit: bool,
    /// Passes of the thread's loop (tests read it to check idleness).
    passes: u64,
    /// Kicks so far (tests: a steady receive loop needs none).
    kicks: u64,
}

struct Sleeping {
    /// `(address, value, entry uid)`.
    words: Vec<(usize, u32, u64)>,
    deadline: Option<Instant>,
}

struct WordEntry {
    addr: usize,
    /// The value every armed waiter expects (`None`: no armed waiter),
    /// or the value the thread keeps waiting on after a wake (`keep`).
    val: Option<u32>,
    waiters: Vec<Waiter>,
    /// Unique per entry. An entry exists only while a waiter is
    /// registered, so while it exists the address stays mapped to the same
    /// object; a new entry for the same address may be another mapping
    /// (another futex key in the kernel), so a wait snapshot covers an arm
    /// only if it was taken of the same entry.
    uid: u64,
    /// May outlive its registrations (module docs, "Lingering entries").
    linger: bool,
    /// The unmap count when a registration last vouched for the address.
    gen: u64,
    /// Since when the entry has had no registration (lingering).
    idle_since: Option<Instant>,
}

struct Waiter {
    id: u64,
    /// `Some` while armed.
    waker: Option<Waker>,
    /// Fire at this instant even if the word does not change (liveness
    /// slices).
    tick: Option<Instant>,
}

impl WordEntry {
    fn new(addr: usize, uid: u64, linger: bool, waiters: Vec<Waiter>) -> WordEntry {
        WordEntry {
            addr,
            val: None,
            waiters,
            uid,
            linger,
            gen: unmap_gen(),
            idle_since: None,
        }
    }

    /// A lingering entry that may no longer be used: its address may map
    /// another object now, or it has been idle too long.
    fn expired(&self, gen: u64, now: Option<Instant>) -> bool {
        self.waiters.is_empty()
            && (self.gen != gen
                || now.is_some_and(|n| self.idle_since.is_some_and(|t| n >= t + LINGER)))
    }

    fn fire(&mut self, out: &mut Vec<Waker>, due: impl Fn(&Waiter) -> bool) {
        for w in &mut self.waiters {
            if w.waker.is_some() && due(w) {
                out.extend(w.waker.take());
            }
        }
        if self.waiters.iter().all(|w| w.waker.is_none()) {
            self.val = None;
        }
    }
}

impl Shard {
    pub(crate) fn new(fallback: bool) -> Shard {
        Shard {
            ctl: AtomicU32::new(0),
            table: Mutex::new(Table {
                fallback,
                ..Table::default()
            }),
        }
    }

    /// Whether the shard has room for `addr` (or has it already).
    /// `linger`: the word is in a shmkit segment mapping (module docs).
    pub(crate) fn try_add(self: &Arc<Self>, addr: usize, linger: bool) -> Option<Registration> {
        let gen = unmap_gen();
        let mut t = self.table.lock().unwrap();
        // A lingering entry from before an unmap may be another object.
        t.words
            .retain(|e| !(e.addr == addr && e.waiters.is_empty() && e.gen != gen));
        let has = t.words.iter().any(|e| e.addr == addr);
        if !has && t.words.len() >= WORDS_PER_SHARD {
            // Make room by forgetting a lingering entry, if any.
            let i = t.words.iter().position(|e| e.waiters.is_empty())?;
            t.words.swap_remove(i);
        }
        t.next_id += 1;
        let id = t.next_id;
        let waiter = Waiter {
            id,
            waker: None,
            tick: None,
        };
        match t.words.iter_mut().find(|e| e.addr == addr) {
            Some(e) => {
                e.waiters.push(waiter);
                e.idle_since = None;
            }
            None => t.words.push(WordEntry::new(addr, id, linger, vec![waiter])),
        }
        Some(Registration {
            shard: self.clone(),
            addr,
            id,
            linger,
        })
    }

    /// Makes the thread re-read the table (call with the table locked;
    /// `FUTEX_WAKE` `ctl` after unlocking).
    fn kick_locked(&self, t: &mut Table) {
        t.sleeping = None;
        t.kicks += 1;
        // Release: orders nothing by itself (the table mutex does); the
        // change of value is what ends the thread's wait.
        self.ctl.fetch_add(1, Ordering::Release);
    }

    /// Asks the thread to exit after its current pass (model tests).
    #[allow(dead_code)]
    pub(crate) fn quit(&self) {
        let mut t = self.table.lock().unwrap();
        t.quit = true;
        self.kick_locked(&mut t);
        drop(t);
        futex::wake_all(&self.ctl);
    }

    /// Kicks of the thread so far.
    #[allow(dead_code)]
    pub(crate) fn kicks(&self) -> u64 {
        self.table.lock().unwrap().kicks
    }

    /// Passes of the thread's loop so far.
    #[allow(dead_code)]
    pub(crate) fn passes(&self) -> u64 {
        self.table.lock().unwrap().passes
    }

    /// Words registered now (lingering entries not counted).
    #[allow(dead_code)]
    pub(crate) fn words(&self) -> usize {
        let t = self.table.lock().unwrap();
        t.words.iter().filter(|e| !e.waiters.is_empty()).count()
    }

    /// Entries in the table, lingering ones included.
    #[allow(dead_code)]
    pub(crate) fn entries(&self) -> usize {
        self.table.lock().unwrap().words.len()
    }

    /// One pass of the thread: snapshot the table, wait, fire the waiters
    /// whose word changed or whose tick came. `false` once asked to quit.
    pub(crate) fn run_once(&self) -> bool {
        // Snapshot under the lock (see the module docs).
        let (ctl, list, deadline, fallback) = {
            let mut t = self.table.lock().unwrap();
            if t.quit {
                return false;
            }
            t.passes += 1;
            // Lingering entries that may map another object now, or idle
            // too long, leave before we hand addresses to the kernel.
            let (gen, now) = (unmap_gen(), Instant::now());
            t.words.retain(|e| !e.expired(gen, Some(now)));
            // Relaxed: kicks bump it under this lock, which we hold.
            let ctl = self.ctl.load(Ordering::Relaxed);
            let list: Vec<(usize, u32, u64)> = t
                .words
                .iter()
                .filter_map(|e| e.val.map(|v| (e.addr, v, e.uid)))
                .collect();
            let ticks = t
                .words
                .iter()
                .flat_map(|e| &e.waiters)
                .filter(|w| w.waker.is_some())
                .filter_map(|w| w.tick)
                .min();
            // A word kept with nobody armed: wake by `LINGER_TICK`, so a
            // future arming it with its slice tick is covered (and idle
            // lingering entries get pruned).
            let kept = t
                .words
                .iter()
                .any(|e| e.val.is_some() && e.waiters.iter().all(|w| w.waker.is_none()));
            let deadline = match (ticks, kept) {
                (d, false) => d,
                (None, true) => Some(now + LINGER_TICK),
                (Some(d), true) => Some(d.min(now + LINGER_TICK)),
            };
            t.sleeping = Some(Sleeping {
                words: list.clone(),
                deadline,
            });
            (ctl, list, deadline, t.fallback)
        };
        let outcome = if fallback {
            self.wait_fallback(ctl, deadline, !list.is_empty())
        } else {
            let words: Vec<(&AtomicU32, u32)> = std::iter::once((&self.ctl, ctl))
                .chain(list.iter().map(|&(addr, v, _)| {
                    // SAFETY: only the kernel dereferences the address
                    // (futex_waitv validates it and fails with EFAULT if it
                    // is gone); `&AtomicU32` is the type its API takes. We
                    // never load through it (module docs).
                    (unsafe { &*(addr as *const AtomicU32) }, v)
                }))
                .collect();
            futex::waitv(&words, deadline)
        };
        let mut wake = Vec::new();
        {
            let mut t = self.table.lock().unwrap();
            t.sleeping = None;
            match outcome {
                WaitvOutcome::Woken(0) => {}
                WaitvOutcome::Woken(i) => {
                    let (addr, v, uid) = list.get(i - 1).copied().unwrap_or((0, 0, 0));
                    if let Some(e) = t.words.iter_mut().find(|e| e.addr == addr) {
                        // Re-armed with another value, or another entry,
                        // since: already fired.
                        if e.val == Some(v) && e.uid == uid {
                            e.fire(&mut wake, |_| true);
                            // Keep waiting on the word, with the value a
                            // waker leaves it at (`notify` bumps it by
                            // one), so that the futures re-arming with it
                            // (the next receive of a loop) are covered and
                            // need no kick. A guess, not a load: if wrong,
                            // the next wait fails at once (EAGAIN, below)
                            // and the thread reads the real value; an arm
                            // with another value is not covered and kicks.
                            if e.val.is_none() {
                                e.val = Some(v.wrapping_add(1));
                            }
                        }
                    }
                }
                WaitvOutcome::TimedOut if !t.fallback => {
                    let now = Instant::now();
                    for e in &mut t.words {
                        e.fire(&mut wake, |w| w.tick.is_some_and(|k| k <= now));
                    }
                }
                WaitvOutcome::Fault => {
                    // A leaked future's endpoint was unmapped: drop its
                    // word (and wake whoever else waits there, if anyone:
                    // they re-arm).
                    t.words.retain_mut(|e| {
                        let ok = futex::is_mapped(e.addr as *const AtomicU32);
                        if !ok {
                            e.fire(&mut wake, |_| true);
                        }
                        ok
                    });
                }
                WaitvOutcome::Unsupported => {
                    t.fallback = true;
                    for e in &mut t.words {
                        e.fire(&mut wake, |_| true);
                    }
                }
                // A word differed from its value when the wait began
                // (EAGAIN): read them (fault-safe) and fire only the ones
                // that moved, keeping their new value, as for a wake. Firing
                // every word instead would drop the values kept for the
                // next futures, and each of those would kick again. (One
                // read per word: past `SELECTIVE_MAX` words, fire all.)
                WaitvOutcome::Changed if list.len() <= SELECTIVE_MAX => {
                    for &(addr, v, uid) in &list {
                        let now = read_word(addr);
                        if now == Some(v) {
                            continue;
                        }
                        let Some(e) = t.words.iter_mut().find(|e| e.addr == addr) else {
                            continue;
                        };
                        if e.val == Some(v) && e.uid == uid {
                            e.fire(&mut wake, |_| true);
                            if e.val.is_none() {
                                e.val = now;
                            }
                        }
                    }
                }
                // A signal, a fallback period, or EAGAIN with many words:
                // every armed waiter checks.
                WaitvOutcome::Changed | WaitvOutcome::TimedOut => {
                    for e in &mut t.words {
                        e.fire(&mut wake, |_| true);
                    }
                }
            }
        }
        for w in wake {
            w.wake();
        }
        true
    }

    /// Without `futex_waitv`: sleep on `ctl` alone, for at most one
    /// [`FALLBACK_PERIOD`] while anyone is armed; then every armed waiter
    /// re-checks (polling, see `docs/async.md`).
    fn wait_fallback(&self, ctl: u32, deadline: Option<Instant>, armed: bool) -> WaitvOutcome {
        let until = if armed {
            let p = Instant::now() + FALLBACK_PERIOD;
            Some(deadline.map_or(p, |d| d.min(p)))
        } else {
            deadline
        };
        match futex::wait(&self.ctl, ctl, until) {
            futex::WaitOutcome::TimedOut => WaitvOutcome::TimedOut,
            futex::WaitOutcome::Woken => WaitvOutcome::Woken(0),
        }
    }
}

/// The value of the word at `addr`, read through the kernel (fault-safe:
/// `None` if unmapped or not readable, see `futex::peek`).
fn read_word(addr: usize) -> Option<u32> {
    #[cfg(not(loom))]
    let v = futex::peek(addr as *const AtomicU32);
    // SAFETY: the model tests keep every word alive until the thread
    // quits (the model futex has no fault-safe read).
    #[cfg(loom)]
    let v = Some(unsafe { &*(addr as *const AtomicU32) }.load(Ordering::Relaxed));
    v
}

/// A future's place in a shard: one waiter on one word. Dropping it
/// removes the waiter (and the word, if it was the last).
pub(crate) struct Registration {
    shard: Arc<Shard>,
    addr: usize,
    id: u64,
    linger: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .finish()
    }
}

impl Registration {
    /// Arms the waiter: `waker` is woken when `word` (the word this was
    /// registered for) no longer holds `seen`, or at `tick`. Returns
    /// `false`, arming nothing, if the word already differs from `seen`
    /// (the caller re-checks its condition and tries again).
    pub(crate) fn arm(
        &self,
        word: &AtomicU32,
        seen: u32,
        waker: &Waker,
        tick: Option<Instant>,
    ) -> bool {
        debug_assert_eq!(word as *const AtomicU32 as usize, self.addr);
        let mut wake = Vec::new();
        let kick = {
            let mut t = self.shard.table.lock().unwrap();
            // Acquire: pairs with the Release bump of the waker side; the
            // caller re-checks its condition after a `false`.
            let cur = word.load(Ordering::Acquire);
            if cur != seen {
                return false;
            }
            if !t.words.iter().any(|e| e.addr == self.addr) {
                // Only the Fault path drops a word with waiters, and only
                // an unmapped one: not ours (we borrow the endpoint). Be
                // robust anyway: put it back rather than fail for ever.
                t.next_id += 1;
                let uid = t.next_id;
                let waiter = Waiter {
                    id: self.id,
                    waker: None,
                    tick: None,
                };
                t.words
                    .push(WordEntry::new(self.addr, uid, self.linger, vec![waiter]));
            }
            let e = t
                .words
                .iter_mut()
                .find(|e| e.addr == self.addr)
                .expect("just ensured");
            if e.val.is_some_and(|v| v != cur) {
                // Others armed with an older value: it changed, fire them.
                e.fire(&mut wake, |_| true);
            }
            e.val = Some(cur);
            if !e.waiters.iter().any(|w| w.id == self.id) {
                e.waiters.push(Waiter {
                    id: self.id,
                    waker: None,
                    tick: None,
                });
            }
            if let Some(w) = e.waiters.iter_mut().find(|w| w.id == self.id) {
                match &mut w.waker {
                    Some(old) if old.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
                w.tick = tick;
            }
            let uid = e.uid;
            let covered = t.sleeping.as_ref().is_some_and(|s| {
                s.words.contains(&(self.addr, cur, uid))
                    && match (tick, s.deadline) {
                        (None, _) => true,
                        (Some(k), Some(d)) => k >= d,
                        (Some(_), None) => false,
                    }
            });
            let kick = t.sleeping.is_some() && !covered;
            if kick {
                self.shard.kick_locked(&mut t);
            }
            kick
        };
        if kick {
            futex::wake_all(&self.shard.ctl);
        }
        for w in wake {
            w.wake();
        }
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = self.shard.table.lock().unwrap();
        if let Some(e) = t.words.iter_mut().find(|e| e.addr == self.addr) {
            e.waiters.retain(|w| w.id != self.id);
            if e.waiters.is_empty() && e.linger {
                // Linger for the endpoint's next future. Our future
                // borrows the endpoint, so the address maps the entry's
                // object now: vouch for it with the current unmap count
                // (module docs). The value kept, if any, stays waited on.
                e.gen = unmap_gen();
                e.idle_since = Some(Instant::now());
            } else if e.waiters.is_empty() {
                // The endpoint may be unmapped once we return: forget
                // the word (see `uid`).
                t.words.retain(|e| e.addr != self.addr);
            } else if e.waiters.iter().all(|w| w.waker.is_none()) {
                e.val = None;
            }
        }
    }
}

/// The process's shards, each with its thread, created on demand.
#[cfg(not(loom))]
pub(crate) struct Reactor {
    shards: Mutex<Vec<Arc<Shard>>>,
    fallback: bool,
}

#[cfg(not(loom))]
impl Reactor {
    /// The process-wide reactor.
    pub(crate) fn get() -> &'static Reactor {
        static R: std::sync::OnceLock<Reactor> = std::sync::OnceLock::new();
        R.get_or_init(|| Reactor {
            shards: Mutex::new(Vec::new()),
            // Test hook, documented in docs/async.md: force the fallback.
            fallback: std::env::var_os("SHMKIT_AIO_FALLBACK").is_some_and(|v| v == "1"),
        })
    }

    /// Registers a waiter on `word`: in the shard that already waits on
    /// it, else in one with room, else in a new shard (a new thread).
    pub(crate) fn register(&self, word: &AtomicU32, linger: bool) -> Registration {
        let addr = word as *const AtomicU32 as usize;
        let mut shards = self.shards.lock().unwrap();
        // Prefer the shard that has the word (shared word, no new slot).
        for s in shards.iter() {
            let has = s.table.lock().unwrap().words.iter().any(|e| e.addr == addr);
            if has {
                if let Some(r) = s.try_add(addr, linger) {
                    return r;
                }
            }
        }
        for s in shards.iter() {
            if let Some(r) = s.try_add(addr, linger) {
                return r;
            }
        }
        let shard = Arc::new(Shard::new(self.fallback));
        let runner = shard.clone();
        std::thread::Builder::new()
            .name(format!("shmkit-aio-{}", shards.len()))
            .spawn(move || while runner.run_once() {})
            .expect("shmkit: cannot start an async waiter thread");
        let r = shard.try_add(addr, linger).expect("a new shard has room");
        shards.push(shard);
        r
    }

    /// Whether the shards poll instead of using `futex_waitv`.
    pub(crate) fn is_fallback(&self) -> bool {
        self.fallback
            || self
                .shards
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.table.lock().unwrap().fallback)
    }

    /// `(threads, words registered, passes)`, for tests and docs.
    pub(crate) fn stats(&self) -> (usize, usize, u64) {
        let shards = self.shards.lock().unwrap();
        let words = shards.iter().map(|s| s.words()).sum();
        let passes = shards.iter().map(|s| s.passes()).sum();
        (shards.len(), words, passes)
    }
}

#[cfg(all(test, not(loom)))]
#[path = "reactor_tests.rs"]
mod tests;
