"""The task records: every task's state, engine, timings, result and output.

One table, ``tasks``, in SQLite (a file in the profile folder, the default) or
PostgreSQL (``--db postgresql://user:pw@host:port/dbname``). `open` returns a
`TaskDB`; the controller writes through a `Recorder`, a background thread that
batches its inserts and updates so the hub loop never waits on the disk.

Records stay until `TaskDB.purge` deletes finished ones by an explicit policy
(age and/or count); queued and running tasks are never purged.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from pathlib import Path

from ..errors import TimeoutError as CohortTimeout
from .taskdb_sql import (BLOBS, COLUMNS, FINISHED, SCHEMA_VERSION, STATES, UNFINISHED,
                         PostgresTaskDB, SQLiteTaskDB, TaskDB, _COL, _colname, _redact)

__all__ = ["open", "TaskDB", "Recorder", "COLUMNS", "BLOBS", "STATES", "FINISHED",
           "UNFINISHED", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)


def open(url: str | None, default_path) -> TaskDB:  # noqa: A001 - the module's verb
    """Open (creating if needed) the task database named by `url`.

    None, a bare path or ``sqlite:///abs/path.db`` is a SQLite file (None means
    `default_path`); ``postgresql://user:pw@host:port/dbname`` is PostgreSQL.
    """
    if url is None or url == "":
        return SQLiteTaskDB(Path(default_path))
    url = str(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresTaskDB(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError(f"a SQLite URL names an absolute path: sqlite:////abs/path.db "
                             f"or sqlite:///abs/path.db, not {url!r}")
        return SQLiteTaskDB(path)
    if "://" in url:
        raise ValueError(f"unknown task database {_redact(url)!r}: give a file path, "
                         "sqlite:///abs/path.db or postgresql://user:pw@host:port/dbname")
    return SQLiteTaskDB(Path(url).expanduser())


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying the same write later may succeed (lost server, locked file)."""
    if isinstance(exc, (sqlite3.OperationalError, OSError)):
        return True
    pg = sys.modules.get("psycopg")
    return pg is not None and isinstance(exc, pg.OperationalError)


class Recorder:
    """Writes task records in the background, batched, so callers never block.

    `insert` and `update` queue a change and return at once; a thread commits
    what is queued in one transaction per round, at most every `interval` s.
    Call `close` before exiting, or what is still queued is lost.
    """

    def __init__(self, db: TaskDB, interval: float = 0.05, max_batch: int = 5000):
        self.db = db
        self.interval = interval
        self.max_batch = max_batch
        self._ops: deque = deque()
        self._wake = threading.Event()   # something was queued after an idle spell
        self._hurry = threading.Event()  # a flush or close is waiting
        self._stopping = False
        self._abandon = False
        self._closed = False
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name="cohort-taskdb", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """How many queued changes are not committed yet (roughly)."""
        return len(self._ops) + self._inflight

    def insert(self, row: dict) -> None:
        """Queue a new task record (kept as is until written: do not change it)."""
        self._check(row)
        if "id" not in row:
            raise ValueError("a task record needs an 'id'")
        self._queue(("i", row))

    def update(self, task_id: str, **fields) -> None:
        """Queue changes to a task record."""
        self._check(fields)
        if "id" in fields:
            raise ValueError("a task record's 'id' cannot be updated")
        if fields:
            self._queue(("u", task_id, fields))

    def _check(self, keys) -> None:
        if self._closed:
            raise RuntimeError("the task recorder is closed; open a new one")
        if _COL.keys() >= keys.keys():
            return
        for k in keys:
            if k not in _COL:
                _colname(k)

    def _queue(self, op) -> None:
        idle = not self._ops
        self._ops.append(op)
        if idle:
            self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is committed.

        Raises `cohort.errors.TimeoutError` if that takes longer than `timeout`.
        """
        if not self._thread.is_alive():
            if self._ops:
                raise RuntimeError("the task recorder is stopped with records unwritten")
            return
        done = threading.Event()
        self._queue(("f", done))
        self._hurry.set()
        self._wake.set()
        if not done.wait(timeout):
            raise CohortTimeout(f"{self.pending} task records were not committed within "
                                f"{timeout} s; is the task database {self.db!r} reachable? "
                                "(see the log)")

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, stop the thread and close the database.

        With a `timeout`, give up waiting after that long and log how many
        records were lost.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._hurry.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            log.error("closing the task database with %d task records unwritten",
                      self.pending)
        self.db.close()

    # --- the writer thread -------------------------------------------------
    def _run(self) -> None:
        last = 0.0
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            delay = last + self.interval - time.monotonic()
            if delay > 0 and not self._hurry.is_set():
                self._hurry.wait(delay)
            self._hurry.clear()
            if self._ops:
                while self._ops and not self._abandon:
                    self._round()
                last = time.monotonic()
            if (self._stopping and not self._ops) or self._abandon:
                return

    def _round(self) -> None:
        """Take up to `max_batch` queued changes and commit them together."""
        ops = self._ops
        inserts: dict = {}
        updates: dict = {}
        flushed = []
        n = 0
        while ops and n < self.max_batch:
            op = ops[0]
            kind = op[0]
            if kind == "u":  # applied after the inserts, even for a new task: its
                tid, fields = op[1], op[2]  # insert is ignored if the id exists
                prev = updates.get(tid)
                updates[tid] = fields if prev is None else {**prev, **fields}
            elif kind == "i":
                tid = op[1]["id"]
                if tid in updates and tid not in inserts:
                    break  # its earlier update must be committed first
                inserts.setdefault(tid, op[1])
            else:
                flushed.append(op[1])
            ops.popleft()
            n += 1
        self._inflight = n
        if inserts or updates:
            self._commit(list(inserts.values()), list(updates.items()))
        self._inflight = 0
        for ev in flushed:
            ev.set()

    def _commit(self, inserts: list, updates: list) -> None:
        """Write, retrying with backoff; a batch that keeps failing for a reason
        other than the database being unreachable is written record by record,
        and a record the database refuses is dropped with an error."""
        delay = 0.05
        tries = 0
        while True:
            try:
                self.db.write(inserts, updates)
                return
            except Exception as exc:
                tries += 1
                n = len(inserts) + len(updates)
                if tries >= 3 and not _is_transient(exc):
                    if n > 1:  # one bad record must not hold back the others
                        log.warning("writing %d task records failed (%r); writing them "
                                    "one by one", n, exc)
                        for row in inserts:
                            self._commit([row], [])
                        for change in updates:
                            self._commit([], [change])
                        return
                    what = inserts[0]["id"] if inserts else updates[0][0]
                    log.error("dropped a change to task record %s that the database "
                              "refuses: %r", what, exc)
                    return
                if self._abandon:
                    return
                log.warning("writing %d task records failed (%r); %d pending; retrying "
                            "in %.2f s", n, exc, self.pending, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
