"""Message framing and signing.

A message on the wire is a multipart ZeroMQ message::

    [*routing_ids, DELIM, envelope, *buffers]

where ``envelope`` = signature (32 bytes) + header length (4 bytes, network
order) + header + content, all in one frame: every frame costs a send, and on
a 2-core machine those sends dominate a small message's latency.

* ``header`` and ``content`` are msgpack maps. The header holds the message
  id (``id``), type (``t``), sender session (``s``), routing fields, and
  ``parts``: how many frames each serialized object in ``buffers`` spans.
* ``buffers`` are the frames of zero or more serialized objects (see
  `serialize`): per object a pickle stream, then its raw out-of-band buffers.
  A pickle stream of up to `INLINE` bytes travels at the end of the envelope
  instead (header ``inl``: each object's inline stream length, 0 if it is
  the object's first frame), so a small call is one frame, not three.
* ``signature`` is HMAC-SHA256 over header, content, inline streams and every
  other pickle stream, keyed with the cluster key. Raw out-of-band buffers (array memory) are not
  hashed, so a 100 MB array costs no hashing; they can only ever be read as
  data, never executed, and their exact lengths are signed in the header
  (``blen``), so nothing can be swapped in without the key.

A message that is unsigned, mis-signed, truncated or undecodable raises
`InvalidMessage`; the receiving loop logs and drops it.

Several messages for the same peer may travel as one zmq message, a *batch*::

    [*routing_ids, BATCH, index, *buffers of each message in turn]

where ``index`` is each message's envelope prefixed with its length (4 bytes,
network order). Every message in a batch is signed and checked on its own, so
a batch is only a way to pay one send and one wake-up for many messages: a
process that forwards one of them passes its frames on unchanged. Hot paths
(task submission, dispatch to engines, results) batch what is ready at once.
"""

from __future__ import annotations

import hmac
import logging
import itertools
import os
import struct
import time
from hashlib import sha256

import msgpack
import zmq

from . import shm
from .serialize import Serialized, deserialize, serialize

log = logging.getLogger(__name__)

DELIM = b"<COHORT>"
INLINE = 16 * 1024  # pickle streams up to this many bytes travel inside the envelope
BATCH = b"<COHORT+>"  # instead of DELIM: several messages follow (see the module's text)
TASK_TYPES = frozenset({"execute", "apply", "push", "pull"})  # messages an engine runs
COPY = b"<COHORT-copy>"  # a routing frame: a copy for the record of a message already delivered
_SIGLEN = 32
_HLEN = struct.Struct("!I")

_packb = msgpack.Packer(use_bin_type=True).pack
_EMPTY_MAP = _packb({})
_unpackb = msgpack.unpackb


def _new_hmac(key: bytes):
    """An HMAC-SHA256 keyed with `key`, copied for each message: OpenSSL's own object
    where there is one (its copy, update and digest run no Python; ~0.5 µs less per
    message), else `hmac`'s."""
    try:
        import _hashlib
        return _hashlib.hmac_new(key, digestmod="sha256")
    except (ImportError, AttributeError, ValueError):
        return hmac.new(key, digestmod=sha256)


class InvalidMessage(Exception):
    """A message that failed framing, signature or decoding checks."""


def new_id() -> str:
    return os.urandom(8).hex()


class Message:
    """A received, verified message. `frames` keeps the raw parts (from the
    delimiter on) so a message can be forwarded without re-signing."""

    __slots__ = ("idents", "header", "content", "buffers", "frames", "inline")

    def __init__(self, idents, header, content, buffers, frames, inline=b""):
        self.idents = idents
        self.header = header
        self.content = content
        self.buffers = buffers
        self.frames = frames
        self.inline = inline  # the pickle streams carried in the envelope

    @property
    def type(self) -> str:
        return self.header["t"]

    @property
    def id(self) -> str:
        return self.header["id"]

    def object_frames(self) -> list:
        """The frames of each carried object, as lists.

        Buffers sent through shared memory are mapped here (and unlinked,
        unless the sender keeps them for other receivers), so a process that
        only forwards a message never touches them.
        """
        out = []
        pos = 0
        bufs = self.buffers
        if "shm" in self.header:
            try:
                bufs = shm.restore(bufs, self.header["shm"], not self.header.get("shm_keep"))
            except (OSError, ValueError, TypeError) as e:
                raise InvalidMessage(f"shared-memory buffer unavailable: {e}") from None
        inl = self.header.get("inl")
        off = 0
        for i, n in enumerate(self.header.get("parts", ())):
            if inl and inl[i]:
                out.append([self.inline[off:off + inl[i]], *bufs[pos:pos + n]])
                off += inl[i]
            else:
                out.append(bufs[pos:pos + n])
            pos += n
        return out

    def objects(self) -> list:
        """Deserialize the objects carried in the buffers."""
        return [deserialize(frames) for frames in self.object_frames()]

    def __repr__(self) -> str:
        return f"<Message {self.header.get('t')} id={self.header.get('id')}>"


class Session:
    """Signs and verifies messages with one key; names this process's messages."""

    def __init__(self, key: bytes, session_id: str | None = None):
        if isinstance(key, str):
            key = key.encode()
        if not key:
            raise ValueError("a cluster key is required to sign messages")
        self.key = key
        self.id = session_id or new_id()
        self._counter = itertools.count()
        self._hmac = _new_hmac(key)

    def msg_id(self) -> str:
        return f"{self.id}-{next(self._counter)}"

    def build(self, msg_type: str, content: dict | None = None, objects=(),
              header: dict | None = None, shm_ok: bool = False,
              payload: "Payload | None" = None) -> list:
        """Frames (without routing ids) for a message carrying `objects`.

        A prepared `payload` sends already-serialized objects (one payload to
        many engines). With `shm_ok`, large raw buffers go through shared memory.
        """
        if payload is None and objects:
            payload = Payload(objects, shm_ok=shm_ok)
        hdr = {"id": self.msg_id(), "t": msg_type, "s": self.id, "ts": time.time()}
        if header:
            hdr.update(header)
        bufs = ()
        inline = b""
        if payload is not None and payload.parts:
            bufs = payload.bufs
            hdr["parts"] = payload.parts
            if payload.inl is not None:
                hdr["inl"] = payload.inl
                inline = payload.inline
            if bufs:
                hdr["blen"] = payload.blen
            if payload.shm:
                hdr["shm"] = payload.shm
                if payload.shared:
                    hdr["shm_keep"] = True
        return self.frames_for(hdr, content, bufs, inline)

    def frames_for(self, header: dict, content: dict | None, bufs=(), inline=b"") -> list:
        h = _packb(header)
        hc = b"".join((_HLEN.pack(len(h)), h, _packb(content) if content else _EMPTY_MAP, inline))
        mac = self._hmac.copy()
        mac.update(hc)
        if not bufs:  # every stream is inline: signed with the envelope
            return [DELIM, mac.digest() + hc]
        for i in stream_indices(header.get("parts", ()), header.get("inl")):
            mac.update(bufs[i])
        return [DELIM, mac.digest() + hc, *bufs]

    def receive(self, frames, route: bool = True) -> "Message | None":
        """`unpack`, but an invalid message is logged and dropped (None)."""
        try:
            return self.unpack(frames, route)
        except InvalidMessage as e:
            log.warning("dropped an invalid message (%s)", e)
            return None

    def receive_all(self, frames, route: bool = True) -> list:
        """The valid messages of a message or a batch; invalid ones are logged and dropped."""
        try:
            pos = _find_delim(frames) if route else 0
        except ValueError:
            log.warning("dropped an invalid message (no delimiter frame)")
            return []
        if _bytes(frames[pos]) != BATCH:
            try:
                return [self._single(frames, pos)]
            except InvalidMessage as e:
                log.warning("dropped an invalid message (%s)", e)
                return []
        idents = [_bytes(f) for f in frames[:pos]]
        try:  # the whole batch is framed right, or none of it is taken
            parts = list(_split_batch(frames[pos + 1:]))
        except InvalidMessage as e:
            log.warning("dropped an invalid batch (%s)", e)
            return []
        out = []
        for env, bufs, header in parts:
            try:
                out.append(self._decode(idents, env, bufs, [DELIM, env, *bufs], header))
            except InvalidMessage as e:
                log.warning("dropped an invalid message in a batch (%s)", e)
        return out

    def unpack(self, frames, route: bool = True) -> Message:
        """Verify and decode a received frame list (zmq Frames or bytes)."""
        try:
            pos = _find_delim(frames) if route else 0
        except ValueError:
            raise InvalidMessage("no delimiter frame") from None
        if route and _bytes(frames[pos]) == BATCH:
            raise InvalidMessage("a batch where one message was expected")
        return self._single(frames, pos)

    def _single(self, frames, pos: int) -> Message:
        """The one message whose delimiter is at `pos`."""
        if len(frames) < pos + 2:
            raise InvalidMessage("truncated message (nothing after the delimiter)")
        idents = [_bytes(f) for f in frames[:pos]] if pos else []
        bufs = [_view(f) for f in frames[pos + 2:]] if len(frames) > pos + 2 else []
        return self._decode(idents, _bytes(frames[pos + 1]), bufs, frames[pos:] if pos else frames)

    def _decode(self, idents, env: bytes, bufs: list, frames, header=None) -> Message:
        """Check and decode one envelope and its buffers (`header`: already decoded)."""
        if len(env) < _SIGLEN + _HLEN.size:
            raise InvalidMessage(f"truncated envelope ({len(env)} bytes)")
        sig, hc = env[:_SIGLEN], env[_SIGLEN:]
        (hlen,) = _HLEN.unpack_from(hc)
        inline = b""
        try:
            if header is None:
                header = _unpackb(hc[_HLEN.size:_HLEN.size + hlen])
            if not isinstance(header, dict):
                raise InvalidMessage("header is not a map")
            parts = header.get("parts")
            inl = header.get("inl")
            h = self._hmac.copy()
            h.update(hc)
            if parts and bufs:  # no buffers: every stream is inline, in `hc`
                for i in stream_indices(parts, inl):
                    h.update(bufs[i])
            end = len(hc)
            if inl:
                end -= sum(inl)
                if end < _HLEN.size + hlen:
                    raise InvalidMessage("inline streams longer than the envelope")
                inline = hc[end:]
            c = hc[_HLEN.size + hlen:end]
        except InvalidMessage:
            raise
        except Exception as e:  # bad msgpack, bad parts
            raise InvalidMessage(f"undecodable header: {e}") from None
        if not hmac.compare_digest(sig, h.digest()):
            raise InvalidMessage("bad signature")
        blen = header.get("blen")
        if blen is not None and [b.nbytes for b in bufs] != list(blen):
            raise InvalidMessage("buffer lengths differ from the signed header")
        if blen is None and bufs:
            raise InvalidMessage("buffers without signed lengths")
        try:
            content = _unpackb(c)
        except Exception as e:
            raise InvalidMessage(f"undecodable content: {e}") from None
        return Message(idents, header, content, bufs, frames, inline)


def batch(messages: list) -> list:
    """Frames (from the delimiter on) of one zmq message carrying several.

    `messages` are frame lists as `Session.build` makes them (or a received
    `Message.frames`); one message is returned as it is.
    """
    if len(messages) == 1:
        return messages[0]
    index = []
    bufs = []
    for frames in messages:
        env = _bytes(frames[1])
        index.append(_HLEN.pack(len(env)))
        index.append(env)
        bufs.extend(frames[2:])
    return [BATCH, b"".join(index), *bufs]


def _split_batch(rest):
    """(envelope, its buffers) for each message of a batch (the frames after BATCH)."""
    if not rest:
        raise InvalidMessage("truncated batch (no index)")
    index = _bytes(rest[0])
    bufs = [_view(f) for f in rest[1:]]
    pos = used = 0
    while pos < len(index):
        if pos + _HLEN.size > len(index):
            raise InvalidMessage("truncated batch index")
        (n,) = _HLEN.unpack_from(index, pos)
        env = index[pos + _HLEN.size:pos + _HLEN.size + n]
        pos += _HLEN.size + n
        if len(env) != n or n < _SIGLEN + _HLEN.size:
            raise InvalidMessage("truncated envelope in a batch")
        (hlen,) = _HLEN.unpack_from(env, _SIGLEN)
        try:
            header = _unpackb(env[_SIGLEN + _HLEN.size:_SIGLEN + _HLEN.size + hlen])
            k = len(header.get("blen") or ())
        except Exception as e:
            raise InvalidMessage(f"undecodable header in a batch: {e}") from None
        if used + k > len(bufs):
            raise InvalidMessage("a batch has fewer buffers than its messages name")
        yield env, bufs[used:used + k], header
        used += k
    if used != len(bufs):
        raise InvalidMessage("a batch has buffers no message names")


class Payload:
    """Serialized objects ready to send, possibly to several receivers.

    With `shared`, segments in shared memory are kept until `release()` (the
    sender calls it once every receiver answered); otherwise each receiver
    unlinks what it mapped.
    """

    __slots__ = ("bufs", "parts", "blen", "shm", "shared", "inl", "inline")

    def __init__(self, objects, shm_ok: bool = False, shared: bool = False):
        bufs, parts, inl, inline = serialize_objects(objects)
        self.parts = parts
        self.inl = inl if any(inl) else None
        self.inline = b"".join(inline)
        self.shared = shared
        self.shm = None
        if shm_ok and bufs and shm.enabled():
            hdr: dict = {}
            bufs = shm.offload(bufs, set(stream_indices(parts, self.inl)), hdr)
            self.shm = hdr.get("shm")
        self.bufs = bufs
        self.blen = [memoryview(b).nbytes for b in bufs] if bufs else []

    def release(self) -> None:
        if self.shared and self.shm:
            for _, name, _ in self.shm:
                shm.unlink(name)
            self.shm = None


def serialize_objects(objects) -> tuple[list, list, list, list]:
    """(buffers, frames per object in them, inline stream lengths, inline streams)."""
    bufs: list = []
    parts: list = []
    inl: list = []
    inline: list = []
    for obj in objects:
        p = obj.frames if isinstance(obj, Serialized) else serialize(obj)
        n = len(p[0]) if type(p[0]) is bytes else memoryview(p[0]).nbytes
        if 0 < n <= INLINE:
            inline.append(p[0])
            inl.append(n)
            bufs.extend(p[1:])
            parts.append(len(p) - 1)
        else:
            inl.append(0)
            bufs.extend(p)
            parts.append(len(p))
    return bufs, parts, inl, inline


def stream_indices(parts, inl=None) -> list:
    """Where each object's pickle stream is among the buffers (unless it is inline)."""
    out = []
    pos = 0
    if inl is not None and (not isinstance(inl, list) or len(inl) != len(parts)):
        raise InvalidMessage("bad inline list")
    for i, n in enumerate(parts):
        inline = inl[i] if inl is not None else 0
        if not isinstance(n, int) or not isinstance(inline, int) or inline < 0 \
                or n < (0 if inline else 1):
            raise InvalidMessage("bad parts list")
        if not inline:
            out.append(pos)
        pos += n
    return out


def _find_delim(frames) -> int:
    for i, f in enumerate(frames):
        b = f if type(f) is not zmq.Frame else f.bytes  # bytes or memoryview compare alike
        if b == DELIM or b == BATCH:
            return i
        if i > 8:
            break
    raise ValueError("no delimiter")


def _bytes(f) -> bytes:
    t = type(f)
    if t is bytes:
        return f
    return f.bytes if t is zmq.Frame else bytes(f)


def _view(f) -> memoryview:
    t = type(f)
    if t is memoryview:
        return f
    return f.buffer if t is zmq.Frame else memoryview(f)
