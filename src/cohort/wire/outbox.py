"""Sending several messages for one peer as one zmq message (a batch), and
receiving what waits on a socket without a failed receive at the end.

Each zmq send costs a system call and wakes a thread on both sides; on a
small machine those wake-ups, not Python, bound how many tasks a second go
through. An `Outbox` collects what an event-loop turn wants to send, per
peer, and `flush` sends each peer's messages as one batch (see
`protocol.batch`), in the order they were put.
"""

from __future__ import annotations

import zmq

from .protocol import batch

_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def recv_frames(sock, flags: int = 0) -> list:
    """`recv_multipart(copy=False)` without its per-part socket option calls
    (a frame says itself whether more follow)."""
    f = sock.recv(flags, copy=False)
    parts = [f]
    while f.more:
        f = sock.recv(flags, copy=False)
        parts.append(f)
    return parts


def drain(sock, limit: int):
    """The messages waiting on `sock` (frame lists), at most `limit`, never blocking.

    Asks the socket whether another message waits instead of letting a
    receive fail: pyzmq builds a `zmq.Again` exception (some 10 µs here) for
    every empty receive, one per wake-up of an event loop.
    """
    for i in range(limit):
        if i and not sock.getsockopt(_EVENTS) & _POLLIN:
            return
        try:
            yield recv_frames(sock, _NOBLOCK)
        except zmq.Again:
            return


def send_frames(sock, frames, copy: bool = False, flags: int = 0) -> None:
    """`send_multipart` without its per-call checks (frames are bytes or buffers).

    With ``flags=zmq.NOBLOCK`` on a socket that queues only on a made
    connection (``immediate``), the first frame raises `zmq.Again` or the
    whole message is queued."""
    last = len(frames) - 1
    send = sock.send
    for i, f in enumerate(frames):
        send(f, (_MORE | flags) if i < last else flags, copy=copy)


class Outbox:
    """Messages waiting for a `flush`, per routing identity of one ROUTER socket."""

    __slots__ = ("sock", "queued")

    def __init__(self, sock):
        self.sock = sock
        self.queued: dict = {}  # ident -> [frame lists], in order

    def put(self, ident: bytes, frames: list) -> None:
        q = self.queued.get(ident)
        if q is None:
            self.queued[ident] = [frames]
        else:
            q.append(frames)

    def flush(self) -> None:
        if not self.queued:
            return
        queued, self.queued = self.queued, {}
        for ident, messages in queued.items():
            send_frames(self.sock, [ident, *batch(messages)])

    def __len__(self) -> int:
        return sum(map(len, self.queued.values()))
