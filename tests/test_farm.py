"""The load-balanced task farm against real clusters: scheduling, policies,
dependencies, engine death and replacement.

Destructive tests start their own clusters (`make_cluster`); the rest share
the session's two-engine cluster. No durations are asserted, only outcomes
(and generous bounds proving a stop happened before a task would have ended).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import cloudpickle
import pytest

import cohort
from conftest import wait_until

# engines cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(__import__(__name__))


def slow_square(x, delay=0.05):
    time.sleep(delay)
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


# --- basics ----------------------------------------------------------------------------
def test_apply_runs_somewhere_and_reports_where(rc):
    lv = rc.load_balanced_view()
    ar = lv.apply(os.getpid)
    pid = ar.get(timeout=10)
    assert ar.targets[0] in rc.ids
    assert rc.engines[ar.targets[0]]["pid"] == pid
    assert lv.apply_sync(pow, 2, 10) == 1024
    assert lv.apply(divmod, 7, 2, block=True) == (3, 1)


def test_map_in_order_for_sequences_generators_and_chunks(rc):
    lv = rc.load_balanced_view()
    assert lv.map(lambda x: x * 2, range(1000)).get(timeout=30) == [x * 2 for x in range(1000)]
    assert lv.map(pow, [2, 3, 4], [2, 2, 2], block=True) == [4, 9, 16]
    gen = (i for i in range(50))
    assert list(lv.map(lambda x: -x, gen, chunksize=7)) == [-i for i in range(50)]
    ar = lv.map(slow_square, range(20), [0.01] * 20, ordered=False)
    assert sorted(ar) == [x * x for x in range(20)]
    assert len(ar) == 20 and ar.progress == 20
    assert lv.map(abs, []).get(timeout=10) == []


def test_imap_streams_and_drops_consumed_results(rc):
    lv = rc.load_balanced_view()
    it = lv.imap(lambda x: x + 1, range(2000))
    total = 0
    for v in it:
        total += v
    assert total == sum(range(1, 2001))
    assert not it._chunks  # nothing kept once consumed
    with pytest.raises(TypeError, match="iterate"):
        it.get()


def test_map_is_running_once_a_chunk_went_to_an_engine(rc):
    lv = rc.load_balanced_view()
    # long tasks on each engine first: the window of tasks in flight per engine
    # shrinks back to --lb-window (it widens for short tasks, as earlier tests ran)
    for w in [lv.apply(slow_square, i, 0.2) for i in range(2)]:
        w.get(timeout=30)
    blockers = [lv.apply(slow_square, i, 1.0) for i in range(6)]  # engines busy for a while
    mr = lv.map(slow_square, range(4), chunksize=1)
    assert not mr.running()  # every chunk still waits at the controller
    wait_until(mr.running, timeout=20, msg="a chunk to reach an engine")
    assert mr.result(timeout=60) == [0, 1, 4, 9]
    assert not mr.running()
    for b in blockers:
        b.get(timeout=30)


def test_map_error_raised_at_its_place(rc):
    lv = rc.load_balanced_view()
    ar = lv.map(fail_on, range(10), [6] * 10, chunksize=1)
    got = []
    with pytest.raises(cohort.RemoteError, match="bad item 6"):
        for v in ar:
            got.append(v)
    assert got == [0, 1, 2, 3, 4, 5]
    with pytest.raises(cohort.RemoteError) as info:
        ar.get(timeout=10)
    assert info.value.ename == "ValueError"


def test_one_map_consumes_another(rc):
    lv = rc.load_balanced_view()
    phase_a = lv.map(lambda x: x + 1, range(30))
    phase_b = lv.map(lambda y: y * 10, phase_a)
    assert phase_b.get(timeout=30) == [(x + 1) * 10 for x in range(30)]


def test_bad_arguments_say_what_is_wrong(rc):
    lv = rc.load_balanced_view()
    with pytest.raises(TypeError, match="callable"):
        lv.apply(42)
    with pytest.raises(ValueError, match="chunksize"):
        lv.map(abs, [1], chunksize=0)
    with pytest.raises(TypeError, match="unknown"):
        lv.map(abs, [1], colour="red")
    with pytest.raises(ValueError, match="on_failure"):
        cohort.Policy(on_failure="explode")
    with pytest.raises(ValueError, match="timeout"):
        lv.apply(abs, 1, timeout=-1)
    with pytest.raises(TypeError, match="dependencies"):
        lv.apply(abs, 1, after=3.5)


def test_flags_per_view_and_temporarily(rc):
    lv = rc.load_balanced_view(retries=1)
    assert lv.policy.retries == 1
    with lv.temp_flags(policy=cohort.Policy(timeout=30), retries=3):
        assert lv.policy == cohort.Policy(timeout=30, retries=3)
    assert lv.policy == cohort.Policy(retries=1)
    lv.set_flags(block=True)
    assert lv.apply(abs, -3) == 3


# --- timeouts -------------------------------------------------------------------------------
def test_timeout_interrupts_a_sleeping_task_and_the_engine_lives_on(rc):
    lv = rc.load_balanced_view()
    rc[:].execute("kept = 'namespace intact'", block=True)
    t0 = time.monotonic()
    ar = lv.apply(time.sleep, 1e6, timeout=0.5)
    with pytest.raises(cohort.TaskTimeout, match="timeout of 0.5 s"):
        ar.get(timeout=30)
    assert time.monotonic() - t0 < 30
    assert rc.ids == [0, 1]  # interrupted, not killed
    wait_until(lambda: all(v["inflight"] == 0 for v in rc.queue_status().values()), 10,
               msg="the interrupted task to clear")
    assert rc[:].pull("kept", block=True) == ["namespace intact"] * 2
    assert lv.apply_sync(lambda: "back in service") == "back in service"


def test_timeout_on_a_c_loop_kills_and_replaces_the_engine(make_cluster):
    cl = make_cluster(n=1, controller_args=["--kill-grace", "1"])
    rc = cl.client
    (old,) = rc.ids
    lv = rc.load_balanced_view()
    ar = lv.apply(lambda: sum(range(10 ** 13)), timeout=1)  # C code: deaf to KeyboardInterrupt
    with pytest.raises(cohort.TaskTimeout):
        ar.get(timeout=30)
    wait_until(lambda: rc.ids and rc.ids != [old], 30, msg="a replacement engine")
    assert lv.apply_sync(lambda: 7) == 7


def test_coprocess_timeout_kills_the_whole_tree(rc, tmp_path):
    lv = rc.load_balanced_view()
    pids = tmp_path / "pids"
    script = (f"sleep 1000 & echo $! >> {pids}; "
              f"setsid sleep 1000 & echo $! >> {pids}; sleep 1000")
    ar = lv.apply(cohort.coprocess, ["bash", "-c", script], timeout=1)
    with pytest.raises(cohort.CohortError) as info:
        ar.get(timeout=60)
    assert "Timeout" in type(info.value).__name__ + getattr(info.value, "ename", "")
    listed = [int(p) for p in pids.read_text().split()]
    assert len(listed) == 2

    def gone(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0] == "Z"
        except FileNotFoundError:
            return True
    wait_until(lambda: all(gone(p) for p in listed), 10, msg="the grandchildren to die")
    ok = lv.apply_sync(cohort.coprocess, ["echo", "hi"], timeout=30)
    assert ok.returncode == 0 and ok.stdout == "hi\n"


# --- retries and engine death ------------------------------------------------------------------
def fail_first_time(marker_dir):
    """Raise on the first engine that runs it; succeed on any other."""
    import os
    mark = os.path.join(marker_dir, "first")
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return os.getpid()
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    raise RuntimeError("first attempt fails")


def test_retry_after_an_exception_goes_to_another_engine(rc, tmp_path):
    lv = rc.load_balanced_view()
    ar = lv.apply(fail_first_time, str(tmp_path), retries=1)
    pid = ar.get(timeout=30)
    first = int((tmp_path / "first").read_text())
    assert pid != first
    assert ar.retries == 1
    with pytest.raises(cohort.RemoteError, match="first attempt fails"):
        (tmp_path / "first").unlink()
        lv.apply(fail_first_time, str(tmp_path)).get(timeout=30)  # retries=0: the error


def test_retry_after_sigkill_gives_the_right_result_and_keeps_the_cluster_size(make_cluster):
    cl = make_cluster(n=2)
    rc = cl.client
    lv = rc.load_balanced_view()

    def task(x):
        print("STARTED", flush=True)
        import time
        time.sleep(2)
        return x * 3

    ar = lv.apply(task, 14, retries=1)
    wait_until(lambda: "STARTED" in (ar.stdout or ""), 20, msg="the task to start")
    victim = next(e for e in rc.engines.values() if e["state"] == "busy" or True)
    running = [eid for eid, q in rc.queue_status().items() if q["inflight"]]
    assert len(running) == 1
    victim = running[0]
    os.kill(rc.engines[victim]["pid"], signal.SIGKILL)
    assert ar.get(timeout=30) == 42
    assert ar.retries == 1 and ar.targets[0] != victim
    wait_until(lambda: len(rc.ids) == 2 and victim not in rc.ids, 30,
               msg="a replacement for the killed engine")


def test_engine_death_without_retries_is_an_engine_error(make_cluster):
    cl = make_cluster(n=1, restart_engines=False)
    rc = cl.client
    lv = rc.load_balanced_view()
    ar = lv.apply(lambda: (print("STARTED", flush=True), __import__("time").sleep(60)))
    wait_until(lambda: "STARTED" in (ar.stdout or ""), 20, msg="the task to start")
    os.kill(rc.engines[rc.ids[0]]["pid"], signal.SIGKILL)
    with pytest.raises(cohort.EngineError, match="died while running"):
        ar.get(timeout=30)


def test_map_under_random_engine_kills_completes_correctly(make_cluster):
    cl = make_cluster(n=3)
    rc = cl.client
    lv = rc.load_balanced_view(retries=10)
    n = 10_000
    ar = lv.map(slow_square, range(n), [0.0005] * n, chunksize=50)
    kills = []

    def killer():
        rnd = random.Random(7)
        while not ar.done() and len(kills) < 4:
            time.sleep(0.4)
            engines = list(rc.engines.values())
            if len(engines) < 2:
                continue
            victim = rnd.choice(engines)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
                kills.append(victim["id"])
            except ProcessLookupError:
                pass

    t = threading.Thread(target=killer)
    t.start()
    try:
        assert ar.get(timeout=120) == [x * x for x in range(n)]
    finally:
        t.join()
    assert kills, "the map finished before any engine was killed"


# --- groups, engine counts, dependencies ------------------------------------------------------
def log_and_maybe_fail(x, path, bad):
    import time
    with open(path, "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.2)
    if x == bad:
        raise ValueError(f"item {x} failed")
    return x


def test_cancel_rest_stops_the_group_at_the_first_failure(rc, tmp_path):
    lv = rc.load_balanced_view()
    path = str(tmp_path / "ran")
    n = 40
    ar = lv.map(log_and_maybe_fail, range(n), [path] * n, [2] * n, chunksize=1,
                on_failure="cancel_rest")
    with pytest.raises(cohort.RemoteError, match="item 2 failed"):
        ar.get(timeout=60)
    ran = open(path).read().split()
    assert len(ran) < n // 2, f"{len(ran)} of {n} items ran despite cancel_rest"
    errors = [type(e).__name__ for e in ar._errors.values()]
    assert "TaskCancelled" in errors
    # the default, "continue", runs everything
    path2 = str(tmp_path / "ran2")
    ar2 = lv.map(log_and_maybe_fail, range(6), [path2] * 6, [2] * 6, chunksize=1)
    with pytest.raises(cohort.RemoteError):
        ar2.get(timeout=60)
    assert sorted(map(int, open(path2).read().split())) == list(range(6))


def test_min_engines_waits_then_fails_clearly(rc):
    lv = rc.load_balanced_view()
    ar = lv.apply(abs, -1, min_engines=5, engine_wait=0.5)
    with pytest.raises(cohort.NoEnginesError, match="needs 5 engines"):
        ar.get(timeout=30)
    assert lv.apply_sync(abs, -2, min_engines=2, engine_wait=5) == 2


def test_engines_joining_mid_run_get_work(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    lv = rc.load_balanced_view()
    ar = lv.map(slow_square, range(60), [0.1] * 60, chunksize=1)
    cl.add_engines(1)
    rc.wait_for_engines(2, timeout=30)
    assert ar.get(timeout=60) == [x * x for x in range(60)]
    assert rc.queue_status()[max(rc.ids)]["completed"] > 0


def test_after_waits_for_success_and_follow_runs_in_the_same_place(rc):
    lv = rc.load_balanced_view()
    a = lv.apply(slow_square, 3, 0.3)
    b = lv.apply(lambda: time.time(), after=a)
    assert b.get(timeout=30) >= a.completed
    for _ in range(5):
        first = lv.apply(os.getpid)
        second = lv.apply(os.getpid, follow=first)
        assert second.get(timeout=30) == first.get(timeout=30)
        assert second.targets == first.targets
    # dependencies on direct tasks work too
    d = rc[1].apply(abs, -1)
    assert lv.apply(os.getpid, follow=d).get(timeout=30) == rc.engines[1]["pid"]


def test_unmet_dependencies_fail_clearly_and_never_hang(rc):
    lv = rc.load_balanced_view()
    bad = lv.apply(fail_on, 1, 1)
    dep = lv.apply(abs, -1, after=bad)
    chained = lv.apply(abs, -2, after=dep)
    with pytest.raises(cohort.DependencyError, match="failed"):
        dep.get(timeout=30)
    with pytest.raises(cohort.DependencyError):
        chained.get(timeout=30)
    with pytest.raises(cohort.DependencyError, match="does not know"):
        lv.apply(abs, 1, after="no-such-task").get(timeout=30)
    on0, on1 = rc[0].apply(abs, 1), rc[1].apply(abs, 1)
    with pytest.raises(cohort.DependencyError, match="different engines"):
        lv.apply(abs, 1, follow=[on0, on1]).get(timeout=30)


def test_abort_and_cancel_reach_load_balanced_tasks(rc):
    lv = rc.load_balanced_view()
    blockers = [lv.apply(time.sleep, 0.5) for _ in range(4)]  # fill both engines' pipelines
    queued = [lv.apply(abs, -i) for i in range(5)]
    assert queued[-1].cancel() is True and queued[-1].cancelled()
    rc.abort(queued[:2])
    for a in queued[:2]:
        with pytest.raises(cohort.TaskAborted):
            a.get(timeout=30)
    assert [a.get(timeout=30) for a in queued[2:4]] == [2, 3]
    for b in blockers:
        b.get(timeout=30)


def test_two_clients_share_the_farm_fairly(rc, cluster):
    other = cohort.Client(cluster.connection_file, stream_output=False)
    try:
        lv1 = rc.load_balanced_view()
        lv2 = other.load_balanced_view()
        big = lv1.map(slow_square, range(200), [0.01] * 200, chunksize=1)
        small = lv2.map(slow_square, range(5), [0.01] * 5, chunksize=1)
        assert small.get(timeout=60) == [x * x for x in range(5)]
        assert not big.done()  # the small map did not wait for the big one
        assert big.get(timeout=60) == [x * x for x in range(200)]
    finally:
        other.close()


# --- controller restart ----------------------------------------------------------------------
def logged_square(x, path):
    import os
    import time
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\n".encode())
    os.close(fd)
    time.sleep(0.02)
    return x * x


def test_controller_sigkill_and_restart_mid_map(make_cluster, tmp_path):
    cl = make_cluster(n=2)
    rc = cl.client
    lv = rc.load_balanced_view()
    log = str(tmp_path / "ran")
    before = lv.apply(abs, -5)
    assert before.get(timeout=10) == 5
    n = 300
    ar = lv.map(logged_square, range(n), [log] * n, chunksize=1)
    wait_until(lambda: ar.progress > 30, 30, msg="the map to get going")
    cl.controller.send_signal(signal.SIGKILL)
    cl.controller.wait(10)
    cl.restart_controller()
    assert ar.get(timeout=120) == [x * x for x in range(n)]
    ran = [int(x) for x in open(log).read().split()]
    assert sorted(ran) == list(range(n)), "some items ran twice or never"
    wait_until(lambda: sorted(rc.ids) == [0, 1], 30, msg="the engines to come back")
    assert rc.get_result(before.msg_ids[0]).get(timeout=10) == 5
    assert lv.apply_sync(abs, -7) == 7


def test_dependencies_older_than_the_controllers_memory_come_from_the_task_db(rc):
    from cohort.controller.scheduler import OUTCOMES_KEPT
    lv = rc.load_balanced_view()
    first = lv.apply(os.getpid)
    pid = first.get(timeout=10)
    lv.map(abs, range(OUTCOMES_KEPT + 50), chunksize=1).get(timeout=120)  # pushes it out
    assert lv.apply(os.getpid, follow=first, after=first).get(timeout=30) == pid


def test_iteration_and_wait_interactive_show_progress(rc, capsys):
    lv = rc.load_balanced_view()
    assert list(lv.map(abs, range(-50, 50), progress=True)) == [abs(i) for i in range(-50, 50)]
    err = capsys.readouterr().err
    assert "100/100" in err and "failed=0" in err and "retried=0" in err
    ar = lv.map(abs, range(30))
    assert ar.wait_interactive(timeout=30) is True
    assert "30/30" in capsys.readouterr().err
    assert list(lv.map(abs, range(5), progress=False)) == list(range(5))
    assert capsys.readouterr().err == ""
