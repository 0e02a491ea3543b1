"""shmkit: shared memory between processes on one Linux machine.

Named segments with crash-safe lifetimes, robust process-shared locks, and
channels that hand numpy frames over without copying. A thin layer over the
Rust library: the same segments the ``shmkit`` CLI and Rust programs use.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence, Tuple

from . import _shmkit as _core
from ._errors import (
    AlreadyExists,
    Busy,
    Closed,
    Corrupt,
    Disconnected,
    Error,
    InvalidArgument,
    InvalidName,
    MarkedForRemoval,
    NoSpace,
    NotFound,
    OwnerDied,
    PermissionDenied,
    RoleTaken,
    SenderDied,
    Timeout,
    TooLarge,
    Unrecoverable,
    WrongKind,
)

Mutex = _core.Mutex
Semaphore = _core.Semaphore
Event = _core.Event
Sender = _core.Sender
Receiver = _core.Receiver
remove = _core.remove
remove_when_unused = _core.remove_when_unused
list_segments = _core.list_segments

__all__ = [
    "Segment", "SharedMemory", "Mutex", "Semaphore", "Event", "Sender", "Receiver",
    "Publisher", "Subscriber", "Loan", "Sample", "remove", "remove_when_unused",
    "list_segments", "Error", "NotFound", "AlreadyExists", "NoSpace", "PermissionDenied",
    "InvalidName", "InvalidArgument", "WrongKind", "Corrupt", "MarkedForRemoval", "Busy",
    "Closed", "Timeout", "Disconnected", "SenderDied", "TooLarge", "RoleTaken",
    "OwnerDied", "Unrecoverable",
]


_np: Any = None


def _numpy() -> Any:
    """numpy, imported on first use (it is optional)."""
    global _np
    if _np is None:
        import numpy
        _np = numpy
    return _np


class Segment(_core.Buffer):
    """A named shared memory segment; its data area is its buffer.

    ``memoryview(seg)`` and ``numpy.frombuffer(seg, dtype, count, offset)``
    are zero-copy views of the data area. ``close()`` detaches at once; it
    refuses (``BufferError``) while views made through the buffer protocol
    are alive, as ``mmap.close()`` does. Views can never dangle: the memory
    stays mapped while anything refers to this object.
    """

    _h: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        raise TypeError("use Segment.create(), Segment.open() or Segment.open_or_create()")

    @classmethod
    def _wrap(cls, handle: Any) -> "Segment":
        seg = cls.__new__(cls)
        seg._h = handle
        handle.bind(seg)
        return seg

    @classmethod
    def create(cls, name: str, size: int, mode: int = 0o600,
               lifetime: str = "until-last-detach") -> "Segment":
        """Creates a segment of ``size`` bytes (``AlreadyExists`` if taken).

        ``lifetime``: ``"until-last-detach"`` (deleted when the last process
        detaches or dies) or ``"persistent"`` (until ``remove``).
        """
        return cls._wrap(_core.segment_create(name, size, mode, lifetime))

    @classmethod
    def open(cls, name: str, read_only: bool = False) -> "Segment":
        """Attaches to an existing segment (``NotFound`` if none)."""
        return cls._wrap(_core.segment_open(name, read_only))

    @classmethod
    def open_or_create(cls, name: str, size: int, mode: int = 0o600,
                       lifetime: str = "until-last-detach") -> "Segment":
        """Attaches, creating the segment if it does not exist (race-free)."""
        return cls._wrap(_core.segment_open_or_create(name, size, mode, lifetime))

    @property
    def name(self) -> str:
        """The key."""
        return self._h.name

    @property
    def size(self) -> int:
        """Size of the data area in bytes."""
        return self._h.size

    @property
    def created(self) -> bool:
        """Whether this handle created the segment."""
        return self._h.created

    @property
    def lifetime(self) -> str:
        """``"persistent"`` or ``"until-last-detach"``."""
        return self._h.lifetime

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._h.closed

    @property
    def attached_pids(self) -> list:
        """Pids of the processes attached now."""
        return self._h.attached_pids()

    def __len__(self) -> int:
        return self._h.size

    def close(self) -> None:
        """Detaches (idempotent). ``BufferError`` while views exist."""
        if self._h.closed:
            return
        n = _core.buffer_exports(self)
        if n:
            raise BufferError(
                f"cannot close segment {self.name!r}: {n} exported view(s) "
                "(memoryview or numpy array) still exist; release them first")
        _core.buffer_close(self)
        self._h.close()

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={self.size}"
        return f"<shmkit.Segment {self.name!r} {state}>"


class SharedMemory:
    """A drop-in for ``multiprocessing.shared_memory.SharedMemory``.

    Differences on purpose: no resource tracker (nothing unlinks a segment
    that another process still uses; ``unlink()`` is explicit), the name is
    a shmkit key (``/dev/shm/shmkit.NAME``, listed by ``shmkit ls``), a
    zero or negative size is an error, sizes are exact, and a full
    ``/dev/shm`` is ``NoSpace`` at creation (where the segment layer
    detects it) instead of SIGBUS later. A created segment is persistent,
    as in the standard library; ``until_last_detach=True`` deletes it when
    the last process detaches or dies instead. ``track`` (Python 3.13's
    parameter) is accepted and has no effect: there is no tracker.
    """

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0,
                 *, track: bool = True, until_last_detach: bool = False,
                 mode: int = 0o600) -> None:
        lifetime = "until-last-detach" if until_last_detach else "persistent"
        if create:
            if size <= 0:
                raise ValueError("'size' must be a positive number different from zero")
            if name is None:
                while True:
                    candidate = "psm_" + os.urandom(8).hex()
                    try:
                        self._seg = Segment.create(candidate, size, mode, lifetime)
                        break
                    except AlreadyExists:
                        continue
            else:
                self._seg = Segment.create(name, size, mode, lifetime)
        else:
            if name is None:
                raise ValueError("'name' can only be None if create=True")
            self._seg = Segment.open(name)
        self._buf: Optional[memoryview] = memoryview(self._seg)

    @property
    def buf(self) -> Optional[memoryview]:
        """A memoryview of the contents (``None`` after ``close()``, as in
        the standard library)."""
        return self._buf

    @property
    def name(self) -> str:
        """Unique name that identifies the shared memory block."""
        return self._seg.name

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._seg.size

    def close(self) -> None:
        """Closes access from this instance (``BufferError`` while arrays or
        views made from ``buf`` exist, as in the standard library)."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        self._seg.close()

    def unlink(self) -> None:
        """Deletes the segment now (attached processes keep their mapping)."""
        try:
            remove(self.name)
        except NotFound:
            pass

    def __reduce__(self) -> Tuple[Any, ...]:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Loan:
    """A loaned slot of a ``Publisher``: ``with`` gives a writable view
    (``memoryview``, or a numpy array for ``loan_array``); leaving the block
    normally publishes it, leaving by an exception discards it.

    After the block the view is unusable for writing: the memoryview is
    released (any use raises ``ValueError``), the array is made read-only
    (and cannot be made writable again). A slice or array *derived* from
    the memoryview that is still alive at the end of the block makes
    publishing fail with ``BufferError`` (nothing is published; the slot
    goes back once those views are gone), since it could write into a
    published frame.
    """

    def __init__(self, pub: "Publisher", buf: Any, nbytes: int,
                 shape: Optional[Tuple[int, ...]] = None, dtype: Any = None) -> None:
        self._pub = pub
        self._buf = buf
        self._nbytes = nbytes
        self._shape = shape
        self._dtype = dtype
        self._view: Any = None
        self._done = False

    def __enter__(self) -> Any:
        if self._done:
            raise ValueError("this loan was already published or discarded")
        if self._shape is None:
            self._view = memoryview(self._buf)
        else:
            # ndarray(buffer=...) releases its buffer export at once and
            # keeps our object as its base: the object's lifetime keeps the
            # memory mapped, and freezing it stops `writeable = True`.
            self._view = _numpy().ndarray(self._shape, self._dtype, self._buf)
        return self._view

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()

    def _end_view(self) -> None:
        v, self._view = self._view, None
        if isinstance(v, memoryview):
            try:
                v.release()
            except BufferError:
                pass  # counted below
        elif v is not None:
            v.flags.writeable = False

    def publish(self, nbytes: Optional[int] = None) -> None:
        """Publishes the slot (its first ``nbytes`` bytes, default all)."""
        if self._done:
            raise ValueError("this loan was already published or discarded")
        self._end_view()
        live = _core.buffer_exports(self._buf)
        if live:
            self._done = True
            self._pub._h.discard(self._buf)
            raise BufferError(
                f"{live} view(s) derived from the loan are still alive at the end of the "
                "block; nothing was published (the slot returns when they are gone)")
        self._done = True
        self._pub._h.publish(self._buf, nbytes)

    def discard(self) -> None:
        """Gives the slot back unpublished."""
        if self._done:
            return
        self._end_view()
        self._done = True
        self._pub._h.discard(self._buf)

    def __len__(self) -> int:
        return self._nbytes


class Sample:
    """A received message: ``with`` gives a read-only ``memoryview`` of the
    publisher's slot (no copy), released at the end of the block.

    Arrays made from it with ``numpy.frombuffer`` keep the slot (and so the
    bytes they show) until they are garbage; the memoryview itself raises
    ``ValueError`` once released.
    """

    def __init__(self, buf: Any, missed: int) -> None:
        self._buf = buf
        self.missed = missed
        """Messages this subscriber missed just before this one (drop-oldest)."""
        self._view: Optional[memoryview] = None
        self._released = False

    def __enter__(self) -> memoryview:
        if self._released:
            raise ValueError("this sample was released")
        self._view = memoryview(self._buf)
        return self._view

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def array(self, dtype: Any = "uint8", shape: Optional[Sequence[int]] = None) -> Any:
        """A read-only numpy array over the sample (it keeps the slot)."""
        a = _numpy().frombuffer(self._buf, dtype=dtype)
        return a if shape is None else a.reshape(shape)

    def release(self) -> None:
        """Gives the slot back once no view is left (idempotent)."""
        if self._released:
            return
        self._released = True
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass  # a derived export keeps the slot; counted natively
            self._view = None
        _core.release_sample(self._buf)

    def __len__(self) -> int:
        return len(memoryview(self._buf)) if not self._released else 0


class Publisher:
    """The publishing end of a zero-copy pub/sub channel."""

    def __init__(self, name: str, _handle: Any = None) -> None:
        self._h = _handle if _handle is not None else _core.Publisher(name, "open")

    @classmethod
    def create(cls, name: str, slots: int = 4, slot_size: int = 1 << 20,
               max_subscribers: int = 8, policy: str = "block", mode: int = 0o600,
               lifetime: str = "until-last-detach") -> "Publisher":
        """Creates a channel of ``slots`` slots of ``slot_size`` bytes and
        becomes its publisher. ``policy``: ``"block"`` (back-pressure) or
        ``"drop-oldest"``."""
        return cls(name, _core.Publisher(name, "create", slots, slot_size, max_subscribers,
                                         policy, mode, lifetime))

    @classmethod
    def open(cls, name: str) -> "Publisher":
        """Becomes the publisher of an existing channel."""
        return cls(name)

    @property
    def name(self) -> str:
        return self._h.name

    @property
    def slot_size(self) -> int:
        return self._h.slot_size

    @property
    def slots(self) -> int:
        return self._h.slots

    @property
    def published(self) -> int:
        return self._h.published

    @property
    def subscribers(self) -> int:
        """Live subscribers now."""
        return self._h.subscribers

    def loan(self, nbytes: int, timeout: Optional[float] = None) -> Loan:
        """Borrows a slot for ``nbytes`` bytes (waiting at most ``timeout``
        seconds): ``with pub.loan(n) as buf: buf[:] = ...``."""
        return Loan(self, self._h.loan(nbytes, timeout), nbytes)

    def loan_array(self, shape: Any, dtype: Any = "uint8",
                   timeout: Optional[float] = None) -> Loan:
        """Borrows a slot as a numpy array: ``with pub.loan_array((h, w, 3),
        numpy.uint8) as frame: frame[...] = ...``."""
        np = _numpy()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = dtype if type(dtype) is np.dtype else np.dtype(dtype)
        nbytes = dt.itemsize
        for d in shape:
            if d < 0:
                raise ValueError(f"negative dimension in shape {shape}")
            nbytes *= d
        return Loan(self, self._h.loan(nbytes, timeout), nbytes, shape, dt)

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Copies ``data`` (bytes-like) into a slot and publishes it."""
        self._h.send(data, timeout)

    def close(self) -> None:
        """Stops publishing: subscribers get what was published, then
        ``Disconnected``."""
        self._h.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Subscriber:
    """A subscribing end of a zero-copy pub/sub channel."""

    def __init__(self, name: str) -> None:
        self._h = _core.Subscriber(name)

    @property
    def name(self) -> str:
        return self._h.name

    def __len__(self) -> int:
        return len(self._h)

    def recv(self, timeout: Optional[float] = None) -> Sample:
        """The next message, in place: ``with sub.recv() as view: ...``.
        Raises ``Timeout``, ``Disconnected`` or ``SenderDied``."""
        buf, missed = self._h.recv(timeout)
        return Sample(buf, missed)

    def recv_bytes(self, timeout: Optional[float] = None) -> bytes:
        """The next message as a private copy."""
        return self._h.recv_bytes(timeout)

    def __iter__(self) -> Iterator[Sample]:
        """Samples until the publisher closes."""
        while True:
            try:
                yield self.recv()
            except SenderDied:
                raise
            except Disconnected:
                return

    def close(self) -> None:
        """Leaves the channel (samples still held keep it until they go)."""
        self._h.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
