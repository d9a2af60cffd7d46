"""Quick calls submitted in a burst travel together.

`Executor.submit` of a function that is known to take well under a
millisecond per call, made while earlier tasks are still out, does not
become a task of its own: it joins the client's open *batch* for that
function. The client's I/O thread sends the open batch as one load-balanced
task when it next runs (or at once when the batch is full); the engine runs
each call on its own and returns each outcome, value or error with its
remote traceback, so every future resolves exactly as if its call had been
sent alone. A burst of tiny tasks so costs one message per batch instead of
one per call, on the client, the controller and the engines alike.

Nothing is batched before the function's duration is known (its first calls
go alone), when the client is idle (a lone call waits for nothing), or under
a non-default policy or dependencies (a timeout or retries apply per task):
then `submit` sends a task per call as before.

A batched future cancels like any other: while its batch waits at the
controller, the batch is withdrawn and its other calls sent again as a new
one; once the batch runs, `cancel()` returns False.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING

from ..errors import error_from_content
from ..wire.serialize import serialize_function
from .asyncresult import _cancel_and_notify
from .lbview import task_header

QUICK = 0.002            # seconds per call: functions this quick are batched
BATCH_SECONDS = 0.005    # a batch carries about this much work at most
MAX_BATCH = 1000         # calls per batch at most
_KNOWN = 256             # functions whose durations the client remembers


class BatchedFuture(Future):
    """The future of one call sent in a batch (see the module's text).

    `batch` is the AsyncResult of the task that carries it (None until sent)
    and `index` its place there.
    """

    def __init__(self, batcher: "SubmitBatcher", args: tuple, kwargs: dict):
        super().__init__()
        self._batcher = batcher
        self._call = (args, kwargs)
        self.batch = None
        self.index = 0

    def cancel(self) -> bool:
        """Cancel unless its batch reached an engine (see `AsyncResult.cancel`)."""
        if self.done():
            return self.cancelled()
        return self in self._batcher.cancel([self])

    def running(self) -> bool:
        """True once its batch was sent to an engine, until it is done."""
        if self.done():
            return False
        if Future.running(self):
            return True
        ar = self.batch
        if ar is None or not ar.running():
            return False
        with self._condition:
            if self._state == _PENDING:
                self._state = _RUNNING
            return self._state == _RUNNING

    def __repr__(self) -> str:
        return f"<BatchedFuture {self._state.lower()} (call {self.index} of a batch)>"


class SubmitBatcher:
    """Collects the quick calls of one executor into batches."""

    def __init__(self, view):
        self._view = view
        self._client = view.client
        self._lock = threading.RLock()
        self._fn = None
        self._open: list = []   # BatchedFutures not sent yet (all calls of `_fn`)
        self._limit = 1

    # --- deciding -----------------------------------------------------------------
    def wants(self, fn) -> bool:
        """Batch a call of `fn` now? Only quick functions, when other tasks are out."""
        view = self._view
        if view.after is not None or view.follow is not None or view.policy.wire():
            return False
        try:
            per_call = self._client._call_times.get(fn)
        except TypeError:  # an unhashable callable: never batched
            return False
        return per_call is not None and per_call < QUICK and bool(self._client._pending)

    def learn(self, fn, ar, calls: int = 1) -> None:
        """Remember how long a call of `fn` took on its engine (from `ar`'s timings)."""
        h = ar._headers[0] if ar._headers else None
        if not h or "started" not in h or "completed" not in h:
            return
        times = self._client._call_times
        per_call = (h["completed"] - h["started"]) / max(1, calls)
        try:
            old = times.pop(fn, None)  # re-inserted last: the dict's order is its age
        except TypeError:  # unhashable
            return
        times[fn] = per_call if old is None else 0.7 * old + 0.3 * per_call
        if len(times) > _KNOWN:
            times.pop(next(iter(times)))

    # --- batching -----------------------------------------------------------------
    def add(self, fn, args: tuple, kwargs: dict) -> BatchedFuture:
        fut = BatchedFuture(self, args, kwargs)
        with self._lock:
            if self._open and fn is not self._fn:
                self._send_open()
            if not self._open:
                self._fn = fn
                per_call = max(self._client._call_times.get(fn, QUICK), 1e-6)
                self._limit = max(1, min(MAX_BATCH, int(BATCH_SECONDS / per_call)))
                self._client._call_soon(self.flush)
            self._open.append(fut)
            if len(self._open) >= self._limit:
                self._send_open()
        return fut

    def flush(self) -> None:
        """Send the open batch (the client's I/O thread calls this when it next runs)."""
        with self._lock:
            if self._open:
                self._send_open()

    def _send_open(self) -> None:
        futs, self._open = self._open, []
        self._send(self._fn, futs)

    def _send(self, fn, futs: list) -> None:
        calls = [f._call for f in futs]
        header = dict(task_header(self._view.policy, None, (), ()), each=len(calls))
        ar = self._client._submit_lb((serialize_function(fn), (calls, {})), header)
        ar._batch = (fn, futs, set())  # set: calls whose cancel withdrew the batch
        for i, f in enumerate(futs):
            f.batch, f.index = ar, i
        ar.add_done_callback(self._settle)

    def _settle(self, ar) -> None:
        """Resolve the batch's futures from its outcome."""
        fn, futs, cancelling = ar._batch
        if ar.cancelled():  # withdrawn for a cancel: the rest go again
            rest = [f for f in futs if f not in cancelling and not f.done()]
            for f in futs:
                if f in cancelling:
                    _cancel_and_notify(f)
            if rest:
                with self._lock:
                    self._send(fn, rest)
            return
        error = ar.exception()
        if error is None:
            self.learn(fn, ar, len(futs))
            outcomes = ar.result()
            task_id, engine = ar.msg_ids[0], ar.targets[0]
        for i, f in enumerate(futs):
            try:
                if error is not None:
                    f.set_exception(error)
                elif outcomes[i][0]:
                    f.set_result(outcomes[i][1])
                else:
                    f.set_exception(error_from_content(outcomes[i][1], engine, task_id))
            except InvalidStateError:  # cancelled meanwhile
                pass

    # --- cancelling ---------------------------------------------------------------
    def cancel(self, futs) -> list:
        """Cancel what can be of `futs` (BatchedFutures of this batcher); return those."""
        done = []
        by_batch: dict = {}
        with self._lock:
            for f in futs:
                if f.done():
                    if f.cancelled():
                        done.append(f)
                elif f in self._open:
                    self._open.remove(f)
                    _cancel_and_notify(f)
                    done.append(f)
                elif f.batch is not None:
                    by_batch.setdefault(id(f.batch), (f.batch, []))[1].append(f)
        for ar, mine in by_batch.values():
            cancelling = ar._batch[2]
            cancelling.update(mine)
            if ar.cancel():  # it waited at the controller: withdrawn (see _settle)
                done.extend(mine)
            else:
                cancelling.difference_update(mine)
        return done
