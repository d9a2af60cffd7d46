"""The direct path: tasks and results between a client and an engine on one host.

Tasks: the engine listens on a local socket (`DirectInbox`, `cohort.wire.local`)
and names it when it registers. A client on the same host sends its tasks
for this engine there, and a copy of each to the controller, which records
the task as sent to this engine (for death, abort and the records) without
forwarding it. Their output and results go back over the same socket.

Results: a client on the engine's host names a loopback address in its direct tasks'
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

import logging
import time
from collections import OrderedDict

import zmq

from ..wire import TASK_TYPES, local, send_frames

log = logging.getLogger(__name__)

DIRECT_MAX = 1 << 20   # bytes a message may carry to go straight to its client
MAX_CLIENTS = 64       # reply sockets kept open (the least recently used are closed)
_LOOPBACK = "tcp://127.0.0.1:"
_NOBLOCK = int(zmq.NOBLOCK)


class DirectInbox:
    """Tasks that clients on this host send here themselves, over local sockets
    (`cohort.wire.local`): their replies go back the same way (see `DirectReplies`)."""

    def __init__(self, session, info, out_lock):
        self.session = session
        self.out_lock = out_lock  # the reply sockets are closed under it
        self.listener, self.address = (None, None) if info.curve else local.listen()
        self.conns: dict = {}  # fd -> connected socket
        self.seen: dict = {}   # client session -> tasks it sent here directly so far ("dq")
        self.pollers: list = []  # the pollers its sockets are registered with

    def watch(self, poller) -> None:
        """Register our sockets with `poller` (ready ones are handed to `take`)."""
        self.pollers.append(poller)
        for sock in ([self.listener] if self.listener is not None else []) + \
                list(self.conns.values()):
            poller.register(sock.fileno(), zmq.POLLIN)

    def take(self, fds) -> list:
        """The tasks waiting on the ready descriptors `fds` (accepting new clients)."""
        out = []
        for fd in fds:
            if self.listener is not None and fd == self.listener.fileno():
                for conn in local.accept(self.listener):
                    self.conns[conn.fileno()] = conn
                    for poller in self.pollers:
                        poller.register(conn.fileno(), zmq.POLLIN)
                continue
            conn = self.conns.get(fd)
            if conn is None:
                continue
            records, alive = local.receive(conn)
            for frames in records:
                for msg in self.session.receive_all(frames):
                    hdr = msg.header
                    if hdr.get("t") not in TASK_TYPES:
                        continue
                    hdr["dt"] = 1      # its result tells the controller so
                    hdr["rto"] = conn  # and goes back this way when it can
                    dq = hdr.get("dq")
                    if isinstance(dq, int) and dq > self.seen.get(hdr.get("s"), 0):
                        self.seen[hdr.get("s")] = dq  # (its tasks come over two sockets)
                    out.append(msg)
            if not alive:  # the client left
                for poller in self.pollers:
                    poller.unregister(fd)
                del self.conns[fd]
                with self.out_lock:
                    conn.close()
        return out

    def wait_for(self, client, n: int, timeout: float) -> list:
        """The tasks that come within `timeout` s, until client `client` has sent `n`."""
        out = []
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        self.watch(poller)
        try:
            while self.seen.get(client, 0) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("task %d of client %s sent here directly did not come "
                                "within %g s", n, client, timeout)
                    break
                out.extend(self.take([fd for fd, _ in poller.poll(int(left * 1000) + 1)]))
        finally:
            self.pollers.remove(poller)
        return out

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        if self.listener is not None:
            self.listener.close()


class DirectReplies:
    """This engine's sockets to the clients it answers directly (callers hold one lock
    around every method: the sockets are shared by the threads that send output)."""

    def __init__(self, ctx: zmq.Context, hostname: str):
        self.ctx = ctx
        self.hostname = hostname
        self._socks: OrderedDict = OrderedDict()

    def route(self, header: dict, busy: bool = False):
        """Where this task (sent by the controller) gets its output directly, or None
        (the usual way). (One sent over a local socket goes back over it: see
        `Engine.run_task`.)

        Only the only task here (`busy`: others wait; their results go back in
        batches) of a client on this host; a client's first task goes the
        usual way while the connection to it is made, so that no task's
        messages take both ways out of order."""
        to = header.get("rto")
        if busy or not (isinstance(to, str) and to.startswith(_LOOPBACK) and not header.get("lb")
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

    def send(self, to, frames: list) -> bool:
        """Send to the client at `to` without waiting; False if it must go the usual way
        (too big, no connection — another host's loopback, a client gone — or not reading)."""
        if not isinstance(to, str):  # the local socket the task came over
            return to.fileno() >= 0 and local.send(to, frames)
        if sum(memoryview(f).nbytes for f in frames) > DIRECT_MAX:
            return False
        sock = self._socks.get(to)
        if sock is None:
            return False
        try:
            send_frames(sock, frames, flags=_NOBLOCK)
        except zmq.Again:  # the client stopped reading: the controller will pass it on
            return False
        return True

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()
