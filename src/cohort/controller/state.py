"""The controller's bookkeeping as pure logic: events in, decisions out.

No sockets here. The hub (`hub.py`) feeds events (an engine registered, a task
arrived, a result came back, an engine died, time passed) and carries out what
comes back (tasks to send now, tasks to fail, engines to interrupt or kill).
Direct tasks queue per engine at the controller; at most `window` of them are
in flight on an engine at once, so a finished task is followed at once by the
next without a round trip, and `abort` can drop queued ones without asking the
engine. Load-balanced tasks are placed by `scheduler.LoadBalancer`, which
shares these records.
"""

from __future__ import annotations

import time
from collections import deque

from .scheduler import LoadBalancing


class EngineRecord:
    __slots__ = ("id", "ident", "uuid", "host", "pid", "starttime", "local", "registered",
                 "last_beat", "queue", "inflight", "completed", "failed", "info", "stuck",
                 "run_time", "lb_window")

    def __init__(self, eid: int, uuid: str, info: dict, local: bool = False):
        self.id = eid
        self.uuid = uuid
        self.ident = uuid.encode()
        self.host = info.get("host", "?")
        self.pid = info.get("pid", 0)
        self.starttime = info.get("starttime")
        self.local = local
        self.registered = time.time()
        self.last_beat = time.monotonic()
        self.queue: deque = deque()   # TaskRecords waiting at the controller
        self.inflight: dict = {}      # msg_id -> TaskRecord sent to the engine
        self.completed = 0
        self.failed = 0
        self.info = info
        self.stuck: tuple | None = None  # (task id, kill-after time) once told to stop a task
        self.run_time: float | None = None  # seconds a task takes here, smoothed over the last few
        self.lb_window = 0  # load-balanced tasks in flight here at most (see `window_of`)

    @property
    def state(self) -> str:
        if self.stuck is not None:
            return "stopping"
        return "busy" if self.inflight else "idle"

    def summary(self) -> dict:
        return {"id": self.id, "uuid": self.uuid, "host": self.host, "pid": self.pid,
                "state": self.state, "queue": len(self.queue) + len(self.inflight),
                "completed": self.completed, "failed": self.failed,
                "registered": self.registered, "shm": bool(self.info.get("shm")),
                "mpi": self.info.get("mpi"), "restart": bool(self.info.get("restart")),
                "tasks": self.info.get("tasks")}


class TaskRecord:
    """One task. Direct tasks name their `engine`; load-balanced ones (`lb`) get
    one when placed, and carry a policy (timeout, retries, on_failure, ...)."""

    __slots__ = ("id", "client", "engine", "frames", "submitted", "header", "lb", "policy",
                 "group", "after", "follow", "attempts", "tried", "started", "deadline",
                 "zombie", "waiting", "queued_at")

    def __init__(self, msg_id: str, client: bytes, engine, frames, header=None, lb=False,
                 policy=None, group=None, after=(), follow=()):
        self.id = msg_id
        self.client = client
        self.engine = engine
        self.frames = frames
        self.header = header  # kept to release its shared-memory segments if it never runs
        self.submitted = time.time()
        self.lb = lb
        self.policy = policy or {}
        self.group = group
        self.after = list(after)
        self.follow = list(follow)
        self.attempts = 0       # times it started running
        self.tried: set = set()  # engines it ran on and failed
        self.started = None     # monotonic time it began on its engine (inferred, FIFO)
        self.deadline = None
        self.zombie = False     # already failed to the client; the engine still has it
        self.waiting = 0        # unfinished dependencies
        self.queued_at = time.monotonic()


class HubState(LoadBalancing):
    """Engines, their queues and the tasks in them."""

    def __init__(self, window: int = 8, lb_window: int = 2, kill_grace: float = 3.0):
        self.window = window
        self.engines: dict[int, EngineRecord] = {}
        self.by_uuid: dict[str, int] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self._next_id = 0
        self.retired: set = set()  # ids of engines gone: never handed out again
        self.started = time.time()
        self._init_lb(lb_window, kill_grace)

    # --- engines -----------------------------------------------------------
    def register(self, uuid: str, info: dict, local: bool = False,
                 want_id: int | None = None) -> EngineRecord:
        """Add an engine; one coming back after a controller restart asks for its old id."""
        if uuid in self.by_uuid:  # a re-sent registration: same engine, same id
            return self.engines[self.by_uuid[uuid]]
        if isinstance(want_id, int) and want_id >= 0 and want_id not in self.engines \
                and want_id not in self.retired:
            eid = want_id
            self._next_id = max(self._next_id, eid + 1)
        else:
            eid = self._next_id
            self._next_id += 1
        rec = EngineRecord(eid, uuid, info, local)
        rec.lb_window = self.lb_window
        self.engines[eid] = rec
        self.by_uuid[uuid] = eid
        self.schedule()  # waiting load-balanced work goes to it at once
        return rec

    def engine_by_uuid(self, uuid: str) -> EngineRecord | None:
        eid = self.by_uuid.get(uuid)
        return None if eid is None else self.engines.get(eid)

    def remove_engine(self, eid: int, why: str = "it left") -> tuple[list, list]:
        """Forget an engine; return its direct tasks (running or sent, queued).

        Its load-balanced tasks are requeued or failed by their policy (see `drain`).
        """
        rec = self.engines.pop(eid, None)
        if rec is None:
            return [], []
        self.retired.add(eid)
        self.by_uuid.pop(rec.uuid, None)
        queued = set(id(t) for t in rec.queue)
        direct = self.engine_gone(rec, why)
        for t in direct:
            self._finished(t, False)
        self.schedule()
        return ([t for t in direct if id(t) not in queued],
                [t for t in direct if id(t) in queued])

    def beat(self, uuid: str, now: float) -> bool:
        """Record a heartbeat; False if no live engine has this uuid."""
        eid = self.by_uuid.get(uuid)
        if eid is None:
            return False
        self.engines[eid].last_beat = now
        return True

    def silent_engines(self, now: float, timeout: float) -> list[int]:
        return [e.id for e in self.engines.values() if now - e.last_beat > timeout]

    # --- tasks -------------------------------------------------------------
    def submit(self, task: TaskRecord) -> bool:
        """Queue a task; True if it should be sent to its engine now."""
        rec = self.engines.get(task.engine)
        if rec is None:
            raise KeyError(task.engine)
        self.tasks[task.id] = task
        if len(rec.inflight) < self.window and not rec.queue:
            rec.inflight[task.id] = task
            if len(rec.inflight) == 1:
                self._begin(task, time.monotonic())
            return True
        rec.queue.append(task)
        return False

    def adopt(self, task: TaskRecord) -> None:
        """A task its client sent straight to its engine: in flight there from now
        (ahead of any queued here: the engine has it already)."""
        rec = self.engines.get(task.engine)
        if rec is None:
            raise KeyError(task.engine)
        self.tasks[task.id] = task
        rec.inflight[task.id] = task
        if len(rec.inflight) == 1:
            self._begin(task, time.monotonic())

    def finished_elsewhere(self, task: TaskRecord, ok: bool) -> None:
        """A task its client sent straight to its engine finished before we heard of it."""
        rec = self.engines.get(task.engine)
        if rec is not None:
            if ok:
                rec.completed += 1
            else:
                rec.failed += 1
        self._finished(task, ok)

    def complete(self, eid: int, msg_id: str, ok: bool = True, ename: str | None = None,
                 took: float | None = None) -> tuple[TaskRecord | None, list]:
        """A result arrived (after `took` seconds of running); return (the task
        to forward it for, or None; direct tasks to send next). Load-balanced
        consequences (retries, dependents, placements) come out of `drain`."""
        rec = self.engines.get(eid)
        if rec is None:
            return None, []
        if took is not None and took >= 0:
            rec.run_time = took if rec.run_time is None else 0.8 * rec.run_time + 0.2 * took
            rec.lb_window = self.window_of(rec)
        entry = rec.inflight.pop(msg_id, None)
        task = None
        if entry is not None and entry.zombie:
            self.zombie_done(rec, entry)
        elif entry is not None:
            task = self.tasks.pop(msg_id, None)
            if ok:
                rec.completed += 1
            else:
                rec.failed += 1
        nxt = []
        while rec.queue and len(rec.inflight) < self.window:
            t = rec.queue.popleft()
            rec.inflight[t.id] = t
            nxt.append(t)
        if entry is not None:
            self.next_started(rec, time.monotonic())
        if task is not None:
            if not task.lb:
                self._finished(task, ok)
            elif not self.lb_result(task, rec, ok, ename):
                task = None
        if entry is not None:
            self.schedule()
        return task, nxt

    def abort(self, client: bytes, ids=None, targets=None) -> tuple[list, dict]:
        """Drop the client's queued tasks (all, or those in `ids`, on `targets`).

        Returns (tasks removed from controller queues, {engine id: [ids sent
        to it that the engine must be asked to skip]}).
        """
        wanted = None if ids is None else set(ids)

        def chosen(t) -> bool:
            return t.client == client and (wanted is None or t.id in wanted)

        engines = [self.engines[t] for t in targets if t in self.engines] \
            if targets is not None else list(self.engines.values())
        dropped, ask = [], {}
        for rec in engines:
            keep = deque()
            for t in rec.queue:
                if chosen(t):
                    dropped.append(t)
                    self.tasks.pop(t.id, None)
                    self._finished(t, False)
                else:
                    keep.append(t)
            rec.queue = keep
            sent = [t.id for t in rec.inflight.values() if chosen(t) and not t.zombie]
            if sent:
                ask[rec.id] = sent
        if targets is None:  # load-balanced tasks not placed yet
            for t in [t for t in self.tasks.values() if t.lb and t.engine is None and chosen(t)]:
                if t.id in self.tasks:  # not failed meanwhile as a dependent of another
                    self.drop_unplaced(t)
                    dropped.append(t)
        return dropped, ask

    def cancel(self, client: bytes, ids) -> list:
        """Drop these tasks only if every one still waits at the controller.

        All or nothing, so a cancelled future never has a part that ran.
        """
        ids = list(dict.fromkeys(ids))
        found = self._queued_here(client, ids)
        if not ids or len(found) != len(ids):
            return []
        for t in found:  # all out first, so none of them fails as another's dependent
            if t.lb:
                self.waiting.pop(t.id, None)
                self._unqueue(t)
            else:
                self.engines[t.engine].queue.remove(t)
            del self.tasks[t.id]
        for t in found:
            self._finished(t, False)
        return found

    def _queued_here(self, client: bytes, ids) -> list:
        """The tasks of `ids` (sent by `client`) that wait at the controller:
        not yet sent to an engine."""
        return [t for t in (self.tasks.get(i) for i in ids)
                if t is not None and t.client == client and (
                    t.engine is None if t.lb else
                    t.engine in self.engines and t.id not in self.engines[t.engine].inflight)]

    def dispatched(self, client: bytes, ids) -> list:
        """The ids of `ids` sent to an engine and not finished (running or
        waiting there). Unknown ids are not: a task cancelled meanwhile must
        not look as if it ran."""
        queued = {t.id for t in self._queued_here(client, ids)}
        return [i for i in ids if i in self.tasks and i not in queued]

    def queue_status(self, targets=None) -> dict:
        engines = self.engines.values() if targets is None else \
            [self.engines[t] for t in targets if t in self.engines]
        out = {e.id: {"queue": len(e.queue), "inflight": len(e.inflight),
                      "completed": e.completed, "failed": e.failed} for e in engines}
        return out
