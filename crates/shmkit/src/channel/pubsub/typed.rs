//! Typed views over the byte publisher and subscriber.

use super::*;

/// Bounds for typed pub/sub messages.
pub trait PodRef: FromBytes + IntoBytes + Immutable + KnownLayout {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> PodRef for T {}

/// A publisher of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedPublisher<T: PodRef> {
    inner: Publisher,
    _t: PhantomData<fn(T)>,
}

impl<T: PodRef> TypedPublisher<T> {
    /// Creates a channel of `T` (from [`PubSubOptions::typed`]) and
    /// becomes its publisher.
    pub fn create(name: &str, options: &PubSubOptions) -> Result<Self, OpenError> {
        if options.fingerprint != Fingerprint::of::<T>() {
            return Err(OpenError::InvalidConfig {
                name: name.to_owned(),
                reason: format!(
                    "options are not for {} (use PubSubOptions::typed)",
                    std::any::type_name::<T>()
                ),
            });
        }
        let sh =
            Shared::from_segment(options.create(name)?, Fingerprint::of::<T>())?.typed::<T>()?;
        Ok(TypedPublisher {
            inner: Publisher::attach(sh)?,
            _t: PhantomData,
        })
    }

    /// Opens the channel of `T` named `name` as its publisher.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(TypedPublisher {
            inner: Publisher::attach(Shared::open(name, Fingerprint::of::<T>())?.typed::<T>()?)?,
            _t: PhantomData,
        })
    }

    /// The byte-level publisher.
    pub fn as_raw(&mut self) -> &mut Publisher {
        &mut self.inner
    }

    /// Borrows a slot as a `&mut T` (its previous contents, any bytes
    /// being a valid `T`), waiting for one.
    pub fn loan(&mut self) -> Result<TypedLoan<'_, T>, SendError> {
        let loan = self.inner.loan(std::mem::size_of::<T>())?;
        Ok(TypedLoan {
            loan,
            _t: PhantomData,
        })
    }
}

/// A loaned slot viewed as `T`.
#[derive(Debug)]
pub struct TypedLoan<'a, T: PodRef> {
    loan: Loan<'a>,
    _t: PhantomData<&'a mut T>,
}

impl<T: PodRef> TypedLoan<'_, T> {
    /// Publishes the value.
    pub fn publish(self) {
        self.loan.publish()
    }
}

impl<T: PodRef> Deref for TypedLoan<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // The slot is aligned to align_of::<T>() and sized for T (checked
        // at open by `Shared::typed`), and the loan is size_of::<T>().
        T::ref_from_bytes(&self.loan).expect("typed slot fits T")
    }
}

impl<T: PodRef> DerefMut for TypedLoan<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        T::mut_from_bytes(&mut self.loan).expect("typed slot fits T")
    }
}

/// A subscriber of `T` values (fingerprint-checked).
#[derive(Debug)]
pub struct TypedSubscriber<T: PodRef> {
    inner: Subscriber,
    _t: PhantomData<fn() -> T>,
}

impl<T: PodRef> TypedSubscriber<T> {
    /// Joins the channel of `T` named `name`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(TypedSubscriber {
            inner: Subscriber::attach(Shared::open(name, Fingerprint::of::<T>())?.typed::<T>()?)?,
            _t: PhantomData,
        })
    }

    /// The byte-level subscriber.
    pub fn as_raw(&self) -> &Subscriber {
        &self.inner
    }

    /// Receives the next value in place, under a wait policy.
    pub fn recv_wait(&self, wait: Wait) -> Result<TypedSample<'_, T>, RecvError> {
        let s = self.inner.recv_wait(wait)?;
        if T::ref_from_bytes(&s).is_err() {
            return Err(RecvError::Corrupt(format!(
                "message of {} bytes is not a {}",
                s.len(),
                std::any::type_name::<T>()
            )));
        }
        Ok(TypedSample {
            sample: s,
            _t: PhantomData,
        })
    }

    /// Receives the next value in place, waiting for one.
    pub fn recv(&self) -> Result<TypedSample<'_, T>, RecvError> {
        self.recv_wait(Wait::Forever)
    }

    /// Receives the next value if one is waiting.
    pub fn try_recv(&self) -> Result<TypedSample<'_, T>, RecvError> {
        self.recv_wait(Wait::No)
    }
}

/// A received `T`, in place.
#[derive(Debug)]
pub struct TypedSample<'a, T: PodRef> {
    sample: Sample<'a>,
    _t: PhantomData<&'a T>,
}

impl<T: PodRef> TypedSample<'_, T> {
    /// Messages missed just before this one.
    pub fn missed(&self) -> u64 {
        self.sample.missed()
    }
}

impl<T: PodRef> Deref for TypedSample<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Checked in `recv_wait`; the sample's bytes do not move.
        T::ref_from_bytes(&self.sample).expect("checked at receive")
    }
}
