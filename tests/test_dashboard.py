"""The live dashboard: served by a client process, checked in a real headless Chromium.

The browser is Debian's chromium (/usr/bin/chromium, installed by
.ci/services/chromium.sh) driven by Playwright from pip; no browser is downloaded.
Set COHORT_SKIP_BROWSER=1 to skip the browser tests where Chromium cannot run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

import cohort
import cohort.profile
from cohort.dashboard import Dashboard, dashboard_token, read_record
from cohort.dashboard.server import TaskReader, outcome

from conftest import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _get(url: str, headers=None):
    """(status, body) of a plain HTTP GET."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _api(dash: Dashboard, path: str):
    sep = "&" if "?" in path else "?"
    status, body = _get(f"http://127.0.0.1:{dash.port}{path}{sep}token={dash.token}")
    assert status == 200, body
    return json.loads(body)


# --- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def busy(cohort_home):
    """A private two-engine cluster and a dashboard serving it (in this process)."""
    cl = cohort.Cluster(n=2)
    rc = cl.start()
    rc.wait_for_engines(2, timeout=30)
    dash = Dashboard(cl.connection_file, port=0, period=0.3).start()
    try:
        yield cl, dash
    finally:
        dash.stop()
        cl.stop()


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("COHORT_SKIP_BROWSER") == "1":
        pytest.skip("COHORT_SKIP_BROWSER=1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run .ci/run (pip install -e '.[test]'), "
                    "or set COHORT_SKIP_BROWSER=1")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run .ci/run (.ci/services/chromium.sh installs "
                    f"Debian's chromium), or set COHORT_SKIP_BROWSER=1")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(20_000)
    yield pg
    pg.close()


# --- pure pieces ----------------------------------------------------------------------
def test_token_is_derived_from_the_cluster_key():
    assert dashboard_token("k1") == dashboard_token("k1")
    assert dashboard_token("k1") != dashboard_token("k2")
    assert "k1" not in dashboard_token("k1") and len(dashboard_token("k1")) == 40


def test_outcomes():
    assert outcome("done", 1, None) == "ok"
    assert outcome("done", 3, None) == "retried"
    assert outcome("failed", 1, "ZeroDivisionError") == "error"
    assert outcome("failed", 1, "TaskTimeout") == "timeout"
    assert outcome("cancelled", 0, "TaskCancelled") == "cancelled"
    assert outcome("aborted", 0, "TaskAborted") == "cancelled"
    assert outcome("running", 1, None) == "running"


def test_task_reader_before_any_task_and_bounded(tmp_path):
    reader = TaskReader(tmp_path / "tasks.db")  # no database yet: empty, not an error
    assert reader.counts() == {} and reader.window(0, 10) == [] and reader.failures(5) == []
    from cohort.controller import taskdb
    with taskdb.open(None, tmp_path / "tasks.db"):
        pass
    _insert_synthetic(tmp_path / "tasks.db", 1000, recent=100)
    assert sum(reader.counts().values()) == 1000
    assert len(reader.window(time.time() - 86_400, 50)) == 50
    assert len(reader.window(time.time() - 31, 1000)) == 100
    (f,) = reader.failures(1)
    assert f["ename"] == "ValueError" and f["traceback"].startswith("Traceback")
    assert reader.task(f["id"])["outcome"] == "error" and reader.task("nope") is None
    reader.close()


# --- the token --------------------------------------------------------------------------
def test_requests_without_the_token_get_403(busy):
    cl, dash = busy
    base = f"http://127.0.0.1:{dash.port}"
    for path in ("/", "/api/state", "/api/tasks", "/api/failures", "/static/app.js", "/nope"):
        assert _get(base + path)[0] == 403, path
        assert _get(base + path + "?token=" + "0" * 40)[0] == 403, path
        assert _get(base + path, {"Cookie": "cohort_dashboard=wrong"})[0] == 403, path
    assert dash.token == dashboard_token(cl.info.key)
    status, body = _get(f"{base}/?token={dash.token}")
    assert status == 200 and b"cohort dashboard" in body
    assert _get(base + "/api/state", {"X-Cohort-Token": dash.token})[0] == 200
    assert _get(base + "/static/app.js", {"Cookie": f"cohort_dashboard={dash.token}"})[0] == 200


# --- in the browser ---------------------------------------------------------------------
def test_page_shows_the_engines_of_a_running_cluster(busy, page):
    cl, dash = busy
    page.goto(dash.url)
    for eid, e in cl.client.engines.items():
        row = page.locator(f'#engines tr[data-engine="{eid}"]')
        row.wait_for()
        text = row.inner_text()
        assert str(e["pid"]) in text and e["host"] in text
        assert row.locator(".engine-state").inner_text() in ("idle", "busy")
    assert page.locator("#n-engines").inner_text() == "2"
    assert page.locator("#conn").inner_text() == "live"


def test_page_shows_a_task_that_just_ran(busy, page):
    cl, dash = busy
    page.goto(dash.url)
    page.locator('#engines tr[data-engine="0"]').wait_for()
    ar = cl.client[0].apply(lambda: sum(range(1000)))
    assert ar.get(10) == 499500
    (tid,) = ar.msg_ids
    bar = page.locator(f'#stream rect[data-task="{tid}"]')
    bar.wait_for()
    assert bar.get_attribute("data-outcome") == "ok"

    def boom():
        raise ValueError("dashboard test failure")

    ar = cl.client[1].apply(boom)
    with pytest.raises(cohort.RemoteError):
        ar.get(10)
    (tid,) = ar.msg_ids
    page.locator(f'#stream rect[data-task="{tid}"][data-outcome="error"]').wait_for()
    failure = page.locator(f'#failures details[data-task="{tid}"]')
    failure.wait_for()
    assert "ValueError" in failure.inner_text()
    failure.locator("summary").click()
    assert "dashboard test failure" in failure.locator("pre").inner_text()


def test_page_shows_an_engine_turning_dead_after_sigkill(make_cluster, page):
    from playwright.sync_api import expect
    cl = make_cluster(2, restart_engines=False)
    cl.client.wait_for_engines(2, timeout=30)
    dash = Dashboard(cl.connection_file, port=0, period=0.3).start()
    try:
        page.goto(dash.url)
        state = page.locator('#engines tr[data-engine="1"] .engine-state')
        state.wait_for()
        assert state.inner_text() in ("idle", "busy")
        os.kill(cl.client.engines[1]["pid"], signal.SIGKILL)
        expect(state).to_have_text("dead", timeout=30_000)
        assert page.locator('#engines tr[data-engine="0"] .engine-state').inner_text() == "idle"
        note = page.locator('#engines tr[data-engine="1"] td.note').inner_text()
        assert note, "a dead engine says why it left"
        assert page.locator("#n-engines").inner_text() == "1"
    finally:
        dash.stop()


def test_a_restarted_engine_shows_dead_and_its_replacement(make_cluster):
    cl = make_cluster(2)  # the controller restarts engines that die
    cl.client.wait_for_engines(2, timeout=30)
    dash = Dashboard(cl.connection_file, port=0, period=0.2).start()
    try:
        wait_until(lambda: len(_api(dash, "/api/state")["engines"]) == 2, msg="two engines")
        os.kill(cl.client.engines[1]["pid"], signal.SIGKILL)
        seen = set()

        def replaced():
            rows = {e["id"]: e for e in _api(dash, "/api/state")["engines"]}
            seen.add(rows.get(1, {}).get("state"))
            return rows[1]["state"] == "dead" and "replaced by engine" in rows[1]["why"] and rows

        rows = wait_until(replaced, timeout=30, msg="engine 1 replaced")
        assert seen <= {"idle", "busy", "restarting", "dead"}  # restarting: often too brief to see
        assert [e for e in rows.values() if e["id"] >= 2 and e["state"] in ("idle", "busy")]
    finally:
        dash.stop()


def test_page_shows_batch_jobs_and_their_states(make_cluster, page):
    from cohort import jobs
    cl = make_cluster(1)
    js = jobs.JobService("local://")
    job = js.submit(jobs.JobDescription("sleep", ["60"]))
    try:
        (cl.connection_file.parent / "cluster.json").write_text(json.dumps({
            "groups": [{"kind": "local", "n": 1, "pids": []},
                       {"kind": "ssh", "n": 3, "service": "local://", "job": job.native_id}]}))
        dash = Dashboard(cl.connection_file, port=0, period=0.3).start()
        try:
            page.goto(dash.url)
            row = page.locator(f'#jobs tr[data-job="{job.native_id}"]')
            row.wait_for()
            text = row.inner_text()
            assert "ssh" in text and "3" in text and f"job {job.native_id}: " in text
            assert "ACTIVE" in text or "QUEUED" in text, text
        finally:
            dash.stop()
    finally:
        job.cancel()


def _insert_synthetic(db_path, n: int, recent: int) -> None:
    """n finished task records over the past day, `recent` of them in the last 30 s."""
    now = time.time()
    tag = uuid.uuid4().hex[:8]
    rows = []
    for i in range(n):
        when = now - 30 * (i / recent) if i < recent else now - 60 - (86_400 * i / n)
        state, status, ename = (("failed", "error", "ValueError") if i % 25 == 0 else
                                ("cancelled", "error", "TaskCancelled") if i % 50 == 1 else
                                ("done", "ok", None))
        rows.append((f"synthetic-{tag}-{i}", "synthetic", "apply", state, i % 2, when, when,
                     when + 0.01, 1, status, ename, "synthetic" if ename else None,
                     "Traceback: synthetic\n" if ename else None))
    conn = sqlite3.connect(db_path, timeout=30)
    with conn:
        conn.executemany("INSERT INTO tasks (id, client, kind, state, engine, submitted, started, "
                         "completed, attempts, status, ename, evalue, traceback) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.close()


def test_stays_responsive_with_100k_task_records(busy, page):
    cl, dash = busy
    db_path = cl.connection_file.parent / "tasks.db"
    wait_until(db_path.exists, msg="the task database")
    _insert_synthetic(db_path, 100_000, recent=500)
    conn = sqlite3.connect(db_path)
    expected = dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())
    conn.close()
    total = sum(expected.values())
    assert total >= 100_000
    # the API answers in bounded pieces
    wait_until(lambda: _api(dash, "/api/state")["total"] >= total, msg="the new counts")
    window = _api(dash, "/api/tasks?window=86400&limit=2000")
    assert len(window["tasks"]) == 2000
    assert len(_api(dash, "/api/failures?limit=20")["failures"]) == 20
    # and the page shows the right counts, and the recent synthetic tasks in its stream
    page.goto(dash.url)
    page.locator(f'#count-total:text-is("{total:,}")').wait_for()
    assert page.locator("#count-done").inner_text() == f"{expected['done']:,}"
    assert page.locator("#count-failed").inner_text() == f"{expected['failed']:,}"
    page.locator('#stream rect[data-task^="synthetic-"]').first.wait_for()
    assert page.locator('#stream rect[data-task^="synthetic-"]').count() >= 400


# --- the command line -------------------------------------------------------------------
def _cohort(*args, env=None, timeout=90):
    return subprocess.run([sys.executable, "-m", "cohort", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_start_dashboard_status_stop(tmp_path):
    env = dict(os.environ, COHORT_PROFILE=f"dash{uuid.uuid4().hex[:6]}")
    r = _cohort("start", "-n", "1", "--dashboard", "--dashboard-port", "0", env=env)
    try:
        assert r.returncode == 0, r.stderr
        url = [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("dashboard: ")]
        assert url and "?token=" in url[0], r.stdout
        status, body = _get(url[0])
        assert status == 200 and b"cohort dashboard" in body
        assert _get(url[0].split("?")[0])[0] == 403
        st = _cohort("status", env=env)
        assert st.returncode == 0 and f"dashboard: {url[0]}" in st.stdout, st.stdout + st.stderr
        st = _cohort("status", "--json", env=env)
        assert json.loads(st.stdout)["dashboard_url"] == url[0]
        cf = cohort.profile.default_connection_file(env["COHORT_PROFILE"])
        rec = read_record(cf)
        assert rec is not None and rec["url"] == url[0]
        # a second dashboard for the same cluster is refused, naming the first
        r2 = _cohort("dashboard", "--port", "0", env=env, timeout=30)
        assert r2.returncode == 1 and url[0] in r2.stderr
    finally:
        stop = _cohort("stop", env=env)
    assert stop.returncode == 0 and "dashboard stopped" in stop.stdout, stop.stdout + stop.stderr
    wait_until(lambda: read_record(cf) is None, msg="the dashboard to stop")
    with pytest.raises(OSError):
        urllib.request.urlopen(url[0], timeout=5)
