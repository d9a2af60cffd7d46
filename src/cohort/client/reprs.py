"""Notebook (HTML) reprs of Client, views and results, and remote-name completion."""

from __future__ import annotations

import html
import logging
import time

log = logging.getLogger(__name__)

_STYLE = "border-collapse:collapse;font-size:90%"
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"

#: shipped to an engine to list its namespace (defined in "__main__", so it
#: runs with the engine's namespace as its globals)
_NAMES_SRC = ("def _cohort_names():\n"
              "    return sorted(k for k in globals() if not k.startswith('_'))\n")


def _table(headers: list, rows: list) -> str:
    head = "".join(f'<th style="{_CELL}">{html.escape(str(h))}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{html.escape(str(c))}</td>' for c in r)
                   + "</tr>" for r in rows)
    return f'<table style="{_STYLE}"><tr>{head}</tr>{body}</table>'


def _progress(done: int, total: int | None) -> str:
    if not total:
        return f"{done} done"
    return (f'<progress value="{done}" max="{total}" style="width:12em"></progress> '
            f"{done}/{total}")


def _engine_rows(client, ids=None) -> list:
    """[id, host, pid, state, queued, completed, failed] per engine, live if the
    controller answers quickly, else from what the client knows."""
    try:
        engines = {e["id"]: e for e in client.status(timeout=2.0)["engines"]}
    except Exception:
        log.debug("no engine status for the repr", exc_info=True)
        engines = client.engines
    rows = []
    for eid in sorted(engines):
        if ids is not None and eid not in ids:
            continue
        e = engines[eid]
        rows.append([eid, e.get("host", "?"), e.get("pid", "?"), e.get("state", "?"),
                     e.get("queue", "?"), e.get("completed", "?"), e.get("failed", "?")])
    return rows


_ENGINE_HEADERS = ["engine", "host", "pid", "state", "queued", "completed", "failed"]


def client_html(client) -> str:
    """The Client: connection file and a table of its engines."""
    head = (f"<b>cohort.Client</b> — {len(client.ids)} engines, "
            f"<code>{html.escape(str(client.connection_file))}</code>")
    if client._closed:
        return head + " (closed)"
    return f"<div>{head}{_table(_ENGINE_HEADERS, _engine_rows(client))}</div>"


def view_html(view) -> str:
    """A DirectView: its targets and their engines."""
    try:
        ids, _ = view._resolve()
    except Exception as e:
        return f"<div><b>DirectView</b> {html.escape(repr(view.targets))}: {html.escape(str(e))}</div>"
    head = (f"<b>DirectView</b> targets={html.escape(repr(view.targets))}, "
            f"block={view.block}")
    return f"<div>{head}{_table(_ENGINE_HEADERS, _engine_rows(view.client, set(ids)))}</div>"


def lbview_html(view) -> str:
    """A LoadBalancedView: its policy and the engines it may use."""
    head = f"<b>LoadBalancedView</b> {html.escape(str(view.policy))}, block={view.block}"
    return f"<div>{head}{_table(_ENGINE_HEADERS, _engine_rows(view.client))}</div>"


def _state(fut) -> str:
    if fut.cancelled():
        return "cancelled"
    if not fut.done():
        return "running"
    return "failed" if fut.exception() is not None else "done"


def async_result_html(ar) -> str:
    """An AsyncResult: kind, state, progress, engines, time."""
    n = len(ar.msg_ids)
    state = _state(ar)
    elapsed = (ar.received or time.time()) - ar.submitted
    rows = [["kind", ar.kind], ["state", state], ["engines", ar.targets],
            ["elapsed", f"{elapsed:.3g} s"]]
    if state == "failed":
        err = ar.exception()
        many = getattr(err, "errors", None)
        ename = getattr(err, "ename", type(err).__name__)
        rows.append(["error", f"{ename}: {getattr(err, 'evalue', err)}"
                     + (f" (and {len(many) - 1} more engines)" if many and len(many) > 1 else "")])
    table = _table(["AsyncResult", ""], rows)
    return f"<div>{table}{_progress(ar.progress, n)}</div>"


def map_result_html(mr) -> str:
    """A MapResult: items done, failed chunks, retries."""
    state = _state(mr)
    rows = [["state", state], ["items", "?" if mr.length is None else mr.length],
            ["failed chunks", mr.failed], ["retries", mr.retried],
            ["elapsed", f"{time.time() - mr.submitted:.3g} s" if not mr.done() else "—"]]
    return f"<div>{_table(['MapResult', ''], rows)}{_progress(mr.progress, mr.length)}</div>"


def remote_names(view, timeout: float = 1.0) -> list:
    """Names in the namespace of the view's first engine (for tab completion);
    [] when it does not answer within `timeout` (busy, gone)."""
    ns: dict = {"__name__": "__main__"}
    exec(_NAMES_SRC, ns)
    try:
        ids, _ = view._resolve()
        ar = view.client._submit("apply", ids[:1], objects=_apply_objects(ns["_cohort_names"]),
                                 single=True)
        return list(ar.get(timeout))
    except Exception:
        log.debug("no remote names for completion", exc_info=True)
        return []


def _apply_objects(f) -> tuple:
    from ..wire.serialize import serialize_function
    return (serialize_function(f), ((), {}))
