"""``local://`` and ``ssh://host``: a job is a process group on that machine.

Each job gets a folder ``<state_dir>/<id>/`` holding ``job.sh`` (the rendered
template), ``run.sh`` (the runner), ``pid`` (the runner's pid, which is also the
job's process-group and session id), ``exit_code`` once it ends, and
``canceled`` when the whole group was signalled. Any process that can read the
folder can `attach` to and `list` the jobs, so the state survives the
submitting process. ``state_dir`` defaults to ``profile_dir()/jobs`` for
``local://`` and ``~/.cohort/jobs`` on the remote host for ``ssh://``.

State table:

=====================================================  ===========
what the folder and the process table say              state
=====================================================  ===========
folder, no pid yet (runner starting)                   QUEUED
runner alive, no exit_code                             ACTIVE
exit_code 0                                            COMPLETED
exit_code not 0                                        FAILED
``canceled`` present (SIGTERM/INT/HUP to the group)    CANCELED
runner gone without an exit_code                       FAILED
=====================================================  ===========

A job is cancelled with SIGTERM to its process group, then SIGKILL after
``kill_grace`` seconds (default 5); ``kill -TERM -PID`` from outside does the
same and also reads CANCELED. Killing only the program (not its group) reads
FAILED with exit code 128+signal.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import secrets
import shlex

from ..errors import JobError
from ..profile import profile_dir
from .description import JobDescription, JobState
from .service import Backend, Status
from .shell import LocalShell
from .template import base_values

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# The runner: records its pid (= process group = session), runs the job with its
# output redirected, records the exit status. A signal to the group marks it cancelled.
RUNNER = r'''#!/bin/sh
d=$1; dir=$2; out=$3; err=$4
echo $$ > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
trap 'touch "$d/canceled"' TERM INT HUP
if [ -e "$d/canceled" ]; then echo 143 > "$d/exit_code"; exit 0; fi
cd "$HOME" 2>/dev/null || cd /
[ -n "$dir" ] && cd "$dir" 2>/dev/null
sh "$d/job.sh" < /dev/null > "$out" 2> "$err"
rc=$?
echo "$rc" > "$d/exit_code.tmp" && mv "$d/exit_code.tmp" "$d/exit_code"
'''

# One line per job: "<id> <pid|-> <alive 0|1> <exit_code|-> <canceled 0|1>"
_PROBE = r'''
probe() {
  d="$root/$1"
  if [ ! -d "$d" ]; then echo "$1 missing"; return; fi
  pid=$(cat "$d/pid" 2>/dev/null); ec=$(cat "$d/exit_code" 2>/dev/null)
  alive=0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    alive=1
    if [ -r "/proc/$pid/stat" ]; then
      [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -c1)" = Z ] && alive=0
      tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$d/run.sh" || alive=0
    fi
  fi
  c=0; [ -e "$d/canceled" ] && c=1
  echo "$1 ${pid:--} $alive ${ec:--} $c"
}
'''


class ProcessBackend(Backend):
    """Runs jobs as process groups, here or on an SSH host."""

    template_name = "local"
    max_poll = 1.0

    def __init__(self, shell, *, scheme: str = "local", profile: str | None = None,
                 state_dir: str | None = None, kill_grace: float = 5.0, **options) -> None:
        super().__init__(shell, scheme=scheme, profile=profile, **options)
        self.local = isinstance(shell, LocalShell)
        if state_dir is None:
            state_dir = str(profile_dir(profile) / "jobs") if self.local else ".cohort/jobs"
        self.state_dir = str(state_dir)
        self.kill_grace = float(kill_grace)

    # -- helpers ---------------------------------------------------------------------------
    def _root(self) -> str:
        """Shell code setting $root to the state folder (relative ones start at $HOME)."""
        q = shlex.quote(self.state_dir)
        if posixpath.isabs(self.state_dir):
            return f"root={q}\n"
        return f'root="$HOME"/{q}\n'

    @staticmethod
    def _check_id(native_id: str) -> str:
        if not _ID.match(native_id or ""):
            raise JobError(f"{native_id!r} is not a job id of a local or ssh service")
        return native_id

    def values(self, jd: JobDescription) -> dict[str, object]:
        return base_values(jd, directive="#")

    # -- Backend ---------------------------------------------------------------------------
    def submit(self, jd: JobDescription, script: str) -> str:
        nid = secrets.token_hex(4)
        directory = jd.directory
        if directory is None and self.local:
            directory = os.getcwd()
        out = jd.stdout or ""
        err = jd.stderr or ""
        code = (
            "set -e\n" + self._root()
            + 'mkdir -p "$root"; chmod 700 "$root"\n'
            + f'd="$(cd "$root" && pwd)/{nid}"\n'
            + 'mkdir "$d"\n'
            + 'cat > "$d/job.sh"\n'
            + f"cat > \"$d/run.sh\" <<'COHORT_RUNNER'\n{RUNNER}COHORT_RUNNER\n"
            + f"dir={shlex.quote(directory or '')}\n"
            + f"out={shlex.quote(out)}; [ -n \"$out\" ] || out=\"$d/stdout\"\n"
            + f"err={shlex.quote(err)}; [ -n \"$err\" ] || err=\"$d/stderr\"\n"
            + 'if command -v setsid >/dev/null 2>&1; then\n'
            + '  setsid sh "$d/run.sh" "$d" "$dir" "$out" "$err" </dev/null >/dev/null 2>"$d/runner.log" &\n'
            + 'else\n'
            + '  nohup sh "$d/run.sh" "$d" "$dir" "$out" "$err" </dev/null >/dev/null 2>"$d/runner.log" &\n'
            + 'fi\n'
            + 'i=0; while [ ! -s "$d/pid" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n'
            + 'cat "$d/pid"\n'
        )
        r = self.shell.run(code, input=script)
        if r.rc != 0 or not r.out.strip():
            raise JobError(f"could not start a job on {self.shell.describe()}: {r.message}")
        log.debug("job %s runs as process group %s", nid, r.out.strip())
        return nid

    def query(self, ids: list[str]) -> dict[str, Status]:
        ids = [self._check_id(i) for i in ids]
        code = self._root() + _PROBE + "".join(f"probe {shlex.quote(i)}\n" for i in ids)
        r = self.shell.run(code)
        if r.rc != 0:
            raise JobError(f"could not read job states on {self.shell.describe()}: {r.message}")
        return self._parse(r.out)

    def _parse(self, text: str) -> dict[str, Status]:
        result = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            nid, pid, alive, ec, canceled = parts
            code = int(ec) if ec.lstrip("-").isdigit() else None
            if code is not None:
                if canceled == "1":
                    st = Status(JobState.CANCELED, code, "canceled")
                elif code == 0:
                    st = Status(JobState.COMPLETED, 0, "exited")
                else:
                    st = Status(JobState.FAILED, code, "exited")
            elif alive == "1":
                st = Status(JobState.ACTIVE, None, "running")
            elif canceled == "1":
                st = Status(JobState.CANCELED, None, "canceled")
            elif pid == "-":
                st = Status(JobState.QUEUED, None, "starting")
            else:
                st = Status(JobState.FAILED, None, "lost",
                            f"the runner of job {nid} (pid {pid}) died without recording "
                            f"an exit status")
            result[nid] = st
        return result

    def cancel(self, native_id: str) -> None:
        nid = self._check_id(native_id)
        steps = max(1, int(self.kill_grace / 0.1))
        code = (
            self._root() + _PROBE
            + f"set -- $(probe {shlex.quote(nid)})\n"
            + '[ "$2" = missing ] && { echo "no such job" >&2; exit 3; }\n'
            + '[ "$4" != - ] && exit 0\n'                       # already ended
            + f'd="$root/{nid}"; touch "$d/canceled"\n'
            + '[ "$3" = 1 ] || exit 0\n'
            + 'pid=$2; kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null\n'
            + f'i=0; while [ ! -e "$d/exit_code" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done\n'
            + '[ -e "$d/exit_code" ] || kill -KILL "-$pid" 2>/dev/null || true\n'
        )
        r = self.shell.run(code, timeout=self.kill_grace + 60)
        if r.rc == 3:
            raise JobError(f"{self.shell.describe()} knows no job {nid!r}")
        if r.rc != 0:
            raise JobError(f"could not cancel job {nid} on {self.shell.describe()}: {r.message}")

    def list_ids(self) -> list[str]:
        """Every job folder, oldest first."""
        code = self._root() + '[ -d "$root" ] || exit 0\ncd "$root" && ls -1tr\n'
        r = self.shell.run(code)
        if r.rc != 0:
            raise JobError(f"could not list jobs on {self.shell.describe()}: {r.message}")
        return [i for i in r.out.split() if _ID.match(i)]
