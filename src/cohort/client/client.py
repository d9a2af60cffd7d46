"""Client: a connection to a controller, shared by any number of views."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import zmq

from ..errors import ControllerError, TimeoutError
from ..liveness import HeartbeatWatch
from ..profile import ConnectionInfo, resolve_connection_file
from ..wire import Session, drain, recv_frames, shm
from .asyncresult import AsyncResult
from .batching import BatchedFuture, CallTimes
from .direct import DirectTasks
from .sending import Sending
from .lbview import LoadBalancedView
from .view import DirectView

log = logging.getLogger(__name__)


class Client(Sending):
    """Connects to a running cluster's controller.

    ``Client()`` reads the default profile's connection file; pass
    `connection_file` (or `profile`) for another. Index it to get views:
    ``rc[0]``, ``rc[:]``, ``rc[::2]``, ``rc[[1, 3]]``.

    With `stream_output` (the default), what engines print is shown here as it
    arrives, each line prefixed ``[stdout:ID]``; it is kept on the
    AsyncResult either way. If the controller sends no heartbeat for
    `controller_timeout` seconds, waiting results fail with `ControllerError`
    instead of hanging.
    """

    def __init__(self, connection_file=None, profile: str | None = None, timeout: float = 10.0,
                 stream_output: bool = True, controller_timeout: float = 10.0):
        self.connection_file = resolve_connection_file(connection_file, profile)
        self.info = ConnectionInfo.read(self.connection_file)
        self.session = Session(self.info.key)
        self.stream_output = stream_output
        self._ctx = zmq.Context()
        url = self.info.url("client")
        self._send_sock = self._ctx.socket(zmq.DEALER)
        self._send_sock.linger = 1000
        self._send_sock.sndhwm = 0
        self.info.secure_client(self._send_sock)
        self._send_sock.connect(url)
        self._recv_sock = self._ctx.socket(zmq.DEALER)
        self._recv_sock.identity = self.session.id.encode()
        self._recv_sock.linger = 0
        self._recv_sock.rcvhwm = 0
        self.info.secure_client(self._recv_sock)
        self._recv_sock.connect(url)
        # engines on this host answer direct tasks here, past the controller (engine/replies.py)
        self._reply_sock = self._ctx.socket(zmq.PULL)
        self._reply_sock.linger = 0
        self._reply_sock.rcvhwm = 0
        port = self._reply_sock.bind_to_random_port("tcp://127.0.0.1")
        self._reply_to = {"rto": f"tcp://127.0.0.1:{port}", "rh": socket.gethostname()}
        if self.info.curve:  # an encrypted cluster: all its traffic stays encrypted
            self._reply_to = {}
        # ... and tasks for them go there straight (client/direct.py)
        self._direct = DirectTasks(socket.gethostname(), enabled=not self.info.curve)
        self._watch = HeartbeatWatch(self._ctx, self.info.url("hb_ping"), controller_timeout,
                                     self.info)
        self.controller_timeout = controller_timeout
        self._send_lock = threading.Lock()   # held while sending: batches go out in order
        self._queue_lock = threading.Lock()  # guards _outq only, so submitting never waits for a send
        self._outq: list = []  # tasks to send in the I/O thread's next batch
        self._soon: list = []  # callables the I/O thread runs when it next wakes, before sending
        self._call_times = CallTimes()  # seconds per call of functions run (see batching)
        self._wake_r, self._wake_w = os.pipe()  # tells the I/O thread there is something to send
        os.set_blocking(self._wake_r, False)
        self._pending_lock = threading.Lock()  # guards swapping the two dicts below
        self._pending: dict = {}      # task msg id -> (AsyncResult, index)
        self._requests: dict = {}     # control request id -> Future-like AsyncResult
        self._resend: dict = {}       # load-balanced task id -> frames, until its result came
        self._engines: dict = {}
        self.departed: dict = {}      # engine id -> why it left (the last 1,000), while connected
        self._engines_changed = threading.Condition()
        self._quiet = threading.local()  # .on: results submitted by this thread are shown by %px
        self._closed = False
        self.shm = shm.enable(self.info.cluster_id, self.info.shm_token)
        self._connect(timeout)
        self._thread = threading.Thread(target=self._io_loop, name="cohort-client-io", daemon=True)
        self._thread.start()

    def _connect(self, timeout: float) -> None:
        frames = self.session.build("connect", {})
        self._recv_sock.send_multipart(frames)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._recv_sock.poll(int(left * 1000)):
                self._ctx.destroy(linger=0)
                raise ControllerError(
                    f"no controller answered at {self.info.url('client')} within {timeout:g} s "
                    f"(connection file {self.connection_file}): is the cluster running? "
                    f"`cohort status` tells")
            msgs = self.session.receive_all(recv_frames(self._recv_sock))
            for i, msg in enumerate(msgs):
                if msg.header["t"] == "reply":
                    for e in msg.content["engines"]:
                        self._engines[e["id"]] = e
                        self._direct.open(e)
                    self._watch.know(msg.content.get("instance"))
                    for later in msgs[i + 1:]:  # batched with the reply (an engine that
                        self._handle(later)     # joined just after it): not to be lost
                    return

    # --- I/O thread ---------------------------------------------------------
    def _io_loop(self) -> None:
        sock, watch, direct = self._recv_sock, self._watch, self._reply_sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(direct, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_watch = 0.0
        engines: set = set()  # local sockets to engines (client/direct.py) being polled
        while not self._closed:
            try:
                if self._direct.changed:
                    engines = self._direct.repoll(poller, engines)
                events = dict(poller.poll(20 if self._direct.has_copies() else 100))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if self._soon:
                    self._run_soon()
                if self._outq:
                    self._flush()
                now = time.monotonic()
                if now >= next_watch:  # the controller's pings: read a few times a second
                    next_watch = now + 0.1
                    if watch.check():
                        self._controller_lost()
                        watch.reset()
                    if watch.restarted:
                        watch.restarted = False
                        self._resume()
                received = list(drain(direct, 64)) if direct in events else []
                for fd in engines.intersection(events):
                    messages, alive = self._direct.receive(fd)
                    received.extend(messages)
                    if not alive:  # the engine is gone: its tasks take the usual way
                        with self._send_lock:
                            self._direct.close(self._direct.engine_at(fd))
                if sock in events:
                    received.extend(drain(sock, 64))
            except zmq.ZMQError:
                return
            for frames in received:
                self._handle_all(frames)
            if self._direct.has_copies():  # of tasks still out after a while
                with self._send_lock:
                    copies = self._direct.due_copies(time.monotonic())
                    if copies:
                        self._send_copies(copies)

    def _call_soon(self, callback) -> None:
        """Run `callback` on the I/O thread when it next wakes, before it sends."""
        with self._queue_lock:
            if self._closed:
                raise ControllerError("this client is closed")
            first = not self._soon
            self._soon.append(callback)
        if first:
            os.write(self._wake_w, b"!")

    def _run_soon(self) -> None:
        with self._queue_lock:
            soon, self._soon = self._soon, []
        for callback in soon:
            try:
                callback()
            except Exception:
                log.exception("error in a deferred send")

    def _resume(self) -> None:
        """A new controller took over: connect again and ask about pending tasks."""
        log.warning("the controller restarted; reconnecting (%d tasks pending)", len(self._pending))
        self._recv_sock.send_multipart(self.session.build("connect", {}))
        self._recv_sock.send_multipart(self.session.build("resume", {"ids": list(self._pending)}))

    def _resumed(self, unknown: list) -> None:
        """Tasks the restarted controller never recorded: send again, or fail them."""
        for tid in unknown:
            frames = self._resend.get(tid)
            if frames is not None:
                self._send(frames)
                continue
            frames = self._direct.copy_of(tid)
            if frames is not None:  # sent straight to its engine, which may still run it
                with self._send_lock:
                    self._send_copies([frames])
                continue
            entry = self._pending.pop(tid, None)
            if entry is not None:
                entry[0]._deliver(entry[1], {"status": "error"}, {
                    "ename": "ControllerError",
                    "evalue": f"task {tid} was lost when the controller restarted before "
                              f"recording it; submit it again"}, ())

    def _receive_until(self, fut, timeout: float) -> None:
        """On the I/O thread (a done-callback making a request): handle messages
        here until `fut` is answered, since no other thread will."""
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            if not self._recv_sock.poll(100):
                continue
            self._handle_all(recv_frames(self._recv_sock))

    def _handle_all(self, frames) -> None:
        """Handle each valid message of what was received (one message or a batch)."""
        for msg in self.session.receive_all(frames):
            try:
                self._handle(msg)
            except Exception:
                log.exception("error handling a message from the controller")

    def _handle(self, msg) -> None:
        hdr = msg.header
        t = hdr["t"]
        if t == "result":
            self._resend.pop(hdr["parent"], None)
            self._direct.answered(hdr["parent"])
            entry = self._pending.pop(hdr["parent"], None)
            if entry is None:  # aborted or failed meanwhile: release what it carried
                shm.discard(hdr)
                return
            ar, i = entry
            try:
                objects = msg.objects()
            except Exception as e:  # the value would not unpickle here
                msg.content.update(status="error", ename=type(e).__name__,
                                   evalue=f"the result could not be loaded on the client: {e}")
                hdr["status"] = "error"
                objects = ()
            ar._deliver(i, hdr, msg.content, objects)
        elif t == "stream":
            entry = self._pending.get(hdr["parent"])
            if entry is not None:
                entry[0]._stream(entry[1], msg.content["name"], msg.content["text"])
            if self.stream_output and not (entry is not None and entry[0].quiet):
                self._show(hdr.get("e"), msg.content["name"], msg.content["text"])
        elif t == "display_data":  # rich output of engine code: kept on its result
            entry = self._pending.get(hdr["parent"])
            if entry is not None:
                entry[0]._display(entry[1], msg.content)
        elif t == "resumed":
            self._resumed(msg.content.get("unknown", ()))
        elif t == "retrying":
            entry = self._pending.get(msg.content.get("id"))
            if entry is not None:
                entry[0]._retrying()
            log.info("task %s failed (%s); retrying, attempt %s", msg.content.get("id"),
                     msg.content.get("why"), msg.content.get("attempt"))
        elif t == "reply":
            fut = self._requests.pop(hdr["parent"], None)
            if fut is not None:
                fut.set_result(msg.content)
            elif "engines" in msg.content and "cluster_id" in msg.content:  # connected again
                with self._engines_changed:
                    self._engines = {e["id"]: e for e in msg.content["engines"]}
                    self._engines_changed.notify_all()
                with self._send_lock:
                    for e in msg.content["engines"]:
                        self._direct.open(e)
        elif t == "engine_joined":
            with self._engines_changed:
                self._engines[msg.content["id"]] = msg.content
                self._engines_changed.notify_all()
            with self._send_lock:
                self._direct.open(msg.content)
        elif t == "engine_left":
            with self._send_lock:
                self._direct.close(msg.content["id"])
            with self._engines_changed:
                self._engines.pop(msg.content["id"], None)
                if len(self.departed) >= 1000:
                    self.departed.pop(next(iter(self.departed)))
                self.departed[msg.content["id"]] = msg.content.get("why") or "left"
                self._engines_changed.notify_all()

    def _controller_lost(self) -> None:
        """No heartbeat from the controller: fail what waits on it rather than hang."""
        if self._pending or self._requests:
            why = (f"the controller at {self.info.url('client')} sent no heartbeat for "
                   f"{self.controller_timeout:g} s; the task's outcome is unknown")
            log.error("%s", why)
            self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        """Fail every result and request still waiting, with ControllerError(why)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            requests, self._requests = self._requests, {}
            self._resend = {}
            self._direct.forget()
        for ar, i in pending.values():
            ar._deliver(i, {"status": "error"}, {"ename": "ControllerError", "evalue": why}, ())
        for fut in requests.values():
            if not fut.done():
                fut.set_result({"error": why})

    @staticmethod
    def _show(eid, name: str, text: str) -> None:
        out = sys.stderr if name == "stderr" else sys.stdout
        prefix = f"[{name}:{eid}] "
        body = text[:-1] if text.endswith("\n") else text
        out.write(prefix + body.replace("\n", "\n" + prefix) + "\n")

    def _request(self, msg_type: str, content=None, timeout: float = 10.0) -> dict:
        from concurrent.futures import Future
        fut: Future = Future()
        mid = self.session.msg_id()
        with self._pending_lock:
            self._requests[mid] = fut
        self._send(self.session.build(msg_type, content, header={"id": mid}))
        if threading.current_thread() is self._thread:  # a callback: we are the receiver
            self._receive_until(fut, timeout)
        try:
            reply = fut.result(timeout)
        except Exception:
            raise TimeoutError(f"the controller did not answer {msg_type!r} within {timeout:g} s") \
                from None
        if "error" in reply:
            raise ControllerError(reply["error"])
        return reply

    # --- the user's API -------------------------------------------------------
    @property
    def ids(self) -> list:
        """Ids of the engines connected now, sorted."""
        return sorted(self._engines)

    @property
    def engines(self) -> dict:
        """{id: info} for the engines connected now (host, pid, state at join)."""
        return dict(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def __getitem__(self, key) -> DirectView:
        if isinstance(key, int):
            return DirectView(self, self.ids[key] if key < 0 else key)  # rc[-1]: the last engine
        if isinstance(key, slice):
            return DirectView(self, self.ids[key])
        if isinstance(key, (list, tuple)):
            return DirectView(self, list(key))
        raise TypeError(f"index engines with an int, a slice or a list, not {type(key).__name__}")

    def load_balanced_view(self, policy=None, block: bool = False, **flags) -> LoadBalancedView:
        """A view that sends each task to the least-loaded engine, under a policy.

        ``lv = rc.load_balanced_view(retries=2, timeout=60)``; see `cohort.Policy`.
        """
        return LoadBalancedView(self, policy, block=block, **flags)

    def executor(self, policy=None, **flags):
        """A `concurrent.futures.Executor` on the load-balanced view.

        ``with rc.executor() as ex: ex.submit(f, x)`` runs code written for
        `ProcessPoolExecutor` unchanged; policy flags apply to every task.
        """
        return self.load_balanced_view(policy, **flags).executor()

    def direct_view(self, targets="all", block: bool = False) -> DirectView:
        """A view; ``"all"`` follows the engines connected at each call."""
        return DirectView(self, targets, block=block)

    def wait_for_engines(self, n: int, timeout: float | None = 60.0) -> list:
        """Wait until at least `n` engines are connected; return their ids."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._engines_changed:
            while len(self._engines) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"only {len(self._engines)} of {n} engines connected "
                                       f"within {timeout:g} s")
                self._engines_changed.wait(left if left is None else min(left, 1.0))
        return self.ids

    def _target_list(self, targets) -> list | None:
        if targets is None or targets == "all":
            return None
        if isinstance(targets, int):
            return [targets]
        return list(targets)

    def interrupt(self, targets=None) -> list:
        """Raise KeyboardInterrupt in the code running on `targets` (default: all)."""
        return self._request("interrupt", {"targets": self._target_list(targets)})["interrupted"]

    def abort(self, jobs=None, targets=None) -> int:
        """Drop this client's tasks that have not started yet; their results raise TaskAborted.

        `jobs`: AsyncResults, executor futures or task ids (default: all of this
        client's tasks on `targets`). A call an executor sent in a batch is
        aborted with the other calls of its batch.
        """
        self._run_soon()  # calls waiting to be sent in a batch go first: the abort finds them
        ids = None
        if jobs is not None:
            ids = []
            for j in jobs if isinstance(jobs, (list, tuple, set)) else [jobs]:
                if isinstance(j, BatchedFuture):  # its batch, all its calls
                    if not isinstance(j.batch, AsyncResult):  # not sent yet: cancelled instead
                        j.cancel()
                        continue
                    j = j.batch
                ids.extend(j.msg_ids if isinstance(j, AsyncResult) else [j])
        reply = self._request("abort", {"ids": ids, "targets": self._target_list(targets)})
        return reply["aborted"] + reply["asked"]

    def _cancel(self, msg_ids) -> bool:
        """Drop these tasks if all still wait at the controller; True if so."""
        if not self._request("cancel", {"ids": list(msg_ids)})["cancelled"]:
            return False
        self._unpend(msg_ids)
        return True

    def _started(self, msg_ids) -> bool:
        """True if any of these tasks was sent to an engine and is not done;
        False also when the controller does not answer."""
        try:
            return bool(self._request("started", {"ids": list(msg_ids)})["started"])
        except (TimeoutError, ControllerError):
            return False

    def queue_status(self, targets=None) -> dict:
        """{engine id: {"queue", "inflight", "completed", "failed"}}."""
        st = self._request("queue_status", {"targets": self._target_list(targets)})["status"]
        return {int(k): v for k, v in st.items()}

    def get_result(self, task_id, block: bool = False, timeout: float | None = None):
        """The result of any task by id (``ar.msg_ids``), from the task database.

        Works from any client, after the submitting client left, and after the
        controller restarted. Returns an AsyncResult (the value with `block`).
        """
        if isinstance(task_id, AsyncResult):
            (task_id,) = task_id.msg_ids
        if not isinstance(task_id, str):
            raise TypeError(f"a task id is a str (see ar.msg_ids), not {type(task_id).__name__}")
        with self._pending_lock:
            entry = self._pending.get(task_id)
            if entry is None:
                ar = AsyncResult(self, [task_id], [None], "result", single=True)
                self._pending[task_id] = (ar, 0)
            else:
                ar = entry[0]
        if entry is None:
            self._send(self.session.build("get_result", {"id": task_id}))
        return ar.get(timeout) if block else ar

    def tasks(self, state=None, client=None, engine=None, group=None, ename=None, since=None,
              until=None, ids=None, limit: int | None = 100, newest_first: bool = True) -> list:
        """Task records from the task database, newest first: dicts with id,
        state, engine, submitted/started/completed (unix times), attempts,
        status, ename, evalue, stdout, stderr... Filters combine; `state` may
        be a list (queued, running, done, failed, cancelled, aborted)."""
        q = {k: v for k, v in dict(state=state, client=client, engine=engine, group=group,
                                   ename=ename, since=since, until=until, ids=ids).items()
             if v is not None}
        q.update(limit=limit, newest_first=newest_first)
        return self._request("tasks", q)["tasks"]

    def purge_tasks(self, older_than: float | None = None, keep_last: int | None = None) -> int:
        """Delete finished task records completed more than `older_than` seconds ago
        and/or all but the newest `keep_last`; return how many. Queued and
        running tasks are never purged."""
        return self._request("purge_tasks", {"older_than": older_than,
                                             "keep_last": keep_last})["purged"]

    def status(self, timeout: float = 10.0) -> dict:
        """The controller's view: engines, clients, uptime."""
        return self._request("status", timeout=timeout)

    def shutdown(self, targets=None, controller: bool = False, timeout: float = 10.0) -> dict:
        """Stop engines (default: all); with `controller`, the controller too."""
        return self._request("shutdown", {"targets": self._target_list(targets),
                                          "controller": controller}, timeout=timeout)

    def close(self) -> None:
        """Disconnect; running tasks go on, their results are dropped."""
        if self._closed:
            return
        try:
            self._send(self.session.build("disconnect", {}))
        except Exception:
            pass
        with self._queue_lock:  # no deferred send is queued after the last run below
            self._closed = True
        self._thread.join(5.0)
        self._fail_all("the client was closed before the result arrived")
        self._run_soon()  # deferred sends fail now ("this client is closed"), nothing hangs
        if not self._thread.is_alive():  # else leave the sockets to the exiting thread
            with self._send_lock:
                unread = self._direct.close_all()
            for frames in unread:  # results nobody will map: release their shared memory
                for msg in self.session.receive_all(frames):
                    shm.discard(msg.header)
            self._ctx.destroy(linger=200)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cohort.Client {len(self._engines)} engines {self.ids}, {self.connection_file}>"

    def _repr_html_(self) -> str:
        from .reprs import client_html
        return client_html(self)

    def activate(self, targets="all", suffix: str = ""):
        """Register the ``%px`` magics (``%px{suffix}``, ``%%px{suffix}``,
        ``%pxresult{suffix}``, ``%autopx{suffix}``, ``%pxconfig{suffix}``) in
        the running IPython, bound to a view on `targets`; return that view.
        See docs/interactive.md."""
        from .magics import activate
        return activate(self.direct_view(targets), suffix)

