"""Pub/sub: zero-copy loans and samples, views after release, numpy,
two processes, a producer killed mid-loan, the CLI."""

from __future__ import annotations

import gc
import multiprocessing as mp
import subprocess
import time

import numpy as np
import pytest

import shmkit
from shmkit import _shmkit as core
from conftest import python_child


def test_loan_publish_recv_zero_copy(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=1 << 16) as pub, \
            shmkit.Subscriber(name) as sub:
        assert pub.subscribers == 1 and pub.slots == 2 and pub.slot_size == 1 << 16
        with pub.loan(5) as buf:
            assert isinstance(buf, memoryview) and not buf.readonly and len(buf) == 5
            buf[:] = b"hello"
        assert pub.published == 1
        with sub.recv(timeout=5) as view:
            assert view.readonly and bytes(view) == b"hello"
            with pytest.raises(TypeError):
                view[0] = 1
        # zero-copy: the subscriber's view is the publisher's slot memory
        with pub.loan(8) as buf:
            buf[:] = b"12345678"
        s = sub.recv(timeout=5)
        a = s.array(np.uint8)
        assert bytes(a) == b"12345678" and not a.flags.owndata and not a.flags.writeable
        s.release()
        assert core.buffer_holds(s._buf)  # the array still holds the slot
        del a
        gc.collect()
        assert not core.buffer_holds(s._buf)


def test_views_after_release_raise_never_crash(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=4096) as pub, \
            shmkit.Subscriber(name) as sub:
        with pub.loan(16) as buf:
            buf[:] = bytes(16)
        with pytest.raises(ValueError):
            buf[0] = 1          # the loan's view is released at block exit
        with pytest.raises(ValueError):
            bytes(buf)
        with pytest.raises(ValueError):
            memoryview(buf)
        with sub.recv(timeout=5) as view:
            pass
        with pytest.raises(ValueError):
            view[0]
        with pytest.raises(ValueError):
            np.frombuffer(view, dtype=np.uint8)
        pub.send(b"x")
        s = sub.recv(timeout=5)
        with s as v:
            assert bytes(v) == b"x"
        with pytest.raises(ValueError):
            s.__enter__()       # a released sample cannot be re-entered
        with pytest.raises(ValueError):
            memoryview(s._buf)  # nor exported again


def test_loan_array_is_frozen_after_publish(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=1 << 20) as pub, \
            shmkit.Subscriber(name) as sub:
        with pub.loan_array((240, 320, 3), np.uint8) as frame:
            assert frame.shape == (240, 320, 3) and frame.flags.writeable
            frame[:] = 9
        assert not frame.flags.writeable
        with pytest.raises(ValueError):
            frame[0, 0, 0] = 1          # would write a published frame
        with pytest.raises(ValueError):
            frame.flags.writeable = True  # and cannot be made writable again
        with sub.recv(timeout=5) as view:
            got = np.frombuffer(view, dtype=np.uint8).reshape(240, 320, 3)
            assert int(got.sum()) == 9 * 240 * 320 * 3
            del got


def test_derived_view_alive_at_block_end_stops_publication(name):
    with shmkit.Publisher.create(name, slots=1, slot_size=64) as pub, \
            shmkit.Subscriber(name) as sub:
        with pytest.raises(BufferError):
            with pub.loan(8) as buf:
                buf[:] = b"abcdefgh"
                keep = np.frombuffer(buf, dtype=np.uint8)
        assert pub.published == 0 and len(sub) == 0
        with pytest.raises(shmkit.Error):
            pub.loan(8, timeout=0)       # the slot stays lent while `keep` lives
        del keep
        gc.collect()
        with pub.loan(8, timeout=1) as buf:  # back in the pool, unpublished
            buf[:] = b"ok------"
        assert sub.recv_bytes(timeout=5) == b"ok------"


def test_exception_in_block_discards(name):
    with shmkit.Publisher.create(name, slots=1, slot_size=64) as pub, \
            shmkit.Subscriber(name) as sub:
        with pytest.raises(RuntimeError):
            with pub.loan(4) as buf:
                buf[:] = b"nope"
                raise RuntimeError
        assert pub.published == 0
        with pytest.raises(shmkit.Timeout):
            sub.recv(timeout=0.05)
        pub.send(b"yes")
        assert sub.recv_bytes(timeout=5) == b"yes"


def test_timeouts_too_large_and_disconnect(name):
    pub = shmkit.Publisher.create(name, slots=1, slot_size=32)
    sub = shmkit.Subscriber(name)
    with pytest.raises(shmkit.TooLarge):
        pub.loan(33)
    pub.send(b"a")
    t0 = time.monotonic()
    with pytest.raises(shmkit.Timeout):
        pub.loan(1, timeout=0.2)          # block policy: the slot is pending
    assert time.monotonic() - t0 >= 0.19
    assert sub.recv_bytes(timeout=1) == b"a"
    pub.send(b"b")
    pub.close()
    assert [bytes(s._buf) for s in sub] == [b"b"]  # then Disconnected ends it
    sub.close()


def test_drop_oldest_reports_missed(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=8, policy="drop-oldest") as pub, \
            shmkit.Subscriber(name) as sub:
        for i in range(5):
            pub.send(bytes([i]))
        s = sub.recv(timeout=1)
        assert s.missed > 0
        s.release()


def test_subscriber_close_with_held_sample_keeps_memory(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=64) as pub:
        sub = shmkit.Subscriber(name)
        pub.send(b"keep me")
        s = sub.recv(timeout=1)
        a = s.array()
        sub.close()   # the held sample keeps the subscription until it goes
        assert bytes(a) == b"keep me"
        del a
        s.release()
        del s
        gc.collect()
        assert pub.subscribers == 0


def _consume(name: str, n: int, q) -> None:
    total = 0
    with shmkit.Subscriber(name) as sub:
        q.put("joined")
        for _ in range(n):
            with sub.recv(timeout=30) as view:
                a = np.frombuffer(view, dtype=np.uint32)
                total += int(a[0]) + int(a[-1])
                del a
    q.put(total)


def test_two_processes_spawn(name):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with shmkit.Publisher.create(name, slots=3, slot_size=4 * 250_000) as pub:
        p = ctx.Process(target=_consume, args=(name, 50, q))
        p.start()
        assert q.get(timeout=60) == "joined"
        for i in range(50):
            with pub.loan_array((250_000,), np.uint32) as a:
                a[0] = i
                a[-1] = 2 * i
        assert q.get(timeout=60) == sum(3 * i for i in range(50))
        p.join(30)
        assert p.exitcode == 0


PRODUCER = """
import sys, time, shmkit
pub = shmkit.Publisher.create(sys.argv[1], slots=3, slot_size=4096)
print("ready", flush=True)
sys.stdin.readline()
for i in range(2):
    pub.send(b"frame %d" % i)
loan = pub.loan(4096)
with loan as buf:
    buf[:5] = b"half-"
    print("loaned", flush=True)
    time.sleep(60)
"""


def test_producer_killed_mid_loan(name):
    child = python_child(PRODUCER, name)
    try:
        assert child.stdout.readline() == b"ready\n", child.stderr.read()
        subs = [shmkit.Subscriber(name), shmkit.Subscriber(name)]
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"loaned\n"
        child.kill()
        child.wait()
        for sub in subs:  # subscribers go on: every whole message, then SenderDied
            assert sub.recv_bytes(timeout=5) == b"frame 0"
            assert sub.recv_bytes(timeout=5) == b"frame 1"
            with pytest.raises(shmkit.SenderDied):
                sub.recv(timeout=5)
        # a new publisher takes over and gets every slot back, the dead
        # one's loan included
        pub = shmkit.Publisher.open(name)
        for i in range(3):
            with pub.loan(8, timeout=5) as buf:
                buf[:] = b"new %04d" % i
        for sub in subs:
            assert [sub.recv_bytes(timeout=5) for _ in range(3)] == [b"new %04d" % i for i in range(3)]
        pub.close()
        for sub in subs:
            sub.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


SUB_HOLDS = """
import sys, time, shmkit
sub = shmkit.Subscriber(sys.argv[1])
print("joined", flush=True)
held = [sub.recv(timeout=30) for _ in range(2)]
views = [h.__enter__() for h in held]
print("holding", flush=True)
time.sleep(60)
"""


def test_subscriber_killed_holding_samples_gives_slots_back(name):
    with shmkit.Publisher.create(name, slots=2, slot_size=64) as pub:
        child = python_child(SUB_HOLDS, name)
        try:
            assert child.stdout.readline() == b"joined\n", child.stderr.read()
            pub.send(b"1")
            pub.send(b"2")
            assert child.stdout.readline() == b"holding\n"
            with pytest.raises(shmkit.Timeout):
                pub.loan(1, timeout=0.1)  # both slots held by the child
            child.kill()
            child.wait()
            for i in range(4):
                with pub.loan(1, timeout=5) as buf:
                    buf[0] = i
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_python_publisher_to_cli_recv(name, cli):
    with shmkit.Publisher.create(name, slots=4, slot_size=1 << 16) as pub:
        p = subprocess.Popen([cli, "recv", name], stdout=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while pub.subscribers == 0:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.01)
        frames = [bytes([i]) * 1000 for i in range(20)]
        for f in frames:
            with pub.loan(len(f)) as buf:
                buf[:] = f
        pub.close()
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and out == b"".join(frames)


def test_cli_send_into_python_subscriber(name, cli):
    subprocess.run([cli, "create", name, "--kind", "pubsub", "--slots", "4",
                    "--slot-size", "4KiB", "--max-subscribers", "2"], check=True)
    try:
        with shmkit.Subscriber(name) as sub:
            p = subprocess.run([cli, "send", name], input=b"a\nbb\nccc\n", check=True)
            assert p.returncode == 0
            assert [bytes(s._buf) for s in sub] == [b"a\n", b"bb\n", b"ccc\n"]
    finally:
        shmkit.remove(name)


def test_publisher_closed_during_a_loan(name):
    pub = shmkit.Publisher.create(name, slots=1, slot_size=16)
    sub = shmkit.Subscriber(name)
    with pytest.raises(shmkit.Closed):
        with pub.loan(4) as buf:
            buf[:] = b"late"
            pub.close()          # the loan keeps the role until it goes
    gc.collect()
    with pytest.raises(shmkit.Disconnected):
        sub.recv(timeout=5)      # nothing was published; the publisher is gone
    sub.close()
