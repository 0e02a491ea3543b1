"""Segments: creation modes, attributes, deletion, listing, buffer
protocol, views after close."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import stat

import numpy as np
import pytest

import shmkit
from shmkit import _shmkit as core


def test_create_open_and_attributes(name):
    with shmkit.Segment.create(name, 10_000, mode=0o640) as a:
        assert a.name == name and a.size == 10_000 and len(a) == 10_000
        assert a.created and a.lifetime == "until-last-detach"
        assert stat.S_IMODE(os.stat(f"/dev/shm/shmkit.{name}").st_mode) == 0o640
        with shmkit.Segment.open(name) as b:
            assert not b.created and b.size == 10_000
            assert b.attached_pids == [os.getpid()]
        with pytest.raises(shmkit.AlreadyExists) as e:
            shmkit.Segment.create(name, 10)
        assert isinstance(e.value, FileExistsError) and name in str(e.value)
    # until-last-detach: gone with the last detach
    with pytest.raises(shmkit.NotFound) as e:
        shmkit.Segment.open(name)
    assert isinstance(e.value, FileNotFoundError)


def test_open_or_create_and_persistent_removal(name):
    a = shmkit.Segment.open_or_create(name, 4096, lifetime="persistent")
    b = shmkit.Segment.open_or_create(name, 4096)
    assert a.created and not b.created
    a.close()
    b.close()
    assert any(s["name"] == name and s["lifetime"] == "persistent" and s["size"] == 4096
               for s in shmkit.list_segments())
    shmkit.remove(name)
    assert all(s["name"] != name for s in shmkit.list_segments())
    with pytest.raises(shmkit.NotFound):
        shmkit.remove(name)


def test_remove_when_unused(name):
    seg = shmkit.Segment.create(name, 4096, lifetime="persistent")
    assert shmkit.remove_when_unused(name) is False  # still attached
    with pytest.raises(shmkit.MarkedForRemoval):
        shmkit.Segment.open(name)
    seg.close()
    assert not os.path.exists(f"/dev/shm/shmkit.{name}")


def test_bad_arguments(name):
    with pytest.raises(shmkit.InvalidName):
        shmkit.Segment.create("../etc", 10)
    with pytest.raises(ValueError):
        shmkit.Segment.create(name, 10, lifetime="forever")
    with pytest.raises(shmkit.InvalidArgument):
        shmkit.Segment.create(name, 0)
    with pytest.raises(TypeError):
        shmkit.Segment(name)


def test_memoryview_and_numpy_are_zero_copy(name):
    with shmkit.Segment.create(name, 1 << 20) as a, shmkit.Segment.open(name) as b:
        mv = memoryview(a)
        assert len(mv) == 1 << 20 and not mv.readonly and mv.format == "B"
        mv[:5] = b"hello"
        arr = np.frombuffer(b, dtype=np.uint32, count=4, offset=8)
        arr_w = np.frombuffer(a, dtype=np.uint32, count=4, offset=8)
        arr_w[:] = [1, 2, 3, 4]
        assert list(arr) == [1, 2, 3, 4]            # same memory, other handle
        assert bytes(memoryview(b)[:5]) == b"hello"
        # the array shares the segment's memory: no copy was made
        assert arr.__array_interface__["data"][0] != 0 and not arr.flags.owndata
        del mv, arr, arr_w
        gc.collect()


def test_read_only_open_refuses_writable_views(name):
    with shmkit.Segment.create(name, 4096) as a, shmkit.Segment.open(name, read_only=True) as r:
        memoryview(a)[0] = 7
        mv = memoryview(r)
        assert mv.readonly and mv[0] == 7
        arr = np.frombuffer(r, dtype=np.uint8)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        del mv, arr


def test_close_refuses_while_views_exist_then_views_raise(name):
    seg = shmkit.Segment.create(name, 4096)
    mv = memoryview(seg)
    arr = np.frombuffer(seg, dtype=np.uint8)
    with pytest.raises(BufferError):
        seg.close()
    assert not seg.closed
    mv.release()
    with pytest.raises(BufferError):
        seg.close()  # the array still exports
    del arr
    seg.close()
    assert seg.closed
    with pytest.raises(ValueError):
        memoryview(seg)  # no new view after close
    with pytest.raises(ValueError):
        mv[0]
    with pytest.raises(shmkit.Closed):
        seg.attached_pids
    seg.close()  # idempotent


def test_array_that_outlives_close_never_crashes(name):
    """numpy.ndarray(buffer=...) drops its buffer export at once and keeps
    only a reference: after close (and removal) it must still point at
    mapped memory, never segfault."""
    seg = shmkit.Segment.create(name, 1 << 16)
    arr = np.ndarray((1 << 16,), dtype=np.uint8, buffer=memoryview(seg))
    arr[:] = 42
    seg.close()  # allowed: no live export; the segment is deleted now
    assert not os.path.exists(f"/dev/shm/shmkit.{name}")
    assert int(arr.sum()) == 42 * (1 << 16)
    arr[:] = 1   # writes into memory nobody else sees: harmless
    del seg
    gc.collect()
    assert int(arr.sum()) == 1 << 16  # the array keeps the mapping alive


def _child_write(name: str) -> None:
    seg = shmkit.Segment.open(name)
    np.frombuffer(seg, dtype=np.int64)[:] = np.arange(seg.size // 8)
    del seg


def test_two_processes_spawn(name):
    with shmkit.Segment.create(name, 8 * 1000) as seg:
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=_child_write, args=(name,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        arr = np.frombuffer(seg, dtype=np.int64)
        assert (arr == np.arange(1000)).all()
        del arr


def test_cli_interop(name, cli):
    import subprocess
    subprocess.run([cli, "create", name, "--size", "8KiB"], check=True)
    try:
        with shmkit.Segment.open(name) as seg:
            assert seg.size == 8192
            memoryview(seg)[:3] = b"py!"
        out = subprocess.run([cli, "read", name, "--len", "3"], check=True,
                             capture_output=True).stdout
        assert out == b"py!"
    finally:
        shmkit.remove(name)
    with shmkit.Segment.create(name, 4096) as seg:
        memoryview(seg)[:2] = b"ok"
        out = subprocess.run([cli, "read", name, "--len", "2"], check=True,
                             capture_output=True).stdout
        assert out == b"ok"


def test_buffer_type_is_not_usable_unbound():
    b = core.Buffer()
    with pytest.raises(ValueError):
        memoryview(b)


def _open_or_create(name: str, q) -> None:
    seg = shmkit.Segment.open_or_create(name, 4096, lifetime="persistent")
    q.put(seg.created)
    seg.close()


def test_open_or_create_race_exactly_one_creator(name):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_open_or_create, args=(name, q)) for _ in range(4)]
    for p in ps:
        p.start()
    created = [q.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    shmkit.remove(name)
    assert created.count(True) == 1
