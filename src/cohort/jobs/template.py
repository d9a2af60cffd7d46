"""Batch scripts from one readable template per scheduler.

A template is a shell script with ``${name}`` placeholders (Python's
`string.Template`; unknown ``$NAMES`` such as ``$SLURM_JOB_ID`` are left for
the shell). One rule makes optional directives possible without a template
language: **a line whose placeholders are all empty is left out** — so
``#SBATCH --partition=${queue}`` disappears when no queue is given.

Where a template comes from, first found wins:

1. ``JobService(url, template="path/to/file.sh")``;
2. ``profile_dir()/job_templates/<scheduler>.sh`` (e.g. ``slurm.sh``);
3. the one shipped in ``cohort/jobs/templates/``.

Placeholders every template may use (empty when not set):
``name``, ``executable``, ``arguments``, ``command`` (executable and arguments,
shell-quoted, behind the launcher if any), ``launcher``, ``environment``
(``export K=V`` lines), ``directory``, ``directory_q`` (shell-quoted),
``stdout``, ``stderr``, ``nodes``, ``processes_per_node``, ``total_processes``,
``gpus_per_process``, ``total_gpus``, ``walltime`` (``HH:MM:SS``),
``walltime_seconds``, ``walltime_minutes``, ``queue``, ``account``,
``scheduler_options`` (one directive line per option), plus what a scheduler
adds (see each scheduler's module).
"""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
import string
from importlib import resources
from pathlib import Path

from ..profile import profile_dir
from .description import JobDescription, format_walltime

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$(?:\{([_a-zA-Z][_a-zA-Z0-9]*)\}|([_a-zA-Z][_a-zA-Z0-9]*))")


def builtin_template(scheduler: str) -> str:
    """The text of the template shipped with cohort for `scheduler`."""
    return resources.files("cohort.jobs").joinpath("templates", f"{scheduler}.sh").read_text()


def template_path(scheduler: str, template: str | Path | None = None,
                  profile: str | None = None) -> Path | None:
    """The user's template to use for `scheduler`, or None for the shipped one."""
    if template:
        p = Path(template).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"job template {p} does not exist")
        return p
    p = profile_dir(profile) / "job_templates" / f"{scheduler}.sh"
    return p if p.is_file() else None


def load_template(scheduler: str, template: str | Path | None = None,
                  profile: str | None = None) -> str:
    """The template text for `scheduler` (see the module docstring for the order)."""
    p = template_path(scheduler, template, profile)
    if p is not None:
        log.debug("using job template %s", p)
        return p.read_text()
    return builtin_template(scheduler)


def render(text: str, values: dict[str, object]) -> str:
    """Fill `text`, dropping each line whose placeholders (known ones) are all empty."""
    out = []
    for line in text.splitlines():
        names = [a or b for a, b in _PLACEHOLDER.findall(line)]
        known = [n for n in names if n in values]
        if known and all(values[n] in (None, "", [], 0) for n in known):
            continue
        clean = {k: "" if v is None else str(v) for k, v in values.items()}
        out.append(string.Template(line).safe_substitute(clean))
    return "\n".join(out) + "\n"


def base_values(jd: JobDescription, directive: str = "") -> dict[str, object]:
    """The placeholders every scheduler shares, for `jd`.

    `directive` is the scheduler's directive prefix (``#SBATCH``) put before each
    of ``jd.scheduler_options``.
    """
    secs = jd.walltime_seconds
    exe_args = shlex.join([jd.executable, *jd.arguments])
    command = f"{jd.launcher} {exe_args}" if jd.launcher else exe_args
    env = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in jd.environment.items())
    opts = "\n".join(f"{directive} {o}".strip() for o in jd.scheduler_options)
    return {
        "name": jd.name or _job_name(jd.executable),
        "executable": shlex.quote(jd.executable),
        "arguments": shlex.join(jd.arguments),
        "command": command,
        "launcher": jd.launcher,
        "environment": env,
        "directory": jd.directory,
        "directory_q": shlex.quote(jd.directory) if jd.directory else None,
        "stdout": _under(jd.directory, jd.stdout),
        "stderr": _under(jd.directory, jd.stderr),
        "nodes": jd.nodes,
        "processes_per_node": jd.processes_per_node,
        "total_processes": jd.total_processes,
        "gpus_per_process": jd.gpus_per_process,
        "total_gpus": jd.gpus_per_process * jd.total_processes,
        "walltime": format_walltime(secs) if secs else None,
        "walltime_seconds": secs,
        "walltime_minutes": (secs + 59) // 60 if secs else None,
        "queue": jd.queue,
        "account": jd.account,
        "scheduler_options": opts,
    }


def _under(directory: str | None, path: str | None) -> str | None:
    """`path` made relative to the job's `directory` (not to wherever qsub runs)."""
    if not path or not directory or posixpath.isabs(path):
        return path
    return posixpath.join(directory, path)


def _job_name(executable: str) -> str:
    base = Path(executable).name or "job"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    if not name[0].isalpha():
        name = "j" + name
    return name[:15]
