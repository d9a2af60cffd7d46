"""Start a controller on this machine and engines wherever a launcher puts them.

``with cohort.Cluster(n=4) as rc:`` starts a private cluster (its own
connection file and logs under the profile's ``clusters/`` folder) and stops
it on exit. ``cohort start`` uses the same class with `detached=True` and the
profile's connection file, so the processes outlive the command. Engines
start as local processes by default, or under ``mpiexec``, over SSH, or as
batch jobs (`cohort.cluster.launchers`).
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
from .launchers import EngineGroup, JobGroup, LaunchOptions, launch

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

    `engines` says where engines run: ``"local"`` (default), ``"mpi"`` (one
    ``mpiexec``; they share ``MPI.COMM_WORLD``), ``"ssh"`` (`hosts`, e.g.
    ``"node1:4,node2:4"``), or ``"slurm"``/``"sge"``/``"pbs"`` (a batch job of
    `nodes` × `per_node` engines with `walltime`, `queue`, `account`;
    `service` submits elsewhere, e.g. ``"slurm+ssh://login"``). Engines that
    may run on other hosts make the controller bind all interfaces unless
    `ip` is given.

    A task result larger than `store_threshold` bytes (512 MiB by default; 0
    turns it off) is written by the engine to the object store `store` (a
    URL; default: the profile's file store) and comes back as a
    `cohort.store.Ref`.
    """

    def __init__(self, n: int | None = None, profile: str | None = None,
                 connection_file=None, detached: bool = False, ip: str | None = None,
                 log_level: str = "INFO", engine_args=(), controller_args=(),
                 start_timeout: float = 60.0, restart_engines: bool = True,
                 encrypt: bool | None = None, engines: str = "local", store: str | None = None,
                 store_threshold: int | None = None, **launch_options):
        self.launch_options = LaunchOptions(engines=engines, **launch_options)
        if ip is None:
            ip = "0.0.0.0" if self.launch_options.remote else "127.0.0.1"
        self.n = self.launch_options.engine_count(n)
        self.profile = profile
        self.detached = detached
        self.ip = ip
        self.log_level = log_level
        self.engine_args = ["--log-level", log_level, *engine_args]
        self.controller_args = list(controller_args)
        self.start_timeout = start_timeout
        self.restart_engines = restart_engines
        self.private = connection_file is None
        self.info = ConnectionInfo.new(ip=ip, encrypt=encrypt)
        if store:
            self.info.store = store
        if store_threshold is not None:
            self.info.store_threshold = int(store_threshold)
        if connection_file is None:
            self.folder = profile_dir(profile) / "clusters" / self.info.cluster_id
            connection_file = self.folder / "controller.json"
        else:
            self.folder = Path(connection_file).parent
        self.connection_file = Path(connection_file)
        self.log_dir = self.folder / "logs"
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []   # local processes (engines, mpiexec)
        self.groups: list[EngineGroup] = []          # every launch, local or batch
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

    def add_engines(self, n: int | None = None, wait: bool = False, **launch_options) -> list:
        """Start `n` more engines the way this cluster starts them (or as
        `launch_options` say, e.g. ``engines="slurm", nodes=2``); they join by
        themselves. Returns the new `EngineGroup`s; with `wait`, blocks until
        the engines have registered."""
        opts = self.launch_options
        if launch_options:
            opts = LaunchOptions(**{**opts.__dict__, **launch_options})
        n = opts.engine_count(n)
        before = len(self.client.ids) if (wait and self.client) else 0
        groups = launch(opts, n, self)
        self.groups.extend(groups)
        if self.detached and self.controller is not None:
            self.write_record()
        if wait and self.client is not None:
            self.wait_for_engines(before + n, time.monotonic() + self.start_timeout)
        return groups

    def dashboard(self, port: int | None = None) -> str:
        """Serve the live dashboard of this cluster from a background process (stopped
        with the cluster); return its URL, which carries the cluster's token."""
        from ..dashboard import start_background
        db = next((a for k, a in zip(self.controller_args, self.controller_args[1:])
                   if k == "--db"), None)
        self._dashboard_url = start_background(self.connection_file, port=port, db=db)
        return self._dashboard_url

    def remove_engines(self, ids, timeout: float = 5.0) -> None:
        """Shut engines down by id (the rest keep running); a batch job none of
        whose engines is left is cancelled."""
        rc = self.client
        ids = [ids] if isinstance(ids, int) else list(ids)
        pids = {rc.engines[i]["pid"] for i in ids if i in rc.engines}
        rc.shutdown(ids, timeout=timeout)
        deadline = time.monotonic() + timeout
        while any(i in rc.ids for i in ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for p in self.engines:
            if p.pid in pids:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()

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

    def start(self, wait: bool = True):
        """Start everything and return a connected Client. With `wait` (the
        default) it returns once every engine has registered; without, as soon
        as the controller answers (batch engines join when their job starts)."""
        from ..client import Client
        deadline = time.monotonic() + self.start_timeout
        try:
            self.start_controller()
            if self.launch_options.remote:  # the connection file they get must be complete
                self._wait_controller(deadline)
            self.add_engines(self.n)  # local ones connect as soon as the controller binds
            self._wait_controller(deadline)
            self.client = Client(self.connection_file, timeout=max(1.0, deadline - time.monotonic()))
            if wait:
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
                jobs = [g for g in self.groups if isinstance(g, JobGroup)]
                ended = [g for g in jobs if not g.alive()]
                if dead or ended or time.monotonic() >= deadline:
                    why = (f"{len(dead)} engine process(es) exited" if dead else
                           "; ".join(g.state() for g in ended) if ended else
                           f"only {len(self.client.ids)} of {n} engines registered "
                           f"within {self.start_timeout:g} s")
                    if jobs and not ended:
                        why += f" ({'; '.join(g.state() for g in jobs)})"
                    raise ClusterStartError(f"{why}; see the logs in {self.log_dir}") from None

    def write_record(self) -> None:
        """Remember the processes, so `cohort stop` finds them from another shell."""
        rec = {"controller": _pid_record(self.controller.pid),
               "engines": [_pid_record(p.pid) for p in self.engines],
               "groups": [g.record() for g in self.groups],
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
        if getattr(self, "_dashboard_url", None):
            from ..dashboard import stop_background
            stop_background(self.connection_file)
            self._dashboard_url = None
        for g in self.groups:
            if isinstance(g, JobGroup):
                g.stop(timeout)  # cancel the batch jobs this cluster submitted
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
