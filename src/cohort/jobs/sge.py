"""``sge://`` and ``sge+ssh://login-host``: (Son of / Univa / Open) Grid Engine.

The script (template ``sge.sh``) goes to ``qsub -terse`` on stdin. States come
from ``qstat`` while the job is listed, then from ``qacct -j`` (the accounting
file, which Grid Engine writes with ``accounting=true``, its default; set
``accounting_flush_time=00:00:00`` in ``reporting_params`` to read it without
delay).

Grid Engine state (qstat) / record (qacct)                  cohort state
----------------------------------------------------------  ------------
qw, hqw, hRwq, Rq (any state with q and no r)               QUEUED
r, t, Rr, Rt, s, S, T, ts, tS, dr (running or suspended)    ACTIVE
E... (Eqw: error, stays queued until ``qdel``)              FAILED
record with failed 0 and exit_status 0                      COMPLETED
record with failed 0 and exit_status not 0                  FAILED
record with failed 100 and exit_status 137 (SIGKILL:        CANCELED
  ``qdel``, or the ``h_rt`` limit: the record is the same)
record with any other failed code                           FAILED
no record, left the queue without running (``qdel`` while   CANCELED
  queued: Grid Engine writes no record then)

Options: ``parallel_environment`` (default ``smp``), used as
``-pe <name> <nodes x processes_per_node>`` for jobs of more than one process;
``record_grace`` (seconds, default 10): how long a job that left ``qstat`` may
lack an accounting record before it reads CANCELED (queued) or FAILED (ran).
"""

from __future__ import annotations

import logging
import re
import shlex
import time

from ..errors import JobError
from .description import JobDescription, JobState
from .service import Backend, Status
from .template import base_values

log = logging.getLogger(__name__)

_ID = re.compile(r"^\d+(\.\d+)?$")


def map_state(native: str) -> JobState:
    """The cohort state of a qstat state code (``qw``, ``r``, ``Eqw``, ...)."""
    if "E" in native:
        return JobState.FAILED
    if any(c in native for c in "rtsST"):
        return JobState.ACTIVE
    return JobState.QUEUED


def map_record(failed: str, exit_status: str) -> Status:
    """The final status of a qacct record."""
    code = int(exit_status) if exit_status.lstrip("-").isdigit() else None
    fnum = failed.split(":")[0].strip()
    why = failed.split(":", 1)[1].strip() if ":" in failed else ""
    if fnum == "0":
        st = JobState.COMPLETED if code == 0 else JobState.FAILED
        return Status(st, code, f"exit_status {exit_status}")
    if fnum == "100" and code == 137:
        return Status(JobState.CANCELED, code, f"failed {failed}", "killed by qdel or h_rt")
    return Status(JobState.FAILED, code, f"failed {failed}", why)


def parse_qstat(text: str) -> dict[str, str]:
    """job id -> state code from plain ``qstat`` output."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].isdigit():
            jobs[parts[0]] = parts[4]
    return jobs


def parse_qacct(text: str) -> dict[str, str]:
    """The last record of ``qacct -j`` output as a dict (empty when there is none)."""
    rec: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("====="):
            rec = {}
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and re.match(r"^[a-z_]+$", parts[0]):
            rec[parts[0]] = parts[1].strip()
    return rec


class SGEBackend(Backend):
    """Grid Engine through qsub, qstat, qacct and qdel."""

    template_name = "sge"
    max_poll = 2.0

    def __init__(self, shell, *, scheme: str = "sge", profile: str | None = None,
                 parallel_environment: str = "smp", record_grace: float = 10.0,
                 **options) -> None:
        super().__init__(shell, scheme=scheme, profile=profile, **options)
        self.parallel_environment = parallel_environment
        self.record_grace = float(record_grace)
        # id -> (last state seen in qstat, when it was first missing from qstat)
        self._seen: dict[str, tuple[JobState, float | None]] = {}

    def values(self, jd: JobDescription) -> dict[str, object]:
        v = base_values(jd, directive="#$")
        multi = jd.total_processes > 1
        v["parallel_environment"] = self.parallel_environment if multi else None
        v["slots"] = jd.total_processes if multi else None
        return v

    @staticmethod
    def _check_id(native_id: str) -> str:
        if not _ID.match(native_id or ""):
            raise JobError(f"{native_id!r} is not a Grid Engine job id")
        return native_id

    def submit(self, jd: JobDescription, script: str) -> str:
        nid = self._submit_script("qsub -terse", script, _ID)
        self._seen[nid] = (JobState.QUEUED, None)
        return nid

    def query(self, ids: list[str]) -> dict[str, Status]:
        ids = [self._check_id(i) for i in ids]
        r = self.shell.run("qstat -u '*'")
        if r.rc != 0:
            raise JobError(f"qstat failed: {r.message}")
        listed = parse_qstat(r.out)
        result: dict[str, Status] = {}
        gone = []
        for nid in ids:
            if nid in listed:
                st = map_state(listed[nid])
                msg = ("the job is in Grid Engine's error state: `qstat -j "
                       f"{nid}` says why; `qdel {nid}` removes it") if st is JobState.FAILED else ""
                result[nid] = Status(st, None, listed[nid], msg)
                self._seen[nid] = (st, None)
            else:
                gone.append(nid)
        if gone:
            script = "".join(f"echo '@@ {i}'; qacct -j {i} 2>&1\n" for i in gone)
            r = self.shell.run(script)
            chunks = re.split(r"^@@ (\S+)$", r.out, flags=re.M)
            records = {chunks[k]: parse_qacct(chunks[k + 1]) for k in range(1, len(chunks) - 1, 2)}
            now = time.monotonic()
            for nid in gone:
                rec = records.get(nid, {})
                if "failed" in rec and "exit_status" in rec:
                    result[nid] = map_record(rec["failed"], rec["exit_status"].split()[0])
                    continue
                last, missing_since = self._seen.get(nid, (None, None))
                if last is None:
                    continue                     # never seen: unknown here
                if missing_since is None:
                    missing_since = now
                    self._seen[nid] = (last, now)
                if now - missing_since < self.record_grace:
                    result[nid] = Status(last, None, "finishing")
                elif last is JobState.QUEUED:
                    result[nid] = Status(JobState.CANCELED, None, "deleted",
                                         "left the queue without running (qdel)")
                else:
                    result[nid] = Status(JobState.FAILED, None, "lost",
                                         "the job left qstat and qacct has no record of it")
        return result

    def forget(self, native_id: str) -> None:
        self._seen.pop(native_id, None)

    def cancel(self, native_id: str) -> None:
        nid = self._check_id(native_id)
        r = self.shell.run(f"qdel {shlex.quote(nid)}")
        if r.rc != 0 and "does not exist" not in r.message:
            raise JobError(f"qdel {nid} failed:\n{r.message}")

    def list_ids(self) -> list[str]:
        r = self.shell.run("qstat -u \"$(id -un)\"")
        if r.rc != 0:
            raise JobError(f"qstat failed: {r.message}")
        return list(parse_qstat(r.out))
