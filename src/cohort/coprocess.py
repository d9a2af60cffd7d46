"""Run an external program as a task, with a timeout that kills its whole process tree.

A plain module-level function, so it travels to engines by reference::

    lv = cohort.connect().load_balanced_view()
    res = lv.apply(cohort.coprocess, ["./solver", "-c", "case.json"],
                   timeout=600, cwd="/scratch/run7").get()   # a CoprocessResult

and runs just as well here (this runs as is)::

    from cohort.coprocess import coprocess
    res = coprocess(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\\n", "err\\n")

The program starts in a session of its own. When it runs past `timeout`, or the
waiting thread gets KeyboardInterrupt (an engine's interrupt) or any other exception,
its process group and every process it started -- also those that left the group with
setsid(), found through /proc while it runs and again before each signal -- get
SIGTERM, then SIGKILL `kill_grace` s later. Keep `kill_grace` below the controller's
(3 s) when a task policy has a timeout too. A process that leaves the tree before
/proc shows it to us (a quick double fork) can escape.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import Any

from cohort.errors import CoprocessTimeout

__all__ = ["coprocess", "CoprocessResult", "CoprocessTimeout"]

log = logging.getLogger(__name__)
_HAVE_PROC = os.path.isdir("/proc/self")
_ARG_TYPES = (str, bytes, os.PathLike)


@dataclasses.dataclass(repr=False)
class CoprocessResult:
    """A finished program: like `subprocess.CompletedProcess`, plus `elapsed` (s) and `pid`."""

    args: Any
    returncode: int
    stdout: str | bytes
    stderr: str | bytes
    elapsed: float
    pid: int

    def check_returncode(self) -> None:
        """Raise `subprocess.CalledProcessError` if the program exited non-zero."""
        if self.returncode:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)

    def __repr__(self) -> str:
        return (f"CoprocessResult(args={self.args!r}, returncode={self.returncode}, "
                f"elapsed={self.elapsed:.3f}, pid={self.pid}, "
                f"stdout={_short(self.stdout)}, stderr={_short(self.stderr)})")


def _short(s, n: int = 60) -> str:
    return repr(s) if len(s) <= n else f"{s[:n]!r}...<{len(s)} in all>"


def coprocess(args, *, timeout: float | None = None, cwd=None, env=None, extra_env=None,
              input=None, shell: bool = False, check: bool = False, text: bool = True,
              encoding: str = "utf-8", errors: str = "replace",
              max_output: int = 64 * 1024 * 1024, kill_grace: float = 2.0) -> CoprocessResult:
    """Run `args` to completion and return a `CoprocessResult`.

    `args` is a list of strings (or one string with ``shell=True``). `env` replaces the
    environment; `extra_env` is added on top of it (or of ours). `input` (str or bytes)
    is fed to stdin, which is otherwise /dev/null. stdout and stderr are captured and,
    with `text`, decoded with `encoding`/`errors` (newlines are left as they are); each
    keeps its first `max_output` bytes, the rest is read and dropped, and a note at the
    end says how much. Both must close before it returns: a background process that
    keeps them open counts as still running. Raises `cohort.errors.CoprocessTimeout` after `timeout` s, with
    the whole process tree killed; with `check`, `subprocess.CalledProcessError` on a
    non-zero exit.
    """
    _check_args(args)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"coprocess: timeout must be a positive number of seconds or None, not {timeout!r}")
    if kill_grace < 0 or max_output < 0:
        raise ValueError("coprocess: kill_grace and max_output must not be negative")
    if extra_env:
        env = dict(os.environ if env is None else env)
        env.update({str(k): str(v) for k, v in extra_env.items()})
    if isinstance(input, str):
        input = input.encode(encoding)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                                shell=shell, start_new_session=True)
    except FileNotFoundError as e:
        if isinstance(args, str) and not shell and " " in args.strip():
            raise FileNotFoundError(e.errno, f"{e.strerror}: {args!r} (a string is one program name; "
                                    "pass a list of arguments, or shell=True)", args) from None
        raise
    known: dict[int, bytes] = {}  # every process seen in its tree: pid -> start time
    sinks: list[_Sink] = []
    try:
        sinks = [_Sink(proc.stdout, max_output), _Sink(proc.stderr, max_output)]
        if input is not None:
            threading.Thread(target=_feed, args=(proc.stdin, input), daemon=True,
                             name="coprocess-stdin").start()
        timed_out = _wait(proc, sinks, t0, timeout, known)
    except BaseException as e:
        n = _kill_tree(proc, known, kill_grace)
        log.warning("coprocess: %s while running %s (pid %d); killed its process tree (%d processes)",
                    type(e).__name__, _cmd(args), proc.pid, n)
        raise
    n = _kill_tree(proc, known, kill_grace) if timed_out else 0
    for s in sinks:
        s.thread.join(2.0 if timed_out else None)  # bounded: a pipe may outlive what we could kill
    out, err = (_output(s, text, encoding, errors) for s in sinks)
    elapsed = time.monotonic() - t0
    if timed_out:
        tree = f"{n} processes" if n else "its process group"
        msg = (f"coprocess: `{_cmd(args)}` (pid {proc.pid}) ran past its timeout of {timeout:g} s "
               f"and was killed with its whole process tree ({tree}; SIGTERM, then SIGKILL for "
               f"any left after {kill_grace:g} s). Raise timeout= if it needs longer, or give it less work; "
               "the error's .stdout and .stderr hold what it wrote before.")
        tail = (err if text else err.decode(encoding, errors)).strip()[-500:]
        if tail:
            msg += f"\nlast of its stderr:\n{tail}"
        raise CoprocessTimeout(msg, args=args, stdout=out, stderr=err, timeout=timeout)
    result = CoprocessResult(args, proc.returncode, out, err, elapsed, proc.pid)
    if check:
        result.check_returncode()
    return result


def _check_args(args) -> None:
    if isinstance(args, _ARG_TYPES):
        return
    if not isinstance(args, (list, tuple)):
        raise TypeError("coprocess: args must be a list of strings such as ['./solver', '-c', 'case.json'] "
                        f"(or one string with shell=True), not {type(args).__name__}")
    if not args:
        raise ValueError("coprocess: args is empty; give the program and its arguments")
    for i, a in enumerate(args):
        if not isinstance(a, _ARG_TYPES):
            raise TypeError(f"coprocess: args[{i}] is {type(a).__name__} {a!r}; every argument must be "
                            "a str, bytes or path (convert numbers with str())")


def _cmd(args) -> str:
    if isinstance(args, (list, tuple)):
        return shlex.join(os.fsdecode(a) for a in args)
    return os.fsdecode(args)


class _Sink:
    """Drains one pipe in a thread, keeping the first `limit` bytes."""

    def __init__(self, pipe, limit: int):
        self.buf = bytearray()
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, args=(pipe, limit), daemon=True,
                                       name="coprocess-reader")
        self.thread.start()

    def _run(self, pipe, limit: int) -> None:
        try:
            fd = pipe.fileno()
            while chunk := os.read(fd, 1 << 16):
                room = max(0, limit - len(self.buf))
                if room:
                    self.buf += chunk[:room]
                self.dropped += max(0, len(chunk) - room)
        except OSError:
            pass
        finally:
            pipe.close()


def _feed(pipe, data: bytes) -> None:
    try:
        with pipe:
            pipe.write(data)
    except OSError:  # the program exited or closed its stdin: like communicate(), not an error
        pass


def _output(sink: _Sink, text: bool, encoding: str, errors: str):
    data = bytes(sink.buf)
    note = (f"\n[cohort.coprocess: output truncated: kept the first {len(data)} bytes, "
            f"dropped {sink.dropped} more]\n") if sink.dropped else ""
    return data.decode(encoding, errors) + note if text else data + note.encode()


def _wait(proc, sinks, t0: float, timeout, known) -> bool:
    """Wait for the program and its pipes; True if the timeout ran out first.

    While it runs, its process tree is noted now and then, so that a grandchild whose
    parent has exited (and that was reparented away from the tree) is still known.
    """
    deadline = None if timeout is None else t0 + timeout
    step = 0.02
    while True:
        pending = [s.thread for s in sinks if s.thread.is_alive()]
        if proc.poll() is not None and not pending:
            return False
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return True
        wait = step if left is None else min(step, left)
        if proc.returncode is None:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        else:  # exited, but something it started may still hold a pipe open
            pending[0].join(wait)
        if _HAVE_PROC and (proc.poll() is None or any(s.thread.is_alive() for s in sinks)):
            _tree(proc, known)
        step = min(step * 2, 0.5)


def _tree(proc, known: dict) -> tuple[dict, bool]:
    """The live (not zombie) processes of the tree, and whether its group has any.

    The tree: the program (until reaped), its process group, every process noted
    before (same pid and start time), and all their descendants; noted in `known`.
    """
    pgid = proc.pid
    procs, children = {}, {}  # pid -> (state, ppid, pgid, start time); ppid -> pids
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                st = f.read()
        except OSError:  # gone meanwhile
            continue
        st = st[st.rfind(b")") + 2:].split()
        procs[int(name)] = st = (st[0], int(st[1]), int(st[2]), st[19])
        children.setdefault(st[1], []).append(int(name))
    todo = [p for p, s in known.items() if p in procs and procs[p][3] == s]
    todo += [pgid] if proc.returncode is None and pgid in procs else []
    todo += [p for p, st in procs.items() if st[2] == pgid]
    found = {}
    while todo:
        p = todo.pop()
        if p not in found and p != os.getpid():
            found[p] = procs[p][3]
            todo += children.get(p, ())
    known.update(found)
    live = {p: s for p, s in found.items() if procs[p][0] not in (b"Z", b"X")}
    return live, any(procs[p][2] == pgid for p in live)


def _kill_tree(proc, known: dict, grace: float) -> int:
    """SIGTERM the program's whole tree, SIGKILL what is left after `grace` s; reap it.

    Returns how many processes were signalled. Without /proc, only the group is signalled.
    """
    pgid, hit = proc.pid, set()

    def blast(sig) -> dict:
        live, group = _tree(proc, known) if _HAVE_PROC else ({}, True)
        for pid, kill in [(p, os.kill) for p in live] + [(pgid, os.killpg)] * group:
            try:
                kill(pid, sig)
            except OSError:
                pass
        hit.update(live)
        return live

    blast(signal.SIGTERM)
    try:
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if proc.poll() is not None and (not _HAVE_PROC or not _tree(proc, known)[0]):
                break
            time.sleep(0.05)
    finally:  # also when a second interrupt lands in the grace period
        for _ in range(20):  # again until nothing is left: it may have forked meanwhile
            if not blast(signal.SIGKILL) or not _HAVE_PROC:
                break
            time.sleep(0.01)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            log.error("coprocess: pid %d survived SIGKILL (stuck in the kernel?)", proc.pid)
    return len(hit)


# a load-balanced view passes a task's policy timeout on to it, so it stops
# its own process tree cleanly (see LoadBalancedView._apply)
coprocess.accepts_task_timeout = True
