"""Profile folders and connection files.

A profile is a folder under ``$COHORT_HOME`` (default ``~/.cohort``) named
``profile_<name>``. It holds the connection file (``controller.json``, mode
0600: it contains the cluster key), the record of a cluster started in the
background (``cluster.json``) and logs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConnectionFileError

DEFAULT_PROFILE = "default"


def cohort_home() -> Path:
    return Path(os.environ.get("COHORT_HOME") or Path.home() / ".cohort")


def profile_dir(profile: str | None = None) -> Path:
    name = profile or os.environ.get("COHORT_PROFILE") or DEFAULT_PROFILE
    return cohort_home() / f"profile_{name}"


def default_connection_file(profile: str | None = None) -> Path:
    return profile_dir(profile) / "controller.json"


@dataclass
class ConnectionInfo:
    """Everything a process needs to join a controller."""

    key: str
    ip: str = "127.0.0.1"
    ports: dict = field(default_factory=dict)
    cluster_id: str = ""
    shm_token: str = ""
    controller_pid: int = 0
    transport: str = "tcp"

    @classmethod
    def new(cls, ip: str = "127.0.0.1") -> "ConnectionInfo":
        return cls(key=secrets.token_hex(32), ip=ip, cluster_id=secrets.token_hex(6),
                   shm_token=secrets.token_hex(16))

    def url(self, channel: str) -> str:
        ip = self.ip
        if ip in ("0.0.0.0", "*", ""):
            ip = "127.0.0.1"
        return f"{self.transport}://{ip}:{self.ports[channel]}"

    def to_dict(self) -> dict:
        return {"version": 1, "key": self.key, "ip": self.ip, "ports": self.ports,
                "cluster_id": self.cluster_id, "shm_token": self.shm_token,
                "controller_pid": self.controller_pid, "transport": self.transport}

    def write(self, path: Path | str) -> Path:
        """Write atomically with mode 0600 (the file holds the key)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path | str) -> "ConnectionInfo":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConnectionFileError(
                f"no connection file at {path}: start a cluster first "
                f"(`cohort start`), or pass the file of a running one") from None
        except (OSError, ValueError) as e:
            raise ConnectionFileError(f"cannot read connection file {path}: {e}") from None
        try:
            return cls(key=d["key"], ip=d.get("ip", "127.0.0.1"), ports=dict(d["ports"]),
                       cluster_id=d.get("cluster_id", ""), shm_token=d.get("shm_token", ""),
                       controller_pid=int(d.get("controller_pid", 0)),
                       transport=d.get("transport", "tcp"))
        except (KeyError, TypeError, ValueError) as e:
            raise ConnectionFileError(f"connection file {path} is malformed ({e!r})") from None


def resolve_connection_file(connection_file=None, profile: str | None = None) -> Path:
    """The connection file to use: explicit, then $COHORT_CONNECTION_FILE, then the profile's."""
    if connection_file:
        return Path(connection_file)
    env = os.environ.get("COHORT_CONNECTION_FILE")
    if env:
        return Path(env)
    return default_connection_file(profile)
