"""The controller process: binds the sockets and runs the event loop.

Sockets (all bound by the controller; engines and clients connect):

* ``client``  ROUTER — requests from clients; replies, results and output to them.
  A client receives on a socket whose identity is its session id.
* ``engine``  ROUTER — each engine connects three DEALERs: ``<uuid>`` (tasks in),
  ``<uuid>.o`` (results and output out) and ``<uuid>.c`` (control).
* ``hb_ping`` PUB and ``hb_pong`` ROUTER — heartbeats, echoed by each engine's
  zmq device thread (off the GIL, so a busy engine still answers).

Decisions live in `HubState`; this module only moves messages.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import zmq

from ..procinfo import proc_starttime
from ..profile import ConnectionInfo
from ..wire import Session, shm
from .state import HubState, TaskRecord

log = logging.getLogger(__name__)

TASK_TYPES = frozenset({"execute", "apply", "push", "pull"})
DRAIN = 256  # messages handled per socket per wake-up before polling again


class Controller:
    """Routes work between clients and engines and watches engine heartbeats."""

    def __init__(self, info: ConnectionInfo, connection_file=None, hb_period: float = 0.5,
                 hb_timeout: float = 2.5, window: int = 8):
        self.info = info
        self.connection_file = connection_file
        self.session = Session(info.key, session_id="controller")
        self.state = HubState(window=window)
        self.hb_period = hb_period
        self.hb_timeout = hb_timeout
        self.clients: dict[bytes, dict] = {}
        self.ctx = zmq.Context()
        self._stop = False
        self._beat = 0
        self._ghosts: dict[str, float] = {}
        self._dead: set[str] = set()  # uuids of engines declared dead
        self.hostname = socket.gethostname()

    # --- set-up ------------------------------------------------------------
    def bind(self) -> ConnectionInfo:
        ctx = self.ctx
        self.client_sock = self._router()
        self.engine_sock = self._router()
        self.hb_ping = ctx.socket(zmq.PUB)
        self.hb_ping.linger = 0
        self.hb_pong = self._router()
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
        return s

    # --- loop --------------------------------------------------------------
    def stop(self, *_):
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        poller = zmq.Poller()
        for s in (self.client_sock, self.engine_sock, self.hb_pong, self.monitor):
            poller.register(s, zmq.POLLIN)
        handlers = {self.client_sock: self.on_client, self.engine_sock: self.on_engine}
        next_beat = time.monotonic()
        try:
            while not self._stop:
                wait = max(0.0, next_beat - time.monotonic())
                events = poller.poll(int(wait * 1000) + 1)
                for sock, _ in events:
                    if sock is self.hb_pong:
                        self._drain_pongs()
                    elif sock is self.monitor:
                        self._on_monitor()
                    else:
                        self._drain(sock, handlers[sock])
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.hb_period
                    self._heartbeat(now)
        finally:
            self.close()

    def _drain(self, sock, handler) -> None:
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = self.session.receive(frames)
            if msg is None:
                continue
            try:
                handler(msg)
            except Exception:
                log.exception("error handling %r", msg)

    # --- heartbeats and death ---------------------------------------------
    def _heartbeat(self, now: float) -> None:
        self._beat += 1
        self.hb_ping.send(str(self._beat).encode())
        for eid in self.state.silent_engines(now, self.hb_timeout):
            self.engine_lost(eid, f"stopped answering heartbeats for {self.hb_timeout:g} s")

    def _drain_pongs(self) -> None:
        now = time.monotonic()
        for _ in range(DRAIN):
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

    def engine_lost(self, eid: int, why: str) -> None:
        rec = self.state.engines.get(eid)
        if rec is None:
            return
        sent, queued = self.state.remove_engine(eid)
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

    # --- messages to clients ----------------------------------------------
    def send_client(self, ident: bytes, msg_type: str, content: dict, header=None) -> None:
        self.client_sock.send_multipart([ident, *self.session.build(msg_type, content, header=header)],
                                         copy=False)

    def reply(self, msg, content: dict) -> None:
        self.send_client(msg.header["s"].encode(), "reply", content, {"parent": msg.id})

    def fail_task(self, task: TaskRecord, ename: str, evalue: str, eid=None) -> None:
        content = {"status": "error", "ename": ename, "evalue": evalue, "engine": eid}
        self.send_client(task.client, "result", content,
                         {"parent": task.id, "e": eid, "status": "error"})
        if task.header is not None:  # its data in shared memory will never be read
            shm.discard(task.header)

    def broadcast(self, msg_type: str, content: dict) -> None:
        for ident in list(self.clients):
            self.send_client(ident, msg_type, content)

    def send_engine(self, ident: bytes, msg_type: str, content: dict) -> None:
        self.engine_sock.send_multipart([ident, *self.session.build(msg_type, content)])

    def send_control(self, uuid: str, msg_type: str, content: dict) -> None:
        """To an engine's control socket, which answers even while it runs a task."""
        self.send_engine(uuid.encode() + b".c", msg_type, content)

    def dispatch(self, task: TaskRecord) -> None:
        rec = self.state.engines[task.engine]
        self.engine_sock.send_multipart([rec.ident, *task.frames], copy=False)

    # --- client requests ---------------------------------------------------
    def on_client(self, msg) -> None:
        t = msg.header["t"]
        if t in TASK_TYPES:
            return self.on_task(msg)
        handler = getattr(self, f"client_{t}", None)
        if handler is None:
            log.warning("unknown client request %r", t)
            return self.reply(msg, {"error": f"unknown request {t!r}"})
        handler(msg)

    def on_task(self, msg) -> None:
        client = msg.header["s"].encode()
        if client not in self.clients:  # a client that never said hello still gets results
            self.clients[client] = {"connected": time.time(), "session": msg.header["s"]}
        target = msg.header.get("target")
        task = TaskRecord(msg.header["id"], client, target, msg.frames,
                          msg.header if "shm" in msg.header else None)
        try:
            send_now = self.state.submit(task)
        except (KeyError, TypeError):  # unknown (or unhashable) target
            return self.fail_task(task, "EngineError",
                                  f"engine {target} is not connected (connected: "
                                  f"{sorted(self.state.engines)})", target)
        if send_now:
            self.dispatch(task)

    def client_connect(self, msg) -> None:
        ident = msg.header["s"].encode()
        self.clients[ident] = {"connected": time.time(), "session": msg.header["s"]}
        self.reply(msg, {"engines": self.engine_list(), "cluster_id": self.info.cluster_id})

    def client_disconnect(self, msg) -> None:
        self.clients.pop(msg.header["s"].encode(), None)

    def engine_list(self) -> list:
        return [e.summary() for e in self.state.engines.values()]

    def client_status(self, msg) -> None:
        self.reply(msg, {"engines": self.engine_list(), "clients": len(self.clients),
                         "uptime": time.time() - self.state.started, "pid": os.getpid(),
                         "host": self.hostname, "tasks_pending": len(self.state.tasks)})

    def client_queue_status(self, msg) -> None:
        status = self.state.queue_status(msg.content.get("targets"))
        self.reply(msg, {"status": {str(k): v for k, v in status.items()}})

    def client_abort(self, msg) -> None:
        client = msg.header["s"].encode()
        dropped, ask = self.state.abort(client, msg.content.get("ids"), msg.content.get("targets"))
        for t in dropped:
            self.fail_task(t, "TaskAborted", f"task {t.id} was aborted before it ran", t.engine)
        for eid, ids in ask.items():
            self.send_control(self.state.engines[eid].uuid, "abort", {"ids": ids})
        self.reply(msg, {"aborted": len(dropped), "asked": sum(map(len, ask.values()))})

    def client_cancel(self, msg) -> None:
        dropped = self.state.cancel(msg.header["s"].encode(), msg.content.get("ids", ()))
        for t in dropped:
            if t.header is not None:
                shm.discard(t.header)
        self.reply(msg, {"cancelled": bool(dropped)})

    def client_interrupt(self, msg) -> None:
        targets = self._targets(msg)
        for eid in targets:
            self.send_control(self.state.engines[eid].uuid, "interrupt", {})
        self.reply(msg, {"interrupted": targets})

    def client_shutdown(self, msg) -> None:
        targets = self._targets(msg)
        for eid in targets:
            self.send_control(self.state.engines[eid].uuid, "shutdown", {})
        stop = bool(msg.content.get("controller"))
        self.reply(msg, {"shutdown": targets, "controller": stop})
        if stop:
            self._stop = True

    def _targets(self, msg) -> list:
        t = msg.content.get("targets")
        if t is None:
            return sorted(self.state.engines)
        return [e for e in t if e in self.state.engines]

    # --- engine messages ---------------------------------------------------
    def on_engine(self, msg) -> None:
        t = msg.header["t"]
        if t == "result":
            eid = msg.header.get("e")
            if eid not in self.state.engines:
                shm.discard(msg.header)
                return self.tell_ghost(msg.idents[0].decode(errors="replace").removesuffix(".o"))
            task, nxt = self.state.complete(eid, msg.header.get("parent"),
                                            msg.header.get("status") == "ok")
            for n in nxt:
                self.dispatch(n)
            if task is None:  # failed meanwhile (heartbeat, abort): nobody waits for it
                shm.discard(msg.header)
                return
            if task.client in self.clients:
                self.client_sock.send_multipart([task.client, *msg.frames], copy=False)
            else:  # the client left: nobody will map the result's segments
                shm.discard(msg.header)
        elif t == "stream":
            self.client_sock.send_multipart([msg.header["c"].encode(), *msg.frames], copy=False)
        elif t == "aborted":
            eid = msg.header.get("e")
            for mid in msg.content.get("ids", ()):
                task, nxt = self.state.complete(eid, mid, ok=False)
                for n in nxt:
                    self.dispatch(n)
                if task is not None:
                    self.fail_task(task, "TaskAborted", f"task {mid} was aborted before it ran", eid)
        elif t == "register":
            self.on_register(msg)
        elif t == "hello":  # the engine's control socket says it is connected
            self.send_engine(msg.idents[0], "welcome", {})
        elif t == "unregister":
            eid = msg.header.get("e")
            if eid in self.state.engines:
                self.engine_lost(eid, "the engine shut down")
        else:
            log.warning("unknown engine message %r", t)

    def on_register(self, msg) -> None:
        ident = msg.idents[0]
        info = msg.content
        uuid = ident.decode()
        local = (info.get("host") == self.hostname and info.get("starttime") is not None
                 and proc_starttime(info.get("pid", -1)) == info.get("starttime"))
        known = self.state.engine_by_uuid(uuid)
        rec = self.state.register(uuid, info, local=local)
        self.send_engine(ident, "registered", {"id": rec.id, "hb_period": self.hb_period})
        if known is None:
            log.info("engine %d registered (%s pid %s%s)", rec.id, rec.host, rec.pid,
                     ", local" if local else "")
            self.broadcast("engine_joined", rec.summary())

    # --- teardown ----------------------------------------------------------
    def close(self) -> None:
        for rec in list(self.state.engines.values()):
            self.engine_lost(rec.id, "the controller stopped")
        if self.connection_file:
            try:
                if ConnectionInfo.read(self.connection_file).controller_pid == os.getpid():
                    os.unlink(self.connection_file)
            except Exception:
                pass
        shm.sweep(self.info.cluster_id)
        self.monitor.close(linger=0)
        self.client_sock.linger = 500  # let the last replies and failures go out
        self.ctx.destroy(linger=500)
        log.info("controller stopped")
