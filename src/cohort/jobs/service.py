"""`JobService` (one per batch system or host) and `Job` (one submitted job)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

from ..errors import JobError, JobTimeout
from .description import JobDescription, JobState
from .shell import LocalShell, Shell, SSHShell
from .template import load_template

log = logging.getLogger(__name__)

#: scheme -> (module, backend class name)
BACKENDS = {
    "local": ("cohort.jobs.process", "ProcessBackend"),
    "ssh": ("cohort.jobs.process", "ProcessBackend"),
    "slurm": ("cohort.jobs.slurm", "SlurmBackend"),
    "sge": ("cohort.jobs.sge", "SGEBackend"),
    "pbs": ("cohort.jobs.pbs", "PBSBackend"),
}


@dataclass
class Status:
    """What a service knows about one job right now."""

    state: JobState
    exit_code: int | None = None
    native_state: str = ""
    message: str = ""


class Backend(ABC):
    """How one kind of service submits, queries and cancels jobs (one module each)."""

    #: the template file name (``<template_name>.sh``)
    template_name = ""
    #: the longest sleep between two polls of `Job.wait`, in seconds
    max_poll = 2.0

    def __init__(self, shell: Shell, *, scheme: str, profile: str | None = None,
                 **unknown) -> None:
        if unknown:
            raise TypeError(f"unknown option(s) for {scheme}://: {', '.join(unknown)}")
        self.shell = shell
        self.scheme = scheme
        self.profile = profile

    def _submit_script(self, command: str, script: str, id_pattern, line=str.strip) -> str:
        """Hand `script` to `command` on standard input; the job id it printed last
        (`line` extracts it from that line). JobError with the command's own words
        if it refused."""
        r = self.shell.run(command, input=script)
        program = command.split()[0]
        if r.rc != 0:
            raise JobError(f"{program} rejected the job:\n{r.message}")
        nid = line(r.out.strip().splitlines()[-1]) if r.out.strip() else ""
        if not id_pattern.match(nid):
            raise JobError(f"{program} printed no job id: {r.out.strip()!r} {r.err.strip()!r}")
        return nid

    @abstractmethod
    def values(self, jd: JobDescription) -> dict[str, object]:
        """Placeholders for the template (see `cohort.jobs.template.base_values`)."""
        ...

    @abstractmethod
    def submit(self, jd: JobDescription, script: str) -> str:
        """Hand `script` to the batch system; the native id. JobError if rejected."""
        ...

    @abstractmethod
    def query(self, ids: list[str]) -> dict[str, Status]:
        """Current status of each job in `ids` (a job the system does not know is left out)."""
        ...

    @abstractmethod
    def cancel(self, native_id: str) -> None:
        ...

    @abstractmethod
    def list_ids(self) -> list[str]:
        """The ids of this user's jobs the service knows."""
        ...

    def forget(self, native_id: str) -> None:
        """Called when a job reached a final state (drop per-job memory)."""


def _parse_url(url: str) -> tuple[str, bool, str | None, str | None, int | None, str]:
    """(scheduler, through_ssh, user, host, port, path) of a service URL."""
    if "://" not in url:
        url = url + "://"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    through_ssh = False
    if scheme.endswith("+ssh"):
        scheme, through_ssh = scheme[:-4], True
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise ValueError(f"unknown job service {url!r}: use one of {known} "
                         f"(slurm+ssh://, sge+ssh://, pbs+ssh:// submit through a login host)")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in job service URL {url!r}") from None
    user = unquote(parts.username) if parts.username else None
    if scheme == "ssh":
        if not host:
            raise ValueError(f"{url!r} names no host: ssh://[user@]host[:port]")
        through_ssh = True
    elif scheme == "local":
        if host and host not in ("localhost",):
            raise ValueError(f"{url!r}: local:// takes no host (use ssh://{host})")
        host = None
    elif host and not through_ssh:
        raise ValueError(f"{url!r}: to submit through a login host use {scheme}+ssh://{host}")
    elif through_ssh and not host:
        raise ValueError(f"{url!r} names no login host: {scheme}+ssh://[user@]host[:port]")
    return scheme, through_ssh, user, host, port, parts.path


class Job:
    """One job: created (`NEW`) by `JobService.create_job`, then `run`; or returned
    by `JobService.submit`/`attach`/`list`.

    `state` asks the service each time it is read until the job is final;
    `wait` polls with a growing interval. `exit_code` is the job's exit status
    (128+N when killed by signal N; None until final, or when the batch system
    does not say, e.g. for a job cancelled before it started).
    """

    def __init__(self, service: "JobService", description: JobDescription | None = None,
                 native_id: str | None = None) -> None:
        self.service = service
        self.description = description
        self.native_id = native_id
        self.script: str | None = None
        self.exit_code: int | None = None
        self.native_state = ""
        self.message = ""
        self._state = JobState.NEW
        self._cancel_requested = False

    def __repr__(self) -> str:
        code = f" exit_code={self.exit_code}" if self._state.final and self.exit_code is not None else ""
        nid = self.native_id if self.native_id is not None else "-"
        return f"<Job {self.service.url} {nid} {self._state.value}{code}>"

    # -- lifecycle --------------------------------------------------------------------------
    def run(self) -> "Job":
        """Submit a NEW job; returns self. JobError (the batch system's words) if rejected."""
        if self._state is not JobState.NEW or self.native_id is not None:
            raise JobError(f"{self!r} was already submitted")
        if self.description is None:
            raise JobError("a job without a description cannot run")
        self.service._submit(self)
        return self

    def cancel(self) -> None:
        """Ask the service to cancel the job (a no-op once it is final).

        The state reads CANCELED once the batch system has acted; `wait()` for it.
        """
        if self.native_id is None:
            self._state = JobState.CANCELED
            return
        if self._state.final:
            return
        self._cancel_requested = True
        self.service._cancel(self)

    @property
    def state(self) -> JobState:
        """The current state (asks the service unless the job is final)."""
        if self.native_id is not None and not self._state.final:
            self.service.refresh([self])
        return self._state

    @property
    def cached_state(self) -> JobState:
        """The state as last seen, without asking the service."""
        return self._state

    def _update(self, status: Status) -> None:
        if status.state is not self._state:
            log.debug("job %s: %s -> %s (%s)", self.native_id, self._state, status.state,
                      status.native_state)
        self._state = status.state
        self.native_state = status.native_state or self.native_state
        if status.exit_code is not None:
            self.exit_code = status.exit_code
        if status.message:
            self.message = status.message

    def wait(self, timeout: float | None = None,
             states: Iterable[JobState] | None = None) -> JobState:
        """Block until the job is final (or in one of `states`); the state reached.

        Polls the service, starting fast and backing off to the service's
        ``max_poll`` seconds. Raises `JobTimeout` after `timeout` seconds (the
        job goes on).
        """
        if self.native_id is None:
            raise JobError(f"{self!r} was never submitted: call run() first")
        targets = set(states or ())
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.05
        failures = 0
        while True:
            try:
                st = self.state
                failures = 0
            except JobError as e:
                # a busy scheduler may time out now and then: retry, but not forever
                failures += 1
                if failures > self.service.query_retries:
                    raise
                log.warning("job %s: could not read its state (%s); retrying", self.native_id, e)
                st = self._state
            if st.final or st in targets:
                return st
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise JobTimeout(f"job {self.native_id} on {self.service.url} is still "
                                 f"{st.value} after {timeout:g} s; it goes on (cancel() it "
                                 f"or wait longer)")
            sleep = interval if deadline is None else min(interval, max(0.0, deadline - now))
            time.sleep(sleep)
            interval = min(interval * 1.5, self.service.max_poll)


class JobService:
    """Submits, watches and cancels jobs on one batch system or host.

    ``url`` is ``local://``, ``ssh://[user@]host[:port]``, ``slurm://``,
    ``sge://``, ``pbs://``, or ``slurm+ssh://``, ``sge+ssh://``,
    ``pbs+ssh://[user@]login-host[:port]`` to run the scheduler's commands on a
    login host. Options: ``template`` (a batch-script template file),
    ``profile`` (whose ``job_templates/`` and ``jobs/`` folders to use),
    ``identity_file``, ``ssh_options`` (``["StrictHostKeyChecking=no", ...]``),
    ``control_master`` (reuse one SSH connection, default True),
    ``state_dir`` (local/ssh: where job records live), ``max_poll`` (longest
    sleep between polls in `Job.wait`), ``query_retries`` (how many failed
    state queries in a row `Job.wait` tolerates), and per-scheduler options
    (see each scheduler's module).
    """

    def __init__(self, url: str = "local://", *, template: str | Path | None = None,
                 profile: str | None = None, identity_file: str | None = None,
                 ssh_options: list[str] | None = None, control_master: bool = True,
                 max_poll: float | None = None, query_retries: int = 10, **options) -> None:
        self.url = url if "://" in url else url + "://"
        scheme, through_ssh, user, host, port, _path = _parse_url(self.url)
        self.scheme = scheme
        self.profile = profile
        self.template = template
        if through_ssh:
            self.shell: Shell = SSHShell(host, user=user, port=port, identity_file=identity_file,
                                         ssh_options=ssh_options, control_master=control_master)
        else:
            self.shell = LocalShell()
        modname, clsname = BACKENDS[scheme]
        cls = getattr(importlib.import_module(modname), clsname)
        self.backend: Backend = cls(self.shell, scheme=scheme, profile=profile, **options)
        self.max_poll = float(max_poll) if max_poll else self.backend.max_poll
        self.query_retries = int(query_retries)
        self._jobs: dict[str, Job] = {}

    def __repr__(self) -> str:
        return f"<JobService {self.url}>"

    def __enter__(self) -> "JobService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the SSH master connection, if any. Jobs go on."""
        self.shell.close()

    # -- public API ---------------------------------------------------------------------------
    def create_job(self, description: JobDescription) -> Job:
        """A NEW job for `description`; `job.run()` submits it."""
        if not isinstance(description, JobDescription):
            raise TypeError(f"create_job needs a JobDescription, not {type(description).__name__}")
        return Job(self, description)

    def submit(self, description: JobDescription) -> Job:
        """Submit `description`; the Job (QUEUED or later). JobError if rejected."""
        return self.create_job(description).run()

    def render(self, description: JobDescription) -> str:
        """The batch script `submit` would hand to the scheduler (for a look)."""
        text = load_template(self.backend.template_name, self.template, self.profile)
        from .template import render
        return render(text, self.backend.values(description))

    def attach(self, native_id: str) -> Job:
        """A Job for a job submitted earlier (by this or another process). JobError if unknown."""
        native_id = str(native_id).strip()
        if native_id in self._jobs:
            job = self._jobs[native_id]
            job.state  # noqa: B018 - refresh
            return job
        job = Job(self, None, native_id)
        status = self.backend.query([native_id]).get(native_id)
        if status is None:
            raise JobError(f"{self.url} knows no job {native_id!r} (finished long ago, or "
                           f"never submitted here)")
        job._update(status)
        self._jobs[native_id] = job
        return job

    def list(self) -> list[Job]:
        """The jobs this service knows: for schedulers, the user's jobs in the queue;
        for local and SSH, every job recorded in the state folder."""
        ids = self.backend.list_ids()
        statuses = self.backend.query(ids) if ids else {}
        jobs = []
        for nid in ids:
            st = statuses.get(nid)
            if st is None:
                continue
            job = self._jobs.get(nid) or Job(self, None, nid)
            if not job._state.final:
                job._update(st)
            self._jobs.setdefault(nid, job)
            jobs.append(job)
        return jobs

    # -- used by Job ----------------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        jd = job.description
        script = self.render(jd)
        job.script = script
        nid = self.backend.submit(jd, script)
        job.native_id = nid
        job._state = JobState.QUEUED
        self._jobs[nid] = job
        log.info("submitted job %s to %s", nid, self.url)

    def refresh(self, jobs: Iterable[Job]) -> None:
        """Update the state of many jobs of this service with one query."""
        jobs = list(jobs)
        ids = [j.native_id for j in jobs if j.native_id is not None and not j._state.final]
        if not ids:
            return
        statuses = self.backend.query(ids)
        for job in jobs:
            st = statuses.get(job.native_id)
            if st is None:
                # gone from the batch system without a final record we could read
                if job._state.final:
                    continue
                st = Status(JobState.CANCELED if job._cancel_requested else JobState.FAILED,
                            message=f"job {job.native_id} is no longer known to {self.url}")
            job._update(st)
            if job._state.final:
                self.backend.forget(job.native_id)

    def _cancel(self, job: Job) -> None:
        self.backend.cancel(job.native_id)
        log.info("cancelled job %s on %s", job.native_id, self.url)
