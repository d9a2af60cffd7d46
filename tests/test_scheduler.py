"""Unit tests of pure logic: the controller's load-balancing scheduler.

`LoadBalancing` (scheduler.py) is mixed into `HubState` (state.py): events go
in (submit_lb, complete, tick, remove_engine, abort, cancel), and what the hub
must do comes out of `drain()` as an `Actions`. No sockets, no processes.

Time is a fake clock patched into both modules, so "started", "queued_at" and
deadlines are exact and tests never sleep.
"""

from __future__ import annotations

import pytest

import cohort.controller.scheduler as scheduler_mod
import cohort.controller.state as state_mod
from cohort.controller.scheduler import Actions
from cohort.controller.state import HubState, TaskRecord

A, B = b"client-a", b"client-b"
T0 = 1000.0


class Clock:
    """Stands in for the `time` module inside scheduler.py and state.py."""

    def __init__(self, now: float = T0):
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(scheduler_mod, "time", c)
    monkeypatch.setattr(state_mod, "time", c)
    return c


def make_state(engines: int = 2, window: int = 8, lb_window: int = 2,
               kill_grace: float = 3.0) -> HubState:
    st = HubState(window=window, lb_window=lb_window, kill_grace=kill_grace)
    for i in range(engines):
        st.register(f"uuid-{i}", {"host": f"h{i}", "pid": 100 + i})
    assert not st.drain()
    return st


def lbtask(tid: str, client: bytes = A, group=None, after=(), follow=(), **policy) -> TaskRecord:
    return TaskRecord(tid, client, None, [b"frame-" + tid.encode()], lb=True, policy=policy,
                      group=group, after=after, follow=follow)


def direct(tid: str, engine: int = 0, client: bytes = A) -> TaskRecord:
    return TaskRecord(tid, client, engine, [b"frame-" + tid.encode()])


def placed(out: Actions) -> list:
    return [(t.id, t.engine) for t in out.send]


def failed(out: Actions) -> dict:
    return {t.id: ename for t, ename, _ in out.fail}


def ok(st: HubState, eid: int, tid: str):
    """A successful result; the task forwarded (asserted) and the drained actions."""
    task, nxt = st.complete(eid, tid, True)
    assert task is not None and task.id == tid
    return nxt, st.drain()


def inflight(st: HubState, eid: int) -> list:
    return list(st.engines[eid].inflight)


# --- Actions -------------------------------------------------------------------------
def test_actions_is_falsy_until_something_is_in_it():
    out = Actions()
    assert not out
    out.notify.append((A, "x", {}))
    assert out


def test_drain_hands_over_and_starts_fresh():
    st = make_state(engines=1)
    st.submit_lb(lbtask("t1"))
    out = st.drain()
    assert placed(out) == [("t1", 0)]
    assert not st.drain()


# --- placement -----------------------------------------------------------------------
def test_least_loaded_placement_within_the_lb_window():
    st = make_state(engines=3, lb_window=2)
    for i in range(7):
        st.submit_lb(lbtask(f"t{i}"))
    out = st.drain()
    # each goes to the least-loaded engine (ties: the first), at most 2 per engine
    assert placed(out) == [("t0", 0), ("t1", 1), ("t2", 2), ("t3", 0), ("t4", 1), ("t5", 2)]
    assert st.lb_counts() == {"unassigned": 1, "waiting": 0}
    assert inflight(st, 0) == ["t0", "t3"]
    # the first in flight on an engine runs; the next only waits there (FIFO)
    assert st.tasks["t0"].started == T0 and st.tasks["t0"].attempts == 1
    assert st.tasks["t3"].started is None and st.tasks["t3"].attempts == 0
    assert st.queue_status()[0] == {"queue": 0, "inflight": 2, "completed": 0, "failed": 0}
    # a slot frees: the waiting task goes there, and t3 starts now
    nxt, out = ok(st, 0, "t0")
    assert nxt == [] and placed(out) == [("t6", 0)]
    assert st.tasks["t3"].started == T0 and st.tasks["t6"].started is None
    assert st.lb_counts() == {"unassigned": 0, "waiting": 0}
    assert st.engines[0].completed == 1


def test_least_loaded_counts_every_task_in_flight():
    st = make_state(engines=3, lb_window=3)
    st.submit_lb(lbtask("a"))  # -> 0
    st.submit_lb(lbtask("b"))  # -> 1
    st.submit_lb(lbtask("c"))  # -> 2
    st.drain()
    ok(st, 1, "b")
    st.submit_lb(lbtask("d"))  # engine 1 is the emptiest
    assert placed(st.drain()) == [("d", 1)]
    ok(st, 2, "c")
    st.submit_lb(lbtask("e"))
    assert placed(st.drain()) == [("e", 2)]


def test_a_batch_of_calls_goes_only_to_an_engine_with_nothing_in_flight():
    st = make_state(engines=2, lb_window=4)
    st.submit_lb(lbtask("long"))           # -> engine 0
    st.submit_lb(lbtask("b1", batch=1))    # -> engine 1, idle
    st.submit_lb(lbtask("b2", batch=1))    # both busy: waits here (cancellable)
    st.submit_lb(lbtask("plain"))          # a plain task may queue on an engine
    assert placed(st.drain()) == [("long", 0), ("b1", 1), ("plain", 0)]
    assert st.lb_counts()["unassigned"] == 1
    _, out = ok(st, 1, "b1")
    assert placed(out) == [("b2", 1)]


def test_a_batch_that_waited_long_for_an_idle_engine_takes_a_busy_one(clock):
    st = make_state(engines=1, lb_window=4)
    st.submit_lb(lbtask("slow"))
    st.submit_lb(lbtask("b", batch=1))
    assert placed(st.drain()) == [("slow", 0)]
    clock.advance(scheduler_mod.BATCH_WAIT + 0.01)
    st.submit_lb(lbtask("next"))  # any event that schedules: the batch goes first, then it
    assert placed(st.drain()) == [("b", 0), ("next", 0)]


def test_lb_window_of_one_sends_one_task_per_engine():
    st = make_state(engines=2, lb_window=1)
    for i in range(4):
        st.submit_lb(lbtask(f"t{i}"))
    assert placed(st.drain()) == [("t0", 0), ("t1", 1)]
    assert st.lb_counts()["unassigned"] == 2
    _, out = ok(st, 1, "t1")
    assert placed(out) == [("t2", 1)]
    assert st.tasks["t2"].started == T0  # alone on its engine: it runs at once


def test_short_tasks_widen_the_window_long_ones_keep_it():
    """An engine whose tasks take microseconds gets many in flight (they travel
    and come back in batches); one whose tasks take long keeps `lb_window`."""
    st = make_state(engines=2, lb_window=2)
    for i in range(200):
        st.submit_lb(lbtask(f"t{i}"))
    assert len(placed(st.drain())) == 4  # nothing measured yet: the configured window
    assert st.window_of(st.engines[0]) == 2
    st.complete(0, "t0", True, took=20e-6)   # engine 0: tiny tasks
    st.complete(1, "t1", True, took=1.0)     # engine 1: long ones
    assert st.window_of(st.engines[0]) == scheduler_mod.MAX_WINDOW
    assert st.window_of(st.engines[1]) == 2
    assert len(inflight(st, 0)) == scheduler_mod.MAX_WINDOW and len(inflight(st, 1)) == 2
    # a slower mix narrows it again, smoothly
    for _ in range(30):
        st.complete(0, inflight(st, 0)[0], True, took=500e-6)
    assert st.window_of(st.engines[0]) == 4
    assert len(inflight(st, 0)) <= scheduler_mod.MAX_WINDOW


def test_nothing_placed_without_engines_then_at_once_on_register():
    st = make_state(engines=0, lb_window=2)
    for i in range(3):
        st.submit_lb(lbtask(f"t{i}"))
    assert not st.drain()
    assert st.lb_counts() == {"unassigned": 3, "waiting": 0}
    assert set(st.tasks) == {"t0", "t1", "t2"}
    st.register("u0", {})
    assert placed(st.drain()) == [("t0", 0), ("t1", 0)]
    st.register("u0", {})  # a re-sent registration is not a new engine
    assert not st.drain()
    st.register("u1", {})
    assert placed(st.drain()) == [("t2", 1)]
    assert st.lb_counts() == {"unassigned": 0, "waiting": 0}


def test_clients_take_turns_one_engine():
    st = make_state(engines=1, lb_window=1)
    for i in range(5):
        st.submit_lb(lbtask(f"a{i}", client=A))
    for i in range(5):
        st.submit_lb(lbtask(f"b{i}", client=B))
    order = [t.id for t in st.drain().send]
    running = order[0]
    for _ in range(9):
        _, out = ok(st, 0, running)
        (running,) = [t.id for t in out.send]
        order.append(running)
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3", "b2", "a4", "b3", "b4"]
    assert not st.lb_queues


def test_clients_take_turns_within_one_scheduling_pass():
    st = make_state(engines=0, lb_window=2)
    for i in range(6):
        st.submit_lb(lbtask(f"a{i}", client=A))
        st.submit_lb(lbtask(f"b{i}", client=B))
    st.register("u0", {})
    assert placed(st.drain()) == [("a0", 0), ("b0", 0)]
    st.register("u1", {})
    assert placed(st.drain()) == [("a1", 1), ("b1", 1)]
    # one slot at a time from now on: still one client, then the other
    assert placed(ok(st, 0, "a0")[1]) == [("a2", 0)]
    assert placed(ok(st, 1, "b1")[1]) == [("b2", 1)]
    assert placed(ok(st, 1, "a1")[1]) == [("a3", 1)]
    assert st.lb_counts()["unassigned"] == 12 - 7


def test_big_map_of_one_client_does_not_starve_another():
    st = make_state(engines=2, lb_window=2)
    for i in range(100):
        st.submit_lb(lbtask(f"a{i}", client=A))
    st.drain()
    st.submit_lb(lbtask("b0", client=B))
    assert not st.drain()  # all engines full
    sent = [t.id for t in ok(st, 0, "a0")[1].send] + [t.id for t in ok(st, 1, "a1")[1].send]
    assert "b0" in sent  # B's one task goes within the next two slots, before A's 95 others


def test_a_task_that_cannot_run_does_not_block_the_ones_behind_it():
    st = make_state(engines=1)
    st.submit_lb(lbtask("big", min_engines=2))
    st.submit_lb(lbtask("small"))
    assert placed(st.drain()) == [("small", 0)]
    assert st.lb_counts()["unassigned"] == 1


# --- min_engines / engine_wait ------------------------------------------------------------
def test_min_engines_holds_tasks_until_enough_engines_register(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", min_engines=3, engine_wait=10))
    assert not st.drain()
    st.register("u1", {})
    assert not st.drain()
    clock.advance(5)
    st.tick(clock.now)
    assert not st.drain()
    st.register("u2", {})
    out = st.drain()
    assert placed(out) == [("t", 0)]
    st.tick(clock.advance(100))  # placed: no longer subject to engine_wait
    assert not st.drain()


def test_engine_wait_expiry_fails_with_no_engines_error(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", min_engines=2, engine_wait=10))
    st.submit_lb(lbtask("forever", min_engines=2))  # no engine_wait: waits on
    st.tick(clock.now + 10)  # exactly at the limit: still waiting
    assert not st.drain()
    st.tick(clock.now + 10.5)
    out = st.drain()
    assert failed(out) == {"t": "NoEnginesError"}
    (_, _, evalue), = out.fail
    assert "needs 2 engines" in evalue and "only 1" in evalue
    assert "t" not in st.tasks and st.outcomes["t"] == (False, None)
    assert st.lb_counts()["unassigned"] == 1
    st.tick(clock.now + 1e6)
    assert not st.drain()
    st.register("u1", {})
    assert placed(st.drain()) == [("forever", 0)]


def test_engine_wait_expiry_fails_the_tasks_dependents(clock):
    st = make_state(engines=0)
    st.submit_lb(lbtask("t", min_engines=1, engine_wait=1))
    st.submit_lb(lbtask("dep", after=["t"]))
    st.tick(clock.now + 2)
    assert failed(st.drain()) == {"t": "NoEnginesError", "dep": "DependencyError"}
    assert not st.tasks and not st.waiting and not st.lb_queues


# --- timeouts ---------------------------------------------------------------------------
def test_timeout_interrupts_fails_then_kills_after_grace(clock):
    st = make_state(engines=2, kill_grace=3.0)
    st.submit_lb(lbtask("t", timeout=5))
    assert placed(st.drain()) == [("t", 0)]
    assert st.next_deadline() == T0 + 5
    st.tick(T0 + 4.9)
    assert not st.drain()
    st.tick(T0 + 5)
    out = st.drain()
    assert out.interrupt == [(0, "t")]
    assert failed(out) == {"t": "TaskTimeout"}
    assert "timeout of 5 s" in out.fail[0][2]
    assert not out.kill and not out.send
    rec = st.engines[0]
    assert rec.stuck == ("t", T0 + 5 + 3.0) and rec.state == "stopping"
    assert rec.inflight["t"].zombie and "t" not in st.tasks
    assert st.outcomes["t"] == (False, 0)
    # a stuck engine gets no new work
    st.submit_lb(lbtask("u"))
    st.submit_lb(lbtask("v"))
    st.submit_lb(lbtask("w"))
    assert placed(st.drain()) == [("u", 1), ("v", 1)]
    st.tick(T0 + 7.9)
    assert not st.drain()
    st.tick(T0 + 8)
    out = st.drain()
    assert out.kill and out.kill[0][0] == 0 and "did not stop task t" in out.kill[0][1]
    st.tick(T0 + 100)
    assert not st.drain().kill  # asked once


def test_late_result_of_a_timed_out_task_is_dropped_and_unsticks_the_engine(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", timeout=5))
    st.submit_lb(lbtask("next"))  # waits behind t on the same engine
    st.drain()
    st.tick(T0 + 6)
    st.drain()
    assert st.engines[0].stuck is not None
    clock.now = T0 + 7
    assert st.complete(0, "t", False, "KeyboardInterrupt") == (None, [])
    out = st.drain()
    assert not out.fail and not out.notify
    rec = st.engines[0]
    assert rec.stuck is None and rec.state == "busy"
    assert rec.completed == 0 and rec.failed == 0  # a zombie is not counted
    assert st.tasks["next"].started == T0 + 7  # the engine moved on
    st.tick(T0 + 100)
    assert not st.drain().kill  # stopped in time: no kill
    assert st.outcomes["t"] == (False, 0)  # still the timeout


def test_a_successful_late_result_is_dropped_too(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", timeout=1))
    st.drain()
    st.tick(T0 + 2)
    st.drain()
    assert st.complete(0, "t", True) == (None, [])
    assert st.engines[0].stuck is None and not st.engines[0].inflight


def test_timeout_counts_from_the_inferred_start(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("first"))
    st.submit_lb(lbtask("t", timeout=5))
    st.drain()
    st.tick(T0 + 100)  # t has not started: no deadline yet
    assert not st.drain()
    clock.now = T0 + 50
    ok(st, 0, "first")
    assert st.tasks["t"].started == T0 + 50 and st.tasks["t"].deadline == T0 + 55
    st.tick(T0 + 54)
    assert not st.drain()
    st.tick(T0 + 55)
    assert failed(st.drain()) == {"t": "TaskTimeout"}


def test_finished_task_leaves_no_live_deadline(clock):
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", timeout=5))
    st.drain()
    ok(st, 0, "t")
    st.tick(T0 + 10)
    assert not st.drain()


def test_timeout_with_retries_requeues_on_another_engine(clock):
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", timeout=5, retries=1))
    st.drain()
    st.tick(T0 + 6)
    out = st.drain()
    assert out.interrupt == [(0, "t")] and not out.fail
    assert out.notify == [(A, "retrying", {"id": "t", "attempt": 2, "engine": 0,
                                           "why": "it ran longer than its timeout of 5 s"})]
    st.schedule()
    sends = placed(out) + placed(st.drain())
    assert sends == [("t", 1)]
    assert st.tasks["t"].tried == {0} and st.tasks["t"].attempts == 2
    # the second attempt times out too: no retries left
    st.tick(T0 + 6 + 5)
    out = st.drain()
    assert out.interrupt == [(1, "t")] and failed(out) == {"t": "TaskTimeout"}


def test_timeout_retry_is_placed_by_the_tick_itself(clock):
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", timeout=5, retries=1))
    st.drain()
    st.tick(T0 + 6)
    out = st.drain()
    assert placed(out) == [("t", 1)]  # engine 1 is idle: no reason to wait


def test_timeout_of_a_cancel_rest_task_cancels_its_group(clock):
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", group="g", timeout=5, on_failure="cancel_rest"))
    st.submit_lb(lbtask("u", group="g"))
    st.drain()
    st.tick(T0 + 6)
    out = st.drain()
    assert failed(out) == {"t": "TaskTimeout", "u": "TaskCancelled"}
    assert sorted(out.interrupt) == [(0, "t"), (1, "u")]


# --- retries -----------------------------------------------------------------------------
def test_error_result_is_retried_on_another_engine_then_forwarded():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", retries=1))
    assert placed(st.drain()) == [("t", 0)]
    assert st.complete(0, "t", False, "ValueError") == (None, [])
    out = st.drain()
    assert out.notify == [(A, "retrying", {"id": "t", "attempt": 2, "engine": 0,
                                           "why": "it raised ValueError"})]
    assert placed(out) == [("t", 1)]
    t = st.tasks["t"]
    assert t.tried == {0} and t.attempts == 2 and t.started == T0
    assert st.engines[0].failed == 1
    task, _ = st.complete(1, "t", False, "ValueError")
    assert task is t  # retries used up: the failure goes to the client
    out = st.drain()
    assert not out.send and not out.notify and not out.fail
    assert st.outcomes["t"] == (False, 1) and "t" not in st.tasks


def test_a_retried_task_can_succeed():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", retries=3))
    st.drain()
    st.complete(0, "t", False, "ValueError")
    st.drain()
    task, _ = st.complete(1, "t", True)
    assert task.id == "t"
    assert st.outcomes["t"] == (True, 1)


def test_retry_waits_for_an_engine_it_has_not_failed_on():
    st = make_state(engines=2, lb_window=1)
    st.submit_lb(lbtask("t", retries=1))
    st.submit_lb(lbtask("busy"))
    assert placed(st.drain()) == [("t", 0), ("busy", 1)]
    st.complete(0, "t", False, "ValueError")
    out = st.drain()
    assert out.notify and not out.send  # engine 0 is free, but t failed there
    ok_out = ok(st, 1, "busy")[1]
    assert placed(ok_out) == [("t", 1)]


def test_retry_goes_back_to_the_only_engine():
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", retries=1))
    st.drain()
    st.complete(0, "t", False, "ValueError")
    assert placed(st.drain()) == [("t", 0)]


def test_retried_task_goes_before_the_clients_other_queued_tasks():
    st = make_state(engines=1, lb_window=1)
    st.submit_lb(lbtask("t", retries=1))
    st.submit_lb(lbtask("u"))
    st.drain()
    st.complete(0, "t", False, "ValueError")
    assert placed(st.drain()) == [("t", 0)]


def test_aborted_result_is_not_retried():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", retries=5))
    st.drain()
    task, _ = st.complete(0, "t", False, "TaskAborted")
    assert task.id == "t"
    assert not st.drain() and st.outcomes["t"] == (False, 0)


def test_retry_prefers_an_untried_engine_even_after_an_engine_died():
    st = make_state(engines=3)
    st.submit_lb(lbtask("t", retries=2))
    assert placed(st.drain()) == [("t", 0)]
    st.remove_engine(0, "crashed")
    assert placed(st.drain()) == [("t", 1)]
    st.complete(1, "t", False, "ValueError")  # tried = {0, 1}; engine 2 never tried
    assert placed(st.drain()) == [("t", 2)]


# --- engines leaving ----------------------------------------------------------------------
def test_started_task_is_retried_when_its_engine_dies():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", retries=1))
    st.drain()
    assert st.remove_engine(0, "heartbeat lost") == ([], [])
    out = st.drain()
    assert out.notify == [(A, "retrying", {"id": "t", "attempt": 2, "engine": 0,
                                           "why": "engine 0 died: heartbeat lost"})]
    assert placed(out) == [("t", 1)]
    assert st.tasks["t"].tried == {0} and st.tasks["t"].attempts == 2


def test_started_task_without_retries_fails_with_engine_error():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t"))
    st.drain()
    st.remove_engine(0, "heartbeat lost")
    out = st.drain()
    assert failed(out) == {"t": "EngineError"}
    evalue = out.fail[0][2]
    assert "engine 0 (h0, pid 100)" in evalue and "heartbeat lost" in evalue
    assert not out.send and "t" not in st.tasks
    assert st.outcomes["t"] == (False, None)


def test_unstarted_inflight_tasks_are_requeued_without_using_an_attempt():
    st = make_state(engines=2, lb_window=2)
    for i in range(4):
        st.submit_lb(lbtask(f"t{i}"))  # t0, t2 -> engine 0; t1, t3 -> engine 1
    st.drain()
    assert inflight(st, 0) == ["t0", "t2"]
    st.remove_engine(0, "gone")
    out = st.drain()
    assert failed(out) == {"t0": "EngineError"}  # it was running
    assert not out.notify and not out.send      # t2 never ran: requeued, engine 1 is full
    t2 = st.tasks["t2"]
    assert t2.engine is None and t2.attempts == 0 and t2.tried == set()
    assert st.lb_counts()["unassigned"] == 1
    _, out = ok(st, 1, "t1")
    assert placed(out) == [("t2", 1)]


def test_unstarted_task_is_requeued_even_with_no_engine_left():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.drain()
    st.remove_engine(0)
    assert failed(st.drain()) == {"a": "EngineError"}
    assert st.lb_counts()["unassigned"] == 1
    st.register("new", {})
    assert placed(st.drain()) == [("b", 1)]


def test_engine_death_of_a_cancel_rest_task_cancels_its_group():
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", group="g", on_failure="cancel_rest"))
    st.submit_lb(lbtask("u", group="g"))
    st.drain()
    st.remove_engine(0, "crashed")
    out = st.drain()
    assert failed(out) == {"t": "EngineError", "u": "TaskCancelled"}
    assert out.interrupt == [(1, "u")]


def test_zombie_on_a_removed_engine_is_not_failed_again():
    st = make_state(engines=1)
    st.submit_lb(lbtask("t", timeout=1))
    st.drain()
    st.tick(T0 + 2)
    st.drain()
    st.remove_engine(0, "killed")
    assert not st.drain()


def test_requeued_tasks_keep_their_order():
    st = make_state(engines=1, lb_window=3)
    for t in ("t0", "t1", "t2"):
        st.submit_lb(lbtask(t))  # t0 runs, t1 and t2 wait on the engine
    st.drain()
    st.remove_engine(0)
    st.drain()
    assert [t.id for t in st.lb_queues[A]] == ["t1", "t2"]


def test_engine_wait_counts_from_the_requeue(clock):
    st = make_state(engines=2)
    st.submit_lb(lbtask("t", min_engines=2, engine_wait=10, retries=1))
    assert placed(st.drain()) == [("t", 0)]
    clock.advance(60)  # it ran for a minute, then its engine died
    st.remove_engine(0, "crashed")
    out = st.drain()
    assert out.notify and not out.send  # retrying, waiting for a second engine
    st.tick(clock.advance(1))  # one second of waiting, of the ten allowed
    assert not st.drain().fail


# --- on_failure="cancel_rest" ---------------------------------------------------------------
def test_cancel_rest_cancels_queued_running_and_unstarted_members():
    st = make_state(engines=2, lb_window=2)
    for i in range(1, 7):
        st.submit_lb(lbtask(f"g{i}", group="g", on_failure="cancel_rest"))
    st.submit_lb(lbtask("other", group="h"))
    st.submit_lb(lbtask("free"))
    assert placed(st.drain()) == [("g1", 0), ("g2", 1), ("g3", 0), ("g4", 1)]
    task, _ = st.complete(0, "g1", False, "ValueError")
    assert task.id == "g1"  # the failure itself is forwarded
    out = st.drain()
    assert failed(out) == {f"g{i}": "TaskCancelled" for i in range(2, 7)}
    assert all("g1 of the group failed" in ev for _, _, ev in out.fail)
    # g2 runs on engine 1; g3 started on engine 0 when g1 finished: both stopped
    assert sorted(out.interrupt) == [(0, "g3"), (1, "g2")]
    assert out.abort == [(1, "g4")]  # sent, not started: skipped
    assert not out.send and not out.notify
    assert st.engines[0].stuck == ("g3", T0 + 3.0)
    assert st.engines[1].stuck == ("g2", T0 + 3.0)
    assert all(t.zombie for e in st.engines.values() for t in e.inflight.values())
    assert "g" in st.cancelled_groups and "g" not in st.groups
    assert set(st.tasks) == {"other", "free"}  # other groups and ungrouped tasks untouched
    assert st.lb_counts()["unassigned"] == 2   # both engines are stuck
    # later submissions to the cancelled group fail at once
    st.submit_lb(lbtask("g7", group="g"))
    out = st.drain()
    assert failed(out) == {"g7": "TaskCancelled"} and not out.send
    assert "g7" not in st.tasks
    # the engines report the zombies: nothing forwarded, the engines take work again
    assert st.complete(1, "g2", False, "KeyboardInterrupt") == (None, [])
    assert st.engines[1].stuck is None
    assert st.complete(1, "g4", False, "TaskAborted") == (None, [])
    assert st.complete(0, "g3", False, "KeyboardInterrupt") == (None, [])
    assert st.engines[0].stuck is None
    out = st.drain()
    assert sorted(t.id for t in out.send) == ["free", "other"] and not out.fail
    st.tick(T0 + 100)
    assert not st.drain().kill


def test_cancel_rest_also_fails_members_waiting_for_dependencies():
    st = make_state(engines=2)
    st.submit_lb(lbtask("x"))
    st.submit_lb(lbtask("g1", group="g", on_failure="cancel_rest"))
    st.submit_lb(lbtask("g2", group="g", after=["x"]))
    assert placed(st.drain()) == [("x", 0), ("g1", 1)]
    assert st.lb_counts()["waiting"] == 1
    st.complete(1, "g1", False, "ValueError")
    out = st.drain()
    assert failed(out) == {"g2": "TaskCancelled"}
    assert not out.interrupt and not out.abort
    assert not st.waiting
    _, out = ok(st, 0, "x")  # releases nothing
    assert not out


def test_cancel_rest_with_retries_cancels_only_after_the_last_attempt():
    st = make_state(engines=3)
    st.submit_lb(lbtask("g1", group="g", on_failure="cancel_rest", retries=1))
    st.submit_lb(lbtask("g2", group="g"))
    st.drain()
    st.complete(0, "g1", False, "ValueError")
    out = st.drain()
    assert out.notify and not out.fail  # retried, group alive
    assert "g" not in st.cancelled_groups
    assert placed(out) == [("g1", 2)]
    task, _ = st.complete(2, "g1", False, "ValueError")
    assert task.id == "g1"
    assert failed(st.drain()) == {"g2": "TaskCancelled"}


def test_members_of_a_cancelled_group_are_not_retried():
    st = make_state(engines=2)
    st.submit_lb(lbtask("g1", group="g", on_failure="cancel_rest"))
    st.submit_lb(lbtask("g2", group="g", retries=3))
    st.drain()
    st.complete(0, "g1", False, "ValueError")
    out = st.drain()
    assert failed(out) == {"g2": "TaskCancelled"} and not out.notify


def test_failure_without_cancel_rest_leaves_the_group_alone():
    st = make_state(engines=2)
    st.submit_lb(lbtask("g1", group="g"))
    st.submit_lb(lbtask("g2", group="g"))
    st.drain()
    st.complete(0, "g1", False, "ValueError")
    assert not st.drain() and "g2" in st.tasks
    assert st.groups == {"g": {"g2"}}
    ok(st, 1, "g2")
    assert "g" not in st.groups  # emptied groups are forgotten


# --- after= -----------------------------------------------------------------------------------
def test_after_waits_and_is_released_on_success():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.submit_lb(lbtask("c", after=["a", "b"]))
    assert placed(st.drain()) == [("a", 0), ("b", 1)]
    assert st.lb_counts() == {"unassigned": 0, "waiting": 1}
    assert st.tasks["c"].waiting == 2
    _, out = ok(st, 0, "a")
    assert not out.send and st.tasks["c"].waiting == 1
    _, out = ok(st, 1, "b")
    assert placed(out) == [("c", 0)]
    assert st.lb_counts() == {"unassigned": 0, "waiting": 0}


def test_after_a_task_that_already_succeeded_runs_at_once():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.submit_lb(lbtask("b", after=["a", "a"]))
    assert placed(st.drain()) == [("b", 0)]


def test_after_a_failed_dependency_fails_with_dependency_error():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    st.drain()
    st.complete(0, "a", False, "ValueError")
    out = st.drain()
    assert failed(out) == {"b": "DependencyError"}
    assert "dependency a failed" in out.fail[0][2]
    assert not st.waiting and "b" not in st.tasks
    # and one submitted after the failure fails at once
    st.submit_lb(lbtask("c", after=["a"]))
    assert failed(st.drain()) == {"c": "DependencyError"}


def test_after_an_unknown_task_fails_at_once():
    st = make_state(engines=1)
    st.submit_lb(lbtask("b", group="g", after=["nope"]))
    out = st.drain()
    assert failed(out) == {"b": "DependencyError"}
    assert "does not know" in out.fail[0][2]
    assert not out.send and "b" not in st.tasks and "g" not in st.groups


def test_dependency_failure_cascades_through_a_chain():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    st.submit_lb(lbtask("c", after=["b"]))
    st.submit_lb(lbtask("d", after=["c"], follow=[]))
    st.submit_lb(lbtask("side"))  # not in the chain
    st.drain()
    assert st.lb_counts()["waiting"] == 3
    st.complete(0, "a", False, "ValueError")
    out = st.drain()
    assert failed(out) == {"b": "DependencyError", "c": "DependencyError",
                           "d": "DependencyError"}
    assert not st.waiting and "side" in st.tasks
    assert all(st.outcomes[t] == (False, None) for t in "bcd")


def test_success_cascades_through_a_chain():
    st = make_state(engines=1, lb_window=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    st.submit_lb(lbtask("c", after=["b"]))
    assert placed(st.drain()) == [("a", 0)]
    assert placed(ok(st, 0, "a")[1]) == [("b", 0)]
    assert placed(ok(st, 0, "b")[1]) == [("c", 0)]


def test_after_a_direct_task():
    st = make_state(engines=2)
    assert st.submit(direct("d", engine=1))
    st.submit_lb(lbtask("x", after=["d"]))
    assert not st.drain()
    task, _ = st.complete(1, "d", True)
    assert task.id == "d"
    assert placed(st.drain()) == [("x", 0)]


# --- follow= ------------------------------------------------------------------------------------
def test_follow_pins_to_the_engine_where_the_dependency_ran():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.submit_lb(lbtask("x"))  # engine 0 is busier now than engine 1
    assert placed(st.drain()) == [("x", 0)]
    st.submit_lb(lbtask("f", follow=["a"]))
    assert placed(st.drain()) == [("f", 0)]
    assert st.tasks["f"].policy["pin"] == 0


def test_follow_waits_for_a_running_dependency_then_goes_where_it_ran():
    st = make_state(engines=2)
    st.submit_lb(lbtask("x"))
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("f", follow=["a"]))
    assert placed(st.drain()) == [("x", 0), ("a", 1)]
    assert st.lb_counts()["waiting"] == 1
    _, out = ok(st, 1, "a")
    assert placed(out) == [("f", 1)]


def test_pinned_task_waits_for_room_on_its_engine():
    st = make_state(engines=2, lb_window=1)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.submit_lb(lbtask("x"))
    st.submit_lb(lbtask("f", follow=["a"]))
    out = st.drain()
    assert placed(out) == [("x", 0)]  # engine 1 is free, but f must run on engine 0
    _, out = ok(st, 0, "x")
    assert placed(out) == [("f", 0)]


def test_follow_tasks_that_ran_on_different_engines_fails():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.drain()
    ok(st, 0, "a")
    ok(st, 1, "b")
    st.submit_lb(lbtask("f", follow=["a", "b"]))
    out = st.drain()
    assert failed(out) == {"f": "DependencyError"}
    assert "different engines" in out.fail[0][2] and not out.send


def test_follow_a_failed_dependency_fails():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("f", follow=["a"]))
    st.drain()
    st.complete(0, "a", False, "ValueError")
    assert failed(st.drain()) == {"f": "DependencyError"}


def test_follow_an_engine_that_is_gone_fails_at_submission():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.remove_engine(0)
    st.drain()
    st.submit_lb(lbtask("f", follow=["a"]))
    out = st.drain()
    assert failed(out) == {"f": "DependencyError"}
    assert "engine 0" in out.fail[0][2] and "gone" in out.fail[0][2]
    assert not out.send and "f" not in st.tasks


def test_follower_waiting_in_the_queue_fails_when_its_engine_dies():
    st = make_state(engines=2, lb_window=1)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.submit_lb(lbtask("x"))
    st.submit_lb(lbtask("f", follow=["a"]))
    st.submit_lb(lbtask("g", after=["f"]))
    assert placed(st.drain()) == [("x", 0)]
    st.remove_engine(0, "crashed")
    out = st.drain()
    assert failed(out) == {"x": "EngineError", "f": "DependencyError", "g": "DependencyError"}
    f_msg = [ev for t, _, ev in out.fail if t.id == "f"][0]
    assert "engine 0" in f_msg and "died: crashed" in f_msg
    assert not st.lb_queues and not st.waiting and not st.tasks


def test_follower_waiting_for_its_dependency_fails_when_the_engine_died_meanwhile():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.submit_lb(lbtask("f", follow=["a"], after=["b"]))
    st.drain()
    ok(st, 0, "a")
    st.remove_engine(0)
    assert not st.drain()  # f still waits for b
    _, out = ok(st, 1, "b")
    assert failed(out) == {"f": "DependencyError"} and not out.send
    assert "gone" in out.fail[0][2]


def test_started_follower_whose_engine_dies_cannot_be_retried_elsewhere():
    st = make_state(engines=2)
    st.submit_lb(lbtask("a"))
    st.drain()
    ok(st, 0, "a")
    st.submit_lb(lbtask("f", follow=["a"], retries=2))
    assert placed(st.drain()) == [("f", 0)]
    st.remove_engine(0, "crashed")
    out = st.drain()
    assert failed(out) == {"f": "DependencyError"} and not out.send
    assert not st.lb_queues and "f" not in st.tasks


# --- abort / cancel ---------------------------------------------------------------------------------
def test_abort_drops_unplaced_lb_tasks_and_fails_their_dependents():
    st = make_state(engines=0)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    st.submit_lb(lbtask("other", client=B))
    dropped, ask = st.abort(A, ids=["a"])
    assert [t.id for t in dropped] == ["a"] and ask == {}
    out = st.drain()
    assert failed(out) == {"b": "DependencyError"}
    assert set(st.tasks) == {"other"}
    assert st.lb_counts() == {"unassigned": 1, "waiting": 0}
    assert st.outcomes["a"] == (False, None)


def test_abort_asks_engines_about_placed_lb_tasks():
    st = make_state(engines=1, lb_window=2)
    for t in ("a", "b", "c"):
        st.submit_lb(lbtask(t))
    st.drain()
    dropped, ask = st.abort(A)
    assert [t.id for t in dropped] == ["c"]
    assert ask == {0: ["a", "b"]}
    assert not st.lb_queues
    # the engine skips b: it is failed as aborted, without a retry
    task, _ = st.complete(0, "b", False, "TaskAborted")
    assert task.id == "b"


def test_abort_with_targets_leaves_unplaced_lb_tasks():
    st = make_state(engines=1, lb_window=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.drain()
    dropped, ask = st.abort(A, targets=[0])
    assert dropped == [] and ask == {0: ["a"]}
    assert "b" in st.tasks


def test_abort_of_a_task_and_its_dependent_fails_the_dependent_once():
    st = make_state(engines=0)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    dropped, _ = st.abort(A)
    out = st.drain()
    reported = [t.id for t in dropped] + [t.id for t, _, _ in out.fail]
    assert sorted(reported) == ["a", "b"]


def test_cancel_unplaced_lb_tasks_and_their_dependents_fail():
    st = make_state(engines=0)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.submit_lb(lbtask("c", after=["a"]))
    found = st.cancel(A, ["a", "b"])
    assert [t.id for t in found] == ["a", "b"]
    assert failed(st.drain()) == {"c": "DependencyError"}
    assert not st.tasks and not st.lb_queues and not st.waiting


def test_cancel_of_a_task_and_its_dependent_fails_nothing():
    st = make_state(engines=0)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    assert [t.id for t in st.cancel(A, ["a", "b"])] == ["a", "b"]
    assert failed(st.drain()) == {}


def test_cancel_of_a_waiting_lb_task():
    st = make_state(engines=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b", after=["a"]))
    st.drain()
    assert [t.id for t in st.cancel(A, ["b"])] == ["b"]
    assert not st.waiting
    ok(st, 0, "a")  # releasing nothing
    assert not st.drain()


def test_cancel_is_all_or_nothing_for_lb_tasks():
    st = make_state(engines=1, lb_window=1)
    st.submit_lb(lbtask("a"))
    st.submit_lb(lbtask("b"))
    st.drain()
    assert st.cancel(A, ["a", "b"]) == []  # a is on its engine
    assert st.cancel(B, ["b"]) == []       # not B's task
    assert st.lb_counts()["unassigned"] == 1
    assert [t.id for t in st.cancel(A, ["b", "b"])] == ["b"]
    assert st.lb_counts()["unassigned"] == 0


# --- duplicates ------------------------------------------------------------------------------------
def test_duplicate_submission_is_ignored():
    st = make_state(engines=1, lb_window=1)
    st.submit_lb(lbtask("t"))
    st.submit_lb(lbtask("q"))
    first_q = st.tasks["q"]
    st.drain()
    st.submit_lb(lbtask("t"))  # placed
    st.submit_lb(lbtask("q"))  # queued
    assert not st.drain()
    assert st.tasks["q"] is first_q
    assert st.lb_counts()["unassigned"] == 1 and inflight(st, 0) == ["t"]
    st.submit_lb(lbtask("w", after=["t"]))
    st.submit_lb(lbtask("w", after=["t"]))  # waiting
    assert st.lb_counts()["waiting"] == 1 and len(st.dependents["t"]) == 1


# --- direct and load-balanced tasks sharing engines ---------------------------------------------
def test_direct_tasks_count_in_the_lb_window_and_start_in_fifo_order(clock):
    st = make_state(engines=2, window=4, lb_window=2)
    assert st.submit(direct("d1", engine=0))
    assert st.tasks["d1"].started == T0 and st.tasks["d1"].attempts == 0
    st.submit_lb(lbtask("l1", timeout=5))  # engine 1 is emptier
    st.submit_lb(lbtask("l2", timeout=5))  # tie: engine 0, behind d1
    st.submit_lb(lbtask("l3"))             # engine 1, behind l1
    st.submit_lb(lbtask("l4"))             # both at the lb window: waits
    assert placed(st.drain()) == [("l1", 1), ("l2", 0), ("l3", 1)]
    assert inflight(st, 0) == ["d1", "l2"]
    assert st.tasks["l1"].started == T0
    assert st.tasks["l2"].started is None and st.tasks["l3"].started is None
    # direct tasks have their own, larger window
    assert st.submit(direct("d2", engine=1))
    assert inflight(st, 1) == ["l1", "l3", "d2"]
    st.tick(T0 + 5)  # l1 times out; l2 has not started
    out = st.drain()
    assert failed(out) == {"l1": "TaskTimeout"} and out.interrupt == [(1, "l1")]
    clock.now = T0 + 20
    task, nxt = st.complete(0, "d1", True)
    assert task.id == "d1" and nxt == []
    assert st.tasks["l2"].started == T0 + 20 and st.tasks["l2"].deadline == T0 + 25
    assert placed(st.drain()) == [("l4", 0)]  # engine 1 is stuck and full
    assert st.tasks["l4"].started is None
    st.tick(T0 + 25)
    assert failed(st.drain()) == {"l2": "TaskTimeout"}


def test_engine_with_queued_direct_tasks_gets_no_lb_tasks():
    st = make_state(engines=2, window=1, lb_window=2)
    assert st.submit(direct("d1", engine=0))
    assert not st.submit(direct("d2", engine=0))  # queued at the controller
    st.submit_lb(lbtask("l1"))
    st.submit_lb(lbtask("l2"))
    st.submit_lb(lbtask("l3"))
    assert placed(st.drain()) == [("l1", 1), ("l2", 1)]
    task, nxt = st.complete(0, "d1", True)
    assert [t.id for t in nxt] == ["d2"]
    assert placed(st.drain()) == [("l3", 0)]  # queue drained: engine 0 takes lb work
    assert st.tasks["d2"].started == T0 and st.tasks["l3"].started is None
    assert st.queue_status()[0]["inflight"] == 2


def test_lb_task_behind_a_direct_task_on_a_dying_engine():
    st = make_state(engines=1, window=4, lb_window=2)
    st.submit(direct("d1", engine=0))
    st.submit_lb(lbtask("l1", retries=0))
    st.drain()
    sent, queued = st.remove_engine(0)
    assert [t.id for t in sent] == ["d1"] and queued == []
    assert not st.drain().fail  # l1 never started: requeued, not failed
    assert st.lb_counts()["unassigned"] == 1


def test_direct_results_do_not_go_through_lb_retries():
    st = make_state(engines=1)
    st.submit(direct("d1"))
    task, _ = st.complete(0, "d1", False, "ValueError")
    assert task.id == "d1" and not st.drain()
    assert st.outcomes["d1"] == (False, 0)


# --- outcomes --------------------------------------------------------------------------------------
def test_outcomes_are_bounded(monkeypatch):
    monkeypatch.setattr(scheduler_mod, "OUTCOMES_KEPT", 3)
    st = make_state(engines=1, lb_window=1)
    for i in range(5):
        st.submit_lb(lbtask(f"t{i}"))
        st.drain()
        ok(st, 0, f"t{i}")
    assert list(st.outcomes) == ["t2", "t3", "t4"]
    st.submit_lb(lbtask("late", after=["t0"]))  # forgotten
    out = st.drain()
    assert failed(out) == {"late": "DependencyError"} and "does not know" in out.fail[0][2]
    st.submit_lb(lbtask("fine", after=["t4"]))
    assert placed(st.drain()) == [("fine", 0)]
    assert len(st.outcomes) == 3


# --- misc ------------------------------------------------------------------------------------------
def test_next_deadline_is_the_earliest():
    st = make_state(engines=2)
    assert st.next_deadline() is None
    st.submit_lb(lbtask("a", timeout=10))
    st.submit_lb(lbtask("b", timeout=3))
    st.drain()
    assert st.next_deadline() == T0 + 3


def test_complete_from_an_unknown_engine_or_task_changes_nothing():
    st = make_state(engines=1)
    st.submit_lb(lbtask("t"))
    st.drain()
    assert st.complete(7, "t", True) == (None, [])
    assert st.complete(0, "nope", True) == (None, [])
    assert not st.drain() and "t" in st.tasks
