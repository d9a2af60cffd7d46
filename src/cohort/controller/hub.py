"""The controller process: binds the sockets and runs the event loop.

Sockets (all bound by the controller; engines and clients connect):

* ``client``  ROUTER — requests from clients; replies, results and output to them.
  A client receives on a socket whose identity is its session id.
* ``engine``  ROUTER — each engine connects three DEALERs: ``<uuid>`` (tasks in),
  ``<uuid>.o`` (results and output out) and ``<uuid>.c`` (control).
* ``hb_ping`` PUB and ``hb_pong`` ROUTER — heartbeats, echoed by each engine's
  zmq device thread (off the GIL, so a busy engine still answers).

Decisions live in `HubState`; this module only moves messages. What clients
ask for is answered in `requests.py`, a restart is recovered in `recovery.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path

import zmq

from ..procinfo import proc_starttime
from ..profile import ConnectionInfo
from ..wire import Outbox, Session, drain, shm
from .records import TaskLog
from .recovery import RestartRecovery
from .requests import ClientRequests
from .state import HubState, TaskRecord

log = logging.getLogger(__name__)

DRAIN = 256  # messages handled per socket per wake-up before polling again
DONE_FIRST_KEEP = 30.0  # seconds a task recorded from its result ignores its client's copy


class Controller(RestartRecovery, ClientRequests):
    """Routes work between clients and engines and watches engine heartbeats."""

    def __init__(self, info: ConnectionInfo, connection_file=None, hb_period: float = 0.5,
                 hb_timeout: float = 2.5, window: int = 8, lb_window: int = 2,
                 kill_grace: float = 3.0, db: str | None = None):
        self.info = info
        self.connection_file = connection_file
        self.session = Session(info.key, session_id="controller")
        self.state = HubState(window=window, lb_window=lb_window, kill_grace=kill_grace)
        self.hb_period = hb_period
        self.hb_timeout = hb_timeout
        self.clients: dict[bytes, dict] = {}
        self.ctx = zmq.Context()
        self._stop = False
        self._beat = 0
        self._ghosts: dict[str, float] = {}
        self._dead: set[str] = set()  # uuids of engines declared dead
        self.hostname = socket.gethostname()
        self.db_url = db
        self.records: TaskLog | None = None  # opened by bind()
        self.watchers: dict[str, set] = {}  # task id -> other clients asking for its result
        # tasks clients sent engines themselves, recorded from their results before
        # (or instead of) the clients' copies: task id -> when (see `result_first`)
        self.done_first: dict[str, float] = {}
        self.unheard: dict[str, float] = {}  # task id -> when asked about before we knew it
        self.parked: dict[str, list] = {}    # task id -> tasks that depend on it, waiting to hear
        self.instance = os.urandom(6).hex().encode()  # in heartbeats: a restart is noticed
        self._init_recovery()
        self._children: list = []     # engines this controller started in place of dead ones
        self._restarts: deque = deque(maxlen=64)  # when they were started
        self._broken_worlds: set = set()  # MPI worlds that lost an engine

    # --- set-up ------------------------------------------------------------
    def bind(self) -> ConnectionInfo:
        ctx = self.ctx
        self.client_sock = self._router()
        self.engine_sock = self._router()
        self.hb_ping = ctx.socket(zmq.PUB)
        self.hb_ping.linger = 0
        self.info.secure_server(self.hb_ping)
        self.hb_pong = self._router()
        # what one turn of the loop sends, each peer's messages as one batch
        self.to_client = Outbox(self.client_sock)
        self.to_engine = Outbox(self.engine_sock)
        ip = self.info.ip or "127.0.0.1"
        ports = {}
        for name, sock in (("client", self.client_sock), ("engine", self.engine_sock),
                           ("hb_ping", self.hb_ping), ("hb_pong", self.hb_pong)):
            want = self.info.ports.get(name)
            if want:
                sock.bind(f"tcp://{ip}:{want}")
                ports[name] = want
            else:
                ports[name] = sock.bind_to_random_port(f"tcp://{ip}")
        self.info.ports = ports
        self.info.controller_pid = os.getpid()
        self.monitor = self.engine_sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        folder = Path(self.connection_file).parent if self.connection_file else Path.cwd()
        self.records = TaskLog(self.db_url, folder / "tasks.db")
        self.restore()
        if shm.create_probe(self.info.cluster_id, self.info.shm_token):
            shm.enable(self.info.cluster_id, self.info.shm_token)
        if self.connection_file:
            self.info.write(self.connection_file)
        log.info("controller %d listening on %s (client port %s)", os.getpid(), ip, ports["client"])
        return self.info

    def _router(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.linger = 0
        s.sndhwm = 0
        s.rcvhwm = 0
        s.router_handover = 1  # a reconnecting peer with the same identity takes over
        self.info.secure_server(s)
        return s

    # --- loop --------------------------------------------------------------
    def stop(self, *_):
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        poller = zmq.Poller()
        # heartbeat answers are read once a period, just before they are judged:
        # every socket polled costs system calls on each turn of the loop
        for s in (self.client_sock, self.engine_sock, self.monitor):
            poller.register(s, zmq.POLLIN)
        handlers = {self.client_sock: self.on_client, self.engine_sock: self.on_engine}
        next_beat = time.monotonic()
        try:
            while not self._stop:
                wake = next_beat
                deadline = self.state.next_deadline()
                if deadline is not None and deadline < wake:
                    wake = deadline
                wait = max(0.0, wake - time.monotonic())
                events = poller.poll(int(wait * 1000) + 1)
                for sock, _ in events:
                    if sock is self.monitor:
                        self._on_monitor()
                    else:
                        self._drain(sock, handlers[sock])
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.hb_period
                    self._heartbeat(now)
                    self.state.tick(now)
                    self.act()
                    self._children = [p for p in self._children if p.poll() is None]
                elif deadline is not None and now >= deadline:
                    self.state.tick(now)
                    self.act()
                self.flush()
        finally:
            self.close()

    def _drain(self, sock, handler) -> None:
        for frames in drain(sock, DRAIN):
            for msg in self.session.receive_all(frames):
                try:
                    handler(msg)
                except Exception:
                    log.exception("error handling %r", msg)

    def flush(self) -> None:
        """Send what this turn of the loop produced: tasks to engines first."""
        self.to_engine.flush()
        self.to_client.flush()

    # --- heartbeats and death ---------------------------------------------
    def _heartbeat(self, now: float) -> None:
        self._drain_pongs()
        self._beat += 1
        self.hb_ping.send(self.instance + b":" + str(self._beat).encode())
        self.expire_limbo(now)
        if self._beat % 4 == 0:
            shm.trim_pool()
            self._forget_done_first(now - DONE_FIRST_KEEP)
        if self.unheard:
            self.expire_unheard(now)
        for eid in self.state.silent_engines(now, self.hb_timeout):
            self.engine_lost(eid, f"stopped answering heartbeats for {self.hb_timeout:g} s")

    def result_first(self, msg, direct: bool) -> None:
        """The result of a task its client sent to the engine itself, here before
        the client's copy of the task: a quick task's client sends none (it got
        the result first). Record the task from its result, pass it on, and
        ignore the copy if it still comes."""
        hdr = msg.header
        task = TaskRecord(hdr["parent"], hdr["c"].encode(), hdr["e"], None, {})
        self.records.finished_unheard(task, hdr, msg.content, msg.frames)
        self.state.finished_elsewhere(task, hdr.get("status") == "ok")
        if len(self.done_first) >= 200_000:
            self._forget_done_first(float("inf"))
        self.done_first[task.id] = time.monotonic()
        self.act()
        self.deliver(task, msg, direct, record=False)
        if self.parked:
            self.unpark(task.id)

    def _forget_done_first(self, before: float) -> None:
        while self.done_first:
            tid, when = next(iter(self.done_first.items()))
            if when > before:
                return
            del self.done_first[tid]

    def _drain_pongs(self) -> None:
        now = time.monotonic()
        for _ in range(64 * DRAIN):  # a period's answers from every engine
            try:
                ident, *_rest = self.hb_pong.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            uuid = ident.decode(errors="replace")
            if not self.state.beat(uuid, now):
                self.tell_ghost(uuid)

    def _on_monitor(self) -> None:
        """A peer's TCP connection closed: check at once whether a local engine died."""
        try:
            while True:
                self.monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            pass
        for rec in list(self.state.engines.values()):
            if rec.local and proc_starttime(rec.pid) != rec.starttime:
                self.engine_lost(rec.id, f"process {rec.pid} exited")

    def tell_ghost(self, uuid: str) -> None:
        """An engine declared dead (paused, cut off) is still talking: tell it to exit.

        Its tasks were already failed; a fresh engine can take its place.
        """
        if uuid not in self._dead:  # not yet registered, or never known: not a ghost
            return
        now = time.monotonic()
        if now - self._ghosts.get(uuid, -1e9) < 5.0:
            return
        if len(self._ghosts) > 1000:
            self._ghosts.clear()
        self._ghosts[uuid] = now
        log.warning("engine %s was declared dead but is still running; telling it to exit", uuid)
        self.send_control(uuid, "shutdown", {"why": "declared dead by the controller"})

    def kill_engine(self, eid: int, why: str) -> None:
        """Stop an engine that will not stop its task: SIGKILL if it runs on this
        host, else tell it to exit; either way it is gone from the cluster."""
        rec = self.state.engines.get(eid)
        if rec is None:
            return
        log.warning("killing engine %d (%s pid %s): %s", eid, rec.host, rec.pid, why)
        if rec.local and proc_starttime(rec.pid) == rec.starttime:
            try:
                os.kill(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            self.send_control(rec.uuid, "shutdown", {"why": why})
        self.engine_lost(eid, f"killed by the controller: {why}")

    def act(self) -> None:
        """Carry out what the state decided."""
        out = self.state.drain()
        if not out:
            return
        for task in out.send:
            self.dispatch(task)
        for task, ename, evalue in out.fail:
            self.fail_task(task, ename, evalue, task.engine)
        for eid, tid in out.interrupt:
            rec = self.state.engines.get(eid)
            if rec is not None:
                self.send_control(rec.uuid, "interrupt", {"ids": [tid]})
        for eid, tid in out.abort:
            rec = self.state.engines.get(eid)
            if rec is not None:
                self.send_control(rec.uuid, "abort", {"ids": [tid]})
        for ident, msg_type, content in out.notify:
            if msg_type == "retrying":
                self.records.retrying(content["id"], content["attempt"])
            if ident in self.clients:
                self.send_client(ident, msg_type, content)
        for eid, why in out.kill:
            self.kill_engine(eid, why)

    def restart_engine(self, rec) -> None:
        """Start a replacement for a dead engine that was started by a cluster."""
        cmd = rec.info.get("restart")
        if self._stop or not cmd or not rec.local:
            return
        now = time.monotonic()
        recent = [t for t in self._restarts if now - t < 60]
        if len(recent) >= max(8, 2 * (len(self.state.engines) + 1)):
            log.error("not restarting engine %d: %d engines were restarted in the last minute; "
                      "they seem to die at once (see their logs)", rec.id, len(recent))
            return
        self._restarts.append(now)
        log_dir = Path(self.connection_file).parent / "logs" if self.connection_file else None
        out = subprocess.DEVNULL
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"engine-restart-{len(self._restarts)}-{os.getpid()}.log", "ab")
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, cwd=rec.info.get("cwd") or None,
                                 env=dict(os.environ, COHORT_RESTART_ENGINE="1"))
            self._children.append(p)
            log.info("started engine process %d to replace engine %d", p.pid, rec.id)
        except OSError as e:
            log.error("could not restart engine %d (%s): %s", rec.id, cmd, e)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def engine_lost(self, eid: int, why: str, restart: bool = True) -> None:
        rec = self.state.engines.get(eid)
        if rec is None:
            return
        sent, queued = self.state.remove_engine(eid, why)
        if len(self._dead) > 10000:
            self._dead.clear()
        self._dead.add(rec.uuid)
        log.warning("engine %d (%s pid %s) lost: %s; failing %d running and %d queued tasks",
                    eid, rec.host, rec.pid, why, len(sent), len(queued))
        for t in sent:
            self.fail_task(t, "EngineError",
                           f"engine {eid} ({rec.host}, pid {rec.pid}) died while task {t.id} "
                           f"was running or sent to it: {why}", eid)
        for t in queued:
            self.fail_task(t, "EngineError",
                           f"engine {eid} ({rec.host}, pid {rec.pid}) died before task {t.id} "
                           f"started: {why}", eid)
        self.broadcast("engine_left", {"id": eid, "why": why})
        self.act()
        if restart:
            self.restart_engine(rec)
        self._break_mpi_world(rec, why)

    def _break_mpi_world(self, rec, why: str) -> None:
        """An engine of an MPI world is gone: its peers may wait forever in a collective
        call that needs it, so they are stopped too (their tasks fail naming the cause)."""
        mpi = rec.info.get("mpi")
        if not mpi or mpi["world"] in self._broken_worlds:
            return
        self._broken_worlds.add(mpi["world"])
        peers = [r.id for r in self.state.engines.values()
                 if (r.info.get("mpi") or {}).get("world") == mpi["world"]]
        for peer in peers:
            self.kill_engine(peer, f"its MPI world is broken: engine {rec.id} (rank {mpi['rank']} "
                                   f"of {mpi['size']}) is gone ({why})")

    # --- messages to clients ----------------------------------------------
    def send_client(self, ident: bytes, msg_type: str, content: dict, header=None) -> None:
        self.to_client.put(ident, self.session.build(msg_type, content, header=header))

    def reply(self, msg, content: dict) -> None:
        self.send_client(msg.header["s"].encode(), "reply", content, {"parent": msg.id})

    def fail_task(self, task: TaskRecord, ename: str, evalue: str, eid=None) -> None:
        content = {"status": "error", "ename": ename, "evalue": evalue, "engine": eid}
        header = {"parent": task.id, "e": eid, "status": "error"}
        for ident in self._receivers(task):
            self.send_client(ident, "result", content, header)
        self.records.failed(task, ename, evalue)
        if task.header is not None:  # its data in shared memory will never be read
            shm.discard(task.header)

    def deliver(self, task: TaskRecord, msg, direct: bool = False, record: bool = True) -> None:
        """Record an engine's result and pass it on to whoever waits for it
        (`direct`: the engine sent it to the task's client itself)."""
        if record:
            self.records.finished(task, msg.header, msg.content, msg.frames)
        receivers = [c for c in self._receivers(task, direct) if c in self.clients]
        if direct and "shm" in msg.header:  # its segments are its client's to map
            for ident in receivers:
                self.send_client(ident, "result", {
                    "ename": "ControllerError", "evalue": f"task {task.id} succeeded, but its "
                    f"result travelled through shared memory to the client that sent it"},
                    {"parent": task.id, "e": msg.header.get("e"), "status": "error"})
            return
        if "shm" in msg.header:  # its segments can be mapped once: one receiver only
            receivers = receivers[:1]
        for ident in receivers:
            self.to_client.put(ident, msg.frames)
        if not receivers and not direct:  # the client left: nobody will map its segments
            shm.discard(msg.header)

    def _receivers(self, task, direct: bool = False) -> list:
        """The task's client and any other client that asked for its result (not its
        client when it got the result `direct`ly, unless it asked again since)."""
        asked = self.watchers.pop(task.id, ())
        own = [] if direct and task.client not in asked else [task.client]
        return own + [w for w in asked if w != task.client]

    def broadcast(self, msg_type: str, content: dict) -> None:
        for ident in list(self.clients):
            self.send_client(ident, msg_type, content)

    def send_engine(self, ident: bytes, msg_type: str, content: dict) -> None:
        self.to_engine.put(ident, self.session.build(msg_type, content))

    def send_control(self, uuid: str, msg_type: str, content: dict) -> None:
        """To an engine's control socket, which answers even while it runs a task."""
        self.send_engine(uuid.encode() + b".c", msg_type, content)

    def dispatch(self, task: TaskRecord) -> None:
        rec = self.state.engines[task.engine]
        self.to_engine.put(rec.ident, task.frames)
        self.records.dispatched(task)

    # --- engine messages ---------------------------------------------------
    def on_engine(self, msg) -> None:
        t = msg.header["t"]
        # a copy: the engine sent it to its client itself (unless that client left since)
        direct = "cp" in msg.header and msg.header.get("c", "").encode() in self.clients
        if t == "result":
            eid = msg.header.get("e")
            if eid not in self.state.engines:
                uuid = msg.idents[0].decode(errors="replace").removesuffix(".o")
                if self.buffer_early(uuid, msg):  # back after a restart, not registered yet
                    return
                shm.discard(msg.header)
                return self.tell_ghost(uuid)
            if self.held and self.held_result(msg):
                return
            hdr = msg.header
            if "dt" in hdr and hdr.get("parent") not in self.state.tasks:
                return self.result_first(msg, direct)
            ok = hdr.get("status") == "ok"
            task, nxt = self.state.complete(eid, hdr.get("parent"), ok,
                                            None if ok else msg.content.get("ename"),
                                            took=_took(hdr))
            for n in nxt:
                self.dispatch(n)
            self.act()
            if task is None:  # failed meanwhile (heartbeat, abort): nobody waits for it
                if not direct:
                    shm.discard(msg.header)
                return
            self.deliver(task, msg, direct)
        elif t == "stream":
            self.records.output(msg.header.get("parent"), msg.content.get("name"),
                                msg.content.get("text", ""))
            if not direct:
                self.to_client.put(msg.header["c"].encode(), msg.frames)
        elif t == "display_data":  # rich output (cohort.engine.display): to its client only
            if not direct:
                self.to_client.put(msg.header["c"].encode(), msg.frames)
        elif t == "aborted":
            eid = msg.header.get("e")
            for mid in msg.content.get("ids", ()):
                task, nxt = self.state.complete(eid, mid, ok=False, ename="TaskAborted")
                for n in nxt:
                    self.dispatch(n)
                if task is not None:
                    self.fail_task(task, "TaskAborted", f"task {mid} was aborted before it ran", eid)
            self.act()
        elif t == "register":
            self.on_register(msg)
        elif t == "synced":
            self.on_synced(msg.header.get("e"))
        elif t == "hello":  # the engine's control socket says it is connected
            self.send_engine(msg.idents[0], "welcome", {})
        elif t == "unregister":
            eid = msg.header.get("e")
            if eid in self.state.engines:
                self.engine_lost(eid, "the engine shut down", restart=False)
        else:
            log.warning("unknown engine message %r", t)

    def on_register(self, msg) -> None:
        ident = msg.idents[0]
        info = msg.content
        uuid = ident.decode(errors="replace").removesuffix(".c")  # ".c": back after a restart
        local = (info.get("host") == self.hostname and info.get("starttime") is not None
                 and proc_starttime(info.get("pid", -1)) == info.get("starttime"))
        known = self.state.engine_by_uuid(uuid)
        rec = self.state.register(uuid, info, local=local, want_id=info.get("resume"))
        self.send_engine(ident, "registered", {"id": rec.id, "hb_period": self.hb_period,
                                               "instance": self.instance.decode()})
        if known is None:
            self.engine_back(rec)
        self.act()
        if known is None:
            log.info("engine %d registered (%s pid %s%s)", rec.id, rec.host, rec.pid,
                     ", local" if local else "")
            self.broadcast("engine_joined", rec.summary())

    # --- teardown ----------------------------------------------------------
    def close(self) -> None:
        for rec in list(self.state.engines.values()):
            self.engine_lost(rec.id, "the controller stopped", restart=False)
        try:
            self.flush()
        except zmq.ZMQError:
            pass
        if self.connection_file:
            try:
                if ConnectionInfo.read(self.connection_file).controller_pid == os.getpid():
                    os.unlink(self.connection_file)
            except Exception:
                pass
        shm.sweep(self.info.cluster_id)
        if self.records is not None:
            self.records.close()
        self.monitor.close(linger=0)
        self.client_sock.linger = 500  # let the last replies and failures go out
        self.ctx.destroy(linger=500)
        log.info("controller stopped")


def _took(header: dict) -> float | None:
    """How long a task ran on its engine, from its result's header."""
    try:
        return header["completed"] - header["started"]
    except (KeyError, TypeError):
        return None
