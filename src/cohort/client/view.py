"""DirectView: run code, move variables and apply functions on chosen engines."""

from __future__ import annotations

import itertools
from pathlib import Path

from .. import _remote
from ..errors import NoEnginesError
from ..wire.serialize import serialize_function


class DirectView:
    """Some engines, addressed directly: ``rc[0]``, ``rc[:]``, ``rc[::2]``, ``rc[[1, 3]]``.

    Every method returns an `AsyncResult` at once unless blocking is asked
    for, per call (``block=True``) or for the view (``view.block = True``).
    A view on one engine (``rc[0]``) gives plain values; on several, a list
    in target order.
    """

    def __init__(self, client, targets, block: bool = False):
        self.client = client
        self._targets = targets
        self.block = block

    def __repr__(self) -> str:
        return f"<DirectView targets={self._targets!r} block={self.block}>"

    def _repr_html_(self) -> str:
        from .reprs import view_html
        return view_html(self)

    def _ipython_key_completions_(self) -> list:
        """Names in the first target's namespace, for ``dv["<tab>`` in IPython."""
        from .reprs import remote_names
        return remote_names(self)

    def activate(self, suffix: str = ""):
        """Register the ``%px`` magics bound to this view (see `Client.activate`)."""
        from .magics import activate
        return activate(self, suffix)

    @property
    def targets(self):
        return self._targets

    def __len__(self) -> int:
        return len(self._resolve()[0])

    def _resolve(self, targets=None) -> tuple[list, bool]:
        t = self._targets if targets is None else targets
        if t == "all" or t is None:
            ids = self.client.ids
            if not ids:
                raise NoEnginesError("no engines are connected: start some with `cohort start -n N` "
                                     "or `cohort engine`, or wait with rc.wait_for_engines(n)")
            return ids, False
        if isinstance(t, int):
            return [t], True
        ids = list(t)
        if not ids:
            raise NoEnginesError("this view has no engines")
        bad = [i for i in ids if not isinstance(i, int)]
        if bad:
            raise TypeError(f"engine ids are ints (see rc.ids), not {bad[0]!r}")
        return ids, False

    def _call(self, kind, content=None, objects=(), targets=None, block=None, reduce=None,
              per_target=None):
        ids, single = self._resolve(targets)
        block = self.block if block is None else block
        ar = self.client._submit(kind, ids, content, objects, single=single, reduce=reduce,
                                 per_target=per_target, wait=block)
        if block:
            return ar.get()
        return ar

    # --- code and functions ------------------------------------------------
    def execute(self, code: str, targets=None, block=None):
        """Run a string of Python code in each engine's namespace."""
        return self._call("execute", {"code": code}, targets=targets, block=block)

    def run(self, filename, targets=None, block=None):
        """Run a local Python file's code on the engines (as `execute`)."""
        code = Path(filename).read_text()
        return self._call("execute", {"code": code, "filename": str(filename)},
                          targets=targets, block=block)

    def apply(self, f, *args, **kwargs):
        """Call ``f(*args, **kwargs)`` on each engine (blocking if the view blocks)."""
        return self._call("apply", objects=(serialize_function(f), (args, kwargs)))

    def apply_async(self, f, *args, **kwargs):
        """`apply` that always returns an AsyncResult."""
        return self._call("apply", objects=(serialize_function(f), (args, kwargs)), block=False)

    def apply_sync(self, f, *args, **kwargs):
        """`apply` that always waits and returns the value."""
        return self._call("apply", objects=(serialize_function(f), (args, kwargs)), block=True)

    def map(self, f, *sequences, block=None):
        """``[f(*xs) for xs in zip(*sequences)]``, split into one contiguous chunk per engine."""
        ids, _ = self._resolve()
        seqs = [_as_sliceable(s) for s in sequences]
        n = min(len(s) for s in seqs) if seqs else 0
        bounds = partition_bounds(n, len(ids))
        chunk_fn = serialize_function(_remote.map_chunk)
        per_target = {eid: (chunk_fn, ((f, *[s[a:b] for s in seqs]), {}))
                      for eid, (a, b) in zip(ids, bounds)}
        return self._call("apply", targets=ids, block=block, reduce=_flatten,
                          per_target=per_target)

    # --- variables ----------------------------------------------------------
    def push(self, namespace: dict, targets=None, block=None):
        """Set variables on the engines from a dict."""
        if not isinstance(namespace, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(namespace).__name__}")
        return self._call("push", objects=(namespace,), targets=targets, block=block)

    def pull(self, names, targets=None, block=None):
        """Get variables (a name, or a list of names) from the engines."""
        if not isinstance(names, (str, list, tuple)):
            raise TypeError("pull takes a name or a list of names")
        return self._call("pull", {"names": names if isinstance(names, str) else list(names)},
                          targets=targets, block=block)

    def __setitem__(self, name: str, value) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str):
        return self.pull(name, block=True)

    def scatter(self, name: str, seq, targets=None, block=None):
        """Split `seq` into contiguous parts, one per engine, bound to `name` there."""
        ids, single = self._resolve(targets)
        seq = _as_sliceable(seq)
        bounds = partition_bounds(len(seq), len(ids))
        per_target = {eid: ({name: seq[a:b]},) for eid, (a, b) in zip(ids, bounds)}
        return self._call("push", targets=ids, block=block, per_target=per_target)

    def gather(self, name: str, targets=None, block=None):
        """Pull `name` from each engine and join the parts in target order."""
        ids, _ = self._resolve(targets)
        return self._call("pull", {"names": name}, targets=ids, block=block, reduce=concat)

    # --- control -------------------------------------------------------------
    def interrupt(self):
        """Send KeyboardInterrupt to the code running on these engines."""
        return self.client.interrupt(self._resolve()[0])

    def abort(self, jobs=None):
        return self.client.abort(jobs, targets=self._resolve()[0])

    def queue_status(self):
        return self.client.queue_status(self._resolve()[0])

    def shutdown(self):
        return self.client.shutdown(self._resolve()[0])


def partition_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into `parts` contiguous (start, stop) pairs, sizes differing by at most one."""
    q, r = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + q + (1 if i < r else 0)
        out.append((start, stop))
        start = stop
    return out


def _as_sliceable(seq):
    """Something to cut into parts: lists, tuples, strings and arrays as they are."""
    if isinstance(seq, range) or not (hasattr(seq, "__getitem__") and hasattr(seq, "__len__")):
        return list(seq)
    return seq


def _flatten(parts: list) -> list:
    return list(itertools.chain.from_iterable(parts))


def concat(parts: list):
    """Join gathered parts: arrays by numpy, strings by joining, the rest as one list."""
    if not parts:
        return []
    kinds = {type(p) for p in parts}
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
            import numpy
            return numpy.concatenate(parts)
        if kind is str:
            return "".join(parts)
        if kind is list:
            return _flatten(parts)
        if kind is tuple:
            return tuple(_flatten(parts))
    return _flatten(parts)
