"""Every public error cohort raises, each saying what went wrong and what to do."""

from __future__ import annotations

import builtins


class CohortError(Exception):
    """Base class of all cohort errors."""


class ConnectionFileError(CohortError):
    """The connection file is missing, unreadable or malformed."""


class ClusterAlreadyRunning(CohortError):
    """`cohort start` found a cluster already running in this profile."""


class NoClusterRunning(CohortError):
    """There is no running cluster in this profile."""


class ClusterStartError(CohortError):
    """A controller or engine did not come up."""


class TimeoutError(CohortError, builtins.TimeoutError):
    """A wait ran out of time; the work may still finish later."""


class NoEnginesError(CohortError):
    """No engine is connected (or none of the requested targets is)."""


class ControllerError(CohortError):
    """The controller refused a request or could not be reached."""


class TaskAborted(CohortError):
    """The task was dropped from its queue by `Client.abort` before it ran."""


class TaskTimeout(CohortError, builtins.TimeoutError):
    """A task ran longer than its policy's `timeout` and was stopped.

    The engine was interrupted (and restarted if it did not stop); it is back
    in service. Raise the timeout or split the work if the task needs longer.
    """


class TaskCancelled(CohortError):
    """The task was cancelled before it finished: a task of its group failed
    under ``on_failure="cancel_rest"``, or it was cancelled by request."""


class DependencyError(CohortError):
    """A task's ``after=``/``follow=`` dependencies failed or cannot be met,
    so it was not run."""


class CoprocessTimeout(TaskTimeout):
    """An external program run by `cohort.coprocess` ran past its timeout.

    Its whole process tree was killed; `stdout` and `stderr` hold what it
    wrote before that, and `args` the command line.
    """

    def __init__(self, message: str, args=None, stdout="", stderr="", timeout=None):
        super().__init__(message)
        self.cmd = args
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout

    def __reduce__(self):
        return (type(self), (str(self), self.cmd, self.stdout, self.stderr, self.timeout))


class EngineError(CohortError):
    """The engine running (or queued to run) a task died or left.

    `engine_id` names it. The task's outcome is unknown; resubmit it if it is
    safe to run twice.
    """

    def __init__(self, message: str, engine_id: int | None = None):
        super().__init__(message)
        self.engine_id = engine_id


class RemoteError(CohortError):
    """An exception raised by user code on an engine.

    Carries the engine id, the remote exception's type name and message, and
    the full remote traceback as text.
    """

    def __init__(self, engine_id: int | None, ename: str, evalue: str,
                 traceback: str = "", task_id: str | None = None):
        super().__init__(engine_id, ename, evalue, traceback)
        self.engine_id = engine_id
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.task_id = task_id

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        head = f"{where}{self.ename}: {self.evalue}"
        if self.traceback:
            return f"{head}\n{self.traceback.rstrip()}"
        return head

    def __reduce__(self):
        return (type(self), (self.engine_id, self.ename, self.evalue,
                             self.traceback, self.task_id))

    def _render_traceback_(self) -> list:
        """IPython's hook: each engine's remote traceback, highlighted."""
        from ._traceback import render_remote
        return render_remote(self)


class CompositeError(RemoteError):
    """Several engines failed in one call; `errors` holds each one's RemoteError."""

    def __init__(self, errors: list):
        self.errors = list(errors)
        first = self.errors[0]
        RemoteError.__init__(self, first.engine_id, first.ename, first.evalue,
                             first.traceback, first.task_id)

    def __str__(self) -> str:
        lines = [f"{len(self.errors)} engines raised exceptions:"]
        for err in self.errors:
            lines.append(str(err))
        return "\n".join(lines)

    def __reduce__(self):
        return (type(self), (self.errors,))

    def raise_first(self):
        """Raise the first engine's error on its own."""
        raise self.errors[0]



# --- object store and catalog (cohort.store) ---------------------------------

class StoreError(CohortError):
    """The object store could not do what was asked (bad URL, policy, backend failure)."""


class ObjectNotFound(StoreError, KeyError):
    """No object with this OID exists in the store (never written, deleted, or only reserved)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class ObjectExists(StoreError):
    """The OID already holds an object: `putoid` writes each reserved OID once."""


class CorruptObject(StoreError):
    """Every copy of an object failed its checksum; `cohort store fsck` reports what is left."""


class CatalogError(StoreError):
    """The metadata catalog refused a record or a query (bad footprint, time or filter)."""


# --- batch jobs (cohort.jobs) -------------------------------------------------

class JobError(CohortError):
    """A batch job could not be submitted, queried or cancelled.

    When the batch system said why, its own message is in the text verbatim.
    """


class JobTimeout(JobError, builtins.TimeoutError):
    """`Job.wait(timeout=...)` ran out of time; the job is still in the batch system."""


def error_from_content(content: dict, engine_id: int | None = None,
                       task_id: str | None = None) -> Exception:
    """Build the client-side exception for a failed task's reply content."""
    ename = content.get("ename", "Error")
    evalue = content.get("evalue", "")
    eid = content.get("engine", engine_id)
    if ename == "TaskAborted":
        return TaskAborted(evalue)
    if ename == "EngineError":
        return EngineError(evalue, eid)
    if ename in _PLAIN:
        return globals()[ename](evalue)
    return RemoteError(eid, ename, evalue, content.get("traceback", ""), task_id)


_PLAIN = frozenset({"NoEnginesError", "ControllerError", "TaskTimeout", "TaskCancelled",
                    "DependencyError"})
