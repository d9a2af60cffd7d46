"""ssh:// (process groups on the far side) and slurm+ssh:// (Slurm through a login
host) through a real private sshd on 127.0.0.1 with a key made here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cohort import jobs
from cohort.errors import JobError
from cohort.jobs import JobDescription, JobState
from services import WAIT, JobServiceContract, check_sge, check_slurm, start_sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def js(sshd, tmp_path):
    service = sshd.service("ssh", state_dir=str(tmp_path / "remote-state"))
    yield service
    try:
        for job in service.list():
            job.cancel()
    finally:
        service.close()


class TestSSH(JobServiceContract):
    unknown_id = "nosuchjob"

    def new_service(self, js):
        sh = js.shell
        return jobs.JobService(js.url, identity_file=sh.identity_file,
                               ssh_options=sh.ssh_options, state_dir=js.backend.state_dir)

    def external_cancel(self, job):
        pid = (Path(job.service.backend.state_dir) / job.native_id / "pid").read_text().strip()
        r = job.service.shell.run(f"kill -TERM -{pid}")   # as a user would, on that host
        assert r.rc == 0, r.err


def test_relative_state_dir_is_under_the_remote_home(sshd):
    with sshd.service("ssh", state_dir=".cohort-test-jobs") as js:
        job = js.submit(JobDescription("true"))
        assert job.wait(WAIT) is JobState.COMPLETED
        home = js.shell.run("echo $HOME").out.strip()
        assert (Path(home) / ".cohort-test-jobs" / job.native_id / "exit_code").exists()
        js.shell.run("rm -rf \"$HOME/.cohort-test-jobs\"")


def test_control_master_is_reused_and_closed(sshd):
    js = sshd.service("ssh", state_dir="/tmp/cohort-ssh-cm-test")
    assert js.shell.run("true").rc == 0
    check = js.shell.base_command()
    check[-1:-1] = ["-O", "check"]
    assert subprocess.run(check, capture_output=True).returncode == 0
    js.close()
    assert subprocess.run(check, capture_output=True).returncode != 0


def test_bad_key_is_a_clear_error(sshd, tmp_path):
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    js = jobs.JobService(sshd.url("ssh"), identity_file=str(key), ssh_options=sshd.ssh_options,
                         control_master=False)
    with pytest.raises(JobError, match="Permission denied"):
        js.submit(JobDescription("true"))


# --- schedulers through the login host -----------------------------------------------------------

@pytest.fixture
def slurm_ssh(sshd):
    check_slurm()
    service = sshd.service("slurm+ssh")
    yield service
    service.close()


class TestSlurmThroughSSH(JobServiceContract):
    @pytest.fixture
    def js(self, slurm_ssh):
        return slurm_ssh

    def new_service(self, js):
        sh = js.shell
        return jobs.JobService(js.url, identity_file=sh.identity_file, ssh_options=sh.ssh_options)

    def external_cancel(self, job):
        subprocess.run(["scancel", job.native_id], check=True)


def test_slurm_ssh_rejection_is_verbatim(slurm_ssh):
    with pytest.raises(JobError) as e:
        slurm_ssh.submit(JobDescription("true", queue="no-such-partition"))
    assert "sbatch: error: Batch job submission failed: Invalid partition name specified" \
        in str(e.value)


def test_sge_through_ssh(sshd, tmp_path):
    check_sge()
    with sshd.service("sge+ssh") as js:
        job = js.submit(JobDescription("sh", ["-c", "echo via-login; exit 4"],
                                       directory=str(tmp_path), stdout="o.txt", stderr="e.txt"))
        assert job.wait(WAIT) is JobState.FAILED
        assert job.exit_code == 4
        assert (tmp_path / "o.txt").read_text() == "via-login\n"


def test_unknown_host_key_is_refused(sshd, tmp_path):
    other = tmp_path / "known_hosts"
    other.write_text("")
    js = jobs.JobService(sshd.url("ssh"), identity_file=sshd.identity_file, control_master=False,
                         ssh_options=[f"UserKnownHostsFile={other}", "StrictHostKeyChecking=yes"])
    with pytest.raises(JobError, match="Host key verification failed"):
        js.list()


def test_cli_through_ssh(sshd, tmp_path):
    import json
    import sys
    base = [sys.executable, "-m", "cohort.jobs.cli"]
    opts = ["--service", sshd.url("ssh"), "--identity", sshd.identity_file,
            "--state-dir", str(tmp_path / "state")]
    for o in sshd.ssh_options:
        opts += ["--ssh-option", o]
    r = subprocess.run(base + ["submit", *opts, "--wait", "--json", "--directory", str(tmp_path),
                               "--stdout", "o.txt", "--", "sh", "-c", "echo $0 over ssh"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["state"] == "COMPLETED" and done["exit_code"] == 0
    assert (tmp_path / "o.txt").read_text() == "sh over ssh\n"
    r = subprocess.run(base + ["list", *opts, "--json"], capture_output=True, text=True, timeout=60)
    assert [d["id"] for d in json.loads(r.stdout)] == [done["id"]]
