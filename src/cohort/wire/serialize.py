"""Python objects to frames and back: pickle protocol 5 with out-of-band buffers.

`serialize` returns the pickle stream followed by each large buffer
(numpy arrays, bytes-likes exposing the buffer protocol) as its own raw frame,
without copying it. `deserialize` rebuilds the object on top of the received
frames, so an array comes back as a view of the frame's memory.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap

import cloudpickle

from .weakmap import WeakIdMap

#: buffers smaller than this stay inside the pickle stream (a frame costs more)
OOB_THRESHOLD = 64 * 1024


_PLAIN = frozenset({int, float, str, bool, type(None), complex})


def _plain(obj, budget: list) -> bool:
    """Only numbers, strings and small containers of them (pickled the same by
    `pickle` as by cloudpickle, and faster); `budget` bounds the look."""
    t = type(obj)
    if t in _PLAIN or (t is bytes and len(obj) < OOB_THRESHOLD):
        return True
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if t is tuple or t is list:
        if len(obj) > 16:
            return False
        for x in obj:  # a loop, not all(...): this runs for every small call
            if type(x) not in _PLAIN and not _plain(x, budget):
                return False
        return True
    if t is dict:
        if len(obj) > 16:
            return False
        for k, v in obj.items():
            if not (_plain(k, budget) and _plain(v, budget)):
                return False
        return True
    return False


def serialize(obj) -> list:
    """Pickle `obj`; return [stream, *out_of_band_buffers]."""
    if _plain(obj, [8]):  # e.g. a task's (args, kwargs) of numbers: the common small call
        return [pickle.dumps(obj, protocol=5)]
    buffers: list = []

    def keep_large(pb: pickle.PickleBuffer):
        raw = pb.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True  # serialize in-band
        buffers.append(raw)
        return False

    with io.BytesIO() as f:
        _Pickler(f, protocol=5, buffer_callback=keep_large).dump(obj)
        stream = f.getvalue()
    return [stream, *buffers]


_CODE_REDUCE = getattr(cloudpickle.Pickler, "dispatch_table", {}).get(types.CodeType)


def _code_keeping_its_file(code: types.CodeType):
    """cloudpickle (3.1.2 on) names the file of every code object it ships
    "<dynamic-code>"; keep the real name, so that a remote traceback shows the
    line that failed where the engine can read that file."""
    ctor, args = _CODE_REDUCE(code)
    if code.co_filename != "<dynamic-code>":
        args = tuple(code.co_filename if type(a) is str and a == "<dynamic-code>" else a
                     for a in args)
    return ctor, args


class _Pickler(cloudpickle.Pickler):
    if _CODE_REDUCE is not None:
        dispatch_table = ChainMap({types.CodeType: _code_keeping_its_file},
                                  cloudpickle.Pickler.dispatch_table)


def deserialize(frames) -> object:
    """Inverse of `serialize`: frames[0] is the stream, the rest its buffers."""
    return pickle.loads(frames[0], buffers=frames[1:])


class Serialized:
    """Frames already made by `serialize` (sent as they are)."""

    __slots__ = ("frames",)

    def __init__(self, frames: list):
        self.frames = frames


# --- shipping functions ---------------------------------------------------------
# Pickling a function defined in __main__ by value is the costliest step of a
# small call (~15-70 us). A function whose referenced globals, defaults and
# closure are all immutable (numbers, strings, tuples of them, modules,
# importable functions and classes) pickles to the same bytes as long as none
# of those names is rebound, so its bytes are kept with the objects they were
# made from (held, so their ids cannot be reused) and checked by identity.

_cache = WeakIdMap()  # function -> (fingerprint, Serialized)
_SCALARS = (int, float, complex, str, bytes, bool, type(None), types.ModuleType,
            types.BuiltinFunctionType)


def _immutable(v, depth: int = 0) -> bool:
    if isinstance(v, _SCALARS):
        return True
    if isinstance(v, (types.FunctionType, type)):
        return getattr(v, "__module__", "__main__") != "__main__"  # pickled by reference
    if isinstance(v, (tuple, frozenset)) and depth < 3:
        return all(_immutable(x, depth + 1) for x in v)
    return False


def _names(code: types.CodeType, out: set) -> set:
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _names(c, out)
    return out


_MISSING = object()
_code_names = WeakIdMap()  # code object -> the global names it uses


def _referenced(f: types.FunctionType) -> list:
    """Every object f's pickled bytes depend on: its globals (by name, a missing
    one as a marker), closure cells, defaults."""
    names = _code_names.get(f.__code__)
    if names is None:
        names = _code_names[f.__code__] = tuple(sorted(_names(f.__code__, set())))
    g = f.__globals__
    values = [g.get(n, _MISSING) for n in names]
    values.extend(c.cell_contents for c in f.__closure__ or ())
    values.append(f.__defaults__)
    values.append(f.__kwdefaults__ and tuple(f.__kwdefaults__.items()))
    return values


def _fingerprint(f: types.FunctionType):
    """What must stay the same for f's pickled bytes to stay valid, or None."""
    if f.__dict__ or f.__module__ != "__main__":
        return None
    everything = _referenced(f)
    if not all(v is _MISSING or _immutable(v) for v in everything):
        return None
    return (f.__code__, everything)


def _same(a, b) -> bool:
    """Fingerprints match when every referenced object is the very same one."""
    return a[0] is b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1]))


def stateless(f) -> bool:
    """A function whose calls cannot leave state in it: no closure, immutable defaults."""
    return (isinstance(f, types.FunctionType) and f.__closure__ is None and not f.__dict__
            and _immutable(f.__defaults__ or ())
            and _immutable(tuple((f.__kwdefaults__ or {}).values())))


def serialize_function(f) -> Serialized:
    """Serialize a function to ship, reusing its last bytes when provably unchanged."""
    if not isinstance(f, types.FunctionType):
        return Serialized(serialize(f))
    hit = _cache.get(f)
    try:
        if hit is not None and not f.__dict__ and _same(hit[0], (f.__code__, _referenced(f))):
            return hit[1]  # the very same objects as when it was pickled: immutable, unchanged
        key = _fingerprint(f)
    except Exception:  # an empty cell, an odd globals mapping
        key = None
    s = Serialized(serialize(f))
    if key is not None:
        _cache[f] = (key, s)
    return s
