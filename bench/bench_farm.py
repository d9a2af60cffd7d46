"""Task-farm benchmarks: cohort against ipyparallel, Dask distributed, Ray, joblib and ProcessPoolExecutor.

Run from the repository root (peers: ``pip install -r bench/requirements.txt``)::

    python bench/bench_farm.py                          # all six frameworks
    python bench/bench_farm.py --only cohort,joblib --tasks 2000 --json out.json

Every framework gets 2 engines/workers on this machine and is measured in its
own subprocess (killed, with everything it started, after ``--timeout``
seconds); the parent prints one table. Start-up is not measured (see
bench_core.py); each framework is warmed up (a few tasks of every kind, and
until both workers have run one) before anything is timed. Per framework:

* map: ``--tasks`` trivial tasks (``f(i) = i + 1``, results checked) through
  the framework's map, tasks/s. "map" is its default way, "map chunked" the
  same with an explicit ``--chunksize`` (default ``ceil(tasks / (4 * 2))``,
  the heuristic of ``multiprocessing.Pool.map``) where the API has one.
  cohort ``lv.map(f, xs).get()`` (automatic chunking) / ``chunksize=C``;
  ipyparallel ``lview.map_sync(f, xs)`` (chunksize 1) / ``chunksize=C``;
  Dask ``client.gather(client.map(f, xs, pure=False))``; Ray
  ``ray.get([f.remote(i) for i in xs])``; joblib
  ``Parallel(n_jobs=2, batch_size="auto")(delayed(f)(i) for i in xs)`` (loky);
  ProcessPoolExecutor ``list(ex.map(f, xs))`` (chunksize 1) / ``chunksize=C``.
* submit: ``--tasks`` individual submits, all submitted, then each result
  taken from its own future; tasks/s. cohort ``rc.executor().submit``;
  ipyparallel ``lview.executor.submit``; Dask ``client.submit(f, i,
  pure=False)`` + ``fut.result()``; Ray ``f.remote(i)`` + ``ray.get(ref)``;
  joblib: ``submit`` on the reusable loky executor that joblib's loky backend
  runs on (``Parallel(n_jobs=2)._backend._workers``; Parallel has no submit);
  PPE ``ex.submit``.
* sleep: ``--sleep-tasks`` tasks of ``time.sleep(--sleep-ms)`` through each
  framework's map on its natural per-task path (as "map" above: cohort
  automatic chunking, ipyparallel and PPE chunksize 1, joblib auto batching);
  seconds, and efficiency = ideal / elapsed, ideal = tasks * sleep / 2
  (1.0 s by default).
* kill: a task that writes a start marker (its pid and ``time.time()``) to a
  file and sleeps 60 s is submitted with one retry; once its marker appears
  the process running it is SIGKILLed, and the figure is the time from the
  kill to the start marker of its rerun, from another pid (the rerun returns
  at once; its result is checked). cohort ``lv.apply(task, retries=1)``;
  ipyparallel ``lview.apply(task)`` with ``retries=1`` (the scheduler waits
  5 s after an engine's death before it fails its tasks); Dask
  ``client.submit(task, retries=1)`` (a task whose worker dies is rescheduled
  anyway); Ray ``max_retries=1``. joblib and ProcessPoolExecutor have no
  retry: a killed worker breaks the pool, so "n/a".
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _procs import died, run_framework, run_selected

FRAMEWORKS = {  # name -> module that must be importable
    "cohort": "cohort", "ipyparallel": "ipyparallel", "dask": "distributed",
    "ray": "ray", "joblib": "joblib", "processpool": "concurrent.futures",
}
LABELS = {"cohort": "cohort", "ipyparallel": "ipyparallel", "dask": "Dask distributed",
          "ray": "Ray", "joblib": "joblib (loky)", "processpool": "ProcessPoolExecutor"}
N_WORKERS = 2
WARMUP = 20
KILL_SLEEP = 60.0      # the first run of the kill task sleeps this long (it is killed first)
KILL_WAIT = 60.0       # give up waiting for a start marker after this many seconds
SRC = Path(__file__).resolve().parent.parent / "src"
# the targets, printed under the table
TARGETS = [
    ("submit", "individual submit >= 20,000 tasks/s"),
    ("map", "map >= joblib's auto-batched rate in the same run"),
    ("sleep", ">= 97 % efficiency with 10 ms tasks"),
    ("kill", "SIGKILL -> rerun elsewhere <= 0.1 s on the controller's host"),
]


# --- functions shipped to engines/workers ------------------------------------------
def _inc(i):
    return i + 1


def _nap(s):
    import time  # ipyparallel runs __main__'s functions in the engine's namespace
    time.sleep(s)
    return s


def _pid():
    import os
    return os.getpid()


def _marked_sleeper(marker_dir, sleep_s):
    """Write a start marker (pid, time); the first run sleeps, a rerun returns its pid."""
    import os
    import time
    t = time.time()
    pid = os.getpid()
    first = not any(n.startswith("start-") for n in os.listdir(marker_dir))
    tmp = os.path.join(marker_dir, f".tmp-{pid}")
    with open(tmp, "w") as fh:
        fh.write(repr(t))
    os.rename(tmp, os.path.join(marker_dir, f"start-{pid}"))
    if first:
        time.sleep(sleep_s)
    return pid


# --- measurement helpers --------------------------------------------------------------
class Ops:
    """What one framework offers; None where it has no such operation."""

    def __init__(self, map, submit, sleep_map=None, map_chunked=None, kill=None,
                 kill_na=None, pids=None):
        self.map = map                    # (f, xs) -> list
        self.submit = submit              # (f, xs) -> list, one future per item
        self.sleep_map = sleep_map or map
        self.map_chunked = map_chunked    # (f, xs, chunksize) -> list
        self.kill = kill                  # (task, marker_dir, sleep_s) -> a waiter: (timeout) -> value
        self.kill_na = kill_na            # why the kill test does not apply
        self.pids = pids                  # () -> pids of a batch of tasks (warm-up)


def warm_up(ops: Ops, args) -> None:
    xs = list(range(WARMUP))
    assert ops.map(_inc, xs) == [i + 1 for i in xs]
    assert ops.submit(_inc, xs) == [i + 1 for i in xs]
    ops.sleep_map(_nap, [0.0] * 4)
    if ops.map_chunked:
        ops.map_chunked(_inc, xs, 5)
    if ops.pids:  # until both workers have run a task: a hang is caught by the parent's --timeout
        seen: set = set()
        while len(seen) < N_WORKERS:
            seen.update(ops.pids())


def throughput(run, n: int) -> float:
    xs = range(n)
    t0 = time.perf_counter()
    out = run(_inc, xs)
    dt = time.perf_counter() - t0
    if list(out) != [i + 1 for i in xs]:
        raise AssertionError("wrong results")
    return n / dt


def sleep_run(run, n: int, sleep_ms: float) -> dict:
    s = sleep_ms / 1000
    t0 = time.perf_counter()
    out = run(_nap, [s] * n)
    dt = time.perf_counter() - t0
    if len(list(out)) != n:
        raise AssertionError("wrong number of results")
    ideal = n * s / N_WORKERS
    return {"sleep_s": dt, "sleep_eff": ideal / dt}


def _markers(d: Path) -> dict:
    """{pid: start time} from the start markers in d."""
    out = {}
    for p in d.glob("start-*"):
        try:
            out[int(p.name[6:])] = float(p.read_text())
        except (OSError, ValueError):
            pass  # being renamed in: the next poll reads it
    return out


def _poll(cond, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        time.sleep(0.0005)


def kill_rerun(start) -> dict:
    """SIGKILL the process running a task; seconds until its rerun starts elsewhere."""
    with tempfile.TemporaryDirectory(prefix="bench_farm_kill_") as tmp:
        d = Path(tmp)
        wait = start(_marked_sleeper, str(d), KILL_SLEEP)
        first = _poll(lambda: _markers(d), "start marker", KILL_WAIT)
        (pid, _), = first.items()
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        t_poll = time.monotonic()
        again = _poll(lambda: {p: t for p, t in _markers(d).items() if p != pid},
                      "start marker of the rerun", KILL_WAIT)
        seen_s = time.monotonic() - t_poll
        (pid2, t2), = again.items()
        value = wait(KILL_WAIT)
        if value != pid2:
            raise AssertionError(f"the rerun returned {value!r}, expected its pid {pid2}")
        return {"kill_s": t2 - t_kill, "kill_seen_s": seen_s}


STEPS = ["map", "map_chunked", "submit", "sleep", "kill"]


def measure(ops: Ops, args, res: dict, save) -> dict:
    """Run every step; a step that fails records its error and the rest go on."""
    res["step"] = "warm-up"
    save()
    warm_up(ops, args)
    errors = res.setdefault("errors", {})
    for step in STEPS:
        res["step"] = step
        save()
        try:
            if step == "map":
                res["map_tps"] = throughput(ops.map, args.tasks)
            elif step == "map_chunked" and ops.map_chunked:
                res["chunksize"] = args.chunksize
                res["map_chunked_tps"] = throughput(
                    lambda f, xs: ops.map_chunked(f, xs, args.chunksize), args.tasks)
            elif step == "submit":
                res["submit_tps"] = throughput(ops.submit, args.tasks)
            elif step == "sleep":
                res.update(sleep_run(ops.sleep_map, args.sleep_tasks, args.sleep_ms))
            elif step == "kill":
                if ops.kill is None:
                    res["kill_na"] = ops.kill_na or "n/a"
                else:
                    res.update(kill_rerun(ops.kill))
        except Exception as e:  # report, go on with the next step
            traceback.print_exc()
            errors[step] = f"{type(e).__name__}: {e}"
    res.pop("step")
    return res


# --- one runner per framework: fills res with {"version", measurements...} ---------
def run_cohort(args, res, save):
    import cohort
    res["version"] = cohort.__version__
    cm = cohort.Cluster(n=N_WORKERS)
    rc = cm.__enter__()
    try:
        rc.wait_for_engines(N_WORKERS, timeout=30)
        lv = rc.load_balanced_view()
        ex = rc.executor()

        def submit(f, xs):
            futs = [ex.submit(f, i) for i in xs]
            return [fut.result() for fut in futs]

        def kill(task, d, s):
            ar = lv.apply(task, d, s, retries=1)
            return lambda timeout: ar.get(timeout=timeout)

        ops = Ops(map=lambda f, xs: lv.map(f, xs).get(),
                  map_chunked=lambda f, xs, c: lv.map(f, xs, chunksize=c).get(),
                  submit=submit, kill=kill,
                  pids=lambda: rc[:].apply_sync(_pid))
        return measure(ops, args, res, save)
    finally:
        cm.__exit__(None, None, None)


def run_ipyparallel(args, res, save):
    import ipyparallel as ipp
    res["version"] = ipp.__version__
    cluster = ipp.Cluster(n=N_WORKERS)
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(N_WORKERS, timeout=60)
        lview = rc.load_balanced_view()
        ex = lview.executor

        def submit(f, xs):
            futs = [ex.submit(f, i) for i in xs]
            return [fut.result() for fut in futs]

        def kill(task, d, s):
            with lview.temp_flags(retries=1):
                ar = lview.apply_async(task, d, s)
            return lambda timeout: ar.get(timeout=timeout)

        ops = Ops(map=lambda f, xs: lview.map_sync(f, xs),
                  map_chunked=lambda f, xs, c: lview.map_sync(f, xs, chunksize=c),
                  submit=submit, kill=kill,
                  pids=lambda: rc[:].apply_sync(_pid))
        return measure(ops, args, res, save)
    finally:
        if rc is not None:
            rc.close()
        cluster.stop_cluster_sync()


def run_dask(args, res, save):
    import distributed
    from distributed import Client, LocalCluster
    res["version"] = distributed.__version__
    cluster = LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        client.wait_for_workers(N_WORKERS, timeout=60)

        def submit(f, xs):
            futs = [client.submit(f, i, pure=False) for i in xs]
            return [fut.result() for fut in futs]

        def kill(task, d, s):
            fut = client.submit(task, d, s, retries=1, pure=False)
            return lambda timeout: fut.result(timeout=timeout)

        ops = Ops(map=lambda f, xs: client.gather(client.map(f, xs, pure=False)),
                  submit=submit, kill=kill,
                  pids=lambda: list(client.run(_pid).values()))
        return measure(ops, args, res, save)
    finally:
        client.close()
        cluster.close()


def run_ray(args, res, save):
    import ray
    res["version"] = ray.__version__
    ray.init(num_cpus=N_WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        remotes: dict = {}

        def remote(f):
            if f not in remotes:
                remotes[f] = ray.remote(f)
            return remotes[f]

        def map_(f, xs):
            rf = remote(f)
            return ray.get([rf.remote(i) for i in xs])

        def submit(f, xs):
            rf = remote(f)
            refs = [rf.remote(i) for i in xs]
            return [ray.get(r) for r in refs]

        def kill(task, d, s):
            ref = ray.remote(max_retries=1)(task).remote(d, s)
            return lambda timeout: ray.get(ref, timeout=timeout)

        pid = remote(_pid)
        ops = Ops(map=map_, submit=submit, kill=kill,
                  pids=lambda: ray.get([pid.remote() for _ in range(N_WORKERS)]))
        return measure(ops, args, res, save)
    finally:
        ray.shutdown()


def run_joblib(args, res, save):
    import joblib
    from joblib import Parallel, delayed
    res["version"] = joblib.__version__

    def map_(f, xs):
        return Parallel(n_jobs=N_WORKERS, backend="loky", batch_size="auto")(
            delayed(f)(i) for i in xs)

    def submit(f, xs):
        # Parallel has no submit: use the reusable loky executor its backend runs on
        # (fetched from the backend, as asking loky with other settings would replace it)
        with Parallel(n_jobs=N_WORKERS, backend="loky") as par:
            ex = par._backend._workers
            futs = [ex.submit(f, i) for i in xs]
            return [fut.result() for fut in futs]

    ops = Ops(map=map_, submit=submit, kill_na="n/a (pool breaks)",
              pids=lambda: submit(lambda i: _pid(), range(N_WORKERS)))
    return measure(ops, args, res, save)


def run_processpool(args, res, save):
    from concurrent.futures import ProcessPoolExecutor
    res["version"] = "python " + platform.python_version()
    ex = ProcessPoolExecutor(N_WORKERS)
    try:
        def submit(f, xs):
            futs = [ex.submit(f, i) for i in xs]
            return [fut.result() for fut in futs]

        ops = Ops(map=lambda f, xs: list(ex.map(f, xs)),
                  map_chunked=lambda f, xs, c: list(ex.map(f, xs, chunksize=c)),
                  submit=submit, kill_na="n/a (pool breaks)",
                  pids=lambda: [f.result() for f in [ex.submit(_pid) for _ in range(N_WORKERS)]])
        return measure(ops, args, res, save)
    finally:
        ex.shutdown(wait=True)


def worker_main(args) -> None:
    """Child process: measure one framework, write JSON to args._out (after every step,
    so that what was measured survives a later hang)."""
    name = args._worker
    out = Path(args._out)
    res: dict = {"status": "running"}

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, out)

    try:
        importlib.import_module(FRAMEWORKS[name])
    except ImportError as e:
        res["status"] = "not installed" if name != "cohort" else f"not importable: {e}"
    else:
        try:
            globals()[f"run_{name}"](args, res, save)
            res["status"] = "ok"
        except Exception as e:  # report, don't crash the table
            traceback.print_exc()
            res["status"] = f"error: {type(e).__name__}: {e}"
    save()


# --- parent -----------------------------------------------------------------------
def run_one(name: str, args) -> dict:
    """Run one framework in its own process (see `_procs.run_framework`)."""
    def interpret(res, returncode, logf):
        if res.get("status", "running") == "running":  # it died or hung part-way
            why = died(returncode, args.timeout)
            step = res.pop("step", None)
            res["status"] = why + (f" in step {step}" if step else "")
            if step in STEPS:  # the steps before it were measured: keep them
                res.setdefault("errors", {})[step] = why
                res["partial"] = True
        if res["status"] != "ok" or res.get("errors"):
            tail = logf.read_text(errors="replace")[-3000:]
            print(f"--- {name} log tail ---\n{tail}", file=sys.stderr)
        return res
    worker = ["--tasks", str(args.tasks), "--sleep-tasks", str(args.sleep_tasks),
              "--sleep-ms", str(args.sleep_ms), "--chunksize", str(args.chunksize)]
    return run_framework(__file__, name, worker, args.timeout, SRC, interpret)


def _cell(r: dict, key: str, fmt: str, step: str) -> str:
    if key in r:
        return fmt.format(r[key])
    if step in r.get("errors", {}):
        return "error"
    return "—"


def print_table(results: dict, args) -> None:
    cols = ["map tasks/s", "map chunked/s", "submit tasks/s",
            f"{args.sleep_tasks}×{args.sleep_ms:g} ms s", "efficiency", "kill→rerun s"]
    labels = {n: f"{LABELS[n]} {r.get('version', '')}".strip() for n, r in results.items()}
    rows = {}
    for name, r in results.items():
        if r["status"] != "ok" and not r.get("partial"):
            rows[name] = None
            continue
        kill = _cell(r, "kill_s", "{:.3f}", "kill") if "kill_na" not in r else r["kill_na"]
        rows[name] = [_cell(r, "map_tps", "{:,.0f}", "map"),
                      _cell(r, "map_chunked_tps", "{:,.0f}", "map_chunked"),
                      _cell(r, "submit_tps", "{:,.0f}", "submit"),
                      _cell(r, "sleep_s", "{:.3f}", "sleep"),
                      _cell(r, "sleep_eff", "{:.1%}", "sleep"), kill]
    w0 = max([len("framework")] + [len(s) for s in labels.values()])
    widths = [max([len(c)] + [len(row[i]) for row in rows.values() if row])
              for i, c in enumerate(cols)]
    print("  ".join(["framework".ljust(w0)] + [c.rjust(w) for c, w in zip(cols, widths)]))
    print("  ".join(["-" * w0] + ["-" * w for w in widths]))
    for name, row in rows.items():
        if row is None:
            print(f"{labels[name].ljust(w0)}  {results[name]['status'][:200]}")
        else:
            print("  ".join([labels[name].ljust(w0)] + [c.rjust(w) for c, w in zip(row, widths)]))
    print()
    print(f"{args.tasks:,} trivial tasks for map and submit; map chunked: chunksize "
          f"{args.chunksize} (ipyparallel, ProcessPoolExecutor: their default is 1; cohort: its "
          f"default is automatic); Dask, Ray and joblib have no such option (—).")
    print(f"sleep: {args.sleep_tasks} × time.sleep({args.sleep_ms:g} ms), ideal "
          f"{args.sleep_tasks * args.sleep_ms / 1000 / N_WORKERS:g} s on {N_WORKERS} workers. "
          f"kill→rerun: SIGKILL of the process running the task to its rerun's start.")
    for name, r in results.items():
        for step, err in r.get("errors", {}).items():
            print(f"error: {name} {step}: {err[:300]}")
        if r["status"] != "ok" and r.get("partial"):
            print(f"error: {name}: {r['status']}")
        for cmd in r.get("leftovers_killed", []):
            print(f"note: {name} left a process behind (killed): {cmd}")
    print_targets(results)


def print_targets(results: dict) -> None:
    print("\nTargets (issue):")
    c, j = results.get("cohort", {}), results.get("joblib", {})
    got = {
        "submit": (c.get("submit_tps"), lambda v: v >= 20_000, "{:,.0f}/s"),
        "map": (c.get("map_tps") if j.get("map_tps") else None, lambda v: v >= j["map_tps"],
                "{:,.0f}/s" + (f" vs joblib {j['map_tps']:,.0f}/s" if j.get("map_tps") else "")),
        "sleep": (c.get("sleep_eff"), lambda v: v >= 0.97, "{:.1%}"),
        "kill": (c.get("kill_s"), lambda v: v <= 0.1, "{:.3f} s"),
    }
    for key, text in TARGETS:
        v, ok, fmt = got[key]
        verdict = "not measured" if v is None else \
            f"{'met' if ok(v) else 'NOT met'}: cohort {fmt.format(v)}"
        print(f"  {text:<62} {verdict}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Frameworks: " + ", ".join(FRAMEWORKS))
    ap.add_argument("--only", help="comma-separated frameworks to run (default: all)")
    ap.add_argument("--tasks", type=int, default=10_000,
                    help="trivial tasks for map and for submit (default 10000)")
    ap.add_argument("--chunksize", type=int, default=None,
                    help="for 'map chunked' (default: ceil(tasks / (4 * 2)))")
    ap.add_argument("--sleep-tasks", type=int, default=200, help="sleep tasks (default 200)")
    ap.add_argument("--sleep-ms", type=float, default=10, help="each sleep task's ms (default 10)")
    ap.add_argument("--json", metavar="FILE", help="also save the results as JSON")
    ap.add_argument("--timeout", type=float, default=300, help="per framework, s (default 300)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.chunksize is None:
        args.chunksize = max(1, math.ceil(args.tasks / (4 * N_WORKERS)))
    if args._worker:
        return worker_main(args)
    results = run_selected(ap, args, FRAMEWORKS, run_one)
    print_table(results, args)
    if args.json:
        meta = {"python": platform.python_version(), "cpus": os.cpu_count(),
                "platform": platform.platform(), "tasks": args.tasks,
                "chunksize": args.chunksize, "sleep_tasks": args.sleep_tasks,
                "sleep_ms": args.sleep_ms, "workers": N_WORKERS,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
