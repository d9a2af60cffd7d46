"""A first tour of cohort on a local cluster: run with `python examples/quickstart.py`."""

import os
import time

import cohort


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> None:
    with cohort.Cluster(n=2) as rc:               # controller + 2 engines, stopped on exit
        print("engines:", rc.ids)
        dv = rc[:]                                 # a view on all engines
        dv.execute("import math", block=True)      # run code in each engine's namespace
        dv.push({"scale": 10}, block=True)         # set a variable everywhere
        print("pids:", dv.apply(lambda: os.getpid()).get(timeout=10))
        dv.scatter("chunk", list(range(1, 21)), block=True)
        dv.execute("total = scale * sum(math.isqrt(x) for x in chunk)", block=True)
        print("totals per engine:", dv.pull("total", block=True))
        steps = dv.map(collatz_steps, range(1, 10_001), block=True)
        print("longest Collatz chain below 10,000:", max(steps), "steps, at", steps.index(max(steps)) + 1)
        try:
            rc[0].execute("1 / 0", block=True)
        except cohort.RemoteError as e:
            print("a remote error, with its engine and traceback:\n", e)

        lv = rc.load_balanced_view()               # the task farm: least-loaded engine first
        squares = lv.map(lambda v: v * v, range(100_000))   # chunked, streamed, in order
        print("sum of 100,000 squares:", sum(squares))
        try:
            lv.apply(time.sleep, 60, timeout=0.5).get()     # a policy: stopped after 0.5 s
        except cohort.TaskTimeout as e:
            print("stopped:", e)
        with rc.executor() as ex:                  # concurrent.futures, unchanged code
            print("executor:", list(ex.map(collatz_steps, [27, 97, 871])))
        print("recorded tasks:", len(rc.tasks(limit=None)), "(see `cohort tasks`)")


if __name__ == "__main__":
    main()
