"""Process helpers shared by the bench scripts: find and kill what a framework left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

TAG_VAR = "BENCH_TAG"  # set in each framework child's environment; inherited by all it starts


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries BENCH_TAG=tag (Linux /proc)."""
    needle, pids = f"{TAG_VAR}={tag}".encode(), []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except (OSError, ValueError):
            pass
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return str(pid)


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
