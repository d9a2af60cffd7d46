"""Tasks sent straight to the engines on this client's host.

An engine listens on a local socket (`cohort.wire.local`) and names it when it
registers (see `cohort.engine.replies`). A client on the same host sends its
small tasks for that engine there, and a copy of each to the controller,
which records the task as sent to the engine: death, abort, `queue_status`
and the task records work as for any task, while the task itself skips the
hop through the controller, and its output and result come back over the
same socket. A small call then never waits for the controller at all.

A thread that will wait for its call (``block=True`` on one engine) sends it
over a socket of its own to that engine (a *channel*, see `channel`) and reads
the answer there itself: the answer wakes the waiting thread directly, not
the client's I/O thread, which would then have to wake it in turn.

At most `WINDOW` of a client's tasks are out on an engine this way; more wait
at the controller as usual (so `cancel` can still withdraw them). Order is
kept per engine: while a task this client sent an engine through the
controller is unanswered, its later tasks for that engine go that way too;
and a task sent through the controller after some sent straight names how
many were (``after_dq``), so that the engine runs those first.
"""

from __future__ import annotations

import os
import select
import threading
import time

import zmq

from ..wire import local

WINDOW = 8  # tasks a client has sent an engine straight, unanswered, at most
COPY_DELAY = 0.02  # seconds a copy for the controller waits for the task's result (see send)
# Seconds a thread waiting for a quick call polls its channel before it sleeps: an
# answer that comes meanwhile finds it running, its core not idled (on a VM an idle
# core's caches go cold and waking it costs a round through the host). A call
# that took longer than this is not spun for next time, until one is quick again.
SPIN = 0.0005


class DirectTasks:
    """The client's sockets to engines on its host, and which of its tasks went which way.

    `open`, `close`, `plan`, `send` and `routed` run under the client's send
    lock; `answered` runs on the I/O thread (its set operations are atomic)."""

    def __init__(self, hostname: str, enabled: bool = True):
        self.hostname = hostname
        self.enabled = enabled
        self._socks: dict = {}            # engine id -> local socket to its task inbox
        self.fds: dict = {}               # descriptor -> (engine id, socket) the I/O thread polls
        self._address: dict = {}          # engine id -> its task inbox's address
        self._channels: dict = {}         # engine id -> [channels not in use] (see `channel`)
        self._adopted: dict = {}          # engine id -> [channels handed to the I/O thread]
        self.changed = False              # sockets opened or closed since the I/O thread looked
        self._sent: dict = {}             # engine id -> tasks sent it straight so far
        self._out: dict = {}              # engine id -> ids of those not answered yet
        self._via_controller: dict = {}   # engine id -> ids of tasks sent the usual way, unanswered
        self._engine_of: dict = {}        # task id -> engine id, for the tasks in those sets
        self._copies: dict = {}           # task id -> (the controller's copy, when), not sent yet
        self._copied: dict = {}           # task id -> the copy sent, until the task is answered

    def open(self, engine: dict) -> None:
        """Connect to an engine's task inbox if it runs on this host."""
        eid = engine.get("id")
        if not self.enabled or engine.get("host") != self.hostname or eid in self._socks:
            return
        sock = local.connect(engine.get("tasks"))
        if sock is None:
            return
        self._socks[eid] = sock
        self._address[eid] = engine.get("tasks")
        self._read(eid, sock)
        for table in (self._out, self._via_controller):
            table.setdefault(eid, set())
        self._sent.setdefault(eid, 0)

    def _read(self, eid, sock) -> None:
        """Have the I/O thread read `sock` (engine `eid`'s)."""
        self.fds[sock.fileno()] = (eid, sock)
        self.changed = True

    def close(self, eid) -> None:
        for channel in self._channels.pop(eid, []):
            channel.close()
        socks = self._adopted.pop(eid, [])
        sock = self._socks.pop(eid, None)
        for sock in socks + ([sock] if sock is not None else []):
            if self.fds.pop(sock.fileno(), None) is not None:
                self.changed = True
            sock.close()

    def close_all(self) -> list:
        """Close every socket; return the messages still unread on them."""
        unread = []
        for _, sock in list(self.fds.values()):
            unread.extend(local.receive(sock)[0])
        for eid in list(self._socks):
            self.close(eid)
        return unread

    def repoll(self, poller, polled: set) -> set:
        """Make `poller` (the I/O thread's) poll exactly our sockets; return their fds."""
        self.changed = False
        now = set(self.fds)
        for fd in polled - now:
            poller.unregister(fd)
        for fd in now - polled:
            poller.register(fd, zmq.POLLIN)
        return now

    def receive(self, fd) -> tuple:
        """(the messages engine `fds[fd]` sent back, False if it is gone) (the I/O thread's)."""
        entry = self.fds.get(fd)
        if entry is None:
            return [], True
        return local.receive(entry[1])

    def engine_at(self, fd):
        """The id of the engine at the other end of descriptor `fd` (None: closed)."""
        entry = self.fds.get(fd)
        return None if entry is None else entry[0]

    # --- channels: a waiting thread's own socket to an engine -----------------
    def channel(self, eid):
        """A `Channel` to engine `eid` for one task the calling thread will wait
        for (`Channel.wait`), or None: no direct path, or tasks of this client
        still out there (it could overtake them). Give it back with
        `give_back`, or `adopt` it if the wait was cut short."""
        if eid not in self._socks or self._out[eid] or self._via_controller.get(eid):
            return None
        free = self._channels.get(eid)
        if free:
            return free.pop()
        sock = local.connect(self._address[eid])
        return Channel(sock) if sock is not None else None

    def give_back(self, eid, channel) -> None:
        if eid in self._socks:
            self._channels.setdefault(eid, []).append(channel)
        else:  # the engine left meanwhile
            channel.close()

    def adopt(self, eid, channel) -> None:
        """A channel whose answer nobody reads now (the wait was interrupted): the
        I/O thread reads its socket from now on, as any socket to an engine."""
        sock = channel.detach()
        if eid not in self._socks:
            sock.close()
            return
        self._adopted.setdefault(eid, []).append(sock)
        self._read(eid, sock)

    def plan(self, eid) -> tuple:
        """(send straight?, header fields) for this client's next task for engine `eid`.

        Straight while no task sent the usual way waits and fewer than `WINDOW`
        sent straight do (the rest wait at the controller, where `cancel`
        withdraws them); else through the controller, and the engine runs it
        only after the tasks sent it straight before (``dq``, ``after_dq``)."""
        if eid not in self._socks:
            return False, {}
        if not self._via_controller.get(eid) and len(self._out[eid]) < WINDOW:
            return True, {"dq": self._sent[eid] + 1}
        return False, self.behind(eid)

    def behind(self, eid) -> dict:
        """Header fields of a task for `eid` sent through the controller."""
        n = self._sent.get(eid, 0)
        return {"after_dq": n} if n else {}

    def send(self, eid, task_id: str, frames: list, channel=None) -> bool:
        """Send a task straight to engine `eid` (as `plan` said; over `channel` if
        given); False if it cannot go now (too large, the engine's inbox is full,
        or it is gone).

        The controller's copy of the task is kept back (`due_copies`): if the
        result comes within `COPY_DELAY`, it is never sent (the engine's copy
        of the result tells the controller all it needs)."""
        # noted first: its result may be handled (`answered`) before the send returns
        self._engine_of[task_id] = eid
        self._out[eid].add(task_id)
        self._copies[task_id] = (frames, time.monotonic())  # the controller's, for later
        if not local.send(self._socks[eid] if channel is None else channel.sock, frames):
            self.answered(task_id)
            return False
        self._sent[eid] += 1
        return True

    def routed(self, eid, task_id: str) -> None:
        """A task for `eid` went through the controller: later ones follow it there
        (also if `eid` is an engine we connect to only later)."""
        try:
            self._via_controller.setdefault(eid, set()).add(task_id)
        except TypeError:  # not an engine id: the controller says so
            return
        self._engine_of[task_id] = eid

    def has_copies(self) -> bool:
        return bool(self._copies)

    def due_copies(self, now: float | None = None) -> list:
        """Copies to send now: all (`now` None), else those held `COPY_DELAY` by `now`."""
        out = []
        for task_id, (frames, when) in list(self._copies.items()):
            if now is not None and now - when < COPY_DELAY:
                break
            if self._copies.pop(task_id, None) is not None:
                self._copied[task_id] = frames
                out.append(frames)
        return out

    def copy_of(self, task_id: str):
        """The controller's copy of a task still out (to send a restarted controller)."""
        held = self._copies.pop(task_id, None)
        if held is not None:
            self._copied[task_id] = held[0]
            return held[0]
        return self._copied.get(task_id)

    def answered(self, task_id: str) -> None:
        """A task's result came (or it was withdrawn): it no longer holds back later
        ones, and the controller needs no copy of it."""
        self._copies.pop(task_id, None)
        self._copied.pop(task_id, None)
        eid = self._engine_of.pop(task_id, None)
        if eid is not None:
            self._out.get(eid, set()).discard(task_id)
            self._via_controller[eid].discard(task_id)

    def forget(self) -> None:
        """Every task was failed (the controller was lost): none holds back later ones."""
        for task_id in list(self._engine_of):
            self.answered(task_id)


class Channel:
    """A thread's own socket to an engine, for a task it waits for (see
    `DirectTasks.channel`), and a pipe that wakes it if the answer comes
    another way instead (through the controller: too large, say)."""

    def __init__(self, sock):
        self.sock = sock
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_lock = threading.Lock()  # no wake-up written once the pipe is closed
        self._quick = True  # the last call waited for here was answered within SPIN
        self._poller = select.poll()
        for fd in (sock.fileno(), self._wake_r):
            self._poller.register(fd, select.POLLIN)

    def wait(self, done, handle) -> bool:
        """Read and `handle` what comes until `done` (an AsyncResult) is; False if
        the engine is gone (the controller says what became of the task)."""
        me = threading.get_ident()

        def wake(_):
            if threading.get_ident() != me:  # answered another way: stop reading
                with self._pipe_lock:  # (perhaps long after a wait cut short)
                    if self._wake_w is not None:
                        os.write(self._wake_w, b"!")

        done.add_done_callback(wake)
        start = time.perf_counter()
        spin_until = start + SPIN if self._quick else 0.0
        while not done.done():
            if time.perf_counter() < spin_until:
                events = self._poller.poll(0)
                if not events:
                    continue
            else:
                events = self._poller.poll()
            for fd, _ in events:
                if fd == self._wake_r:
                    os.read(self._wake_r, 64)
                    continue
                messages, alive = local.receive(self.sock, most=1)  # polled again if not done
                for frames in messages:
                    handle(frames)
                if not alive:
                    return False
        self._quick = time.perf_counter() - start < SPIN
        return True

    def detach(self):
        """The socket, for the I/O thread to read; the rest is closed."""
        with self._pipe_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = None
        return self.sock

    def close(self) -> None:
        self.detach().close()
