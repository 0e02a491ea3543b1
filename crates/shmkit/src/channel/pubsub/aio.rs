//! Async pub/sub endpoints (feature `async`): [`Publisher::loan_async`],
//! [`Subscriber::recv_async`] and a `Stream` of copied messages
//! ([`Subscriber::stream`]). Waiting: [`crate::aio`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;
use crate::aio::park::{Park, Target};
use crate::channel::wait::SLICE;

fn sub_target(core: &PubCore) -> Target<'_> {
    Target {
        word: &core.data_seq.0,
        sleepers: Some(&core.sub_sleepers.0),
        slice: Some(SLICE),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: 0,
    }
}

fn pub_target(core: &PubCore) -> Target<'_> {
    Target {
        word: &core.free_seq.0,
        sleepers: Some(&core.pub_sleepers.0),
        // Each slice also reaps dead subscribers (in `try_loan`), whose
        // slots would otherwise never come back.
        slice: Some(SLICE),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: 0,
    }
}

impl Subscriber {
    /// Receives the next message, waiting asynchronously. Same results as
    /// [`recv`](Self::recv) (a publisher's death is noticed within a
    /// slice, 20 ms).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only in the poll that returns its
    /// [`Sample`]; a dropped future took nothing.
    pub fn recv_async(&self) -> SubRecvFuture<'_> {
        SubRecvFuture {
            sub: self,
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
    pub fn stream(&self) -> SampleStream<'_> {
        SampleStream {
            sub: self,
            park: Park::default(),
            ended: false,
        }
    }

    fn poll_sample(&self) -> Option<Result<Sample<'_>, RecvError>> {
        match self.try_recv() {
            Err(RecvError::Empty) => None,
            r => Some(r),
        }
    }
}

/// Future of [`Subscriber::recv_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SubRecvFuture<'a> {
    sub: &'a Subscriber,
    park: Park,
}

impl<'a> Future for SubRecvFuture<'a> {
    type Output = Result<Sample<'a>, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sub: &'a Subscriber = this.sub;
        let pool = sub.sh.pool();
        this.park
            .poll(cx, sub_target(pool.core), |_| sub.poll_sample())
    }
}

impl Drop for SubRecvFuture<'_> {
    fn drop(&mut self) {
        let pool = self.sub.sh.pool();
        self.park.done(sub_target(pool.core));
    }
}

/// A `Stream` of copies of a [`Subscriber`]'s messages.
#[must_use = "streams do nothing unless polled"]
#[derive(Debug)]
pub struct SampleStream<'a> {
    sub: &'a Subscriber,
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
        let sub = this.sub;
        let pool = sub.sh.pool();
        let r = std::task::ready!(this.park.poll(cx, sub_target(pool.core), |_| {
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

impl Drop for SampleStream<'_> {
    fn drop(&mut self) {
        let pool = self.sub.sh.pool();
        self.park.done(sub_target(pool.core));
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
        let core: &PubCore = unsafe { (*p).sh.pool().core };
        let r = this.park.poll(cx, pub_target(core), |_| {
            // SAFETY: a re-borrow of the `&'a mut Publisher` held in
            // `this.publisher`, which is not used while this one lives and
            // is discarded below once a loan carries the borrow away. Raw
            // only because the borrow checker cannot see that a failed
            // `try_loan` ends its borrow (NLL "problem case 3").
            let p: &'a mut Publisher = unsafe { &mut *p };
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
            self.park.done(pub_target(pool.core));
        }
    }
}
