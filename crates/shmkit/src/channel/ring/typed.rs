//! Typed ends over the byte sender and receiver.

use super::*;

/// Bounds for typed ring messages: plain old data, valid for any bytes.
pub trait Pod: FromBytes + IntoBytes + Immutable {}
impl<T: FromBytes + IntoBytes + Immutable> Pod for T {}

/// The sending end of a ring of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedSender<T: Pod> {
    inner: Sender,
    _t: PhantomData<fn(T)>,
}

impl<T: Pod> TypedSender<T> {
    /// Creates a ring of `capacity` values of `T` and becomes its producer.
    pub fn create(name: &str, options: &RingOptions) -> Result<Self, OpenError> {
        let seg = options.create_typed::<T>(name)?;
        Self::attach(Shared::from_segment(seg, Fingerprint::of::<T>())?)
    }

    /// Opens the ring of `T` named `name` as its producer; a ring of
    /// another type fails with `TypeMismatch`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::attach(Shared::open(name, Fingerprint::of::<T>())?)
    }

    fn attach(sh: Shared) -> Result<Self, OpenError> {
        Ok(TypedSender {
            inner: Sender::attach(sh)?,
            _t: PhantomData,
        })
    }

    /// The byte-level sender (strategy, len, capacity, peer...).
    pub fn as_raw(&mut self) -> &mut Sender {
        &mut self.inner
    }

    /// Sends `value`, waiting while full.
    pub fn send(&mut self, value: &T) -> Result<(), SendError> {
        self.inner.send_wait(value.as_bytes(), Wait::Forever)
    }

    /// Sends `value` if there is room now.
    pub fn try_send(&mut self, value: &T) -> Result<(), SendError> {
        self.inner.send_wait(value.as_bytes(), Wait::No)
    }

    /// Sends `value`, waiting at most `timeout`.
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<(), SendError> {
        self.inner
            .send_wait(value.as_bytes(), Wait::timeout(timeout))
    }
}

/// The receiving end of a ring of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedReceiver<T: Pod> {
    inner: Receiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> TypedReceiver<T> {
    /// Creates a ring of `T` and becomes its consumer.
    pub fn create(name: &str, options: &RingOptions) -> Result<Self, OpenError> {
        let seg = options.create_typed::<T>(name)?;
        Self::attach(Shared::from_segment(seg, Fingerprint::of::<T>())?)
    }

    /// Opens the ring of `T` named `name` as its consumer.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::attach(Shared::open(name, Fingerprint::of::<T>())?)
    }

    fn attach(sh: Shared) -> Result<Self, OpenError> {
        Ok(TypedReceiver {
            inner: Receiver::attach(sh)?,
            _t: PhantomData,
        })
    }

    /// The byte-level receiver.
    pub fn as_raw(&mut self) -> &mut Receiver {
        &mut self.inner
    }

    fn decode(bytes: &[u8]) -> Result<T, RecvError> {
        T::read_from_bytes(bytes).map_err(|_| {
            RecvError::Corrupt(format!(
                "message of {} bytes is not a {}",
                bytes.len(),
                std::any::type_name::<T>()
            ))
        })
    }

    /// Receives a value, waiting for one.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.inner.recv_with(Wait::Forever, Self::decode)?
    }

    /// Receives a value if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, RecvError> {
        self.inner.recv_with(Wait::No, Self::decode)?
    }

    /// Receives a value, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvError> {
        self.inner.recv_with(Wait::timeout(timeout), Self::decode)?
    }
}
