"""References to stored objects that travel instead of the data.

A `Ref` names an object in a store (its OID and the store's URL). Pass one
as a task argument, `push` it or `scatter` a list of them: the engine fetches
the data from the store itself, so it never passes through the client or
the controller. A task result larger than the cluster's threshold comes back
as a `Ref` too (see `store_value`).

A Ref's object holds either raw bytes (``codec="bytes"``: what `Object.data`
was) or a pickled Python object (``codec="pickle"``: protocol 5, its large
buffers stored after the stream without copies, read back with ``readinto``).
"""

from __future__ import annotations

import pickle
import struct
import threading

MAGIC = b"COHORTP5"
_stores: dict = {}
_lock = threading.Lock()


def _open(url: str):
    """The store at `url`, opened once per process."""
    with _lock:
        s = _stores.get(url)
        if s is None:
            from .objects import open as open_store
            s = _stores[url] = open_store(url)
        return s


class Ref:
    """A stored object, fetched where it is used: ``ref.get()`` here, or on an
    engine when passed as a task argument or pushed."""

    __slots__ = ("oid", "url", "codec", "size", "kind")

    def __init__(self, oid: str, url: str, codec: str = "bytes", size: int | None = None,
                 kind: str = ""):
        if codec not in ("bytes", "pickle"):
            raise ValueError(f"codec must be 'bytes' or 'pickle', not {codec!r}")
        self.oid = oid
        self.url = url
        self.codec = codec
        self.size = size
        self.kind = kind  # the stored value's type, for the repr

    @classmethod
    def to(cls, store, oid: str) -> "Ref":
        """A Ref to the raw bytes of object `oid` of `store`."""
        return cls(oid, store.url, "bytes")

    def get(self):
        """The value: the object's bytes, or the Python object that was stored."""
        s = _open(self.url)
        if self.codec == "bytes":
            return s.get(self.oid).data
        with s.create_get_stream(self.oid) as r:
            return read_pickled(r)

    def delete(self) -> None:
        """Remove the object from its store (every Ref to it becomes dangling)."""
        _open(self.url).delete(self.oid)

    def __reduce__(self):
        return (Ref, (self.oid, self.url, self.codec, self.size, self.kind))

    def __eq__(self, other):
        return isinstance(other, Ref) and (self.oid, self.url) == (other.oid, other.url)

    def __hash__(self):
        return hash((self.oid, self.url))

    def __repr__(self) -> str:
        what = f" {self.kind}" if self.kind else ""
        size = f", {_human(self.size)}" if self.size is not None else ""
        return f"<Ref {self.oid}{what}{size} in {self.url}: .get() fetches it>"


def store_value(value, store, meta: dict | None = None, frames=None) -> Ref:
    """Write a Python object to `store` (streamed, no copies of large buffers); return its Ref."""
    if frames is None:
        frames = pickle_frames(value)
    sizes = [memoryview(f).nbytes for f in frames]
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    meta = {"cohort-codec": "pickle", "type": kind, **(meta or {})}
    with store.create_put_stream(meta=meta) as w:
        w.write(MAGIC + struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes))
        for f in frames:
            w.write(f)
    return Ref(w.oid, store.url, "pickle", sum(sizes), kind)


def pickle_frames(value) -> list:
    """[stream, *buffers]: pickle protocol 5 with buffers of 64 KiB or more kept apart."""
    buffers: list = []

    def keep(pb: pickle.PickleBuffer):
        raw = pb.raw()
        if raw.nbytes < 65536:
            return True
        buffers.append(raw)
        return False

    return [pickle.dumps(value, protocol=5, buffer_callback=keep), *buffers]


def read_pickled(r):
    """Inverse of `store_value`'s layout, from a binary file object."""
    head = _read_exactly(r, len(MAGIC) + 4)
    if head[:len(MAGIC)] != MAGIC:
        raise ValueError("not an object stored by cohort.store.store_value")
    (n,) = struct.unpack("<I", head[len(MAGIC):])
    sizes = struct.unpack(f"<{n}Q", _read_exactly(r, 8 * n))
    frames = []
    for size in sizes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            k = r.readinto(view[got:])
            if not k:
                raise ValueError("stored object is truncated")
            got += k
        frames.append(buf)
    return pickle.loads(frames[0], buffers=frames[1:])


def _read_exactly(r, n: int) -> bytes:
    data = r.read(n)
    if data is None or len(data) != n:
        raise ValueError("stored object is truncated")
    return data


def resolve(value):
    """`value` with Refs replaced by what they name: the value itself, or the items
    of a list or tuple, or the values of a dict (one level down, as scatter/push send them)."""
    if isinstance(value, Ref):
        return value.get()
    if type(value) in (list, tuple):
        if any(isinstance(v, Ref) for v in value):
            return type(value)(v.get() if isinstance(v, Ref) else v for v in value)
        return value
    if type(value) is dict and any(isinstance(v, Ref) for v in value.values()):
        return {k: v.get() if isinstance(v, Ref) else v for k, v in value.items()}
    return value


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
