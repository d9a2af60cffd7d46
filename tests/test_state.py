"""Unit tests of pure logic: the controller's HubState, and the views' split/join helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cohort.client.view import concat, partition_bounds
from cohort.controller.state import HubState, TaskRecord

A, B = b"client-a", b"client-b"


def make_state(window: int = 2, engines: int = 2) -> HubState:
    st = HubState(window=window)
    for i in range(engines):
        st.register(f"uuid-{i}", {"host": "h", "pid": 100 + i})
    return st


def task(tid: str, engine: int = 0, client: bytes = A) -> TaskRecord:
    return TaskRecord(tid, client, engine, frames=[b"frame-" + tid.encode()])


def ids(tasks) -> list:
    return [t.id for t in tasks]


# --- engines -------------------------------------------------------------------------
def test_register_assigns_increasing_ids_and_is_idempotent():
    st = HubState()
    r0 = st.register("u0", {"host": "h0", "pid": 1})
    r1 = st.register("u1", {"host": "h1", "pid": 2})
    assert (r0.id, r1.id) == (0, 1)
    assert st.register("u0", {"host": "other", "pid": 99}) is r0  # a re-sent registration
    assert st.engine_by_uuid("u1") is r1
    assert st.engine_by_uuid("nope") is None
    assert r0.host == "h0" and r0.pid == 1 and r0.ident == b"u0"


def test_engine_ids_are_not_reused_after_removal():
    st = make_state(engines=2)
    st.remove_engine(1)
    assert st.register("uuid-new", {}).id == 2
    st.remove_engine(0)
    assert st.register("uuid-0", {}).id == 3  # the same uuid coming back is a new engine
    assert sorted(st.engines) == [2, 3]


def test_summary_reports_state_and_queue():
    st = make_state(window=1)
    assert st.engines[0].summary()["state"] == "idle"
    st.submit(task("t1"))
    st.submit(task("t2"))
    s = st.engines[0].summary()
    assert s["state"] == "busy" and s["queue"] == 2
    assert s["id"] == 0 and s["pid"] == 100 and s["uuid"] == "uuid-0"


# --- submit / window / complete --------------------------------------------------------
def test_submit_sends_up_to_window_then_queues():
    st = make_state(window=2)
    assert st.submit(task("t1")) is True
    assert st.submit(task("t2")) is True
    assert st.submit(task("t3")) is False
    assert st.submit(task("t4")) is False
    rec = st.engines[0]
    assert list(rec.inflight) == ["t1", "t2"]
    assert ids(rec.queue) == ["t3", "t4"]
    # the other engine has its own window
    assert st.submit(task("u1", engine=1)) is True


def test_submit_to_unknown_engine_raises_key_error():
    st = make_state()
    with pytest.raises(KeyError):
        st.submit(task("t1", engine=7))
    assert "t1" not in st.tasks


def test_complete_releases_queued_tasks_in_fifo_order():
    st = make_state(window=2)
    for i in range(1, 7):
        st.submit(task(f"t{i}"))
    done, nxt = st.complete(0, "t1")
    assert done.id == "t1" and ids(nxt) == ["t3"]
    done, nxt = st.complete(0, "t3")
    assert ids(nxt) == ["t4"]
    done, nxt = st.complete(0, "t2")
    assert ids(nxt) == ["t5"]
    done, nxt = st.complete(0, "t4")
    assert ids(nxt) == ["t6"]
    assert st.complete(0, "t5")[1] == [] and st.complete(0, "t6")[1] == []
    rec = st.engines[0]
    assert not rec.inflight and not rec.queue and not st.tasks
    assert rec.completed == 6 and rec.failed == 0


def test_a_new_task_never_overtakes_queued_ones():
    """Below the window again, a queued task must still go before a new one."""
    st = make_state(window=1)
    st.submit(task("t1"))
    st.submit(task("t2"))
    st.engines[0].inflight.clear()  # as if t1's slot freed without `complete` dispatching
    assert st.submit(task("t3")) is False
    assert ids(st.engines[0].queue) == ["t2", "t3"]


def test_complete_counts_failures_and_ignores_unknown_ids():
    st = make_state(window=4)
    st.submit(task("t1"))
    st.submit(task("t2"))
    done, nxt = st.complete(0, "t1", ok=False)
    assert done.id == "t1" and nxt == []
    assert st.engines[0].failed == 1 and st.engines[0].completed == 0
    done, nxt = st.complete(0, "never-sent")
    assert done is None and nxt == []
    assert st.engines[0].failed == 1 and st.engines[0].completed == 0
    done, _ = st.complete(0, "t1")  # a duplicate result
    assert done is None and st.engines[0].completed == 0


def test_complete_on_a_removed_engine_returns_nothing_to_send():
    st = make_state(window=1)
    st.submit(task("t1"))
    st.submit(task("t2"))
    st.remove_engine(0)
    assert st.complete(0, "t1") == (None, [])


# --- abort -----------------------------------------------------------------------------
def test_abort_drops_queued_and_asks_engine_about_inflight():
    st = make_state(window=2)
    for i in range(1, 6):
        st.submit(task(f"t{i}"))
    dropped, ask = st.abort(A)
    assert ids(dropped) == ["t3", "t4", "t5"]
    assert ask == {0: ["t1", "t2"]}
    assert not st.engines[0].queue
    assert list(st.engines[0].inflight) == ["t1", "t2"]  # still theirs until the engine answers
    for t in ("t3", "t4", "t5"):
        assert t not in st.tasks
    assert "t1" in st.tasks and "t2" in st.tasks


def test_abort_touches_only_the_callers_tasks():
    st = make_state(window=1)
    st.submit(task("a1", client=A))
    st.submit(task("b1", client=B))
    st.submit(task("a2", client=A))
    st.submit(task("b2", client=B))
    dropped, ask = st.abort(A)
    assert ids(dropped) == ["a2"]
    assert ask == {0: ["a1"]}
    assert ids(st.engines[0].queue) == ["b1", "b2"]  # order kept
    dropped, ask = st.abort(B)
    assert ids(dropped) == ["b1", "b2"] and ask == {}


def test_abort_by_ids_and_targets():
    st = make_state(window=1)
    for i in range(3):
        st.submit(task(f"e0-{i}", engine=0))
        st.submit(task(f"e1-{i}", engine=1))
    dropped, ask = st.abort(A, ids=["e0-2", "e1-1", "unknown"])
    assert sorted(ids(dropped)) == ["e0-2", "e1-1"]
    assert ask == {}
    dropped, ask = st.abort(A, targets=[1, 99])
    assert ids(dropped) == ["e1-2"]
    assert ask == {1: ["e1-0"]}
    assert ids(st.engines[0].queue) == ["e0-1"]


def test_abort_with_an_empty_id_list_aborts_nothing():
    st = make_state(window=1)
    st.submit(task("t1"))
    st.submit(task("t2"))
    dropped, ask = st.abort(A, ids=[])
    assert dropped == [] and ask == {}
    assert ids(st.engines[0].queue) == ["t2"]


def test_after_an_aborted_inflight_task_the_queue_moves_on():
    st = make_state(window=1)
    st.submit(task("t1"))
    st.submit(task("t2"))
    st.submit(task("t3"))
    dropped, ask = st.abort(A, ids=["t1"])
    assert dropped == [] and ask == {0: ["t1"]}
    # the engine reports t1 skipped: the hub completes it as failed
    done, nxt = st.complete(0, "t1", ok=False)
    assert done.id == "t1" and ids(nxt) == ["t2"]
    assert st.engines[0].failed == 1


# --- engine loss -----------------------------------------------------------------------
def test_remove_engine_returns_running_and_queued():
    st = make_state(window=2)
    for i in range(1, 5):
        st.submit(task(f"t{i}"))
    st.submit(task("other", engine=1))
    sent, queued = st.remove_engine(0)
    assert ids(sent) == ["t1", "t2"]
    assert ids(queued) == ["t3", "t4"]
    assert 0 not in st.engines and st.engine_by_uuid("uuid-0") is None
    assert set(st.tasks) == {"other"}
    assert st.remove_engine(0) == ([], [])
    assert st.remove_engine(42) == ([], [])
    with pytest.raises(KeyError):
        st.submit(task("late", engine=0))


# --- queue status and heartbeats --------------------------------------------------------
def test_queue_status():
    st = make_state(window=2)
    for i in range(5):
        st.submit(task(f"t{i}"))
    st.complete(0, "t0")
    st.complete(0, "t1", ok=False)
    qs = st.queue_status()
    assert qs == {0: {"queue": 1, "inflight": 2, "completed": 1, "failed": 1},
                  1: {"queue": 0, "inflight": 0, "completed": 0, "failed": 0}}
    assert st.queue_status([1, 77]) == {1: qs[1]}
    assert st.queue_status([]) == {}


def test_silent_engines_and_beats():
    st = make_state(engines=3)
    now = 1000.0
    for rec in st.engines.values():
        rec.last_beat = now
    st.beat("uuid-1", now + 2.0)
    st.beat("uuid-2", now + 3.5)
    st.beat("not-an-engine", now + 9)  # ignored
    assert st.silent_engines(now + 2.5, timeout=2.5) == []  # exactly at the limit: alive
    assert st.silent_engines(now + 2.6, timeout=2.5) == [0]
    assert st.silent_engines(now + 5.0, timeout=2.5) == [0, 1]
    assert st.silent_engines(now + 6.1, timeout=2.5) == [0, 1, 2]
    st.remove_engine(0)
    assert st.silent_engines(now + 6.1, timeout=2.5) == [1, 2]


# --- partition_bounds / concat -------------------------------------------------------------
@pytest.mark.parametrize("n,parts", [(0, 1), (0, 3), (1, 3), (10, 2), (10, 3), (16, 2),
                                     (17, 4), (100, 7), (5, 5), (3, 8)])
def test_partition_bounds_cover_range_contiguously_and_evenly(n, parts):
    b = partition_bounds(n, parts)
    assert len(b) == parts
    assert b[0][0] == 0 and b[-1][1] == n
    for (a0, a1), (b0, _) in zip(b, b[1:]):
        assert a1 == b0
    sizes = [hi - lo for lo, hi in b]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the bigger parts come first
    assert sum(sizes) == n


def test_partition_bounds_examples():
    assert partition_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert partition_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]


def test_concat():
    assert concat([]) == []
    assert concat([[1, 2], [3], []]) == [1, 2, 3]
    assert concat([(1,), (2, 3)]) == (1, 2, 3)
    assert concat(["ab", "c"]) == "abc"
    out = concat([np.arange(3), np.arange(3, 5)])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.arange(5))
    assert concat([range(0, 2), range(2, 4)]) == [0, 1, 2, 3]
    assert concat([[1], (2,)]) == [1, 2]  # mixed kinds: one list


def test_cancel_is_all_or_nothing_and_only_for_tasks_still_at_the_controller():
    st = make_state(window=1)
    for t in ("t1", "t2", "t3"):
        st.submit(task(t))  # t1 is sent to engine 0; t2, t3 wait at the controller
    assert st.cancel(A, ["t1", "t2"]) == []          # t1 is already on the engine: nothing dropped
    assert ids(st.engines[0].queue) == ["t2", "t3"]
    assert st.cancel(b"other-client", ["t2"]) == []  # not that client's task
    assert ids(st.cancel(A, ["t2", "t3"])) == ["t2", "t3"]
    assert not st.engines[0].queue and set(st.tasks) == {"t1"}
    assert st.cancel(A, []) == []


def test_dispatched_tells_which_tasks_left_the_controller():
    st = make_state(window=1)
    for t in ("t1", "t2"):
        st.submit(task(t))  # t1 is sent to engine 0; t2 waits at the controller
    assert st.dispatched(A, ["t1", "t2"]) == ["t1"]
    assert st.dispatched(A, ["gone"]) == []  # finished, cancelled or unknown
    assert st.dispatched(b"other-client", ["t2"]) == ["t2"]  # not its task to wait on
