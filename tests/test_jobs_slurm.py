"""slurm:// against the real single-node Slurm (.ci/services/slurm.sh)."""

from __future__ import annotations

import subprocess

import pytest

from cohort import jobs
from cohort.errors import JobError
from cohort.jobs import JobDescription, JobState
from services import WAIT, JobServiceContract, check_slurm, wait_for_file


@pytest.fixture
def js():
    check_slurm()
    return jobs.JobService("slurm://")


class TestSlurm(JobServiceContract):
    def external_cancel(self, job):
        subprocess.run(["scancel", job.native_id], check=True)


def test_rejected_job_gives_slurms_words(js):
    with pytest.raises(JobError) as e:
        js.submit(JobDescription("true", queue="no-such-partition"))
    msg = str(e.value)
    assert "sbatch: error: invalid partition specified: no-such-partition" in msg
    assert "sbatch: error: Batch job submission failed: Invalid partition name specified" in msg


def test_script_directives_reach_slurm(js, tmp_path):
    jd = JobDescription("sh", ["-c", 'echo "$SLURM_JOB_NAME $SLURM_NTASKS_PER_NODE"'],
                        name="cohort-probe", walltime="00:02:00", directory=str(tmp_path),
                        stdout="out-%j.txt", queue="debug",
                        scheduler_options=["--comment=from-cohort"])
    job = js.submit(jd)
    assert job.wait(WAIT) is JobState.COMPLETED
    out = wait_for_file(tmp_path / f"out-{job.native_id}.txt")
    assert out.split() == ["cohort-probe", "1"]
    show = subprocess.run(["scontrol", "-o", "show", "job", job.native_id],
                          capture_output=True, text=True).stdout
    assert "TimeLimit=00:02:00" in show and "Comment=from-cohort" in show


def test_cancel_queued_job(js):
    held = js.submit(JobDescription("true", scheduler_options=["--hold"]))
    assert held.wait(WAIT, states=[JobState.QUEUED]) is JobState.QUEUED
    held.cancel()
    assert held.wait(WAIT) is JobState.CANCELED
    assert held.exit_code is None


def test_list_shows_my_queued_jobs(js):
    held = js.submit(JobDescription("true", scheduler_options=["--hold"]))
    try:
        listed = {j.native_id: j for j in js.list()}
        assert held.native_id in listed
        assert listed[held.native_id].cached_state is JobState.QUEUED
    finally:
        held.cancel()
