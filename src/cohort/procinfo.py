"""Facts about local processes, shared by the controller and the engines."""

from __future__ import annotations


def proc_starttime(pid: int) -> str | None:
    """The start time of a live (not zombie) process, or None if it is gone.

    A pid and its start time together name one process: a recycled pid has
    another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]
