"""How a cluster's engines are started: one small launcher per kind of place.

A launcher starts engines as an `EngineGroup` — processes on this machine,
one ``mpiexec``, or batch jobs through `cohort.jobs` — that can report its
state, be stopped, and be written to ``cluster.json`` so another process
(`cohort status`, `cohort stop`) finds it again. Engines connect back to the
controller by themselves with the connection file.

=========  ==========================================================
``local``  ``n`` engine processes on this machine (the default)
``mpi``    ``mpiexec -n N``: the engines share one ``MPI.COMM_WORLD``
``ssh``    ``cohort engine -n K`` on each host of ``hosts`` over SSH
``slurm``  one batch job of ``nodes`` × ``per_node`` engines (``sge``,
           ``pbs`` alike); ``service="slurm+ssh://login"`` submits
           through a login node
=========  ==========================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from ..errors import ClusterStartError
from ..procinfo import proc_starttime

log = logging.getLogger(__name__)

BATCH = ("slurm", "sge", "pbs")
KINDS = ("local", "mpi", "ssh", *BATCH)


@dataclass
class LaunchOptions:
    """Where and how engines start; what each launcher reads of it is in its docstring."""

    engines: str = "local"
    hosts: list = field(default_factory=list)   # ssh: [(host, count), ...]
    nodes: int | None = None                    # batch
    per_node: int | None = None                 # batch
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    service: str | None = None                  # a JobService URL that overrides the kind's own
    service_options: dict = field(default_factory=dict)  # JobService(..., **these): identity_file, ssh_options
    python: str = sys.executable                # the Python that runs engines there
    mpiexec: str = "mpiexec"
    mpi_args: list = field(default_factory=list)
    mpi: bool = False                           # batch: the job's engines share one MPI world

    def __post_init__(self):
        if self.engines not in KINDS:
            raise ValueError(f"engines={self.engines!r}: choose one of {', '.join(KINDS)}")
        if self.mpi and self.engines not in BATCH:
            raise ValueError("mpi=True is for batch engines (slurm, sge, pbs); "
                             "engines='mpi' runs them under mpiexec here")
        if isinstance(self.hosts, str):
            self.hosts = parse_hosts(self.hosts)

    @property
    def remote(self) -> bool:
        """Whether engines may run on other hosts (the controller must be reachable)."""
        return self.engines in ("ssh", *BATCH)

    def job_service(self, url: str):
        from ..jobs import JobService
        return JobService(url, **self.service_options)

    def engine_count(self, n: int | None) -> int:
        if self.engines == "ssh":
            return sum(k for _, k in self.hosts)
        if self.engines in BATCH:
            return (self.nodes or 1) * (self.per_node or n or 1)
        return n if n is not None else (os.cpu_count() or 1)


def parse_hosts(text: str) -> list:
    """``"node1:4,node2"`` -> ``[("node1", 4), ("node2", 1)]``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        host, _, count = item.rpartition(":") if ":" in item and item.rsplit(":", 1)[1].isdigit() \
            else (item, "", "1")
        if not host or int(count) < 1:
            raise ValueError(f"bad host entry {item!r}: use HOST or HOST:ENGINES")
        out.append((host, int(count)))
    if not out:
        raise ValueError("no hosts given: use --hosts node1:4,node2:4")
    return out


def engine_argv(python: str, connection_file, n: int = 1, extra=(), mpi: bool = False) -> list:
    """The command line that starts `n` engines on one host."""
    argv = [python, "-m", "cohort", "engine", "--file", str(connection_file)]
    if n != 1:
        argv += ["-n", str(n)]
    if mpi:
        argv.append("--mpi")
    return argv + list(extra)


# --- groups ----------------------------------------------------------------------
class EngineGroup(ABC):
    """Engines started together; subclasses say how they are watched and stopped."""

    kind = "?"

    def __init__(self, n: int):
        self.n = n

    @abstractmethod
    def state(self) -> str:
        ...

    @abstractmethod
    def alive(self) -> bool:
        ...

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        ...

    @abstractmethod
    def record(self) -> dict:
        ...

    @staticmethod
    def from_record(rec: dict) -> "EngineGroup":
        if rec.get("job"):
            return JobGroup(rec["kind"], rec["n"], None, rec["service"], rec["job"],
                            rec.get("options"))
        return ProcessGroup(rec["kind"], rec["n"], pids=rec["pids"])


class ProcessGroup(EngineGroup):
    """Processes of this machine: engines themselves, or one ``mpiexec``."""

    def __init__(self, kind: str, n: int, popens=(), pids=None):
        super().__init__(n)
        self.kind = kind
        self.popens = list(popens)
        self.pids = pids if pids is not None else [
            {"pid": p.pid, "starttime": proc_starttime(p.pid)} for p in self.popens]

    def _running(self) -> list:
        return [r for r in self.pids if r.get("starttime") is not None
                and proc_starttime(r["pid"]) == r["starttime"]]

    def alive(self) -> bool:
        return bool(self._running())

    def state(self) -> str:
        running = len(self._running())
        return f"{running} of {len(self.pids)} processes running"

    def stop(self, timeout: float = 5.0) -> None:
        from .local import stop_processes
        stop_processes([r["pid"] for r in self._running()], timeout, popens=self.popens)

    def record(self) -> dict:
        return {"kind": self.kind, "n": self.n, "pids": self.pids}


class JobGroup(EngineGroup):
    """Engines inside a job of a `cohort.jobs` service (SSH, Slurm, Grid Engine, PBS)."""

    def __init__(self, kind: str, n: int, job, service: str, native_id: str | None = None,
                 options: dict | None = None):
        super().__init__(n)
        self.kind = kind
        self.service = service
        self.options = dict(options or {})  # JobService options (JSON-able: kept in cluster.json)
        self._job = job
        self.native_id = native_id or job.native_id

    @property
    def job(self):
        if self._job is None:
            from ..jobs import JobService
            self._job = JobService(self.service, **self.options).attach(self.native_id)
        return self._job

    def state(self) -> str:
        try:
            return f"job {self.native_id}: {self.job.state}"
        except Exception as e:  # the batch system does not answer
            return f"job {self.native_id}: unknown ({e})"

    def alive(self) -> bool:
        try:
            return not self.job.state.final
        except Exception:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if not self.job.state.final:
                self.job.cancel()
        except Exception as e:
            log.warning("could not cancel job %s at %s: %s", self.native_id, self.service, e)

    def record(self) -> dict:
        return {"kind": self.kind, "n": self.n, "service": self.service, "job": self.native_id,
                "options": self.options}


# --- launchers -------------------------------------------------------------------
def launch(opts: LaunchOptions, n: int, cluster) -> list:
    """Start `n` engines the way `opts` says; return the new EngineGroups."""
    return _LAUNCHERS[opts.engines](opts, n, cluster)


def _launch_local(opts, n, cluster) -> list:
    popens = []
    for _ in range(n):
        i = len(cluster.engines)
        p = cluster._spawn(engine_argv(opts.python, cluster.connection_file, extra=cluster.engine_args),
                           f"engine-{i}.log",
                           {"COHORT_RESTART_ENGINE": "1" if cluster.restart_engines else "0"})
        cluster.engines.append(p)
        popens.append(p)
    return [ProcessGroup("local", n, popens)]


def mpiexec_argv(opts: LaunchOptions, n: int) -> list:
    exe = shutil.which(opts.mpiexec)
    if exe is None:
        raise ClusterStartError(f"{opts.mpiexec!r} is not on PATH: install an MPI (Debian: "
                                f"apt-get install openmpi-bin libopenmpi-dev; then pip install "
                                f"mpi4py) or pass mpiexec=/path/to/mpiexec")
    argv = [exe, "-n", str(n)]
    if _is_open_mpi(exe):
        # Open MPI refuses root and more ranks than cores unless told; engines mostly wait
        argv += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return argv + list(opts.mpi_args)


def _is_open_mpi(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr


def _launch_mpi(opts, n, cluster) -> list:
    argv = mpiexec_argv(opts, n) + engine_argv(opts.python, cluster.connection_file,
                                               extra=cluster.engine_args, mpi=True)
    p = cluster._spawn(argv, f"mpiexec-{len(cluster.engines)}.log")
    cluster.engines.append(p)
    return [ProcessGroup("mpi", n, [p])]


def _launch_ssh(opts, n, cluster) -> list:
    from ..jobs import JobDescription
    groups = []
    for host, count in opts.hosts:
        url = f"ssh://{host}"
        js = opts.job_service(url)
        _stage_connection_file(js, cluster.connection_file)
        jd = JobDescription(
            executable=opts.python,
            arguments=engine_argv(opts.python, cluster.connection_file, count, cluster.engine_args)[1:],
            stdout=str(cluster.log_dir / f"engines-ssh-{len(groups)}.log"),
            stderr=str(cluster.log_dir / f"engines-ssh-{len(groups)}.err"),
            name=f"cohort-engines-{cluster.info.cluster_id}")
        groups.append(JobGroup("ssh", count, js.submit(jd), url, options=opts.service_options))
    return groups


def _stage_connection_file(js, path) -> None:
    """Copy the connection file to the same path on the remote host (mode 0600),
    replacing it in one rename so engines reading it never see half a file."""
    q = shlex.quote
    tmp = f"{path}.{os.getpid()}.tmp"
    res = js.shell.run(f"umask 077 && mkdir -p {q(os.path.dirname(str(path)))} && "
                       f"cat > {q(tmp)} && mv -f {q(tmp)} {q(str(path))}",
                       input=open(path).read())
    if res.rc != 0:
        raise ClusterStartError(f"could not copy the connection file to {js.url}: {res.message}")


def _launch_batch(opts, n, cluster) -> list:
    from ..jobs import JobDescription
    nodes = opts.nodes or 1
    per_node = opts.per_node or max(1, n // nodes)
    url = opts.service or f"{opts.engines}://"
    launcher = None
    if opts.mpi:  # every engine a rank of one world, started by mpiexec inside the job
        argv = engine_argv(opts.python, cluster.connection_file, 1, cluster.engine_args, mpi=True)
        launcher = " ".join(shlex.quote(a) for a in mpiexec_argv(opts, nodes * per_node))
    else:
        argv = engine_argv(opts.python, cluster.connection_file, per_node, cluster.engine_args)
        if nodes > 1:  # one `cohort engine -n K` per node
            launcher = ("srun --ntasks-per-node=1" if opts.engines == "slurm" else
                        f"{shlex.quote(opts.mpiexec)} --map-by ppr:1:node")
    jd = JobDescription(
        executable=opts.python,
        arguments=argv[1:],
        nodes=nodes, processes_per_node=1, walltime=opts.walltime, queue=opts.queue,
        account=opts.account, launcher=launcher, directory=str(cluster.log_dir),
        stdout=str(cluster.log_dir / "engines-job.log"), stderr=str(cluster.log_dir / "engines-job.err"),
        name=f"cohort-engines-{cluster.info.cluster_id}")
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    job = opts.job_service(url).submit(jd)
    log.info("submitted %d engines as job %s to %s", nodes * per_node, job.native_id, url)
    return [JobGroup(opts.engines, nodes * per_node, job, url, options=opts.service_options)]


_LAUNCHERS = {"local": _launch_local, "mpi": _launch_mpi, "ssh": _launch_ssh,
              **{k: _launch_batch for k in BATCH}}

