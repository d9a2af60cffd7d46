"""Picking up after a controller restart (mixed into `Controller`).

A controller killed and started again on the same connection file reads the
task database and *holds* every unfinished task: any of them may already sit
in an engine's queue (the record of its sending may not have been written).
Engines and clients notice the new controller by the instance id in its
heartbeats and come back by themselves:

* an engine registers again asking for its old id, and is sent a ``sync``.
  Results it sent while no controller listened, its last few results (which
  the dead controller may not have recorded), and results of everything it
  held, all arrive before its ``synced`` answer and complete held tasks.
  After the sync, its held direct tasks are sent to it; once every engine
  that was there has synced, held load-balanced tasks are queued again.
  So no task runs twice unless an engine died.
* a client connects again and asks about its pending tasks: recorded results
  are sent at once; tasks the controller never recorded are sent again by the
  client (load-balanced ones, which it keeps until done) or failed.

Engines that do not come back within `limbo_wait` seconds count as dead:
what they ran is retried by its policy or fails with EngineError.
"""

from __future__ import annotations

import logging
import time

from ..wire import DELIM
from .records import unpack_frames
from .state import TaskRecord

log = logging.getLogger(__name__)


class RestartRecovery:
    limbo_wait = 15.0

    def _init_recovery(self) -> None:
        self.held: dict[str, object] = {}   # task id -> task waiting for engines to sync
        self.expected: set = set()           # engine ids that may hold tasks
        self.synced: set = set()
        self.limbo_deadline = 0.0
        self.early: dict[str, list] = {}     # engine uuid -> messages before it registered

    def restore(self) -> None:
        """Reload unfinished tasks from the task database (after a restart)."""
        rows = self.records.unfinished()
        if not rows:
            return
        for row in rows:
            msg = None
            if row["request"] is not None:
                msg = self.session.receive([DELIM, *unpack_frames(row["request"])])
            if msg is None:
                self.records.recorder.update(
                    row["id"], state="failed", status="error", ename="ControllerError",
                    evalue="the controller restarted and this task's request was not recorded "
                           "(it was held in shared memory or was too large): submit it again",
                    completed=time.time())
                continue
            task = self.task_from(msg)
            task.attempts = row["attempts"] or 0
            task.engine = row["engine"] if row["state"] == "running" or not task.lb else None
            self.held[task.id] = task
            self.client_seen(task.client)
        recent = [r["engine"] for r in self.records.query(limit=1000)]
        self.expected = {e for e in recent + [t.engine for t in self.held.values()]
                         if e is not None}
        self.state._next_id = max(self.expected, default=-1) + 1
        self.limbo_deadline = time.monotonic() + self.limbo_wait
        log.warning("restarted with %d unfinished tasks, held until engines %s are back",
                    len(self.held), sorted(self.expected))

    def task_from(self, msg) -> TaskRecord:
        hdr = msg.header
        if hdr.get("lb"):
            return TaskRecord(hdr["id"], hdr["s"].encode(), None, msg.frames, None, lb=True,
                              policy=hdr.get("pol"), group=hdr.get("g"),
                              after=hdr.get("after", ()), follow=hdr.get("follow", ()))
        return TaskRecord(hdr["id"], hdr["s"].encode(), hdr.get("target"), msg.frames,
                          hdr if "shm" in hdr else None)

    @property
    def recovering(self) -> bool:
        return bool(self.held) or time.monotonic() < self.limbo_deadline

    # --- engines coming back ---------------------------------------------------------
    def engine_back(self, rec) -> None:
        """A (re-)registered engine: sync it if it may hold tasks from before."""
        if self.recovering:
            self.send_engine(rec.ident, "sync", {})
        for msg in self.early.pop(rec.uuid, ()):
            self.on_engine(msg)

    def held_result(self, msg) -> bool:
        """A result for a held task: complete it; True if it was one."""
        task = self.held.pop(msg.header.get("parent"), None)
        if task is None:
            return False
        task.engine = msg.header.get("e")
        self.deliver(task, msg)
        self.state._finished(task, msg.header.get("status") == "ok")
        self.act()
        return True

    def on_synced(self, eid: int) -> None:
        """The engine ran everything it held: send it its held direct tasks, and
        queue held load-balanced tasks once every engine that was there synced."""
        self.synced.add(eid)
        for task in [t for t in self.held.values() if not t.lb and t.engine == eid]:
            del self.held[task.id]
            if self.state.submit(task):
                self.dispatch(task)
        if self.expected <= self.synced:
            self.release_held(None)

    def release_held(self, why: str | None) -> None:
        """Queue held load-balanced tasks again; fail the rest (their engine is gone)."""
        held, self.held = self.held, {}
        for t in held.values():
            gone = why or f"engine {t.engine} did not come back after the controller restarted"
            if t.lb and t.engine is not None and t.engine not in self.synced:
                t.attempts = max(t.attempts, 1)  # it may have run there: that was an attempt
                self.state.tasks[t.id] = t
                if not self.state.retry(t, None, gone):
                    self.state.tasks.pop(t.id, None)
                    self.fail_task(t, "EngineError", f"task {t.id}: {gone}", t.engine)
            elif t.lb:
                t.engine = None
                self.state.submit_lb(t)
            else:
                self.fail_task(t, "EngineError", f"task {t.id}: {gone}", t.engine)
        self.act()

    def buffer_early(self, uuid: str, msg) -> bool:
        """Keep a result from an engine that has not registered again yet."""
        if uuid in self._dead or not self.recovering:
            return False
        queue = self.early.setdefault(uuid, [])
        if len(queue) >= 1000:
            return False
        queue.append(msg)
        return True

    def expire_limbo(self, now: float) -> None:
        if self.held and now >= self.limbo_deadline:
            self.early.clear()
            self.release_held(f"not every engine came back within {self.limbo_wait:g} s of "
                              f"the controller restarting")

    # --- clients coming back ----------------------------------------------------------
    def client_resume(self, msg) -> None:
        """A client's pending task ids after a restart: answer what is known."""
        ident = self.client_seen(msg.header["s"].encode())
        unknown = []
        for tid in msg.content.get("ids", ()):
            if tid in self.state.tasks or tid in self.held:
                continue
            row = self.records.get(tid)
            if row is None:
                unknown.append(tid)
            elif row["state"] not in ("queued", "running"):
                self.send_recorded(ident, tid, row)
        self.send_client(ident, "resumed", {"unknown": unknown})

    def send_recorded(self, ident: bytes, tid: str, row: dict) -> None:
        """Send a finished task's recorded result (or error) to a client."""
        header = {"parent": tid, "e": row["engine"], "status": "error"}
        if row["result"] is not None:
            self.to_client.put(ident, [DELIM, *unpack_frames(row["result"])])
        elif row["status"] == "ok":
            self.send_client(ident, "result", {
                "ename": "ControllerError", "evalue": f"task {tid} succeeded, but its result "
                f"was too large to record or travelled through shared memory"}, header)
        else:
            self.send_client(ident, "result", {
                "ename": row["ename"] or "Error", "evalue": row["evalue"] or "",
                "traceback": row["traceback"] or "", "engine": row["engine"]}, header)
