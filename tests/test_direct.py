"""Integration tests of direct views on ONE shared two-engine cluster (real processes, real sockets).

Every test here leaves the engines alive and idle (the `rc` fixture checks and
cleans up). Tests that add engines use a private cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import glob
import os
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

import cohort
from conftest import live_segments, wait_until


def run_marker(ar, marker: str = "STARTED", timeout: float = 10.0):
    """Wait until a task printed `marker` (so it is running now, not just queued)."""
    def seen():
        out = ar.stdout
        return marker in (out if isinstance(out, str) else "".join(out))
    wait_until(seen, timeout, msg=f"the task to print {marker!r}")


# --- execute / run -----------------------------------------------------------------------
def test_execute_and_execute_result(rc):
    dv = rc[:]
    assert dv.targets == [0, 1]
    assert dv.execute("ex_a = 5", block=True) == [None, None]
    ar = dv.execute("ex_a * 3")
    assert ar.get(timeout=10) == [None, None]
    assert ar.execute_result == ["15", "15"]
    one = rc[0].execute("ex_a + 1")
    one.get(timeout=10)
    assert one.execute_result == "6"
    assert rc[0].execute("x = 1", block=True) is None
    no_value = rc[0].execute("ex_b = 1")
    no_value.get(timeout=10)
    assert no_value.execute_result is None


def test_run_a_file(rc, tmp_path):
    f = tmp_path / "script.py"
    f.write_text("def triple(x):\n    return 3 * x\n\nrun_value = triple(14)\n")
    assert rc[:].run(f, block=True) == [None, None]
    assert rc[:].pull("run_value", block=True) == [42, 42]
    assert rc[1].execute("triple(2)", block=False).get(timeout=10) is None
    ar = rc[1].execute("triple(2)")
    ar.get(timeout=10)
    assert ar.execute_result == "6"


def test_run_error_traceback_names_the_file(rc, tmp_path):
    f = tmp_path / "failing_script.py"
    f.write_text("ok = 1\nraise ValueError('from the file')\n")
    with pytest.raises(cohort.RemoteError) as info:
        rc[0].run(f, block=True)
    assert info.value.ename == "ValueError"
    assert str(f) in info.value.traceback
    assert "raise ValueError('from the file')" in info.value.traceback


# --- push / pull / setitem / getitem --------------------------------------------------------
def test_push_pull_setitem_getitem(rc):
    dv = rc[:]
    dv.push({"a": 3}, block=True)
    assert dv.pull("a", block=True) == [3, 3]
    assert rc[0].pull("a", block=True) == 3
    dv["b"] = 4
    assert dv["b"] == [4, 4]
    assert rc[1]["b"] == 4
    assert dv.pull(["a", "b"], block=True) == [[3, 4], [3, 4]]
    assert rc[0].pull(("a", "b"), block=True) == [3, 4]
    rc[1].push({"a": "only on one"}, block=True)
    assert dv.pull("a", block=True) == [3, "only on one"]
    ar = dv.push({"c": [1, {"d": 2}]})
    assert isinstance(ar, cohort.AsyncResult)
    assert ar.get(timeout=10) == [None, None]
    assert rc[0].execute("c[1]['d'] + a", block=False).get(timeout=10) is None
    assert dv.apply_sync(lambda: None) == [None, None]


def test_push_rejects_non_dicts_and_pull_bad_names(rc):
    with pytest.raises(TypeError):
        rc[:].push([("a", 1)])
    with pytest.raises(TypeError):
        rc[:].pull(3)


def test_pull_missing_name_raises_name_error(rc):
    with pytest.raises(cohort.RemoteError) as info:
        rc[0].pull("surely_not_defined_here", block=True)
    assert info.value.ename == "NameError"
    assert "surely_not_defined_here" in info.value.evalue
    assert info.value.engine_id == 0


# --- scatter / gather -----------------------------------------------------------------------
def test_scatter_gather_list(rc):
    dv = rc[:]
    dv.scatter("x", range(16), block=True)
    assert list(rc[0]["x"]) == list(range(8))
    assert list(rc[1]["x"]) == list(range(8, 16))
    assert dv.gather("x", block=True) == list(range(16))
    dv.scatter("y", list(range(5)), block=True)
    assert rc[0]["y"] == [0, 1, 2]
    assert rc[1]["y"] == [3, 4]
    assert dv.gather("y", block=True) == [0, 1, 2, 3, 4]
    dv.scatter("z", [1], block=True)  # fewer items than engines
    assert dv.gather("z", block=True) == [1]


def test_scatter_gather_numpy(rc):
    arr = np.arange(1000, dtype=np.int64) * 3
    dv = rc[:]
    dv.scatter("arr", arr, block=True)
    part0 = rc[0]["arr"]
    assert isinstance(part0, np.ndarray)
    np.testing.assert_array_equal(part0, arr[:500])
    out = dv.gather("arr", block=True)
    assert isinstance(out, np.ndarray) and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)
    # engines can compute on their part in place, then gather the new values
    dv.execute("arr += 1", block=True)
    np.testing.assert_array_equal(dv.gather("arr", block=True), arr + 1)


def test_scatter_gather_single_engine_view(rc):
    rc[0].scatter("s1", [1, 2, 3], block=True)
    assert rc[0]["s1"] == [1, 2, 3]
    assert rc[0].gather("s1", block=True) == [1, 2, 3]


# --- apply / map -------------------------------------------------------------------------------
def test_apply_lambda_closure_and_kwargs(rc):
    assert rc[0].apply(lambda x, k=0: x + k, 1, k=2).get(timeout=5) == 3
    factor = 7

    def scale(x, *, offset=0):
        return x * factor + offset

    assert rc[:].apply_sync(scale, 2, offset=1) == [15, 15]

    def make_counter(start):
        count = [start]

        def bump(by=1):
            count[0] += by
            return count[0]
        return bump

    assert rc[1].apply_sync(make_counter(10), by=5) == 15


def test_apply_single_vs_multi_results(rc):
    f = lambda: os.getpid()  # noqa: E731
    pids = {eid: rc.engines[eid]["pid"] for eid in rc.ids}
    assert rc[0].apply_sync(f) == pids[0]
    assert rc[[0]].apply_sync(f) == [pids[0]]
    assert rc[:].apply_sync(f) == [pids[0], pids[1]]
    assert rc[[1, 0]].apply_sync(f) == [pids[1], pids[0]]
    assert rc[::2].targets == [0]
    assert rc[::2].apply_sync(f) == [pids[0]]
    ar = rc[:].apply_async(f)
    assert isinstance(ar, cohort.AsyncResult)
    assert ar.get_dict(timeout=10) == pids
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()


def test_apply_sees_engine_namespace_for_main_functions(rc):
    """Functions from `__main__` resolve globals on the engine first."""
    rc[:].push({"engine_side": 11}, block=True)
    ns = {"__name__": "__main__"}
    exec("def g():\n    return engine_side * 2\n", ns)
    assert rc[:].apply_sync(ns["g"]) == [22, 22]


def test_apply_ships_the_current_value_of_a_rebound_global(rc):
    ns = {"__name__": "__main__"}  # as if typed at the interactive prompt
    exec("def current_scale():\n    return client_only_scale\n", ns)
    f = ns["current_scale"]
    wrong = []
    for i in range(20):
        exec(f"client_only_scale = {i}.0 + 0.25", ns)
        assert rc[0].apply_sync(f) == i + 0.25
        exec(f"client_only_scale = {i}.0 + 0.5", ns)  # frees the previous float
        exec(f"client_only_scale = {i}.0 + 0.75", ns)  # a new float, often where that one was
        got = rc[0].apply_sync(f)
        if got != i + 0.75:
            wrong.append((i + 0.75, got))
    assert wrong == [], f"apply shipped stale globals (expected, got): {wrong}"


def test_each_apply_gets_a_fresh_copy_of_the_function(rc):
    def make_counter():
        count = [0]

        def bump():
            count[0] += 1
            return count[0]
        return bump

    bump = make_counter()
    assert [rc[0].apply_sync(bump) for _ in range(3)] == [1, 1, 1]

    def remember(x, seen=[]):  # noqa: B006 - the mutable default is the point
        seen.append(x)
        return list(seen)

    assert rc[1].apply_sync(remember, 1) == [1]
    assert rc[1].apply_sync(remember, 2) == [2]


def test_apply_with_array_argument_and_result(rc):
    arr = np.arange(300_000, dtype=np.float64)
    out = rc[1].apply_sync(lambda a: a * 2, arr)
    np.testing.assert_array_equal(out, arr * 2)


def test_map_preserves_order(rc):
    dv = rc[:]
    assert dv.map(lambda x: x * x, range(100), block=True) == [x * x for x in range(100)]
    assert dv.map(pow, range(10), [2] * 10, block=True) == [x ** 2 for x in range(10)]
    assert dv.map(lambda a, b: a - b, [5, 6, 7], [1, 1, 1, 1], block=True) == [4, 5, 6]
    assert dv.map(lambda x: x, [], block=True) == []
    ar = dv.map(lambda x: x + 1, range(7))
    assert isinstance(ar, cohort.AsyncResult)
    assert ar.get(timeout=10) == list(range(1, 8))


def test_map_uses_every_engine(rc):
    pids = rc[:].map(lambda _: os.getpid(), range(100), block=True)
    assert len(pids) == 100
    engine_pids = [rc.engines[i]["pid"] for i in (0, 1)]
    assert pids[:50] == [engine_pids[0]] * 50
    assert pids[50:] == [engine_pids[1]] * 50


def test_map_error_names_the_element(rc):
    def inv(x):
        return 1 / (x - 60)

    with pytest.raises(cohort.RemoteError) as info:
        rc[:].map(inv, range(100), block=True)
    assert info.value.ename == "ZeroDivisionError"
    assert info.value.engine_id == 1
    assert "return 1 / (x - 60)" in info.value.traceback


# --- output --------------------------------------------------------------------------------------
def test_stdout_captured_per_task_and_engine(rc):
    ar = rc[:].execute("import os, sys\nprint('pid', os.getpid())\nprint('err', file=sys.stderr)")
    ar.get(timeout=10)
    pids = [rc.engines[i]["pid"] for i in (0, 1)]
    assert ar.stdout == [f"pid {pids[0]}\n", f"pid {pids[1]}\n"]
    assert ar.stderr == ["err\n", "err\n"]
    # two tasks queued back to back on one engine keep their own output
    a1 = rc[0].execute("print('first')")
    a2 = rc[0].apply(lambda: print("second") or 2)
    assert a2.get(timeout=10) == 2
    a1.get(timeout=10)
    assert a1.stdout == "first\n"
    assert a2.stdout == "second\n"
    assert a1.stderr == ""
    uni = rc[1].execute("print('h\u00e9llo \u2713 \U0001f600')")
    uni.get(timeout=10)
    assert uni.stdout == "h\u00e9llo \u2713 \U0001f600\n"


def test_large_output_is_complete_and_ordered(rc):
    ar = rc[1].execute("for i in range(20000):\n    print(i)")
    ar.get(timeout=30)
    assert ar.stdout == "".join(f"{i}\n" for i in range(20000))


def test_stdout_streams_while_the_task_runs(rc):
    ar = rc[0].execute("import time\nprint('hello early', flush=True)\ntime.sleep(2)\nprint('late')")
    run_marker(ar, "hello early", timeout=10)
    assert not ar.done(), "output should arrive while the task still runs (it sleeps 2 s)"
    ar.get(timeout=20)
    assert ar.stdout == "hello early\nlate\n"


# --- errors ----------------------------------------------------------------------------------------
def test_remote_error_has_engine_name_and_user_line(rc):
    code = "x = 1\ny = 2\nraise ValueError('boom %d' % (x + y))\n"
    with pytest.raises(cohort.RemoteError) as info:
        rc[1].execute(code, block=True)
    e = info.value
    assert not isinstance(e, cohort.CompositeError)
    assert (e.engine_id, e.ename, e.evalue) == (1, "ValueError", "boom 3")
    assert "raise ValueError('boom %d' % (x + y))" in e.traceback
    assert "kernel.py" not in e.traceback, "the engine's own frames should be hidden"
    assert str(e).startswith("[engine 1] ValueError: boom 3")


def test_remote_error_from_apply_shows_the_function_line(rc):
    def failing(d):
        return d["missing key"]  # THE USER LINE

    ar = rc[0].apply(failing, {})
    with pytest.raises(cohort.RemoteError) as info:
        ar.get(timeout=10)
    assert info.value.ename == "KeyError"
    assert "THE USER LINE" in info.value.traceback
    assert ar.done() and not ar.successful()
    assert isinstance(ar.exception(), cohort.RemoteError)


def test_composite_error_for_several_engines(rc):
    with pytest.raises(cohort.CompositeError) as info:
        rc[:].execute("1/0", block=True)
    c = info.value
    assert len(c.errors) == 2
    assert sorted(err.engine_id for err in c.errors) == [0, 1]
    assert all(err.ename == "ZeroDivisionError" for err in c.errors)
    assert str(c).startswith("2 engines raised exceptions:")


def test_one_failing_engine_gives_a_plain_remote_error(rc):
    rc[:].scatter("rank", [0, 1], block=True)
    with pytest.raises(cohort.RemoteError) as info:
        rc[:].execute("if rank[0] == 1:\n    raise RuntimeError('only one')", block=True)
    assert not isinstance(info.value, cohort.CompositeError)
    assert info.value.engine_id == 1 and info.value.ename == "RuntimeError"


def test_engines_usable_after_errors_and_system_exit(rc):
    pids = [rc.engines[i]["pid"] for i in (0, 1)]
    with pytest.raises(cohort.CompositeError) as info:
        rc[:].execute("raise SystemExit(3)", block=True)
    assert {e.ename for e in info.value.errors} == {"SystemExit"}
    with pytest.raises(cohort.RemoteError) as info:
        rc[0].apply(lambda: sys.exit("bye"), ).get(timeout=10)
    assert info.value.ename == "SystemExit"
    with pytest.raises(cohort.RemoteError):
        rc[1].execute("def broken(:", block=True)  # SyntaxError
    with pytest.raises(cohort.RemoteError) as info:
        rc[1].execute("raise KeyboardInterrupt", block=True)
    assert info.value.ename == "KeyboardInterrupt"
    assert rc[:].apply_sync(lambda: os.getpid()) == pids
    assert rc.ids == [0, 1]


def test_unpicklable_result_is_an_error_not_a_hang(rc):
    rc[0].execute("import threading\nlk = threading.Lock()", block=True)
    with pytest.raises(cohort.RemoteError) as info:
        rc[0].pull("lk", block=True)
    assert "lock" in info.value.evalue.lower()
    assert rc[0].apply_sync(lambda: "still fine") == "still fine"


def test_function_that_cannot_be_loaded_on_the_engine(rc):
    """A function pickled by reference to a module only the client has."""
    mod = types.ModuleType("cohort_client_only_module")

    def helper(x):
        return x

    helper.__module__ = mod.__name__
    helper.__qualname__ = "helper"
    mod.helper = helper
    sys.modules[mod.__name__] = mod
    try:
        with pytest.raises(cohort.RemoteError) as info:
            rc[0].apply(helper, 1).get(timeout=10)
    finally:
        del sys.modules[mod.__name__]
    assert info.value.ename == "ModuleNotFoundError"
    assert "cohort_client_only_module" in info.value.evalue
    assert rc[0].apply_sync(lambda: "fine") == "fine"


def test_result_that_cannot_be_loaded_on_the_client(rc, tmp_path):
    """An object of a class from a module only the engine has."""
    (tmp_path / "cohort_engine_only_module.py").write_text("class Thing:\n    pass\n")
    rc[1].execute(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
                  "import cohort_engine_only_module\nthing = cohort_engine_only_module.Thing()",
                  block=True)
    try:
        with pytest.raises(cohort.RemoteError) as info:
            rc[1].pull("thing", block=True)
        assert "cohort_engine_only_module" in info.value.evalue
        assert "cohort_engine_only_module" not in sys.modules
    finally:
        rc[1].execute(f"sys.path.remove({str(tmp_path)!r})\ndel thing", block=True)
    assert rc[1].apply_sync(lambda: "fine") == "fine"


def test_unknown_engine_and_empty_view(rc):
    with pytest.raises(cohort.EngineError) as info:
        rc[17].apply(lambda: 1).get(timeout=10)
    assert info.value.engine_id == 17
    with pytest.raises(cohort.NoEnginesError):
        rc[[]].apply(lambda: 1)


def test_closed_client_refuses_work(cluster):
    c = cohort.Client(cluster.connection_file)
    assert c.ids == [0, 1]
    c.close()
    with pytest.raises(cohort.CohortError):
        c[0].apply(lambda: 1)
    c.close()  # idempotent


# --- AsyncResult -------------------------------------------------------------------------------------
def test_async_result_is_a_future(rc):
    ars = [rc[i % 2].apply(lambda v: v * 10, i) for i in range(6)]
    assert all(isinstance(a, cf.Future) for a in ars)
    done, not_done = cf.wait(ars, timeout=20)
    assert not not_done
    assert [a.result() for a in ars] == [i * 10 for i in range(6)]
    assert all(a.ready() and a.successful() for a in ars)

    slow = rc[0].execute("import time; time.sleep(2)")
    fast = rc[1].apply(lambda: "fast")
    order = list(cf.as_completed([slow, fast], timeout=20))
    assert order == [fast, slow]

    called = threading.Event()
    ar = rc[0].apply(lambda: 5)
    ar.add_done_callback(lambda f: called.set())
    assert called.wait(10) and ar.result() == 5


def test_cancel_keeps_the_future_contract(rc):
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    run_marker(sleeper)
    rc[0].execute("cancel_ran = False", block=False)
    waiting = rc[0].execute("cancel_ran = True")
    cancelled = waiting.cancel()
    rc.interrupt(0)
    with pytest.raises(cohort.RemoteError):
        sleeper.get(timeout=10)
    ran = rc[0].pull("cancel_ran", block=True)
    if cancelled:
        assert waiting.cancelled()
        assert ran is False, "cancel() returned True but the task ran anyway"
    else:
        assert ran is True and waiting.get(timeout=10) is None


def test_async_result_awaitable(rc):
    async def main():
        one = await rc[0].apply(lambda: 1)
        both = await asyncio.gather(rc[0].apply(lambda: "a"), rc[:].apply(lambda: "b"))
        try:
            await rc[1].apply(lambda: 1 / 0)
        except cohort.RemoteError as e:
            err = e.ename
        return one, both, err

    assert asyncio.run(asyncio.wait_for(main(), 30)) == (1, ["a", ["b", "b"]], "ZeroDivisionError")


def test_timings(rc):
    t0 = time.time()
    ar = rc[:].execute("import time; time.sleep(0.3)")
    ar.get(timeout=10)
    t1 = time.time()
    assert t0 <= ar.submitted <= t1
    assert len(ar.started) == 2 and len(ar.completed) == 2
    for s, c in zip(ar.started, ar.completed):
        assert ar.submitted - 1 <= s <= c <= t1 + 1  # same host clock (1 s slack)
        assert c - s >= 0.3
    assert ar.elapsed >= 0.3
    assert ar.elapsed <= t1 - t0 + 0.01
    assert ar.wall_time >= 0.3
    one = rc[0].apply(lambda: 1)
    one.get(timeout=10)
    assert isinstance(one.started, float) and isinstance(one.completed, float)
    assert one.progress == 1


def test_get_timeout_raises_cohort_timeout_error(rc):
    ar = rc[0].execute("import time; time.sleep(2)")
    with pytest.raises(cohort.TimeoutError):
        ar.get(timeout=0.2)
    with pytest.raises(TimeoutError):  # also the builtin
        ar.get(timeout=0.05)
    assert not ar.ready()
    assert ar.wait(0.01) is False
    with pytest.raises(cohort.TimeoutError):
        ar.get_dict(timeout=0.05)
    assert ar.successful() is False
    ar.get(timeout=20)  # it still finishes
    assert ar.successful()
    assert ar.wait(0) is True


def test_big_array_push_pull_bit_exact(rc):
    """100 MB of float64 to an engine and back, bit for bit."""
    big = np.random.default_rng(7).standard_normal(100 * 2 ** 20 // 8)
    big[::1000] = np.nan
    rc[0].push({"big": big}, block=True)
    info = rc[0].execute("(big.shape, str(big.dtype), big.flags.writeable, float(big[1]))")
    info.get(timeout=30)
    assert info.execute_result == repr(((big.shape[0],), "float64", True, float(big[1])))
    back = rc[0].pull("big", block=True)
    assert isinstance(back, np.ndarray) and back.shape == big.shape and back.dtype == big.dtype
    assert np.array_equal(back.view(np.uint64), big.view(np.uint64))
    back[1] = 1.0  # a writable array of our own: the engine's copy is untouched
    check = rc[0].execute("float(big[1])")
    check.get(timeout=10)
    assert check.execute_result == repr(float(big[1]))
    rc[0].execute("del big", block=True)


def shm_segments(rc) -> set:
    return live_segments(rc.info.cluster_id)


def test_big_array_to_several_engines_leaves_no_shared_memory(rc):
    before = shm_segments(rc)
    arr = np.arange(3 * 2 ** 20 // 8, dtype=np.float64)  # 3 MB
    dv = rc[:]
    dv.push({"mid": arr}, block=True)
    sums = dv.execute("float(mid.sum())")
    sums.get(timeout=10)
    assert sums.execute_result == [repr(float(arr.sum()))] * 2
    outs = dv.pull("mid", block=True)
    for o in outs:
        assert np.array_equal(o, arr)
    dv.execute("mid[0] = -1", block=True)  # each engine has its own copy
    assert rc[0]["mid"][0] == -1 and rc[1]["mid"][0] == -1 and arr[0] == 0
    # a segment stays linked while an array maps it (so it can be sent on without a copy)
    dv.execute("del mid", block=True)
    del outs, o
    wait_until(lambda: shm_segments(rc) - before == set(), 10, msg="the segments to go")


def test_aborted_push_of_a_big_array_leaves_no_shared_memory(rc):
    before = shm_segments(rc)
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    run_marker(sleeper)
    push = rc[0].push({"never": np.ones(4 * 2 ** 20 // 8)})  # 4 MB, queued behind the sleep
    rc.abort(push)
    with pytest.raises(cohort.TaskAborted):
        push.get(timeout=10)
    rc.interrupt(0)
    with pytest.raises(cohort.RemoteError):
        sleeper.get(timeout=10)
    assert rc[0].apply_sync(lambda: 1) == 1  # the engine skipped the aborted push by now
    assert shm_segments(rc) - before == set()


def test_big_result_for_a_closed_client_leaves_no_shared_memory(rc, cluster):
    before = shm_segments(rc)
    rc[1].execute("import numpy as np\nbig_r = np.ones(4 * 2 ** 20 // 8)", block=True)
    other = cohort.Client(cluster.connection_file, stream_output=False)
    other[1].execute("import time; time.sleep(0.5)")
    other[1].pull("big_r")  # its result is sent after `other` has closed
    other.close()
    assert rc[1].apply_sync(lambda: 1) == 1  # the engine has sent the pull's result by now
    time.sleep(0.5)
    try:
        assert shm_segments(rc) - before == set()
    finally:
        rc[1].execute("del big_r", block=True)


def test_array_between_oob_and_shm_thresholds_is_writable_on_engine(rc):
    arr = np.ones(200_000 // 8)  # 200 kB: out-of-band, but sent over the socket
    rc[1].push({"medium": arr}, block=True)
    rc[1].execute("medium *= 3", block=True)
    np.testing.assert_array_equal(rc[1]["medium"], arr * 3)


# --- several clients -------------------------------------------------------------------------------
def test_two_clients_get_only_their_own_results(rc, cluster):
    other = cohort.Client(cluster.connection_file, stream_output=False)
    try:
        assert other.ids == [0, 1]
        errors: list = []

        def hammer(client, tag, n=60):
            try:
                ars = []
                for i in range(n):
                    ars.append((i, client[i % 2].apply(lambda t, v: (t, v, print(t, v)), tag, i)))
                    if i % 7 == 0:
                        ars.append((i, client[:].apply(lambda t, v: (t, v, None), tag, i)))
                for i, ar in ars:
                    got = ar.get(timeout=30)
                    for g in (got if isinstance(got, list) else [got]):
                        if g != (tag, i, None):
                            errors.append(f"client {tag} got {g!r} for task {i}")
                    out = ar.stdout
                    for o in ([out] if isinstance(out, str) else out):
                        if o and o != f"{tag} {i}\n":
                            errors.append(f"client {tag} got output {o!r} for task {i}")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(f"client {tag}: {e!r}")

        threads = [threading.Thread(target=hammer, args=(c, tag))
                   for c, tag in ((rc, "A"), (other, "B"), (rc, "C"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert rc.status()["clients"] >= 2
    finally:
        other.close()


def test_second_client_sees_variables_of_the_first(rc, cluster):
    rc[:].push({"shared_name": "from rc"}, block=True)
    with cohort.Client(cluster.connection_file, stream_output=False) as other:
        assert other[:].pull("shared_name", block=True) == ["from rc", "from rc"]


# --- queue status, abort, interrupt ------------------------------------------------------------------
def test_queue_status(rc):
    base = rc.queue_status()
    assert set(base) == {0, 1}
    for v in base.values():
        assert set(v) == {"queue", "inflight", "completed", "failed"}
        assert v["queue"] == 0 and v["inflight"] == 0
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    quick = [rc[0].apply(lambda: 1) for _ in range(11)]
    try:
        run_marker(sleeper)
        qs = rc.queue_status()
        assert qs[0]["queue"] + qs[0]["inflight"] == 12
        assert 1 <= qs[0]["inflight"] <= 12 and qs[0]["queue"] >= 0
        assert qs[1]["queue"] == 0 and qs[1]["inflight"] == 0
        assert rc.queue_status(targets=[1]) == {1: qs[1]}
        assert rc[0].queue_status() == {0: qs[0]}
        st = rc.status()
        busy = {e["id"]: e["state"] for e in st["engines"]}
        assert busy == {0: "busy", 1: "idle"}
        assert st["tasks_pending"] >= 12
    finally:
        rc.interrupt(0)
    with pytest.raises(cohort.RemoteError):
        sleeper.get(timeout=10)
    assert [a.get(timeout=10) for a in quick] == [1] * 11
    after = rc.queue_status()
    assert after[0]["completed"] >= base[0]["completed"] + 11
    assert after[0]["failed"] >= base[0]["failed"] + 1


def test_a_short_result_is_not_held_behind_a_long_task(rc, tmp_path):
    """Tasks that reach an engine together run one by one; the engine holds a
    finished result briefly to send it with the next, but never until a long
    task after it ends: here the long task waits for the short one's result."""
    gate, release = tmp_path / "gate", tmp_path / "release"
    wait_for = "import os, time\nwhile not os.path.exists({!r}): time.sleep(0.01)"
    blocker = rc[0].execute(wait_for.format(str(gate)))  # the others queue up behind it
    short = rc[0].apply(lambda: "short")
    long = rc[0].execute(wait_for.format(str(release)))
    wait_until(lambda: rc.queue_status()[0]["inflight"] == 3, msg="all three sent to engine 0")
    gate.touch()
    try:
        assert short.get(timeout=30) == "short"
        assert not long.done()
    finally:
        release.touch()
    long.get(timeout=30)
    blocker.get(timeout=30)


def test_abort_queued_tasks(rc, cluster):
    other = cohort.Client(cluster.connection_file, stream_output=False)
    try:
        sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
        run_marker(sleeper)
        # more than the controller's in-flight window: some wait at the controller,
        # some have already been sent to the (busy) engine
        quick = [rc[0].apply(lambda i: i, i) for i in range(12)]
        theirs = other[0].apply(lambda: "other client")
        keep = rc[0].apply(lambda: "kept")
        n = rc.abort(quick)
        assert n == 12
        for a in quick:
            with pytest.raises(cohort.TaskAborted):
                a.get(timeout=10)
        assert not sleeper.done() and not keep.done() and not theirs.done()
        assert rc.interrupt(0) == [0]
        with pytest.raises(cohort.RemoteError) as info:
            sleeper.get(timeout=10)
        assert info.value.ename == "KeyboardInterrupt"
        assert keep.get(timeout=10) == "kept"
        assert theirs.get(timeout=10) == "other client"
        assert rc[0].apply_sync(lambda: "alive") == "alive"
    finally:
        other.close()


def test_abort_everything_of_this_client_only(rc, cluster):
    other = cohort.Client(cluster.connection_file, stream_output=False)
    try:
        sleeper = rc[1].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
        run_marker(sleeper)
        mine = [rc[1].apply(lambda: 1) for _ in range(3)]
        theirs = other[1].apply(lambda: "theirs")
        ar_abort = rc[1].abort()  # the view's abort: all of this client's waiting tasks there
        assert ar_abort >= 3
        for a in mine:
            with pytest.raises(cohort.TaskAborted):
                a.get(timeout=10)
        rc.interrupt([1])
        with pytest.raises(cohort.RemoteError):
            sleeper.get(timeout=10)
        assert theirs.get(timeout=10) == "theirs"
    finally:
        other.close()


def test_abort_with_no_jobs_aborts_nothing(rc):
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    run_marker(sleeper)
    waiting = rc[0].apply(lambda: "should run")
    try:
        rc.abort(jobs=[])
    finally:
        rc.interrupt(0)
    with pytest.raises(cohort.RemoteError):
        sleeper.get(timeout=10)
    assert waiting.get(timeout=10) == "should run"


def test_interrupt_busy_loop(rc):
    ar = rc[1].execute("print('STARTED', flush=True)\nwhile True:\n    pass")
    run_marker(ar)
    assert not ar.done()
    rc.interrupt(targets=[1])
    with pytest.raises(cohort.RemoteError) as info:
        ar.get(timeout=10)
    assert info.value.ename == "KeyboardInterrupt"
    assert info.value.engine_id == 1
    assert rc[1].apply_sync(lambda: 6 * 7) == 42
    assert rc[1].execute("n_after = 3", block=True) is None


def test_interrupt_sleep(rc):
    ar = rc[:].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    run_marker(ar)
    t0 = time.monotonic()
    assert sorted(rc[:].interrupt()) == [0, 1]
    with pytest.raises(cohort.CompositeError) as info:
        ar.get(timeout=10)
    assert time.monotonic() - t0 < 10  # (really ~ms: the sleep is cut short, not waited out)
    assert {e.ename for e in info.value.errors} == {"KeyboardInterrupt"}
    assert rc[:].apply_sync(lambda: "ok") == ["ok", "ok"]


def test_interrupt_idle_engine_is_harmless(rc):
    assert rc.interrupt(0) == [0]
    time.sleep(0.2)
    assert rc[0].apply_sync(lambda: "fine") == "fine"
    assert rc[0].execute("import time; time.sleep(0.2); 'done'", block=True) is None


def test_user_code_catching_keyboard_interrupt(rc):
    code = ("print('STARTED', flush=True)\nimport time\n"
            "try:\n    time.sleep(100)\nexcept KeyboardInterrupt:\n    caught = 'yes'\n")
    ar = rc[0].execute(code)
    run_marker(ar)
    rc.interrupt(0)
    assert ar.get(timeout=10) is None
    assert rc[0]["caught"] == "yes"


# --- engines joining ------------------------------------------------------------------------------
def test_engines_join_a_running_cluster(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    assert rc.ids == [0]
    cl.add_engines(1)
    assert rc.wait_for_engines(2, timeout=30) == [0, 1]
    assert rc[1].apply_sync(lambda: "new engine") == "new engine"
    proc = subprocess.Popen([sys.executable, "-m", "cohort", "engine",
                             "--file", str(cl.connection_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert rc.wait_for_engines(3, timeout=30) == [0, 1, 2]
        assert rc.engines[2]["pid"] == proc.pid
        assert rc[2].apply_sync(lambda: os.getpid()) == proc.pid
        assert rc[:].apply_sync(lambda: 1) == [1, 1, 1]
        rc.shutdown(targets=[2])
        assert proc.wait(timeout=15) == 0
        wait_until(lambda: rc.ids == [0, 1], msg="engine 2 to leave")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)


def test_wait_for_engines_times_out(cluster):
    with pytest.raises(cohort.TimeoutError):
        cluster.client.wait_for_engines(3, timeout=0.3)


def test_cancel_of_a_task_still_queued_at_the_controller(rc):
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(100)")
    run_marker(sleeper)
    fillers = [rc[0].execute("pass") for _ in range(10)]  # fill the engine's in-flight window
    last = rc[0].execute("cancelled_task_ran = True")
    assert last.cancel() is True
    assert last.cancelled() and last.done()
    with pytest.raises(cf.CancelledError):
        last.get(timeout=1)
    rc.interrupt(0)
    with pytest.raises(cohort.RemoteError):
        sleeper.get(timeout=10)
    for f in fillers:
        assert f.get(timeout=10) is None
    assert rc[0].execute("'cancelled_task_ran' in globals()", block=True) is None
    assert rc[0].apply_sync(lambda: "cancelled_task_ran" in globals()) is False


def test_pull_after_an_in_place_change_on_the_engine_sends_the_new_data(rc):
    """Memory received through shared memory is sent back by hard link only while unwritten."""
    arr = np.arange(4 * 2 ** 20 // 8, dtype=np.float64)  # 4 MB: goes through /dev/shm
    e0 = rc[0]
    e0.push({"rt": arr}, block=True)
    first = e0.pull("rt", block=True)            # unmodified: the same segment, relinked
    assert np.array_equal(first, arr)
    e0.execute("rt[123456] = -1.0", block=True)  # one page written on the engine
    second = e0.pull("rt", block=True)
    assert second[123456] == -1.0 and np.array_equal(np.delete(second, 123456), np.delete(arr, 123456))
    assert first[123456] == arr[123456], "an earlier pull must not see the engine's later change"
    first[0] = 99.0                              # and the client's change stays on the client
    assert e0.apply_sync(lambda: float(rt[0])) == 0.0  # noqa: F821 (the engine's namespace)
    e0.execute("del rt", block=True)


def test_big_pushes_reuse_pooled_pages_and_no_array_sees_another(rc):
    """Segments nobody maps any more are pooled and written over; arrays still held never change."""
    e0 = rc[0]
    pool = f"/dev/shm/cohort-{rc.info.cluster_id}-pool-*"
    held = []
    for i in range(6):
        arr = np.full(4 * 2 ** 20 // 8, float(i))
        e0.push({"rep": arr}, block=True)
        back = e0.pull("rep", block=True)
        if i % 2:
            held.append((i, back))  # half stay mapped on the client while later pushes write
        del back
    assert glob.glob(pool), "no segment was pooled for reuse"
    for i, back in held:
        assert np.all(back == float(i)), f"array {i} changed under its holder"
    e0.execute("del rep", block=True)


def test_closing_a_client_fails_what_it_still_waits_for(rc, cluster):
    other = cohort.Client(cluster.connection_file, stream_output=False)
    waiting = other[0].execute("import time; time.sleep(3)")
    other.close()
    with pytest.raises(cohort.errors.ControllerError, match="closed"):
        waiting.get(timeout=10)


def test_an_exception_whose_str_fails_still_comes_back(rc):
    code = ("class Odd(Exception):\n"
            "    def __str__(self):\n"
            "        raise RuntimeError('no str for you')\n"
            "raise Odd()")
    with pytest.raises(cohort.RemoteError) as info:
        rc[0].execute(code, block=True)
    assert info.value.ename == "Odd" and "str failed" in info.value.evalue
    assert rc[0].apply_sync(lambda: 7) == 7


def test_a_nonsense_target_fails_at_once(rc):
    with pytest.raises(TypeError, match="engine ids are ints"):
        rc[[[0]]].apply(lambda: 1)
    with pytest.raises(cohort.EngineError, match="not connected"):
        rc[[9999]].apply(lambda: 1).get(timeout=10)
