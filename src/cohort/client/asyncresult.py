"""AsyncResult: the future every cohort call returns at once."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as _FutureTimeout
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING

from ..errors import CompositeError, RemoteError, TimeoutError, error_from_content


class Waiting:
    """get/wait/ready/successful on top of a Future (AsyncResult, MapResult)."""

    def get(self, timeout: float | None = None):
        """The value, waiting up to `timeout` seconds (forever if None)."""
        try:
            return self.result(timeout)
        except _FutureTimeout:
            if self.done():  # the task's own error is a TimeoutError (TaskTimeout)
                raise
            raise TimeoutError(f"{self!r} did not finish within {timeout} s (it is still "
                               f"running; call get() again, or abort it)") from None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds; True if finished."""
        try:
            self.exception(timeout)
        except _FutureTimeout:
            return False
        except Exception:
            pass
        return True

    def ready(self) -> bool:
        return self.done()

    def successful(self) -> bool:
        """True if finished without error (False while still running)."""
        return self.done() and not self.cancelled() and self.exception(0) is None


class AsyncResult(Waiting, Future):
    """The outcome of one call on one or more engines.

    A `concurrent.futures.Future` (so `as_completed`, `wait` and callbacks
    work) and awaitable. `get()` gives the value: for a call on one engine
    (``rc[0]``) the plain value, for several a list in target order. Failed
    engines raise a `RemoteError` (several: a `CompositeError` listing each).
    """

    def __init__(self, client, msg_ids: list, targets: list, kind: str,
                 single: bool = False, reduce=None, payloads=()):
        super().__init__()
        self._client = client
        self.msg_ids = list(msg_ids)
        self.targets = list(targets)
        self.kind = kind
        self._single = single
        self._reduce = reduce
        self._payloads = payloads
        n = len(self.msg_ids)
        self._values = [None] * n
        self._errors: list = [None] * n
        self._headers: list = [None] * n
        self._outputs = None    # per engine {"stdout": [...], "stderr": [...]}, once any came
        self._exec_results: list = [None] * n
        self._exec_counts: list = [None] * n
        self._displays = None   # per engine [rich output], once any came
        self._events: list = []  # (index, "stdout" | "stderr" | "display", text or content), in order
        self.quiet = False      # True: the client does not print its output as it comes (%px shows it)
        self._left = n
        self._lock = threading.Lock()
        self.retries = 0        # times the controller resubmitted it (load-balanced tasks)
        self._parent = None     # the MapResult this is a chunk of
        self.submitted = time.time()
        self.received: float | None = None
        if n == 0:
            self._finish()

    # --- delivery (client I/O thread) --------------------------------------
    def _deliver(self, index: int, header: dict, content: dict, objects) -> None:
        if header.get("status") == "ok":
            self._values[index] = objects[0] if objects else None
            if "execute_result" in content:
                self._exec_results[index] = content["execute_result"]
            self._exec_counts[index] = content.get("execution_count")
        else:
            self._errors[index] = error_from_content(content, header.get("e"), self.msg_ids[index])
        self._headers[index] = header
        if self.targets[index] is None:  # load-balanced: now we know where it ran
            self.targets[index] = header.get("e")
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _retrying(self) -> None:
        self.retries += 1
        if self._parent is not None:
            self._parent._retrying()

    def _stream(self, index: int, name: str, text: str) -> None:
        self._output_lists()[index][name].append(text)
        self._events.append((index, name, text))

    def _display(self, index: int, content: dict) -> None:
        self._display_lists()[index].append(content)
        self._events.append((index, "display", content))

    def _finish(self) -> None:
        if self.done():
            return
        self.received = time.time()
        for p in self._payloads:
            p.release()
        self._payloads = ()
        errors = [e for e in self._errors if e is not None]
        if errors:
            remote = [e for e in errors if isinstance(e, RemoteError)]
            if len(errors) == 1 or len(remote) != len(errors):
                self.set_exception(errors[0])
            else:
                self.set_exception(CompositeError(errors))
            return
        value = self._values[0] if self._single else list(self._values)
        if self._reduce is not None:
            try:
                value = self._reduce(value)
            except Exception as e:
                self.set_exception(e)
                return
        self.set_result(value)

    # --- the user's side ---------------------------------------------------
    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def abort(self) -> None:
        """Drop this call's tasks that have not started yet (they raise TaskAborted)."""
        self._client.abort(self)

    def cancel(self) -> bool:
        """Cancel if no part of the call has been sent to an engine yet.

        True: nothing ran and the future is cancelled. False: it runs (or
        ran) to the end as usual. `abort()` drops what it can instead.
        """
        if self.done():
            return self.cancelled()
        if Future.running(self):  # `running()` saw it on an engine: too late
            return False
        if not self._client._cancel(self.msg_ids):
            return False
        for p in self._payloads:
            p.release()
        return _cancel_and_notify(self)

    def running(self) -> bool:
        """True once part of the call was sent to an engine, until it is done.

        Asks the controller (one round trip) until the answer is yes; from
        then on `cancel()` returns False without asking, as
        `concurrent.futures` promises for a running future.
        """
        if self.done():
            return False
        if Future.running(self):
            return True
        return self._client._started(self.msg_ids) and _mark_running(self)

    def get_dict(self, timeout: float | None = None) -> dict:
        """{engine id: value} (waits like `get`)."""
        self.wait(timeout)
        if not self.done():
            raise TimeoutError(f"{self!r} did not finish within {timeout} s")
        if self.exception() is not None:
            raise self.exception()
        return dict(zip(self.targets, self._values))

    # --- output and timings ------------------------------------------------
    def _output_lists(self) -> list:
        if self._outputs is None:  # made on demand: most calls print nothing
            self._outputs = [{"stdout": [], "stderr": []} for _ in self.msg_ids]
        return self._outputs

    def _display_lists(self) -> list:
        if self._displays is None:
            self._displays = [[] for _ in self.msg_ids]
        return self._displays

    def _per_engine(self, values):
        return values[0] if self._single else list(values)

    @property
    def stdout(self):
        """Captured stdout: a string for one engine, else a list per engine."""
        return self._per_engine(["".join(o["stdout"]) for o in self._output_lists()])

    @property
    def stderr(self):
        return self._per_engine(["".join(o["stderr"]) for o in self._output_lists()])

    @property
    def execute_result(self):
        """repr of the last expression of executed code, per engine."""
        return self._per_engine(self._exec_results)

    @property
    def outputs(self):
        """Rich output the engine code displayed (``display(obj)``, figures):
        ``{"data": {mime: ...}, "metadata": {...}}`` dicts, a list for one
        engine, else a list per engine. ``"result": True`` marks the rich
        value of a cell's last expression."""
        return self._per_engine([list(d) for d in self._display_lists()])

    @property
    def execution_count(self):
        """The engine's cell number of executed code, per engine."""
        return self._per_engine(self._exec_counts)

    def _times(self, key):
        return self._per_engine([h.get(key) if h else None for h in self._headers])

    @property
    def started(self):
        return self._times("started")

    @property
    def completed(self):
        return self._times("completed")

    @property
    def elapsed(self) -> float:
        """Seconds from submission to the last result (or until now)."""
        return (self.received or time.time()) - self.submitted

    @property
    def wall_time(self) -> float | None:
        """Seconds from the first start to the last completion on the engines."""
        hs = [h for h in self._headers if h]
        if not hs:
            return None
        return max(h["completed"] for h in hs) - min(h["started"] for h in hs)

    @property
    def progress(self) -> int:
        return len(self.msg_ids) - self._left

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = None) -> bool:
        """Wait, showing a progress bar of engines done (terminal or notebook); True if finished."""
        from tqdm.auto import tqdm
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=len(self.msg_ids), unit="engine", desc=self.kind) as bar:
            while not self.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.wait(interval)
                bar.update(self.progress - bar.n)
            bar.update(self.progress - bar.n)
        return self.done()

    def display_outputs(self, file=None) -> None:
        """Print each engine's captured output with an ``[stdout:ID]`` prefix
        (inside IPython, its rich output and results too, labelled per engine)."""
        if file is None:
            from . import pxdisplay
            if pxdisplay.in_ipython():
                pxdisplay.show_result(self)
                return
        file = file or sys.stdout
        for eid, out in zip(self.targets, self._output_lists()):
            for name in ("stdout", "stderr"):
                text = "".join(out[name])
                if text:
                    print(f"[{name}:{eid}] " + text.rstrip("\n").replace("\n", f"\n[{name}:{eid}] "),
                          file=file)

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.progress}/{len(self.msg_ids)} done"
        if self.done() and self.exception() is not None:
            state = "failed"
        return f"<AsyncResult({self.kind}) {state} on engines {self.targets}>"

    def _repr_html_(self) -> str:
        from .reprs import async_result_html
        return async_result_html(self)


def _mark_running(fut: Future) -> bool:
    """Its task was seen on an engine: RUNNING from now on, unless it finished or
    was cancelled meanwhile (then False)."""
    with fut._condition:
        if fut._state == _PENDING:
            fut._state = _RUNNING
        return fut._state == _RUNNING


def _cancel_and_notify(fut: Future) -> bool:
    """Cancel a Future and tell `wait`/`as_completed` waiters at once (an
    executor would do the second step when the task's turn came)."""
    if not Future.cancel(fut):
        return False
    fut.set_running_or_notify_cancel()
    return True
