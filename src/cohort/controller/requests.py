"""The controller's answers to clients: tasks in, requests answered.

Mixed into `hub.Controller` (needs its `state`, `records`, `clients`,
`watchers`, `held` and the sending methods). One method per request type,
``client_<type>``; tasks go to `on_task`.
"""

from __future__ import annotations

import logging
import os
import time

from ..wire import COPY, TASK_TYPES, shm
from .state import TaskRecord

log = logging.getLogger(__name__)


class ClientRequests:
    """What the controller does with each message on its client socket."""

    def on_client(self, msg) -> None:
        t = msg.header["t"]
        if t in TASK_TYPES:
            return self.on_task(msg)
        handler = getattr(self, f"client_{t}", None)
        if handler is None:
            log.warning("unknown client request %r", t)
            return self.reply(msg, {"error": f"unknown request {t!r}"})
        handler(msg)

    def client_seen(self, ident: bytes) -> bytes:
        """Remember a client (its receiving socket's identity is its session id):
        one that never said hello, or came back after a restart, still gets results."""
        if ident not in self.clients:
            self.clients[ident] = {"connected": time.time(), "session": ident.decode()}
        return ident

    def on_task(self, msg, park: bool = True) -> None:
        client = self.client_seen(msg.header["s"].encode())
        hdr = msg.header
        if hdr.get("lb"):
            if hdr["id"] in self.state.tasks:
                return  # sent again (a client resuming after a controller restart)
            deps = list(hdr.get("after", ())) + list(hdr.get("follow", ()))
            if park and deps and self._park(msg, deps):
                return
            task = TaskRecord(
                hdr["id"], client, None, msg.frames, hdr if "shm" in hdr else None, lb=True,
                policy=hdr.get("pol"), group=hdr.get("g"), after=hdr.get("after", ()),
                follow=hdr.get("follow", ()))
            self.records.submitted(task, hdr["t"], msg.frames, hdr["s"])
            self._recall_outcomes(task.after + task.follow)
            self.state.submit_lb(task)
            return self.act()
        target = hdr.get("target")
        sent = msg.idents[-1] == COPY  # its client sent it to the engine itself
        if sent and (hdr["id"] in self.state.tasks or self.done_first.pop(hdr["id"], None)):
            return  # its result came first (see `result_first`)
        task = TaskRecord(hdr["id"], client, target, msg.frames, hdr if "shm" in hdr else None)
        self.records.submitted(task, hdr["t"], msg.frames, hdr["s"])
        if sent and self.recovering and target not in self.state.engines:
            self.held[task.id] = task  # its engine, back soon, has it: see recovery.py
            self.expected.add(target)
            return
        try:
            if sent:
                self.state.adopt(task)
            send_now = not sent and self.state.submit(task)
        except (KeyError, TypeError):  # unknown (or unhashable) target
            if sent and target in self.state.retired:  # it went before we heard of the task
                return self.fail_task(task, "EngineError",
                                      f"engine {target} left while task {task.id}, sent to it "
                                      f"directly, was running or waiting there", target)
            return self.fail_task(task, "EngineError",
                                  f"engine {target} is not connected (connected: "
                                  f"{sorted(self.state.engines)})", target)
        if send_now:
            self.dispatch(task)
        elif sent:
            self.records.dispatched(task)
            if self.parked:
                self.unpark(task.id)

    def _park(self, msg, deps) -> bool:
        """Hold a task back whose dependency we have not heard of, but a connected
        client may have sent an engine itself (client/direct.py): its result or its
        copy tells us soon. True if parked (`unpark` or `expire_unheard` goes on)."""
        self._recall_outcomes(deps)
        for dep in deps:
            if dep not in self.state.tasks and dep not in self.state.outcomes \
                    and dep not in self.held and self._may_come(dep):
                self.parked.setdefault(dep, []).append(msg)
                return True
        return False

    def _may_come(self, tid) -> bool:
        """A connected client's task we have not heard of may be one it sent an engine
        itself: its copy (within COPY_DELAY, client/direct.py) or its result tells us.
        If so, note when we started waiting (`expire_unheard` ends the wait)."""
        if not (isinstance(tid, str) and tid.rpartition("-")[0].encode() in self.clients):
            return False
        self.unheard.setdefault(tid, time.monotonic())
        return True

    def unpark(self, task_id: str) -> None:
        """Task `task_id` is known now: tasks that waited to hear of it go on."""
        for msg in self.parked.pop(task_id, ()):
            self.on_task(msg)

    def _recall_outcomes(self, deps) -> None:
        """Dependencies finished too long ago for the state's memory: ask the task db."""
        for dep in deps:
            if dep in self.state.tasks or dep in self.state.outcomes or dep in self.held:
                continue
            row = self.records.get(dep)
            if row is not None and row["state"] not in ("queued", "running"):
                self.state.outcomes[dep] = (row["state"] == "done", row["engine"])

    def client_connect(self, msg) -> None:
        self.clients.pop(msg.header["s"].encode(), None)  # connected anew, from now
        self.client_seen(msg.header["s"].encode())
        self.reply(msg, {"engines": self.engine_list(), "cluster_id": self.info.cluster_id,
                         "instance": self.instance.decode()})

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
        self.act()

    def client_cancel(self, msg) -> None:
        dropped = self.state.cancel(msg.header["s"].encode(), msg.content.get("ids", ()))
        for t in dropped:
            if t.header is not None:
                shm.discard(t.header)
        self.reply(msg, {"cancelled": bool(dropped)})
        self.act()

    def client_started(self, msg) -> None:
        ids = [str(i) for i in msg.content.get("ids", ())]
        self.reply(msg, {"started": self.state.dispatched(msg.header["s"].encode(), ids)})

    def client_interrupt(self, msg) -> None:
        targets = self._targets(msg)
        for eid in targets:
            # with "ids", only those tasks (another client's code on the engine runs on)
            self.send_control(self.state.engines[eid].uuid, "interrupt",
                              {"ids": msg.content.get("ids")})
        self.reply(msg, {"interrupted": targets})

    def client_shutdown(self, msg) -> None:
        targets = self._targets(msg)
        for eid in targets:
            self.send_control(self.state.engines[eid].uuid, "shutdown", {})
        stop = bool(msg.content.get("controller"))
        self.reply(msg, {"shutdown": targets, "controller": stop})
        if stop:
            self._stop = True

    def client_get_result(self, msg) -> None:
        """Send a task's result to the asking client: now if it is recorded, else when it comes."""
        ident = self.client_seen(msg.header["s"].encode())
        tid = msg.content.get("id")
        if tid in self.state.tasks:
            self.watchers.setdefault(tid, set()).add(ident)
            return
        row = self.records.get(tid)
        if row is None and self._may_come(tid):
            self.watchers.setdefault(tid, set()).add(ident)
            return
        if row is None:
            return self._no_such_task(ident, tid)
        if row["state"] in ("queued", "running"):
            self.watchers.setdefault(tid, set()).add(ident)
            return
        self.send_recorded(ident, tid, row)

    def _no_such_task(self, ident: bytes, tid) -> None:
        self.send_client(ident, "result", {
            "ename": "ControllerError", "evalue": f"no task {tid!r} is recorded (never "
            f"submitted, purged, or recorded in another task database)"},
            {"parent": tid, "e": None, "status": "error"})

    def expire_unheard(self, now: float, wait: float = 2.0) -> None:
        """Results asked for tasks still unheard of after `wait` s: there are none."""
        for tid, since in list(self.unheard.items()):
            if tid in self.parked and now - since > wait:  # they fail: no such dependency
                for msg in self.parked.pop(tid):
                    self.on_task(msg, park=False)
            if tid in self.parked:
                continue
            if tid not in self.watchers or tid in self.state.tasks:
                del self.unheard[tid]  # answered, or it came and will be answered
            elif now - since > wait:
                del self.unheard[tid]
                row = self.records.get(tid)
                for ident in self.watchers.pop(tid, ()):
                    if row is None:
                        self._no_such_task(ident, tid)
                    else:
                        self.send_recorded(ident, tid, row)

    def client_tasks(self, msg) -> None:
        q = dict(msg.content)
        allowed = {"state", "client", "engine", "group", "ename", "since", "until", "ids",
                   "limit", "newest_first"}
        bad = set(q) - allowed
        if bad:
            return self.reply(msg, {"error": f"unknown task filter(s) {sorted(bad)}; "
                                             f"known: {sorted(allowed)}"})
        rows = self.records.query(**q)
        for r in rows:
            r.pop("request", None)
            r.pop("result", None)
        self.reply(msg, {"tasks": rows})

    def client_purge_tasks(self, msg) -> None:
        try:
            n = self.records.purge(older_than=msg.content.get("older_than"),
                                   keep_last=msg.content.get("keep_last"))
        except ValueError as e:
            return self.reply(msg, {"error": str(e)})
        self.reply(msg, {"purged": n})

    def _targets(self, msg) -> list:
        t = msg.content.get("targets")
        if t is None:
            return sorted(self.state.engines)
        return [e for e in t if e in self.state.engines]
