"""``pbs://`` and ``pbs+ssh://login-host``: PBS Pro / OpenPBS.

The script (template ``pbs.sh``) goes to ``qsub`` on stdin; states come from
``qstat -x -f -F json`` (PBS Pro 19 and later, OpenPBS), which also reports
finished jobs (``job_state`` F) with their ``substate`` and ``Exit_status``
while the server keeps job history (``job_history_enable``; without it a
finished job leaves ``qstat``, and reads FAILED, or CANCELED when cohort
cancelled it).

PBS job_state / substate                                      cohort state
------------------------------------------------------------  ------------
Q (queued), H (held), W (waiting), T (transit), M (moved)     QUEUED
R (running), E (exiting), S / U (suspended), B (array begun)  ACTIVE
F or X, substate 91 (terminated: ``qdel``)                    CANCELED
F or X, Exit_status 0                                         COMPLETED
F or X, other Exit_status (substate 93)                       FAILED

The exit code is ``Exit_status``; PBS reports a script killed by signal N as
256+N, which cohort turns into 128+N like the other services; negative
values (PBS's own JOB_EXEC_* failures to start) are kept as they are.

Tested against scripted ``qsub``/``qstat``/``qdel`` stand-ins that follow the
PBS Pro reference guide (tests/fakes/pbs), not a real PBS server.
"""

from __future__ import annotations

import json
import logging
import re
import shlex

from ..errors import JobError
from .description import JobDescription, JobState
from .service import Backend, Status
from .template import base_values

log = logging.getLogger(__name__)

_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")

QUEUED = set("QHWTM")
ACTIVE = set("RESUB")


def map_job(attrs: dict) -> Status:
    """The status of one job from its ``qstat -f -F json`` attributes."""
    native = str(attrs.get("job_state", ""))
    sub = str(attrs.get("substate", ""))
    es = attrs.get("Exit_status")
    code = None
    if es is not None:
        try:
            code = int(es)
        except (TypeError, ValueError):
            code = None
    if code is not None and code > 256:
        code = 128 + (code - 256)
    label = f"{native} ({sub})" if sub else native
    if native in QUEUED:
        return Status(JobState.QUEUED, None, label, str(attrs.get("comment", "")))
    if native in ACTIVE:
        return Status(JobState.ACTIVE, None, label)
    if native in ("F", "X"):
        if sub == "91":
            return Status(JobState.CANCELED, code, label, "deleted (qdel)")
        if code == 0:
            return Status(JobState.COMPLETED, 0, label)
        return Status(JobState.FAILED, code, label, str(attrs.get("comment", "")))
    return Status(JobState.QUEUED, None, label)


def _normalize(native_id: str, known: dict[str, dict]) -> dict | None:
    if native_id in known:
        return known[native_id]
    head = native_id.split(".")[0]
    for k, v in known.items():
        if k.split(".")[0] == head:
            return v
    return None


class PBSBackend(Backend):
    """PBS Pro / OpenPBS through qsub, qstat and qdel."""

    template_name = "pbs"
    max_poll = 2.0

    def values(self, jd: JobDescription) -> dict[str, object]:
        v = base_values(jd, directive="#PBS")
        ppn = jd.processes_per_node
        select = f"{jd.nodes}:ncpus={ppn}:mpiprocs={ppn}"
        if jd.gpus_per_process:
            select += f":ngpus={jd.gpus_per_process * ppn}"
        v["select"] = select
        return v

    @staticmethod
    def _check_id(native_id: str) -> str:
        if not _ID.match(native_id or ""):
            raise JobError(f"{native_id!r} is not a PBS job id")
        return native_id

    def submit(self, jd: JobDescription, script: str) -> str:
        return self._submit_script("qsub", script, _ID)

    def _qstat(self, args: str) -> dict[str, dict]:
        r = self.shell.run(f"qstat {args}")
        text = r.out.strip()
        if not text:
            if r.rc != 0 and "Unknown Job Id" not in r.err and "finished" not in r.err:
                raise JobError(f"qstat failed: {r.message}")
            return {}
        try:
            return dict(json.loads(text, strict=False).get("Jobs") or {})
        except ValueError as e:
            raise JobError(f"cannot read `qstat {args}` output ({e}): {text[:200]!r}") from None

    def query(self, ids: list[str]) -> dict[str, Status]:
        ids = [self._check_id(i) for i in ids]
        known = self._qstat("-x -f -F json " + " ".join(shlex.quote(i) for i in ids))
        result = {}
        for nid in ids:
            attrs = _normalize(nid, known)
            if attrs is not None:
                result[nid] = map_job(attrs)
        return result

    def cancel(self, native_id: str) -> None:
        nid = self._check_id(native_id)
        r = self.shell.run(f"qdel {shlex.quote(nid)}")
        if r.rc != 0 and "has finished" not in r.message:
            raise JobError(f"qdel {nid} failed:\n{r.message}")

    def list_ids(self) -> list[str]:
        r = self.shell.run("id -un")
        user = r.out.strip()
        jobs = self._qstat("-f -F json")
        return [k for k, v in jobs.items()
                if str(v.get("Job_Owner", "")).split("@")[0] == user]
