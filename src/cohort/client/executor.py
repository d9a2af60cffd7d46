"""A `concurrent.futures.Executor` on a cohort cluster.

    with rc.executor() as ex:
        futs = [ex.submit(f, i) for i in range(1000)]
        for fut in concurrent.futures.as_completed(futs):
            print(fut.result())

Code written for `ProcessPoolExecutor` runs unchanged: every keyword of
`submit` goes to the function (policy flags are set on the executor instead:
``rc.executor(retries=2, timeout=60)``).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

from ..errors import TaskAborted
from .batching import BatchedFuture, SubmitBatcher


class Executor(cf.Executor):
    """Submits each call as a load-balanced task of `view` (see `rc.executor`)."""

    def __init__(self, view):
        self._view = view
        self._futures: set = set()
        self._lock = threading.Lock()
        self._shutdown = False
        self._batcher = SubmitBatcher(view)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on an engine; its Future at once.

        Calls of a function known to be quick, made while others are out,
        travel in batches (see `cohort.client.batching`); each still has its
        own Future, value or error.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            batcher = self._batcher
            if batcher.wants(fn):
                fut = batcher.add(fn, args, kwargs)
            else:
                fut = self._view._apply(fn, args, kwargs, self._view.policy,
                                        self._view.after, self._view.follow)
                fut.add_done_callback(lambda ar: batcher.learn(fn, ar))
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut) -> None:
        with self._lock:
            self._futures.discard(fut)

    def map(self, fn, *iterables, timeout: float | None = None, chunksize: int | None = None):
        """Like `ProcessPoolExecutor.map`: results in order, lazily; `timeout`
        counts from this call. `chunksize` None lets cohort choose."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        mr = self._view.map(fn, *iterables, chunksize=chunksize, block=False)
        with self._lock:
            self._futures.add(mr)
        mr.add_done_callback(self._forget)
        return _results(mr, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            self._batcher.cancel([f for f in pending if isinstance(f, BatchedFuture)])
            for fut in pending:
                if not isinstance(fut, BatchedFuture):
                    fut.cancel()
        else:
            self._batcher.flush()  # what it holds goes now, not when the I/O thread runs
        if wait:
            cf.wait(pending)


def _results(mr, deadline):
    try:
        yield from mr.iter(deadline=deadline)
    except TimeoutError as e:
        raise cf.TimeoutError(str(e)) from None
    except TaskAborted as e:  # dropped by shutdown(cancel_futures=True) before it ran
        raise cf.CancelledError(str(e)) from None
    finally:  # the caller stopped early: the rest need not run
        if not mr.done():
            mr.cancel()
