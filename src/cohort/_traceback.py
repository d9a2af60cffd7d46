"""Rendering of remote tracebacks for IPython: one block per engine, highlighted.

`RemoteError._render_traceback_` uses this, so IPython (and Jupyter) show an
engine's exception as that engine's traceback — not the client's frames
that waited for it — with a ``[engine ID] Type: message`` header per engine,
in colour when the shell has colours and pygments is installed.
"""

from __future__ import annotations

import sys

_RED = "\x1b[1;31m"
_RESET = "\x1b[0m"


def _shell_wants_color() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    colors = str(getattr(shell, "colors", "nocolor")).lower()
    return colors != "nocolor"


def highlight(text: str) -> str:
    """A Python traceback in terminal colours (unchanged without pygments)."""
    try:
        from pygments import highlight as _hl
        from pygments.formatters import TerminalFormatter
        from pygments.lexers import PythonTracebackLexer
    except ImportError:
        return text
    return _hl(text, PythonTracebackLexer(), TerminalFormatter())


def render_remote(err, color: bool | None = None) -> list[str]:
    """Lines showing `err` (a RemoteError or CompositeError): per engine a
    header and its remote traceback."""
    if color is None:
        color = _shell_wants_color()
    errors = list(getattr(err, "errors", None) or [err])
    lines: list[str] = []
    if len(errors) > 1:
        head = f"CompositeError: {len(errors)} engines raised exceptions"
        lines += [f"{_RED}{head}{_RESET}" if color else head, ""]
    for e in errors:
        eid = getattr(e, "engine_id", None)
        where = f"[engine {eid}] " if eid is not None else ""
        ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
        head = f"{where}{ename}: {evalue}" if evalue else f"{where}{ename}"
        lines.append(f"{_RED}{head}{_RESET}" if color else head)
        tb = (getattr(e, "traceback", "") or "").rstrip("\n")
        if tb:
            if color:
                tb = highlight(tb).rstrip("\n")
            lines.extend(tb.split("\n"))
        lines.append("")
    return lines[:-1] if lines and lines[-1] == "" else lines


def render_failures(pairs: list, color: bool | None = None) -> list[str]:
    """Lines for (engine id, exception) pairs: remote ones with their remote
    traceback, the others (an engine that died, an aborted task) as one line."""
    if color is None:
        color = _shell_wants_color()
    lines: list[str] = []
    if len(pairs) > 1:
        head = f"{len(pairs)} engines failed"
        lines += [f"{_RED}{head}{_RESET}" if color else head, ""]
    for eid, err in pairs:
        if hasattr(err, "ename"):
            lines += render_remote(err, color)
        else:
            where = f"[engine {eid}] " if eid is not None else ""
            head = f"{where}{type(err).__name__}: {err}"
            lines.append(f"{_RED}{head}{_RESET}" if color else head)
        lines.append("")
    return lines[:-1] if lines and lines[-1] == "" else lines
