"""Controller memory across many completed tasks: it must stay flat.

Runs `--tasks` trivial tasks (results retrieved) through a local 2-engine
cohort cluster in batches and prints the controller's resident memory after
each tenth, plus the task rate::

    python bench/bench_memory.py                 # 100,000 tasks
    python bench/bench_memory.py --tasks 20000 --batch 500
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import cohort  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def noop(i):
    return i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks in all (100000)")
    ap.add_argument("--batch", type=int, default=1000, help="tasks submitted before waiting (1000)")
    args = ap.parse_args()
    cluster = cohort.Cluster(n=2)
    rc = cluster.start()
    try:
        pid = cluster.controller.pid
        views = [rc[i] for i in rc.ids]
        step = max(args.batch, args.tasks // 10)
        print(f"{'tasks done':>10}  {'controller RSS MiB':>18}  {'tasks/s':>8}")
        print(f"{0:>10}  {rss_mib(pid):>18.1f}  {'':>8}")
        done, t0, mark = 0, time.perf_counter(), 0
        first = last = None
        while done < args.tasks:
            n = min(args.batch, args.tasks - done)
            ars = [views[i % len(views)].apply_async(noop, i) for i in range(n)]
            for i, ar in enumerate(ars):
                assert ar.get(timeout=60) == i
            done += n
            if done - mark >= step or done == args.tasks:
                mark = done
                rate = done / (time.perf_counter() - t0)
                last = rss_mib(pid)
                first = first if first is not None else last
                print(f"{done:>10}  {last:>18.1f}  {rate:>8.0f}")
        print(f"controller RSS change from the first to the last checkpoint: {last - first:+.1f} MiB; "
              f"tasks pending at the controller: {rc.status()['tasks_pending']}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
