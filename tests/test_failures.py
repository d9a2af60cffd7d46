"""Failure handling with real processes and sockets: dead, frozen and busy engines,
hostile bytes on the controller's ports, and shutdown.

Destructive tests start their own small clusters (`make_cluster`); the others
share one module cluster (`robust`). Detection-time bounds are deliberately
generous (10 s) for noisy 2-core machines; the real targets are in comments.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import cohort
from cohort.profile import ConnectionInfo
from cohort.wire import BATCH, DELIM, Session, batch
from conftest import engine_popen, live_segments, wait_until


def run_marker(ar, marker: str = "STARTED", timeout: float = 10.0):
    def seen():
        out = ar.stdout
        return marker in (out if isinstance(out, str) else "".join(out))
    wait_until(seen, timeout, msg=f"the task to print {marker!r}")


@pytest.fixture(scope="module")
def robust(cohort_home):
    """A two-engine cluster for tests that attack but should not break it."""
    cl = cohort.Cluster(n=2)
    cl.start()
    try:
        yield cl
    finally:
        cl.stop()


# --- engines dying ------------------------------------------------------------------------
def test_sigkill_engine_mid_task(make_cluster):
    cl = make_cluster(n=2, restart_engines=False)  # replacement engines: see test_farm.py
    rc = cl.client
    victim, survivor = 0, 1
    proc = engine_popen(cl, victim)
    running = rc[victim].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(60)")
    queued = [rc[victim].apply(lambda i: i, i) for i in range(12)]  # in flight and queued
    elsewhere = rc[survivor].execute("import time; time.sleep(0.5); 'survivor'")
    run_marker(running)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    with pytest.raises(cohort.EngineError) as info:
        running.get(timeout=10)  # target: ~instant (TCP close) and at worst the 2.5 s heartbeat
    detect = time.monotonic() - t0
    assert detect < 10
    assert info.value.engine_id == victim
    assert f"engine {victim}" in str(info.value)
    for a in queued:
        with pytest.raises(cohort.EngineError) as qinfo:
            a.get(timeout=10)
        assert qinfo.value.engine_id == victim
    wait_until(lambda: rc.ids == [survivor], timeout=10, msg="the dead engine to leave rc.ids")
    assert [e["id"] for e in rc.status()["engines"]] == [survivor]
    assert elsewhere.get(timeout=10) is None
    assert rc[survivor].apply_sync(lambda: "still here") == "still here"
    with pytest.raises(cohort.EngineError):
        rc[victim].apply(lambda: 1).get(timeout=10)
    with pytest.raises(cohort.EngineError):  # a multi-engine call on a dead target
        rc[[victim, survivor]].apply(lambda: 1).get(timeout=10)
    assert rc[:].apply_sync(lambda: 2) == [2]  # `rc[:]` follows the engines alive now
    proc.wait(5)


def test_engine_death_leaves_no_shared_memory(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    before = live_segments(rc.info.cluster_id)
    sleeper = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(60)")
    run_marker(sleeper)
    push = rc[0].push({"big": np.ones(4 * 2 ** 20 // 8)})
    engine_popen(cl, 0).send_signal(signal.SIGKILL)
    with pytest.raises(cohort.EngineError):
        push.get(timeout=10)
    assert live_segments(rc.info.cluster_id) - before == set()


def test_sigkill_idle_engine_leaves_ids(make_cluster):
    cl = make_cluster(n=2)
    rc = cl.client
    engine_popen(cl, 1).send_signal(signal.SIGKILL)
    wait_until(lambda: rc.ids == [0], timeout=10, msg="engine 1 to leave")  # target < 1 s
    assert rc[0].apply_sync(lambda: 0) == 0


def test_frozen_engine_is_declared_dead_by_heartbeat(make_cluster):
    """SIGSTOP: the process lives on but answers nothing, heartbeats included."""
    cl = make_cluster(n=2)
    rc = cl.client
    proc = engine_popen(cl, 0)
    ar = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(30)")
    run_marker(ar)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(cohort.EngineError) as info:
            ar.get(timeout=15)  # target: hb_timeout 2.5 s (+ one 0.5 s period)
        assert time.monotonic() - t0 < 15
        assert info.value.engine_id == 0
        assert "heartbeat" in str(info.value)
        assert rc.ids == [1] or wait_until(lambda: rc.ids == [1], msg="engine 0 to leave")
        assert rc[1].apply_sync(lambda: 1) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(5)


def test_engine_declared_dead_then_resumed_rejoins_or_exits(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    proc = engine_popen(cl, 0)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: rc.ids == [], timeout=15, msg="the frozen engine to be dropped")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None or rc.ids:
            break
        time.sleep(0.1)
    assert proc.poll() is not None or rc.ids, \
        "the resumed engine neither re-registered nor exited within 10 s"


# --- interrupts ------------------------------------------------------------------------------
def test_interrupting_a_task_that_prints_a_lot_always_returns(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    rc.stream_output = False
    code = "while True:\n    print('x' * 200000)"
    # the race is hit in roughly 1 of 5 tries; 50 tries make a miss very unlikely
    for trial in range(50):
        ar = rc[0].execute(code)
        time.sleep(0.15)
        rc.interrupt(0)
        try:
            ar.get(timeout=5)
        except cohort.RemoteError as e:
            assert e.ename == "KeyboardInterrupt"
        except cohort.TimeoutError:
            pytest.fail(f"try {trial}: the interrupted task never returned; "
                        f"queue status {rc.queue_status()}")


# --- a dead controller ----------------------------------------------------------------------------
def test_controller_death_fails_waits_and_engines_exit(make_cluster):
    cl = make_cluster(n=2, engine_args=["--controller-timeout", "3"])
    watcher = cohort.Client(cl.connection_file, stream_output=False, controller_timeout=2)
    try:
        running = watcher[0].execute("import time; time.sleep(60)")
        time.sleep(0.3)
        cl.controller.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(cohort.errors.ControllerError):
            running.get(timeout=15)  # target: the client's controller_timeout, 2 s
        assert time.monotonic() - t0 < 15
        with pytest.raises(cohort.CohortError):
            watcher.status()
        for p in cl.engines:  # they stop on their own (--controller-timeout 3)
            assert p.wait(timeout=20) is not None
    finally:
        watcher.close()
        cl.controller.wait(5)
        cl.client.close()  # spare stop() its wait on the dead controller
        cl.client = None


# --- no controller ------------------------------------------------------------------------------
def test_client_without_a_controller(tmp_path):
    with pytest.raises(cohort.errors.ConnectionFileError):
        cohort.Client(tmp_path / "missing.json")
    info = ConnectionInfo.new()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    info.ports = {"client": port, "engine": port, "hb_ping": port, "hb_pong": port}
    cf = info.write(tmp_path / "controller.json")
    t0 = time.monotonic()
    with pytest.raises(cohort.errors.ControllerError) as e:
        cohort.Client(cf, timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert str(cf) in str(e.value)


# --- a busy engine is not dead ---------------------------------------------------------------
def test_engine_holding_the_gil_is_not_declared_dead(robust):
    """Catastrophic regex backtracking runs in C and holds the GIL for seconds.

    Heartbeats are echoed by a zmq device thread without the GIL, so the
    engine must stay registered (hb timeout 2.5 s) and its result arrive.
    """
    rc = robust.client

    def hog(target_s=4.0):
        import re
        import time
        pat = re.compile(r"(a+)+$")
        t = time.perf_counter()
        pat.match("a" * 20 + "b")
        t20 = max(time.perf_counter() - t, 1e-4)
        n = 20
        while t20 * 2 ** (n - 20) < target_s and n < 40:
            n += 1
        longest = 0.0
        while longest < 3.5 and n < 40:  # noisy machine: make sure one call is long enough
            t = time.perf_counter()
            pat.match("a" * n + "b")  # one C call, GIL held throughout
            longest = max(longest, time.perf_counter() - t)
            n += 1
        return n - 1, longest

    ids_before = rc.ids
    ar = rc[0].apply(hog)
    n, busy = ar.get(timeout=100)
    assert busy > 3.0, f"calibration failed: the GIL was held only {busy:.1f} s (n={n})"
    assert rc.ids == ids_before
    assert rc[:].apply_sync(lambda: "ok") == ["ok", "ok"]


# --- hostile bytes on the controller's ports ----------------------------------------------------
def _signed(key: str, ident: str) -> Session:
    return Session(key, session_id=ident)


def _garbage(key: str, marker: Path) -> list:
    """Bad messages; any forged task among them that ran would create `marker`."""
    code = f"open({str(marker)!r}, 'w').close()"
    wrong = Session(b"not the cluster key")
    good = Session(key, session_id="forger")
    # an array: a buffer frame of its own after the envelope, to truncate or leave out
    valid = good.build("execute", {"code": code}, objects=[np.zeros(1 << 15)],
                       header={"target": 0})
    valid = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in valid]
    d = valid.index(DELIM)
    flipped = list(valid)
    flipped[d + 1] = bytes([flipped[d + 1][0] ^ 1]) + flipped[d + 1][1:]
    return [
        [b"garbage"],
        [b""],
        [b"\x00" * 1000] * 30,
        [b"x" * (1 << 20)],
        [DELIM],
        [DELIM, b""],
        [DELIM, b"\x00" * 32, b"\x80", b"\x80"],
        [DELIM, b"\x00" * 32, b"\xdd\xff\xff\xff\xff", b"\x80"],  # msgpack array of 4G items
        [DELIM, b"\x00" * 32 + b"\xff\xff\xff\xff" + b"\x80"],
        wrong.build("status", {}),                               # wrong signature
        wrong.build("execute", {"code": code}, header={"target": 0}),
        flipped,                                                 # tampered signature
        valid[:-1],                                              # truncated
        valid[:d + 1],
        [f for f in valid if f != DELIM],                        # no delimiter
        [b"a"] * 12 + valid,                                     # delimiter too deep
        [BATCH],                                                 # batches: no index
        [BATCH, b"\xff\xff\xff\xff"],                              # an envelope past the end
        [BATCH, b"\x00\x00\x00\x03abc"],                           # an envelope too short
        [BATCH, *batch([valid[d:], valid[d:]])[1:2]],            # buffers missing
        [BATCH, *batch([flipped[d:], flipped[d:]])[1:]],         # tampered, in a batch
        [*batch([valid[d:], valid[d:]]), b"extra"],              # a buffer nobody names
    ]


def _dealer(ctx, url: str, identity: bytes) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.identity = identity
    s.linger = 1000
    s.connect(url)
    return s


def _expect(sock, session: Session, msg_type: str, timeout_ms: int = 10000):
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if sock.poll(100):
            for msg in session.receive_all(sock.recv_multipart()):  # replies may come batched
                if msg.type == msg_type:
                    return msg
    pytest.fail(f"no {msg_type!r} from the controller")


def test_controller_survives_garbage_on_client_and_engine_ports(robust):
    rc = robust.client
    info = ConnectionInfo.read(robust.connection_file)
    marker = Path(robust.connection_file).parent / "forged-task-ran"
    ctx = zmq.Context()
    try:
        # client port: garbage, then a valid request on the same connection; ZeroMQ keeps
        # order per connection, so its reply proves every bad message before it was handled
        sess = _signed(info.key, "raw-client")
        cs = _dealer(ctx, info.url("client"), b"raw-client")
        for frames in _garbage(info.key, marker):
            cs.send_multipart(frames)
        cs.send_multipart(sess.build("status", {}))
        reply = _expect(cs, sess, "reply")
        assert len(reply.content["engines"]) == 2

        # engine port: the same, closed by a valid hello that must get a welcome
        es_sess = _signed(info.key, "raw-engine")
        es = _dealer(ctx, info.url("engine"), b"raw-engine.c")
        for frames in _garbage(info.key, marker):
            es.send_multipart(frames)
        es.send_multipart(es_sess.build("hello", {}))
        _expect(es, es_sess, "welcome")

        # heartbeat port: junk pongs are ignored
        hb = _dealer(ctx, info.url("hb_pong"), b"raw-hb")
        for frames in [[b"x"], [b""], [b"a", b"b", b"c"], [b"\xff" * 5000]]:
            hb.send_multipart(frames)

        for s in (cs, es, hb):
            s.close(linger=1000)
    finally:
        ctx.destroy(linger=1000)

    # plain TCP junk (not even ZMTP) on every port
    for port in info.ports.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))

    # still alive and working, and no forged task ran
    assert rc.status()["pid"] == robust.controller.pid
    assert rc.ids == [0, 1]
    assert rc[:].apply_sync(lambda: "ok") == ["ok", "ok"]
    assert rc[:].execute("2 + 2", block=True) == [None, None]
    assert robust.controller.poll() is None
    assert all(p.poll() is None for p in robust.engines)
    assert not marker.exists()


def test_controller_survives_signed_but_malformed_requests(robust):
    """A client with the key but a bug: the controller logs and carries on."""
    rc = robust.client
    info = ConnectionInfo.read(robust.connection_file)
    sess = _signed(info.key, "buggy-client")
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, info.url("client"), b"buggy-client")
        bad = [
            sess.frames_for({"id": "no-type"}, {}),                          # no "t", no "s"
            sess.frames_for({"id": "no-sender", "t": "status"}, {}),
            sess.build("execute", {"code": "1"}, header={"target": "zero"}),  # bad target
            sess.build("execute", {"code": "1"}, header={"target": 99}),     # unknown engine
            sess.build("execute", {}, header={"target": None}),
            sess.build("queue_status", {"targets": 5}),
            sess.build("abort", {"ids": 5, "targets": "x"}),
            sess.build("interrupt", {"targets": [99, "x"]}),
            sess.build("no_such_request", {}),
        ]
        for frames in bad:
            s.send_multipart(frames)
        s.send_multipart(sess.build("status", {}))
        deadline = time.monotonic() + 10
        got_status = False
        while time.monotonic() < deadline and not got_status:
            if s.poll(100):
                for msg in sess.receive_all(s.recv_multipart()):  # replies may come batched
                    got_status |= msg.type == "reply" and "uptime" in msg.content
        assert got_status, "the controller stopped answering after malformed requests"
        s.close(linger=0)
    finally:
        ctx.destroy(linger=0)
    assert rc.ids == [0, 1]
    assert rc[:].apply_sync(lambda: 1) == [1, 1]


def test_registered_engine_that_never_beats_is_dropped(robust):
    """A process registers as an engine but never answers heartbeats (say its
    heart thread died): it is dropped, and tasks sent to it fail."""
    rc = robust.client
    info = ConnectionInfo.read(robust.connection_file)
    ctx = zmq.Context()
    try:
        sess = Session(info.key)
        fake = _dealer(ctx, info.url("engine"), b"fake-engine-uuid")
        fake.send_multipart(sess.build("register", {"host": "elsewhere", "pid": 1}))
        reg = _expect(fake, sess, "registered")
        eid = reg.content["id"]
        wait_until(lambda: eid in rc.ids, msg="the fake engine to join")
        ar = rc[eid].apply(lambda: 1)
        t0 = time.monotonic()
        with pytest.raises(cohort.EngineError) as e:
            ar.get(timeout=15)  # target: hb_timeout 2.5 s after registration
        assert time.monotonic() - t0 < 15
        assert e.value.engine_id == eid
        wait_until(lambda: eid not in rc.ids, msg="the fake engine to be dropped")
        fake.close(linger=0)
    finally:
        ctx.destroy(linger=0)
    assert rc.ids == [0, 1]


# --- shutdown -----------------------------------------------------------------------------------
def test_shutdown_some_engines_then_the_controller(make_cluster):
    cl = make_cluster(n=2)
    rc = cl.client
    p1 = engine_popen(cl, 1)
    reply = rc.shutdown(targets=[1])
    assert reply["shutdown"] == [1] and reply["controller"] is False
    assert p1.wait(timeout=10) == 0
    wait_until(lambda: rc.ids == [0], msg="engine 1 to leave")
    assert cl.controller.poll() is None
    assert rc[0].apply_sync(lambda: "alive") == "alive"

    running = rc[0].execute("print('STARTED', flush=True)\nimport time\ntime.sleep(60)")
    run_marker(running)
    probe = f"/dev/shm/cohort-{rc.info.cluster_id}-probe"
    had_probe = os.path.exists(probe)
    assert rc.shutdown(controller=True)["controller"] is True
    with pytest.raises(cohort.CohortError):  # EngineError: the controller stopped
        running.get(timeout=15)
    assert cl.controller.wait(timeout=10) == 0
    for p in cl.engines:
        assert p.wait(timeout=10) == 0
    assert not Path(cl.connection_file).exists()
    if had_probe:  # the shared-memory probe is swept too
        assert not os.path.exists(probe)
    # everything is down: spare the fixture's stop() its wait on the dead controller
    # (see test_cluster_stop_is_quick_after_the_controller_exited)
    rc.close()
    cl.client = None


def test_cluster_stop_is_quick_after_the_controller_exited(make_cluster):
    cl = make_cluster(n=1)
    cl.client.shutdown(controller=True)
    cl.controller.wait(timeout=10)
    t0 = time.monotonic()
    cl.stop()
    assert time.monotonic() - t0 < 5  # nothing to wait for: really well under 1 s


def test_context_manager_stops_everything(cohort_home):
    with cohort.Cluster(n=2) as rc:
        pids = [rc.engines[i]["pid"] for i in rc.ids]
        assert rc[:].apply_sync(lambda: os.getpid()) == pids
        cf = rc.connection_file
        folder = Path(cf).parent
        assert folder.is_dir()
        ctl_pid = rc.status()["pid"]
    for pid in [ctl_pid, *pids]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not folder.exists()


def test_a_client_keeps_what_comes_batched_with_its_connect_reply(tmp_path):
    """The controller may batch its reply to `connect` with a broadcast (an engine
    that joined in the same turn): the client must not drop the broadcast."""
    info = ConnectionInfo.new()
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        info.ports = {"client": router.bind_to_random_port("tcp://127.0.0.1")}
        pub = ctx.socket(zmq.PUB)
        info.ports["hb_ping"] = pub.bind_to_random_port("tcp://127.0.0.1")
        path = tmp_path / "fake-controller.json"
        info.write(path)
        ctrl = Session(info.key, session_id="controller")
        engine = {"id": 0, "uuid": "u0", "host": "h", "pid": 1, "state": "idle", "queue": 0}

        def answer():
            assert router.poll(10_000)
            ident, *frames = router.recv_multipart()
            hello = ctrl.unpack(frames, route=False)
            assert hello.type == "connect"
            reply = ctrl.build("reply", {"engines": [], "cluster_id": info.cluster_id},
                               header={"parent": hello.id})
            router.send_multipart([ident, *batch([reply, ctrl.build("engine_joined", engine)])])

        t = threading.Thread(target=answer)
        t.start()
        rc = cohort.Client(path, timeout=10)
        t.join(10)
        try:
            assert rc.ids == [0]
        finally:
            rc._closed = True  # no controller to say goodbye to
            rc._thread.join(2)
    finally:
        ctx.destroy(linger=0)
