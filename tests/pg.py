"""A throwaway PostgreSQL server for tests.

`PostgresServer` runs the Debian server binaries (``/usr/lib/postgresql/*/bin``,
installed by ``.ci/services/postgres.sh``) on a fresh data folder, listening on
127.0.0.1 at a free port, as an unprivileged user when the tests run as root.
Its `url` names a database on it; `stop` shuts it down and deletes the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from cohort.cluster.local import free_ports

MISSING = ("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run .ci/run "
           "(or .ci/services/postgres.sh) to install them, or set COHORT_SKIP_POSTGRES=1 to "
           "skip the PostgreSQL tests")


def find_bindir() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(
                os.path.join(d, "pg_ctl"), os.X_OK):
            ver = os.path.basename(os.path.dirname(d))
            found.append((tuple(int(x) for x in ver.split(".") if x.isdigit()), d))
    return Path(max(found)[1]) if found else None


def _free_port() -> int:
    return free_ports(1)[0]


class PostgresServer:
    """A private PostgreSQL server; `start` it, use `url`, `stop` it."""

    user = "cohort"
    password = "cohort-test-pw"
    dbname = "cohort_test"

    def __init__(self, bindir: Path | None = None, settings: dict | None = None):
        self.bindir = bindir or find_bindir()
        self.settings = dict(settings or {})  # extra server settings (-c name=value)
        if self.bindir is None:
            raise RuntimeError(MISSING)
        self.port = 0
        self.tmp: Path | None = None
        self.os_user: str | None = None

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.os_user:  # the server refuses to run as root
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.tmp)
        if proc.returncode != 0:
            log = self.tmp / "server.log" if self.tmp else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{tail}")

    @property
    def url(self) -> str:
        return (f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.dbname}")

    def start(self) -> "PostgresServer":
        self.tmp = Path(tempfile.mkdtemp(prefix="cohort-pg-"))
        if os.geteuid() == 0:
            self.os_user = "postgres"
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(self.tmp, 0o700)
        pwfile = self.tmp / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        data = self.tmp / "data"
        self._run("initdb", "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        self.port = _free_port()
        opts = (f"-h 127.0.0.1 -p {self.port} -k {self.tmp} -F "
                "-c full_page_writes=off -c synchronous_commit=off")
        opts += "".join(f" -c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(data), "-l", str(self.tmp / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")
        import psycopg
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")
        return self

    def stop(self) -> None:
        if self.tmp is None:
            return
        try:
            if (self.tmp / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.tmp / "data"), "-m", "immediate",
                          "-w", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def has_postgis(bindir: Path | None = None) -> bool:
    """Is the PostGIS extension installed for the server in `bindir` (default: newest)?"""
    bindir = bindir or find_bindir()
    if bindir is None:
        return False
    ver = bindir.parent.name
    return os.path.exists(f"/usr/share/postgresql/{ver}/extension/postgis.control")
