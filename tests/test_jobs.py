"""Unit tests of the job API (no services): descriptions, URLs, templates, the state
tables of each scheduler, and the `cohort job` command against local://."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cohort import jobs
from cohort.errors import JobError
from cohort.jobs import JobDescription, JobService, JobState
from cohort.jobs import pbs, sge, slurm
from cohort.jobs.description import walltime_seconds
from cohort.jobs.service import Job, _parse_url
from cohort.jobs.template import builtin_template, render

SRC = Path(__file__).resolve().parent.parent / "src"


# --- descriptions ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,secs", [("01:00:00", 3600), ("1-00:00:00", 86400), ("90", 5400),
                                       ("00:30", 1800), (45, 45), ("10:00:05", 36005)])
def test_walltime_forms(text, secs):
    assert walltime_seconds(text) == secs


@pytest.mark.parametrize("bad", ["soon", "1:2:3:4", 0, "00:00:00"])
def test_bad_walltime(bad):
    with pytest.raises(ValueError):
        JobDescription("x", walltime=bad)


def test_description_validation_and_round_trip():
    with pytest.raises(ValueError):
        JobDescription("")
    with pytest.raises(ValueError):
        JobDescription("x", nodes=0)
    with pytest.raises(ValueError):
        JobDescription("x", environment={"NOT VALID": "1"})
    jd = JobDescription("x", arguments=[1, "two"], environment={"A": 1}, nodes=2,
                        processes_per_node=4, scheduler_options="--mem=1G")
    assert jd.arguments == ["1", "two"] and jd.environment == {"A": "1"}
    assert jd.total_processes == 8 and jd.scheduler_options == ["--mem=1G"]
    assert JobDescription.from_dict(json.loads(json.dumps(jd.to_dict()))) == jd


def test_states():
    assert [s.final for s in JobState] == [False, False, False, True, True, True]
    assert str(JobState.CANCELED) == "CANCELED" and JobState("QUEUED") is JobState.QUEUED


# --- URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("url,expect", [
    ("local://", ("local", False, None, None, None)),
    ("local", ("local", False, None, None, None)),
    ("ssh://me@node1:2222", ("ssh", True, "me", "node1", 2222)),
    ("ssh://node1", ("ssh", True, None, "node1", None)),
    ("slurm://", ("slurm", False, None, None, None)),
    ("SGE://", ("sge", False, None, None, None)),
    ("pbs+ssh://u@login", ("pbs", True, "u", "login", None)),
    ("slurm+ssh://login:22", ("slurm", True, None, "login", 22)),
])
def test_parse_url(url, expect):
    assert _parse_url(url)[:5] == expect


@pytest.mark.parametrize("url", ["lsf://", "ssh://", "slurm://login", "slurm+ssh://",
                                 "local://elsewhere", "ssh://h:notaport"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        JobService(url)


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="bogus"):
        JobService("slurm://", bogus=1)


def test_repr_and_new_job():
    js = JobService("slurm://")
    job = js.create_job(JobDescription("hostname"))
    assert repr(js) == "<JobService slurm://>"
    assert repr(job) == "<Job slurm:// - NEW>"
    with pytest.raises(JobError, match="never submitted"):
        job.wait(1)
    job.cancel()
    assert job.state is JobState.CANCELED
    with pytest.raises(TypeError):
        js.create_job({"executable": "x"})


# --- templates ------------------------------------------------------------------------------

def test_render_drops_lines_whose_placeholders_are_all_empty():
    text = "#X --a=${queue}\n#X --b=${account} ${queue}\nkeep $HOME ${unknown}\n${environment}\nrun\n"
    out = render(text, {"queue": None, "account": "", "environment": ""})
    assert out == "keep $HOME ${unknown}\nrun\n"
    out = render(text, {"queue": "debug", "account": None, "environment": "export A=1"})
    assert out == "#X --a=debug\n#X --b= debug\nkeep $HOME ${unknown}\nexport A=1\nrun\n"


def test_slurm_script_has_every_option():
    js = JobService("slurm://")
    jd = JobDescription("/home/user/nihao-mpi", ["--n", "it's"], environment={"K": "v w"},
                        directory="/scratch/run", stdout="out.txt", stderr="/abs/err.txt",
                        nodes=2, processes_per_node=4, gpus_per_process=1, walltime="01:00:00",
                        queue="debug", account="proj", launcher="srun",
                        scheduler_options=["--mem=1G"], name="nihao")
    script = js.render(jd)
    for line in ["#SBATCH --job-name=nihao", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --time=01:00:00",
                 "#SBATCH --partition=debug", "#SBATCH --account=proj",
                 "#SBATCH --chdir=/scratch/run", "#SBATCH --output=/scratch/run/out.txt",
                 "#SBATCH --error=/abs/err.txt", "#SBATCH --mem=1G", "export K='v w'",
                 "exec srun /home/user/nihao-mpi --n 'it'\"'\"'s'"]:
        assert line in script.splitlines(), line
    minimal = js.render(JobDescription("hostname"))
    assert "--partition" not in minimal and "--time" not in minimal and "--gpus" not in minimal


def test_sge_and_pbs_scripts():
    jd = JobDescription("prog", nodes=2, processes_per_node=2, gpus_per_process=1,
                        walltime=3600, queue="q", account="a")
    s = JobService("sge://", parallel_environment="mpi").render(jd).splitlines()
    assert "#$ -pe mpi 4" in s and "#$ -l h_rt=01:00:00" in s and "#$ -q q" in s
    assert not any("-pe" in x for x in JobService("sge://").render(JobDescription("p")).splitlines())
    p = JobService("pbs://").render(jd).splitlines()
    assert "#PBS -l select=2:ncpus=2:mpiprocs=2:ngpus=2" in p and "#PBS -l walltime=01:00:00" in p
    assert "#PBS -A a" in p


def test_template_override_by_argument_and_by_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("COHORT_HOME", str(tmp_path / "home"))
    own = tmp_path / "mine.sh"
    own.write_text("#!/bin/sh\n#SBATCH --qos=${queue}\n${command}\n")
    assert JobService("slurm://", template=own).render(JobDescription("a", queue="hi")) \
        == "#!/bin/sh\n#SBATCH --qos=hi\na\n"
    folder = tmp_path / "home" / "profile_default" / "job_templates"
    folder.mkdir(parents=True)
    (folder / "slurm.sh").write_text("#!/bin/sh\n# site\n${command}\n")
    assert JobService("slurm://").render(JobDescription("b")) == "#!/bin/sh\n# site\nb\n"
    assert JobService("sge://").render(JobDescription("b")) != "#!/bin/sh\n# site\nb\n"
    with pytest.raises(FileNotFoundError):
        JobService("slurm://", template=tmp_path / "nope.sh").render(JobDescription("b"))


def test_templates_ship_in_the_package():
    for name in ("local", "slurm", "sge", "pbs"):
        assert builtin_template(name).startswith("#!/bin/sh")


# --- state tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("native,state", [
    ("PENDING", JobState.QUEUED), ("REQUEUE_HOLD", JobState.QUEUED),
    ("RUNNING", JobState.ACTIVE), ("COMPLETING", JobState.ACTIVE), ("SUSPENDED", JobState.ACTIVE),
    ("COMPLETED", JobState.COMPLETED), ("CANCELLED", JobState.CANCELED),
    ("CANCELLED by 0", JobState.CANCELED), ("FAILED", JobState.FAILED),
    ("TIMEOUT", JobState.FAILED), ("NODE_FAIL", JobState.FAILED),
    ("OUT_OF_MEMORY", JobState.FAILED), ("PREEMPTED", JobState.FAILED)])
def test_slurm_states(native, state):
    assert slurm.map_state(native) is state


def test_slurm_exit_codes():
    assert slurm.parse_exit_code("2:0") == 2
    assert slurm.parse_exit_code("0:15") == 143
    assert slurm.parse_exit_code("") is None


@pytest.mark.parametrize("native,state", [
    ("qw", JobState.QUEUED), ("hqw", JobState.QUEUED), ("hRwq", JobState.QUEUED),
    ("r", JobState.ACTIVE), ("t", JobState.ACTIVE), ("Rr", JobState.ACTIVE),
    ("s", JobState.ACTIVE), ("dr", JobState.ACTIVE), ("Eqw", JobState.FAILED)])
def test_sge_states(native, state):
    assert sge.map_state(native) is state


def test_sge_records():
    assert sge.map_record("0", "0").state is JobState.COMPLETED
    assert sge.map_record("0", "3").state is JobState.FAILED
    done = sge.map_record("100 : assumedly after job", "137")
    assert done.state is JobState.CANCELED and done.exit_code == 137
    assert sge.map_record("1 : assumedly before job", "0").state is JobState.FAILED
    text = "==============\nfailed       0    \nexit_status  2                  \n"
    assert sge.parse_qacct(text) == {"failed": "0", "exit_status": "2"}
    qstat = ("job-ID  prior   name  user  state submit/start at     queue  slots ja-task-ID\n"
             "-------\n      3 0.50000 t1    root  r     11/30/2026 09:08:23 all.q@vm  1\n")
    assert sge.parse_qstat(qstat) == {"3": "r"}


@pytest.mark.parametrize("attrs,state,code", [
    ({"job_state": "Q", "substate": 10}, JobState.QUEUED, None),
    ({"job_state": "H", "substate": 20}, JobState.QUEUED, None),
    ({"job_state": "W"}, JobState.QUEUED, None),
    ({"job_state": "R", "substate": 42}, JobState.ACTIVE, None),
    ({"job_state": "E"}, JobState.ACTIVE, None),
    ({"job_state": "S"}, JobState.ACTIVE, None),
    ({"job_state": "F", "substate": 92, "Exit_status": 0}, JobState.COMPLETED, 0),
    ({"job_state": "F", "substate": 93, "Exit_status": 2}, JobState.FAILED, 2),
    ({"job_state": "F", "substate": 93, "Exit_status": 265}, JobState.FAILED, 137),
    ({"job_state": "F", "substate": 91, "Exit_status": 271}, JobState.CANCELED, 143),
    ({"job_state": "F", "substate": 91}, JobState.CANCELED, None),
    ({"job_state": "F", "substate": 93, "Exit_status": -1}, JobState.FAILED, -1)])
def test_pbs_states(attrs, state, code):
    st = pbs.map_job(attrs)
    assert st.state is state and st.exit_code == code


def test_jobs_package_imports_no_upper_layer():
    """cohort.jobs sits below cluster/client/controller/engine (profile and errors are fine)."""
    import ast
    for path in (SRC / "cohort" / "jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                name = ",".join(a.name for a in node.names)
            else:
                continue
            for layer in ("client", "controller", "engine", "cluster"):
                assert f"..{layer}" not in name and f"cohort.{layer}" not in name, (path, name)


# --- the command line (local://) ------------------------------------------------------------

def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohort.jobs.cli", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("sub", ["", "submit", "status", "cancel", "list"])
def test_cli_help(sub):
    r = cli(*([sub] if sub else []), "--help")
    assert r.returncode == 0 and "usage: cohort job" in r.stdout and "--help" in r.stdout
    if sub:
        assert "--service URL" in r.stdout and "--json" in r.stdout


def test_cli_submit_wait_status_list_cancel(tmp_path):
    state = tmp_path / "s"
    r = cli("submit", "--wait", "--directory", str(tmp_path), "--stdout", "o.txt",
            "--env", "A=b c", "sh", "-c", 'echo "$A"; exit 5')
    assert r.returncode == 5, r.stderr
    first = r.stdout.splitlines()[0]
    assert r.stdout.splitlines()[1].startswith("FAILED exit_code=5")
    assert (tmp_path / "o.txt").read_text() == "b c\n"

    r = cli("submit", "--json", "sleep", "300")
    assert r.returncode == 0, r.stderr
    sleeper = json.loads(r.stdout)["id"]
    r = cli("status", "--json", sleeper, first)
    rows = {d["id"]: d for d in json.loads(r.stdout)}
    assert rows[sleeper]["state"] in ("QUEUED", "ACTIVE")
    assert rows[first]["state"] == "FAILED" and rows[first]["exit_code"] == 5
    r = cli("list")
    assert first in r.stdout and sleeper in r.stdout
    assert cli("cancel", sleeper).returncode == 0
    assert "CANCELED" in cli("status", sleeper).stdout
    r = cli("status", "nosuchjob")
    assert r.returncode == 1 and "knows no job" in r.stderr
    del state


def test_cli_service_from_environment_and_dry_run():
    r = cli("submit", "--dry-run", "-N", "2", "--per-node", "3", "--walltime", "1:00:00",
            "--queue", "debug", "--option=--mem=1G", "--", "prog", "-x",
            env={"COHORT_JOB_SERVICE": "slurm://"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=3" in lines
    assert "#SBATCH --mem=1G" in lines and lines[-1] == "exec prog -x"


def test_cli_bad_input():
    r = cli("submit", "--env", "novalue", "true")
    assert r.returncode == 1 and "K=V" in r.stderr
    r = cli("submit", "--service", "lsf://", "true")
    assert r.returncode == 1 and "unknown job service" in r.stderr


def test_job_public_names():
    assert set(jobs.__all__) >= {"JobDescription", "JobService", "Job", "JobState"}
    assert jobs.Job is Job


def test_a_missing_service_fails_clearly_unless_skipped(monkeypatch):
    import services
    monkeypatch.delenv("COHORT_SKIP_SGE", raising=False)
    with pytest.raises(pytest.fail.Exception) as e:
        services.missing("sge", "no qsub on PATH")
    assert ".ci/run" in str(e.value) and ".ci/services/sge.sh" in str(e.value)
    assert "COHORT_SKIP_SGE=1" in str(e.value)
    monkeypatch.setenv("COHORT_SKIP_SGE", "1")
    with pytest.raises(pytest.skip.Exception):
        services.missing("sge", "no qsub on PATH")
