"""``slurm://`` and ``slurm+ssh://login-host``: jobs through ``sbatch``.

The script (template ``slurm.sh``) goes to ``sbatch --parsable`` on stdin, so
nothing is written on the submit host. States come from ``squeue -t all``
while Slurm still lists the job, and the final state and exit code from
``scontrol show job`` (kept by slurmctld for ``MinJobAge`` seconds after the
end; no accounting database, no ``sacct``, is needed).

Slurm state                                                  cohort state
-----------------------------------------------------------  ------------
PENDING, REQUEUED, REQUEUE_FED, REQUEUE_HOLD, RESV_DEL_HOLD  QUEUED
CONFIGURING, RUNNING, COMPLETING, SUSPENDED, STOPPED,        ACTIVE
  SIGNALING, STAGE_OUT, RESIZING
COMPLETED                                                    COMPLETED
CANCELLED (``scancel``, from anywhere)                       CANCELED
FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE,  FAILED
  OUT_OF_MEMORY, SPECIAL_EXIT, REVOKED

The exit code is Slurm's ``ExitCode=code:signal``: the code, or 128+signal
when the batch script was killed by a signal.
"""

from __future__ import annotations

import logging
import re
import shlex

from ..errors import JobError
from .description import JobDescription, JobState
from .service import Backend, Status
from .template import base_values

log = logging.getLogger(__name__)

STATES = {
    **dict.fromkeys(["PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"],
                    JobState.QUEUED),
    **dict.fromkeys(["CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED",
                     "SIGNALING", "STAGE_OUT", "RESIZING"], JobState.ACTIVE),
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELED,
    **dict.fromkeys(["FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                     "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"], JobState.FAILED),
}

_ID = re.compile(r"^\d+(_\d+)?$")
_FIELD = re.compile(r"(\w+)=(\S*)")


def map_state(native: str) -> JobState:
    """The cohort state of a Slurm state name (``CANCELLED by 0`` reads CANCELLED)."""
    word = native.split()[0].rstrip("+") if native.strip() else ""
    return STATES.get(word, JobState.ACTIVE if word else JobState.QUEUED)


def parse_exit_code(value: str) -> int | None:
    """``"2:0"`` -> 2, ``"0:15"`` -> 143, junk -> None."""
    m = re.match(r"^(\d+):(\d+)$", value or "")
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return 128 + sig if sig else code


class SlurmBackend(Backend):
    """Slurm through sbatch, squeue, scontrol and scancel."""

    template_name = "slurm"
    max_poll = 2.0

    def values(self, jd: JobDescription) -> dict[str, object]:
        return base_values(jd, directive="#SBATCH")

    @staticmethod
    def _check_id(native_id: str) -> str:
        if not _ID.match(native_id or ""):
            raise JobError(f"{native_id!r} is not a Slurm job id")
        return native_id

    def submit(self, jd: JobDescription, script: str) -> str:
        # --parsable prints "id" or "id;cluster"
        return self._submit_script("sbatch --parsable", script, _ID,
                                   line=lambda text: text.split(";")[0].strip())

    def query(self, ids: list[str]) -> dict[str, Status]:
        ids = [self._check_id(i) for i in ids]
        result: dict[str, Status] = {}
        r = self.shell.run("squeue -h -t all -o '%i|%T|%r' -j " + ",".join(ids))
        if r.rc != 0 and "Invalid job id" not in r.err:
            raise JobError(f"squeue failed: {r.message}")
        listed = {}
        for line in r.out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0] in ids:
                listed[parts[0]] = (parts[1], parts[2])
        # final (or no longer listed) jobs: scontrol for the final state and exit code
        need = [i for i in ids if i not in listed or map_state(listed[i][0]).final]
        for nid, st in listed.items():
            if nid not in need:
                reason = st[1] if st[1] not in ("None", "(null)") else ""
                result[nid] = Status(map_state(st[0]), None, st[0], reason)
        if need:
            script = "".join(f"scontrol -o show job {i} 2>&1; echo\n" for i in need)
            r = self.shell.run(script)
            for line in r.out.splitlines():
                if not line.startswith("JobId="):
                    continue
                f = dict(_FIELD.findall(line))
                nid = f.get("JobId", "")
                if nid not in need:
                    continue
                native = f.get("JobState", "")
                state = map_state(native)
                code = parse_exit_code(f.get("ExitCode", "")) if state.final else None
                if state is JobState.CANCELED and code == 0:
                    code = None                   # cancelled before it ran
                reason = f.get("Reason", "")
                result[nid] = Status(state, code, native,
                                     "" if reason in ("None", "(null)") else reason)
            for nid in need:
                if nid not in result and nid in listed:  # scontrol forgot it meanwhile
                    native = listed[nid][0]
                    result[nid] = Status(map_state(native), None, native)
        return result

    def cancel(self, native_id: str) -> None:
        nid = self._check_id(native_id)
        r = self.shell.run(f"scancel {shlex.quote(nid)}")
        if r.rc != 0 and "already completing or completed" not in r.message:
            raise JobError(f"scancel {nid} failed:\n{r.message}")

    def list_ids(self) -> list[str]:
        r = self.shell.run("squeue -h -u \"$(id -un)\" -o '%i'")
        if r.rc != 0:
            raise JobError(f"squeue failed: {r.message}")
        return [i for i in r.out.split() if _ID.match(i)]
