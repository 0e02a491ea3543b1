"""The package itself: stubs cover the native module, the exception
hierarchy, py.typed."""

from __future__ import annotations

import ast

import pytest
from pathlib import Path

import shmkit
from shmkit import _shmkit as core


def test_stub_declares_every_native_name():
    stub = Path(shmkit.__file__).with_name("_shmkit.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public = {n for n in dir(core) if not n.startswith("_")}
    assert public - declared == set()


def test_py_typed_marker_is_installed():
    assert Path(shmkit.__file__).with_name("py.typed").exists()


def test_exception_hierarchy():
    for cls in (shmkit.NotFound, shmkit.AlreadyExists, shmkit.NoSpace, shmkit.Timeout,
                shmkit.Disconnected, shmkit.SenderDied, shmkit.OwnerDied, shmkit.Unrecoverable,
                shmkit.Corrupt, shmkit.WrongKind, shmkit.InvalidName, shmkit.TooLarge):
        assert issubclass(cls, shmkit.Error)
    assert issubclass(shmkit.NotFound, FileNotFoundError)
    assert issubclass(shmkit.AlreadyExists, FileExistsError)
    assert issubclass(shmkit.Timeout, TimeoutError)
    assert issubclass(shmkit.SenderDied, shmkit.Disconnected)
    assert issubclass(shmkit.NoSpace, OSError)


def test_rust_messages_are_kept(name):
    try:
        shmkit.Segment.open(name)
    except shmkit.NotFound as e:
        assert str(e) == f'open "{name}": no such segment'
    else:
        raise AssertionError("no error")


def test_no_space_is_raised_when_dev_shm_is_full(name):
    """A segment larger than /dev/shm's free space is NoSpace at creation,
    not a SIGBUS when it is touched (cpython #114389)."""
    import os
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    try:
        seg = shmkit.Segment.create(name, free + (1 << 30))
    except shmkit.NoSpace as e:
        assert "does not fit" in str(e) and "/dev/shm has" in str(e), str(e)
        return
    # The library may reserve lazily: then this platform does not detect
    # it at creation. Fail loudly rather than pass silently.
    seg.close()
    raise AssertionError("creating a segment larger than /dev/shm did not raise NoSpace")
