"""local:// jobs: real process groups on this machine, against the common contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cohort import jobs
from cohort.jobs import JobDescription, JobState
from services import WAIT, JobServiceContract


@pytest.fixture
def js(tmp_path):
    service = jobs.JobService("local://", state_dir=str(tmp_path / "state"))
    yield service
    for job in service.list():
        job.cancel()


class TestLocal(JobServiceContract):
    unknown_id = "nosuchjob"

    def new_service(self, js):
        return jobs.JobService("local://", state_dir=js.backend.state_dir)

    def external_cancel(self, job):
        pid = int((Path(job.service.backend.state_dir) / job.native_id / "pid").read_text())
        os.killpg(pid, 15)                    # `kill -TERM -PID` from a terminal


def test_default_state_dir_is_in_the_profile(cohort_home):
    js = jobs.JobService("local://")
    job = js.submit(JobDescription("true"))
    assert job.wait(WAIT) is JobState.COMPLETED
    assert (Path(os.environ["COHORT_HOME"]) / "profile_default" / "jobs" / job.native_id).is_dir()
    assert job.native_id in [j.native_id for j in jobs.JobService().list()]


def test_killing_the_program_alone_reads_failed(js, tmp_path):
    job = js.submit(JobDescription("sh", ["-c", "kill -9 $$"]))
    assert job.wait(WAIT) is JobState.FAILED
    assert job.exit_code == 137


def test_default_output_lands_in_the_job_folder(js):
    job = js.submit(JobDescription("echo", ["hello"]))
    assert job.wait(WAIT) is JobState.COMPLETED
    assert (Path(js.backend.state_dir) / job.native_id / "stdout").read_text() == "hello\n"


def test_missing_executable_fails_with_127(js):
    job = js.submit(JobDescription("/nonexistent/program"))
    assert job.wait(WAIT) is JobState.FAILED
    assert job.exit_code == 127


def test_refresh_many_jobs_in_one_query(js):
    many = [js.submit(JobDescription("sh", ["-c", f"exit {i}"])) for i in range(3)]
    for job in many:
        job.wait(WAIT)
    fresh = [jobs.JobService("local://", state_dir=js.backend.state_dir).attach(j.native_id)
             for j in many]
    js.refresh(fresh)
    assert [j.exit_code for j in fresh] == [0, 1, 2]
    assert [j.cached_state for j in fresh] == [JobState.COMPLETED, JobState.FAILED, JobState.FAILED]
