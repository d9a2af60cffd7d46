"""`rc.executor()` against the `concurrent.futures` contract.

A conformance suite adapted from the ideas of CPython's
Lib/test/test_concurrent_futures (ExecutorTest, ExecutorShutdownTest,
WaitTests, AsCompletedTests, FutureTests), written anew for cohort. Most
tests run twice through the `ex` fixture: on the shared two-engine cluster
(``cohort``) and on a ``ProcessPoolExecutor(2)`` (``processpool``), to show
that code written for the one gives the same results on the other wherever
`concurrent.futures` defines them. Where they legitimately differ (a remote
exception arrives as `cohort.RemoteError`), the test says so.

Long tasks ("SLOW") are only ever used to prove something happened before
they could have ended; the fixtures stop them afterwards (cohort: the `rc`
fixture aborts and interrupts; process pool: its workers are terminated).
No durations are asserted except generous upper bounds of that kind.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time

import cloudpickle
import pytest

import cohort
from conftest import wait_until

# engines cannot import this test module: ship its functions by value (the
# process pool pickles them by reference: its workers import this module)
cloudpickle.register_pickle_by_value(__import__(__name__))

SLOW = 5.0  # a task that must still be running when the test looks


# --- functions run by the executors (module level, for the process pool) -------------
def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_return(t, value=None):
    time.sleep(t)
    return value


def sleep_and_raise(t, msg):
    time.sleep(t)
    raise ValueError(msg)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def touch_and_sleep(path, t):
    with open(path, "w"):
        pass
    time.sleep(t)
    return path


# --- fixtures -----------------------------------------------------------------------
def _pool_context():
    """Process-pool workers forked from a clean forkserver that has imported this
    module: quick to start, and never a fork of this threaded (ZeroMQ) process."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


@pytest.fixture(params=["cohort", "processpool"])
def kind(request):
    return request.param


@pytest.fixture
def ex(request, kind):
    """An executor of `kind`, fresh for each test, stopped afterwards."""
    if kind == "cohort":
        rc = request.getfixturevalue("rc")  # its teardown aborts and interrupts leftovers
        executor = rc.executor()
    else:
        executor = cf.ProcessPoolExecutor(2, mp_context=_pool_context())
        # start both workers now, so that no test's timeout includes their start
        assert list(executor.map(sleep_return, [0, 0], [1, 2], timeout=60)) == [1, 2]
        manager = executor._executor_manager_thread  # (a test may shut the pool down)
        procs = list(executor._processes.values())
    yield executor
    if kind == "cohort":
        executor.shutdown(wait=False, cancel_futures=True)  # `rc` stops what still runs
        return
    # the process pool cannot interrupt a task (a test may leave a SLOW one): once its
    # manager thread has dropped the cancelled work items, end the workers
    if not executor._shutdown_thread:
        executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 5
    while manager.is_alive() and executor._cancel_pending_futures \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(10)


@pytest.fixture
def remote_error(kind):
    """What a task's ValueError arrives as: cohort reports it as a RemoteError."""
    return cohort.RemoteError if kind == "cohort" else ValueError


def fill_workers(ex, n=6):
    """SLOW tasks that occupy every worker and every pre-dispatch slot, so that
    what is submitted next waits in the queue (cohort: two engines with two
    tasks each; the process pool: two workers and a call queue of three)."""
    return [ex.submit(sleep_return, SLOW, i) for i in range(n)]


# --- ExecutorTest: submit ---------------------------------------------------------------
def test_is_an_executor_and_submit_returns_a_future(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(pow, 2, 8)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 256
    assert fut.done() and not fut.cancelled() and not fut.running()
    assert fut.exception(timeout=0) is None
    assert ex.submit(sleep_return, 0).result(timeout=30) is None
    assert ex.submit(sleep_return, 0, [1, 2]).result(timeout=30) == [1, 2]  # not unwrapped


def test_every_keyword_of_submit_reaches_the_function(ex):
    kwargs = dict(timeout=5, fn="f", self="s", block=True, retries=3, after="a",
                  follow="b", policy="p", chunksize=7, on_failure="x")
    fut = ex.submit(capture, 1, 2, **kwargs)
    assert fut.result(timeout=30) == ((1, 2), kwargs)
    assert ex.submit(mul, y=3, x=4).result(timeout=30) == 12


def test_keywords_reach_the_function_even_with_executor_policy_flags(rc):
    with rc.executor(retries=1, timeout=30) as ex:
        assert ex.submit(capture, timeout=3, retries=0).result(timeout=30) == \
            ((), {"timeout": 3, "retries": 0})


def test_exception_propagates_with_its_message(ex, kind, remote_error):
    fut = ex.submit(sleep_and_raise, 0.05, "boom 42")
    with pytest.raises(remote_error, match="boom 42"):
        fut.result(timeout=30)
    err = fut.exception(timeout=30)
    assert isinstance(err, remote_error)
    assert fut.done() and not fut.cancelled()
    if kind == "cohort":  # documented: type name and message travel as ename/evalue
        assert err.ename == "ValueError" and err.evalue == "boom 42"
        assert err.engine_id in (0, 1)
        assert "sleep_and_raise" in err.traceback
    else:
        assert str(err) == "boom 42"


def test_submit_from_many_threads(ex):
    results: dict = {}

    def work(t):
        futs = {(t, i): ex.submit(mul, t, i) for i in range(40)}
        for key, fut in futs.items():
            results[key] = fut.result(timeout=60)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == {(t, i): t * i for t in range(4) for i in range(40)}


# --- ExecutorTest: map ------------------------------------------------------------------
def test_map_keeps_the_order_of_the_input(ex):
    assert list(ex.map(mul, range(20), range(20))) == [i * i for i in range(20)]
    delays = [0.2, 0.0, 0.1, 0.0, 0.15, 0.0]  # later items finish first
    assert list(ex.map(sleep_return, delays, range(6))) == list(range(6))


def test_map_of_iterables_of_different_lengths_stops_at_the_shortest(ex):
    assert list(ex.map(mul, range(10), range(3))) == [0, 1, 4]
    assert list(ex.map(mul, [2, 3, 4], (i for i in range(100)))) == [0, 3, 8]
    assert list(ex.map(pow, [2, 3], [3, 2], [100, 100, 100])) == [8, 9]


def test_map_with_chunksize(ex):
    for chunksize in (1, 2, 3, 7, 100):
        out = ex.map(mul, range(50), range(50), chunksize=chunksize)
        assert list(out) == [i * i for i in range(50)], chunksize


def test_map_chunksize_none_lets_cohort_choose(rc):
    with rc.executor() as ex:
        assert list(ex.map(abs, range(-300, 0), chunksize=None)) == list(range(300, 0, -1))


def test_map_of_nothing(ex):
    assert list(ex.map(mul, [], [])) == []
    assert list(ex.map(abs, [], timeout=5)) == []
    assert list(ex.map(abs, iter(()), chunksize=3)) == []


def test_map_error_is_raised_at_its_place(ex, remote_error):
    for chunksize in (1, 3, 4):
        got = []
        with pytest.raises(remote_error, match="bad item 6"):
            for v in ex.map(fail_on, range(10), [6] * 10, chunksize=chunksize):
                got.append(v)
        # everything before the failing item's chunk came through, in order
        assert got == list(range(6 - 6 % chunksize)), chunksize


def test_map_timeout_raises_while_a_task_still_runs(ex):
    start = time.monotonic()
    got = []
    with pytest.raises(cf.TimeoutError):
        for v in ex.map(sleep_return, [0, 0, SLOW], [1, 2, 3], timeout=0.7):
            got.append(v)
    assert time.monotonic() - start < SLOW - 1  # raised well before the slow item ended
    assert got == [1, 2]


def test_map_timeout_counts_from_the_map_call(ex):
    it = ex.map(sleep_return, [0, SLOW], ["fast", "slow"], timeout=0.6)
    time.sleep(1.0)  # past the deadline before iterating at all
    start = time.monotonic()
    got = []
    with pytest.raises(cf.TimeoutError):
        for v in it:
            got.append(v)
    assert got == ["fast"]  # a finished result is still handed out
    assert time.monotonic() - start < 0.5  # no fresh 0.6 s timeout from the first next()


def test_closing_a_map_early_cancels_the_rest(ex, tmp_path):
    paths = [str(tmp_path / f"item{i}") for i in range(40)]
    it = ex.map(touch_and_sleep, paths, [0.2] * 40, chunksize=1)
    assert next(it) == paths[0]
    it.close()  # the caller stops here: the rest need not run
    ex.shutdown(wait=True)
    ran = [p for p in paths if os.path.exists(p)]
    assert 1 <= len(ran) < 20, ran


# --- AsCompletedTests -------------------------------------------------------------------
def test_as_completed_yields_every_future_once(ex):
    done_before = ex.submit(mul, 3, 3)
    done_before.result(timeout=30)
    futs = [ex.submit(sleep_return, t, i) for i, t in enumerate([0.3, 0.0, 0.2, 0.1])]
    futs += [done_before, futs[0]]  # a finished one, and a duplicate
    seen = list(cf.as_completed(futs, timeout=30))
    assert len(seen) == 5 and set(seen) == set(futs)
    assert sorted(f.result() for f in seen) == [0, 1, 2, 3, 9]


def test_as_completed_timeout_while_slow_ones_run(ex):
    fast = [ex.submit(sleep_return, 0, i) for i in range(2)]
    slow = ex.submit(sleep_return, SLOW)
    cf.wait(fast, timeout=30)
    start = time.monotonic()
    seen = []
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed(fast + [slow], timeout=0.5):
            seen.append(f)
    assert time.monotonic() - start < SLOW - 1
    assert set(seen) == set(fast)
    assert not slow.done()


# --- WaitTests --------------------------------------------------------------------------
def test_wait_first_completed(ex):
    slow = ex.submit(sleep_return, SLOW)
    fast = ex.submit(sleep_return, 0.1, "fast")
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    # an already finished future answers at once
    done, not_done = cf.wait([slow, fast], timeout=0, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}


def test_wait_first_exception(ex):
    ok = ex.submit(mul, 2, 3)
    ok.result(timeout=30)
    bad = ex.submit(sleep_and_raise, 0.2, "first exception")
    slow = ex.submit(sleep_return, SLOW)
    done, not_done = cf.wait([ok, bad, slow], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {ok, bad} and not_done == {slow}
    assert "first exception" in str(bad.exception())


def test_wait_first_exception_with_no_exception_waits_for_all(ex):
    futs = [ex.submit(sleep_return, 0.1 * i, i) for i in range(4)]
    done, not_done = cf.wait(futs, timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == set(futs) and not not_done


def test_wait_all_completed(ex, remote_error):
    futs = [ex.submit(sleep_return, 0.1, i) for i in range(4)]
    futs.append(ex.submit(sleep_and_raise, 0.1, "one failed"))
    done, not_done = cf.wait(futs, timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == set(futs) and not not_done
    assert isinstance(futs[-1].exception(), remote_error)


def test_wait_timeout_returns_what_is_done(ex):
    fast = ex.submit(mul, 6, 7)
    slow = ex.submit(sleep_return, SLOW)
    assert fast.result(timeout=30) == 42
    start = time.monotonic()
    done, not_done = cf.wait([fast, slow], timeout=0.5)
    assert time.monotonic() - start < SLOW - 1
    assert done == {fast} and not_done == {slow}


# --- FutureTests ------------------------------------------------------------------------
def test_done_callback_fires_once_with_the_future(ex):
    calls = []
    fut = ex.submit(sleep_return, 0.2, "v")
    fut.add_done_callback(calls.append)
    assert fut.result(timeout=30) == "v"
    wait_until(lambda: calls, msg="the done callback")
    time.sleep(0.1)
    assert calls == [fut]
    late = []
    fut.add_done_callback(late.append)  # on a finished future: called at once
    assert late == [fut]


def test_done_callback_of_a_failed_future(ex, remote_error):
    calls = []
    fut = ex.submit(sleep_and_raise, 0.1, "cb")
    fut.add_done_callback(lambda f: calls.append(f.exception()))
    wait_until(lambda: calls, msg="the done callback")
    assert len(calls) == 1 and isinstance(calls[0], remote_error)


def test_a_raising_callback_does_not_stop_the_others(ex):
    calls = []

    def boom(f):
        raise RuntimeError("callback bug")

    fut = ex.submit(sleep_return, 0.2, 1)
    fut.add_done_callback(boom)
    fut.add_done_callback(calls.append)
    wait_until(lambda: calls, msg="the second callback")
    assert calls == [fut]
    assert ex.submit(mul, 2, 2).result(timeout=30) == 4  # the executor still works


def test_submitting_from_a_done_callback(ex):
    chained = []
    fut = ex.submit(sleep_return, 0.2, 5)
    fut.add_done_callback(lambda f: chained.append(ex.submit(mul, f.result(), 2)))
    wait_until(lambda: chained, msg="the chained submit")
    assert chained[0].result(timeout=30) == 10


def test_result_timeout_while_running(ex):
    fut = ex.submit(sleep_return, SLOW)
    start = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        fut.exception(timeout=0.2)
    assert time.monotonic() - start < SLOW - 1
    assert not fut.done() and not fut.cancelled()


def test_running_is_true_once_the_task_started(ex, tmp_path):
    marker = tmp_path / "started"
    fut = ex.submit(touch_and_sleep, str(marker), SLOW)
    wait_until(marker.exists, timeout=15, msg="the task to start")
    assert not fut.done()
    assert fut.cancel() is False  # it runs: too late to cancel
    assert fut.running()
    assert fut.result(timeout=30) == str(marker)
    assert not fut.running()


def test_running_is_false_while_queued(ex):
    blockers = fill_workers(ex)
    queued = ex.submit(mul, 3, 2)
    assert not queued.running() and not queued.done()
    for b in blockers:
        b.result(timeout=60)
    assert queued.result(timeout=30) == 6 and not queued.running()


# --- cancel -----------------------------------------------------------------------------
def test_cancel_a_queued_future(ex):
    blockers = fill_workers(ex)
    queued = [ex.submit(mul, i, 2) for i in range(4)]
    calls = []
    last = queued[-1]
    last.add_done_callback(calls.append)
    assert last.cancel() is True
    assert last.cancelled() and last.done() and not last.running()
    assert last.cancel() is True  # again: still cancelled
    with pytest.raises(cf.CancelledError):
        last.result(timeout=1)
    with pytest.raises(cf.CancelledError):
        last.exception(timeout=1)
    assert calls == [last]  # its callbacks ran, once
    assert not blockers[0].cancelled()


def test_cancel_a_finished_future_is_refused(ex):
    fut = ex.submit(mul, 1, 1)
    assert fut.result(timeout=30) == 1
    assert fut.cancel() is False
    assert not fut.cancelled() and fut.result() == 1


def test_a_cancelled_future_ends_up_done_for_wait_and_as_completed(ex):
    # cf.wait/as_completed count a cancelled future once its executor confirms the
    # cancel (set_running_or_notify_cancel: CANCELLED -> CANCELLED_AND_NOTIFIED);
    # the process pool does so when the item's turn comes (here after ~0.3 s)
    blockers = [ex.submit(sleep_return, 0.3, i) for i in range(6)]
    queued = ex.submit(mul, 1, 2)
    assert queued.cancel() is True
    done, not_done = cf.wait([queued], timeout=5)
    assert done == {queued} and not not_done
    assert list(cf.as_completed([queued], timeout=5)) == [queued]
    assert not any(b.cancelled() for b in blockers)


def test_cancel_from_another_futures_callback(ex):
    outcome = []

    def cancel_queued(_):
        try:
            outcome.append(queued.cancel())
        except Exception as e:  # noqa: BLE001 - report whatever happened
            outcome.append(e)

    trigger = ex.submit(sleep_return, 0.3)
    trigger.add_done_callback(cancel_queued)  # runs where the result arrives
    fill_workers(ex)
    queued = ex.submit(mul, 1, 2)
    wait_until(lambda: outcome, timeout=15, msg="the callback to cancel")
    assert outcome == [True] and queued.cancelled()


# --- ExecutorShutdownTest ---------------------------------------------------------------
def test_shutdown_wait_waits_for_running_work(ex):
    futs = [ex.submit(sleep_return, 0.2, i) for i in range(3)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2]


def test_shutdown_wait_waits_for_a_map_too(ex):
    it = ex.map(sleep_return, [0.2] * 4, range(4), chunksize=1)
    ex.shutdown(wait=True)
    assert list(it) == [0, 1, 2, 3]


def test_shutdown_without_wait_returns_and_work_finishes(ex):
    futs = [ex.submit(sleep_return, 0.3, i) for i in range(2)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futs] == [0, 1]


def start_two(ex, tmp_path, t=0.5):
    """Two tasks of `t` seconds (one per worker), returned once both have started."""
    paths = [tmp_path / f"running{i}" for i in range(2)]
    futs = [ex.submit(touch_and_sleep, str(p), t) for p in paths]
    wait_until(lambda: all(p.exists() for p in paths), timeout=15, msg="both tasks to start")
    return futs, [str(p) for p in paths]


def test_shutdown_cancel_futures_cancels_queued_ones(ex, tmp_path):
    running, paths = start_two(ex, tmp_path)
    more = [ex.submit(sleep_return, 0.5, i) for i in range(2, 4)]  # pre-dispatched, maybe
    queued = [ex.submit(mul, i, 10) for i in range(8)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert [f.result(timeout=30) for f in running] == paths  # running ones finish
    assert all(f.cancelled() for f in queued[-4:])            # queued ones are cancelled
    for i, f in enumerate(more + queued):                     # nothing is left hanging
        wait_until(f.done, timeout=30, msg="every future to end")
        assert f.cancelled() or f.result() == (i + 2 if i < 2 else (i - 2) * 10)


def test_shutdown_wait_with_cancel_futures_returns(ex, tmp_path):
    running, paths = start_two(ex, tmp_path)
    queued = [ex.submit(mul, i, 10) for i in range(8)]
    th = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True}, daemon=True)
    th.start()
    th.join(15)  # it waits for the 0.5 s tasks only (a thread: a hang fails, not blocks)
    assert not th.is_alive(), "shutdown(wait=True, cancel_futures=True) did not return"
    assert [f.result(timeout=0) for f in running] == paths
    assert all(f.cancelled() for f in queued[-4:])


def test_a_map_cancelled_by_shutdown_raises_cancelled_error(ex):
    fill_workers(ex)
    it = ex.map(mul, range(5), range(5), chunksize=1, timeout=1.5)  # a hang fails, not blocks
    time.sleep(0.2)  # all its items are submitted, queued behind the SLOW ones
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(cf.CancelledError):
        next(it)


def test_a_partly_run_map_cut_by_shutdown_raises_cancelled_error(ex, tmp_path):
    paths = [str(tmp_path / f"item{i}") for i in range(10)]
    it = ex.map(touch_and_sleep, paths, [0.5] * 10, chunksize=1, timeout=30)
    wait_until(lambda: os.path.exists(paths[0]), timeout=15, msg="the map to start")
    ex.shutdown(wait=False, cancel_futures=True)  # the first items run, the rest wait
    got = []
    with pytest.raises(cf.CancelledError):
        for v in it:
            got.append(v)
    assert 1 <= len(got) < 10 and got == paths[:len(got)]  # the running ones finished


def test_submit_and_map_after_shutdown_raise(ex):
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 2)
    with pytest.raises(RuntimeError):
        ex.map(mul, [1], [2])
    ex.shutdown()  # a second shutdown is harmless


def test_context_manager_shuts_down_and_waits(ex):
    with ex as e:
        assert e is ex
        futs = [e.submit(sleep_return, 0.2, i) for i in range(3)]
    assert all(f.done() for f in futs)
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2]
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 2)


def test_context_manager_on_an_exception(ex):
    with pytest.raises(KeyError):
        with ex:
            fut = ex.submit(sleep_return, 0.2, "done")
            raise KeyError("user code failed")
    assert fut.done() and fut.result() == "done"
