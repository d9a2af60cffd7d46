"""The engine: one live Python namespace serving tasks from the controller.

Threads:

* main — receives tasks in order and runs them (user code runs here, so
  ``KeyboardInterrupt`` from `interrupt` lands where it should);
* control — answers ``interrupt``, ``abort`` and ``shutdown`` at once, even
  while the main thread is busy, and watches the controller's heartbeat;
* heart — a zmq device echoing heartbeats in C, off the GIL;
* output — flushes captured stdout/stderr while a task runs;
* results — sends held results of short tasks after at most `HOLD` seconds.

All outgoing messages share one socket under a lock, so a task's output
always reaches the controller before its result. Tasks arrive in batches
when they are short; while more of a batch waits to run, results are held
and go back together (see `_hold`), so a short task costs the cluster a
fraction of a message each way.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import types
import uuid as uuidlib
from collections import deque

import zmq
from zmq.devices import ThreadDevice

from ..liveness import HeartbeatWatch
from ..procinfo import proc_starttime
from ..profile import ConnectionInfo
from .. import wire as wire_pkg
from ..wire import Session, deserialize, drain, shm
from ..store.ref import Ref, resolve, store_value
from ..wire.serialize import Serialized, serialize, stateless
from . import display as display_mod
from .capture import OutputCapture
from .outgoing import Outgoing
from .replies import DirectInbox, DirectReplies

log = logging.getLogger(__name__)
_HERE = os.path.dirname(os.path.abspath(__file__))
_OWN_FRAMES = (_HERE, os.path.join(os.path.dirname(_HERE), "_remote.py"))
DIRECT_WAIT = 2.0  # seconds a task waits for the tasks its client sent here before it


class EngineStartError(Exception):
    pass


class Engine(Outgoing):
    """Connects to a controller, registers, then serves tasks until told to stop."""

    def __init__(self, info: ConnectionInfo, controller_timeout: float = 30.0,
                 register_timeout: float = 30.0, mpi=None):
        self.info = info
        self.mpi = mpi  # an MPIWorld when started under mpiexec with --mpi
        self.session = Session(info.key)
        self.uuid = uuidlib.uuid4().hex
        self.id: int | None = None
        self.controller_timeout = controller_timeout
        self.register_timeout = register_timeout
        self.ns: dict = {"__name__": "__main__", "__builtins__": builtins,
                         "display": display_mod.display}
        self.ctx = zmq.Context()
        self._out_lock = threading.Lock()
        self._task_lock = threading.Lock()  # guards current/aborted against the control thread
        self.current: str | None = None
        self._in_user = False
        self.aborted: set = set()
        self._finished: deque = deque(maxlen=64)  # results sent; an abort cannot claim them
        self._stop = threading.Event()
        self._cell = 0
        self._functions: dict = {}  # pickled bytes -> function
        self._recent: deque = deque(maxlen=32)  # last results sent: again after a controller restart
        self.shm = False
        self._store = None  # opened on the first result large enough to go there
        self._inbox: deque = deque()  # received tasks not run yet
        self._held: list = []         # results not sent yet (frame lists), under _out_lock
        self._waited = 0              # how many of them go to their clients through the controller
        self._lazy = True             # all of them copies that may wait (see Outgoing.send)
        self._flush_at = math.inf     # when the result flusher sends them (monotonic)
        self._held_event = threading.Event()

    # --- connection --------------------------------------------------------
    def _dealer(self, ident: str, url: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.identity = ident.encode()
        s.linger = 1000
        s.sndhwm = 0
        s.rcvhwm = 0
        self.info.secure_client(s)
        s.connect(url)
        return s

    def connect(self) -> None:
        info = self.info
        url = info.url("engine")
        self.task_sock = self._dealer(self.uuid, url)
        self.out_sock = self._dealer(self.uuid + ".o", url)
        self.replies = DirectReplies(self.ctx, socket.gethostname())
        self.direct = DirectInbox(self.session, info, self._out_lock)
        self.ctl_sock = self._dealer(self.uuid + ".c", url)
        self.watch = HeartbeatWatch(self.ctx, info.url("hb_ping"), self.controller_timeout, info)
        # the control socket first, so the controller can reach it once we are registered
        self._handshake(self.ctl_sock, "hello", {}, "welcome")
        self.shm = shm.enable(info.cluster_id, info.shm_token)
        if self.mpi is not None:  # ids follow ranks: register one rank at a time
            self.mpi.in_rank_order(self._register)
        else:
            self._register()
        log.info("registered as engine %d with controller at %s", self.id, info.url("engine"))

    def _register(self) -> None:
        info = self.info
        reply = self._handshake(self.task_sock, "register", self._registration(), "registered")
        self.id = reply.content["id"]
        self.watch.know(reply.content.get("instance"))
        # heartbeats only now: before registering, our pongs would be a stranger's
        self.heart = ThreadDevice(zmq.FORWARDER, zmq.SUB, zmq.DEALER)
        self.heart.setsockopt_in(zmq.SUBSCRIBE, b"")
        self.heart.connect_in(info.url("hb_ping"))
        self.heart.setsockopt_out(zmq.IDENTITY, self.uuid.encode())
        for opt, value in info.client_options():
            self.heart.setsockopt_in(opt, value)
            self.heart.setsockopt_out(opt, value)
        self.heart.connect_out(info.url("hb_pong"))
        self.heart.daemon = True
        self.heart.start()

    def _registration(self) -> dict:
        reg = {"host": socket.gethostname(), "pid": os.getpid(),
               "starttime": proc_starttime(os.getpid()), "python": sys.version.split()[0],
               "cwd": os.getcwd(), "shm": self.shm}
        if self.direct.address:  # clients on this host may send their tasks here
            reg["tasks"] = self.direct.address
        if self.mpi is not None:  # a lone replacement could not join the world: no restart
            reg["mpi"] = self.mpi.describe()
        elif os.environ.get("COHORT_RESTART_ENGINE") == "1":  # started by a cluster: replace if it dies
            reg["restart"] = [sys.executable, "-m", "cohort", *sys.argv[1:]]
        if self.id is not None:
            reg["resume"] = self.id
        return reg

    def _rejoin(self) -> None:
        """A new controller took over (a restart): register again, keeping our id,
        and send our last results again in case the old one never recorded them."""
        log.warning("the controller restarted; registering again as engine %s", self.id)
        self.ctl_sock.send_multipart(self.session.build("register", self._registration()))
        with self._out_lock:
            for frames in list(self._recent):
                self.out_sock.send_multipart(frames, copy=False)

    def _handshake(self, sock, msg_type, content, expect):
        deadline = time.monotonic() + self.register_timeout
        while time.monotonic() < deadline:
            sock.send_multipart(self.session.build(msg_type, content))
            if sock.poll(1000):
                msgs = self.session.receive_all(sock.recv_multipart(copy=False))
                for i, msg in enumerate(msgs):
                    if msg.header["t"] == expect:
                        if sock is self.task_sock:  # tasks sent with the reply run next
                            self._inbox.extend(msgs[i + 1:])
                        return msg
        raise EngineStartError(
            f"no controller answered at {self.info.url('engine')} within "
            f"{self.register_timeout:g} s: is it running, and is this the right connection file?")

    # --- main loop ---------------------------------------------------------
    def serve(self) -> None:
        self.capture = OutputCapture(self._send_stream)
        display_mod.set_engine(self)
        display_mod.install_matplotlib_hook()  # figures go to the client
        sys.stdout, sys.stderr = self.capture.stdout, self.capture.stderr
        self._main_ident = threading.get_ident()
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self._ctl = threading.Thread(target=self._control_loop, name="cohort-control", daemon=True)
        self._ctl.start()
        threading.Thread(target=self._result_flusher, name="cohort-results", daemon=True).start()
        poller = zmq.Poller()
        poller.register(self.task_sock, zmq.POLLIN)
        self.direct.watch(poller)
        inbox = self._inbox
        try:
            while not self._stop.is_set():
                if not inbox:
                    try:
                        self.flush_results(idle=True)
                        ready = poller.poll(200)
                        if not ready:
                            continue
                        self._receive_tasks([sock for sock, _ in ready])
                    except KeyboardInterrupt:  # an interrupt that arrived between tasks
                        pass
                    continue
                msg = inbox.popleft()
                try:
                    self.run_task(msg)
                except KeyboardInterrupt:
                    log.info("interrupt arrived after the task finished; ignored")
                except Exception:  # the engine's own failure: report it, keep serving
                    log.exception("failed to run or answer %r", msg)
        finally:
            self.close()

    def _receive_tasks(self, ready) -> None:
        """Take every task waiting on the `ready` sockets (one batch or many) into the
        inbox: those clients sent here themselves, then those the controller sent."""
        fds = [s for s in ready if isinstance(s, int)]
        if fds:
            self._inbox.extend(self.direct.take(fds))
        if self.task_sock in ready:
            for frames in drain(self.task_sock, 64):
                for msg in self.session.receive_all(frames):
                    after = msg.header.get("after_dq")
                    if after:  # its client sent tasks here directly before it: those first
                        self._inbox.extend(self.direct.wait_for(msg.header.get("s"), after,
                                                                DIRECT_WAIT))
                    self._inbox.append(msg)

    def run_task(self, msg) -> None:
        hdr = msg.header
        if hdr["t"] == "registered":
            return
        if hdr["t"] == "sync":  # everything sent before it has run: say so
            return self.send("synced", {}, (), {"e": self.id})
        task_id = hdr["id"]
        with self._task_lock:
            if task_id in self.aborted:
                self.aborted.discard(task_id)
                shm.discard(hdr)
                return
            self.current = task_id
        if "dt" in hdr:  # sent here by its client: the controller may learn of it by its result
            parent = {"parent": task_id, "c": hdr["s"], "e": self.id, "dt": 1, "k": hdr["t"],
                      "sub": hdr.get("ts")}
        else:
            parent = {"parent": task_id, "c": hdr["s"], "e": self.id}
        to = hdr.get("rto")
        if to is None or isinstance(to, str):  # came through the controller
            with self._out_lock:  # its client may get its output directly
                to = self.replies.route(hdr, busy=bool(self._inbox))
        elif to.fileno() < 0:  # over a local socket, since closed: the usual way
            to = None
        if to is not None:
            parent["rto"] = to
        self.capture.begin(parent)
        started = time.time()
        content, objects = {"status": "ok"}, ()
        try:
            self._in_user = True
            t = hdr["t"]
            if t == "apply":
                objects = (self._apply_each(msg) if hdr.get("each") else self._apply(msg),)
            elif t == "execute":
                value = self.execute(msg.content["code"], msg.content.get("filename"))
                display_mod.after_execute(value)  # open figures, a rich last value
                if value is not None:
                    content["execute_result"] = display_mod.safe_repr(value)
                content["execution_count"] = self._cell
            elif t == "push":
                self.ns.update({k: resolve(v) for k, v in msg.objects()[0].items()})
            elif t == "pull":
                objects = (self._pull(msg.content["names"]),)
            else:
                raise ValueError(f"unknown task type {t!r}")
            if objects and self.info.store_threshold and not hdr.get("each"):
                objects = (self._maybe_store(objects[0]),)
            self._in_user = False
        except BaseException as e:  # user errors, KeyboardInterrupt and SystemExit alike
            self._in_user = False
            content, objects = self._error_content(e), ()
        self.capture.end()
        header = dict(parent, status=content["status"], started=started, completed=time.time())
        shm_ok = self.shm and hdr.get("rshm", False)
        try:
            try:
                self.send("result", content, objects, header, shm_ok=shm_ok)
            except Exception:
                if not (objects and hdr.get("each")):
                    raise
                # one call's value would not pickle: that call fails, not its whole batch
                self.send("result", content, (self._each_sendable(objects[0]),), header,
                          shm_ok=shm_ok)
        except Exception as e:  # the result would not serialize
            err = self._error_content(e)
            err["evalue"] = f"the result could not be sent back: {err['evalue']}"
            header["status"] = "error"
            self.send("result", err, (), header)
        # only now: an abort racing with this task must not claim it (its result is sent)
        with self._task_lock:
            self.current = None
            self._finished.append(task_id)

    def _maybe_store(self, value):
        """A result larger than the cluster's threshold goes to the store; its Ref comes back."""
        try:
            frames = serialize(value)
        except Exception:  # reported by send() as a result that could not be sent back
            return value
        size = len(frames[0]) if len(frames) == 1 else sum(memoryview(f).nbytes for f in frames)
        if size <= self.info.store_threshold:
            return Serialized(frames)
        from .. import store
        if self._store is None:
            self._store = store.open(self.info.store or None)
        ref = store_value(value, self._store, {"engine": self.id, "task": self.current},
                          frames=frames)
        log.info("result of task %s (%d bytes) written to the store as %s", self.current, size,
                 ref.oid)
        return ref

    def _load_function(self, frames):
        """Unpickle a shipped function, reusing the one decoded from the same bytes."""
        if len(frames) != 1:
            return deserialize(frames)
        key = bytes(frames[0])
        f = self._functions.get(key)
        if f is None:
            f = deserialize(frames)
            if stateless(f):  # a closure or mutable default would carry state across calls
                if len(self._functions) >= 512:
                    self._functions.clear()
                self._functions[key] = f
        return f

    def _apply(self, msg):
        fn_frames, arg_frames = msg.object_frames()
        args, kwargs = deserialize(arg_frames)
        return _call(self._function(fn_frames), args, kwargs)

    def _apply_each(self, msg) -> list:
        """A batch of calls of one function (quick `Executor.submit`s sent together;
        the objects: the function, then each call's (args, kwargs)): each call's
        outcome on its own, ``(True, value)`` or ``(False, error content)``."""
        fn_frames, *calls = msg.object_frames()
        f = self._function(fn_frames)
        out = []
        for frames in calls:
            try:
                args, kwargs = deserialize(frames)
                out.append((True, _call(f, args, kwargs)))
            except (Exception, SystemExit) as e:  # that call's error; an interrupt stops them all
                out.append((False, self._error_content(e)))
        return out

    def _each_sendable(self, outcomes: list) -> list:
        """A batch's outcomes whose values that would not pickle are each that call's error."""
        out = []
        for ok, value in outcomes:
            if ok:
                try:
                    serialize(value)
                except Exception as e:
                    err = self._error_content(e)
                    err["evalue"] = f"the result could not be sent back: {err['evalue']}"
                    ok, value = False, err
            out.append((ok, value))
        return out

    def _function(self, fn_frames):
        f = self._load_function(fn_frames)
        if isinstance(f, types.FunctionType) and (f.__module__ == "__main__"
                                                  or f.__module__ not in sys.modules):
            # defined interactively (a notebook, a script, a module this engine lacks):
            # it sees the engine's namespace, the client's globals filling gaps
            g = dict(f.__globals__)
            g.update(self.ns)
            shipped = f
            f = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
            f.__kwdefaults__ = shipped.__kwdefaults__
        return f

    def _pull(self, names):
        single = isinstance(names, str)
        values = []
        for n in ([names] if single else names):
            try:
                values.append(self.ns[n])
            except KeyError:
                raise NameError(f"name {n!r} is not defined on engine {self.id}") from None
        return values[0] if single else values

    def execute(self, code: str, filename: str | None = None):
        """Run a code string in the namespace; return the last expression's value."""
        self._cell += 1
        filename = filename or f"<cohort-{self.id}-{self._cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.ns)
        if last is not None:
            return eval(compile(last, filename, "eval"), self.ns)
        return None

    def _error_content(self, e: BaseException) -> dict:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_FRAMES):
            tb = tb.tb_next  # hide the engine's own frames (and map's chunk runner)
        try:
            te = traceback.TracebackException(type(e), e, tb)
            while len(te.stack) > 1 and te.stack[-1].filename.startswith(_HERE):
                te.stack.pop()  # nor the interrupt handler the KeyboardInterrupt came from
            text = "".join(te.format())
        except Exception as fmt_error:  # an exception whose __str__ itself raises
            text = f"{type(e).__name__}: <traceback unavailable: {fmt_error!r}>"
        return {"status": "error", "ename": type(e).__name__, "evalue": _safe_str(e),
                "traceback": text, "engine": self.id}

    def _send_stream(self, name: str, text: str, parent: dict) -> None:
        self.send("stream", {"name": name, "text": text}, (), parent)

    # --- control thread ----------------------------------------------------
    def _control_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ctl_sock, zmq.POLLIN)
        poller.register(self.watch.socket, zmq.POLLIN)
        self.watch.reset()
        while not self._stop.is_set():
            try:
                events = dict(poller.poll(500))
            except zmq.ZMQError:  # sockets closed at exit
                return
            if self.watch.restarted:
                self.watch.restarted = False
                self._rejoin()
            if self.watch.silent(events):
                log.error("no heartbeat from the controller for %g s; engine %s exits",
                          self.controller_timeout, self.id)
                self._shutdown()
                return
            if self.ctl_sock in events:
                try:
                    frames = self.ctl_sock.recv_multipart(copy=False)
                except zmq.ZMQError:
                    return
                for msg in self.session.receive_all(frames):
                    t = msg.header["t"]
                    if t == "interrupt":
                        self.interrupt(msg.content.get("ids"))
                    elif t == "abort":
                        self._abort(msg.content.get("ids", ()))
                    elif t == "shutdown":
                        self._shutdown()
                        return

    def _on_sigint(self, signum, frame) -> None:
        """Raise KeyboardInterrupt only inside a task's code, never in the engine's own.

        If it lands while the engine is sending (output flushed from a print,
        say), a half-sent message would swallow the result: the interrupt is
        sent again shortly instead, to land in the task's code.
        """
        if not self._in_user or frame is None:
            return
        f = frame
        while f is not None and f.f_code is not _RUN_TASK_CODE:
            if f.f_code is _SEND_CODE or f.f_code.co_filename.startswith(_CRITICAL):
                t = threading.Timer(0.02, self.interrupt, ([self.current],))
                t.daemon = True
                t.start()
                return
            f = f.f_back
        if f is not None and frame.f_code is not _RUN_TASK_CODE:
            raise KeyboardInterrupt

    def interrupt(self, ids=None) -> None:
        """Interrupt the running task (only if it is one of `ids`, when given)."""
        with self._task_lock:
            busy = self.current is not None and (ids is None or self.current in ids)
        if busy:
            signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _abort(self, ids) -> None:
        """Skip tasks sent to us that have not started (the controller knows which were sent)."""
        done = []
        with self._task_lock:
            for i in ids:
                if i != self.current and i not in self._finished:
                    self.aborted.add(i)
                    done.append(i)
        # a task that already finished is reported by its result first; the controller ignores the rest
        self.send("aborted", {"ids": done}, (), {"e": self.id})

    def _shutdown(self) -> None:
        self._stop.set()
        self.interrupt()
        timer = threading.Timer(5.0, os._exit, (0,))
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        try:
            self.capture.flush()
            self.capture.close()
            self.flush_results()
            if self.id is not None:
                self.send("unregister", {}, (), {"e": self.id})
        except Exception:
            pass
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        replies = getattr(self, "replies", None)
        if replies is not None:
            with self._out_lock:
                replies.close()
                self.direct.close()
        ctl = getattr(self, "_ctl", None)
        if ctl is not None:
            ctl.join(1.0)  # it polls every 0.5 s and sees the stop flag
        self.ctx.destroy(linger=1000)


_RUN_TASK_CODE = Engine.run_task.__code__
_SEND_CODE = Engine.send.__code__
# code an interrupt must not break into: the wire, output capture, pyzmq
_CRITICAL = tuple(os.path.dirname(os.path.abspath(m.__file__)) for m in (zmq, wire_pkg)) + tuple(
    os.path.join(_HERE, name) for name in ("capture.py", "outgoing.py", "replies.py"))


def _safe_str(value) -> str:
    try:
        return str(value)
    except Exception as e:
        return f"<str failed: {e!r}>"


def run_engine(connection_file, controller_timeout: float = 30.0, mpi: bool = False) -> int:
    """Entry point of `cohort engine`."""
    info = ConnectionInfo.read(connection_file)
    world = None
    if mpi:
        from .mpi import MPIWorld
        world = MPIWorld()
    engine = Engine(info, controller_timeout=controller_timeout, mpi=world)
    try:
        engine.connect()
    except EngineStartError as e:
        log.error("%s", e)
        engine.ctx.destroy(linger=0)
        return 1
    engine.serve()
    return 0


def _call(f, args, kwargs):
    """``f(*args, **kwargs)``, store references among the arguments fetched here."""
    if Ref in map(type, args) or Ref in map(type, kwargs.values()):  # not by the client
        args = [resolve(a) for a in args]
        kwargs = {k: resolve(v) for k, v in kwargs.items()}
    return f(*args, **kwargs)
