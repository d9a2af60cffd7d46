"""pbs:// against scripted PBS Pro stand-ins (tests/fakes/pbs: there is no PBS
package here). They accept and report jobs as the PBS Pro reference guide
documents and really run each script in the background."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cohort import jobs
from cohort.errors import JobError
from cohort.jobs import JobDescription, JobState
from services import PBS_FAKES, WAIT, JobServiceContract, wait_for_file


@pytest.fixture(scope="module", autouse=True)
def fake_pbs(tmp_path_factory):
    """The stand-ins first on PATH, with their own state folder, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{PBS_FAKES}{os.pathsep}{os.environ['PATH']}")
        mp.setenv("FAKE_PBS_HOME", str(tmp_path_factory.mktemp("fake_pbs")))
        mp.setenv("FAKE_PBS_QUEUES", "workq,debug")
        yield


@pytest.fixture
def js(tmp_path, monkeypatch):
    # PBS writes NAME.oSEQ / NAME.eSEQ into the submit folder for jobs that name no
    # output files: submit from a temporary one, not the checkout
    monkeypatch.chdir(tmp_path)
    return jobs.JobService("pbs://")


class TestPBS(JobServiceContract):
    def external_cancel(self, job):
        subprocess.run(["qdel", job.native_id], check=True)


def test_native_id_is_seq_dot_server(js):
    job = js.submit(JobDescription("true"))
    assert job.native_id.endswith(".pbsserver") and job.native_id.split(".")[0].isdigit()
    assert job.wait(WAIT) is JobState.COMPLETED


def test_rejected_job_gives_pbs_words(js):
    with pytest.raises(JobError) as e:
        js.submit(JobDescription("true", queue="no-such-queue"))
    assert "qsub: Unknown queue" in str(e.value)


def test_signal_exit_status_becomes_128_plus_signal(js):
    job = js.submit(JobDescription("sh", ["-c", "kill -9 $$"]))
    assert job.wait(WAIT) is JobState.FAILED
    assert job.exit_code == 137
    raw = json.loads(subprocess.run(["qstat", "-x", "-f", "-F", "json", job.native_id],
                                    capture_output=True, text=True).stdout)
    assert raw["Jobs"][job.native_id]["Exit_status"] == 265       # PBS: 256 + signal


def test_held_job_is_queued_then_cancelled(js):
    job = js.submit(JobDescription("true", scheduler_options=["-h"]))
    assert job.state is JobState.QUEUED
    assert job.native_state.startswith("H")
    job.cancel()
    assert job.wait(WAIT) is JobState.CANCELED


def test_directives_and_queue(js, tmp_path):
    job = js.submit(JobDescription("sh", ["-c", 'echo "$PBS_JOBNAME $PBS_QUEUE"'], name="probe",
                                   queue="debug", directory=str(tmp_path), stdout="o.txt",
                                   stderr="e.txt", walltime="00:01:00", nodes=2,
                                   processes_per_node=3))
    assert job.wait(WAIT) is JobState.COMPLETED
    assert wait_for_file(tmp_path / "o.txt").split() == ["probe", "debug"]
    raw = json.loads(subprocess.run(["qstat", "-x", "-f", "-F", "json", job.native_id],
                                    capture_output=True, text=True).stdout)
    res = raw["Jobs"][job.native_id]["Resource_List"]
    assert res == {"select": "2:ncpus=3:mpiprocs=3", "walltime": "00:01:00"}
