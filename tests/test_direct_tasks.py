"""Clients send tasks straight to engines on their host (client/direct.py).

Real clusters and real sockets throughout.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

import cohort
from cohort.client.direct import WINDOW, DirectTasks
from cohort.wire import local
from conftest import wait_until


def _warm(rc, eid: int = 0) -> None:
    """Until a task has gone to engine `eid` straight (its socket is connected)."""
    wait_until(lambda: rc[eid].apply_sync(int) == 0 and rc._direct._sent.get(eid, 0) > 0,
               timeout=15, msg="a task sent straight to the engine")


def test_a_task_reaches_its_engine_and_returns_while_the_controller_is_stopped(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    _warm(rc)
    os.kill(cl.controller.pid, signal.SIGSTOP)
    try:  # neither the task nor its result passes through the controller
        ar = rc[0].apply(lambda x: x * 2, 21)
        assert ar.get(timeout=10) == 42
    finally:
        os.kill(cl.controller.pid, signal.SIGCONT)
    # the controller recorded it from the copies, whichever came first
    wait_until(lambda: [r["state"] for r in rc.tasks(ids=ar.msg_ids)] == ["done"], timeout=10,
               msg="the task recorded as done")
    assert rc.queue_status()[0]["inflight"] == 0


def test_a_quick_task_needs_no_copy_the_controller_records_it_from_its_result(cluster):
    with cohort.Client(cluster.connection_file, stream_output=False) as rc:
        _warm(rc)
        sent = []
        rc._send_copies = sent.append
        ar = rc[0].apply(lambda: (print("said"), "quick")[-1])
        assert ar.get(timeout=10) == "quick"
        wait_until(lambda: [r["state"] for r in rc.tasks(ids=ar.msg_ids)] == ["done"],
                   timeout=10, msg="the task recorded as done")
        assert sent == []  # its result came first: no copy went
        (row,) = rc.tasks(ids=ar.msg_ids)
        assert row["stdout"] == "said\n" and row["engine"] == 0 and row["kind"] == "apply"
        assert row["submitted"] <= row["started"] <= row["completed"]
        assert rc.queue_status()[0]["inflight"] == 0


def test_a_longer_task_is_known_to_the_controller_while_it_runs(cluster):
    with cohort.Client(cluster.connection_file, stream_output=False) as rc, \
            cohort.Client(cluster.connection_file, stream_output=False) as other:
        _warm(rc)
        ar = rc[0].execute("import time; time.sleep(1.5)")
        # its client's copy goes within about 0.1 s, without any request from it
        wait_until(lambda: other.queue_status()[0]["inflight"] == 1, timeout=1.2,
                   msg="the controller to know the task runs")
        ar.get(timeout=10)
        wait_until(lambda: other.queue_status()[0]["inflight"] == 0, timeout=5,
                   msg="the task to be done")


def test_a_copy_that_comes_after_the_result_is_ignored(cluster):
    with cohort.Client(cluster.connection_file, stream_output=False) as rc:
        _warm(rc)
        held = []
        send_copies = rc._send_copies
        rc._send_copies = held.append
        ar = rc[0].execute("import time; time.sleep(0.3)")  # long enough for its copy to be due
        ar.get(timeout=10)
        wait_until(lambda: [r["state"] for r in rc.tasks(ids=ar.msg_ids)] == ["done"],
                   timeout=10, msg="the task recorded from its result")
        assert held  # the copy was due before the result came; it comes late
        with rc._send_lock:
            send_copies(held[0])
        time.sleep(0.3)
        assert rc.queue_status()[0]["inflight"] == 0  # not taken for a task still running
        assert [r["state"] for r in rc.tasks(ids=ar.msg_ids)] == ["done"]


def test_an_engine_killed_during_a_task_sent_straight_fails_it(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    _warm(rc)
    sent = rc._direct._sent[0]
    ar = rc[0].apply(lambda: (print("started"), __import__("time").sleep(60))[-1])
    assert rc._direct._sent[0] == sent + 1
    wait_until(lambda: "started" in (ar.stdout or ""), timeout=15, msg="the task to start")
    os.kill(rc.engines[0]["pid"], signal.SIGKILL)
    with pytest.raises(cohort.EngineError, match="engine 0"):
        ar.get(timeout=15)


def test_an_engine_killed_before_the_controller_heard_of_the_task_fails_it(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    _warm(rc)
    ar = rc[0].execute("import time; time.sleep(60)")
    os.kill(rc.engines[0]["pid"], signal.SIGKILL)  # within its copy's 20 ms, most likely
    with pytest.raises(cohort.EngineError, match="engine 0"):
        ar.get(timeout=15)


def test_tasks_beyond_the_window_wait_at_the_controller_and_run_in_order(rc):
    _warm(rc)
    rc[0].execute("order = []", block=True)
    first = rc[0].execute("import time; time.sleep(0.5)")
    ars = [rc[0].execute(f"order.append({i})") for i in range(3 * WINDOW)]
    last = rc[0].execute("order.append('cancelled')")
    assert last.cancel() is True  # it waits at the controller: it can be withdrawn
    first.get(timeout=15)
    for ar in ars:
        ar.get(timeout=15)
    tail = [rc[0].execute(f"order.append({i})") for i in range(3 * WINDOW, 4 * WINDOW)]
    for ar in tail:
        ar.get(timeout=15)
    assert rc[0].pull("order", block=True) == list(range(4 * WINDOW))


def test_a_task_sent_straight_can_be_aborted_before_it_runs(rc):
    _warm(rc, 1)
    blocker = rc[1].execute("import time; time.sleep(1.0)")
    sent = rc._direct._sent[1]
    victim = rc[1].execute("aborted_one_ran = True")
    assert rc._direct._sent[1] == sent + 1  # it went straight, within the window
    rc.abort(victim)
    with pytest.raises(cohort.TaskAborted):
        victim.get(timeout=15)
    blocker.get(timeout=15)
    assert rc[1].apply_sync(lambda: "aborted_one_ran" in globals()) is False


def test_a_task_too_large_for_the_local_socket_goes_the_usual_way_in_order(rc):
    _warm(rc)
    rc[0].execute("order = []", block=True)
    sent = rc._direct._sent[0]
    first = rc[0].execute("import time; time.sleep(0.3); order.append(1)")
    blob = os.urandom(local.RECORD_MAX + 1)
    big = rc[0].push({"blob": blob})  # through the controller, after the one sent straight
    last = rc[0].execute("order.append(len(blob))")  # behind the big one: the usual way too
    assert rc._direct._sent[0] == sent + 1
    for ar in (first, big, last):
        ar.get(timeout=30)
    assert rc[0].pull("order", block=True) == [1, len(blob)]
    assert rc[0].pull("blob", block=True) == blob
    rc[0].apply_sync(int)
    assert rc._direct._sent[0] > sent + 1  # and then straight again


# --- DirectTasks and the local sockets, for real ---------------------------------
def test_direct_tasks_keep_a_window_and_follow_tasks_sent_the_usual_way():
    listener, address = local.listen()
    here = socket.gethostname()
    direct = DirectTasks(here)
    try:
        direct.open({"id": 5, "host": "elsewhere", "tasks": address})
        assert direct.plan(5) == (False, {})  # another host's socket is not ours
        direct.open({"id": 5, "host": here, "tasks": address})
        (conn,) = local.accept(listener)
        for i in range(WINDOW):
            assert direct.plan(5) == (True, {"dq": i + 1})
            assert direct.send(5, f"t{i}", [b"<COHORT>", b"%d" % i])
        assert direct.plan(5) == (False, {"after_dq": WINDOW})  # the window is full
        direct.routed(5, "u0")
        direct.answered("t0")
        assert direct.plan(5) == (False, {"after_dq": WINDOW})  # behind the one sent the usual way
        direct.answered("u0")
        assert direct.plan(5) == (True, {"dq": WINDOW + 1})
        assert not direct.send(5, "big", [b"<COHORT>", b"x" * (local.RECORD_MAX + 1)])
        messages, alive = local.receive(conn)
        assert alive and [bytes(m[1]) for m in messages] == [b"%d" % i for i in range(WINDOW)]
        conn.close()
        assert direct.receive(next(iter(direct.fds))) == ([], False)  # the engine is gone
    finally:
        direct.close_all()
        listener.close()


def test_no_direct_tasks_on_an_encrypted_cluster_or_to_unknown_engines():
    listener, address = local.listen()
    try:
        direct = DirectTasks(socket.gethostname(), enabled=False)
        direct.open({"id": 1, "host": socket.gethostname(), "tasks": address})
        assert direct.plan(1) == (False, {}) and direct.plan(2) == (False, {})
        direct = DirectTasks(socket.gethostname())
        direct.open({"id": 3, "host": socket.gethostname(), "tasks": "local:@nobody-listens"})
        assert direct.plan(3) == (False, {})
    finally:
        listener.close()


def test_local_records_keep_their_frames_and_malformed_ones_are_dropped():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    try:
        assert local.send(a, [b"<COHORT>", b"", memoryview(b"abc")])
        a.send(b"\xff\xff\xff\xff")  # a count no record can have
        a.send(b"\x00\x00\x00\x01\x00\x00\x00\x09ab")  # shorter than it says
        messages, alive = local.receive(b)
        assert alive and [[bytes(f) for f in m] for m in messages] == [[b"<COHORT>", b"", b"abc"]]
        a.close()
        assert local.receive(b) == ([], False)
    finally:
        b.close()


def test_a_result_asked_for_a_task_never_sent_fails_after_a_short_wait(rc, cluster):
    with cohort.Client(cluster.connection_file, stream_output=False) as other:
        t = time.monotonic()
        ar = other.get_result(f"{rc.session.id}-999999")  # looks like rc's, but never was
        with pytest.raises(cohort.ControllerError, match="no task"):
            ar.get(timeout=15)
        assert time.monotonic() - t >= 1.0  # it may have been coming straight to an engine


def test_a_task_sent_straight_survives_a_controller_restart(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    _warm(rc)
    ar = rc[0].execute("import time; time.sleep(3); survived = 1")
    time.sleep(0.3)  # its copy went to the controller that is killed now
    cl.controller.send_signal(signal.SIGKILL)
    cl.controller.wait(10)
    cl.restart_controller()
    ar.get(timeout=60)
    wait_until(lambda: rc.ids == [0], 30, msg="the engine to come back")
    assert rc[0].pull("survived", block=True) == 1
    wait_until(lambda: [r["state"] for r in rc.tasks(ids=ar.msg_ids)] == ["done"],
               timeout=15, msg="the task recorded as done")


def test_a_task_may_depend_on_a_quick_task_sent_straight(rc):
    _warm(rc)
    lv = rc.load_balanced_view()
    for i in range(20):  # the controller may hear of each first from its dependent
        first = rc[0].apply(lambda x: x, i)
        assert first.get(timeout=10) == i
        assert lv.apply(lambda x: x + 1, i, after=first).get(timeout=10) == i + 1


def test_its_own_client_may_ask_again_for_a_result_it_got_straight(rc):
    _warm(rc)
    for i in range(10):
        ar = rc[0].apply(lambda x: x * 3, i)
        assert ar.get(timeout=10) == 3 * i
        assert rc.get_result(ar.msg_ids[0]).get(timeout=10) == 3 * i


def test_connecting_to_an_engine_too_busy_to_accept_never_waits():
    name = f"cohort-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + name)
    listener.listen(1)  # never accepted, like an engine in a long task
    socks = []
    try:
        t = time.monotonic()
        for _ in range(5):
            socks.append(local.connect(local.PREFIX + name))
        assert time.monotonic() - t < 2
        assert None in socks  # the backlog filled: the usual way for those
    finally:
        for s in socks:
            if s is not None:
                s.close()
        listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_an_engine_inbox_accepts_only_its_own_users_processes():
    listener, address = local.listen()
    try:
        pid = os.fork()
        if pid == 0:  # another user on the same host
            try:
                os.setgid(65534)
                os.setuid(65534)
                sock = local.connect(address)
                os._exit(0 if sock is not None else 3)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0  # the connection itself is made...
        assert local.accept(listener) == []  # ...and refused at once
        mine = local.connect(address)
        (conn,) = local.accept(listener)  # this user's process is accepted
        assert local.peer_uid(conn) == os.geteuid()
        conn.close()
        mine.close()
    finally:
        listener.close()


# --- a waiting thread's own channel ----------------------------------------------
def test_a_blocking_call_is_answered_over_the_callers_own_channel(rc, capsys):
    _warm(rc)
    rc[0].execute("print('over the channel')", block=True)
    assert len(rc._direct._channels[0]) == 1  # used, and back for the next call
    assert "over the channel" in capsys.readouterr().out  # its output, shown as it came
    assert rc[0].apply_sync(lambda x: x + 1, 41) == 42
    assert len(rc._direct._channels[0]) == 1  # the same one again
    wait_until(lambda: "over the channel\n" in [r["stdout"] for r in rc.tasks(engine=0)],
               timeout=10, msg="the call recorded with its output")


def test_a_blocking_call_answered_through_the_controller_wakes_its_caller(rc):
    _warm(rc)
    blob = os.urandom(local.RECORD_MAX + 1)
    rc[0].execute(f"blob = bytes(range(256)) * {len(blob) // 256 + 1}", block=True)
    # the call goes over the channel; its answer is too large for it
    assert len(rc[0].pull("blob", block=True)) >= len(blob)
    assert len(rc._direct._channels[0]) == 1
    assert rc[0].apply_sync(lambda: "next") == "next"


def test_a_wait_cut_short_leaves_the_answer_to_the_io_thread(rc, caplog):
    _warm(rc)
    threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident,
                                               signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        rc[0].execute("import time; time.sleep(1.5); late = 'ran'", block=True)
    assert len(rc._direct._adopted[0]) == 1  # the I/O thread reads that channel now
    assert rc[0].apply_sync(lambda: "meanwhile") == "meanwhile"  # after it, in order
    assert rc[0].pull("late", block=True) == "ran"
    wait_until(lambda: not rc._pending, timeout=10, msg="the cut-short call answered")
    assert rc[0].apply_sync(lambda: "again") == "again"
    # its answer came to the I/O thread after the channel's pipe was closed: no write
    assert not [r for r in caplog.records if "callback" in r.getMessage()]


def test_an_engine_killed_during_a_blocking_call_fails_it(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    _warm(rc)
    pid = rc.engines[0]["pid"]
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(cohort.EngineError, match="engine 0"):
        rc[0].execute("import time; time.sleep(60)", block=True)


def test_a_waiting_thread_spins_only_while_its_calls_are_quick(rc):
    _warm(rc)
    rc[0].execute("import time; time.sleep(0.05)", block=True)
    (channel,) = rc._direct._channels[0]
    assert channel._quick is False  # 50 ms is no quick call: the next wait sleeps at once
    assert rc[0].apply_sync(lambda: "still answered") == "still answered"
