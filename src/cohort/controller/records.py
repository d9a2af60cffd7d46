"""What the hub writes to the task database, and how it reads results back.

Every task gets a row when it arrives; the row follows it (sent to an engine,
retried, finished) and at the end holds its status, error, timings, captured
output and result. The request and the result are kept as their signed wire
frames, so a result can be sent again to any client later, and a task that
was waiting when the controller died can be run after a restart. Frames
larger than `max_blob` bytes in all, or held in shared memory, are not kept
(the row says so).
"""

from __future__ import annotations

import json
import logging
import time

import msgpack

from . import taskdb

log = logging.getLogger(__name__)

OUTPUT_CAP = 1 << 20  # characters of stdout/stderr kept per task and stream


def pack_frames(frames, max_bytes: int) -> bytes | None:
    """The frames after the routing delimiter as one blob, or None if too large."""
    parts = [f if type(f) is bytes else memoryview(f.buffer if hasattr(f, "buffer") else f)
             for f in frames]
    if sum(len(p) if type(p) is bytes else p.nbytes for p in parts) > max_bytes:
        return None
    return msgpack.packb(parts, use_bin_type=True)  # memoryviews pack as bytes, without a copy


def unpack_frames(blob: bytes) -> list:
    return msgpack.unpackb(blob, raw=False)


class TaskLog:
    """The hub's side of the task database (all writes go through a `Recorder`)."""

    def __init__(self, url: str | None, default_path, max_blob: int = 16 << 20):
        self.db = taskdb.open(url, default_path)
        self.recorder = taskdb.Recorder(self.db)
        self.max_blob = max_blob
        self._output: dict = {}  # task id -> {"stdout": [...], "stderr": [...], "n": chars}

    # --- writes (hot path: queue only) ----------------------------------------------
    def submitted(self, task, kind: str, frames, session: str) -> None:
        blob = None if task.header is not None else pack_frames(frames[1:], self.max_blob)
        self.recorder.insert({
            "id": task.id, "client": session, "kind": kind, "grp": task.group,
            "state": "queued", "engine": None if task.lb else task.engine,
            "submitted": time.time(), "policy": json.dumps(task.policy) if task.policy else None,
            "request": blob})

    def dispatched(self, task) -> None:
        self.recorder.update(task.id, state="running", engine=task.engine)

    def output(self, task_id: str, name: str, text: str) -> None:
        out = self._output.get(task_id)
        if out is None:
            if len(self._output) > 10_000:  # tasks whose end we never saw
                self._output.clear()
            out = self._output[task_id] = {"stdout": [], "stderr": [], "n": 0}
        if out["n"] < OUTPUT_CAP and name in ("stdout", "stderr"):
            out[name].append(text[:OUTPUT_CAP - out["n"]])
            out["n"] += len(text)

    def _take_output(self, task_id: str) -> dict:
        out = self._output.pop(task_id, None)
        if out is None:
            return {}
        fields = {k: "".join(out[k]) for k in ("stdout", "stderr") if out[k]}
        if out["n"] > OUTPUT_CAP:
            fields["stderr"] = fields.get("stderr", "") + \
                f"\n[cohort: output beyond {OUTPUT_CAP} characters was not recorded]\n"
        return fields

    def finished(self, task, header: dict, content: dict, frames) -> None:
        """The engine's result, as forwarded to the client."""
        self.recorder.update(task.id, **self._outcome(task, header, content, frames))

    def finished_unheard(self, task, header: dict, content: dict, frames) -> None:
        """A task known only from its result (sent to its engine by its client, see
        `hub.result_first`): its whole record at once."""
        self.recorder.insert({
            "id": task.id, "client": header.get("c"), "kind": header.get("k", "apply"),
            "grp": None, "policy": None,
            "submitted": header["sub"] if isinstance(header.get("sub"), float) else time.time(),
            **self._outcome(task, header, content, frames)})

    def _outcome(self, task, header: dict, content: dict, frames) -> dict:
        task_id = task.id
        ok = header.get("status") == "ok"
        fields = {"state": "done" if ok else "failed", "status": header.get("status"),
                  "attempts": task.attempts,
                  "engine": header.get("e"), "started": header.get("started"),
                  "completed": header.get("completed") or time.time()}
        if not ok:
            fields.update(ename=content.get("ename"), evalue=content.get("evalue"),
                          traceback=content.get("traceback"))
        if "shm" not in header:
            fields["result"] = pack_frames(frames[1:], self.max_blob)
        fields.update(self._take_output(task_id))
        fields["request"] = None  # it will not run again
        return fields

    def failed(self, task, ename: str, evalue: str) -> None:
        """A failure decided by the controller (timeout, death, abort, cancel...)."""
        state = {"TaskAborted": "aborted", "TaskCancelled": "cancelled"}.get(ename, "failed")
        self.recorder.update(task.id, state=state, status="error", ename=ename, evalue=evalue,
                             completed=time.time(), engine=task.engine, request=None,
                             attempts=task.attempts,
                             **self._take_output(task.id))

    def retrying(self, task_id: str, attempt: int) -> None:
        self.recorder.update(task_id, state="queued", attempts=attempt - 1)

    # --- reads ------------------------------------------------------------------------
    def get(self, task_id: str) -> dict | None:
        self.recorder.flush(timeout=10)
        return self.db.get(task_id)

    def query(self, **filters) -> list:
        self.recorder.flush(timeout=10)
        return self.db.query(**filters)

    def unfinished(self) -> list:
        return self.db.unfinished()

    def purge(self, **policy) -> int:
        self.recorder.flush(timeout=10)
        return self.db.purge(**policy)

    def close(self) -> None:
        self.recorder.close(timeout=10)
