"""Load balancing and task-management policies, as pure logic.

Mixed into `HubState`. A load-balanced task waits at the controller until its
dependencies are met and an engine has room, then goes to the least-loaded
engine allowed to run it; clients take turns so one big map cannot starve
another client. Per task, a policy may say:

* ``timeout`` — seconds of running before it is stopped: the engine is
  interrupted, and killed if it has not stopped `kill_grace` seconds later;
* ``retries`` — how many times a failure (an exception, a timeout, the
  engine's death) resubmits it, to an engine it has not failed on if any;
* ``on_failure`` — ``"cancel_rest"``: its final failure cancels the rest of
  its group (queued members dropped, running ones stopped);
* ``min_engines``/``engine_wait`` — do not start before `min_engines` are
  connected; fail after `engine_wait` seconds of waiting for them;
* ``after``/``follow`` — run when these tasks succeeded / where they ran.

Everything the hub must do comes out in `self.out` (an `Actions`).
"""

from __future__ import annotations

import copy
import heapq
import time
from collections import OrderedDict, deque

OUTCOMES_KEPT = 10_000   # finished tasks remembered here for after=/follow= (older: the task db)
PIPELINE = 0.002         # seconds of work kept in flight per engine for short tasks...
MAX_WINDOW = 64          # ...but never more tasks than this
SCAN_DEPTH = 64          # queued tasks looked at per client for one that fits a free engine
BATCH_WAIT = 0.5         # seconds a batch of calls waits for an engine with nothing in flight


class Actions:
    """What the hub must carry out after an event."""

    __slots__ = ("send", "fail", "interrupt", "abort", "kill", "notify")

    def __init__(self):
        self.send: list = []       # TaskRecords to send to their .engine
        self.fail: list = []       # (TaskRecord, ename, evalue)
        self.interrupt: list = []  # (engine id, task id): stop it if it is running
        self.abort: list = []      # (engine id, task id): skip it, it has not started
        self.kill: list = []       # (engine id, why)
        self.notify: list = []     # (client ident, msg type, content)

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in self.__slots__)


class LoadBalancing:
    """The load-balanced half of HubState (needs `engines`, `tasks`)."""

    def _init_lb(self, lb_window: int = 2, kill_grace: float = 3.0) -> None:
        self.lb_window = lb_window
        self.kill_grace = kill_grace
        self.out = Actions()
        self.lb_queues: dict[bytes, deque] = {}   # client -> ready tasks, in order
        self.dependents: dict[str, list] = {}      # task id -> tasks waiting for it
        self.waiting: dict[str, object] = {}       # id -> task waiting for dependencies
        self.groups: dict[str, set] = {}           # group id -> ids of its live tasks
        self.cancelled_groups: OrderedDict = OrderedDict()
        self.outcomes: OrderedDict = OrderedDict()  # task id -> (ok, engine id)
        self._deadlines: list = []                  # heap of (deadline, task id)

    def drain(self) -> Actions:
        """Hand over the accumulated actions and start a fresh list."""
        out, self.out = self.out, Actions()
        return out

    # --- submission ------------------------------------------------------------
    def submit_lb(self, task) -> None:
        """A load-balanced task arrived."""
        if task.id in self.tasks:
            return  # sent twice (a client retrying after a controller restart)
        if task.group is not None:
            if task.group in self.cancelled_groups:
                return self._fail(task, "TaskCancelled",
                                  f"task {task.id} was not run: its group {task.group} was "
                                  f"cancelled after a failure (on_failure='cancel_rest')")
            self.groups.setdefault(task.group, set()).add(task.id)
        self.tasks[task.id] = task
        pending = []
        for dep in dict.fromkeys(task.after + task.follow):
            if dep in self.tasks:
                pending.append(dep)
                continue
            known = self.outcomes.get(dep)
            if known is None:
                return self._fail(task, "DependencyError",
                                  f"task {task.id} depends on task {dep}, which this controller "
                                  f"does not know (never submitted, or finished too long ago)")
            if not known[0]:
                return self._fail(task, "DependencyError",
                                  f"task {task.id} was not run: its dependency {dep} failed")
        if pending:
            task.waiting = len(pending)
            self.waiting[task.id] = task
            for dep in pending:
                self.dependents.setdefault(dep, []).append(task)
            return
        self._ready(task)

    def _ready(self, task) -> None:
        """Dependencies met: check `follow`, then queue for placement."""
        if task.follow:
            where = {self.outcomes.get(d, (True, None))[1] for d in task.follow}
            if len(where) > 1:
                return self._fail(task, "DependencyError",
                                  f"task {task.id} must follow tasks that ran on different "
                                  f"engines {sorted(map(str, where))}: impossible")
            (eid,) = where
            if eid not in self.engines:
                return self._fail(task, "DependencyError",
                                  f"task {task.id} must run on engine {eid}, where its "
                                  f"dependencies ran, but that engine is gone")
            task.policy = dict(task.policy, pin=eid)
        task.queued_at = time.monotonic()
        self.lb_queues.setdefault(task.client, deque()).append(task)
        self.schedule()

    # --- placement ---------------------------------------------------------------
    def window_of(self, rec) -> int:
        """Load-balanced tasks in flight on an engine: `lb_window`, more for short
        tasks (about `PIPELINE` seconds of them), so the engine never waits for
        the next one and each message to it carries several."""
        t = rec.run_time
        if t is None or t * self.lb_window >= PIPELINE:
            return self.lb_window
        return min(MAX_WINDOW, int(PIPELINE / max(t, PIPELINE / MAX_WINDOW)))

    def _free_engines(self) -> list:
        return [e for e in self.engines.values()
                if len(e.inflight) < e.lb_window and not e.queue and e.stuck is None]

    def schedule(self) -> None:
        """Place ready tasks on engines with room, clients taking turns."""
        if not self.lb_queues:
            return
        free = self._free_engines()
        n_engines = len(self.engines)
        while free and self.lb_queues:
            placed = False
            for client in list(self.lb_queues):
                if not free:
                    break
                q = self.lb_queues[client]
                for i, task in enumerate(q):
                    if i >= SCAN_DEPTH:
                        break
                    rec = self._pick(task, free, n_engines)
                    if rec is not None:
                        del q[i]
                        self._place(task, rec)
                        if len(rec.inflight) >= rec.lb_window:
                            free.remove(rec)
                        placed = True
                        break
                if not q:
                    del self.lb_queues[client]
                elif placed:  # this client had its turn: to the back of the line
                    self.lb_queues[client] = self.lb_queues.pop(client)
            if not placed:
                return

    def _pick(self, task, free: list, n_engines: int):
        pol = task.policy
        if pol.get("min_engines", 0) > n_engines:
            return None
        if pol.get("batch") and time.monotonic() - task.queued_at < BATCH_WAIT:
            # many calls in one task: not queued behind another task (where they could no
            # longer be cancelled) while it has not waited long for an idle engine
            free = [e for e in free if not e.inflight]
        pin = pol.get("pin")
        if pin is not None:
            return next((e for e in free if e.id == pin), None)
        best = None
        fresh = any(eid not in task.tried for eid in self.engines)  # an untried engine exists
        for e in free:
            if fresh and e.id in task.tried:
                continue
            if best is None or len(e.inflight) < len(best.inflight):
                best = e
        return best

    def _place(self, task, rec) -> None:
        task.engine = rec.id
        rec.inflight[task.id] = task
        if len(rec.inflight) == 1:
            self._begin(task, time.monotonic())
        self.out.send.append(task)

    def _begin(self, task, now: float) -> None:
        """The task starts running on its engine now (engines run tasks in order)."""
        task.started = now
        if task.lb:
            task.attempts += 1
            timeout = task.policy.get("timeout")
            if timeout:
                task.deadline = now + timeout
                heapq.heappush(self._deadlines, (task.deadline, task.id))

    def next_started(self, rec, now: float) -> None:
        """After a task left `rec`, the first one still in flight starts."""
        for t in rec.inflight.values():
            if t.started is None:
                self._begin(t, now)
            return

    # --- outcomes ----------------------------------------------------------------
    def lb_result(self, task, rec, ok: bool, ename: str | None) -> bool:
        """A result came back for a load-balanced task; True to forward it to the client."""
        if not ok and ename != "TaskAborted" and self.retry(task, rec, f"it raised {ename}"):
            return False
        self._finished(task, ok)
        if not ok and task.policy.get("on_failure") == "cancel_rest":
            self.cancel_group(task.group, f"task {task.id} of the group failed")
        return True

    def zombie_done(self, rec, zombie) -> None:
        """The engine finished (or skipped) a task that was already failed or moved."""
        if rec.stuck and rec.stuck[0] == zombie.id:
            rec.stuck = None

    def retry(self, task, rec, why: str, queue: bool = True) -> bool:
        """Resubmit a failed task if its policy allows; True if it was.

        With `queue` False the caller puts it back in its queue itself."""
        if task.attempts > task.policy.get("retries", 0):
            return False
        if task.group is not None and task.group in self.cancelled_groups:
            return False
        if rec is not None:
            task.tried.add(rec.id)
        task.engine = None
        task.started = task.deadline = None
        task.queued_at = time.monotonic()
        self.tasks[task.id] = task
        if queue:
            self.lb_queues.setdefault(task.client, deque()).appendleft(task)
        self.out.notify.append((task.client, "retrying", {
            "id": task.id, "attempt": task.attempts + 1, "why": why,
            "engine": None if rec is None else rec.id}))
        return True

    def _finished(self, task, ok: bool) -> None:
        """Remember the outcome and settle tasks that waited for this one."""
        self.outcomes[task.id] = (ok, task.engine)
        if len(self.outcomes) > OUTCOMES_KEPT:
            self.outcomes.popitem(last=False)
        members = self.groups.get(task.group)
        if members is not None:
            members.discard(task.id)
            if not members:
                del self.groups[task.group]
        for dep in self.dependents.pop(task.id, ()):
            if dep.id not in self.waiting:
                continue
            if not ok:
                del self.waiting[dep.id]
                self._fail(dep, "DependencyError",
                           f"task {dep.id} was not run: its dependency {task.id} failed")
                continue
            dep.waiting -= 1
            if dep.waiting == 0:
                del self.waiting[dep.id]
                self._ready(dep)

    def _fail(self, task, ename: str, evalue: str) -> None:
        """Fail a task to its client now (detach it from its engine first)."""
        self.tasks.pop(task.id, None)
        self.out.fail.append((task, ename, evalue))
        self._finished(task, False)

    def _detach(self, task, rec, now: float) -> None:
        """Take a task back from the engine holding it: interrupt it if it runs,
        skip it if not. A placeholder (a zombie) holds its place there until the
        engine reports it; an engine that does not stop it is killed later."""
        if rec is None or rec.inflight.get(task.id) is not task:
            return
        zombie = copy.copy(task)
        zombie.zombie = True
        zombie.frames = zombie.header = None
        rec.inflight[task.id] = zombie  # same place in the engine's order
        if task.started is not None:
            self.out.interrupt.append((rec.id, task.id))
            rec.stuck = (task.id, now + self.kill_grace)
        else:
            self.out.abort.append((rec.id, task.id))

    # --- time ----------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def tick(self, now: float) -> None:
        """Time passed: stop tasks over their timeout, kill engines that did not
        stop, fail tasks that waited too long for engines."""
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, tid = heapq.heappop(self._deadlines)
            task = self.tasks.get(tid)
            if task is None or task.deadline != deadline:
                continue
            rec = self.engines.get(task.engine)
            timeout = task.policy["timeout"]
            self._detach(task, rec, now)
            why = f"it ran longer than its timeout of {timeout:g} s"
            if self.retry(task, rec, why):
                continue
            self._fail(task, "TaskTimeout",
                       f"task {tid} was stopped on engine {task.engine}: {why}")
            if task.policy.get("on_failure") == "cancel_rest":
                self.cancel_group(task.group, f"task {tid} of the group timed out")
        for rec in self.engines.values():
            if rec.stuck and now >= rec.stuck[1]:
                self.out.kill.append((rec.id, f"it did not stop task {rec.stuck[0]} within "
                                                f"{self.kill_grace:g} s of an interrupt"))
                rec.stuck = (rec.stuck[0], float("inf"))
        self._expire_engine_waits(now)
        self.schedule()  # retried tasks go out now

    def _expire_engine_waits(self, now: float) -> None:
        n = len(self.engines)
        for client, q in list(self.lb_queues.items()):
            expired = [t for t in q if t.policy.get("min_engines", 0) > n
                       and t.policy.get("engine_wait") is not None
                       and now - t.queued_at > t.policy["engine_wait"]]
            for t in expired:
                q.remove(t)
                self._fail(t, "NoEnginesError",
                           f"task {t.id} needs {t.policy['min_engines']} engines, but only {n} "
                           f"connected within {t.policy['engine_wait']:g} s")
            if not q:
                del self.lb_queues[client]

    # --- cancelling --------------------------------------------------------------
    def cancel_group(self, group, why: str) -> None:
        """Cancel every live task of `group`: queued ones dropped, running ones stopped."""
        if group is None or group in self.cancelled_groups:
            return
        self.cancelled_groups[group] = True
        if len(self.cancelled_groups) > 10_000:
            self.cancelled_groups.popitem(last=False)
        now = time.monotonic()
        for tid in list(self.groups.pop(group, ())):
            task = self.tasks.get(tid)
            if task is None:
                continue
            self.waiting.pop(tid, None)
            self._unqueue(task)
            self._detach(task, self.engines.get(task.engine), now)
            self._fail(task, "TaskCancelled", f"task {tid} was cancelled: {why}")

    def drop_unplaced(self, task) -> None:
        """Remove a load-balanced task not on any engine yet (abort, cancel);
        tasks depending on it fail."""
        self.waiting.pop(task.id, None)
        self._unqueue(task)
        self.tasks.pop(task.id, None)
        self._finished(task, False)

    def _unqueue(self, task) -> bool:
        q = self.lb_queues.get(task.client)
        if q is None or task.engine is not None:
            return False
        try:
            q.remove(task)
        except ValueError:
            return False
        if not q:
            del self.lb_queues[task.client]
        return True

    # --- engines leaving -----------------------------------------------------------
    def engine_gone(self, rec, why: str) -> list:
        """Its load-balanced tasks: requeue or fail them; return the direct ones left."""
        direct = []
        back = []  # requeued in their order, ahead of the rest
        for task in list(rec.inflight.values()) + list(rec.queue):
            if task.zombie:
                continue
            if not task.lb:
                self.tasks.pop(task.id, None)
                direct.append(task)
                continue
            if task.started is None:  # never ran there: no attempt used
                task.engine = None
                task.queued_at = time.monotonic()
                back.append(task)
                continue
            if self.retry(task, rec, f"engine {rec.id} died: {why}", queue=False):
                back.append(task)
                continue
            task.engine = None
            self._fail(task, "EngineError",
                       f"engine {rec.id} ({rec.host}, pid {rec.pid}) died while running task "
                       f"{task.id}: {why}")
            if task.policy.get("on_failure") == "cancel_rest":
                self.cancel_group(task.group, f"task {task.id} of the group lost its engine")
        for task in reversed(back):
            self.lb_queues.setdefault(task.client, deque()).appendleft(task)
        # tasks pinned to this engine by follow= can no longer run
        for client, q in list(self.lb_queues.items()):
            for t in [t for t in q if t.policy.get("pin") == rec.id]:
                q.remove(t)
                self._fail(t, "DependencyError", f"task {t.id} must run on engine {rec.id}, "
                           f"where its dependencies ran, but that engine died: {why}")
            if not q:
                del self.lb_queues[client]
        return direct

    def lb_counts(self) -> dict:
        return {"unassigned": sum(map(len, self.lb_queues.values())),
                "waiting": len(self.waiting)}
