"""The task-record table and its two backends, SQLite and PostgreSQL.

`taskdb.open` picks the backend; everything here is reached through it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import abc
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import CohortError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# column -> type (SQLite spelling; PostgreSQL's differs for REAL and BLOB)
COLUMN_TYPES = {
    "id": "TEXT PRIMARY KEY", "client": "TEXT", "kind": "TEXT", "grp": "TEXT",
    "label": "TEXT", "state": "TEXT DEFAULT 'queued'", "engine": "INTEGER",
    "submitted": "REAL", "started": "REAL", "completed": "REAL",
    "attempts": "INTEGER DEFAULT 0", "status": "TEXT", "ename": "TEXT",
    "evalue": "TEXT", "traceback": "TEXT", "policy": "TEXT", "request": "BLOB",
    "result": "BLOB", "stdout": "TEXT", "stderr": "TEXT",
}
COLUMNS = tuple(COLUMN_TYPES)
_COL = {c: c for c in COLUMNS}  # SQL text is built only from these strings
BLOBS = ("request", "result")
STATES = ("queued", "running", "done", "failed", "cancelled", "aborted")
UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "aborted")
_INDEXED = ("state", "submitted", "client", "grp")
_CHUNK = 500  # ids per IN (...) list


def _colname(name: str) -> str:
    try:
        return _COL[name]
    except (KeyError, TypeError):
        hint = " (the group column is named 'grp')" if name == "group" else ""
        raise ValueError(f"unknown task record column {name!r}{hint}; "
                         f"the columns are: {', '.join(COLUMNS)}") from None


def _blob(v):
    return bytes(v) if isinstance(v, (memoryview, bytearray)) else v


def _jsontext(v):
    return v if v is None or isinstance(v, str) else json.dumps(v)


def _nonul(v):  # PostgreSQL text cannot hold NUL characters
    return v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v


def _redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    head, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        rest = f"{cred}@{host}"
    return head + sep + rest


class TaskDB(abc.ABC):
    """A task-record database (use `open`). Safe to share between threads.

    Backends (SQLite, PostgreSQL) provide `_connect` and `_tx`."""

    placeholder = "?"
    types: dict = {}
    _convert_text: tuple = ()

    def __init__(self, where: str):
        self.where = where
        self._lock = threading.RLock()
        self._sql: dict = {}
        self._conn = self._connect()
        self._create_schema()

    # --- backend hooks -----------------------------------------------------
    @abc.abstractmethod
    def _connect(self):
        """A new connection to the database."""

    def _ensure(self):
        """The live connection (reconnecting if the backend lost it)."""
        return self._conn

    @abc.abstractmethod
    def _tx(self):
        """A context manager: a cursor in one transaction, committed on exit."""

    def _insert_head(self) -> str:
        return "INSERT INTO tasks"

    # --- schema ------------------------------------------------------------
    def _create_schema(self) -> None:
        cols = ", ".join(f"{c} {self.types.get(c, t)}" for c, t in COLUMN_TYPES.items())
        p = self.placeholder
        with self._tx() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            cur.execute(f"CREATE TABLE IF NOT EXISTS tasks ({cols})")
            for c in _INDEXED:
                cur.execute(f"CREATE INDEX IF NOT EXISTS tasks_{c} ON tasks ({c})")
            cur.execute(f"SELECT value FROM meta WHERE key = {p}", ("schema_version",))
            row = cur.fetchone()
            if row is None:
                cur.execute(f"INSERT INTO meta (key, value) VALUES ({p}, {p})",
                            ("schema_version", str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise CohortError(
                    f"the task database {self.where} has schema version {row[0]}, newer than "
                    f"this cohort understands ({SCHEMA_VERSION}); upgrade cohort or use "
                    "another database (--db)")

    @property
    def schema_version(self) -> int:
        p = self.placeholder
        with self._lock:
            cur = self._ensure().execute(f"SELECT value FROM meta WHERE key = {p}",
                                         ("schema_version",))
            return int(cur.fetchone()[0])

    # --- writing -----------------------------------------------------------
    def _prepared(self, kind: str, keys: tuple):
        """SQL and value converters for rows with these keys (validated, cached)."""
        got = self._sql.get((kind, keys))
        if got is not None:
            return got
        cols = [_colname(k) for k in keys]
        p = self.placeholder
        if kind == "insert":
            if "id" not in cols:
                raise ValueError("a task record needs an 'id'")
            sql = (f"{self._insert_head()} ({', '.join(cols)}) VALUES "
                   f"({', '.join([p] * len(cols))}) ON CONFLICT (id) DO NOTHING")
        else:
            if "id" in cols:
                raise ValueError("a task record's 'id' cannot be updated")
            sql = f"UPDATE tasks SET {', '.join(f'{c} = {p}' for c in cols)} WHERE id = {p}"
        conv = [(i, _blob) for i, c in enumerate(cols) if c in BLOBS]
        conv += [(i, _jsontext) for i, c in enumerate(cols) if c == "policy"]
        conv += [(i, _nonul) for i, c in enumerate(cols) if c in self._convert_text]
        self._sql[(kind, keys)] = got = (sql, conv)
        return got

    @staticmethod
    def _values(vals, conv):
        if conv:
            vals = list(vals)
            for i, fn in conv:
                vals[i] = fn(vals[i])
        return vals

    def _statements(self, inserts, updates) -> list:
        """Validated (sql, rows of values) groups, inserts first."""
        groups: dict = {}
        for row in inserts:
            groups.setdefault(("insert", tuple(row)), []).append(tuple(row.values()))
        for tid, fields in updates:
            if fields:
                groups.setdefault(("update", tuple(fields)), []).append(
                    (*fields.values(), tid))
        out = []
        for key, rows in groups.items():
            sql, conv = self._prepared(*key)
            out.append((sql, [self._values(v, conv) for v in rows] if conv else rows))
        return out

    def write(self, inserts: list[dict], updates: list[tuple[str, dict]]) -> None:
        """Insert new tasks (an existing id is left alone) and apply partial
        updates, all in one transaction."""
        stmts = self._statements(inserts, updates)
        if not stmts:
            return
        with self._tx() as cur:
            for sql, rows in stmts:
                cur.executemany(sql, rows)

    def insert(self, rows: list[dict]) -> None:
        """Record new tasks in one transaction; a row whose id exists is ignored."""
        self.write(rows, [])

    def update(self, changes: list[tuple[str, dict]]) -> None:
        """Apply (task id, {column: value}) changes in one transaction."""
        self.write([], changes)

    # --- reading -----------------------------------------------------------
    def _select(self, where: str, params: list, order: str = "", limit=None,
                with_blobs: bool = True) -> list[dict]:
        cols = ", ".join(c if with_blobs or c not in BLOBS else f"NULL AS {c}"
                         for c in COLUMNS)
        sql = f"SELECT {cols} FROM tasks"
        if where:
            sql += f" WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._ensure().execute(sql, params).fetchall()
        return [dict(zip(COLUMNS, r)) for r in rows]

    def _match(self, col: str, value, conds: list, params: list) -> None:
        p = self.placeholder
        if isinstance(value, (list, tuple, set, frozenset)):
            value = list(value)
            conds.append(f"{col} IN ({', '.join([p] * len(value))})" if value else "1 = 0")
            params.extend(value)
        else:
            conds.append(f"{col} = {p}")
            params.append(value)

    def get(self, task_id: str) -> dict | None:
        """The task's record (every column), or None if there is none."""
        rows = self._select(f"id = {self.placeholder}", [task_id])
        return rows[0] if rows else None

    def query(self, *, state=None, client=None, engine=None, group=None, ename=None,
              since: float | None = None, until: float | None = None, ids=None,
              limit: int | None = 100, newest_first: bool = True,
              with_blobs: bool = False) -> list[dict]:
        """Task records matching every filter given, ordered by submission time.

        A filter is a value or a list of values; `since` (inclusive) and `until`
        (exclusive) bound `submitted` (unix time). Without `with_blobs`, the
        ``request`` and ``result`` columns are None.
        """
        if ids is not None:
            ids = list(ids)
            if len(ids) > _CHUNK:  # keep each IN (...) list short
                rows = [r for i in range(0, len(ids), _CHUNK) for r in self.query(
                    state=state, client=client, engine=engine, group=group, ename=ename,
                    since=since, until=until, ids=ids[i:i + _CHUNK], limit=limit,
                    newest_first=newest_first, with_blobs=with_blobs)]
                rows.sort(key=lambda r: (r["submitted"] or 0.0, r["id"]),
                          reverse=newest_first)
                return rows if limit is None else rows[:limit]
        conds: list = []
        params: list = []
        for col, value in (("state", state), ("client", client), ("engine", engine),
                           ("grp", group), ("ename", ename), ("id", ids)):
            if value is not None:
                self._match(col, value, conds, params)
        p = self.placeholder
        if since is not None:
            conds.append(f"submitted >= {p}")
            params.append(float(since))
        if until is not None:
            conds.append(f"submitted < {p}")
            params.append(float(until))
        order = "submitted DESC, id DESC" if newest_first else "submitted ASC, id ASC"
        return self._select(" AND ".join(conds), params, order, limit, with_blobs)

    def unfinished(self) -> list[dict]:
        """Queued and running tasks, oldest first, with their request blobs."""
        conds: list = []
        params: list = []
        self._match("state", UNFINISHED, conds, params)
        return self._select(conds[0], params, "submitted ASC, id ASC")

    def count(self, state=None) -> int:
        """How many records there are (in `state`, a value or a list, if given)."""
        conds: list = []
        params: list = []
        if state is not None:
            self._match("state", state, conds, params)
        sql = "SELECT COUNT(*) FROM tasks" + (f" WHERE {conds[0]}" if conds else "")
        with self._lock:
            return int(self._ensure().execute(sql, params).fetchone()[0])

    # --- retention ---------------------------------------------------------
    def purge(self, *, older_than: float | None = None, states=FINISHED,
              keep_last: int | None = None) -> int:
        """Delete finished records; return how many were deleted.

        `older_than` deletes those completed more than that many seconds ago;
        `keep_last` deletes all but the newest `keep_last` (by completion time).
        Given both, both limits apply. Only records in `states` are considered,
        and queued or running ones are never deleted.
        """
        states = [states] if isinstance(states, str) else list(states)
        bad = [s for s in states if s not in FINISHED]
        if bad:
            raise ValueError(f"purge deletes finished tasks only ({', '.join(FINISHED)}); "
                             f"not {', '.join(map(repr, bad))}")
        if older_than is None and keep_last is None:
            raise ValueError("purge needs a policy: older_than (seconds) and/or keep_last")
        if not states:
            return 0
        p = self.placeholder
        inlist = f"state IN ({', '.join([p] * len(states))})"
        done_at = "COALESCE(completed, submitted, 0)"
        deleted = 0
        with self._tx() as cur:
            if older_than is not None:
                cur.execute(f"DELETE FROM tasks WHERE {inlist} AND {done_at} < {p}",
                            [*states, time.time() - float(older_than)])
                deleted += max(cur.rowcount, 0)
            if keep_last is not None:
                cur.execute(f"DELETE FROM tasks WHERE {inlist} AND id NOT IN (SELECT id "
                            f"FROM tasks WHERE {inlist} ORDER BY {done_at} DESC, id DESC "
                            f"LIMIT {max(int(keep_last), 0)})", [*states, *states])
                deleted += max(cur.rowcount, 0)
        if deleted:
            log.info("purged %d finished task records from %s", deleted, self.where)
        return deleted

    def close(self) -> None:
        """Close the connection (waits for a write in progress)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where}>"


class SQLiteTaskDB(TaskDB):
    """Task records in a SQLite file (WAL journal, synchronous=NORMAL)."""

    def __init__(self, path):
        self.path = path
        super().__init__(str(path))

    def _connect(self):
        if str(self.path) != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _ensure(self):
        if self._conn is None:
            raise CohortError(f"the task database {self.where} is closed")
        return self._conn

    @contextmanager
    def _tx(self):
        with self._lock:
            cur = self._ensure().cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise


class PostgresTaskDB(TaskDB):
    """Task records in a PostgreSQL database (psycopg 3)."""

    placeholder = "%s"
    types = {"submitted": "DOUBLE PRECISION", "started": "DOUBLE PRECISION",
             "completed": "DOUBLE PRECISION", "request": "BYTEA", "result": "BYTEA"}
    _convert_text = ("label", "status", "ename", "evalue", "traceback", "stdout", "stderr")

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise ImportError("a PostgreSQL task database needs psycopg 3: "
                              "pip install 'psycopg[binary]'") from None
        self._psycopg = psycopg
        self.url = url
        self._closed = False
        super().__init__(_redact(url))

    def _connect(self):
        try:
            return self._psycopg.connect(self.url, autocommit=True)
        except self._psycopg.OperationalError as exc:
            raise CohortError(f"cannot connect to the task database {self.where}: "
                              f"{str(exc).strip()}; check the --db URL and that the "
                              "server is running") from exc

    def _ensure(self):
        if self._closed:
            raise CohortError(f"the task database {self.where} is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._psycopg.connect(self.url, autocommit=True)
        return self._conn

    @contextmanager
    def _tx(self):
        with self._lock:
            conn = self._ensure()
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    def close(self) -> None:
        with self._lock:
            self._closed = True
            super().close()
