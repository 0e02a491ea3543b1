"""Shared fixtures: unique names, the CLI binary, and a check that every
test leaves nothing behind in /dev/shm."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import shmkit

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"pyt{os.getpid()}-"


@pytest.fixture
def name() -> str:
    """A key no other test (or test run) uses."""
    return PREFIX + uuid.uuid4().hex[:12]


def _leftovers(prefix: str) -> list:
    return sorted(glob.glob(f"/dev/shm/shmkit.{prefix}*"))


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """Fails a test that leaves a segment of its own in /dev/shm (and
    removes it, so the next test starts clean)."""
    before = set(_leftovers(PREFIX))
    yield
    left = [p for p in _leftovers(PREFIX) if p not in before]
    for p in left:
        try:
            shmkit.remove(os.path.basename(p)[len("shmkit."):])
        except shmkit.Error:
            pass
    if left:
        pytest.fail(f"test left segments behind: {left}")


@pytest.fixture(scope="session")
def cli() -> str:
    """Path of the `shmkit` binary (built with cargo if needed)."""
    env = os.environ.get("SHMKIT_BIN")
    if env:
        return env
    for p in (REPO / "target/debug/shmkit", REPO / "target/release/shmkit"):
        if p.exists():
            return str(p)
    cargo = shutil.which("cargo")
    assert cargo, "the CLI tests need cargo (or SHMKIT_BIN) to build the shmkit binary"
    subprocess.run([cargo, "build", "-q", "-p", "shmkit-cli"], cwd=REPO, check=True)
    return str(REPO / "target/debug/shmkit")


def python_child(code: str, *args: str, **kw) -> subprocess.Popen:
    """Starts `python -c code args...` that dies with us (PDEATHSIG)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=die_with_parent, **kw,
    )
