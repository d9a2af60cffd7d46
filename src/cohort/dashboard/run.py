"""Running the dashboard: in the foreground (`cohort dashboard`), in the background
(`cohort start --dashboard`, `Cluster.dashboard()`), and the record that finds it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..profile import resolve_connection_file
from .server import DEFAULT_PORT, RECORD, Dashboard


# --- running it: foreground, background, the record -----------------------------------
def read_record(connection_file) -> dict | None:
    """The dashboard.json beside `connection_file`, if its process still runs."""
    from ..cluster.local import alive
    path = Path(connection_file).parent / RECORD
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if alive(rec) else None


def start_background(connection_file, port: int | None = None, ip: str | None = None,
                     db: str | None = None, log_file=None, timeout: float = 20.0) -> str:
    """Start `cohort dashboard` for this cluster as a detached process; return its URL.

    `db`: the cluster's task database, when not tasks.db beside the connection file."""
    from ..errors import CohortError
    cf = Path(connection_file)
    cmd = [sys.executable, "-m", "cohort", "dashboard", "--file", str(cf)]
    if db:
        cmd += ["--db", str(db)]
    if port is not None:
        cmd += ["--port", str(port)]
    if ip:
        cmd += ["--ip", ip]
    log_file = Path(log_file) if log_file else cf.parent / "logs" / "dashboard.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = read_record(cf)
        if rec is not None and rec.get("pid") == p.pid:
            return rec["url"]
        if p.poll() is not None:
            tail = log_file.read_text(errors="replace")[-1500:]
            raise CohortError(f"the dashboard exited (status {p.returncode}); its log "
                              f"{log_file} ends:\n{tail}")
        time.sleep(0.1)
    p.terminate()
    raise CohortError(f"the dashboard did not start within {timeout:g} s; see {log_file}")


def stop_background(connection_file, timeout: float = 5.0) -> bool:
    """Stop the dashboard serving this cluster, if one runs; True if one did."""
    from ..cluster.local import stop_processes
    rec = read_record(connection_file)
    path = Path(connection_file).parent / RECORD
    if rec is not None:
        stop_processes([rec["pid"]], timeout)
    path.unlink(missing_ok=True)
    return rec is not None


def cmd_dashboard(args) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        stream=sys.stderr,
                        format="%(asctime)s dashboard %(levelname)s %(name)s: %(message)s")
    from ..errors import CohortError
    cf = resolve_connection_file(args.file, args.profile)
    if not cf.exists():
        print(f"cohort: no cluster is running (no connection file {cf}); `cohort start` one, "
              f"or pass --file", file=sys.stderr)
        return 1
    running = read_record(cf)
    if running is not None and running["pid"] != os.getpid():
        print(f"cohort: a dashboard (pid {running['pid']}) already serves this cluster: "
              f"{running['url']}", file=sys.stderr)
        return 1
    try:
        dash = Dashboard(cf, profile=args.profile, ip=args.ip, port=args.port, db=args.db,
                         period=args.period)
    except (CohortError, OSError) as e:
        print(f"cohort: cannot start the dashboard: {e}", file=sys.stderr)
        return 1

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    dash.write_record()
    if not (dash.ip.startswith("127.") or dash.ip in ("::1", "localhost")):
        print(f"cohort: warning: the dashboard listens on {dash.ip} over plain HTTP; the token "
              f"travels unencrypted (an SSH tunnel to 127.0.0.1 is safer)", file=sys.stderr)
    print(f"dashboard: {dash.url}", flush=True)
    try:
        dash.serve()
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
        dash.remove_record()
    return 0


def add_dashboard_parser(sub) -> argparse.ArgumentParser:
    """Add `cohort dashboard` to the CLI's subparsers."""
    help_ = "serve a live web page of a running cluster (engines, tasks, queue, failures, jobs)"
    sp = sub.add_parser("dashboard", help=help_, description=help_ + "; it prints the URL, "
                        "which carries the cluster's token (a request without it gets 403)")
    sp.set_defaults(func=cmd_dashboard)
    sp.add_argument("--profile", help="profile name (default: $COHORT_PROFILE or 'default')")
    sp.add_argument("--file", help="connection file (default: the profile's)")
    sp.add_argument("--ip", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sp.add_argument("--port", type=int, default=None,
                    help=f"port (default {DEFAULT_PORT}, or a free one if that is taken)")
    sp.add_argument("--db", default=None, help="task database to read (default: tasks.db beside "
                    "the connection file; postgresql://... for PostgreSQL)")
    sp.add_argument("--period", type=float, default=1.0,
                    help="seconds between samples of the controller's status (1)")
    sp.add_argument("--log-level", default="INFO")
    return sp
