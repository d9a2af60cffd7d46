"""The `cohort` command, run as real subprocesses with $COHORT_HOME pointing at temp folders.

The lifecycle tests share one background cluster (`started`) and run in file
order: start, inspect, connect, refuse a second start, stop, refuse a second stop.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cohort
from cohort.profile import ConnectionInfo

_SCRIPT = Path(sys.executable).with_name("cohort")


def cohort_cmd(home: Path, *args, timeout: float = 90, script: bool = False):
    env = dict(os.environ, COHORT_HOME=str(home))
    env.pop("COHORT_PROFILE", None)
    env.pop("COHORT_CONNECTION_FILE", None)
    cmd = [str(_SCRIPT)] if script else [sys.executable, "-m", "cohort"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# --- no cluster needed -------------------------------------------------------------------
def test_help(tmp_path):
    r = cohort_cmd(tmp_path, "--help", script=_SCRIPT.exists())
    assert r.returncode == 0, r.stderr
    for word in ("start", "stop", "status", "engine", "controller"):
        assert word in r.stdout
    for sub in ("start", "stop", "status", "engine"):
        r = cohort_cmd(tmp_path, sub, "--help")
        assert r.returncode == 0 and "--profile" in r.stdout


def test_no_command_prints_help_and_fails(tmp_path):
    r = cohort_cmd(tmp_path)
    assert r.returncode == 2
    assert "usage" in (r.stdout + r.stderr).lower()


def assert_no_cluster(home):
    """`cohort status` and `cohort stop` both fail, saying no cluster runs."""
    for command in ("status", "stop"):
        r = cohort_cmd(home, command)
        assert r.returncode != 0
        assert "no cluster" in r.stderr


def test_status_and_stop_without_a_cluster_fail(tmp_path):
    assert_no_cluster(tmp_path)
    assert not (tmp_path / "profile_default" / "controller.json").exists()


def test_stale_connection_file(tmp_path):
    """A connection file left by a dead controller: status and stop say so and clean up."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    info = ConnectionInfo.new()
    info.ports = {"client": 1, "engine": 2, "hb_ping": 3, "hb_pong": 4}
    info.controller_pid = proc.pid  # reaped: nothing runs under this pid now
    cf = tmp_path / "profile_default" / "controller.json"
    info.write(cf)
    r = cohort_cmd(tmp_path, "status", "--timeout", "1")
    assert r.returncode != 0
    assert "not running" in r.stderr
    r = cohort_cmd(tmp_path, "stop")
    assert r.returncode != 0 and "no cluster" in r.stderr
    assert not cf.exists()


def test_engine_with_a_missing_connection_file_fails(tmp_path):
    r = cohort_cmd(tmp_path, "engine", "--file", str(tmp_path / "nope.json"), timeout=30)
    assert r.returncode != 0
    assert "nope.json" in r.stderr


# --- the lifecycle of a background cluster -------------------------------------------------
@pytest.fixture(scope="module")
def cli_home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_home")


@pytest.fixture(scope="module")
def started(cli_home):
    r = cohort_cmd(cli_home, "start", "-n", "2")
    assert r.returncode == 0, f"cohort start failed:\n{r.stdout}\n{r.stderr}"
    cf = cli_home / "profile_default" / "controller.json"
    info = ConnectionInfo.read(cf)
    status = json.loads(cohort_cmd(cli_home, "status", "--json").stdout)
    pids = [info.controller_pid] + [e["pid"] for e in status["engines"]]
    yield {"start": r, "connection_file": cf, "pids": pids, "info": info}
    cohort_cmd(cli_home, "stop")
    for pid in pids:  # never leave processes behind, whatever happened
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_start_reports_the_cluster(started):
    out = started["start"].stdout
    assert "cluster started" in out and "2 engines" in out
    assert str(started["connection_file"]) in out
    assert all(pid_alive(p) for p in started["pids"])
    assert len(set(started["pids"])) == 3


def test_connection_file_is_private(started):
    mode = stat.S_IMODE(os.stat(started["connection_file"]).st_mode)
    assert mode == 0o600, oct(mode)
    assert len(started["info"].key) >= 32


def test_status_shows_two_engines(cli_home, started):
    r = cohort_cmd(cli_home, "status")
    assert r.returncode == 0, r.stderr
    assert "engines: 2" in r.stdout
    assert f"pid {started['info'].controller_pid}" in r.stdout
    for pid in started["pids"][1:]:
        assert str(pid) in r.stdout
    st = json.loads(cohort_cmd(cli_home, "status", "--json").stdout)
    assert sorted(e["id"] for e in st["engines"]) == [0, 1]
    assert st["pid"] == started["info"].controller_pid


def test_client_on_the_default_profile(cli_home, started, monkeypatch):
    monkeypatch.setenv("COHORT_HOME", str(cli_home))
    with cohort.Client(stream_output=False) as rc:
        assert rc.wait_for_engines(2, timeout=10) == [0, 1]
        assert rc[:].apply_sync(lambda: os.getpid()) == started["pids"][1:]  # ids in order
        rc[:].push({"kept": 1}, block=True)
    with cohort.connect() as rc:  # a new client: the engines kept their namespaces
        assert rc[:].pull("kept", block=True) == [1, 1]


def test_start_again_fails(cli_home, started):
    r = cohort_cmd(cli_home, "start", "-n", "1")
    assert r.returncode != 0
    assert "already running" in r.stderr
    assert all(pid_alive(p) for p in started["pids"])
    assert ConnectionInfo.read(started["connection_file"]).key == started["info"].key


def test_stop_then_stop_again_and_status(cli_home, started):
    r = cohort_cmd(cli_home, "stop")
    assert r.returncode == 0, r.stderr
    assert "cluster stopped" in r.stdout
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in started["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in started["pids"]), "processes outlived `cohort stop`"
    assert not started["connection_file"].exists()
    assert not (cli_home / "profile_default" / "cluster.json").exists()
    if os.path.isdir("/dev/shm"):
        cid = started["info"].cluster_id
        assert [p for p in os.listdir("/dev/shm") if p.startswith(f"cohort-{cid}-")] == []

    assert_no_cluster(cli_home)
