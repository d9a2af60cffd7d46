"""A throwaway S3 server for tests and benchmarks: Ceph's radosgw.

`RadosGW` runs the Debian Ceph binaries (installed by ``.ci/services/s3.sh``)
as a private single-node cluster in a fresh folder: one monitor and one
memstore OSD (data in RAM, no disks), authentication off inside the cluster,
and radosgw answering on 127.0.0.1 at a free port. radosgw checks request
signatures and implements multipart uploads for real. `start` creates an S3
user (`access_key` / `secret_key`); `stop` kills every daemon it started by
pid and deletes the folder.

Fixtures (import them into a test module): ``rgw_server``, one radosgw for
the session; ``rgw``, the same with ``COHORT_S3_ENDPOINT`` and ``AWS_*`` keys
set in the environment for one test. Without the Ceph binaries they fail,
saying how to install them, unless ``COHORT_SKIP_S3=1`` (then they skip).

Pitfalls handled here: the monitor address must be given as an explicit msgr
v1 address (a v2 address makes clients hunt forever); on a busy machine a
client (the ``ceph`` CLI, a starting OSD) sometimes sends its first command
before it has the monitor map ("handle_command on fsid 0000..." -> EPERM), so
those steps are retried; the beast frontend needs
``tcp_nodelay=1`` (without it every small GET waits ~40 ms on Nagle + delayed
ACK); the first bucket operation takes several seconds while radosgw creates
its pools.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from cohort.cluster.local import free_ports

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool",
            "ceph-authtool", "ceph")
MISSING = ("Ceph radosgw binaries not found ({missing}): run .ci/run (or "
           "`bash .ci/services/s3.sh`) to install them, or set COHORT_SKIP_S3=1 to skip "
           "the S3 tests")


def missing_binaries() -> list[str]:
    """The Ceph programs that are not on PATH."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    return free_ports(1)[0]


class RadosGW:
    """A private Ceph mon + memstore OSD + radosgw; `start`, use `endpoint`/keys, `stop`."""

    access_key = "cohorttest"
    secret_key = "cohort-test-secret"

    def __init__(self, memstore_bytes: int = 3 << 30):
        missing = missing_binaries()
        if missing:
            raise RuntimeError(MISSING.format(missing=", ".join(missing)))
        self.memstore_bytes = memstore_bytes
        self.tmp: Path | None = None
        self.mon_port = 0
        self.port = 0
        self._pids: list[int] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "ceph.conf"

    def _run(self, *cmd: str, timeout: float = 60, attempts: int = 1) -> str:
        for attempt in range(attempts):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=self.tmp)
            if proc.returncode == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{self._log_tail()}")
        return proc.stdout

    def _log_tail(self) -> str:
        if self.tmp is None:
            return ""
        out = []
        for log in sorted((self.tmp / "log").glob("*.log")):
            out.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    def _daemon(self, *cmd: str, pidfile: str) -> None:
        """Start a daemon (it forks into the background) and remember its pid."""
        self._run(*cmd, attempts=4)
        path = self.tmp / "run" / pidfile
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._pids.append(int(path.read_text().strip()))
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"{cmd[0]} wrote no pid file {path}:\n{self._log_tail()}")

    def _wait(self, what: str, pred, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if pred():
                    return
            except Exception:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"timed out waiting for {what}:\n{self._log_tail()}")

    def _write_conf(self, fsid: str) -> None:
        b = self.tmp
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
run dir = {b}/run
admin socket = {b}/run/$name.asok
log file = {b}/log/$name.log
pid file = {b}/run/$name.pid
[mon.a]
mon data = {b}/mon
[osd.0]
osd data = {b}/osd0
[client.rgw.test]
rgw frontends = beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1
rgw data = {b}/rgw
rgw dns name = localhost
rgw thread pool size = 32
rgw enable usage log = false
""")

    def start(self, attempts: int = 2) -> "RadosGW":
        """Start mon, OSD and radosgw; create the S3 user. Takes ~15-30 s.

        A fresh single-node Ceph occasionally fails to come up (a daemon racing
        the monitor); then everything is wiped and started once more.
        """
        for attempt in range(attempts):
            self.tmp = Path(tempfile.mkdtemp(prefix="cohort-rgw-"))
            try:
                self._start()
                return self
            except Exception as e:
                self.stop()
                if attempt == attempts - 1:
                    raise
                print(f"radosgw start failed, retrying: {str(e).splitlines()[0]}")
        return self

    def _start(self) -> None:
        b = self.tmp
        for d in ("mon", "osd0", "run", "log", "rgw"):
            (b / d).mkdir()
        self.mon_port, self.port = _free_port(), _free_port()
        fsid = str(uuid.uuid4())
        self._write_conf(fsid)
        c = str(self.conf)
        self._run("monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{self.mon_port}]",
                  "--fsid", fsid, str(b / "monmap"))
        self._run("ceph-authtool", "--create-keyring", str(b / "mon.keyring"), "--gen-key",
                  "-n", "mon.", "--cap", "mon", "allow *")
        self._run("ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", str(b / "monmap"),
                  "--keyring", str(b / "mon.keyring"))
        self._daemon("ceph-mon", "-c", c, "-i", "a", pidfile="mon.a.pid")
        self._wait("the Ceph monitor", lambda: subprocess.run(
            ["ceph", "-c", c, "mon", "stat"], capture_output=True, timeout=10).returncode == 0)
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "-c", c, "osd", "new", osd_uuid, "0", attempts=5)
        self._run("ceph-osd", "-c", c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._daemon("ceph-osd", "-c", c, "-i", "0", pidfile="osd.0.pid")

        def osd_up() -> bool:
            out = self._run("ceph", "-c", c, "osd", "stat", "-f", "json", timeout=10)
            return json.loads(out)["num_up_osds"] == 1
        self._wait("the Ceph OSD", osd_up)
        self._daemon("radosgw", "-c", c, "-n", "client.rgw.test", pidfile="client.rgw.test.pid")

        def rgw_up() -> bool:
            with urllib.request.urlopen(self.endpoint + "/", timeout=5):
                return True
        self._wait("radosgw", rgw_up)
        self._run("radosgw-admin", "-c", c, "user", "create", "--uid=cohort",
                  "--display-name=cohort", f"--access-key={self.access_key}",
                  f"--secret-key={self.secret_key}", attempts=3)

    def client(self):
        """A boto3 S3 client for this server (path-style, SigV4)."""
        import boto3
        from botocore.config import Config
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          retries={"max_attempts": 3}))

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (the first one takes a few seconds) and return its name."""
        name = name or "cohort-" + uuid.uuid4().hex[:10]
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment variables that point cohort's store and boto3 at this server."""
        return {"COHORT_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        """Kill the daemons this object started (by pid) and delete the folder."""
        for pid in reversed(self._pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self._pids:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self._pids.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "RadosGW":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # the bench imports RadosGW without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def rgw_server():
        """A private radosgw for the session, with a bucket "cohort-test"."""
        if os.environ.get("COHORT_SKIP_S3") == "1":
            pytest.skip("COHORT_SKIP_S3=1")
        missing = missing_binaries()
        if missing:
            pytest.fail(MISSING.format(missing=", ".join(missing)))
        gw = RadosGW().start()
        try:
            gw.make_bucket("cohort-test")  # the first bucket operation is slow
            yield gw
        finally:
            gw.stop()

    @pytest.fixture
    def rgw(rgw_server, monkeypatch):
        """The session's radosgw, with COHORT_S3_ENDPOINT and AWS_* keys set for this
        test (worker processes inherit them)."""
        for k, v in rgw_server.env().items():
            monkeypatch.setenv(k, v)
        return rgw_server
