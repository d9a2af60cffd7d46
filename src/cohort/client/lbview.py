"""LoadBalancedView: farm tasks out to whichever engine is free, under a policy."""

from __future__ import annotations

import contextlib

from ..policy import POLICY_KEYS, Policy
from ..wire.serialize import serialize_function
from .asyncresult import AsyncResult
from .mapresult import MapResult

FLAG_KEYS = POLICY_KEYS | {"policy", "after", "follow", "block"}


class LoadBalancedView:
    """Tasks go to the least-loaded engine; the controller applies the policy.

    ``lv = rc.load_balanced_view()``. `apply` runs one call, `map` many
    (chunked and streamed, results in order). Policy settings (`timeout`,
    `retries`, `on_failure`, `min_engines`, `engine_wait`), dependencies
    (`after`: run when these succeeded; `follow`: run where they ran) and
    `block` may be given per call, set on the view with `set_flags`, or for a
    block of code with `temp_flags`.
    """

    def __init__(self, client, policy: Policy | None = None, block: bool = False, **flags):
        self.client = client
        self.policy = policy or Policy()
        self.after = None
        self.follow = None
        self.block = block
        self.set_flags(**flags)

    def __repr__(self) -> str:
        return f"<LoadBalancedView {self.policy} block={self.block}>"

    def _repr_html_(self) -> str:
        from .reprs import lbview_html
        return lbview_html(self)

    # --- flags -----------------------------------------------------------------
    def set_flags(self, **flags) -> None:
        """Change the view's defaults: policy settings, `policy=`, `after`, `follow`, `block`."""
        unknown = set(flags) - FLAG_KEYS
        if unknown:
            raise TypeError(f"unknown flag(s) {sorted(unknown)}; known: {sorted(FLAG_KEYS)}")
        if "policy" in flags:
            policy = flags["policy"]
            if not isinstance(policy, Policy):
                raise TypeError(f"policy must be a cohort.Policy, not {type(policy).__name__}")
            self.policy = policy
        self.policy = self.policy.merged(**{k: flags[k] for k in POLICY_KEYS if k in flags})
        for k in ("after", "follow", "block"):
            if k in flags:
                setattr(self, k, flags[k])

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        """``with lv.temp_flags(retries=2): ...`` — flags for the block only."""
        saved = (self.policy, self.after, self.follow, self.block)
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self.policy, self.after, self.follow, self.block = saved

    def _settings(self, flags: dict):
        """(policy, after ids, follow ids, block) for one call."""
        policy = flags.pop("policy", None) or self.policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a cohort.Policy, not {type(policy).__name__}")
        policy = policy.merged(**{k: flags.pop(k) for k in POLICY_KEYS if k in flags})
        after = flags.pop("after", self.after)
        follow = flags.pop("follow", self.follow)
        block = flags.pop("block", self.block)
        return policy, after, follow, block

    # --- calls -------------------------------------------------------------------
    def apply(self, f, *args, **kwargs):
        """Run ``f(*args, **kwargs)`` on one engine; policy flags among the keywords
        (timeout, retries, on_failure, min_engines, engine_wait, policy, after,
        follow, block) are taken by cohort, the rest go to `f`."""
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAG_KEYS}
        policy, after, follow, block = self._settings(flags)
        ar = self._apply(f, args, kwargs, policy, after, follow)
        return ar.get() if block else ar

    def apply_async(self, f, *args, **kwargs) -> AsyncResult:
        """`apply` that always returns an AsyncResult."""
        return self.apply(f, *args, block=False, **kwargs)

    def apply_sync(self, f, *args, **kwargs):
        """`apply` that always waits and returns the value."""
        return self.apply(f, *args, block=True, **kwargs)

    def _apply(self, f, args, kwargs, policy, after=None, follow=None, group=None) -> AsyncResult:
        if not callable(f):
            raise TypeError(f"apply needs a callable, not {type(f).__name__}")
        if policy.timeout and getattr(f, "accepts_task_timeout", False) \
                and "timeout" not in kwargs:
            # it stops itself cleanly at the timeout; the controller's is the backstop
            kwargs = dict(kwargs, timeout=policy.timeout)
            policy = policy.merged(timeout=policy.timeout + 5.0)
        header = task_header(policy, group, dependency_ids(after), dependency_ids(follow))
        return self.client._submit_lb((serialize_function(f), (args, kwargs)), header)

    def map(self, f, *sequences, chunksize: int | None = None, ordered: bool = True,
            progress: bool | None = None, **flags):
        """``f(*xs) for xs in zip(*sequences)`` over the engines; a `MapResult` at once.

        Items go out in chunks (`chunksize`; by default cohort picks it from
        how long items take, so tiny tasks are batched and long ones spread),
        a bounded number at a time, so sequences of millions of items (or
        generators, or another map's results) stream through. Iterate the
        result to get values as they come (in order unless ``ordered=False``),
        or `get()` the whole list. Each chunk is one task for the policy.
        Iterating shows a progress bar (done, failed, retried) in terminals
        and notebooks; `progress` True/False forces it on or off.
        """
        return self._map(f, sequences, chunksize, ordered, flags, True, progress)

    def imap(self, f, *sequences, chunksize: int | None = None, ordered: bool = True,
             progress: bool | None = None, **flags):
        """`map` whose results are dropped once iterated: for result streams
        larger than memory. Returns an iterable `MapResult`."""
        return self._map(f, sequences, chunksize, ordered, flags, False, progress)

    def _map(self, f, sequences, chunksize, ordered, flags, keep, progress=None):
        unknown = set(flags) - FLAG_KEYS
        if unknown:
            raise TypeError(f"unknown keyword(s) {sorted(unknown)} for map; "
                            f"flags are {sorted(FLAG_KEYS)}")
        if not callable(f):
            raise TypeError(f"map needs a callable, not {type(f).__name__}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be an int >= 1 or None, not {chunksize!r}")
        policy, after, follow, block = self._settings(dict(flags))
        mr = MapResult(self, f, sequences, chunksize, ordered, keep, policy, after, follow,
                       progress)
        return mr.get() if block else mr

    # --- control -------------------------------------------------------------------
    def abort(self, jobs=None) -> int:
        """Drop this client's tasks not started yet (all, or those of `jobs`)."""
        if isinstance(jobs, MapResult):
            jobs = jobs.msg_ids
        return self.client.abort(jobs)

    def queue_status(self) -> dict:
        return self.client.queue_status()

    def executor(self, **flags):
        """A `concurrent.futures.Executor` running on this view (with these flags)."""
        from .executor import Executor
        view = LoadBalancedView(self.client, self.policy, after=self.after, follow=self.follow)
        view.set_flags(**flags)
        return Executor(view)


def task_header(policy: Policy, group, after, follow) -> dict:
    header = {"lb": 1}
    pol = policy.wire()
    if pol:
        header["pol"] = pol
    if group is not None:
        header["g"] = group
    if after:
        header["after"] = after
    if follow:
        header["follow"] = follow
    return header


def dependency_ids(deps) -> list:
    """Task ids from AsyncResults, MapResults, ids, or lists of them."""
    if deps is None:
        return []
    if isinstance(deps, (str, AsyncResult, MapResult)):
        deps = [deps]
    elif not isinstance(deps, (list, tuple, set)):
        raise TypeError(f"dependencies are AsyncResults, MapResults, task ids or lists of "
                        f"them, not {type(deps).__name__}")
    out = []
    for d in deps:
        if isinstance(d, str):
            out.append(d)
        elif isinstance(d, MapResult):
            out.extend(d.wait_submitted())
        elif isinstance(d, AsyncResult):
            out.extend(d.msg_ids)
        else:
            raise TypeError(f"dependencies are AsyncResults, MapResults or task ids, "
                            f"not {type(d).__name__}")
    return out

