"""Engines answer a direct task's client themselves, past the controller (engine/replies.py).

Real clusters; the unit tests of `DirectReplies` use real sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import zmq

import cohort
from cohort.engine.replies import DIRECT_MAX, DirectReplies
from conftest import wait_until


def test_a_direct_result_reaches_its_client_while_the_controller_is_stopped(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    assert rc[0].apply_sync(lambda: "warm") == "warm"
    ar = rc[0].apply(lambda: (print("hello from the engine"), __import__("time").sleep(1.0),
                              "done")[-1])
    wait_until(lambda: "hello" in (ar.stdout or ""), timeout=15, msg="the task to start")
    os.kill(cl.controller.pid, signal.SIGSTOP)
    try:  # neither its output nor its result passes through the controller
        assert ar.get(timeout=10) == "done"
        assert ar.stdout == "hello from the engine\n"
    finally:
        os.kill(cl.controller.pid, signal.SIGCONT)
    assert rc[0].apply_sync(lambda: 2) == 2


def test_a_directly_answered_task_is_recorded_and_others_can_fetch_it(rc, cluster):
    ar = rc[0].apply(lambda: (print("recorded output"), 41 + 1)[-1])
    assert ar.get(timeout=10) == 42
    with cohort.Client(cluster.connection_file, stream_output=False) as other:
        assert other.get_result(ar.msg_ids[0], block=True, timeout=10) == 42
        (row,) = other.tasks(ids=ar.msg_ids)
    assert row["state"] == "done" and row["stdout"] == "recorded output\n"


def test_another_client_waiting_on_the_task_gets_it_too(rc, cluster):
    ar = rc[1].apply(lambda: (__import__("time").sleep(0.5), "shared")[-1])
    with cohort.Client(cluster.connection_file, stream_output=False) as other:
        watching = other.get_result(ar.msg_ids[0])  # asked while it runs
        assert ar.get(timeout=10) == "shared"
        assert watching.get(timeout=10) == "shared"


def test_results_too_big_to_go_directly_take_the_usual_way(rc):
    payload = b"x" * (DIRECT_MAX + 10)
    assert rc[0].apply_sync(lambda n: b"x" * n, len(payload)) == payload


# --- DirectReplies, with real sockets ------------------------------------------------
def test_only_direct_tasks_of_a_client_on_this_host_go_directly():
    replies = DirectReplies(zmq.Context.instance(), "here")
    url = "tcp://127.0.0.1:5999"
    try:
        assert replies.route({"rto": url, "rh": "here"}) is None  # first: connect meanwhile
        assert replies.route({"rto": url, "rh": "here"}) == url
        assert replies.route({"rto": url, "rh": "elsewhere"}) is None      # another host
        assert replies.route({"rto": url, "rh": "here", "lb": 1}) is None  # may be retried
        assert replies.route({"rto": "tcp://10.0.0.1:5999", "rh": "here"}) is None  # loopback only
        assert replies.route({"rh": "here"}) is None
    finally:
        replies.close()


def test_send_delivers_small_messages_once_connected_and_refuses_big_ones():
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    replies = DirectReplies(ctx, socket.gethostname())
    to = f"tcp://127.0.0.1:{port}"
    header = {"rto": to, "rh": socket.gethostname()}
    try:
        assert not replies.send(to, [b"m"])  # never routed: no socket
        replies.route(header)
        wait_until(lambda: replies.send(to, [b"<COHORT>", b"small"]), timeout=5,
                   msg="the connection to the client")
        assert pull.poll(5000) and pull.recv_multipart() == [b"<COHORT>", b"small"]
        assert not replies.send(to, [b"<COHORT>", b"y" * (DIRECT_MAX + 1)])
        assert not pull.poll(200)
    finally:
        replies.close()
        pull.close(0)


def test_nobody_listening_means_the_usual_way_at_once():
    """Say a client on another host (same name, other network) or one that left."""
    replies = DirectReplies(zmq.Context.instance(), socket.gethostname())
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    to = f"tcp://127.0.0.1:{port}"
    try:
        replies.route({"rto": to, "rh": socket.gethostname()})
        time.sleep(0.3)
        assert not any(replies.send(to, [b"m"]) for _ in range(10))  # never queued, never waits
    finally:
        replies.close()
