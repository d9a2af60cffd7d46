"""Process helpers shared by the bench scripts: find and kill what a framework left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
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


def run_framework(script: str, name: str, worker_args: list, timeout: float, src: Path,
                  interpret) -> dict:
    """Run `script --_worker name` in a child; kill it and all it started if it hangs
    or leaks; return `interpret(result_json_or_{}, returncode, log_path)` plus
    ``wall_s`` and ``leftovers_killed``.

    Every descendant inherits BENCH_TAG, so it is found even after it left the
    child's session (ipyparallel's launchers) or was re-parented when the child died.
    """
    tag = f"{os.getpid()}-{name}-{time.monotonic_ns()}"
    env = dict(os.environ, **{TAG_VAR: tag}, PYTHONUNBUFFERED="1",
               RAY_USAGE_STATS_ENABLED="0")
    if name == "cohort" and (src / "cohort").is_dir():  # measure this checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out, logf = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        cmd = [sys.executable, script, "--_worker", name, "--_out", str(out), *worker_args]
        t0 = time.monotonic()
        with open(logf, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_all(tagged_pids(tag))
                proc.wait()
        raw = json.loads(out.read_text()) if out.exists() else {}
        res = interpret(raw, proc.returncode, logf)
        deadline = time.monotonic() + 10  # daemons (ipyparallel's nannies) exit in a few s
        while (leftovers := tagged_pids(tag)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if leftovers:
            res["leftovers_killed"] = [cmdline(pid) for pid in leftovers]
            kill_all(leftovers)
        res["wall_s"] = time.monotonic() - t0
    return res


def died(returncode: int, timeout: float) -> str:
    return (f"timeout after {timeout:g} s" if returncode == -signal.SIGKILL
            else f"crashed (exit {returncode})")


def run_selected(ap, args, frameworks, run_one) -> dict:
    """Run the frameworks `--only` names (default: all), each in its own child."""
    names = [n.strip().lower() for n in args.only.split(",")] if args.only else list(frameworks)
    unknown = [n for n in names if n not in frameworks]
    if unknown:
        ap.error(f"unknown framework(s) {unknown}; choose from {', '.join(frameworks)}")
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(name, args)
    return results
