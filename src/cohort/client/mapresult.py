"""MapResult: a load-balanced map, streamed in chunks, iterable as results come."""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from concurrent.futures import CancelledError, Future

from .. import _remote
from ..errors import TaskCancelled, TimeoutError
from .asyncresult import Waiting, _cancel_and_notify

# automatic chunks aim at this much work each: with 0.02 s, 10 ms items lost ~6 % to
# per-task costs on a 2-vCPU machine, with 0.1 s 2.5 % (and tiny items go faster)
CHUNK_SECONDS = 0.1
MAX_CHUNK = 10_000     # items per chunk at most (automatic)


class MapResult(Waiting, Future):
    """Results of `LoadBalancedView.map`: a Future of the whole list, and an iterable.

    ``for r in ar`` yields values as they arrive (in order unless the map was
    ``ordered=False``); a failed chunk raises its error there. `get()` waits
    for all. `progress`, `failed` and `retried` count items and chunks;
    `wait_interactive()` shows a progress bar. At most a bounded number of
    chunks are out at once: the input is read only as fast as engines work.
    """

    def __init__(self, view, f, sequences, chunksize, ordered, keep, policy, after, follow,
                 progress=None):
        super().__init__()
        self.show_progress = progress
        self._view = view
        self._client = view.client
        self._f = f
        self._chunksize = chunksize
        self.ordered = ordered
        self._keep = keep
        self._policy = policy
        self._deps = (after, follow)
        self.group = self._client.session.msg_id()
        self.length = _length(sequences)
        self._iter = zip(*[s.iter() if isinstance(s, MapResult) else iter(s)  # no bar there
                           for s in sequences])
        self.msg_ids: list = []
        self._sizes: list = []
        self._chunks: dict = {}      # chunk index -> values (until consumed, if not kept)
        self._errors: dict = {}      # chunk index -> exception
        self._arrived: list = []     # chunk indices in the order they finished
        self._cond = threading.Condition()
        self._item_time: float | None = None
        self._stop = False
        self._feeding_done = threading.Event()
        self._feed_error: BaseException | None = None
        self.progress = 0            # items finished (ok or not)
        self.failed = 0              # chunks failed
        self.retried = 0             # chunk retries
        self.submitted = time.time()
        self._window = threading.Semaphore(self._max_out())
        self._feeder = threading.Thread(target=self._feed, name="cohort-map-feeder", daemon=True)
        self._feeder.start()

    def _max_out(self) -> int:
        return 4 * max(1, len(self._client.ids)) + 4

    # --- feeding (its own thread) -------------------------------------------------
    def _feed(self) -> None:
        from .lbview import dependency_ids
        try:
            after, follow = (dependency_ids(d) for d in self._deps)
            while not self._stop:
                size = self._next_size()
                items = list(itertools.islice(self._iter, size))
                if not items:
                    break
                while not self._window.acquire(timeout=0.2):
                    if self._stop:
                        return
                if self._stop:
                    return
                cols = tuple(zip(*items))
                ar = self._view._apply(_remote.map_chunk, (self._f, *cols), {}, self._policy,
                                       after, follow, self.group)
                ar._parent = self
                with self._cond:
                    index = len(self._sizes)
                    self._sizes.append(len(items))
                    self.msg_ids.append(ar.msg_ids[0])
                ar.add_done_callback(lambda a, i=index: self._chunk_done(i, a))
        except BaseException as e:  # a failing input iterator, a lost client
            self._feed_error = e
        finally:
            self._feeding_done.set()
            self._settle()

    def _next_size(self) -> int:
        if self._chunksize:
            return self._chunksize
        size = 1 if self._item_time is None else \
            max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(self._item_time, 1e-7))))
        if self.length is not None:  # the last items spread over all engines
            left = self.length - sum(self._sizes)
            size = min(size, max(1, math.ceil(left / (2 * max(1, len(self._client.ids))))))
        return size

    def wait_submitted(self) -> list:
        """Wait until every chunk is submitted; return their task ids."""
        self._feeding_done.wait()
        return list(self.msg_ids)

    # --- results (client I/O thread) --------------------------------------------------
    def _chunk_done(self, index: int, ar) -> None:
        self._window.release()
        with self._cond:
            if ar.cancelled():
                self._errors[index] = TaskCancelled(f"chunk {index} of the map was cancelled")
            elif ar.exception() is not None:
                self._errors[index] = ar.exception()
            else:
                self._chunks[index] = ar.result()
                h = ar._headers[0] or {}
                if h.get("completed") and h.get("started"):
                    t = (h["completed"] - h["started"]) / max(1, self._sizes[index])
                    self._item_time = t if self._item_time is None else \
                        0.7 * self._item_time + 0.3 * t
            if index in self._errors:
                self.failed += 1
                if self._policy.on_failure == "cancel_rest":
                    self._stop = True
            self.progress += self._sizes[index]
            self._arrived.append(index)
            self._cond.notify_all()
        self._settle()

    def _retrying(self) -> None:
        self.retried += 1

    def _settle(self) -> None:
        """Resolve the Future once everything submitted has come back."""
        with self._cond:
            if not self._feeding_done.is_set() or self.done():
                return
            if len(self._arrived) < len(self._sizes):
                return
            self._cond.notify_all()
        error = self._first_error()
        if error is not None:
            self.set_exception(error)
        elif self._keep:
            self.set_result([v for i in range(len(self._sizes)) for v in self._chunks[i]])
        else:
            self.set_result(None)

    def _first_error(self):
        if self._feed_error is not None:
            return self._feed_error
        errors = [self._errors[i] for i in sorted(self._errors)]
        real = [e for e in errors if not isinstance(e, TaskCancelled)]
        return (real or errors or [None])[0]

    # --- the user's side ------------------------------------------------------------
    def __iter__(self):
        it = self._iter_ordered() if self.ordered else self._iter_unordered()
        return self._with_bar(it) if self._bar_wanted() else it

    def _bar_wanted(self) -> bool:
        """`progress` as given, else a bar in terminals and notebooks only."""
        if self.show_progress is not None:
            return bool(self.show_progress)
        return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty")
                                              and sys.stderr.isatty())

    def _bar(self):
        from tqdm.auto import tqdm
        return tqdm(total=self.length, unit="task", desc="map")

    def _show(self, bar, final: bool = False) -> None:
        bar.update(self.progress - bar.n)
        bar.set_postfix(failed=self.failed, retried=self.retried, refresh=final)

    def _with_bar(self, it):
        bar = self._bar()
        shown = 0.0
        try:
            for value in it:
                now = time.monotonic()
                if now - shown > 0.1:  # cheap per item, however many there are
                    self._show(bar)
                    shown = now
                yield value
            self._show(bar, final=True)
        finally:
            bar.close()

    def _wait_for(self, ready, deadline=None) -> None:
        with self._cond:
            while not ready():
                if self.cancelled():  # no more chunks will come
                    raise CancelledError(f"{self!r} was cancelled")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self!r}: the next result did not arrive in time")
                self._cond.wait(0.2 if left is None else min(left, 0.2))

    def _take(self, i: int) -> list:
        if i in self._errors:
            raise self._errors[i]
        return self._chunks[i] if self._keep else self._chunks.pop(i)

    def _feed_failed(self) -> bool:
        if self._feed_error is not None and self._feeding_done.is_set():
            raise self._feed_error
        return False

    def _iter_ordered(self, deadline=None):
        for i in itertools.count():
            self._wait_for(lambda: i in self._chunks or i in self._errors or self._feed_failed()
                           or (self._feeding_done.is_set() and i >= len(self._sizes)), deadline)
            if i >= len(self._sizes) and self._feeding_done.is_set() \
                    and i not in self._chunks and i not in self._errors:
                return
            yield from self._take(i)

    def _iter_unordered(self, deadline=None):
        for k in itertools.count():
            self._wait_for(lambda: k < len(self._arrived) or self._feed_failed()
                           or (self._feeding_done.is_set() and k >= len(self._sizes)), deadline)
            if k >= len(self._arrived):
                return
            yield from self._take(self._arrived[k])

    def iter(self, timeout: float | None = None, deadline: float | None = None):
        """Iterate like ``for r in ar``, raising TimeoutError if the values are not
        all through within `timeout` seconds (or by `deadline`, a time.monotonic())."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
        return self._iter_ordered(deadline) if self.ordered else self._iter_unordered(deadline)

    def get(self, timeout: float | None = None):
        """The list of all results (waits up to `timeout` seconds)."""
        if not self._keep:
            raise TypeError("an imap's results are dropped as they are iterated: iterate it")
        return Waiting.get(self, timeout)

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = None) -> bool:
        """Wait, showing a progress bar (terminal or notebook); True if finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._bar() as bar:
            while not self.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.wait(interval)
                self._show(bar)
            self._show(bar, final=True)
        return self.done()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("the map's input has no length (a generator?)")
        return self.length

    def abort(self) -> int:
        """Stop submitting and drop the chunks not started; they raise TaskAborted."""
        self._stop = True
        self._feeding_done.wait()
        return self._client.abort(list(self.msg_ids))

    def running(self) -> bool:
        """True once a chunk finished or was sent to an engine, until the map
        is done (asks the controller while no chunk has finished)."""
        if self.done():
            return False
        if self.progress or self._errors:
            return True
        ids = list(self.msg_ids)
        return bool(ids) and self._client._started(ids) and not self.done()

    def cancel(self) -> bool:
        """Cancel if no chunk has started; else stop feeding, abort the queued
        chunks and return False (the map ends with those chunks' TaskAborted)."""
        if self.done():
            return self.cancelled()
        self._stop = True
        self._feeding_done.wait()
        ids = list(self.msg_ids)
        if ids and not self._client._cancel(ids):
            self._client.abort(ids)
            return False
        with self._cond:
            self._cond.notify_all()
        return _cancel_and_notify(self)

    def __repr__(self) -> str:
        total = "?" if self.length is None else self.length
        state = "done" if self.done() else f"{self.progress}/{total} done"
        return f"<MapResult {state}, {self.failed} failed chunks, {self.retried} retries>"

    def _repr_html_(self) -> str:
        from .reprs import map_result_html
        return map_result_html(self)


def _length(sequences):
    try:
        return min(len(s) for s in sequences)
    except TypeError:
        return None
