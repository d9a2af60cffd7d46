"""Rich display from engine code: ``display(obj)`` sends a mime bundle to the client.

Code running on an engine calls ``display(obj)`` (it is in every engine's
namespace; also ``from cohort.engine.display import display``). The object is
formatted into a Jupyter mime bundle — ``text/plain`` always, plus
``text/html``, ``image/png``, ``image/svg+xml``... from its ``_repr_*_``
methods, and PNG for a matplotlib figure — and sent as a ``display_data``
message on the task's output path (after the output printed before it), which
the controller forwards to the client that ran the task. There it is kept on
the AsyncResult (``ar.outputs``) and shown by the ``%px`` magics.

Outside a task (or outside an engine) `display` prints the plain-text repr.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_engine = None  # the Engine of this process, set by Engine.serve

#: ``_repr_*_`` methods and the mime type each gives
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)
_BINARY = frozenset({"image/png", "image/jpeg"})


def set_engine(engine) -> None:
    """Route `display` through `engine` (called once by the engine at start)."""
    global _engine
    _engine = engine


MPL_BACKEND = "module://cohort.engine.mpl_backend"


class _MatplotlibHook:
    """Import hook: when matplotlib is first imported here, select the cohort
    backend (as ``MPLBACKEND`` would, without leaking into child processes)."""

    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            use_backend(module)

        spec.loader.exec_module = exec_module
        return spec


def use_backend(matplotlib) -> None:
    """Make figures go to the client, unless ``$MPLBACKEND`` chose a backend."""
    if os.environ.get("MPLBACKEND"):
        return
    try:
        matplotlib.rcParams["backend"] = MPL_BACKEND
    except Exception:
        log.warning("could not select the cohort matplotlib backend", exc_info=True)


def install_matplotlib_hook() -> None:
    """Figures made on this engine go to the client (see `cohort.engine.mpl_backend`)."""
    if os.environ.get("MPLBACKEND"):
        return
    if "matplotlib" in sys.modules:
        if "matplotlib.pyplot" not in sys.modules:
            use_backend(sys.modules["matplotlib"])
        return
    if not any(isinstance(f, _MatplotlibHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _MatplotlibHook())


def is_figure(obj) -> bool:
    """Whether `obj` is a matplotlib Figure (without importing matplotlib)."""
    mpl = sys.modules.get("matplotlib.figure")
    return mpl is not None and isinstance(obj, mpl.Figure)


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG text."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def safe_repr(obj) -> str:
    """repr(obj), or a note saying why it failed (user objects may raise)."""
    try:
        return repr(obj)
    except Exception as e:
        return f"<repr failed: {e!r}>"


def has_rich_repr(obj) -> bool:
    """Whether `obj` has more to show than its text repr."""
    if is_figure(obj):
        return True
    if isinstance(obj, type):  # a class has the methods, unbound
        return False
    return hasattr(obj, "_repr_mimebundle_") or any(hasattr(obj, m) for m, _ in REPR_METHODS)


def format_bundle(obj) -> tuple[dict, dict]:
    """(data, metadata): the Jupyter mime bundle of `obj`."""
    data: dict = {}
    metadata: dict = {}
    if is_figure(obj):
        data["image/png"] = figure_png(obj)
    elif not isinstance(obj, type):
        bundle = getattr(obj, "_repr_mimebundle_", None)
        if callable(bundle):
            try:
                got = bundle(include=None, exclude=None)
                if isinstance(got, tuple):
                    got, md = got
                    metadata.update(md or {})
                data.update(got or {})
            except Exception:
                log.debug("_repr_mimebundle_ of %s failed", type(obj).__name__, exc_info=True)
        for method, mime in REPR_METHODS:
            if mime in data:
                continue
            fn = getattr(obj, method, None)
            if not callable(fn):
                continue
            try:
                value = fn()
            except Exception:
                log.debug("%s of %s failed", method, type(obj).__name__, exc_info=True)
                continue
            if isinstance(value, tuple) and len(value) == 2:  # (data, metadata)
                value, md = value
                metadata[mime] = md
            if value is None:
                continue
            if mime in _BINARY and isinstance(value, (bytes, bytearray)):
                value = base64.b64encode(value).decode("ascii")
            data[mime] = value
    data.setdefault("text/plain", safe_repr(obj))
    return data, metadata


def publish_display_data(data: dict, metadata: dict | None = None, result: bool = False) -> None:
    """Send a ready mime bundle to the client of the running task.

    `result` marks the rich value of a cell's last expression (shown as
    ``Out[ID:N]``) rather than a display call.
    """
    engine = _engine
    capture = getattr(engine, "capture", None)
    parent = capture.parent if capture is not None else None
    if parent is None:  # not inside a task: nobody to send it to
        print(data.get("text/plain", ""))
        return
    capture.flush()  # what was printed before it arrives before it
    content = {"data": data, "metadata": metadata or {}}
    if result:
        content["result"] = True
        content["execution_count"] = getattr(engine, "_cell", None)
    engine.send("display_data", content, (), parent)


def display(*objs, raw: bool = False, metadata: dict | None = None, **_ignored) -> None:
    """Show objects in the client's notebook or terminal (as IPython's `display`).

    Each object goes as its mime bundle; with `raw`, each object already is a
    ``{mime type: data}`` dict.
    """
    for obj in objs:
        if raw:
            publish_display_data(dict(obj), metadata)
        else:
            data, md = format_bundle(obj)
            if metadata:
                md.update(metadata)
            publish_display_data(data, md)
            if is_figure(obj) and "matplotlib.pyplot" in sys.modules:
                from . import mpl_backend  # shown: not again when the cell ends
                mpl_backend.close(obj)


def after_execute(value) -> bool:
    """After an ``execute`` task: send the figures left open under the cohort
    matplotlib backend, and the last expression's rich repr. True if the value
    went as a rich result."""
    if "matplotlib.pyplot" in sys.modules:
        from . import mpl_backend
        mpl_backend.flush_figures()
    if value is None or not has_rich_repr(value):
        return False
    try:
        data, md = format_bundle(value)
        publish_display_data(data, md, result=True)
    except Exception:
        log.warning("could not send the rich repr of a %s", type(value).__name__, exc_info=True)
        return False
    if is_figure(value):
        from . import mpl_backend
        mpl_backend.close(value)
    return True
