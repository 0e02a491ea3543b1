"""shmkit.SharedMemory as a drop-in for multiprocessing.shared_memory."""

from __future__ import annotations

import doctest
import multiprocessing as mp
import os

import numpy as np
import pytest

import shmkit

# The standard library's documented example (Python docs,
# multiprocessing.shared_memory), unchanged except for the import line.
STDLIB_EXAMPLE = """
>>> import shmkit as shared_memory
>>> shm_a = shared_memory.SharedMemory(create=True, size=10)
>>> type(shm_a.buf)
<class 'memoryview'>
>>> buffer = shm_a.buf
>>> len(buffer)
10
>>> buffer[:4] = bytearray([22, 33, 44, 55])  # Modify multiple at once
>>> buffer[4] = 100                           # Modify single byte at a time
>>> # Attach to an existing shared memory block
>>> shm_b = shared_memory.SharedMemory(shm_a.name)
>>> import array
>>> array.array('b', shm_b.buf[:5])  # Copy the data into a new array.array
array('b', [22, 33, 44, 55, 100])
>>> shm_b.buf[:5] = b'howdy'  # Modify via shm_b using bytes
>>> bytes(shm_a.buf[:5])      # Access via shm_a
b'howdy'
>>> shm_b.close()   # Close each SharedMemory instance
>>> shm_a.close()
>>> shm_a.unlink()  # Call unlink only once to release the shared memory
"""

# The documented numpy example (both "shells" in one process), unchanged
# except for the imports; the generated name is matched with an ellipsis.
STDLIB_NUMPY_EXAMPLE = """
>>> # In the first Python interactive shell
>>> import numpy as np
>>> a = np.array([1, 1, 2, 3, 5, 8])  # Start with an existing NumPy array
>>> import shmkit as shared_memory
>>> shm = shared_memory.SharedMemory(create=True, size=a.nbytes)
>>> # Now create a NumPy array backed by shared memory
>>> b = np.ndarray(a.shape, dtype=a.dtype, buffer=shm.buf)
>>> b[:] = a[:]  # Copy the original data into shared memory
>>> b
array([1, 1, 2, 3, 5, 8])
>>> type(b)
<class 'numpy.ndarray'>
>>> type(a)
<class 'numpy.ndarray'>
>>> shm.name  # We did not specify a name so one was chosen for us
'psm_...'
>>> name = shm.name
>>> # In either the same shell or a new Python shell on the same machine
>>> import numpy as np
>>> import shmkit as shared_memory
>>> # Attach to the existing shared memory block
>>> existing_shm = shared_memory.SharedMemory(name=name)
>>> # Note that a.shape is (6,) and a.dtype is np.int64 in this example
>>> c = np.ndarray((6,), dtype=np.int64, buffer=existing_shm.buf)
>>> c
array([1, 1, 2, 3, 5, 8])
>>> c[-1] = 888
>>> c
array([  1,   1,   2,   3,   5, 888])
>>> # Back in the first Python interactive shell, b reflects this change
>>> b
array([  1,   1,   2,   3,   5, 888])
>>> # Clean up from within the second Python shell
>>> del c  # Unnecessary; merely emphasizing the array is no longer used
>>> existing_shm.close()
>>> # Clean up from within the first Python shell
>>> del b  # Unnecessary; merely emphasizing the array is no longer used
>>> shm.close()
>>> shm.unlink()  # Free and release the shared memory block at the very end
"""


def _run_doctest(text: str) -> dict:
    parser = doctest.DocTestParser()
    globs: dict = {}
    test = parser.get_doctest(text, globs, "stdlib_example", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, clear_globs=False)
    res = runner.summarize(verbose=False)
    assert res.failed == 0 and res.attempted > 10
    return test.globs


def test_stdlib_documented_example_runs_unchanged():
    g = _run_doctest(STDLIB_EXAMPLE)
    # nothing left behind: the segment the example made is gone
    assert not os.path.exists(f"/dev/shm/shmkit.{g['shm_a'].name}")


def test_stdlib_documented_numpy_example_runs_unchanged():
    assert np.dtype(np.int64) == np.array([1]).dtype  # the example assumes it
    g = _run_doctest(STDLIB_NUMPY_EXAMPLE)
    assert g["name"].startswith("psm_")
    assert not os.path.exists(f"/dev/shm/shmkit.{g['name']}")


def test_errors_match_the_stdlib_types(name):
    with pytest.raises(FileNotFoundError):
        shmkit.SharedMemory(name)
    with pytest.raises(ValueError):
        shmkit.SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        shmkit.SharedMemory()
    shm = shmkit.SharedMemory(name, create=True, size=100)
    try:
        with pytest.raises(FileExistsError):
            shmkit.SharedMemory(name, create=True, size=100)
        assert shm.size == 100 and len(shm.buf) == 100
        buf = shm.buf
        arr = np.frombuffer(buf, dtype=np.uint8)
        with pytest.raises(BufferError):  # like the stdlib: an export is alive
            shm.close()
        del arr
        shm.close()
        assert shm.buf is None          # as the standard library does
        with pytest.raises(ValueError):
            buf[0]                      # the old view is released
    finally:
        shm.unlink()
    shm.unlink()  # a second unlink is harmless


def _attach_and_exit(name: str) -> None:
    shm = shmkit.SharedMemory(name)
    shm.buf[0] = 99
    shm.close()
    # exit without unlink: the stdlib's resource tracker would unlink here


def test_no_resource_tracker_unlinks_a_segment_in_use(name):
    """cpython gh-82300: a process that attaches and exits must not delete
    the segment its creator still uses."""
    shm = shmkit.SharedMemory(name, create=True, size=4096)
    try:
        ctx = mp.get_context("spawn")
        for _ in range(2):
            p = ctx.Process(target=_attach_and_exit, args=(name,))
            p.start()
            p.join(60)
            assert p.exitcode == 0
        assert os.path.exists(f"/dev/shm/shmkit.{name}")
        again = shmkit.SharedMemory(name)
        assert again.buf[0] == 99
        again.close()
    finally:
        shm.close()
        shm.unlink()


def test_until_last_detach_goes_with_its_last_user(name):
    shm = shmkit.SharedMemory(name, create=True, size=64, until_last_detach=True)
    other = shmkit.SharedMemory(name)
    shm.close()
    assert os.path.exists(f"/dev/shm/shmkit.{name}")
    other.close()
    assert not os.path.exists(f"/dev/shm/shmkit.{name}")


def test_track_parameter_is_accepted(name):
    shm = shmkit.SharedMemory(name, create=True, size=8, track=False)
    shm.close()
    shm.unlink()


def test_pickles_by_name(name):
    import pickle
    shm = shmkit.SharedMemory(name, create=True, size=16)
    try:
        shm.buf[:2] = b"hi"
        copy = pickle.loads(pickle.dumps(shm))
        assert bytes(copy.buf[:2]) == b"hi" and copy.name == name
        copy.close()
    finally:
        shm.close()
        shm.unlink()
