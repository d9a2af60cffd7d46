"""What a job is (`JobDescription`) and where it stands (`JobState`)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any


class JobState(str, enum.Enum):
    """The common job states every service maps its native states onto.

    ``NEW`` (created, not submitted) -> ``QUEUED`` (waiting in the batch system)
    -> ``ACTIVE`` (running) -> one of the final states ``COMPLETED`` (exit code
    0), ``FAILED`` (non-zero exit code, killed, or rejected at run time) and
    ``CANCELED`` (cancelled by `Job.cancel`, ``scancel``/``qdel``/``kill``).
    """

    NEW = "NEW"
    QUEUED = "QUEUED"
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        """True for COMPLETED, FAILED and CANCELED: the state will not change again."""
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED})

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def walltime_seconds(walltime: str | int | float | None) -> int | None:
    """Seconds in a walltime given as seconds or ``[D-]HH:MM:SS`` / ``HH:MM`` / ``MM``."""
    if walltime is None or walltime == "":
        return None
    if isinstance(walltime, (int, float)):
        if walltime <= 0:
            raise ValueError(f"walltime must be positive, not {walltime!r}")
        return int(walltime + 0.999)
    m = _WALLTIME.match(str(walltime).strip())
    if not m:
        raise ValueError(f"walltime {walltime!r} is not seconds or [D-]HH:MM:SS")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if len(parts) == 3:
        h, mi, s = parts
    elif len(parts) == 2:
        h, mi, s = parts[0], parts[1], 0
    else:
        h, mi, s = 0, parts[0], 0       # a bare number means minutes, as in Slurm
    total = int(days or 0) * 86400 + h * 3600 + mi * 60 + s
    if total <= 0:
        raise ValueError(f"walltime must be positive, not {walltime!r}")
    return total


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24), the form every scheduler here accepts."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


@dataclass
class JobDescription:
    """Everything a job service needs to run a program as a job.

    Relative ``stdout``/``stderr`` paths are relative to ``directory`` (the job's
    working directory; by default the scheduler's: the submit directory for
    Slurm, the home directory for Grid Engine and PBS and for local and SSH
    jobs). ``walltime`` is seconds or ``[D-]HH:MM:SS``. ``launcher`` is an
    optional command prefix for parallel programs (``"srun"``,
    ``"mpiexec -n 8"``); without it the executable runs once, in the batch
    script, on the first node. ``scheduler_options`` are extra raw directive
    values passed as they are (``["--mem=1G"]`` for Slurm, ``["-l mem=1G"]``
    for PBS and Grid Engine).
    """

    executable: str
    arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    directory: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    name: str | None = None
    nodes: int = 1
    processes_per_node: int = 1
    gpus_per_process: int = 0
    walltime: str | int | None = None
    queue: str | None = None
    account: str | None = None
    launcher: str | None = None
    scheduler_options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.executable or not isinstance(self.executable, str):
            raise ValueError("JobDescription needs an executable (a path or a command name)")
        self.arguments = [str(a) for a in (self.arguments or [])]
        self.environment = {str(k): str(v) for k, v in (self.environment or {}).items()}
        for k in self.environment:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"environment variable name {k!r} is not valid in a shell")
        for attr in ("nodes", "processes_per_node"):
            v = int(getattr(self, attr))
            if v < 1:
                raise ValueError(f"{attr} must be at least 1, not {v}")
            setattr(self, attr, v)
        self.gpus_per_process = int(self.gpus_per_process or 0)
        if self.gpus_per_process < 0:
            raise ValueError("gpus_per_process must not be negative")
        walltime_seconds(self.walltime)          # validate early
        if isinstance(self.scheduler_options, str):
            self.scheduler_options = [self.scheduler_options]
        self.scheduler_options = [str(o) for o in self.scheduler_options or []]

    @property
    def total_processes(self) -> int:
        """nodes x processes_per_node."""
        return self.nodes * self.processes_per_node

    @property
    def walltime_seconds(self) -> int | None:
        return walltime_seconds(self.walltime)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (round-trips through `from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobDescription":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
