"""The task-record database and its background recorder, on SQLite and on a
real PostgreSQL server (started by `pg_server`; see tests/pg.py)."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from cohort.controller import taskdb
from cohort.errors import CohortError

ROW = {"id": "t1", "client": "c1", "kind": "apply", "grp": "g1", "label": "first",
       "state": "queued", "engine": 3, "submitted": 1700000000.125, "attempts": 0,
       "policy": '{"timeout": 5}', "request": b"\x00\x01request\xff", "stdout": "",
       "stderr": ""}


# --- fixtures ---------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def dburl(request, tmp_path):
    """A URL naming an empty task database on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/tasks.db"
    server = request.getfixturevalue("pg_server")
    import psycopg
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS tasks, meta")
    return server.url


@pytest.fixture
def db(dburl):
    d = taskdb.open(dburl, None)
    yield d
    d.close()


def rows(n, **common):
    return [{"id": f"t{i:03d}", "submitted": 1000.0 + i, "state": "queued", **common}
            for i in range(n)]


# --- the database -----------------------------------------------------------

def test_insert_get_roundtrip_with_blobs(db):
    db.insert([ROW])
    got = db.get("t1")
    assert set(got) == set(taskdb.COLUMNS)
    for k, v in ROW.items():
        assert got[k] == v, k
    assert type(got["request"]) is bytes and got["result"] is None
    assert got["completed"] is None
    assert db.get("nope") is None
    db.update([("t1", {"result": memoryview(b"\x00res"), "policy": {"retries": 2}})])
    got = db.get("t1")
    assert got["result"] == b"\x00res" and type(got["result"]) is bytes
    assert got["policy"] == '{"retries": 2}'


def test_attempts_default_and_nul_in_output(db):
    db.insert([{"id": "a", "stdout": "before\x00after"}])
    got = db.get("a")
    assert got["attempts"] == 0 and got["state"] == "queued"
    assert got["stdout"].startswith("before") and got["stdout"].endswith("after")


def test_duplicate_insert_is_ignored(db):
    db.insert([ROW])
    db.insert([{**ROW, "label": "second"}, {"id": "t2", "label": "new"}])
    assert db.get("t1")["label"] == "first"
    assert db.get("t2")["label"] == "new"
    assert db.count() == 2


def test_update_is_partial(db):
    db.insert([ROW, {"id": "t2", "state": "queued"}])
    db.update([("t1", {"state": "running", "started": 5.5, "attempts": 1}),
               ("t2", {"state": "running"}), ("missing", {"state": "done"})])
    db.update([("t1", {"state": "done", "completed": 7.0, "status": "ok", "result": b"r"}),
               ("t2", {})])
    got = db.get("t1")
    assert (got["state"], got["started"], got["completed"], got["attempts"]) == \
        ("done", 5.5, 7.0, 1)
    assert got["label"] == "first" and got["request"] == ROW["request"]
    assert db.get("t2")["state"] == "running" and db.get("missing") is None


@pytest.mark.parametrize("bad", ["bogus", "group", "id = id; DROP TABLE tasks; --"])
def test_unknown_columns_raise(db, bad):
    with pytest.raises(ValueError, match="unknown task record column"):
        db.insert([{"id": "x", bad: 1}])
    db.insert([{"id": "x"}])
    with pytest.raises(ValueError, match="unknown task record column"):
        db.update([("x", {bad: 1})])
    with pytest.raises(ValueError, match="id"):
        db.update([("x", {"id": "y"})])
    with pytest.raises(ValueError, match="id"):
        db.insert([{"state": "queued"}])
    assert db.count() == 1 and db.get("x")["state"] == "queued"


def test_query_filters(db):
    db.insert(rows(4, client="a", grp="g1", engine=0) + [
        {"id": "u0", "submitted": 2000.0, "state": "done", "client": "b", "grp": "g2",
         "engine": 1, "ename": "ValueError", "result": b"R"},
        {"id": "u1", "submitted": 2001.0, "state": "failed", "client": "b", "engine": 1,
         "ename": "KeyError"},
        {"id": "u2", "submitted": 2002.0, "state": "running", "client": "b", "engine": 2}])

    def ids(**kw):
        return [r["id"] for r in db.query(**kw)]

    assert ids() == ["u2", "u1", "u0", "t003", "t002", "t001", "t000"]
    assert ids(newest_first=False)[:2] == ["t000", "t001"]
    assert ids(limit=2) == ["u2", "u1"]
    assert len(ids(limit=None)) == 7
    assert ids(state="done") == ["u0"]
    assert ids(state=["done", "failed"]) == ["u1", "u0"]
    assert ids(state=[]) == []
    assert ids(client="b") == ["u2", "u1", "u0"]
    assert ids(engine=1) == ["u1", "u0"]
    assert ids(group="g2") == ["u0"] and len(ids(group="g1")) == 4
    assert ids(ename="KeyError") == ["u1"]
    assert ids(since=2001.0) == ["u2", "u1"]
    assert ids(until=1002.0) == ["t001", "t000"]
    assert ids(since=1001.0, until=2001.0) == ["u0", "t003", "t002", "t001"]
    assert ids(ids=["u0", "t001", "zzz"]) == ["u0", "t001"]
    assert ids(client="b", state="running") == ["u2"]
    assert db.query(ids=["u0"])[0]["result"] is None
    assert db.query(ids=["u0"], with_blobs=True)[0]["result"] == b"R"


def test_query_many_ids(db):
    db.insert(rows(1200))
    wanted = [f"t{i:03d}" for i in range(0, 1200, 2)]
    got = db.query(ids=wanted, limit=None)
    assert [r["id"] for r in got] == wanted[::-1]  # newest (last submitted) first
    got = db.query(ids=wanted, limit=500, newest_first=False)
    assert [r["id"] for r in got] == wanted[:500]


def test_unfinished_oldest_first_with_blobs(db):
    db.insert([{"id": "r", "state": "running", "submitted": 3.0, "request": b"R"},
               {"id": "q", "state": "queued", "submitted": 1.0, "request": b"Q"},
               {"id": "d", "state": "done", "submitted": 2.0, "request": b"D"}])
    got = db.unfinished()
    assert [(r["id"], r["request"]) for r in got] == [("q", b"Q"), ("r", b"R")]


def test_count(db):
    assert db.count() == 0
    db.insert(rows(3) + [{"id": "d", "state": "done"}])
    assert db.count() == 4 and db.count("queued") == 3
    assert db.count(["done", "queued"]) == 4 and db.count("failed") == 0


def _finished(now):
    out = []
    for i in range(10):  # completed 0..9 hours ago, newest first
        out.append({"id": f"f{i}", "state": ("done", "failed", "cancelled", "aborted")[i % 4],
                    "submitted": now - 3600 * i - 1, "completed": now - 3600 * i})
    out.append({"id": "run", "state": "running", "submitted": now - 99999})
    out.append({"id": "que", "state": "queued", "submitted": now - 99999,
                "completed": now - 99999})
    return out


def test_purge_older_than(db):
    now = time.time()
    db.insert(_finished(now))
    assert db.purge(older_than=4.5 * 3600) == 5  # f5..f9
    assert sorted(r["id"] for r in db.query(limit=None)) == \
        ["f0", "f1", "f2", "f3", "f4", "que", "run"]
    assert db.purge(older_than=0, states=("done",)) == 2  # f0, f4
    assert db.count("queued") == 1 and db.count("running") == 1


def test_purge_keep_last(db):
    now = time.time()
    db.insert(_finished(now))
    assert db.purge(keep_last=3) == 7
    assert sorted(r["id"] for r in db.query(limit=None)) == ["f0", "f1", "f2", "que", "run"]
    assert db.purge(keep_last=0) == 3
    assert db.purge(keep_last=0) == 0
    assert sorted(r["id"] for r in db.query(limit=None)) == ["que", "run"]


def test_purge_both_limits_and_guards(db):
    now = time.time()
    db.insert(_finished(now))
    assert db.purge(older_than=7.5 * 3600, keep_last=5) == 5  # age takes f8, f9; count f5..f7
    assert db.count() == 7
    with pytest.raises(ValueError, match="finished"):
        db.purge(older_than=0, states=("running",))
    with pytest.raises(ValueError, match="policy"):
        db.purge()
    assert db.purge(older_than=0, states=()) == 0
    assert db.count("running") == 1 and db.count("queued") == 1


def test_reopen_keeps_everything(dburl):
    d = taskdb.open(dburl, None)
    d.insert([ROW])
    d.update([("t1", {"state": "done", "result": b"answer"})])
    d.close()
    d = taskdb.open(dburl, None)
    try:
        got = d.get("t1")
        assert got["state"] == "done" and got["result"] == b"answer"
        assert got["request"] == ROW["request"]
        assert d.schema_version == taskdb.SCHEMA_VERSION
    finally:
        d.close()
    with pytest.raises(CohortError, match="closed"):
        d.get("t1")


def test_newer_schema_is_refused(db, dburl):
    p = db.placeholder
    with db._tx() as cur:
        cur.execute(f"UPDATE meta SET value = {p} WHERE key = {p}", ("99", "schema_version"))
    with pytest.raises(CohortError, match="upgrade cohort"):
        taskdb.open(dburl, None)


# --- opening ----------------------------------------------------------------

def test_open_sqlite_forms(tmp_path):
    default = tmp_path / "profile" / "sub" / "tasks.db"
    for url, path in [(None, default), ("", default), (str(tmp_path / "bare.db"),
                      tmp_path / "bare.db"), (f"sqlite://{tmp_path}/u.db", tmp_path / "u.db")]:
        d = taskdb.open(url, default)
        d.insert([{"id": "x"}])
        d.close()
        assert path.exists()
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    with pytest.raises(ValueError, match="absolute"):
        taskdb.open("sqlite://relative.db", default)
    with pytest.raises(ValueError, match="postgresql://"):
        taskdb.open("mysql://root:hunter2@h/db", default)


def test_postgres_errors_are_clear(monkeypatch):
    if importlib.util.find_spec("psycopg") is None and \
            os.environ.get("COHORT_SKIP_POSTGRES") != "1":
        pytest.fail("psycopg is not installed: run .ci/run (or pip install -e '.[test]')")
    if importlib.util.find_spec("psycopg") is not None:
        with pytest.raises(CohortError, match="cannot connect") as exc:
            taskdb.open("postgresql://me:s3cret@127.0.0.1:1/nodb", None)
        assert "s3cret" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'psycopg\[binary\]'"):
        taskdb.open("postgresql://me@127.0.0.1:1/nodb", None)


# --- the recorder -----------------------------------------------------------

class SpyDB:
    """A TaskDB stand-in that records each write and can hold or fail them."""

    def __init__(self, db, fail=()):
        self.db = db
        self.writes = []
        self.fail = list(fail)  # exceptions to raise on the next writes
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def write(self, inserts, updates):
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise self.fail.pop(0)
        self.db.write(inserts, updates)
        self.writes.append(([dict(r) for r in inserts], [(t, dict(f)) for t, f in updates]))

    def close(self):
        self.db.close()


def test_recorder_batches_merges_and_flushes(db):
    spy = SpyDB(db)
    rec = taskdb.Recorder(spy, interval=0.01)
    spy.gate.clear()
    rec.insert({"id": "a", "state": "queued", "submitted": 1.0})
    assert spy.entered.wait(5)  # the first write is in progress and held
    rec.update("a", state="running", started=2.0)
    rec.insert({"id": "b", "state": "queued", "submitted": 3.0, "request": b"B"})
    rec.update("b", state="running", engine=1)
    rec.update("a", state="done", completed=4.0, result=b"A")
    rec.update("b", attempts=1)
    rec.insert({"id": "a", "state": "bogus-duplicate"})
    spy.gate.set()
    rec.flush(timeout=10)
    assert len(spy.writes) == 3
    inserts, updates = spy.writes[1]
    assert [r["id"] for r in inserts] == ["b"]
    assert dict(updates) == {"a": {"state": "done", "started": 2.0, "completed": 4.0,
                                   "result": b"A"},
                             "b": {"state": "running", "engine": 1, "attempts": 1}}
    # the second insert of "a" came after updates of it: committed after them (ignored)
    assert spy.writes[2] == ([{"id": "a", "state": "bogus-duplicate"}], [])
    a, b = db.get("a"), db.get("b")
    assert (a["state"], a["started"], a["result"]) == ("done", 2.0, b"A")
    assert (b["state"], b["engine"], b["attempts"], b["request"]) == ("running", 1, 1, b"B")
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.insert({"id": "c"})


def test_recorder_keeps_order(db):
    db.insert([{"id": "old", "state": "done", "label": "kept"}])
    rec = taskdb.Recorder(db, interval=0.5)
    rec.update("new", state="running")       # before its insert: a no-op
    rec.insert({"id": "new", "state": "queued"})
    rec.insert({"id": "old", "state": "queued"})  # exists: ignored ...
    rec.update("old", stdout="out")               # ... but its update applies
    rec.flush(timeout=10)
    assert db.get("new")["state"] == "queued"
    old = db.get("old")
    assert (old["state"], old["label"], old["stdout"]) == ("done", "kept", "out")
    with pytest.raises(ValueError, match="unknown task record column"):
        rec.update("new", bogus=1)
    with pytest.raises(ValueError, match="unknown task record column"):
        rec.insert({"id": "z", "group": "g"})
    with pytest.raises(ValueError, match="id"):
        rec.update("new", id="other")
    rec.close()


def test_recorder_many_rows_and_close_commits(dburl):
    d = taskdb.open(dburl, None)
    rec = taskdb.Recorder(d, interval=0.01, max_batch=700)
    for i, r in enumerate(rows(3000)):
        rec.insert(r)
        rec.update(r["id"], state="done", completed=r["submitted"] + 1)
        if i % 500 == 0:  # reading while the recorder writes
            assert d.count() <= 3000 and len(d.query(limit=5)) <= 5
    rec.close()
    d = taskdb.open(dburl, None)
    try:
        assert d.count("done") == 3000
    finally:
        d.close()


KILLED = """
import os, signal, sys
from cohort.controller import taskdb
rec = taskdb.Recorder(taskdb.open(sys.argv[1], None))
for i in range(200):
    rec.insert({"id": f"k{i}", "state": "queued", "submitted": float(i),
                "request": b"req%d" % i})
    rec.update(f"k{i}", state="done" if i % 2 else "running", result=b"res")
rec.flush(timeout=10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flushed_records_survive_sigkill(dburl):
    proc = subprocess.run([sys.executable, "-c", KILLED, dburl], timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    d = taskdb.open(dburl, None)
    try:
        assert d.count("done") == 100
        assert [r["request"] for r in d.unfinished()][:2] == [b"req0", b"req2"]
    finally:
        d.close()


@pytest.mark.parametrize("exc", [sqlite3.OperationalError("database is locked"),
                                 RuntimeError("one-off glitch")])
def test_recorder_survives_a_failing_write(db, caplog, exc):
    spy = SpyDB(db, fail=[exc])
    rec = taskdb.Recorder(spy, interval=0.01)
    with caplog.at_level(logging.WARNING, logger="cohort.controller.taskdb"):
        rec.insert({"id": "a"})
        rec.insert({"id": "b"})
        rec.update("a", state="done")
        rec.flush(timeout=10)
        rec.insert({"id": "c"})
        rec.flush(timeout=10)
    assert db.count() == 3 and db.get("a")["state"] == "done"
    assert "task records failed" in caplog.text
    rec.close()


def test_recorder_drops_only_a_refused_record(db, caplog):
    class Refusing(SpyDB):
        def write(self, inserts, updates):
            if any(r["id"] == "bad" for r in inserts):
                raise ValueError("refused")
            super().write(inserts, updates)

    rec = taskdb.Recorder(Refusing(db), interval=0.01)
    with caplog.at_level(logging.WARNING, logger="cohort.controller.taskdb"):
        for tid in ("a", "bad", "b"):
            rec.insert({"id": tid})
        rec.flush(timeout=10)
    assert sorted(r["id"] for r in db.query()) == ["a", "b"]
    assert "dropped" in caplog.text and "bad" in caplog.text
    rec.close()


def test_recorder_close_gives_up_after_timeout(db, caplog):
    spy = SpyDB(db, fail=[sqlite3.OperationalError("disk I/O error")] * 1000)
    rec = taskdb.Recorder(spy, interval=0.01)
    rec.insert({"id": "a"})
    with pytest.raises(CohortError, match="not committed"):
        rec.flush(timeout=0.2)
    with caplog.at_level(logging.ERROR, logger="cohort.controller.taskdb"):
        rec.close(timeout=0.2)
    assert "unwritten" in caplog.text


def test_recorder_rides_out_a_lost_postgres_connection(pg_server, caplog):
    import psycopg
    d = taskdb.open(pg_server.url, None)
    rec = taskdb.Recorder(d, interval=0.01)
    rec.insert({"id": "before"})
    rec.flush(timeout=10)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (d._conn.info.backend_pid,))
    with caplog.at_level(logging.WARNING, logger="cohort.controller.taskdb"):
        rec.insert({"id": "after"})
        rec.flush(timeout=10)
    assert d.get("after") is not None and d.count() >= 2
    assert "failed" in caplog.text  # the lost connection was noticed, then replaced
    rec.close()
