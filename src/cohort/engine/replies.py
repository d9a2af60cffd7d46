"""Results sent straight to the client that waits for them.

A client on the engine's host names a loopback address in its direct tasks'
headers (``rto``, with its host ``rh``). When such a task is the only work
waiting here, its output and result go to that address at once, and a copy
goes to the controller (marked, so that it records the task and does not
forward it): the reply skips one hop through the controller, the hop that
costs a small call most of its time. Anything else — load-balanced tasks
(whose failures the controller may retry), busy engines (whose results
travel in batches), large results, a client on another host — takes the
usual way through the controller.
"""

from __future__ import annotations

from collections import OrderedDict

import zmq

DIRECT_MAX = 1 << 20   # bytes a message may carry to go straight to its client
MAX_CLIENTS = 64       # reply sockets kept open (the least recently used are closed)
_LOOPBACK = "tcp://127.0.0.1:"


class DirectReplies:
    """This engine's sockets to the clients it answers directly (callers hold one lock
    around every method: the sockets are shared by the threads that send output)."""

    def __init__(self, ctx: zmq.Context, hostname: str):
        self.ctx = ctx
        self.hostname = hostname
        self._socks: OrderedDict = OrderedDict()

    def route(self, header: dict) -> str | None:
        """The client's reply address if this task may be answered directly.

        A client's first task goes the usual way while the connection to it
        is made, so that no task's messages take both ways out of order."""
        to = header.get("rto")
        if not (isinstance(to, str) and to.startswith(_LOOPBACK) and not header.get("lb")
                and header.get("rh") == self.hostname):
            return None
        if to in self._socks:
            self._socks.move_to_end(to)
            return to
        sock = self.ctx.socket(zmq.PUSH)
        sock.linger = 0
        sock.sndhwm = 1000
        sock.immediate = 1  # queue only on a made connection: else the send says so at once
        sock.connect(to)
        self._socks[to] = sock
        if len(self._socks) > MAX_CLIENTS:
            self._socks.popitem(last=False)[1].close(0)
        return None

    def send(self, to: str, frames: list) -> bool:
        """Send to the client at `to` without waiting; False if it must go the usual way
        (too big, no connection — another host's loopback, a client gone — or not reading)."""
        if sum(memoryview(f).nbytes for f in frames) > DIRECT_MAX:
            return False
        sock = self._socks.get(to)
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the client stopped reading: the controller will pass it on
            return False
        return True

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()
