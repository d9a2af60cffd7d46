"""Watching the controller's heartbeat from a client or an engine."""

from __future__ import annotations

import time

import zmq


class HeartbeatWatch:
    """Subscribes to the controller's pings and says when it has been silent too long.

    Register `socket` in the caller's poller and pass each poll's events to `silent`.
    """

    def __init__(self, ctx: zmq.Context, url: str, timeout: float):
        self.timeout = timeout
        self.socket = ctx.socket(zmq.SUB)
        self.socket.linger = 0
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(url)
        self.last = time.monotonic()

    def silent(self, events) -> bool:
        """True if no ping came for `timeout` seconds (pings in `events` are consumed)."""
        now = time.monotonic()
        if self.socket in events:
            while self.socket.poll(0):
                self.socket.recv()
            self.last = now
            return False
        return now - self.last > self.timeout

    def reset(self) -> None:
        self.last = time.monotonic()
