//! Async ring endpoints (feature `async`): [`Receiver::recv_async`],
//! [`Sender::send_async`], a `Stream` of messages ([`Receiver::stream`])
//! and a `Sink` ([`Sender::sink`]). Waiting: [`crate::aio`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;
use crate::aio::park::{spins_for, Check, Park, Target};
use crate::channel::wait::{arm, SLICE};

impl Shared {
    /// The control block, with a lifetime not tied to `&self`, so that a
    /// future can hold its futex words while it calls `&mut` methods of
    /// the endpoint.
    ///
    /// # Safety
    ///
    /// The caller must not use the reference after the endpoint owning
    /// `self` is dropped (the futures hold `&mut` to it for their whole
    /// life, so their `poll`/`drop` are fine). The block lives in the
    /// segment's mapping, which no `&mut` method of an endpoint unmaps or
    /// moves, and is only ever accessed through shared references to
    /// atomics, so the `&mut` borrow of the endpoint does not alias it.
    unsafe fn core_detached<'x>(&self) -> &'x RingCore {
        let p: *const RingCore = self.core();
        // SAFETY: see the contract above.
        unsafe { &*p }
    }
}

fn recv_target(core: &RingCore, strategy: WaitStrategy, slice: Duration) -> Target<'_> {
    Target {
        word: &core.data_seq.0,
        sleepers: Some(&core.cons_sleepers.0),
        mine: None,
        slice: Some(slice),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: spins_for(strategy),
    }
}

fn send_target(core: &RingCore, strategy: WaitStrategy, slice: Duration) -> Target<'_> {
    Target {
        word: &core.space_seq.0,
        sleepers: Some(&core.prod_sleepers.0),
        mine: None,
        slice: Some(slice),
        // In the segment's mapping: the registration may linger.
        linger: true,
        spins: spins_for(strategy),
    }
}

/// The target of a receive future's poll. An empty ring may make it park:
/// then it arms the direction and, until a producer has acknowledged that,
/// sleeps in short slices (see `wait::arm`: the one wake-up the arming race
/// can lose costs such a slice). A message already there ends the poll
/// without a sleep (nobody else consumes), so it does not arm: arming is
/// sticky and would make the producer pay the fence for ever.
fn recv_wait<'a>(core: &'a RingCore, rx: &mut Receiver) -> Target<'a> {
    // Acquire, on the word the poll itself checks (`ConsCursor::try_peek`):
    // a message seen here is seen there (coherence), so skipping the arm
    // never leaves an unarmed future parked.
    let ready = rx.sh.stamp_of(rx.cur.head).load(Ordering::Acquire) == rx.cur.head + 1;
    let slice = if ready {
        SLICE
    } else {
        arm(&core.data_armed.0, &mut rx.unacked)
    };
    recv_target(core, rx.strategy, slice)
}

/// [`recv_wait`] for a send future: arms only on a full ring.
fn send_wait<'a>(core: &'a RingCore, tx: &mut Sender) -> Target<'a> {
    // `len` reads `head`, the word `try_reserve` checks: room seen here is
    // seen there (coherence: `head` only grows).
    let slice = if tx.len() >= tx.capacity() {
        arm(&core.space_armed.0, &mut tx.unacked)
    } else {
        SLICE
    };
    send_target(core, tx.strategy, slice)
}

impl Receiver {
    /// One receive attempt for the futures: `None` if the ring is empty
    /// and the producer may still send. In the spin (`Check::Spin`) only
    /// a look at the indices, no system call and no clock.
    fn poll_recv<R, F: FnOnce(&[u8]) -> R>(
        &mut self,
        how: Check,
        f: &mut Option<F>,
    ) -> Option<Result<R, RecvError>> {
        if how == Check::Spin && self.is_empty() {
            return None;
        }
        // Liveness is checked here at most once per slice (`AliveCache`).
        match self.recv_with(Wait::No, |b| (f.take().expect("called once"))(b)) {
            Err(RecvError::Empty) => None,
            r => Some(r),
        }
    }

    /// Receives a message, waiting asynchronously for one. Same results as
    /// [`recv`](Self::recv): after the producer closes or dies its
    /// messages are delivered, then [`RecvError::Disconnected`] or
    /// [`RecvError::SenderDied`] (a death is noticed within a slice,
    /// 20 ms).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message leaves the ring only in the poll that
    /// returns it, so dropping the future (the losing branch of a
    /// `select!`, a timeout) loses no message; the next receive gets it.
    pub fn recv_async(&mut self) -> RecvFuture<'_> {
        self.recv_with_async(<[u8]>::to_vec)
    }

    /// Zero-copy async receive: calls `f` on the message in place, then
    /// frees its slot (see [`recv_with`](Self::recv_with) about trust).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`recv_async`](Self::recv_async): `f` runs in the
    /// poll that completes, or never.
    pub fn recv_with_async<R, F: FnOnce(&[u8]) -> R + Unpin>(
        &mut self,
        f: F,
    ) -> RecvWithFuture<'_, F> {
        RecvWithFuture {
            rx: self,
            f: Some(f),
            park: Park::default(),
        }
    }

    /// A `futures_core::Stream` of the messages, borrowing the receiver.
    /// It ends after [`RecvError::Disconnected`]; another error is yielded
    /// once, then it ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping a pending `next()` loses no message.
    pub fn stream(&mut self) -> RecvStream<'_> {
        RecvStream {
            rx: self,
            park: Park::default(),
            ended: false,
        }
    }
}

/// Future of [`Receiver::recv_async`].
pub type RecvFuture<'a> = RecvWithFuture<'a, fn(&[u8]) -> Vec<u8>>;

/// Future of [`Receiver::recv_async`] and [`Receiver::recv_with_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct RecvWithFuture<'a, F> {
    rx: &'a mut Receiver,
    f: Option<F>,
    park: Park,
}

impl<R, F: FnOnce(&[u8]) -> R + Unpin> Future for RecvWithFuture<'_, F> {
    type Output = Result<R, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // SAFETY: used only within this call, while `this.rx` is borrowed.
        let core = unsafe { this.rx.sh.core_detached() };
        let (rx, f) = (&mut *this.rx, &mut this.f);
        if f.is_none() {
            panic!("RecvWithFuture polled after completion");
        }
        let target = recv_wait(core, rx);
        this.park.poll(cx, target, |how| rx.poll_recv(how, f))
    }
}

impl<F> Drop for RecvWithFuture<'_, F> {
    fn drop(&mut self) {
        self.park
            .done(recv_target(self.rx.sh.core(), self.rx.strategy, SLICE));
    }
}

/// A `Stream` of the messages of a [`Receiver`] ([`Receiver::stream`]).
#[must_use = "streams do nothing unless polled"]
#[derive(Debug)]
pub struct RecvStream<'a> {
    rx: &'a mut Receiver,
    park: Park,
    ended: bool,
}

impl futures_core::Stream for RecvStream<'_> {
    type Item = Result<Vec<u8>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // SAFETY: used only within this call, while `this.rx` is borrowed.
        let core = unsafe { this.rx.sh.core_detached() };
        let rx = &mut *this.rx;
        let target = recv_wait(core, rx);
        let r = std::task::ready!(this.park.poll(cx, target, |how| {
            rx.poll_recv(how, &mut Some(<[u8]>::to_vec))
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

impl futures_core::FusedStream for RecvStream<'_> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl Drop for RecvStream<'_> {
    fn drop(&mut self) {
        self.park
            .done(recv_target(self.rx.sh.core(), self.rx.strategy, SLICE));
    }
}

impl Sender {
    /// Whether a message can be sent now: `None` if the ring is full and
    /// the consumer may still read.
    fn poll_room(&mut self, how: Check) -> Option<Result<(), SendError>> {
        if how == Check::Spin && self.len() >= self.capacity() {
            return None;
        }
        let core = self.sh.core();
        // Relaxed: advisory, as in `send_with` (a close from before we
        // attached does not count).
        if self
            .stale
            .closed_since(core.cons_state.0.load(Ordering::Relaxed))
        {
            return Some(Err(SendError::Disconnected));
        }
        match self.cur.try_reserve(core, self.sh.layout.cap) {
            Ok(_) => Some(Ok(())),
            Err(Stuck::Corrupt(m)) => Some(Err(SendError::Corrupt(m))),
            Err(Stuck::Blocked) => {
                match self.alive.status(
                    true,
                    self.sh.seg.fd(),
                    &core.cons_state.0,
                    CONSUMER,
                    self.stale,
                ) {
                    PeerState::Closed | PeerState::Dead => Some(Err(SendError::Disconnected)),
                    PeerState::NotYet | PeerState::Alive => None,
                }
            }
        }
    }

    /// Sends `msg`, waiting asynchronously while the ring is full. Same
    /// results as [`send`](Self::send).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is written and published in the poll that
    /// returns `Ready(Ok)`, or not at all; a dropped future sent nothing.
    pub fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        SendFuture {
            tx: self,
            msg,
            park: Park::default(),
        }
    }

    /// A `futures_sink::Sink` of byte messages (`&[u8]`, `Vec<u8>`),
    /// borrowing the sender. `poll_ready` waits for a free slot;
    /// `start_send` then cannot find the ring full; flush and close are
    /// no-ops (a sent message is already visible).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: `poll_ready` only waits for room (a dropped wait sent
    /// nothing), and `start_send` is not async (`SinkExt::send` is cancel
    /// safe up to `start_send`: an item passed to it is sent).
    pub fn sink(&mut self) -> SendSink<'_> {
        SendSink {
            tx: self,
            park: Park::default(),
        }
    }
}

/// Future of [`Sender::send_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SendFuture<'a> {
    tx: &'a mut Sender,
    msg: &'a [u8],
    park: Park,
}

impl Future for SendFuture<'_> {
    type Output = Result<(), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // SAFETY: used only within this call, while `this.tx` is borrowed.
        let core = unsafe { this.tx.sh.core_detached() };
        let (tx, msg) = (&mut *this.tx, this.msg);
        let target = send_wait(core, tx);
        this.park.poll(cx, target, |how| {
            if how == Check::Spin && tx.len() >= tx.capacity() {
                return None;
            }
            match tx.try_send(msg) {
                Err(SendError::Full) => None,
                r => Some(r),
            }
        })
    }
}

impl Drop for SendFuture<'_> {
    fn drop(&mut self) {
        self.park
            .done(send_target(self.tx.sh.core(), self.tx.strategy, SLICE));
    }
}

/// A `Sink` of messages into a [`Sender`] ([`Sender::sink`]).
#[must_use = "sinks do nothing unless polled"]
#[derive(Debug)]
pub struct SendSink<'a> {
    tx: &'a mut Sender,
    park: Park,
}

impl SendSink<'_> {
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        // SAFETY: used only within this call, while `self.tx` is borrowed.
        let core = unsafe { self.tx.sh.core_detached() };
        let tx = &mut *self.tx;
        let target = send_wait(core, tx);
        self.park.poll(cx, target, |how| tx.poll_room(how))
    }
}

impl<B: AsRef<[u8]>> futures_sink::Sink<B> for SendSink<'_> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut().ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: B) -> Result<(), SendError> {
        // After `poll_ready` said ready this cannot be `Full`: only we fill
        // the ring. Without it, `Full` is the honest answer.
        self.get_mut().tx.try_send(item.as_ref())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for SendSink<'_> {
    fn drop(&mut self) {
        self.park
            .done(send_target(self.tx.sh.core(), self.tx.strategy, SLICE));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::channel::wait::{ARMED, UNARMED};

    /// Removes the ring's name, also when the test fails.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = crate::segment::remove(&self.0);
        }
    }

    /// A producer that never acknowledges the arming (its view of the
    /// word stays "unarmed", as in the race the acknowledgement covers)
    /// sends no wake-up: an awaiting receiver must still get the message
    /// after a short slice, not after a whole 20 ms liveness slice.
    #[test]
    fn an_unacknowledged_async_receiver_sleeps_in_short_slices() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut best = Duration::MAX;
        for trial in 0..5 {
            let name = format!("t-aio-arm-{}-{trial}", std::process::id());
            let _cleanup = Cleanup(name.clone());
            let mut rx = Receiver::create(&name, &RingOptions::new(4, 64)).unwrap();
            let mut tx = Sender::open(&name).unwrap();
            rx.set_wait_strategy(WaitStrategy::Sleep);
            // SAFETY: `rx` (and so the mapping) outlives every use below.
            let core = unsafe { rx.sh.core_detached() };
            let took = std::thread::scope(|s| {
                let producer = s.spawn(move || {
                    // Once the future below is parked (it armed at its
                    // first poll), make the producer blind to the arming.
                    std::thread::sleep(Duration::from_millis(1));
                    // Relaxed: a test. The pending future armed it.
                    assert_eq!(core.data_armed.0.load(Ordering::Relaxed), ARMED);
                    // Relaxed: a test of a lost wake-up, no data published.
                    core.data_armed.0.store(UNARMED, Ordering::Relaxed);
                    let t = Instant::now();
                    tx.send(b"m").unwrap();
                    // Kept alive: its drop (a close) would wake the receiver.
                    (t, tx)
                });
                let m = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), rx.recv_async())
                        .await
                        .expect("the message arrives within a slice")
                        .unwrap()
                });
                let got = Instant::now();
                assert_eq!(m, b"m");
                let (sent, _tx) = producer.join().unwrap();
                got.saturating_duration_since(sent)
            });
            best = best.min(took);
        }
        // Unacknowledged slices start at 100 µs and double (the message
        // comes after about 1 ms: within ~1 ms more); a 20 ms slice, what
        // an acknowledged waiter uses, would make each trial take ~19 ms.
        assert!(best < Duration::from_millis(8), "best of 5: {best:?}");
    }

    /// A future that finds its message (or room) at once never parks, so
    /// it leaves the direction unarmed: the peer keeps the fence-free path.
    #[test]
    fn a_future_that_does_not_park_does_not_arm() {
        let name = format!("t-aio-noarm-{}", std::process::id());
        let _cleanup = Cleanup(name.clone());
        let mut rx = Receiver::create(&name, &RingOptions::new(4, 64)).unwrap();
        let mut tx = Sender::open(&name).unwrap();
        futures::executor::block_on(async {
            for i in 0..8u8 {
                tx.send_async(&[i]).await.unwrap();
                assert_eq!(rx.recv_async().await.unwrap(), [i]);
            }
        });
        let core = rx.sh.core();
        // Relaxed: a test reading words nobody writes any more.
        assert_eq!(core.data_armed.0.load(Ordering::Relaxed), UNARMED);
        assert_eq!(core.space_armed.0.load(Ordering::Relaxed), UNARMED);
    }
}
