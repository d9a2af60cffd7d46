"""sge:// against the real single-node Grid Engine (.ci/services/sge.sh)."""

from __future__ import annotations

import subprocess

import pytest

from cohort import jobs
from cohort.errors import JobError
from cohort.jobs import JobDescription, JobState
from services import WAIT, JobServiceContract, check_sge, wait_for_file


@pytest.fixture
def js():
    check_sge()
    return jobs.JobService("sge://", record_grace=5)


class TestSGE(JobServiceContract):
    def new_service(self, js):
        return jobs.JobService(js.url, record_grace=5)

    def external_cancel(self, job):
        subprocess.run(["qdel", job.native_id], check=True, capture_output=True)


def test_rejected_job_gives_grid_engines_words(js):
    with pytest.raises(JobError) as e:
        js.submit(JobDescription("true", queue="no-such-queue"))
    assert ('Unable to run job: Job was rejected because job requests unknown queue '
            '"no-such-queue"') in str(e.value)


def test_cancel_queued_job(js):
    held = js.submit(JobDescription("true", scheduler_options=["-h"]))
    assert held.wait(WAIT, states=[JobState.QUEUED]) is JobState.QUEUED
    held.cancel()
    assert held.wait(WAIT) is JobState.CANCELED


def test_job_name_and_queue(js, tmp_path):
    job = js.submit(JobDescription("sh", ["-c", 'echo "$JOB_NAME $QUEUE"'], name="cohortprobe",
                                   queue="all.q", directory=str(tmp_path), stdout="o.txt",
                                   stderr="e.txt", walltime=120))
    assert job.wait(WAIT) is JobState.COMPLETED
    assert wait_for_file(tmp_path / "o.txt").split() == ["cohortprobe", "all.q"]
