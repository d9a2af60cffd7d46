"""Quick `Executor.submit` calls travel in batches, and each still behaves as its own task.

Real cluster, real engines. A function is batched once the client has seen
that it is quick and while other tasks are out; the tests arrange both.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

import cloudpickle
import pytest

import cohort
from cohort.client.batching import BatchedFuture
from conftest import wait_until
from test_executor import sleep_return, touch_and_sleep  # shipped by value there too

cloudpickle.register_pickle_by_value(__import__(__name__))


def square(x):
    return x * x


def odd_fails(x):
    if x % 2:
        raise ValueError(f"odd item {x}")
    return x


def scaled(x):
    return x * factor  # noqa: F821 - `factor` lives in the engines' namespace


def learned(ex, fn, *args):
    """Run `fn` alone until the client knows it is quick (once, unless the machine hiccups)."""
    for _ in range(20):
        ex.submit(fn, *args).result(timeout=30)
        if ex._batcher._client._call_times.get(fn) < 0.002:
            return
    pytest.fail(f"{fn} never measured under 2 ms a call")


def batches(futs) -> set:
    return {id(f.batch) for f in futs}


def test_a_burst_of_quick_calls_travels_in_batches_with_every_result_right(rc):
    with rc.executor() as ex:
        learned(ex, square, 3)
        blocker = ex.submit(sleep_return, 2.0, "blocker")  # tasks are out: batching is on
        futs = [ex.submit(square, i) for i in range(2000)]
        assert [f.result(timeout=60) for f in futs] == [i * i for i in range(2000)]
        assert blocker.result(timeout=30) == "blocker"
    assert all(isinstance(f, BatchedFuture) for f in futs)
    assert 1 < len(batches(futs)) <= 1000  # two calls a task at least (usually dozens)
    assert all(f.done() and not f.running() for f in futs)


def test_each_call_of_a_batch_gets_its_own_error_with_its_traceback(rc):
    with rc.executor() as ex:
        learned(ex, odd_fails, 0)
        blocker = ex.submit(sleep_return, 0.3)
        futs = [ex.submit(odd_fails, i) for i in range(40)]
        done, _ = cf.wait(futs, timeout=60)
        blocker.result(timeout=30)
    assert done == set(futs) and len(batches(futs)) < 40
    for i, f in enumerate(futs):
        if i % 2:
            err = f.exception()
            assert isinstance(err, cohort.RemoteError)
            assert err.ename == "ValueError" and err.evalue == f"odd item {i}"
            assert "odd_fails" in err.traceback and "kernel.py" not in err.traceback
            assert err.engine_id in rc.ids
        else:
            assert f.result() == i


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x


def test_calls_of_a_method_are_batched_too(rc):
    model = Scaler(3)
    with rc.executor() as ex:
        learned(ex, model.scale, 1)  # `model.scale` is a new object at each access
        blocker = ex.submit(sleep_return, 0.3)
        futs = [ex.submit(model.scale, i) for i in range(100)]
        assert [f.result(timeout=30) for f in futs] == [3 * i for i in range(100)]
        blocker.result(timeout=30)
    assert all(isinstance(f, BatchedFuture) for f in futs)
    assert len(batches(futs)) < 20


def test_batched_calls_see_the_engines_namespace(rc):
    rc[:].push({"factor": 7}, block=True)
    with rc.executor() as ex:
        learned(ex, scaled, 1)
        blocker = ex.submit(sleep_return, 0.3)
        futs = [ex.submit(scaled, i) for i in range(50)]
        assert [f.result(timeout=30) for f in futs] == [7 * i for i in range(50)]
        blocker.result(timeout=30)
    assert all(isinstance(f, BatchedFuture) for f in futs)


def occupy_engines(ex, t):
    """Tasks of `t` s that fill every engine and its pipeline: later ones wait at the controller."""
    # long tasks on each engine first: the window of tasks in flight per engine
    # shrinks back to --lb-window (it widens for short tasks, as earlier tests ran)
    cf.wait([ex.submit(sleep_return, 0.2) for _ in range(2)], timeout=30)
    return [ex.submit(sleep_return, t, i) for i in range(6)]


def queued_batch(ex, learn_with: int):
    """(blockers, ten calls of `square` sent as a batch that waits at the controller)."""
    learned(ex, square, learn_with)
    blockers = occupy_engines(ex, 1.5)
    futs = [ex.submit(square, i) for i in range(10)]
    ex._batcher.flush()
    assert all(isinstance(f, BatchedFuture) and f.batch is not None for f in futs)
    return blockers, futs


def test_cancelling_a_queued_batched_call_sends_the_rest_again(rc):
    with rc.executor() as ex:
        blockers, futs = queued_batch(ex, 2)
        assert futs[3].cancel() is True
        assert futs[3].cancelled() and futs[3].done()
        with pytest.raises(cf.CancelledError):
            futs[3].result(timeout=1)
        assert futs[3].cancel() is True  # again: still cancelled
        rest = futs[:3] + futs[4:]
        assert [f.result(timeout=30) for f in rest] == [i * i for i in range(10) if i != 3]
        assert [b.result(timeout=30) for b in blockers] == list(range(6))
        assert futs[5].cancel() is False  # finished: too late


def test_running_is_true_while_the_batch_runs(rc, tmp_path):
    paths = [str(tmp_path / f"p{i}") for i in range(3)]
    with rc.executor() as ex:
        learned(ex, touch_and_sleep, str(tmp_path / "warm"), 0)
        blocker = ex.submit(sleep_return, 0.2)
        # quick as far as the client knows: the third call then sleeps
        futs = [ex.submit(touch_and_sleep, p, 2.0 if i == 2 else 0) for i, p in enumerate(paths)]
        assert all(isinstance(f, BatchedFuture) for f in futs)
        wait_until(lambda: os.path.exists(paths[2]), timeout=30, msg="the batch to run")
        assert futs[2].running() and not futs[2].done()
        assert futs[2].cancel() is False
        assert futs[2].result(timeout=30) == paths[2] and not futs[2].running()
        blocker.result(timeout=30)


def test_shutdown_with_cancel_futures_cancels_queued_batched_calls(rc):
    ex = rc.executor()
    learned(ex, square, 4)
    blockers = occupy_engines(ex, 1.0)
    futs = [ex.submit(square, i) for i in range(20)]
    assert all(isinstance(f, BatchedFuture) for f in futs)
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futs)
    ran = [b.result(timeout=0) for b in blockers if not b.cancelled()]  # the queued ones are not
    assert len(ran) >= 2 and ran == sorted(ran)


def test_no_batching_under_a_policy_or_for_an_idle_client(rc):
    with rc.executor(retries=1) as ex:
        learned(ex, square, 5)
        blocker = ex.submit(sleep_return, 0.3)
        futs = [ex.submit(square, i) for i in range(10)]
        assert not any(isinstance(f, BatchedFuture) for f in futs)
        assert [f.result(timeout=30) for f in futs] == [i * i for i in range(10)]
        blocker.result(timeout=30)
    with rc.executor() as ex:
        learned(ex, square, 6)
        assert not isinstance(ex.submit(square, 7), BatchedFuture)  # nothing else out


def pid_then_sleep(path, t):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(t)
    return path


def test_a_batch_lost_with_its_engine_fails_each_call_with_engine_error(make_cluster, tmp_path):
    rc = make_cluster(n=2, restart_engines=False).client
    marker = tmp_path / "pid"
    with rc.executor() as ex:
        learned(ex, pid_then_sleep, str(tmp_path / "warm"), 0)
        blocker = ex.submit(sleep_return, 0.1)
        futs = [ex.submit(pid_then_sleep, str(marker if i == 0 else tmp_path / f"p{i}"),
                          0 if i else 60) for i in range(5)]
        assert all(isinstance(f, BatchedFuture) for f in futs)
        wait_until(lambda: marker.exists() and marker.read_text(), timeout=30, msg="the batch")
        futs = [f for f in futs if f.batch is futs[0].batch]  # its batch: the engine's queue
        os.kill(int(marker.read_text()), 9)
        for f in futs:
            with pytest.raises(cohort.EngineError):
                f.result(timeout=30)
        blocker.result(timeout=30)


def test_a_batched_call_is_pickled_at_submit(rc):
    import threading
    with rc.executor() as ex:
        learned(ex, len, [1])
        blocker = ex.submit(sleep_return, 0.3)
        items = []
        futs = []
        for i in range(20):
            items.append(i)
            futs.append(ex.submit(len, items))  # the list as it is now, as unbatched
        with pytest.raises(TypeError):
            ex.submit(len, threading.Lock())  # cannot be pickled: raises here, as unbatched
        assert [f.result(timeout=30) for f in futs] == list(range(1, 21))
        assert any(isinstance(f, BatchedFuture) for f in futs)
        blocker.result(timeout=30)


def test_closing_the_client_fails_calls_not_sent_yet(cluster):
    with cohort.Client(cluster.connection_file, stream_output=False) as rc:
        ex = rc.executor()
        learned(ex, square, 1)
        ex.submit(sleep_return, 0.5)
        futs = [ex.submit(square, i) for i in range(50)]
    for f in futs:
        wait_until(f.done, timeout=15, msg="every call to end")
        assert f.cancelled() or f.exception() is None or \
            isinstance(f.exception(), cohort.ControllerError)


def test_callbacks_may_submit_and_cancel_while_other_threads_submit(rc):
    import threading
    with rc.executor() as ex:
        learned(ex, square, 2)
        blocker = ex.submit(sleep_return, 0.3)
        chained, stop = [], threading.Event()

        def on_done(f):
            chained.append(ex.submit(square, f.result()))
            chained.append(ex.submit(square, 0))
            chained[-1].cancel()

        def submitter():
            while not stop.is_set():
                ex.submit(square, 3).add_done_callback(on_done)

        threads = [threading.Thread(target=submitter) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a submitting thread hangs"
        blocker.result(timeout=30)
        wait_until(lambda: all(f.done() for f in list(chained)), timeout=30,
                   msg="every chained call to end")
        assert all(f.cancelled() or f.result() in (81, 0) for f in list(chained))


def test_remembering_a_function_does_not_keep_what_it_closes_over():
    import gc
    import weakref

    from cohort.client.batching import CallTimes

    class Big:
        pass

    times, big = CallTimes(), Big()
    fn = (lambda b: (lambda: b))(big)
    times.learn(fn, 1e-5)
    times.learn(len, 2e-5)           # a builtin: no weak reference, kept in a small dict

    class Model:
        def predict(self, x):
            return x

    times.learn(Model().predict, 3e-5)  # a method counts as its function, held weakly
    assert times.get(fn) == 1e-5 and times.get(len) == 2e-5
    assert times.get(Model().predict) == 3e-5
    assert times.get({}.get) is None and times.get([]) is None  # unknown; unhashable
    ref = weakref.ref(big)
    del fn, big
    gc.collect()
    assert ref() is None


def value_or_trouble(x):
    import sys
    import threading
    if x == 3:
        return threading.Lock()  # cannot be sent back
    if x == 6:
        sys.exit(1)
    return x


def test_a_call_whose_value_cannot_be_sent_or_that_exits_fails_alone(rc):
    with rc.executor() as ex:
        learned(ex, value_or_trouble, 0)
        blocker = ex.submit(sleep_return, 0.3)
        futs = [ex.submit(value_or_trouble, i) for i in range(10)]
        cf.wait(futs, timeout=30)
        blocker.result(timeout=30)
    assert all(isinstance(f, BatchedFuture) for f in futs)
    for i, f in enumerate(futs):
        if i == 3:
            assert f.exception().ename == "TypeError"
            assert "could not be sent back" in f.exception().evalue
        elif i == 6:
            assert f.exception().ename == "SystemExit"
        else:
            assert f.result() == i


class Counter:
    def __init__(self):
        self.n = 0

    def value(self, _):
        return self.n


def test_the_function_is_pickled_at_submit_too(rc):
    counter = Counter()
    with rc.executor() as ex:
        learned(ex, counter.value, 0)
        blocker = ex.submit(sleep_return, 0.3)
        futs = []
        for i in range(20):
            counter.n = i
            futs.append(ex.submit(counter.value, i))  # the method of the object as it is now
        counter.n = 1000
        assert [f.result(timeout=30) for f in futs] == list(range(20))
        blocker.result(timeout=30)


def test_abort_reaches_calls_still_waiting_to_be_sent(rc):
    with rc.executor() as ex:
        learned(ex, square, 3)
        blockers = occupy_engines(ex, 1.0)
        futs = [ex.submit(square, i) for i in range(20)]  # in the open batch, most likely
        assert rc.abort(futs[:1]) >= 0  # the batch carrying the first: all its calls
        for f in futs:
            wait_until(f.done, timeout=30, msg="every call to end")
        assert all(f.cancelled() or isinstance(f.exception(), cohort.TaskAborted)
                   for f in futs if f.batch is futs[0].batch)
        cf.wait(blockers, timeout=30)


def test_a_callback_of_a_cancelled_call_may_cancel_its_sibling(rc):
    import threading
    with rc.executor() as ex:
        blockers, futs = queued_batch(ex, 4)
        futs[3].add_done_callback(lambda f: futs[5].cancel())
        th = threading.Thread(target=futs[3].cancel, daemon=True)
        th.start()
        th.join(15)
        assert not th.is_alive(), "cancel() hangs"
        done, not_done = cf.wait(futs, timeout=30)
        assert not not_done and futs[3].cancelled() and futs[5].cancelled()
        assert [f.result() for i, f in enumerate(futs) if i not in (3, 5)] == \
            [i * i for i in range(10) if i not in (3, 5)]
        cf.wait(blockers, timeout=30)
