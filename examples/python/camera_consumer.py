"""A consumer of camera_producer.py's frames: each frame is a read-only
numpy view of the producer's slot (no copy), released after use."""

import time

import numpy as np

import shmkit

H, W = 1080, 1920

while True:  # wait for the producer
    try:
        sub = shmkit.Subscriber("camera")
        break
    except shmkit.NotFound:
        time.sleep(0.2)

print("receiving frames from 'camera'; Ctrl-C to stop")
count, missed, t0 = 0, 0, time.monotonic()
try:
    for sample in sub:                      # ends when the producer closes
        with sample as view:                # the producer's slot, in place
            frame = np.frombuffer(view, np.uint8).reshape(H, W, 3)
            index = int(np.frombuffer(frame[0, :8, 0].tobytes(), np.int64)[0])
            brightness = frame[::8, ::8].mean()   # "inference"
            del frame                       # views end with the block
        count += 1
        missed += sample.missed
        if count % 30 == 0:
            fps = count / (time.monotonic() - t0)
            print(f"frame {index}: mean {brightness:6.1f}, {fps:5.1f} fps, {missed} missed")
except KeyboardInterrupt:
    pass
finally:
    sub.close()
print(f"received {count} frames ({missed} missed)")
