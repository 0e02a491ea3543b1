"""A camera-like producer: publishes 1080p RGB frames as numpy arrays into
shared memory, without copying them anywhere.

    python examples/python/camera_producer.py        # terminal 1
    python examples/python/camera_consumer.py        # terminal 2 (3, 4...)

Ctrl-C stops it; consumers then finish and exit.
"""

import sys
import time

import numpy as np

import shmkit

H, W = 1080, 1920
FPS = 30
frames = int(sys.argv[1]) if len(sys.argv) > 1 else None  # default: until Ctrl-C

# 4 slots of one frame each; a slow consumer loses the oldest frames
# (it is told how many) instead of stalling the camera.
pub = shmkit.Publisher.create("camera", slots=4, slot_size=H * W * 3,
                              max_subscribers=8, policy="drop-oldest")
print(f"publishing {W}x{H} RGB frames on 'camera' ({FPS} fps); Ctrl-C to stop")
ramp = np.arange(W, dtype=np.uint8)
start = time.monotonic()
try:
    i = 0
    while frames is None or i < frames:
        with pub.loan_array((H, W, 3), np.uint8) as frame:  # a slot, in place
            frame[:, :, 0] = ramp + i                         # "capture" into it
            frame[:, :, 1] = i % 256
            frame[:, :, 2] = 255 - (i % 256)
            frame[0, :8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)[:, None]
        # leaving the block published the frame to every consumer
        i += 1
        time.sleep(max(0.0, start + i / FPS - time.monotonic()))
except KeyboardInterrupt:
    pass
finally:
    pub.close()
    print(f"published {pub.published} frames")
