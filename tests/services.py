"""Real services for the job tests: checks for Slurm and Grid Engine, a private
sshd on 127.0.0.1, PBS stand-ins on PATH, and the contract every job service
must meet (`JobServiceContract`, subclassed by each tests/test_jobs_*.py).

A missing service FAILS the tests that need it, saying how to start it
(``.ci/run``, or the script in ``.ci/services/``); set ``COHORT_SKIP_SLURM=1``,
``COHORT_SKIP_SGE=1`` or ``COHORT_SKIP_SSH=1`` to skip them instead.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cohort import jobs
from cohort.errors import JobError, JobTimeout
from cohort.jobs import JobDescription, JobState
from cohort.cluster.local import free_ports

ROOT = Path(__file__).resolve().parent.parent
PBS_FAKES = Path(__file__).resolve().parent / "fakes" / "pbs"

# generous: a shared 2-core box, and other tests may hold the scheduler's slots
WAIT = 120


def missing(service: str, why: str) -> None:
    """Fail (or skip, when COHORT_SKIP_<SERVICE>=1) because `service` is not usable."""
    var = f"COHORT_SKIP_{service.upper()}"
    script = {"slurm": "slurm.sh", "sge": "sge.sh", "ssh": "sshd.sh"}[service]
    if os.environ.get(var) == "1":
        pytest.skip(f"{service} tests skipped ({var}=1): {why}")
    pytest.fail(f"{service} is not available: {why}. Run `.ci/run` (or "
                f"`bash .ci/services/{script}`) first, or set {var}=1 to skip these tests.",
                pytrace=False)


def _run(cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout)


def check_slurm() -> None:
    if os.environ.get("COHORT_SKIP_SLURM") == "1":
        pytest.skip("Slurm tests skipped (COHORT_SKIP_SLURM=1)")
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        missing("slurm", "no sbatch/sinfo on PATH")
    deadline = time.monotonic() + 30  # a node still "completing" the last test's job is busy, not gone
    while True:
        try:
            r = _run("sinfo -h -o %T")
        except subprocess.TimeoutExpired:
            missing("slurm", "sinfo did not answer within 20 s (slurmctld down?)")
        states = [s.rstrip("*~#") for s in r.stdout.split()]
        if r.returncode == 0 and any(s in ("idle", "mixed", "allocated") for s in states):
            return
        if r.returncode != 0 or time.monotonic() > deadline or not any(
                s in ("completing",) for s in states):
            missing("slurm", f"no usable node (sinfo: {r.stdout.strip() or r.stderr.strip()})")
        time.sleep(0.5)


def check_sge() -> None:
    if os.environ.get("COHORT_SKIP_SGE") == "1":
        pytest.skip("Grid Engine tests skipped (COHORT_SKIP_SGE=1)")
    if not shutil.which("qconf") or not shutil.which("qsub"):
        missing("sge", "no qconf/qsub on PATH")
    try:
        r = _run("qconf -sql && qstat -f")
    except subprocess.TimeoutExpired:
        missing("sge", "qconf did not answer within 20 s (sge_qmaster down?)")
    if r.returncode != 0 or "all.q" not in r.stdout:
        missing("sge", f"no queue all.q ({r.stderr.strip() or r.stdout.strip()})")


def _free_port() -> int:
    return free_ports(1)[0]


class SSHD:
    """A private sshd on 127.0.0.1:port, its own host key, a client key made here."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.user = getpass.getuser()
        self.identity_file = str(folder / "id_client")
        self.known_hosts = str(folder / "known_hosts")
        self.proc: subprocess.Popen | None = None

    @property
    def ssh_options(self) -> list[str]:
        return [f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes",
                "LogLevel=ERROR"]

    def url(self, scheme: str = "ssh") -> str:
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}"

    def service(self, scheme: str = "ssh", **kw) -> jobs.JobService:
        return jobs.JobService(self.url(scheme), identity_file=self.identity_file,
                               ssh_options=self.ssh_options, **kw)

    def start(self) -> "SSHD":
        d = self.folder
        for name in ("host_key", "id_client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True, capture_output=True)
        shutil.copy(d / "id_client.pub", d / "authorized_keys")
        host_pub = (d / "host_key.pub").read_text().split()[:2]
        Path(self.known_hosts).write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub)}\n")
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
            f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nMaxSessions 50\nMaxStartups 50\nLogLevel ERROR\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # privilege separation dir
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(d / "sshd.log", "w"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 15 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sshd(folder: Path) -> SSHD:
    """A running private sshd (fails or skips, see `missing`, when sshd is not installed)."""
    if os.environ.get("COHORT_SKIP_SSH") == "1":
        pytest.skip("SSH tests skipped (COHORT_SKIP_SSH=1)")
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("ssh") \
            or not shutil.which("ssh-keygen"):
        missing("ssh", "no /usr/sbin/sshd, ssh or ssh-keygen")
    return SSHD(folder).start()


def wait_for_file(path: Path, timeout: float = 30) -> str:
    """The text of `path` once it exists (batch systems may write it a little late)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.read_text()


# --- the contract every job service meets ----------------------------------------------------

class JobServiceContract:
    """Tests every scheme passes against its real service.

    Subclasses provide the fixture ``js`` (a JobService) and ``external_cancel(job)``
    (what a user would type: scancel, qdel, kill).
    """

    def external_cancel(self, job: jobs.Job) -> None:
        raise NotImplementedError

    def sleeper(self, js, seconds: int = 300) -> jobs.Job:
        job = js.submit(JobDescription("sleep", [str(seconds)], walltime="00:10:00",
                                       stdout="/dev/null", stderr="/dev/null"))
        assert job.wait(WAIT, states=[JobState.ACTIVE]) is JobState.ACTIVE, job.message
        return job

    def test_exit_code_output_environment_directory(self, js, tmp_path):
        jd = JobDescription("sh", ["-c", 'echo "out $GREETING"; echo err >&2; pwd; exit 3'],
                            environment={"GREETING": "ni hao 'x' $HOME"}, directory=str(tmp_path),
                            stdout="out.txt", stderr="err.txt", walltime="00:05:00")
        job = js.submit(jd)
        assert job.native_id
        assert job.cached_state in (JobState.QUEUED, JobState.ACTIVE)
        assert job.wait(WAIT) is JobState.FAILED
        assert job.exit_code == 3
        out = wait_for_file(tmp_path / "out.txt")
        assert out.splitlines()[0] == "out ni hao 'x' $HOME"
        assert Path(out.splitlines()[1]).resolve() == tmp_path.resolve()
        assert wait_for_file(tmp_path / "err.txt").strip() == "err"
        assert "FAILED" in repr(job) and "exit_code=3" in repr(job)

    def test_completed(self, js, tmp_path):
        job = js.create_job(JobDescription("true", directory=str(tmp_path), stdout="o", stderr="e"))
        assert job.state is JobState.NEW and job.native_id is None
        assert job.run() is job
        assert job.wait(WAIT) is JobState.COMPLETED
        assert job.exit_code == 0
        assert job.state is JobState.COMPLETED
        with pytest.raises(JobError):
            job.run()

    def test_cancel_running_job(self, js):
        job = self.sleeper(js)
        job.cancel()
        assert job.wait(WAIT) is JobState.CANCELED
        assert "CANCELED" in repr(job)
        job.cancel()                      # cancelling a final job does nothing

    def test_external_cancel_reads_canceled(self, js):
        job = self.sleeper(js)
        self.external_cancel(job)
        assert job.wait(WAIT) is JobState.CANCELED

    def test_wait_timeout_then_attach_and_list(self, js):
        job = self.sleeper(js)
        try:
            with pytest.raises(JobTimeout):
                job.wait(timeout=0.3)
            other = self.new_service(js)
            try:
                again = other.attach(job.native_id)
                assert again.native_id == job.native_id
                assert again.state is JobState.ACTIVE
                assert job.native_id in [j.native_id for j in other.list()]
                again.cancel()              # from the other service, seen by the first
            finally:
                other.close()
            assert job.wait(WAIT) is JobState.CANCELED
        finally:
            job.cancel()

    def test_attach_unknown_job(self, js):
        with pytest.raises(JobError):
            js.attach(self.unknown_id)

    unknown_id = "999999"

    def new_service(self, js) -> jobs.JobService:
        """A second JobService on the same URL, as another process would make."""
        return jobs.JobService(js.url)
