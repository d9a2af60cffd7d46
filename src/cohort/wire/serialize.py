"""Python objects to frames and back: pickle protocol 5 with out-of-band buffers.

`serialize` returns the pickle stream followed by each large buffer
(numpy arrays, bytes-likes exposing the buffer protocol) as its own raw frame,
without copying it. `deserialize` rebuilds the object on top of the received
frames, so an array comes back as a view of the frame's memory.
"""

from __future__ import annotations

import pickle

import cloudpickle

#: buffers smaller than this stay inside the pickle stream (a frame costs more)
OOB_THRESHOLD = 64 * 1024


def serialize(obj) -> list:
    """Pickle `obj`; return [stream, *out_of_band_buffers]."""
    buffers: list = []

    def keep_large(pb: pickle.PickleBuffer):
        raw = pb.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True  # serialize in-band
        buffers.append(raw)
        return False

    stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)
    return [stream, *buffers]


def deserialize(frames) -> object:
    """Inverse of `serialize`: frames[0] is the stream, the rest its buffers."""
    return pickle.loads(frames[0], buffers=frames[1:])


def serialize_many(objs) -> tuple[list, list]:
    """Serialize several objects into one frame list; returns (frames, counts)."""
    frames: list = []
    counts: list = []
    for obj in objs:
        part = serialize(obj)
        frames.extend(part)
        counts.append(len(part))
    return frames, counts


def deserialize_many(frames, counts) -> list:
    out = []
    pos = 0
    for n in counts:
        out.append(deserialize(frames[pos:pos + n]))
        pos += n
    return out
