//! Async pub/sub endpoints (feature `async`): [`Publisher::loan_async`],
//! [`Subscriber::recv_async`] and a `Stream` of copied messages
//! ([`Subscriber::stream`]). Waiting: [`crate::aio`].
//!
//! A [`Subscriber`] is `Send` but not `Sync` (its cursor is a `Cell`), so
//! its futures hold it by `&mut`: they are `Send` (a task awaiting them can
//! be `tokio::spawn`ed), and no other access to the subscriber can race
//! with them. Like the ring futures they first spin by the endpoint's
//! [`WaitStrategy`] (capped, see `aio::park::MAX_SPINS`), then park.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;
use crate::aio::park::{spins_for, Check, Park, Target};
use crate::channel::wait::SLICE;

fn sub_target<'a>(core: &'a PubCore, asleep: &'a AtomicU32, strategy: WaitStrategy) -> Target<'a> {
    Target {
        word: &core.data_seq.0,
        sleepers: Some(&core.sub_sleepers.0),
        // As the blocking `recv`: a process killed with the future
        // pending leaves the flag set, and the reaper (`leave`, `join`)
        // takes its count back.
        mine: Some(asleep),
        slice: Some(SLICE),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: spins_for(strategy),
    }
}

fn pub_target(core: &PubCore, strategy: WaitStrategy) -> Target<'_> {
    Target {
        word: &core.free_seq.0,
        sleepers: Some(&core.pub_sleepers.0),
        mine: None,
        // Each slice also reaps dead subscribers (in `try_loan`), whose
        // slots would otherwise never come back.
        slice: Some(SLICE),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: spins_for(strategy),
    }
}

impl Subscriber {
    /// Receives the next message, waiting asynchronously. Same results as
    /// [`recv`](Self::recv) (a publisher's death is noticed within a
    /// slice, 20 ms).
    ///
    /// Takes `&mut self`, unlike `recv`, so that the future is `Send`; the
    /// returned [`Sample`] keeps the subscriber borrowed (to hold several
    /// samples at once, use the blocking `recv`/`try_recv`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only in the poll that returns its
    /// [`Sample`]; a dropped future took nothing.
    pub fn recv_async(&mut self) -> SubRecvFuture<'_> {
        SubRecvFuture {
            sub: Some(self),
            park: Park::default(),
        }
    }

    /// A `futures_core::Stream` of private copies of the messages (a
    /// [`Sample`] borrows the subscriber, a stream item cannot). Ends after
    /// [`RecvError::Disconnected`]; another error is yielded, then it ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping a pending `next()` loses no message.
    pub fn stream(&mut self) -> SampleStream<'_> {
        SampleStream {
            sub: self,
            park: Park::default(),
            ended: false,
        }
    }

    /// The futures' check: `None` while nothing is there and the publisher
    /// may still send. In the spin (`Check::Spin`) only a look at the
    /// indices, no system call.
    fn poll_sample(&self, how: Check) -> Option<Result<Sample<'_>, RecvError>> {
        if how == Check::Spin && self.is_empty() {
            return None;
        }
        // Liveness is checked here at most once per slice (`AliveCache`).
        match self.try_recv() {
            Err(RecvError::Empty) => None,
            r => Some(r),
        }
    }

    fn target(&self) -> Target<'_> {
        let pool = self.sh.pool();
        sub_target(
            pool.core,
            &pool.subs[self.index()].asleep,
            self.wait_strategy(),
        )
    }
}

/// Future of [`Subscriber::recv_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SubRecvFuture<'a> {
    /// `None` once a result was handed out (a sample carries the borrow).
    sub: Option<&'a mut Subscriber>,
    park: Park,
}

impl<'a> Future for SubRecvFuture<'a> {
    type Output = Result<Sample<'a>, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let p: *const Subscriber = match this.sub.as_deref() {
            Some(s) => s,
            None => panic!("SubRecvFuture polled after completion"),
        };
        // SAFETY: a shared re-borrow of the `&'a mut Subscriber` held in
        // `this.sub`, which is not used while this one lives: on `Pending`
        // nothing keeps it (the registration holds an address only); on
        // `Ready` we drop our `&mut` below, so a returned sample's borrow
        // is the only one left (a downgrade of the `&'a mut`). Raw only
        // because the borrow checker cannot express "downgrade on Ready".
        let sub: &'a Subscriber = unsafe { &*p };
        let r = this.park.poll(cx, sub.target(), |how| sub.poll_sample(how));
        if r.is_ready() {
            // Also makes a poll after completion panic (above) rather than
            // hand out a second sample.
            this.sub = None;
        }
        r
    }
}

impl Drop for SubRecvFuture<'_> {
    fn drop(&mut self) {
        // Completed: `Park::poll` already left.
        if let Some(sub) = self.sub.as_deref() {
            self.park.done(sub.target());
        }
    }
}

/// A `Stream` of copies of a [`Subscriber`]'s messages.
#[must_use = "streams do nothing unless polled"]
#[derive(Debug)]
pub struct SampleStream<'a> {
    sub: &'a mut Subscriber,
    park: Park,
    ended: bool,
}

impl futures_core::Stream for SampleStream<'_> {
    type Item = Result<Vec<u8>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let sub: &Subscriber = this.sub;
        let r = std::task::ready!(this.park.poll(cx, sub.target(), |how| {
            if how == Check::Spin && sub.is_empty() {
                return None;
            }
            let mut buf = Vec::new();
            match sub.recv_into(Wait::No, &mut buf) {
                Err(RecvError::Empty) => None,
                r => Some(r.map(|_| buf)),
            }
        }));
        Poll::Ready(match r {
            Ok(m) => Some(Ok(m)),
            Err(RecvError::Disconnected) => {
                this.ended = true;
                None
            }
            Err(e) => {
                this.ended = true;
                Some(Err(e))
            }
        })
    }
}

impl futures_core::FusedStream for SampleStream<'_> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl Drop for SampleStream<'_> {
    fn drop(&mut self) {
        self.park.done(self.sub.target());
    }
}

impl Publisher {
    /// Borrows a free slot for a message of `len` bytes, waiting
    /// asynchronously for one under [`Policy::Block`]. Same results as
    /// [`loan`](Self::loan).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a slot is taken only in the poll that returns the
    /// [`Loan`]; a dropped future holds none (and a dropped unpublished
    /// `Loan` returns its slot, as always).
    pub fn loan_async(&mut self, len: usize) -> LoanFuture<'_> {
        LoanFuture {
            publisher: Some(self),
            len,
            park: Park::default(),
        }
    }
}

/// Future of [`Publisher::loan_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct LoanFuture<'a> {
    /// `None` once the loan was handed out.
    publisher: Option<&'a mut Publisher>,
    len: usize,
    park: Park,
}

impl<'a> Future for LoanFuture<'a> {
    type Output = Result<Loan<'a>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let len = this.len;
        let p: *mut Publisher = match this.publisher.as_deref_mut() {
            Some(p) => p,
            None => panic!("LoanFuture polled after completion"),
        };
        // SAFETY: `p` comes from the `&'a mut Publisher` we own; the pool
        // lives in its segment's mapping for at least 'a. Used only here.
        let (core, strategy): (&PubCore, _) =
            unsafe { ((*p).sh.pool().core, (*p).wait_strategy()) };
        let r = this.park.poll(cx, pub_target(core, strategy), |how| {
            // SAFETY: a re-borrow of the `&'a mut Publisher` held in
            // `this.publisher`, which is not used while this one lives and
            // is discarded below once a loan carries the borrow away. Raw
            // only because the borrow checker cannot see that a failed
            // `try_loan` ends its borrow (NLL "problem case 3").
            let p: &'a mut Publisher = unsafe { &mut *p };
            if how != Check::Slow {
                // A look for a free slot without taking it (under `Block`
                // `take_free` only reads; only the publisher takes slots)
                // and without the reaping system calls `try_loan` makes
                // when none is free: those run once per slice (`Slow`),
                // as in the blocking `loan`, not on every wake and probe.
                let mut probe = 0;
                p.sh.pool().take_free(&mut probe)?;
            }
            match p.try_loan(len) {
                Err(SendError::Full) => None,
                r => Some(r),
            }
        });
        if let Poll::Ready(Ok(_)) = &r {
            // The loan now holds the publisher's borrow.
            this.publisher = None;
        }
        r
    }
}

impl Drop for LoanFuture<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.publisher.as_deref() {
            let pool = p.sh.pool();
            self.park.done(pub_target(pool.core, p.wait_strategy()));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::aio::park::MAX_SPINS;

    /// The pub/sub futures spin by their endpoint's strategy before they
    /// park, as the ring futures do (`aio::park` tests the spin itself).
    #[test]
    fn futures_spin_by_the_endpoint_strategy() {
        let name = format!("t-aio-pss-{}", std::process::id());
        let mut p = Publisher::create(&name, &PubSubOptions::new(4, 8, 2)).unwrap();
        let s = Subscriber::open(&name);
        let _ = crate::segment::remove(&name);
        let s = s.unwrap();
        let pub_spins = |p: &Publisher| pub_target(p.sh.pool().core, p.wait_strategy()).spins;
        for (w, n) in [
            (WaitStrategy::Sleep, 0),
            (WaitStrategy::SpinThenSleep { spins: 77 }, 77),
            (WaitStrategy::BusyPoll, MAX_SPINS),
        ] {
            s.set_wait_strategy(w);
            p.set_wait_strategy(w);
            assert_eq!(s.target().spins, n);
            assert_eq!(pub_spins(&p), n);
        }
    }

    /// A pending `recv_async` is counted as a sleeper and flagged
    /// `asleep`, as a blocking `recv` is: a process that dies (here: a
    /// future forgotten, its subscriber dropped) has its count taken back,
    /// so the publisher stops paying a futex wake per message for it.
    #[test]
    fn a_vanished_pending_future_gives_its_sleeper_count_back() {
        use std::task::{Context, Wake, Waker};
        struct Noop;
        impl Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let name = format!("t-aio-psm-{}", std::process::id());
        let p = Publisher::create(&name, &PubSubOptions::new(4, 8, 2)).unwrap();
        let s = Subscriber::open(&name);
        let _ = crate::segment::remove(&name);
        let mut s = s.unwrap();
        s.set_wait_strategy(WaitStrategy::Sleep);
        let idx = s.index();
        let counts = |p: &Publisher| {
            let pool = p.sh.pool();
            (
                pool.core.sub_sleepers.0.load(Ordering::Relaxed),
                pool.subs[idx].asleep.load(Ordering::Relaxed),
            )
        };
        let waker = Waker::from(std::sync::Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        // Dropped (cancelled): count and flag go.
        let mut f = Box::pin(s.recv_async());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(counts(&p), (1, 1));
        drop(f);
        assert_eq!(counts(&p), (0, 0));
        // Vanished: the subscriber's leave takes the count back.
        let mut f = Box::pin(s.recv_async());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        std::mem::forget(f);
        assert_eq!(counts(&p), (1, 1));
        drop(s);
        assert_eq!(counts(&p), (0, 0));
    }
}
