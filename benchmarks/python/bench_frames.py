"""Frames between two Python processes: shmkit pub/sub loans against
multiprocessing.Queue, multiprocessing.Pipe and multiprocessing.shared_memory
with a Queue carrying only a frame index.

    target/venv/bin/python benchmarks/python/bench_frames.py [--quick] [--json FILE]

For each frame size (64 B, 1080p RGB = 6 MB, 4K RGB = 24 MB) and contender:

- throughput: the producer sends N frames as fast as the channel takes
  them; frames/s = (N - 1) / (time between the first and last receipt);
- hand-off latency: one frame at a time (the consumer acknowledges each on
  a separate Pipe, not timed); latency = receipt time - send time, both
  from CLOCK_MONOTONIC (time.perf_counter_ns) in the two processes; p50 and
  p99 over M frames.

Every frame starts as a numpy array in the producer. The producer stamps a
16-byte header (index, send time) into the frame; the consumer reads the
header from what it received. "in place" variants write the frame where
the consumer reads it (a camera or decoder filling shared memory
directly: only the header is written per frame); "copy" variants copy the
producer's private frame into shared memory first (one memcpy). Queue and
Pipe pickle the array and copy it through a pipe, as they always do.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing import shared_memory

import numpy as np

import shmkit

SIZES = {
    "64 B": (64,),
    "1080p RGB (6 MB)": (1080, 1920, 3),
    "4K RGB (24 MB)": (2160, 3840, 3),
}
SLOTS = 4
WARMUP = 5


def stamp(frame: np.ndarray, i: int) -> None:
    hdr = frame.reshape(-1).view(np.uint8)[:16].view(np.int64)
    hdr[0] = i
    hdr[1] = time.perf_counter_ns()


def read_stamp(buf) -> tuple:
    hdr = np.frombuffer(buf, dtype=np.int64, count=2)
    return int(hdr[0]), int(hdr[1])


# ------------------------------------------------------------ consumers

def consumer(kind: str, shape, n: int, paced: bool, setup, results, ack) -> None:
    recv_t, send_t = [], []
    if kind.startswith("shmkit"):
        sub = shmkit.Subscriber(setup)
        results.put("ready")
        for _ in range(n):
            with sub.recv(timeout=60) as view:
                i, t = read_stamp(view)
                now = time.perf_counter_ns()
            recv_t.append(now)
            send_t.append(t)
            if paced:
                ack.send(i)
        sub.close()
    elif kind == "Queue" or kind == "Pipe":
        results.put("ready")
        for _ in range(n):
            frame = setup.get() if kind == "Queue" else setup.recv()
            i, t = read_stamp(frame)
            now = time.perf_counter_ns()
            recv_t.append(now)
            send_t.append(t)
            if paced:
                ack.send(i)
    else:  # shared_memory + index queue
        names, q, free = setup
        blocks = [shared_memory.SharedMemory(nm) for nm in names]
        results.put("ready")
        for _ in range(n):
            idx = q.get()
            i, t = read_stamp(blocks[idx].buf)
            now = time.perf_counter_ns()
            free.put(idx)
            recv_t.append(now)
            send_t.append(t)
            if paced:
                ack.send(i)
        for b in blocks:
            b.close()
    results.put((recv_t, send_t))


# ------------------------------------------------------------ producers

def run(kind: str, shape, n: int, paced: bool) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ack_r, ack_w = ctx.Pipe(duplex=False)
    frame = np.full(shape, 7, dtype=np.uint8)
    nbytes = frame.nbytes
    cleanup = []
    if kind.startswith("shmkit"):
        name = f"bench-py-{os.getpid()}"
        pub = shmkit.Publisher.create(name, slots=SLOTS, slot_size=nbytes, max_subscribers=1)
        setup = name
        cleanup.append(pub.close)
    elif kind == "Queue":
        setup = ctx.Queue(maxsize=SLOTS)
    elif kind == "Pipe":
        rx, tx = ctx.Pipe(duplex=False)
        setup = rx
    else:
        blocks = [shared_memory.SharedMemory(create=True, size=nbytes) for _ in range(SLOTS)]
        views = [np.ndarray(shape, np.uint8, buffer=b.buf) for b in blocks]
        q, free = ctx.Queue(), ctx.Queue()
        for k in range(SLOTS):
            free.put(k)
        setup = ([b.name for b in blocks], q, free)

        def close_blocks():
            views.clear()
            for b in blocks:
                b.close()
                b.unlink()
        cleanup.append(close_blocks)
    p = ctx.Process(target=consumer, args=(kind, shape, n, paced, setup, results, ack_w))
    p.start()
    assert results.get(timeout=120) == "ready"
    if kind.startswith("shmkit"):
        while pub.subscribers == 0:
            time.sleep(0.001)
    for i in range(n):
        if kind == "shmkit loan (in place)":
            with pub.loan_array(shape, np.uint8) as f:
                stamp(f, i)
        elif kind == "shmkit loan + copy":
            with pub.loan_array(shape, np.uint8) as f:
                np.copyto(f, frame)
                stamp(f, i)
        elif kind == "Queue":
            stamp(frame, i)
            setup.put(frame)
        elif kind == "Pipe":
            stamp(frame, i)
            tx.send(frame)
        else:
            idx = free.get()
            if "(copy)" in kind:
                np.copyto(views[idx], frame)
            stamp(views[idx], i)
            q.put(idx)
        if paced:
            assert ack_r.recv() == i
    recv_t, send_t = results.get(timeout=600)
    p.join(60)
    for c in cleanup:
        c()
    recv_t, send_t = recv_t[WARMUP:], send_t[WARMUP:]
    lat = sorted((r - s) / 1000 for r, s in zip(recv_t, send_t))
    out = {"kind": kind, "shape": list(shape), "bytes": int(np.prod(shape)), "frames": len(recv_t)}
    if paced:
        out["p50_us"] = lat[len(lat) // 2]
        out["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    else:
        span = (recv_t[-1] - recv_t[0]) / 1e9
        out["fps"] = (len(recv_t) - 1) / span
    return out


KINDS = [
    "shmkit loan (in place)",
    "shmkit loan + copy",
    "shared_memory + Queue index (in place)",
    "shared_memory + Queue index (copy)",
    "Queue",
    "Pipe",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few frames (a smoke test)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    rows = []
    for label, shape in SIZES.items():
        big = int(np.prod(shape)) > 1 << 20
        for kind in KINDS:
            slow = kind in ("Queue", "Pipe")
            if args.quick:
                n_tp, n_lat = WARMUP + 10, WARMUP + 10
            else:
                n_tp = WARMUP + (60 if slow and big else 400 if big else 2000)
                n_lat = WARMUP + (60 if slow and big else 300)
            tp = run(kind, shape, n_tp, paced=False)
            lat = run(kind, shape, n_lat, paced=True)
            row = {"size": label, **tp, "p50_us": lat["p50_us"], "p99_us": lat["p99_us"]}
            rows.append(row)
            print(f"{label:18} {kind:40} {row['fps']:10.1f} frames/s  "
                  f"p50 {row['p50_us']:9.1f} us  p99 {row['p99_us']:9.1f} us", flush=True)
    print()
    print("| frame | contender | frames/s | vs Queue | p50 hand-off | p99 hand-off |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        q = next(x for x in rows if x["size"] == r["size"] and x["kind"] == "Queue")
        print(f"| {r['size']} | {r['kind']} | {r['fps']:.0f} | {r['fps'] / q['fps']:.1f}x "
              f"| {r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs |")
    small = next(r for r in rows if r["size"] == "64 B" and r["kind"] == "shmkit loan (in place)")
    big = next(r for r in rows if r["size"].startswith("4K") and r["kind"] == "shmkit loan (in place)")
    q4k = next(r for r in rows if r["size"].startswith("4K") and r["kind"] == "Queue")
    print()
    print(f"goal 1: shmkit 4K frames/s = {big['fps'] / q4k['fps']:.1f}x Queue (goal >= 20x)")
    print(f"goal 2: shmkit p50 hand-off 24 MB / 64 B = {big['p50_us'] / small['p50_us']:.2f} "
          f"(goal <= 2); p99 ratio {big['p99_us'] / small['p99_us']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
