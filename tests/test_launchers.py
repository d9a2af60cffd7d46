"""Clusters whose engines start elsewhere: batch jobs (real Slurm, real Grid
Engine, PBS stand-ins), over SSH (a real sshd on 127.0.0.1), and resizing.

The controller binds 127.0.0.1 here (a routable address is off limits on the
test machines) with encryption forced on, so the same CurveZMQ path a real
multi-host cluster takes is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cohort
from cohort.errors import EngineError
from conftest import wait_until
from services import check_sge, check_slurm, start_sshd
from test_mpi import PI_CODE, require_mpi

FAKES = Path(__file__).parent / "fakes" / "pbs"


def batch_cluster(make_cluster, kind: str, **kw):
    return make_cluster(n=2, engines=kind, ip="127.0.0.1", encrypt=True, walltime="00:10:00",
                        start_timeout=120, **kw)


def run_pi(rc) -> float:
    dv = rc[:]
    dv.execute(PI_CODE, block=True)
    return rc[0]["pi"]


def test_slurm_engines_share_an_mpi_world_and_compute_pi(make_cluster):
    check_slurm()
    require_mpi()
    cl = batch_cluster(make_cluster, "slurm", mpi=True)
    rc = cl.client
    (group,) = cl.groups
    assert group.kind == "slurm" and "ACTIVE" in group.state()
    assert [rc.engines[i]["mpi"]["rank"] for i in rc.ids] == [0, 1]
    assert abs(run_pi(rc) - 3.14159) < 0.03
    native = group.native_id
    cl.stop()
    wait_until(lambda: _squeue_state(native) in ("", "CANCELLED", "COMPLETING"), timeout=60,
               msg="the engines' job to leave the queue once the cluster stopped")


def _squeue_state(job_id: str) -> str:
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return r.stdout.strip()


def test_slurm_job_cancelled_from_outside_shows_engines_leaving(make_cluster):
    check_slurm()
    cl = batch_cluster(make_cluster, "slurm")
    rc = cl.client
    assert len(rc.ids) == 2
    ar = rc[0].execute("import time; time.sleep(600)")
    time.sleep(0.5)
    subprocess.run(["scancel", cl.groups[0].native_id], check=True)
    with pytest.raises(EngineError):
        ar.get(timeout=60)
    wait_until(lambda: rc.ids == [], timeout=60, msg="the cancelled job's engines to leave")
    wait_until(lambda: "CANCELED" in cl.groups[0].state(), timeout=60,
               msg="the job to show as cancelled")


def test_grid_engine_engines_compute_pi(make_cluster):
    check_sge()
    require_mpi()
    cl = batch_cluster(make_cluster, "sge", mpi=True)
    assert abs(run_pi(cl.client) - 3.14159) < 0.03
    assert "ACTIVE" in cl.groups[0].state()


def test_pbs_engines_through_the_stand_ins(make_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS_HOME", str(tmp_path / "pbs"))
    cl = batch_cluster(make_cluster, "pbs")
    rc = cl.client
    assert sorted(rc[:].apply_sync(lambda: 6 * 7)) == [42, 42]
    assert "ACTIVE" in cl.groups[0].state()
    cl.stop()
    wait_until(lambda: "CANCELED" in cl.groups[0].state() or "FAILED" in cl.groups[0].state(),
               timeout=30, msg="stop to cancel the PBS job")


def test_ssh_engines_run_real_tasks(make_cluster, tmp_path):
    sshd = start_sshd(tmp_path)
    try:
        cl = make_cluster(engines="ssh", hosts=[(f"{sshd.user}@127.0.0.1:{sshd.port}", 2)],
                          ip="127.0.0.1", encrypt=True, start_timeout=60,
                          service_options={"identity_file": sshd.identity_file,
                                           "ssh_options": sshd.ssh_options})
        rc = cl.client
        assert len(rc.ids) == 2
        pids = rc[:].apply_sync(os.getpid)
        assert len(set(pids)) == 2
        lv = rc.load_balanced_view()
        assert lv.map(lambda x: x * x, range(20), block=True) == [x * x for x in range(20)]
        (group,) = cl.groups
        assert group.kind == "ssh" and "ACTIVE" in group.state()
        cl.stop()
        wait_until(lambda: not group.alive(), timeout=30, msg="the ssh engines to stop")
    finally:
        sshd.stop()


def test_add_and_remove_engines_at_run_time(make_cluster):
    cl = make_cluster(n=1)
    rc = cl.client
    cl.add_engines(2, wait=True)
    assert len(rc.ids) == 3
    first = rc.ids[0]
    cl.remove_engines([first])
    wait_until(lambda: first not in rc.ids and len(rc.ids) == 2, msg="the engine to leave")
    assert sorted(rc[:].apply_sync(lambda: 1)) == [1, 1]


def test_cli_start_status_stop_with_slurm_engines(cohort_home, tmp_path):
    check_slurm()
    env = dict(os.environ, COHORT_PROFILE="slurmcli")
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "cohort", *a], env=env,
                                           capture_output=True, text=True, timeout=180, **kw)
    r = run("start", "-n", "2", "--engines", "slurm", "--ip", "127.0.0.1", "--walltime", "00:10:00")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "engines (slurm): 2, job" in r.stdout
    try:
        st = run("status")
        assert st.returncode == 0, st.stderr
        assert "slurm    2 engines  job" in st.stdout and "ACTIVE" in st.stdout
        rec = json.loads((cohort_home / "profile_slurmcli" / "cluster.json").read_text())
        job_id = rec["groups"][0]["job"]
    finally:
        stop = run("stop")
    assert stop.returncode == 0, stop.stderr
    assert f"cancelled job {job_id}" in stop.stdout
    wait_until(lambda: _squeue_state(job_id) in ("", "CANCELLED", "COMPLETING"), timeout=60,
               msg="the job to be cancelled by `cohort stop`")


def test_bad_launch_options_are_refused_clearly(make_cluster):
    with pytest.raises(ValueError, match="choose one of"):
        cohort.Cluster(engines="condor")
    with pytest.raises(ValueError, match="HOST or HOST:ENGINES"):
        cohort.Cluster(engines="ssh", hosts="node1:0")
    with pytest.raises(ValueError, match="batch engines"):
        cohort.Cluster(engines="local", mpi=True)


def test_a_job_slurm_rejects_gives_slurms_own_message(make_cluster):
    check_slurm()
    with pytest.raises(cohort.errors.JobError) as info:
        make_cluster(n=2, engines="slurm", ip="127.0.0.1", queue="no-such-partition",
                     walltime="00:05:00")
    assert "invalid partition" in str(info.value).lower()


def test_cli_no_wait_returns_at_once_and_status_shows_the_job(cohort_home):
    check_slurm()
    env = dict(os.environ, COHORT_PROFILE="slurmnowait")
    run = lambda *a: subprocess.run([sys.executable, "-m", "cohort", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=180)
    r = run("start", "-n", "1", "--engines", "slurm", "--ip", "127.0.0.1", "--no-wait")
    assert r.returncode == 0, r.stderr + r.stdout
    try:
        wait_until(lambda: "1 engines  job" in run("status").stdout, timeout=60,
                   msg="status to show the engines' job")
        st = run("status").stdout
        assert any(s in st for s in ("QUEUED", "ACTIVE")), st
    finally:
        assert run("stop").returncode == 0
