"""Stand-ins for PBS Pro's qsub, qstat and qdel, for tests (there is no PBS package here).

They accept and report jobs the way the PBS Pro reference guide documents:
``qsub`` reads ``#PBS`` directives from the script (file or stdin) and the
options ``-N -q -l -A -o -e -j -v -V -h``, prints ``<seq>.<server>``, and runs
the script in the background with ``/bin/sh`` in ``$HOME`` with ``PBS_JOBID``,
``PBS_JOBNAME``, ``PBS_O_WORKDIR``, ``PBS_QUEUE`` set, so exit codes are real.
``qstat [-x] [-f] [-F json] [-u user] [ids]`` reports ``job_state`` Q/H/R/E/F
(F only with ``-x``), ``substate`` (10 queued, 20 held, 42 running, 91
terminated, 92 finished, 93 failed) and ``Exit_status`` (256+signal when killed
by a signal). ``qdel`` deletes a queued job and signals a running one.
Unknown queues are rejected with PBS's message ``qsub: Unknown queue``.

Environment: ``FAKE_PBS_HOME`` (state folder, default /tmp/fake-pbs-<uid>),
``FAKE_PBS_SERVER`` (default ``pbsserver``), ``FAKE_PBS_QUEUES`` (comma list,
default ``workq``; the first is the default queue), ``FAKE_PBS_QUEUE_DELAY``
(seconds a job stays queued, default 0.5).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HOME = Path(os.environ.get("FAKE_PBS_HOME") or f"/tmp/fake-pbs-{os.getuid()}")
SERVER = os.environ.get("FAKE_PBS_SERVER", "pbsserver")
QUEUES = [q for q in os.environ.get("FAKE_PBS_QUEUES", "workq").split(",") if q]
DELAY = float(os.environ.get("FAKE_PBS_QUEUE_DELAY", "0.5"))
HOST = socket.gethostname().split(".")[0]


@contextmanager
def locked():
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _path(seq: int) -> Path:
    return HOME / "jobs" / f"{seq}.json"


def load(seq: int) -> dict | None:
    try:
        return json.loads(_path(seq).read_text())
    except (FileNotFoundError, ValueError):
        return None


def save(job: dict) -> None:
    p = _path(job["seq"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, p)


def all_jobs() -> list[dict]:
    d = HOME / "jobs"
    out = []
    for p in sorted(d.glob("*.json"), key=lambda p: int(p.stem)) if d.is_dir() else []:
        j = load(int(p.stem))
        if j:
            out.append(j)
    return out


def seq_of(job_id: str) -> int | None:
    head = job_id.split(".")[0]
    return int(head) if head.isdigit() else None


def fail(msg: str, rc: int) -> "None":
    print(msg, file=sys.stderr)
    sys.exit(rc)


def now() -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y")


# --- qsub ---------------------------------------------------------------------------------

def _directives(script: str) -> list[str]:
    """Arguments from the script's #PBS lines (up to the first command, as PBS does)."""
    args = []
    for line in script.splitlines()[1 if script.startswith("#!") else 0:]:
        s = line.strip()
        if not s:
            continue
        if s.startswith("#PBS"):
            args += shlex.split(s[4:])
        elif s.startswith("#"):
            continue
        else:
            break
    return args


def qsub(argv: list[str]) -> None:
    opts: dict = {"l": [], "v": {}, "V": False, "h": False}
    script_path = None
    i = 0
    cmdline: list[str] = []
    while i < len(argv):
        a = argv[i]
        if a in ("-N", "-q", "-A", "-o", "-e", "-j", "-l", "-v", "-W"):
            cmdline += [a, argv[i + 1]]
            i += 2
        elif a in ("-V", "-h"):
            cmdline.append(a)
            i += 1
        elif a.startswith("-"):
            fail(f"qsub: invalid option -- '{a.lstrip('-')}'\nusage: qsub [-N name] [-q queue] ... [script]", 2)
        else:
            script_path = a
            i += 1
    if script_path:
        try:
            script = Path(script_path).read_text()
        except OSError as e:
            fail(f"qsub: could not open script file {script_path}: {e.strerror}", 2)
    else:
        script = sys.stdin.read()
    # directives first, the command line overrides them
    args = _directives(script) + cmdline
    k = 0
    while k < len(args):
        a = args[k]
        if a in ("-V", "-h"):
            opts[a[1]] = True
            k += 1
            continue
        v = args[k + 1] if k + 1 < len(args) else ""
        k += 2
        if a == "-l":
            opts["l"] += v.split(",") if not v.startswith("select=") else [v]
        elif a == "-v":
            for kv in v.split(","):
                name, _, val = kv.partition("=")
                opts["v"][name] = val
        else:
            opts[a[1]] = v
    queue = opts.get("q") or QUEUES[0]
    if queue not in QUEUES:
        fail("qsub: Unknown queue", 170)
    resources = {}
    for r in opts["l"]:
        name, _, val = r.partition("=")
        if name == "walltime" and not all(p.isdigit() for p in val.split(":")):
            fail("qsub: Illegal attribute or resource value Resource_List.walltime", 188)
        resources[name] = val
    workdir = os.getcwd()
    with locked():
        counter = HOME / "seq"
        seq = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(seq))
        jid = f"{seq}.{SERVER}"
        name = opts.get("N") or (Path(script_path).name if script_path else "STDIN")
        user = getpass.getuser()
        spath = HOME / "scripts" / f"{seq}.sh"
        spath.parent.mkdir(parents=True, exist_ok=True)
        spath.write_text(script)
        out = opts.get("o") or f"{workdir}/{name}.o{seq}"
        err = opts.get("e") or f"{workdir}/{name}.e{seq}"
        env = {"PBS_O_WORKDIR": workdir, "PBS_O_HOME": os.environ.get("HOME", "/"),
               "PBS_O_QUEUE": queue, "PBS_O_HOST": HOST}
        if opts["V"]:
            env.update({k: v for k, v in os.environ.items() if k.isidentifier()})
        env.update(opts["v"])
        job = {"seq": seq, "id": jid, "Job_Name": name, "Job_Owner": f"{user}@{HOST}",
               "job_state": "H" if opts["h"] else "Q", "substate": 20 if opts["h"] else 10,
               "queue": queue, "server": SERVER, "ctime": now(), "qtime": now(),
               "Output_Path": f"{HOST}:{out}", "Error_Path": f"{HOST}:{err}",
               "Join_Path": opts.get("j", "n"), "Resource_List": resources,
               "Account_Name": opts.get("A"), "Variable_List": env, "script": str(spath)}
        save(job)
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "--run", str(seq)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    print(jid)


def run(seq: int) -> None:
    """The execution side: wait in the queue, run the script, record the end."""
    time.sleep(DELAY)
    while True:
        with locked():
            job = load(seq)
            if job is None or job["job_state"] == "F":
                return                      # deleted while queued
            if job["job_state"] == "Q":
                job.update(job_state="R", substate=42, stime=now(), exec_host=f"{HOST}/0")
                save(job)
                break
        time.sleep(0.2)                     # held
    out = job["Output_Path"].split(":", 1)[1]
    err = job["Error_Path"].split(":", 1)[1]
    env = dict(os.environ)
    env.update(job["Variable_List"])
    env.update(PBS_JOBID=job["id"], PBS_JOBNAME=job["Job_Name"], PBS_QUEUE=job["queue"],
               PBS_ENVIRONMENT="PBS_BATCH")
    home = os.environ.get("HOME", "/")
    try:
        fo = open(out, "w")
        fe = fo if job["Join_Path"] == "oe" else open(err, "w")
        p = subprocess.Popen(["/bin/sh", job["script"]], cwd=home, env=env, stdin=subprocess.DEVNULL,
                             stdout=fo, stderr=fe, start_new_session=True)
    except OSError as e:
        with locked():
            job = load(seq)
            job.update(job_state="F", substate=93, Exit_status=-1, comment=f"could not start: {e}")
            save(job)
        return
    with locked():
        job = load(seq)
        job["session_id"] = p.pid
        save(job)
    rc = p.wait()
    status = 256 - rc if rc < 0 else rc      # killed by signal N: 256+N, as PBS Pro reports
    with locked():
        job = load(seq)
        job.update(job_state="E", substate=51)
        save(job)
    time.sleep(0.1)
    with locked():
        job = load(seq)
        deleted = job.get("deleted", False)
        job.update(job_state="F", substate=91 if deleted else (92 if status == 0 else 93),
                   Exit_status=status, mtime=now())
        save(job)


# --- qstat --------------------------------------------------------------------------------

_HIDDEN = ("seq", "id", "script", "deleted")


def _attrs(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in _HIDDEN and v is not None}


def _text_full(job: dict) -> str:
    lines = [f"Job Id: {job['id']}"]
    for k, v in _attrs(job).items():
        if isinstance(v, dict):
            if k == "Variable_List":
                lines.append(f"    {k} = " + ",".join(f"{a}={b}" for a, b in v.items()))
            else:
                lines += [f"    {k}.{a} = {b}" for a, b in v.items()]
        else:
            lines.append(f"    {k} = {v}")
    return "\n".join(lines) + "\n"


def qstat(argv: list[str]) -> None:
    history = full = as_json = False
    user = None
    ids = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-F":
            if argv[i + 1] != "json":
                fail(f"qstat: unsupported format {argv[i + 1]}", 2)
            as_json = True
            i += 2
            continue
        if a == "-u":
            user = argv[i + 1]
            i += 2
            continue
        if a.startswith("-"):
            for c in a[1:]:
                if c == "x":
                    history = True
                elif c == "f":
                    full = True
                elif c not in "HwtJ":
                    fail(f"qstat: invalid option -- '{c}'", 2)
        else:
            ids.append(a)
        i += 1
    rc = 0
    jobs = []
    if ids:
        for jid in ids:
            s = seq_of(jid)
            job = load(s) if s is not None else None
            if job is None:
                print(f"qstat: Unknown Job Id {jid}", file=sys.stderr)
                rc = 153
            elif job["job_state"] == "F" and not history:
                print(f"qstat: {job['id']} Job has finished, use -x or -H to obtain "
                      f"historical job information", file=sys.stderr)
                rc = 35
            else:
                jobs.append(job)
    else:
        jobs = [j for j in all_jobs() if history or j["job_state"] != "F"]
    if user:
        jobs = [j for j in jobs if j["Job_Owner"].split("@")[0] == user]
    if as_json:
        doc = {"timestamp": int(time.time()), "pbs_version": "2022.1.0-fake",
               "pbs_server": SERVER, "Jobs": {j["id"]: _attrs(j) for j in jobs}}
        print(json.dumps(doc, indent=4))
    elif full:
        print("\n".join(_text_full(j) for j in jobs), end="")
    elif jobs:
        print("Job id            Name             User              Time Use S Queue")
        print("----------------  ---------------- ----------------  -------- - -----")
        for j in jobs:
            print(f"{j['id']:<17.17} {j['Job_Name']:<16.16} {j['Job_Owner'].split('@')[0]:<16.16}"
                  f"  00:00:00 {j['job_state']} {j['queue']}")
    sys.exit(rc)


# --- qdel ---------------------------------------------------------------------------------

def qdel(argv: list[str]) -> None:
    ids = [a for a in argv if not a.startswith("-")]
    if not ids:
        fail("usage: qdel [-W force|suppress_email=X] [-x] job_identifier...", 2)
    rc = 0
    for jid in ids:
        s = seq_of(jid)
        with locked():
            job = load(s) if s is not None else None
            if job is None:
                print(f"qdel: Unknown Job Id {jid}", file=sys.stderr)
                rc = 153
                continue
            if job["job_state"] == "F":
                print(f"qdel: Job has finished {job['id']}", file=sys.stderr)
                rc = 35
                continue
            if job["job_state"] in ("Q", "H"):
                job.update(job_state="F", substate=91, mtime=now())
                save(job)
                continue
            job["deleted"] = True
            save(job)
            pid = job.get("session_id")
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    sys.exit(rc)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        run(int(sys.argv[2]))
