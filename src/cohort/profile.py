"""Profile folders and connection files.

A profile is a folder under ``$COHORT_HOME`` (default ``~/.cohort``) named
``profile_<name>``. It holds the connection file (``controller.json``, mode
0600: it contains the cluster key), the record of a cluster started in the
background (``cluster.json``) and logs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConnectionFileError

DEFAULT_PROFILE = "default"
#: task results larger than this (pickled) are written to the object store and come back as Refs
DEFAULT_STORE_THRESHOLD = 512 * 2**20


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
    location: str = ""     # where other hosts reach a controller bound to all interfaces
    curve: dict = field(default_factory=dict)  # CurveZMQ keys (z85 text); empty: plain TCP
    store: str = ""        # object store for large results ("": each process's default store)
    store_threshold: int = DEFAULT_STORE_THRESHOLD  # results larger go to the store; 0: never

    @classmethod
    def new(cls, ip: str = "127.0.0.1", encrypt: bool | None = None) -> "ConnectionInfo":
        """Fresh keys for a new cluster. Traffic is encrypted (CurveZMQ) unless the
        controller binds a loopback address only, or `encrypt` says otherwise."""
        info = cls(key=secrets.token_hex(32), ip=ip, cluster_id=secrets.token_hex(6),
                   shm_token=secrets.token_hex(16))
        if encrypt is None:
            encrypt = not is_loopback(ip)
        if encrypt:
            info.curve = new_curve_keys()
        if ip in WILDCARDS:
            info.location = routable_address()
        return info

    def moved_to(self, ip: str) -> "ConnectionInfo":
        """The same cluster bound to another address: keys added if it is now routable."""
        self.ip = ip
        if not self.curve and not is_loopback(ip):
            self.curve = new_curve_keys()
        if ip in WILDCARDS and not self.location:
            self.location = routable_address()
        return self

    def url(self, channel: str) -> str:
        ip = self.ip
        if ip in WILDCARDS:
            ip = self.location or "127.0.0.1"
        return f"{self.transport}://{ip}:{self.ports[channel]}"

    def secure_server(self, sock) -> None:
        """Make a socket the controller binds a CurveZMQ server (no-op without keys)."""
        if self.curve:
            sock.curve_secretkey = self.curve["server_secret"].encode()
            sock.curve_server = True

    def client_options(self) -> list:
        """(option, value) pairs that make a connecting socket a CurveZMQ client."""
        if not self.curve:
            return []
        import zmq
        return [(zmq.CURVE_SERVERKEY, self.curve["server_public"].encode()),
                (zmq.CURVE_PUBLICKEY, self.curve["client_public"].encode()),
                (zmq.CURVE_SECRETKEY, self.curve["client_secret"].encode())]

    def secure_client(self, sock) -> None:
        """Set `client_options` on a socket before it connects."""
        for opt, value in self.client_options():
            sock.setsockopt(opt, value)

    def to_dict(self) -> dict:
        d = {"version": 1, "key": self.key, "ip": self.ip, "ports": self.ports,
             "cluster_id": self.cluster_id, "shm_token": self.shm_token,
             "controller_pid": self.controller_pid, "transport": self.transport}
        if self.location:
            d["location"] = self.location
        if self.curve:
            d["curve"] = self.curve
        if self.store:
            d["store"] = self.store
        d["store_threshold"] = self.store_threshold
        return d

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
                       transport=d.get("transport", "tcp"), location=d.get("location", ""),
                       curve=dict(d.get("curve") or {}), store=d.get("store", ""),
                       store_threshold=int(d.get("store_threshold", DEFAULT_STORE_THRESHOLD)))
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


WILDCARDS = ("0.0.0.0", "*", "", "::")


def is_loopback(ip: str) -> bool:
    """Whether binding `ip` keeps the controller reachable from this machine only."""
    if ip in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:  # a host name: resolve it
        try:
            return ipaddress.ip_address(socket.gethostbyname(ip)).is_loopback
        except OSError:
            return False


def routable_address() -> str:
    """This host's address as other hosts see it (its name resolved), for the connection file."""
    try:
        return socket.gethostbyname(socket.getfqdn())
    except OSError:
        return socket.gethostname()


def new_curve_keys() -> dict:
    """A server key pair for the controller and one client key pair for everyone else."""
    import zmq
    if not zmq.has("curve"):
        from .errors import ClusterStartError
        raise ClusterStartError("this libzmq was built without CurveZMQ, so traffic to a "
                                "routable address cannot be encrypted; bind 127.0.0.1, or "
                                "install a pyzmq wheel (they bundle libzmq with CURVE)")
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return {"server_public": server_public.decode(), "server_secret": server_secret.decode(),
            "client_public": client_public.decode(), "client_secret": client_secret.decode()}
