"""The exceptions of shmkit. Messages are the Rust library's."""

from __future__ import annotations


class Error(Exception):
    """Base class of every shmkit error."""


class NotFound(Error, FileNotFoundError):
    """No segment has this name."""


class AlreadyExists(Error, FileExistsError):
    """A segment with this name exists already."""


class NoSpace(Error, OSError):
    """/dev/shm (or the memory limit) has no room for the segment."""


class PermissionDenied(Error, PermissionError):
    """The mode bits or the owner forbid this access."""


class InvalidName(Error, ValueError):
    """Not a valid key: 1-200 bytes of letters, digits, '.', '_', '-'."""


class InvalidArgument(Error, ValueError):
    """A size, mode or other argument is out of range."""


class WrongKind(Error):
    """The segment holds another kind of object (or another type)."""


class Corrupt(Error):
    """A header or shared state failed validation."""


class MarkedForRemoval(Error):
    """The segment is marked for removal and takes no new attachments."""


class Busy(Error):
    """Another process kept the segment locked for deletion too long."""


class Closed(Error, ValueError):
    """This handle was closed."""


class Timeout(Error, TimeoutError):
    """The wait's timeout passed (or, with timeout=0, it would block)."""


class Disconnected(Error):
    """The other side of the channel closed (every message was delivered)."""


class SenderDied(Disconnected):
    """The sender died; every whole message it sent was delivered."""


class TooLarge(Error, ValueError):
    """A message is longer than the channel's maximum or the buffer."""


class RoleTaken(Error):
    """A live process already plays this role (or every subscriber slot is taken)."""


class OwnerDied(Error):
    """The previous holder of the mutex died holding it.

    The lock is now held by the calling thread: ``self.mutex`` is the
    mutex. Repair the protected data, call ``mutex.mark_consistent()``, then
    ``mutex.release()``. Releasing without marking makes the mutex
    unrecoverable for everyone.
    """

    mutex: object = None


class Unrecoverable(Error):
    """A holder got OwnerDied and released without marking consistent."""
