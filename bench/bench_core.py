"""Core benchmarks: cohort against ipyparallel, Dask distributed, Ray and ProcessPoolExecutor.

Run from the repository root (peers: ``pip install -r bench/requirements.txt``)::

    python bench/bench_core.py                          # all five frameworks
    python bench/bench_core.py --only cohort,ray --calls 2000 --mb 50 --json out.json

Every framework gets 2 engines/workers on this machine and is measured in its
own subprocess (killed, with everything it started, after ``--timeout``
seconds); the parent prints one table. Per framework:

* start-up: seconds from nothing to 2 engines/workers ready. cohort,
  ipyparallel and Dask: until the client sees 2 registered engines/workers
  (``Cluster.__enter__`` + ``wait_for_engines(2)``, ``start_and_connect_sync`` +
  ``wait_for_engines(2)``, ``LocalCluster`` + ``Client`` + ``wait_for_workers(2)``).
  Ray and ProcessPoolExecutor have no registration step, so: until tasks have
  run in 2 distinct worker processes.
* latency: one trivial remote call (returns the int 1), 50 untimed warm-up
  calls, then ``--calls`` sequential timed calls; median and p99 in microseconds.
  cohort/ipyparallel ``view.apply_sync(f)``, Dask ``client.submit(f).result()``,
  Ray ``ray.get(f.remote())`` (any worker), PPE ``ex.submit(f).result()``.
* round trip: a ``--mb`` MB float64 array pushed to one engine and pulled back;
  MB/s = MB / seconds, best and median of 5 timed repeats after one untimed
  repeat whose result is checked with ``np.array_equal``. cohort/ipyparallel
  ``push({'a': arr}, block=True)`` + ``pull('a', block=True)``; Dask
  ``scatter(arr, workers=[w0], direct=True, hash=False)`` + ``gather(direct=True)``;
  Ray ``ray.get(identity.remote(ray.put(arr)))``; PPE ``submit(identity, arr)``
  (Ray and PPE pick the worker themselves). MB = 10**6 bytes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from _procs import died, run_framework, run_selected

import numpy as np

FRAMEWORKS = {  # name -> module that must be importable
    "cohort": "cohort", "ipyparallel": "ipyparallel", "dask": "distributed",
    "ray": "ray", "processpool": "concurrent.futures",
}
N_WORKERS = 2
WARMUP = 50
REPEATS = 5
SRC = Path(__file__).resolve().parent.parent / "src"


# --- functions shipped to engines/workers ------------------------------------------
def _one():
    return 1


def _identity(x):
    return x


def _pid():
    return os.getpid()


# --- measurement helpers --------------------------------------------------------------
def measure_latency(call, calls: int) -> dict:
    for _ in range(WARMUP):
        assert call() == 1
    ts = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        call()
        ts[i] = time.perf_counter_ns() - t0
    ts /= 1e3
    return {"lat_median_us": float(np.median(ts)), "lat_p99_us": float(np.percentile(ts, 99))}


def measure_roundtrip(roundtrip, mb: int) -> dict:
    arr = np.random.default_rng(0).random(mb * 1_000_000 // 8)
    out = roundtrip(arr)  # untimed: warms up and checks correctness once
    if not np.array_equal(out, arr):
        raise AssertionError("pulled array differs from the pushed one")
    del out
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = roundtrip(arr)
        times.append(time.perf_counter() - t0)
        del out
    mbytes = arr.nbytes / 1e6
    return {"mbps_best": mbytes / min(times), "mbps_median": mbytes / float(np.median(times)),
            "roundtrip_s": times}


def until_two_pids(run_pair) -> None:
    """Run pairs of tasks until 2 distinct worker processes have run one."""
    seen: set = set()
    while len(seen) < N_WORKERS:  # a hang here is caught by the parent's --timeout
        seen.update(run_pair())


# --- one runner per framework: returns {"version", "startup_s", latency..., roundtrip...}
def measure_view(view, args) -> dict:
    """Latency and push/pull round trip on a single-engine view (cohort, ipyparallel)."""
    def roundtrip(a):
        view.push({"a": a}, block=True)
        return view.pull("a", block=True)
    return {**measure_latency(lambda: view.apply_sync(_one), args.calls),
            **measure_roundtrip(roundtrip, args.mb)}


def run_cohort(args) -> dict:
    import cohort
    t0 = time.perf_counter()
    cm = cohort.Cluster(n=N_WORKERS)
    rc = cm.__enter__()
    try:
        rc.wait_for_engines(N_WORKERS, timeout=30)
        startup = time.perf_counter() - t0
        return {"version": cohort.__version__, "startup_s": startup, **measure_view(rc[0], args)}
    finally:
        cm.__exit__(None, None, None)


def run_ipyparallel(args) -> dict:
    import ipyparallel as ipp
    t0 = time.perf_counter()
    cluster = ipp.Cluster(n=N_WORKERS)
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(N_WORKERS, timeout=60)
        startup = time.perf_counter() - t0
        return {"version": ipp.__version__, "startup_s": startup, **measure_view(rc[0], args)}
    finally:
        if rc is not None:
            rc.close()
        cluster.stop_cluster_sync()


def run_dask(args) -> dict:
    import distributed
    from distributed import Client, LocalCluster
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        client.wait_for_workers(N_WORKERS, timeout=60)
        res = {"version": distributed.__version__, "startup_s": time.perf_counter() - t0}
        # note: the Client batches its messages every 10 ms (distributed/client.py), so a
        # sequential submit().result() costs ~10 ms whatever the machine
        res.update(measure_latency(lambda: client.submit(_one, pure=False).result(), args.calls))
        w0 = sorted(client.scheduler_info()["workers"])[0]

        def roundtrip(a):
            fut = client.scatter(a, workers=[w0], direct=True, hash=False)
            out = client.gather(fut, direct=True)
            fut.release()
            return out
        res.update(measure_roundtrip(roundtrip, args.mb))
        return res
    finally:
        client.close()
        cluster.close()


def run_ray(args) -> dict:
    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=N_WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        one, ident, pid = (ray.remote(f) for f in (_one, _identity, _pid))
        until_two_pids(lambda: ray.get([pid.remote() for _ in range(N_WORKERS)]))
        return {"version": ray.__version__, "startup_s": time.perf_counter() - t0,
                **measure_latency(lambda: ray.get(one.remote()), args.calls),
                **measure_roundtrip(lambda a: ray.get(ident.remote(ray.put(a))), args.mb)}
    finally:
        ray.shutdown()


def run_processpool(args) -> dict:
    from concurrent.futures import ProcessPoolExecutor
    t0 = time.perf_counter()
    ex = ProcessPoolExecutor(N_WORKERS)
    try:
        until_two_pids(lambda: [f.result() for f in [ex.submit(_pid) for _ in range(N_WORKERS)]])
        return {"version": "python " + platform.python_version(),
                "startup_s": time.perf_counter() - t0,
                **measure_latency(lambda: ex.submit(_one).result(), args.calls),
                **measure_roundtrip(lambda a: ex.submit(_identity, a).result(), args.mb)}
    finally:
        ex.shutdown(wait=True)


def worker_main(args) -> None:
    """Child process: measure one framework, write JSON to args._out."""
    name = args._worker
    try:
        importlib.import_module(FRAMEWORKS[name])
    except ImportError as e:
        res = {"status": "not installed" if name != "cohort" else f"not importable: {e}"}
    else:
        try:
            res = {"status": "ok", **globals()[f"run_{name}"](args)}
        except Exception as e:  # report, don't crash the table
            traceback.print_exc()
            res = {"status": f"error: {type(e).__name__}: {e}"}
    Path(args._out).write_text(json.dumps(res))


# --- parent -----------------------------------------------------------------------
def run_one(name: str, args) -> dict:
    """Run one framework in its own process (see `_procs.run_framework`)."""
    def interpret(res, returncode, logf):
        res = res or {"status": died(returncode, args.timeout)}
        if res["status"] != "ok" and not res["status"].startswith("not "):
            tail = logf.read_text(errors="replace")[-1500:]
            print(f"--- {name} log tail ---\n{tail}", file=sys.stderr)
        return res
    return run_framework(__file__, name, ["--calls", str(args.calls), "--mb", str(args.mb)],
                         args.timeout, SRC, interpret)


def print_table(results: dict, mb: int) -> None:
    cols = ["start-up s", "lat med µs", "lat p99 µs", f"{mb} MB MB/s best", "MB/s median"]
    keys = ["startup_s", "lat_median_us", "lat_p99_us", "mbps_best", "mbps_median"]
    fmts = ["{:.2f}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.0f}"]
    labels = {n: f"{n} {r.get('version', '')}".strip() for n, r in results.items()}
    w0 = max([len("framework")] + [len(s) for s in labels.values()])
    widths = [max(len(c), 10) for c in cols]
    print("  ".join(["framework".ljust(w0)] + [c.rjust(w) for c, w in zip(cols, widths)]))
    print("  ".join(["-" * w0] + ["-" * w for w in widths]))
    for name, r in results.items():
        if r["status"] == "ok":
            cells = [f.format(r[k]).rjust(w) for k, f, w in zip(keys, fmts, widths)]
            print("  ".join([labels[name].ljust(w0)] + cells))
        else:
            print(f"{labels[name].ljust(w0)}  {r['status'][:200]}")
    for name, r in results.items():
        for cmd in r.get("leftovers_killed", []):
            print(f"note: {name} left a process behind (killed): {cmd}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Frameworks: " + ", ".join(FRAMEWORKS))
    ap.add_argument("--only", help="comma-separated frameworks to run (default: all)")
    ap.add_argument("--calls", type=int, default=1000, help="timed latency calls (default 1000)")
    ap.add_argument("--mb", type=int, default=100, help="array size in MB (default 100)")
    ap.add_argument("--json", metavar="FILE", help="also save the results as JSON")
    ap.add_argument("--timeout", type=float, default=300, help="per framework, s (default 300)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker_main(args)
    results = run_selected(ap, args, FRAMEWORKS, run_one)
    print_table(results, args.mb)
    if args.json:
        meta = {"python": platform.python_version(), "cpus": os.cpu_count(),
                "platform": platform.platform(), "calls": args.calls, "mb": args.mb,
                "workers": N_WORKERS, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
