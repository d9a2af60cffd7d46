"""``cohort engine -n K``: K engines on this host from one command.

What a batch job or an SSH session runs once per node. The engines are
child processes; a signal to this process (``scancel``, ``qdel``, a closed
SSH session) is passed on to all of them, and it exits when they have.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

log = logging.getLogger(__name__)


def run_engines(n: int, engine_argv: list) -> int:
    """Start `n` engines (each ``cohort engine`` with `engine_argv`); wait for all."""
    children = [subprocess.Popen([sys.executable, "-m", "cohort", "engine", *engine_argv])
                for _ in range(n)]
    log.info("started %d engines: pids %s", n, [c.pid for c in children])

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    codes = []
    for c in children:
        while True:
            try:
                codes.append(c.wait())
                break
            except KeyboardInterrupt:  # forwarded already; keep waiting
                continue
    bad = [rc for rc in codes if rc != 0]
    return bad[0] if bad else 0
