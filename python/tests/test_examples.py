"""The README's two-terminal example runs as documented."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from conftest import python_child

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_camera_producer_and_consumer():
    consumer = python_child((EXAMPLES / "camera_consumer.py").read_text())
    producer = python_child((EXAMPLES / "camera_producer.py").read_text(), "90")
    p_out, p_err = producer.communicate(timeout=120)
    c_out, c_err = consumer.communicate(timeout=60)
    assert producer.returncode == 0, p_err.decode()
    assert consumer.returncode == 0, c_err.decode()
    assert b"published 90 frames" in p_out
    m = re.search(rb"received (\d+) frames \((\d+) missed\)", c_out)
    assert m, c_out
    received, missed = int(m.group(1)), int(m.group(2))
    # the consumer may join after the first frames; it then sees the rest
    assert 30 <= received <= 90 and received + missed <= 90
