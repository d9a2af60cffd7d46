"""The dashboard's process: a client of the controller plus a small HTTP server.

A poller thread asks the controller for its status once a period (engines, queue)
and keeps a short history (queue length, throughput, departed engines); the task
stream and failures are read from the task database directly, a bounded window
at a time through its indexes, so 100,000 records cost no more than 100. Every
request needs the cluster's dashboard token (an HMAC of a fixed label under the
cluster key), given once in the URL; the page then carries it in a cookie.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..profile import ConnectionInfo, profile_dir, resolve_connection_file

log = logging.getLogger(__name__)

LABEL = b"cohort dashboard token v1"
RECORD = "dashboard.json"
DEFAULT_PORT = 8787
COOKIE = "cohort_dashboard"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
TRACEBACK_CAP = 20_000
TIMEOUT_NAMES = ("TaskTimeout", "TimeoutError", "JobTimeout")


def dashboard_token(key: str) -> str:
    """The dashboard's token for a cluster key: no new secret, same lifetime as the key."""
    return hmac.new(key.encode(), LABEL, hashlib.sha256).hexdigest()[:40]


def outcome(state, attempts, ename) -> str:
    """How a task record is coloured: ok, retried, error, timeout, cancelled, running, queued."""
    if state == "done":
        return "retried" if (attempts or 0) > 1 else "ok"
    if state == "failed":
        return "timeout" if ename in TIMEOUT_NAMES else "error"
    if state in ("cancelled", "aborted"):
        return "cancelled"
    return state or "queued"


# --- per-process CPU and memory, from /proc ---------------------------------------
class ProcSampler:
    """CPU (% of one core since the last sample) and resident memory of local pids."""

    def __init__(self):
        self._prev: dict = {}
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self, pid: int) -> tuple:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return None, None
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        start = fields[19]
        now = time.monotonic()
        prev = self._prev.get(pid)
        self._prev[pid] = (ticks, now, start)
        if prev is None or prev[2] != start or now <= prev[1]:
            return None, rss
        return round(100.0 * (ticks - prev[0]) / self._tick / (now - prev[1]), 1), rss

    def forget(self, keep) -> None:
        for pid in set(self._prev) - set(keep):
            del self._prev[pid]


# --- the task database, read-only and bounded -------------------------------------
class TaskReader:
    """Bounded reads of the task records: SQLite read-only, or PostgreSQL."""

    def __init__(self, where):
        self.where = str(where)
        self._lock = threading.Lock()
        self._conn = None
        self.p = "?"

    def _connection(self):
        if self._conn is not None:
            return self._conn
        if self.where.startswith(("postgresql://", "postgres://")):
            import psycopg
            self._conn = psycopg.connect(self.where, autocommit=True)
            self.p = "%s"
        else:
            if not Path(self.where).exists():
                return None  # no task recorded yet
            self._conn = sqlite3.connect(f"file:{self.where}?mode=ro", uri=True,
                                         check_same_thread=False, timeout=5)
        return self._conn

    def _rows(self, sql: str, params=()) -> list:
        with self._lock:
            conn = self._connection()
            if conn is None:
                return []
            try:
                cur = conn.execute(sql.replace("?", self.p), params)
                return cur.fetchall()
            except Exception as e:
                if "no such table" in str(e):
                    return []
                self.close()  # reconnect next time
                raise

    def counts(self) -> dict:
        return {s: n for s, n in self._rows("SELECT state, COUNT(*) FROM tasks GROUP BY state")}

    def window(self, since: float, limit: int) -> list:
        """Tasks submitted since `since` (newest first, at most `limit`) and those running."""
        cols = "id, engine, state, attempts, ename, submitted, started, completed"
        rows = self._rows(f"SELECT {cols} FROM tasks WHERE submitted >= ? "
                          f"ORDER BY submitted DESC LIMIT ?", (since, limit))
        seen = {r[0] for r in rows}
        rows += [r for r in self._rows(f"SELECT {cols} FROM tasks WHERE state = ? "
                                       f"ORDER BY submitted DESC LIMIT ?", ("running", limit))
                 if r[0] not in seen]
        return [{"id": r[0], "engine": r[1], "outcome": outcome(r[2], r[3], r[4]),
                 "state": r[2], "attempts": r[3], "ename": r[4], "submitted": r[5],
                 "started": r[6], "completed": r[7]} for r in rows]

    def running(self, limit: int = 1000) -> dict:
        """{engine id: task id} of running tasks."""
        out: dict = {}
        for tid, eid in self._rows("SELECT id, engine FROM tasks WHERE state = ? "
                                   "ORDER BY submitted DESC LIMIT ?", ("running", limit)):
            if eid is not None:
                out.setdefault(eid, tid)
        return out

    def failures(self, limit: int) -> list:
        rows = self._rows("SELECT id, engine, ename, evalue, traceback, completed, attempts "
                          "FROM tasks WHERE state = ? ORDER BY submitted DESC LIMIT ?",
                          ("failed", limit))
        return [{"id": r[0], "engine": r[1], "ename": r[2], "evalue": (r[3] or "")[:2000],
                 "traceback": (r[4] or "")[-TRACEBACK_CAP:], "completed": r[5],
                 "attempts": r[6], "outcome": outcome("failed", r[6], r[2])} for r in rows]

    def task(self, task_id: str) -> dict | None:
        cols = ("id", "client", "kind", "grp", "label", "state", "engine", "submitted", "started",
                "completed", "attempts", "status", "ename", "evalue", "traceback", "stdout",
                "stderr")
        rows = self._rows(f"SELECT {', '.join(cols)} FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            return None
        d = dict(zip(cols, rows[0]))
        for k in ("traceback", "stdout", "stderr"):
            d[k] = (d[k] or "")[-TRACEBACK_CAP:]
        d["outcome"] = outcome(d["state"], d["attempts"], d["ename"])
        return d

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


# --- the live view of the cluster ------------------------------------------------
class Dashboard:
    """Polls the controller and serves the page. ``Dashboard(cf).serve()``."""

    def __init__(self, connection_file=None, profile: str | None = None, ip: str = "127.0.0.1",
                 port: int | None = None, db: str | None = None, period: float = 1.0,
                 history: int = 600):
        self.connection_file = resolve_connection_file(connection_file, profile)
        self.info = ConnectionInfo.read(self.connection_file)
        self.token = dashboard_token(self.info.key)
        self.folder = self.connection_file.parent
        self.cluster_record = self._find_cluster_record(profile)
        self.reader = TaskReader(db or self.folder / "tasks.db")
        self.period = period
        self.procs = ProcSampler()
        self.hostname = socket.gethostname()
        self.series: collections.deque = collections.deque(maxlen=history)
        self.departed: collections.OrderedDict = collections.OrderedDict()
        self._last_engines: dict = {}
        self._last_done: dict = {}
        self._jobs: list = []
        self._jobs_at = 0.0
        self._counts_next = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = None
        self.snapshot: dict = {"engines": [], "controller": {"connected": False}}
        self.httpd = self._bind(ip, port)
        self.ip, self.port = self.httpd.server_address[:2]
        self._poller = threading.Thread(target=self._poll_loop, name="cohort-dashboard-poll",
                                        daemon=True)

    def _find_cluster_record(self, profile):
        """cluster.json of the `cohort start` that owns this connection file, if any."""
        for folder in (self.folder, profile_dir(profile)):
            path = folder / "cluster.json"
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if Path(rec.get("connection_file", "")) == self.connection_file or folder == self.folder:
                return path
        return None

    def _bind(self, ip: str, port: int | None):
        ports = [port] if port is not None else [DEFAULT_PORT, 0]
        for i, p in enumerate(ports):
            try:
                httpd = ThreadingHTTPServer((ip, p), _Handler)
                break
            except OSError:
                if i == len(ports) - 1:
                    raise
        httpd.daemon_threads = True
        httpd.dashboard = self
        return httpd

    @property
    def url(self) -> str:
        host = self.ip if self.ip not in ("0.0.0.0", "::", "") else socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> "Dashboard":
        """Serve in background threads (tests, notebooks); `stop()` ends it."""
        self._poller.start()
        threading.Thread(target=self.httpd.serve_forever, name="cohort-dashboard-http",
                         daemon=True).start()
        return self

    def serve(self) -> None:
        """Serve in this thread until stopped (SIGTERM, SIGINT or `stop()`)."""
        self._poller.start()
        try:
            self.httpd.serve_forever(poll_interval=0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()
        self.httpd.server_close()
        if self._poller.is_alive() and self._poller is not threading.current_thread():
            self._poller.join(5)
        if self.client is not None:
            self.client.close()
        self.reader.close()

    def write_record(self) -> Path:
        """dashboard.json beside the connection file (0600: the URL holds the token)."""
        from ..procinfo import proc_starttime
        path = self.folder / RECORD
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.url, "pid": os.getpid(), "starttime": proc_starttime(os.getpid()),
                       "ip": self.ip, "port": self.port,
                       "connection_file": str(self.connection_file)}, f, indent=1)
        os.replace(tmp, path)
        return path

    def remove_record(self) -> None:
        path = self.folder / RECORD
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    # --- polling the controller ------------------------------------------------
    def _connect(self):
        from ..client import Client
        return Client(self.connection_file, timeout=3, stream_output=False,
                      controller_timeout=max(5.0, 5 * self.period))

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll()
            except Exception:
                log.exception("dashboard poll failed")
            self._stop.wait(max(0.05, self.period - (time.monotonic() - t0)))

    def poll(self) -> dict:
        """One sample: the controller's status, the task counts, the derived history."""
        now = time.time()
        ctl: dict = {"connected": False}
        engines: list = []
        try:
            if self.client is None:
                self.info = ConnectionInfo.read(self.connection_file)
                self.client = self._connect()
            # not rc.status(): its 10 s wait would freeze the page when the controller is gone
            st = self.client.status(timeout=max(2.0, 3 * self.period))
            ctl = {"connected": True, "pid": st["pid"], "host": st["host"],
                   "uptime": st["uptime"], "clients": st["clients"] - 1,
                   "tasks_pending": st["tasks_pending"]}
            engines = st["engines"]
        except Exception as e:
            ctl["error"] = str(e) or type(e).__name__
            if self.client is not None and not os.path.exists(self.connection_file):
                self.client.close()
                self.client = None
        counts, running = self.snapshot.get("counts", {}), {}
        try:
            # counting is a scan of the state index (~12 ms per 100,000 records): with
            # millions of records, count less often rather than load the database
            if time.monotonic() >= self._counts_next:
                t0 = time.monotonic()
                counts = self.reader.counts()
                self._counts_next = t0 + max(self.period, 10 * (time.monotonic() - t0)) - 0.01
            running = self.reader.running()
        except Exception as e:
            log.warning("cannot read the task database %s: %s", self.reader.where, e)
        rows = self._engine_rows(engines, running, now) if ctl["connected"] else \
            [dict(e, state="unknown") for e in self._last_engines.values()]
        if ctl["connected"]:
            self._sample_series(engines, ctl["tasks_pending"], now)
        snap = {"now": now, "cluster_id": self.info.cluster_id, "controller": ctl,
                "engines": rows, "counts": counts, "total": sum(counts.values()),
                "series": list(self.series), "jobs": self._job_states(now),
                "period": self.period, "db": _redact(self.reader.where)}
        with self._lock:
            self.snapshot = snap
        return snap

    def _engine_rows(self, engines: list, running: dict, now: float) -> list:
        current = {e["id"]: e for e in engines}
        known = max([*current, *self._last_engines, *self.departed, -1])
        for eid, e in self._last_engines.items():  # gone since the last sample
            if eid not in current:
                # a replacement registers under a new id, higher than any seen before it left
                # (one that joined within this same sample counts too)
                joined = [i for i in current if i not in self._last_engines]
                self.departed[eid] = dict(e, left=now, why=self.client.departed.get(eid, "left the cluster"),
                                          after=min([known, *[i - 1 for i in joined]]))
        for eid in current:
            self.departed.pop(eid, None)  # an id is not reused, but be safe
        while len(self.departed) > 50:
            self.departed.popitem(last=False)
        self._last_engines = current
        rows, pids = [], []
        for e in sorted(engines, key=lambda e: e["id"]):
            cpu = mem = None
            if e.get("host") == self.hostname and e.get("pid"):
                cpu, mem = self.procs.sample(e["pid"])
                pids.append(e["pid"])
            rows.append({"id": e["id"], "host": e.get("host"), "pid": e.get("pid"),
                         "state": e.get("state"), "queue": e.get("queue", 0),
                         "completed": e.get("completed", 0), "failed": e.get("failed", 0),
                         "registered": e.get("registered"), "current": running.get(e["id"]),
                         "cpu": cpu, "mem": mem, "mpi": e.get("mpi")})
        self.procs.forget(pids)
        for eid, d in reversed(self.departed.items()):
            state, note = "dead", d["why"]
            if d.get("restart"):
                newer = [e["id"] for e in engines if e.get("host") == d.get("host")
                         and e["id"] > d["after"]]
                if newer:
                    note = f"{d['why']}; replaced by engine {min(newer)}"
                elif now - d["left"] < 30:
                    state = "restarting"
            rows.append({"id": eid, "host": d.get("host"), "pid": d.get("pid"), "state": state,
                         "queue": 0, "completed": d.get("completed", 0),
                         "failed": d.get("failed", 0), "registered": d.get("registered"),
                         "current": None, "cpu": None, "mem": None, "why": note,
                         "left": d["left"], "mpi": d.get("mpi")})
        return rows

    def _sample_series(self, engines: list, pending: int, now: float) -> None:
        done = {e["id"]: e.get("completed", 0) + e.get("failed", 0) for e in engines}
        finished = sum(max(0, n - self._last_done.get(eid, n if not self.series else 0))
                       for eid, n in done.items())
        dt = now - self.series[-1][0] if self.series else None
        self._last_done = done
        rate = round(finished / dt, 2) if dt else 0.0
        self.series.append((round(now, 3), pending, rate))

    def _job_states(self, now: float) -> list:
        """The batch jobs `cohort start` launched, each asked at most every 10 s."""
        if self.cluster_record is None or now - self._jobs_at < 10:
            return self._jobs
        self._jobs_at = now
        from ..cluster.launchers import EngineGroup
        try:
            groups = json.loads(self.cluster_record.read_text()).get("groups", ())
        except (OSError, ValueError):
            return self._jobs
        jobs = []
        for g in groups:
            if g.get("kind") == "local" and not g.get("job"):
                continue
            try:
                state = EngineGroup.from_record(g).state()
            except Exception as e:
                state = f"unknown ({e})"
            jobs.append({"kind": g.get("kind"), "n": g.get("n"), "service": g.get("service"),
                         "job": g.get("job"), "state": state})
        self._jobs = jobs
        return jobs

    # --- what the handlers serve -------------------------------------------------
    def state(self) -> dict:
        with self._lock:
            return self.snapshot

    def tasks(self, window: float, limit: int) -> dict:
        now = time.time()
        return {"now": now, "window": window,
                "tasks": self.reader.window(now - window, limit)}


def _redact(where: str) -> str:
    from ..controller.taskdb_sql import _redact as redact
    return redact(where)


# --- HTTP --------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "cohort-dashboard"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str, headers=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, code: int = 200) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _token_ok(self, query: dict) -> bool:
        want = self.server.dashboard.token
        given = (query.get("token") or [None])[0] or self.headers.get("X-Cohort-Token")
        if given is None:
            for part in (self.headers.get("Cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    given = value
        return given is not None and hmac.compare_digest(given.encode(), want.encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._token_ok(query):
            self._send(403, b"403 Forbidden: this dashboard needs the cluster's token; open the "
                            b"URL that `cohort dashboard` printed (`cohort status` shows it)\n",
                       "text/plain; charset=utf-8")
            return
        dash = self.server.dashboard
        path = url.path
        try:
            if path in ("/", "/index.html"):
                cookie = f"{COOKIE}={dash.token}; Path=/; HttpOnly; SameSite=Strict"
                self._static("index.html", [("Set-Cookie", cookie)])
            elif path.startswith("/static/") and path[8:] in STATIC:
                self._static(path[8:])
            elif path == "/api/state":
                self._json(dash.state())
            elif path == "/api/tasks":
                window = min(max(float(query.get("window", ["60"])[0]), 1.0), 86400.0)
                limit = min(max(int(query.get("limit", ["2000"])[0]), 1), 10000)
                self._json(dash.tasks(window, limit))
            elif path == "/api/failures":
                limit = min(max(int(query.get("limit", ["20"])[0]), 1), 200)
                self._json({"failures": dash.reader.failures(limit)})
            elif path == "/api/task":
                tid = (query.get("id") or [""])[0]
                rec = dash.reader.task(tid)
                self._json(rec if rec is not None else {"error": f"no task {tid!r}"},
                           200 if rec is not None else 404)
            else:
                self._send(404, b"404 Not Found\n", "text/plain; charset=utf-8")
        except (ValueError, TypeError) as e:
            self._json({"error": str(e)}, 400)
        except Exception as e:
            log.exception("dashboard request %s failed", path)
            self._json({"error": f"{type(e).__name__}: {e}"}, 500)

    def _static(self, name: str, headers=()) -> None:
        body = (resources.files("cohort.dashboard") / "static" / name).read_bytes()
        self._send(200, body, STATIC[name], headers)
