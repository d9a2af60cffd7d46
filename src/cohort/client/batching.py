"""Quick calls submitted in a burst travel together.

`Executor.submit` of a function that is known to take well under a
millisecond per call, made while earlier tasks are still out, does not
become a task of its own: it joins the client's open *batch* for that
function. The client's I/O thread sends the open batch as one load-balanced
task when it next runs (a full batch is closed and waits for it); the engine runs
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
one; once the batch runs, `cancel()` returns False. The controller gives a
batch to an engine with nothing else in flight (for up to `BATCH_WAIT`
seconds of waiting), so its calls do not wait in a busy engine's queue,
where they could no longer be cancelled.

Threads: `submit` (any user thread) only pickles the call and appends it;
batches are sent by the I/O thread (or `Executor.shutdown`). No lock of this
module is held while a future completes, so user callbacks may submit and
cancel freely.
"""

from __future__ import annotations

import copy
import threading
import types
import weakref
from concurrent.futures import Future, InvalidStateError

from ..errors import ControllerError, error_from_content
from ..wire.serialize import Serialized, serialize, serialize_function
from ..wire.weakmap import WeakIdMap
from .asyncresult import Waiting, _cancel_and_notify, _mark_running
from .lbview import task_header

QUICK = 0.002            # seconds per call: functions this quick are batched
BATCH_SECONDS = 0.005    # a batch carries about this much work at most
MAX_BATCH = 1000         # calls per batch at most
_KNOWN = 256             # callables without weak references whose durations are remembered
_SENDING = object()      # BatchedFuture.batch while its batch is being sent


class BatchedFuture(Waiting, Future):
    """The future of one call sent in a batch (see the module's text).

    `batch` is the AsyncResult of the task that carries it (its `stdout`,
    `msg_ids`, timings), None until sent, and `index` its place there.
    """

    def __init__(self, batcher: "SubmitBatcher", call: Serialized):
        super().__init__()
        self._batcher = batcher
        self._call = call
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
        return ar is not None and ar is not _SENDING and ar.running() and _mark_running(self)

    def __repr__(self) -> str:
        return f"<BatchedFuture {self._state.lower()} (call {self.index} of a batch)>"


class CallTimes:
    """Seconds per call of the functions a client ran, learned from result timings.

    Held weakly where a function allows it, so a closure over big data is not
    kept alive by being remembered; other callables (builtins) in a small
    dict. Unhashable callables are never remembered.
    """

    def __init__(self):
        self._weak = WeakIdMap()
        self._strong: dict = {}

    def get(self, fn):
        fn = _code_of(fn)
        per_call = self._weak.get(fn)  # by identity: no hashing, nothing made
        if per_call is None and self._strong:
            try:
                per_call = self._strong.get(fn)
            except TypeError:  # unhashable
                pass
        return per_call

    def learn(self, fn, per_call: float) -> None:
        fn = _code_of(fn)
        try:
            table = self._weak if _weakrefable(fn) else self._strong
            old = table.get(fn)
            table[fn] = per_call if old is None else 0.7 * old + 0.3 * per_call
            if len(self._strong) > _KNOWN:
                self._strong.pop(next(iter(self._strong)), None)
        except (TypeError, RuntimeError):  # unhashable; another thread evicting meanwhile
            pass


def _code_of(fn):
    """A bound method (``obj.f``, a new object at each access) counts as its function."""
    return fn.__func__ if isinstance(fn, types.MethodType) else fn


def _same(fn, other) -> bool:
    """The same callable: identical, or the same method of the same object."""
    return fn is other or (isinstance(fn, types.MethodType) and isinstance(other, types.MethodType)
                            and fn.__func__ is other.__func__ and fn.__self__ is other.__self__)


def _same_bytes(a: Serialized, b: Serialized) -> bool:
    """Two pickled functions are the same bytes (a cached one is the same object)."""
    return a is b or (len(a.frames) == len(b.frames)
                      and all(bytes(x) == bytes(y) for x, y in zip(a.frames, b.frames)))


def _weakrefable(fn) -> bool:
    try:
        weakref.ref(fn)
    except TypeError:
        return False
    return True


class _Batch:
    """What the client knows of one sent batch."""

    __slots__ = ("fn", "shipped", "futs", "cancelling", "settled")

    def __init__(self, fn, shipped, futs: list):
        self.fn = fn
        self.shipped = shipped  # the function as pickled when its calls were submitted
        self.futs = futs
        self.cancelling: set = set()  # calls whose cancel asked to withdraw the batch
        self.settled = False          # withdrawn, its other calls sent again


class SubmitBatcher:
    """Collects the quick calls of one executor into batches."""

    def __init__(self, view):
        self._view = view
        self._client = view.client
        self._cond = threading.Condition()  # guards everything below
        self._fn = None
        self._shipped = None     # `_fn` pickled when the open batch's first call was submitted
        self._open: list = []    # BatchedFutures of the open batch (all calls of `_fn`)
        self._limit = 1
        self._ready: list = []   # (fn, shipped, futures) of closed batches, to send in order
        self._scheduled = False  # a flush is due on the I/O thread

    # --- deciding -----------------------------------------------------------------
    def wants(self, fn) -> bool:
        """Batch a call of `fn` now? Only quick functions, when other tasks are out."""
        view = self._view
        if view.after is not None or view.follow is not None or view.policy.wire():
            return False
        per_call = self._client._call_times.get(fn)
        return per_call is not None and per_call < QUICK and bool(self._client._pending)

    def learn(self, fn, ar, calls: int = 1) -> None:
        """Remember how long a call of `fn` took on its engine (from `ar`'s timings)."""
        h = ar._headers[0] if ar._headers else None
        if not h or "started" not in h or "completed" not in h:
            return
        self._client._call_times.learn(fn, (h["completed"] - h["started"]) / max(1, calls))

    # --- batching -----------------------------------------------------------------
    def add(self, fn, args: tuple, kwargs: dict) -> BatchedFuture:
        """A future for ``fn(*args, **kwargs)`` in the open batch. The call is
        pickled now, as an unbatched submit's would be: later changes to the
        arguments do not travel, and what cannot be pickled raises here."""
        if self._client._closed:
            raise ControllerError("this client is closed")
        shipped = serialize_function(fn)  # as it is now, like an unbatched submit's
        fut = BatchedFuture(self, Serialized(serialize((args, kwargs))))
        with self._cond:
            if self._open and not (_same(fn, self._fn) and _same_bytes(shipped, self._shipped)):
                self._close_open()
            if not self._open:
                self._fn, self._shipped = fn, shipped
                per_call = max(self._client._call_times.get(fn) or QUICK, 1e-6)
                self._limit = max(1, min(MAX_BATCH, int(BATCH_SECONDS / per_call)))
            self._open.append(fut)
            if len(self._open) >= self._limit:
                self._close_open()
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            try:
                self._client._call_soon(self.flush)
            except Exception as e:  # closed meanwhile: nothing unsent will ever leave
                with self._cond:
                    self._take_unsent(fut)
                    unsent = self._open + [f for _, _, futs in self._ready for f in futs]
                    self._open, self._ready, self._scheduled = [], [], False
                _fail_each(unsent, e)
                raise
        return fut

    def _close_open(self) -> None:
        self._ready.append((self._fn, self._shipped, self._open))
        self._open = []

    def flush(self) -> None:
        """Send every batch not sent yet (the I/O thread calls this when it next runs)."""
        with self._cond:
            self._scheduled = False
            if self._open:
                self._close_open()
        while True:
            with self._cond:
                if not self._ready:
                    return
                fn, shipped, futs = self._ready.pop(0)
                for f in futs:
                    f.batch = _SENDING
            if futs:  # (its calls may all have been cancelled)
                self._send(fn, shipped, futs)

    def _send(self, fn, shipped, futs: list) -> None:
        """Send `futs` (marked `_SENDING` by the caller, under the lock) as one task."""
        header = dict(task_header(self._view.policy, None, (), ()), each=len(futs),
                      pol={"batch": 1})  # (only default policies are batched)
        ar = error = None
        try:
            ar = self._client._submit_lb((shipped, *[f._call for f in futs]), header)
            ar._batch = _Batch(fn, shipped, futs)
        except BaseException as e:  # a closed client; an interrupt: nothing may stay _SENDING
            error = e
        finally:
            with self._cond:
                for i, f in enumerate(futs):
                    f.batch, f.index = ar, i
                self._cond.notify_all()
        if error is not None:
            _fail_each(futs, error)
            if not isinstance(error, Exception):
                raise error
            return
        ar.add_done_callback(self._settle)

    def _settle(self, ar) -> None:
        """Resolve the batch's futures from its outcome."""
        batch = ar._batch
        if ar.cancelled():  # withdrawn for a cancel: the other calls go again
            with self._cond:
                batch.settled = True
                mine = [f for f in batch.futs if f in batch.cancelling]
                rest = [f for f in batch.futs if f not in batch.cancelling and not f.done()]
                for f in rest:
                    f.batch = _SENDING
            if rest:  # first: a callback of a cancelled call may cancel one of these
                self._send(batch.fn, batch.shipped, rest)
            for f in mine:
                _cancel_and_notify(f)
            return
        error = ar.exception()
        if error is not None:
            _fail_each(batch.futs, error)
            return
        self.learn(batch.fn, ar, len(batch.futs))
        task_id, engine = ar.msg_ids[0], ar.targets[0]
        for f, (ok, value) in zip(batch.futs, ar.result()):
            try:
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(error_from_content(value, engine, task_id))
            except InvalidStateError:  # cancelled meanwhile
                pass

    # --- cancelling ---------------------------------------------------------------
    def cancel(self, futs) -> list:
        """Cancel what can be of `futs` (BatchedFutures of this batcher); return those."""
        todo = [f for f in futs if not f.done()]
        for _ in range(3):  # again for calls whose batch another cancel withdrew meanwhile
            unsent, by_batch, again = [], {}, []
            with self._cond:
                for f in todo:
                    while f.batch is _SENDING:
                        self._cond.wait(1.0)
                    if f.done():
                        continue
                    if self._take_unsent(f):
                        unsent.append(f)
                    elif f.batch is not None:
                        batch = f.batch._batch
                        if batch.settled:  # sent again in a new batch: look once more
                            again.append(f)
                            continue
                        batch.cancelling.add(f)
                        by_batch.setdefault(id(f.batch), (f.batch, []))[1].append(f)
            for f in unsent:
                _cancel_and_notify(f)
            for ar, mine in by_batch.values():
                withdrawn = False
                try:
                    withdrawn = ar.cancel()
                finally:
                    if not withdrawn:  # it runs (or ran), or no answer: not these
                        with self._cond:
                            ar._batch.cancelling.difference_update(mine)
            todo = again
            if not todo:
                break
        return [f for f in futs if f.cancelled()]

    def _take_unsent(self, f) -> bool:
        """Remove `f` from the open or a closed batch not sent yet; True if it was there."""
        for batch in [self._open] + [futs for _, _, futs in self._ready]:
            if f in batch:
                batch.remove(f)
                return True
        return False


def _fail_each(futs, error: BaseException) -> None:
    """`error` on each future (a copy each, so that tracebacks do not pile up on one)."""
    for f in futs:
        try:
            e = copy.copy(error)
        except Exception:
            e = error
        try:
            f.set_exception(e)
        except InvalidStateError:  # cancelled meanwhile
            pass
