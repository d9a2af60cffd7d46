"""Start a controller and engines as local processes.

``with cohort.Cluster(n=4) as rc:`` starts a private cluster (its own
connection file and logs under the profile's ``clusters/`` folder) and stops
it on exit. ``cohort start`` uses the same class with `detached=True` and the
profile's connection file, so the processes outlive the command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ClusterStartError
from ..procinfo import proc_starttime
from ..profile import ConnectionInfo, profile_dir

log = logging.getLogger(__name__)


def free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free now (bound and released together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((ip, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _python_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "cohort", *args]


class Cluster:
    """A controller and `n` engines on this machine.

    Use as a context manager for a cluster that lives as long as a script or
    test: ``with Cluster(n=4) as rc: ...`` gives a connected `Client`.
    With `restart_engines` (the default), the controller starts a new engine
    in place of one that dies, so the cluster keeps its size. Traffic is
    encrypted with CurveZMQ when `ip` is reachable from other hosts (or when
    `encrypt=True`); on loopback it is signed only.
    """

    def __init__(self, n: int | None = None, profile: str | None = None,
                 connection_file=None, detached: bool = False, ip: str = "127.0.0.1",
                 log_level: str = "INFO", engine_args=(), controller_args=(),
                 start_timeout: float = 60.0, restart_engines: bool = True,
                 encrypt: bool | None = None):
        self.n = n if n is not None else (os.cpu_count() or 1)
        self.profile = profile
        self.detached = detached
        self.ip = ip
        self.log_level = log_level
        self.engine_args = list(engine_args)
        self.controller_args = list(controller_args)
        self.start_timeout = start_timeout
        self.restart_engines = restart_engines
        self.private = connection_file is None
        self.info = ConnectionInfo.new(ip=ip, encrypt=encrypt)
        if connection_file is None:
            self.folder = profile_dir(profile) / "clusters" / self.info.cluster_id
            connection_file = self.folder / "controller.json"
        else:
            self.folder = Path(connection_file).parent
        self.connection_file = Path(connection_file)
        self.log_dir = self.folder / "logs"
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self.client = None

    # --- processes ---------------------------------------------------------
    def _spawn(self, args: list, log_name: str, env=None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_dir / log_name, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        try:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    env=env, start_new_session=True, cwd=os.getcwd())
        finally:
            logf.close()

    def start_controller(self) -> None:
        self.info.ports = dict(zip(("client", "engine", "hb_ping", "hb_pong"),
                                   free_ports(4, self.ip)))
        self.info.write(self.connection_file)
        self.controller = self._spawn(
            _python_cmd("controller", "--connection-file", str(self.connection_file),
                        "--log-level", self.log_level, *self.controller_args),
            "controller.log")

    def restart_controller(self) -> None:
        """Start the controller again on the same connection file (same ports and
        key), e.g. after it died: engines and clients reconnect by themselves,
        unfinished tasks are picked up from the task database."""
        if self.controller is not None and self.controller.poll() is None:
            raise ClusterStartError(f"the controller (pid {self.controller.pid}) is still running")
        self.controller = self._spawn(
            _python_cmd("controller", "--connection-file", str(self.connection_file),
                        "--log-level", self.log_level, *self.controller_args),
            "controller.log")
        self._wait_controller(time.monotonic() + self.start_timeout)
        if self.detached:
            self.write_record()

    def add_engines(self, n: int) -> list[subprocess.Popen]:
        """Start `n` more engines (they join by themselves)."""
        new = []
        for _ in range(n):
            i = len(self.engines)
            p = self._spawn(_python_cmd("engine", "--file", str(self.connection_file),
                                        "--log-level", self.log_level, *self.engine_args),
                            f"engine-{i}.log",
                            {"COHORT_RESTART_ENGINE": "1" if self.restart_engines else "0"})
            self.engines.append(p)
            new.append(p)
        return new

    def _wait_controller(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if ConnectionInfo.read(self.connection_file).controller_pid == self.controller.pid:
                    return
            except Exception:
                pass
            if self.controller.poll() is not None:
                raise ClusterStartError(
                    f"the controller exited with status {self.controller.returncode}; "
                    f"see {self.log_dir / 'controller.log'}")
            time.sleep(0.005)
        raise ClusterStartError(f"the controller did not start within {self.start_timeout:g} s; "
                                f"see {self.log_dir / 'controller.log'}")

    def start(self):
        """Start everything and return a connected Client (waits for all engines)."""
        from ..client import Client
        deadline = time.monotonic() + self.start_timeout
        try:
            self.start_controller()
            self.add_engines(self.n)  # they connect as soon as the controller binds
            self._wait_controller(deadline)
            self.client = Client(self.connection_file, timeout=max(1.0, deadline - time.monotonic()))
            self.wait_for_engines(self.n, deadline)
        except BaseException:
            self.stop()
            raise
        if self.detached:
            self.write_record()
        return self.client

    def wait_for_engines(self, n: int, deadline: float) -> None:
        from ..errors import TimeoutError
        while True:
            try:
                self.client.wait_for_engines(n, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                return
            except TimeoutError:
                dead = [p for p in self.engines if p.poll() is not None]
                if dead or time.monotonic() >= deadline:
                    why = (f"{len(dead)} engine(s) exited" if dead else
                           f"only {len(self.client.ids)} of {n} engines registered "
                           f"within {self.start_timeout:g} s")
                    raise ClusterStartError(f"{why}; see the logs in {self.log_dir}") from None

    def write_record(self) -> None:
        """Remember the processes, so `cohort stop` finds them from another shell."""
        rec = {"controller": _pid_record(self.controller.pid),
               "engines": [_pid_record(p.pid) for p in self.engines],
               "connection_file": str(self.connection_file), "log_dir": str(self.log_dir),
               "started": time.time(), "n": self.n}
        path = self.folder / "cluster.json"
        path.write_text(json.dumps(rec, indent=1))

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the engines and controller down; kill what does not stop in time."""
        if self.client is not None:
            if self.controller is not None and self.controller.poll() is None:
                try:
                    self.client.shutdown(controller=True, timeout=2.0)
                except Exception:
                    pass
            self.client.close()
            self.client = None
        procs = [p for p in [self.controller, *self.engines] if p is not None]
        stop_processes([p.pid for p in procs], timeout, popens=procs)
        if self.private:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            (self.folder / "cluster.json").unlink(missing_ok=True)
        from ..wire import shm
        shm.sweep(self.info.cluster_id)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pid_record(pid: int) -> dict:
    return {"pid": pid, "starttime": proc_starttime(pid)}


def alive(rec: dict) -> bool:
    """Whether the process a `_pid_record` describes still runs."""
    st = rec.get("starttime")
    return st is not None and proc_starttime(rec["pid"]) == st


def stop_processes(pids: list, timeout: float, popens=()) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left; reap our own children."""
    by_pid = {p.pid: p for p in popens}
    deadline = time.monotonic() + timeout
    for pid in pids:
        if not _running(pid, by_pid):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        while _running(pid, by_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _running(pid, by_pid):
            log.warning("process %d did not stop in %g s; killing it", pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pid in by_pid:
            try:
                by_pid[pid].wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass


def _running(pid: int, by_pid: dict) -> bool:
    p = by_pid.get(pid)
    if p is not None:
        return p.poll() is None
    return proc_starttime(pid) is not None
