"""Ring Sender/Receiver: bytes in, bytes out, timeouts, iteration,
two processes, and the CLI on either side."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import time

import numpy as np
import pytest

import shmkit
from conftest import python_child


def test_send_recv_and_timeouts(name):
    with shmkit.Receiver.create(name, capacity=4, max_message=16) as rx, \
            shmkit.Sender.open(name) as tx:
        assert tx.capacity == 4 and rx.max_message == 16
        tx.send(b"abc")
        tx.send(bytearray(b"de"))
        tx.send(memoryview(b"xfgx")[1:3])
        tx.send(np.arange(4, dtype=np.uint8))
        assert len(rx) == 4
        assert tx.try_send(b"full") is False
        t0 = time.monotonic()
        with pytest.raises(shmkit.Timeout):
            tx.send(b"more", timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        assert rx.recv() == b"abc"
        buf = bytearray(16)
        n = rx.recv_into(buf)
        assert bytes(buf[:n]) == b"de"
        assert rx.recv(timeout=0) == b"fg"
        assert rx.try_recv() == bytes([0, 1, 2, 3])
        assert rx.try_recv() is None
        with pytest.raises(shmkit.Timeout):
            rx.recv(timeout=0.05)
        with pytest.raises(shmkit.TooLarge):
            tx.send(b"x" * 17)
        tx.send(b"0123456789")
        small = bytearray(4)
        with pytest.raises(shmkit.TooLarge) as e:
            rx.recv_into(small)
        assert e.value.message == b"0123456789"  # not lost
        with pytest.raises(ValueError):
            rx.recv(timeout=-1)


def test_iteration_ends_when_the_sender_closes(name):
    rx = shmkit.Receiver.create(name)
    tx = shmkit.Sender.open(name)
    for i in range(5):
        tx.send(str(i).encode())
    tx.close()
    assert [m.decode() for m in rx] == ["0", "1", "2", "3", "4"]
    with pytest.raises(shmkit.Disconnected):
        rx.recv(timeout=1)
    with pytest.raises(shmkit.Closed):
        tx.send(b"x")
    rx.close()


def _produce(name: str, n: int) -> None:
    with shmkit.Sender.open(name) as tx:
        for i in range(n):
            tx.send(i.to_bytes(4, "little") * 100)


def test_two_processes_spawn(name):
    with shmkit.Receiver.create(name, capacity=8, max_message=400) as rx:
        p = mp.get_context("spawn").Process(target=_produce, args=(name, 2000))
        p.start()
        got = [int.from_bytes(m[:4], "little") for m in rx]
        p.join(60)
        assert p.exitcode == 0 and got == list(range(2000))


def test_sender_killed_gives_sender_died_after_every_message(name):
    code = """
import sys, time, shmkit
tx = shmkit.Sender.open(sys.argv[1])
for i in range(3): tx.send(b"m%d" % i)
print("sent", flush=True)
time.sleep(60)
"""
    with shmkit.Receiver.create(name) as rx:
        child = python_child(code, name)
        assert child.stdout.readline() == b"sent\n"
        child.kill()
        child.wait()
        assert [rx.recv(timeout=5) for _ in range(3)] == [b"m0", b"m1", b"m2"]
        with pytest.raises(shmkit.SenderDied):
            rx.recv(timeout=5)


def test_cli_send_into_python_receiver(name, cli):
    data = os.urandom(300_000)
    with shmkit.Receiver.create(name, capacity=16, max_message=65536) as rx:
        p = subprocess.Popen([cli, "send", name, "--chunk", "64KiB"], stdin=subprocess.PIPE)
        p.stdin.write(data)
        p.stdin.close()
        got = b"".join(rx)  # until the CLI closes the channel
        assert p.wait(30) == 0
    assert got == data


def test_python_sender_into_cli_recv(name, cli):
    with shmkit.Sender.create(name, capacity=8, max_message=1024) as tx:
        p = subprocess.Popen([cli, "recv", name], stdout=subprocess.PIPE)
        for i in range(100):
            tx.send(b"line %d\n" % i, timeout=30)
        tx.close()
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert out == b"".join(b"line %d\n" % i for i in range(100))
