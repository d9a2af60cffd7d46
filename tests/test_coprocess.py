"""cohort.coprocess: external programs with a timeout that kills their whole process tree.

Real processes, no cluster. The tree tests record grandchildren's pids in files and
check afterwards that none of them is alive (gone, or a zombie not yet reaped by init).
"""

from __future__ import annotations

import _thread
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest

from cohort import errors
from cohort.coprocess import CoprocessResult, coprocess

from conftest import wait_until

PY = sys.executable


def _dead(pid: int) -> bool:
    """Gone, or a zombie (killed; init reaps it soon, or never in a bare container)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] in ("Z", "X")
    except OSError:
        return True
    return True


def _read_pids(tmp_path, names):
    return {n: int((tmp_path / n).read_text()) for n in names if (tmp_path / n).exists()}


@pytest.fixture
def reaper(tmp_path):
    """Kill (in teardown) any recorded pid still alive, so a failing test leaves no sleepers."""
    yield
    for f in tmp_path.glob("*.pid"):
        try:
            pid = int(f.read_text())
            if not _dead(pid):
                os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


# A program whose tree sleeps for ever: a grandchild in its group, one that calls
# setsid() to leave the group, and an orphan that calls setsid() and whose parent exits
# at once (reparented to init: only known from watching the tree while it ran).
TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    d = sys.argv[1]
    def spawn(name, setsid=False, then=""):
        code = ("import os, sys, time\\n"
                + ("os.setsid()\\n" if setsid else "")
                + f"open(os.path.join({d!r}, {name!r}) + '.tmp', 'w').write(str(os.getpid()))\\n"
                + f"os.rename(os.path.join({d!r}, {name!r}) + '.tmp', os.path.join({d!r}, {name!r}))\\n"
                + (then or "time.sleep(1000)\\n"))
        return subprocess.Popen([sys.executable, "-c", code])
    spawn("same_group.pid")
    spawn("setsid.pid", setsid=True)
    spawn("middle.pid", then=(
        "import subprocess\\n"
        "code = 'import os, time; os.setsid(); p = os.getpid(); "
        "open(%r, \\"w\\").write(str(p)); os.rename(%r, %r); time.sleep(1000)' % "
        f"({d!r} + '/orphan.tmp', {d!r} + '/orphan.tmp', {d!r} + '/orphan.pid')\\n"
        "subprocess.Popen([sys.executable, '-c', code])\\n"
        "time.sleep(1.5)\\n"))
    open(os.path.join(d, "top.pid"), "w").write(str(os.getpid()))
    print("tree started", flush=True)
    time.sleep(1000)
""")
TREE_PIDS = ("top.pid", "same_group.pid", "setsid.pid", "middle.pid", "orphan.pid")


def _assert_tree_dead(tmp_path):
    pids = _read_pids(tmp_path, TREE_PIDS)
    for name, pid in pids.items():
        wait_until(lambda: _dead(pid), timeout=5, msg=f"{name} (pid {pid}) to die")
    return pids


# -- normal runs ----------------------------------------------------------------------

def test_run_text_and_codes():
    res = coprocess(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert isinstance(res, CoprocessResult)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert res.args == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    assert res.pid > 0 and 0 <= res.elapsed < 30
    assert "returncode=3" in repr(res) and "'out\\n'" in repr(res)
    with pytest.raises(subprocess.CalledProcessError) as ei:
        res.check_returncode()
    assert ei.value.returncode == 3 and ei.value.stderr == "err\n"
    assert coprocess(["true"]).returncode == 0


def test_bytes_mode_input_and_unicode():
    res = coprocess(["cat"], input=b"\x00\xffraw", text=False)
    assert res.stdout == b"\x00\xffraw" and res.stderr == b""
    res = coprocess([PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
                    input="héllo")
    assert res.stdout == "HÉLLO"
    assert coprocess(["cat"]).stdout == ""  # stdin is /dev/null: no hang
    big = "x" * (1 << 20)  # larger than a pipe buffer in both directions
    assert coprocess(["cat"], input=big, timeout=30).stdout == big


def test_check_raises_called_process_error():
    with pytest.raises(subprocess.CalledProcessError) as ei:
        coprocess(["sh", "-c", "echo partial; echo bad >&2; exit 2"], check=True)
    e = ei.value
    assert (e.returncode, e.output, e.stderr) == (2, "partial\n", "bad\n")
    assert coprocess(["sh", "-c", "exit 0"], check=True).returncode == 0


def test_cwd_env_extra_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COPROC_INHERITED", "yes")
    assert coprocess(["pwd"], cwd=tmp_path).stdout.strip() == str(tmp_path.resolve())
    show = [PY, "-c", "import os; print(os.environ.get('A'), os.environ.get('COPROC_INHERITED'))"]
    assert coprocess(show, extra_env={"A": 1}).stdout == "1 yes\n"
    assert coprocess(show, env={"A": "2"}).stdout == "2 None\n"
    assert coprocess(show, env={"A": "2"}, extra_env={"A": "3"}).stdout == "3 None\n"
    assert coprocess("echo $((6 * 7))", shell=True).stdout == "42\n"


def test_bad_input():
    with pytest.raises(FileNotFoundError) as ei:
        coprocess(["./no-such-solver-xyz", "-c", "x"])
    assert "no-such-solver-xyz" in str(ei.value)
    with pytest.raises(FileNotFoundError, match="pass a list"):
        coprocess("./no-such-solver-xyz -c x")
    for bad in (42, None, {"a": 1}, iter(["ls"])):
        with pytest.raises(TypeError, match="list of strings"):
            coprocess(bad)
    with pytest.raises(TypeError, match=r"args\[1\] is int"):
        coprocess(["sleep", 1])
    with pytest.raises(ValueError, match="empty"):
        coprocess([])
    for t in (0, -1):
        with pytest.raises(ValueError, match="timeout"):
            coprocess(["true"], timeout=t)


def test_output_flood_is_truncated_without_hanging():
    flood = [PY, "-c", "import sys\n"
             "sys.stderr.write('E' * 3000)\n"
             "for _ in range(160): sys.stdout.write('abcdefgh' * 8192)\n"]  # 10 MiB
    t0 = time.monotonic()
    res = coprocess(flood, max_output=1000, timeout=60)
    assert time.monotonic() - t0 < 60 and res.returncode == 0
    assert res.stdout.startswith("abcdefgh" * 125)
    assert res.stdout.endswith(f"dropped {10 * 1024 * 1024 - 1000} more]\n")
    assert res.stderr.startswith("E" * 1000) and "truncated" in res.stderr
    assert len(res.stdout) < 1200 and len(res.stderr) < 1200
    raw = coprocess(flood, max_output=16, text=False)
    assert raw.stdout.startswith(b"abcdefgh" * 2 + b"\n[cohort.coprocess: output truncated")


# -- killing the tree -----------------------------------------------------------------

def test_timeout_kills_whole_tree(tmp_path, reaper):
    t0 = time.monotonic()
    with pytest.raises(errors.CoprocessTimeout) as ei:
        coprocess([PY, "-c", TREE, str(tmp_path)], timeout=3, kill_grace=1)
    assert time.monotonic() - t0 < 30
    e = ei.value
    assert isinstance(e, errors.TaskTimeout) and isinstance(e, TimeoutError)
    assert e.timeout == 3 and e.cmd[0] == PY and e.stdout == "tree started\n"
    assert "timeout of 3 s" in str(e) and "timeout=" in str(e)
    pids = _assert_tree_dead(tmp_path)
    assert set(pids) == set(TREE_PIDS), f"not every process of the tree started: {pids}"


def test_sleep_1000_killed_quickly_and_background_pipe_holder(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(errors.CoprocessTimeout):
        coprocess(["sleep", "1000"], timeout=0.5)
    # the program exits at once but a background child keeps stdout open
    with pytest.raises(errors.CoprocessTimeout) as ei:
        coprocess(["sh", "-c", f"sleep 1000 & echo $! > {tmp_path}/bg.pid; echo started"], timeout=1)
    assert time.monotonic() - t0 < 30
    assert ei.value.stdout == "started\n"
    pid = int((tmp_path / "bg.pid").read_text())
    wait_until(lambda: _dead(pid), timeout=5, msg="the background sleep to die")


def test_sigterm_ignored_gets_sigkill(tmp_path):
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"open({str(tmp_path / 'stubborn.pid')!r}, 'w').write(str(os.getpid()))\n"
            "print('ignoring', file=sys.stderr, flush=True)\n"
            "time.sleep(1000)\n")
    t0 = time.monotonic()
    with pytest.raises(errors.CoprocessTimeout) as ei:
        coprocess([PY, "-c", code], timeout=1, kill_grace=0.5)
    took = time.monotonic() - t0
    assert 1.4 <= took < 30  # it only died of the SIGKILL, after the grace period
    assert ei.value.stderr == "ignoring\n" and "ignoring" in str(ei.value)
    pid = int((tmp_path / "stubborn.pid").read_text())
    wait_until(lambda: _dead(pid), timeout=5, msg="the stubborn process to die")


@pytest.mark.parametrize("how", ["pthread_kill", "interrupt_main"])
def test_keyboard_interrupt_kills_tree(tmp_path, reaper, how):
    assert threading.current_thread() is threading.main_thread()
    main = threading.get_ident()

    def interrupter():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_read_pids(tmp_path, TREE_PIDS)) < len(TREE_PIDS):
            time.sleep(0.05)
        if how == "pthread_kill":  # like the engine's interrupt
            signal.pthread_kill(main, signal.SIGINT)
        else:
            _thread.interrupt_main()

    threading.Thread(target=interrupter, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        coprocess([PY, "-c", TREE, str(tmp_path)], timeout=60, kill_grace=1)
    assert time.monotonic() - t0 < 30
    pids = _assert_tree_dead(tmp_path)
    assert set(pids) == set(TREE_PIDS)


# -- pickling -------------------------------------------------------------------------

def test_pickle_round_trips():
    res = coprocess(["echo", "hi"])
    back = pickle.loads(pickle.dumps(res))
    assert back == res and repr(back) == repr(res)
    e = errors.CoprocessTimeout("ran too long", args=["x", "y"], stdout="o", stderr=b"e", timeout=5)
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.cmd, back.stdout, back.stderr, back.timeout) == (
        "ran too long", ["x", "y"], "o", b"e", 5)
    assert isinstance(back, errors.TaskTimeout)
    # shipped to engines by reference, not by value
    blob = cloudpickle.dumps(coprocess)
    assert b"cohort.coprocess" in blob and len(blob) < 200
    assert cloudpickle.loads(blob) is coprocess
