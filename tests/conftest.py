"""Shared fixtures for the cohort test suite.

* Every test runs with ``$COHORT_HOME`` pointing at a fresh temporary folder
  (set for the whole session, restored afterwards), so nothing touches
  ``~/.cohort`` and subprocesses (controllers, engines, the CLI) inherit it.
* ``cluster`` is ONE real local cluster (a controller and two engine
  processes) shared by every test that does not break it; tests that kill or
  shut things down start their own with ``make_cluster``.
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest

import cohort

_ENV_VARS = ("COHORT_HOME", "COHORT_PROFILE", "COHORT_CONNECTION_FILE")


@pytest.fixture(scope="session", autouse=True)
def cohort_home(tmp_path_factory):
    """A private $COHORT_HOME for the whole session (restored afterwards)."""
    home = tmp_path_factory.mktemp("cohort_home")
    saved = {k: os.environ.get(k) for k in _ENV_VARS}
    os.environ["COHORT_HOME"] = str(home)
    os.environ.pop("COHORT_PROFILE", None)
    os.environ.pop("COHORT_CONNECTION_FILE", None)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(pred, timeout: float = 10.0, interval: float = 0.02, msg: str = "condition"):
    """Poll `pred` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {msg}")
        time.sleep(interval)


def live_segments(cluster_id: str) -> set:
    """A cluster's shared-memory segments that a process maps or a message carries
    (not its probe file, nor segments pooled for the next writer)."""
    import glob
    return {p for p in glob.glob(f"/dev/shm/cohort-{cluster_id}-*")
            if not p.endswith("-probe") and "-pool-" not in p}


@pytest.fixture(scope="session")
def cluster(cohort_home):
    """The shared two-engine cluster (a `cohort.Cluster`; its client is `cluster.client`)."""
    cl = cohort.Cluster(n=2)
    rc = cl.start()
    rc.wait_for_engines(2, timeout=30)
    try:
        yield cl
    finally:
        cl.stop()


@pytest.fixture
def rc(cluster):
    """The shared cluster's client, checked healthy before and after each test.

    After a test, anything of ours still queued is aborted and anything still
    running is interrupted, so one failing test cannot wedge the engines for
    the next ones.
    """
    client = cluster.client
    assert client.ids == [0, 1], f"the shared cluster lost engines: {client.ids}"
    yield client
    try:
        client.abort()
    except Exception:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        qs = client.queue_status()
        if all(v["queue"] == 0 and v["inflight"] == 0 for v in qs.values()):
            break
        client.interrupt()
        time.sleep(0.2)


@pytest.fixture
def make_cluster(cohort_home):
    """Start private clusters for destructive tests; all are stopped at teardown."""
    started: list = []

    def start(n: int = 1, **kwargs) -> cohort.Cluster:
        cl = cohort.Cluster(n=n, **kwargs)
        cl.start()
        started.append(cl)
        return cl

    yield start
    for cl in started:
        with contextlib.suppress(Exception):
            cl.stop()


def engine_popen(cl: cohort.Cluster, eid: int):
    """The Popen of engine `eid` of cluster `cl` (engines register in any order)."""
    pid = cl.client.engines[eid]["pid"]
    for p in cl.engines:
        if p.pid == pid:
            return p
    raise LookupError(f"engine {eid} (pid {pid}) is not one of {[p.pid for p in cl.engines]}")


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the whole session."""
    if os.environ.get("COHORT_SKIP_POSTGRES") == "1":
        pytest.skip("COHORT_SKIP_POSTGRES=1")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: run .ci/run (or pip install -e '.[test]')")
    from pg import MISSING, PostgresServer, find_bindir
    if find_bindir() is None:
        pytest.fail(MISSING)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
