"""Showing a result's output the IPython way: labelled per engine, as it arrives.

Used by the ``%px`` magics (and `AsyncResult.display_outputs` inside
IPython). Everything is shown from the calling (main) thread, so in Jupyter
it lands in the cell that asked:

* stdout/stderr lines as ``[stdout:ID] ...`` / ``[stderr:ID] ...`` while the
  code runs (whole lines; a trailing partial line at the end);
* rich output from engine code (``display(obj)``, matplotlib figures) as
  ``[output:ID]`` followed by the mime bundle, through IPython's
  `publish_display_data` (HTML and images render in notebooks);
* the last expression's value of each engine as ``Out[ID:N]: ...``;
* errors raised as the result's `RemoteError`/`CompositeError`, which IPython
  renders per engine with the remote tracebacks (see `cohort._traceback`).
"""

from __future__ import annotations

import logging
import sys

from .._traceback import render_failures
from ..errors import RemoteError

log = logging.getLogger(__name__)


def in_ipython() -> bool:
    """Whether an IPython shell is running in this process."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def publish(data: dict, metadata: dict | None = None) -> None:
    """Show a mime bundle: through IPython when it runs, else its text."""
    if in_ipython():
        from IPython.display import publish_display_data
        publish_display_data(data, metadata or {})
    else:
        print(data.get("text/plain", ""))


class Renderer:
    """Shows one AsyncResult's events in arrival order; call `drain` while
    waiting and `finish` when it is done."""

    def __init__(self, ar):
        self.ar = ar
        self._pos = 0
        self._partial: dict = {}       # (engine, stream) -> text after the last newline
        self._rich: dict = {}          # index -> content of a rich last value

    def _label(self, index: int):
        eid = self.ar.targets[index]
        return "?" if eid is None else eid

    def drain(self) -> None:
        """Show what arrived since the last call."""
        events = self.ar._events
        while self._pos < len(events):
            index, kind, payload = events[self._pos]
            self._pos += 1
            if kind == "display":
                if payload.get("result"):
                    self._rich[index] = payload
                    continue
                self._flush_partial(index)
                sys.stdout.write(f"[output:{self._label(index)}]\n")
                sys.stdout.flush()
                publish(payload.get("data", {}), payload.get("metadata"))
            else:
                self._stream(index, kind, payload)

    def _stream(self, index: int, name: str, text: str) -> None:
        key = (index, name)
        lines = (self._partial.pop(key, "") + text).split("\n")
        rest = lines.pop()
        if rest:
            self._partial[key] = rest
        if lines:
            self._write(index, name, lines)

    def _write(self, index: int, name: str, lines: list) -> None:
        out = sys.stderr if name == "stderr" else sys.stdout
        prefix = f"[{name}:{self._label(index)}] "
        out.write("".join(prefix + line + "\n" for line in lines))
        out.flush()

    def _flush_partial(self, index: int | None = None) -> None:
        for key in [k for k in self._partial if index is None or k[0] == index]:
            self._write(key[0], key[1], [self._partial.pop(key)])

    def finish(self, raise_error: bool = True) -> None:
        """Show the rest of the output, then the values (``Out[ID:N]``); then
        raise the result's error (or print it, without `raise_error`)."""
        self.drain()
        self._flush_partial()
        ar = self.ar
        for i in range(len(ar.msg_ids)):
            if ar._errors[i] is not None or ar._headers[i] is None:
                continue
            count = ar._exec_counts[i]
            label = f"Out[{self._label(i)}:{count}]:" if count is not None else \
                f"Out[{self._label(i)}]:"
            if i in self._rich:
                sys.stdout.write(label + "\n")
                sys.stdout.flush()
                publish(self._rich[i].get("data", {}), self._rich[i].get("metadata"))
            elif ar.kind == "execute":
                if ar._exec_results[i] is not None:
                    publish({"text/plain": f"{label} {ar._exec_results[i]}"})
            elif ar._values[i] is not None:
                publish({"text/plain": f"{label} {ar._values[i]!r}"})
        if not ar.done() or ar.cancelled():
            return
        err = ar.exception()
        if err is None:
            return
        pairs = [(ar.targets[i], e) for i, e in enumerate(ar._errors) if e is not None]
        if not all(isinstance(e, RemoteError) for _, e in pairs) or len(pairs) != len(
                getattr(err, "errors", [err])):
            # not (only) remote tracebacks: show every engine's failure, not the local frames
            err._render_traceback_ = lambda: render_failures(pairs)
        if raise_error:
            raise err
        render = getattr(err, "_render_traceback_", None)
        text = "\n".join(render()) if render else f"{type(err).__name__}: {err}"
        print(text, file=sys.stderr)


def wait_and_show(ar, interrupt_timeout: float = 10.0, poll: float = 0.05) -> None:
    """Wait for `ar`, showing its output as it comes; Ctrl-C interrupts its
    code on the engines. Raises the result's error when it failed."""
    r = Renderer(ar)
    try:
        while not ar.wait(poll):
            r.drain()
    except KeyboardInterrupt:
        targets = sorted({t for t in ar.targets if t is not None})
        log.info("KeyboardInterrupt: interrupting engines %s", targets)
        try:
            ar._client.abort(ar)
            # only this cell's tasks: other code running on these engines goes on
            ar._client._request("interrupt", {"targets": targets, "ids": list(ar.msg_ids)})
        except Exception:
            log.warning("could not interrupt engines %s", targets, exc_info=True)
        if not ar.wait(interrupt_timeout):
            r.drain()
            r._flush_partial()
            raise KeyboardInterrupt(f"engines {targets} did not stop within {interrupt_timeout:g} s "
                                    f"of the interrupt; they may still be running "
                                    f"(rc.interrupt() again, or restart them)") from None
    r.finish()


def show_result(ar) -> None:
    """Show everything `ar` produced so far (and wait for it), errors printed."""
    r = Renderer(ar)
    ar.wait()
    r.finish(raise_error=False)
