"""Watching the controller's heartbeat from a client or an engine."""

from __future__ import annotations

import time

import zmq


class HeartbeatWatch:
    """Subscribes to the controller's pings and says when it has been silent too long.

    Register `socket` in the caller's poller and pass each poll's events to
    `silent`, or call `check` now and then without polling it.
    Pings carry the controller's instance id; `restarted` is set when it
    changes (a new controller took over the same address), for the caller to
    clear once it has reconnected.
    """

    def __init__(self, ctx: zmq.Context, url: str, timeout: float, info=None):
        self.timeout = timeout
        self.socket = ctx.socket(zmq.SUB)
        self.socket.linger = 0
        if info is not None:
            info.secure_client(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(url)
        self.last = time.monotonic()
        self.instance: bytes | None = None
        self.restarted = False

    def silent(self, events) -> bool:
        """True if no ping came for `timeout` seconds (pings in `events` are consumed)."""
        if self.socket in events and self._consume():
            return False
        return time.monotonic() - self.last > self.timeout

    def check(self) -> bool:
        """`silent`, reading whatever pings came (for a caller that does not poll them)."""
        if self._consume():
            return False
        return time.monotonic() - self.last > self.timeout

    def _consume(self) -> bool:
        got = False
        while True:
            try:
                ping = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            instance = ping.partition(b":")[0]
            if self.instance is not None and instance != self.instance:
                self.restarted = True
            self.instance = instance
            got = True
        if got:
            self.last = time.monotonic()
        return got

    def know(self, instance: str | None) -> None:
        """The controller we registered with (pings from another mean a restart)."""
        if instance and self.instance is None:
            self.instance = instance.encode()

    def reset(self) -> None:
        self.last = time.monotonic()
