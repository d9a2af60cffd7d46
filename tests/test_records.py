"""Durable task records through a real cluster: get_result from any client,
rc.tasks queries, purging, and the `cohort tasks` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cohort


def test_any_client_gets_any_result_later(rc, cluster):
    lv = rc.load_balanced_view()
    ok = lv.apply(lambda: (print("said hello"), {"answer": 42})[1])
    bad = lv.apply(lambda: 1 / 0)
    direct = rc[1].apply(lambda: "direct")
    assert ok.get(timeout=10) == {"answer": 42} and direct.get(timeout=10) == "direct"
    with pytest.raises(cohort.RemoteError):
        bad.get(timeout=10)
    other = cohort.Client(cluster.connection_file, stream_output=False)
    try:
        assert other.get_result(ok.msg_ids[0]).get(timeout=10) == {"answer": 42}
        assert other.get_result(direct.msg_ids[0], block=True, timeout=10) == "direct"
        with pytest.raises(cohort.RemoteError) as info:
            other.get_result(bad.msg_ids[0]).get(timeout=10)
        assert info.value.ename == "ZeroDivisionError" and "1 / 0" in info.value.traceback
        with pytest.raises(cohort.ControllerError, match="no task 'nope' is recorded"):
            other.get_result("nope").get(timeout=10)
        with pytest.raises(TypeError):
            other.get_result(42)
        # a task still running: the result comes when it is done
        slow = lv.apply(lambda: (__import__("time").sleep(0.5), "late")[1])
        rc.queue_status()  # a round trip on rc's socket: the controller has the task now
        assert other.get_result(slow.msg_ids[0]).get(timeout=10) == "late"
        assert slow.get(timeout=10) == "late"
    finally:
        other.close()


def test_tasks_lists_states_output_and_errors(rc):
    lv = rc.load_balanced_view()
    good = lv.apply(lambda: print("recorded output"))
    good.get(timeout=10)
    bad = lv.apply(lambda: 1 / 0)
    with pytest.raises(cohort.RemoteError):
        bad.get(timeout=10)
    rows = {r["id"]: r for r in rc.tasks(ids=good.msg_ids + bad.msg_ids)}
    g, b = rows[good.msg_ids[0]], rows[bad.msg_ids[0]]
    assert g["state"] == "done" and g["status"] == "ok" and g["stdout"] == "recorded output\n"
    assert g["engine"] in rc.ids and g["submitted"] <= g["started"] <= g["completed"]
    assert g["attempts"] == 1 and "request" not in g and "result" not in g
    assert b["state"] == "failed" and b["ename"] == "ZeroDivisionError"
    assert [r["id"] for r in rc.tasks(state="failed", ids=good.msg_ids + bad.msg_ids)] \
        == bad.msg_ids
    with pytest.raises(cohort.ControllerError, match="unknown task filter"):
        rc._request("tasks", {"colour": "red"})


def test_timeouts_and_cancellations_are_recorded(rc):
    lv = rc.load_balanced_view()
    ar = lv.apply(__import__("time").sleep, 60, timeout=0.3)
    with pytest.raises(cohort.TaskTimeout):
        ar.get(timeout=30)
    (row,) = rc.tasks(ids=ar.msg_ids)
    assert row["state"] == "failed" and row["ename"] == "TaskTimeout"


def test_purge_is_explicit_and_never_touches_running_tasks(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    lv = rc.load_balanced_view()
    lv.map(abs, range(20), chunksize=1).get(timeout=30)
    running = lv.apply(__import__("time").sleep, 1)
    with pytest.raises(cohort.ControllerError):
        rc.purge_tasks()  # no policy given: refuse rather than guess
    assert rc.purge_tasks(keep_last=5) == 15
    states = [r["state"] for r in rc.tasks(limit=None)]
    assert states.count("done") == 5 and len(states) == 6
    running.get(timeout=10)


def test_cohort_tasks_command_with_and_without_a_controller(cohort_home, tmp_path):
    env_profile = ["--profile", "taskcli"]
    cmd = [sys.executable, "-m", "cohort"]
    subprocess.run(cmd + ["start", "-n", "1", *env_profile], check=True, capture_output=True)
    try:
        rc = cohort.Client(profile="taskcli", stream_output=False)
        lv = rc.load_balanced_view()
        lv.apply(abs, -3).get(timeout=10)
        with pytest.raises(cohort.RemoteError):
            lv.apply(lambda: 1 / 0).get(timeout=10)
        rc.close()
        out = subprocess.run(cmd + ["tasks", *env_profile], check=True, capture_output=True,
                             text=True).stdout
        assert "ZeroDivisionError" in out and "done" in out
        out = subprocess.run(cmd + ["tasks", "--state", "failed", "--json", *env_profile],
                             check=True, capture_output=True, text=True).stdout
        assert [r["ename"] for r in json.loads(out)] == ["ZeroDivisionError"]
    finally:
        subprocess.run(cmd + ["stop", *env_profile], capture_output=True)
    # the records outlive the cluster
    out = subprocess.run(cmd + ["tasks", "--since", "1h", *env_profile], check=True,
                         capture_output=True, text=True).stdout
    assert out.count("\n") == 3  # header + 2 tasks
    p = subprocess.run(cmd + ["tasks", "--keep-last", "1", *env_profile], capture_output=True,
                       text=True)
    assert p.returncode == 0 and "purged 1" in p.stderr
    p = subprocess.run(cmd + ["tasks", "--since", "soon", *env_profile], capture_output=True,
                       text=True)
    assert p.returncode != 0 and "not a duration" in p.stderr
    p = subprocess.run(cmd + ["tasks", "--profile", "never-used"], capture_output=True, text=True)
    assert p.returncode == 1 and "no task database" in p.stderr


def test_a_cluster_records_its_tasks_in_postgresql(make_cluster, pg_server):
    import psycopg
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS tasks, meta")
    cl = make_cluster(n=1, controller_args=["--db", pg_server.url])
    rc = cl.client
    lv = rc.load_balanced_view()
    ar = lv.map(lambda x: x * 3, range(10), chunksize=2)
    assert ar.get(timeout=30) == [x * 3 for x in range(10)]
    other = cohort.Client(cl.connection_file, stream_output=False)
    try:
        assert other.get_result(ar.msg_ids[-1]).get(timeout=10) == [24, 27]
    finally:
        other.close()
    rows = rc.tasks(ids=ar.msg_ids)
    assert len(rows) == 5 and {r["state"] for r in rows} == {"done"}
    with psycopg.connect(pg_server.url) as conn:  # really in PostgreSQL
        n = conn.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
    assert n >= 5
