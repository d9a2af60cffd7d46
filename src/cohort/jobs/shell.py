"""Where a job service runs its commands: here (`LocalShell`) or on another host
through the system ``ssh`` binary (`SSHShell`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import logging
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import JobError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


@dataclass
class Result:
    """What one command did: its exit status and what it printed."""

    rc: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """What the command said on stderr (or stdout when stderr is empty), verbatim."""
        return (self.err.strip() or self.out.strip())


class Shell(ABC):
    """Runs POSIX ``sh`` command lines somewhere."""

    host: str | None = None

    @abstractmethod
    def run(self, script: str, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Result:
        ...

    def close(self) -> None:
        """Release what the shell holds (an SSH master connection)."""

    def describe(self) -> str:
        return "local"


class LocalShell(Shell):
    """Runs command lines with ``sh -c`` on this machine."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env

    def run(self, script: str, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Result:
        log.debug("sh -c %r", script)
        try:
            p = subprocess.run(["/bin/sh", "-c", script], input=input, capture_output=True,
                               text=True, timeout=timeout, env=self.env,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise JobError(f"command did not finish within {timeout:g} s: {script}") from None
        return Result(p.returncode, p.stdout, p.stderr)


def _control_dir() -> Path:
    """A private folder for SSH control sockets (short path: sockets are limited to ~100 bytes)."""
    d = Path(tempfile.gettempdir()) / f"cohort-ssh-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


class SSHShell(Shell):
    """Runs command lines on ``[user@]host[:port]`` through the system ``ssh``.

    Always non-interactive (``BatchMode=yes``: a key or an agent must let us in,
    never a password prompt). With ``control_master`` (default) one connection
    is opened and reused by every command (``ControlMaster=auto`` with a
    ``ControlPersist`` of ``persist`` seconds), which makes each command cost a
    few milliseconds instead of a full handshake.
    """

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 identity_file: str | None = None, ssh_options: list[str] | None = None,
                 control_master: bool = True, persist: int = 60,
                 ssh_binary: str = "ssh", connect_timeout: int = 15) -> None:
        if not host:
            raise ValueError("an ssh:// service needs a host: ssh://[user@]host[:port]")
        self.host = host
        self.user = user
        self.port = port
        self.identity_file = identity_file
        self.ssh_options = list(ssh_options or [])
        self.control_master = control_master
        self.persist = persist
        self.ssh_binary = ssh_binary
        self.connect_timeout = connect_timeout

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def describe(self) -> str:
        return self.target + (f":{self.port}" if self.port else "")

    def base_command(self) -> list[str]:
        """The ``ssh`` command line up to (and including) the target."""
        cmd = [self.ssh_binary, "-o", "BatchMode=yes",
               "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.port:
            cmd += ["-p", str(self.port)]
        if self.identity_file:
            cmd += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.control_master:
            cmd += ["-o", "ControlMaster=auto",
                    "-o", f"ControlPath={_control_dir()}/%C",
                    "-o", f"ControlPersist={self.persist}"]
        for opt in self.ssh_options:
            cmd += ["-o", opt] if "=" in opt and not opt.startswith("-") else shlex.split(opt)
        return cmd + [self.target]

    def run(self, script: str, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Result:
        # the remote login shell may be anything (bash, zsh, csh): run POSIX sh explicitly
        cmd = self.base_command() + ["--", "sh -c " + shlex.quote(script)]
        log.debug("%s", shlex.join(cmd))
        try:
            # ssh's own stdout/stderr are pipes; a ControlPersist master forks away from them
            p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise JobError(f"no {self.ssh_binary!r} binary on this machine: install an "
                           f"OpenSSH client to use ssh:// job services") from None
        except subprocess.TimeoutExpired:
            raise JobError(f"ssh to {self.describe()} did not finish within {timeout:g} s") from None
        if p.returncode == 255:
            # ssh's own failure (cannot connect, host key, permission denied)
            raise JobError(f"ssh to {self.describe()} failed: {p.stderr.strip()}")
        return Result(p.returncode, p.stdout, p.stderr)

    def close(self) -> None:
        if not self.control_master:
            return
        cmd = self.base_command()
        cmd[-1:-1] = ["-O", "exit"]
        try:
            subprocess.run(cmd, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            pass
