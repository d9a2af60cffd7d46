"""The `cohort` command: start, stop and inspect clusters; run a controller or an engine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from .profile import ConnectionInfo, profile_dir, resolve_connection_file

EPILOG = """examples:
  cohort start -n 4            controller + 4 engines here, in the background
  cohort status                engines, clients, uptime
  cohort stop                  stop what `cohort start` started
  cohort engine --file F       start one engine that joins the cluster of connection file F
  cohort tasks --state failed  recorded tasks that failed (with or without a running cluster)
  cohort tasks --purge-older-than 30d   delete finished task records older than 30 days
  cohort start -n 4 --engines mpi       engines under mpiexec, sharing MPI.COMM_WORLD
  cohort start --engines slurm --nodes 2 --per-node 4 --walltime 00:30:00
  cohort job submit --service slurm:// ./solver case.json   a batch job, no cluster
  cohort dashboard             a live web page of the running cluster (prints its URL)
"""


def _fail(msg: str) -> int:
    print(f"cohort: {msg}", file=sys.stderr)
    return 1


def _setup_logging(level: str, fmt_name: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {fmt_name} %(levelname)s %(name)s: %(message)s")


def _controller_alive(info: ConnectionInfo) -> bool:
    from .procinfo import proc_starttime
    return bool(info.controller_pid) and proc_starttime(info.controller_pid) is not None


# --- commands ------------------------------------------------------------------
def cmd_start(args) -> int:
    from .cluster.local import Cluster
    from .errors import CohortError
    cf = resolve_connection_file(None, args.profile)
    if cf.exists():
        try:
            info = ConnectionInfo.read(cf)
        except Exception:
            info = None
        if info is not None and _controller_alive(info):
            return _fail(f"a cluster is already running in profile {_profile_name(args)} "
                         f"(controller pid {info.controller_pid}, connection file {cf}); "
                         f"`cohort stop` it first, or use --profile NAME for another")
        cf.unlink()  # left by a cluster that died
    t0 = time.monotonic()
    launch = {k: v for k, v in (("hosts", args.hosts), ("nodes", args.nodes),
                                 ("per_node", args.per_node), ("walltime", args.walltime),
                                 ("queue", args.queue), ("account", args.account),
                                 ("service", args.service), ("mpiexec", args.mpiexec))
              if v is not None}
    if args.mpi:
        launch["mpi"] = True
    try:
        if args.store_threshold is not None:
            launch["store_threshold"] = parse_size(args.store_threshold)
        cluster = Cluster(n=args.n, connection_file=cf, detached=True, ip=args.ip, store=args.store,
                          log_level=args.log_level, start_timeout=args.timeout,
                          restart_engines=not args.no_restart, engines=args.engines,
                          controller_args=["--db", args.db] if args.db else (), **launch)
        rc = cluster.start(wait=not args.no_wait)
    except (CohortError, ValueError) as e:  # a batch system's refusal comes verbatim
        return _fail(str(e))
    n = len(rc.ids)
    rc.close()
    print(f"cluster started: controller pid {cluster.controller.pid}, {n} engines "
          f"({time.monotonic() - t0:.2f} s)")
    for g in cluster.groups:
        if g.kind not in ("local",):
            print(f"engines ({g.kind}): {g.n}, {g.state()}")
    print(f"connection file: {cf}")
    print(f"logs: {cluster.log_dir}")
    if args.dashboard:
        from .dashboard import start_background
        try:
            print(f"dashboard: {start_background(cf, port=args.dashboard_port, db=args.db)}")
        except (CohortError, OSError) as e:
            print(f"cohort: the cluster runs, but its dashboard did not start: {e}",
                  file=sys.stderr)
    return 0


def cmd_stop(args) -> int:
    from .cluster.launchers import EngineGroup
    from .cluster.local import alive, stop_processes
    folder = profile_dir(args.profile)
    cf = resolve_connection_file(None, args.profile)
    rec_path = folder / "cluster.json"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
    from .dashboard import stop_background
    if stop_background(cf, timeout=args.timeout):
        print("dashboard stopped")
    info = None
    if cf.exists():
        try:
            info = ConnectionInfo.read(cf)
        except Exception:
            info = None
    running = (info is not None and _controller_alive(info)) or \
        (rec is not None and (alive(rec["controller"]) or any(alive(e) for e in rec["engines"])))
    if not running:
        for p in (cf, rec_path):
            if p.exists():
                p.unlink()
        return _fail(f"no cluster is running in profile {_profile_name(args)}")
    if info is not None and _controller_alive(info):
        try:
            from .client import Client
            with Client(cf, timeout=3, stream_output=False) as rc:
                rc.shutdown(controller=True)
        except Exception as e:
            print(f"cohort: the controller did not answer ({e}); stopping its processes",
                  file=sys.stderr)
    pids = []
    if rec is not None:
        for g in rec.get("groups", ()):
            if g.get("job"):  # cancel the batch jobs `cohort start` submitted
                group = EngineGroup.from_record(g)
                group.stop()
                print(f"cancelled {group.state()}")
        pids = [r["pid"] for r in [rec["controller"], *rec["engines"]] if alive(r)]
    elif info is not None and _controller_alive(info):
        pids = [info.controller_pid]
    stop_processes(pids, timeout=args.timeout)
    for p in (cf, rec_path):
        if p.exists():
            p.unlink()
    if info is not None:
        from .wire import shm
        shm.sweep(info.cluster_id)
    n = rec.get("n", len(rec["engines"])) if rec else 0
    print(f"cluster stopped (profile {_profile_name(args)}"
          + (f", {n} engines started by `cohort start`)" if rec else ")"))
    return 0


def cmd_status(args) -> int:
    cf = resolve_connection_file(args.file, args.profile)
    if not cf.exists():
        return _fail(f"no cluster is running in profile {_profile_name(args)} (no {cf})")
    info = ConnectionInfo.read(cf)
    from .client import Client
    from .errors import CohortError
    try:
        with Client(cf, timeout=args.timeout, stream_output=False) as rc:
            st = rc.status()
    except CohortError as e:
        state = "alive" if _controller_alive(info) else "not running"
        return _fail(f"the controller (pid {info.controller_pid}, {state}) does not answer: {e}")
    from .dashboard import read_record
    dash = read_record(cf)
    if dash is not None:
        st["dashboard_url"] = dash["url"]
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"controller: pid {st['pid']} on {st['host']}, up {_duration(st['uptime'])}, "
          f"{st['clients'] - 1} other client(s), {st['tasks_pending']} task(s) pending")
    print(f"connection file: {cf}")
    engines = st["engines"]
    print(f"engines: {len(engines)}")
    if engines:
        print(f"  {'id':>4}  {'host':<20} {'pid':>8}  {'state':<6} {'queue':>6} {'done':>8}")
        for e in sorted(engines, key=lambda e: e["id"]):
            rank = f"  rank {e['mpi']['rank']}" if e.get("mpi") else ""
            print(f"  {e['id']:>4}  {e['host']:<20} {e['pid']:>8}  {e['state']:<6} "
                  f"{e['queue']:>6} {e['completed']:>8}{rank}")
    _print_groups(profile_dir(args.profile) / "cluster.json")
    if dash is not None:
        print(f"dashboard: {dash['url']}")
    return 0


def _print_groups(rec_path) -> None:
    """How the engines `cohort start` launched are doing (batch jobs: the job's state)."""
    if not rec_path.exists():
        return
    from .cluster.launchers import EngineGroup
    groups = json.loads(rec_path.read_text()).get("groups", ())
    launched = [EngineGroup.from_record(g) for g in groups if g.get("job") or g["kind"] == "mpi"]
    if launched:
        print("launched:")
        for g in launched:
            print(f"  {g.kind:<6} {g.n:>3} engines  {g.state()}")


def parse_size(text: str) -> int:
    """'512M', '2G', '64k', '1000' -> bytes (binary units)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t)
    except ValueError:
        raise ValueError(f"size {text!r}: use bytes or a number with K, M, G or T") from None
    if value < 0:
        raise ValueError(f"size {text!r} must not be negative")
    return int(value * mult)


def _parse_age(text: str) -> float:
    """'90', '90s', '10m', '2h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise SystemExit(f"cohort: error: {text!r} is not a duration (try 90, 10m, 2h, 7d)")


def cmd_tasks(args) -> int:
    from .errors import CohortError
    since = None if args.since is None else time.time() - _parse_age(args.since)
    filters = {"state": args.state, "engine": args.engine, "client": args.client,
               "since": since, "limit": args.limit}
    filters = {k: v for k, v in filters.items() if v is not None}
    purge = {"older_than": None if args.purge_older_than is None
             else _parse_age(args.purge_older_than), "keep_last": args.keep_last}
    purging = any(v is not None for v in purge.values())
    cf = resolve_connection_file(None, args.profile)
    rows = purged = None
    if args.db is None and cf.exists() and _controller_alive(ConnectionInfo.read(cf)):
        from .client import Client
        try:
            with Client(cf, timeout=5, stream_output=False) as rc:
                purged = rc.purge_tasks(**purge) if purging else None
                rows = rc.tasks(**filters)
        except CohortError as e:
            return _fail(str(e))
    else:  # no controller: read the database itself
        from .controller import taskdb
        path = cf.parent / "tasks.db"
        if args.db is None and not path.exists():
            return _fail(f"no task database in profile {_profile_name(args)} ({path}); "
                         f"tasks are recorded once a cluster runs there")
        try:
            with taskdb.open(args.db, path) as db:
                purged = db.purge(**purge) if purging else None
                rows = db.query(**filters)
        except (CohortError, ValueError, ImportError) as e:
            return _fail(str(e))
    if purged is not None:
        print(f"purged {purged} finished task record(s)", file=sys.stderr)
    if args.json:
        for r in rows:
            r.pop("request", None), r.pop("result", None)
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'id':<26} {'kind':<8} {'state':<10} {'engine':>6} {'tries':>5} "
          f"{'submitted':<19} {'seconds':>8}  error")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["submitted"] or 0))
        took = (f"{r['completed'] - r['started']:.3f}" if r.get("completed") and r.get("started")
                else "")
        err = f"{r['ename']}: {(r['evalue'] or '')[:60]}" if r.get("ename") else ""
        eng = "" if r["engine"] is None else r["engine"]
        print(f"{r['id']:<26} {r['kind'] or '':<8} {r['state'] or '':<10} {eng:>6} "
              f"{r['attempts'] or 0:>5} {when:<19} {took:>8}  {err}")
    return 0


def cmd_controller(args) -> int:
    _setup_logging(args.log_level, "controller")
    from .controller.hub import Controller
    cf = resolve_connection_file(args.connection_file, args.profile)
    info = None
    if cf.exists():
        info = ConnectionInfo.read(cf)
        if _controller_alive(info) and info.controller_pid != os.getpid():
            return _fail(f"a controller (pid {info.controller_pid}) already uses {cf}")
        if args.ip and args.ip != info.ip:
            info.moved_to(args.ip)
    if info is None:
        info = ConnectionInfo.new(ip=args.ip or "127.0.0.1")
    ctl = Controller(info, cf, hb_period=args.hb_period, hb_timeout=args.hb_timeout,
                     window=args.window, lb_window=args.lb_window, kill_grace=args.kill_grace,
                     db=args.db)
    try:
        ctl.bind()
    except Exception as e:
        return _fail(f"cannot bind the controller's sockets on {info.ip}: {e}")
    ctl.run()
    return 0


def cmd_engine(args) -> int:
    _setup_logging(args.log_level, "engine")
    if args.n != 1:
        if args.n < 1 or args.mpi:
            return _fail("-n must be at least 1, and cannot be combined with --mpi "
                         "(under MPI, mpiexec -n starts the engines)")
        from .engine.node import run_engines
        argv = ["--controller-timeout", str(args.controller_timeout), "--log-level", args.log_level]
        if args.file:
            argv += ["--file", args.file]
        if args.profile:
            argv += ["--profile", args.profile]
        return run_engines(args.n, argv)
    from .engine.kernel import run_engine
    from .errors import ConnectionFileError
    try:
        return run_engine(resolve_connection_file(args.file, args.profile),
                          controller_timeout=args.controller_timeout, mpi=args.mpi)
    except ConnectionFileError as e:
        return _fail(str(e))


# --- parser --------------------------------------------------------------------
def _profile_name(args) -> str:
    return args.profile or os.environ.get("COHORT_PROFILE") or "default"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cohort", description="Interactive, fault-tolerant parallel "
                                "computing: a controller, engines (live Python namespaces) and clients.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        sp.add_argument("--profile", help="profile name (default: $COHORT_PROFILE or 'default'); "
                        "its folder is $COHORT_HOME/profile_NAME")
        return sp

    sp = add("start", cmd_start, "start a controller and engines on this machine, in the background")
    sp.add_argument("-n", type=int, default=None, help="number of engines (default: one per core)")
    sp.add_argument("--ip", default=None,
                    help="address the controller binds (default 127.0.0.1; 0.0.0.0 for engines on "
                         "other hosts); traffic to a routable address is encrypted (CurveZMQ)")
    sp.add_argument("--timeout", type=float, default=60, help="seconds to wait for the engines (60)")
    sp.add_argument("--no-wait", action="store_true",
                    help="return once the controller runs; engines (a queued batch job's, say) "
                         "join when they start; `cohort status` shows the job's state")
    sp.add_argument("--db", default=None,
                    help="task database URL (default: tasks.db in the profile folder); "
                         "postgresql://user:pw@host:port/db for PostgreSQL")
    sp.add_argument("--no-restart", action="store_true",
                    help="do not replace engines that die (by default the controller starts a "
                         "new one, so the cluster keeps its size)")
    sp.add_argument("--log-level", default="INFO")
    sp.add_argument("--store", help="object store for large results (default: the profile's "
                    "file store; s3://bucket/prefix, file:///path)")
    sp.add_argument("--store-threshold", metavar="SIZE",
                    help="results larger than this go to the store and come back as Refs "
                         "(512M; 0 turns it off)")
    g = sp.add_argument_group("where engines run (see docs/launchers.md)")
    g.add_argument("--engines", default="local", choices=("local", "mpi", "ssh", "slurm", "sge", "pbs"),
                   help="local processes (default); mpi: under mpiexec, sharing MPI.COMM_WORLD; "
                        "ssh: on --hosts; slurm/sge/pbs: a batch job")
    g.add_argument("--hosts", help="ssh: HOST[:ENGINES],... e.g. node1:4,node2:4")
    g.add_argument("--nodes", type=int, help="batch: nodes to ask for (1)")
    g.add_argument("--per-node", type=int, help="batch: engines per node (default: -n / nodes)")
    g.add_argument("--walltime", help="batch: time limit, [D-]HH:MM:SS")
    g.add_argument("--queue", help="batch: partition / queue")
    g.add_argument("--account", help="batch: account to charge")
    g.add_argument("--service", help="batch: job service URL, e.g. slurm+ssh://login-node")
    g.add_argument("--mpiexec", help="mpi: the mpiexec to use (default: mpiexec on PATH)")
    g.add_argument("--mpi", action="store_true",
                   help="batch: start the job's engines with mpiexec, sharing MPI.COMM_WORLD")
    sp.add_argument("--dashboard", action="store_true",
                    help="also serve the live web dashboard (in the background; `cohort stop` "
                         "stops it; `cohort status` shows its URL)")
    sp.add_argument("--dashboard-port", type=int, default=None,
                    help="the dashboard's port (default 8787, or a free one if taken)")

    sp = add("stop", cmd_stop, "stop the cluster started by `cohort start`")
    sp.add_argument("--timeout", type=float, default=5, help="seconds before stragglers are killed (5)")

    sp = add("status", cmd_status, "show the controller, engines (id, host, pid, state, queue) and clients")
    sp.add_argument("--file", help="connection file (default: the profile's)")
    sp.add_argument("--timeout", type=float, default=5, help="seconds to wait for the controller (5)")
    sp.add_argument("--json", action="store_true", help="print the raw status as JSON")

    sp = add("controller", cmd_controller, "run a controller in the foreground")
    sp.add_argument("--connection-file", help="where to write (or reuse) the connection file")
    sp.add_argument("--ip", default=None, help="address to bind (default 127.0.0.1)")
    sp.add_argument("--hb-period", type=float, default=0.5, help="seconds between heartbeats (0.5)")
    sp.add_argument("--hb-timeout", type=float, default=2.5,
                    help="seconds of silence after which an engine is dead (2.5)")
    sp.add_argument("--window", type=int, default=8, help="direct tasks in flight per engine (8)")
    sp.add_argument("--lb-window", type=int, default=2,
                    help="load-balanced tasks in flight per engine (2); more, up to 64, "
                         "for tasks shorter than about 1 ms")
    sp.add_argument("--kill-grace", type=float, default=3.0,
                    help="seconds an engine has to stop a timed-out task before it is killed (3)")
    sp.add_argument("--db", default=os.environ.get("COHORT_DB"),
                    help="task database: a SQLite path or postgresql://user:pw@host:port/db "
                         "(default: $COHORT_DB, else tasks.db beside the connection file)")
    sp.add_argument("--log-level", default="INFO")

    sp = add("tasks", cmd_tasks, "list recorded tasks (newest first), or purge old records")
    sp.add_argument("--state", action="append",
                    help="only these states (queued, running, done, failed, cancelled, aborted); "
                         "repeat for several")
    sp.add_argument("--engine", type=int, help="only tasks that ran on this engine")
    sp.add_argument("--client", help="only tasks of this client session id")
    sp.add_argument("--since", help="only tasks submitted within this long (90, 10m, 2h, 7d)")
    sp.add_argument("--limit", type=int, default=50, help="at most this many rows (50)")
    sp.add_argument("--json", action="store_true", help="print the records as JSON")
    sp.add_argument("--purge-older-than", metavar="AGE",
                    help="first delete finished records completed more than AGE ago (e.g. 7d)")
    sp.add_argument("--keep-last", type=int, metavar="N",
                    help="first delete all but the newest N finished records")
    sp.add_argument("--db", default=None,
                    help="read this task database instead of asking the running controller")

    sp = add("engine", cmd_engine, "run engines in the foreground; they join the cluster of --file")
    sp.add_argument("--file", help="connection file (default: the profile's)")
    sp.add_argument("--controller-timeout", type=float, default=30,
                    help="exit after this many seconds without the controller's heartbeat (30)")
    sp.add_argument("-n", type=int, default=1,
                    help="start this many engines on this host (1); what a batch job runs per node")
    sp.add_argument("--mpi", action="store_true",
                    help="run under mpiexec: engines share MPI.COMM_WORLD and take ids in rank order "
                         "(mpiexec -n 4 cohort engine --mpi --file F)")
    sp.add_argument("--log-level", default="INFO")
    from .dashboard import add_dashboard_parser
    from .jobs.cli import add_job_parser
    from .store.cli import add_store_parsers
    add_job_parser(sub)
    add_store_parsers(sub)
    add_dashboard_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
