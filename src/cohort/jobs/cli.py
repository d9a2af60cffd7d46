"""``cohort job submit|status|cancel|list``: the job API from the shell.

Wire it into a parent parser with `add_job_parser(subparsers)`; every
sub-command sets ``func`` (called with the parsed args, returning the exit
status). ``python -m cohort.jobs.cli ...`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import JobError
from .description import JobDescription, JobState
from .service import Job, JobService

DEFAULT_SERVICE = "local://"

EPILOG = """examples:
  cohort job submit --service slurm:// -N 2 --per-node 4 --walltime 00:30:00 --queue debug ./sim --steps 100
  cohort job submit --wait -- sh -c 'echo hello'        (local://, wait for the end)
  cohort job status 1234 --service slurm://
  cohort job list --service ssh://me@login:22 --json
  cohort job cancel 1234
The service is --service, else $COHORT_JOB_SERVICE, else local://.
"""


def _service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", default=None, metavar="URL",
                   help="local://, ssh://[user@]host[:port], slurm://, sge://, pbs://, "
                        "slurm+ssh://host, sge+ssh://host, pbs+ssh://host "
                        "(default: $COHORT_JOB_SERVICE or local://)")
    p.add_argument("--identity", default=None, metavar="FILE",
                   help="SSH private key for ssh:// and X+ssh:// services")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")
    p.add_argument("--template", default=None, metavar="FILE",
                   help="batch-script template to use instead of the scheduler's")
    p.add_argument("--profile", default=None,
                   help="profile whose job_templates/ and jobs/ folders to use")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="local:// and ssh://: folder of the job records (default: the "
                        "profile's jobs/ here, ~/.cohort/jobs on an ssh host)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_job_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``job`` command (with submit, status, cancel, list) to `subparsers`."""
    help_ = "submit, watch and cancel batch jobs (local, ssh, Slurm, Grid Engine, PBS)"
    jp = subparsers.add_parser("job", help=help_, description=help_, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    jp.set_defaults(func=lambda args: (jp.print_help(), 2)[1])
    sub = jp.add_subparsers(dest="job_command", metavar="SUBCOMMAND")

    sp = sub.add_parser("submit", help="submit a program as a job; prints its id",
                        description="Submit EXECUTABLE [ARG ...] as a job and print its id "
                                    "(options go before the executable).")
    _service_options(sp)
    sp.add_argument("-N", "--nodes", type=int, default=1, help="nodes (1)")
    sp.add_argument("--per-node", type=int, default=1, dest="per_node",
                    help="processes per node (1)")
    sp.add_argument("--gpus-per-process", type=int, default=0, help="GPUs per process (0)")
    sp.add_argument("--walltime", default=None, help="[D-]HH:MM:SS, or seconds")
    sp.add_argument("--queue", default=None, help="queue or partition")
    sp.add_argument("--account", default=None, help="account or project to charge")
    sp.add_argument("--name", default=None, help="job name (default: the executable's name)")
    sp.add_argument("--directory", default=None, help="working directory of the job")
    sp.add_argument("--stdout", default=None, help="file for standard output")
    sp.add_argument("--stderr", default=None, help="file for standard error")
    sp.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="environment variable for the job (repeatable)")
    sp.add_argument("--launcher", default=None,
                    help="command prefix for parallel programs, e.g. 'srun' or 'mpiexec -n 8'")
    sp.add_argument("--option", action="append", default=[], dest="options", metavar="OPT",
                    help="raw scheduler option, e.g. --mem=1G (Slurm) (repeatable)")
    sp.add_argument("--wait", action="store_true",
                    help="wait for the end; exit with the job's exit code")
    sp.add_argument("--timeout", type=float, default=None, help="with --wait: give up after "
                    "this many seconds (exit 124; the job goes on)")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the batch script instead of submitting it")
    sp.add_argument("executable", help="program to run")
    sp.add_argument("arguments", nargs=argparse.REMAINDER, help="its arguments")
    sp.set_defaults(func=cmd_submit)

    sp = sub.add_parser("status", help="state and exit code of jobs",
                        description="Print the state (and exit code) of each job ID.")
    _service_options(sp)
    sp.add_argument("ids", nargs="+", metavar="ID")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("cancel", help="cancel jobs", description="Cancel each job ID.")
    _service_options(sp)
    sp.add_argument("ids", nargs="+", metavar="ID")
    sp.set_defaults(func=cmd_cancel)

    sp = sub.add_parser("list", help="jobs the service knows",
                        description="List the jobs the service knows: your jobs in the "
                                    "scheduler's queue, or every job recorded for local:// "
                                    "and ssh://.")
    _service_options(sp)
    sp.set_defaults(func=cmd_list)
    return jp


def _service(args) -> JobService:
    url = args.service or os.environ.get("COHORT_JOB_SERVICE") or DEFAULT_SERVICE
    extra = {"state_dir": args.state_dir} if args.state_dir else {}
    return JobService(url, template=args.template, profile=args.profile,
                      identity_file=args.identity, ssh_options=args.ssh_option or None, **extra)


def _fail(msg: str) -> int:
    print(f"cohort job: {msg}", file=sys.stderr)
    return 1


def _as_dict(job: Job) -> dict:
    return {"id": job.native_id, "state": job.cached_state.value, "exit_code": job.exit_code,
            "native_state": job.native_state, "message": job.message,
            "service": job.service.url}


def _line(job: Job) -> str:
    code = f" exit_code={job.exit_code}" if job.exit_code is not None else ""
    native = f" ({job.native_state})" if job.native_state else ""
    return f"{job.native_id}\t{job.cached_state.value}{code}{native}"


def cmd_submit(args) -> int:
    env = {}
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep:
            return _fail(f"--env takes K=V, not {kv!r}")
        env[k] = v
    arguments = list(args.arguments)
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    executable = args.executable
    if executable == "--" and arguments:
        executable, arguments = arguments[0], arguments[1:]
    try:
        jd = JobDescription(executable=executable, arguments=arguments, environment=env,
                            directory=args.directory, stdout=args.stdout, stderr=args.stderr,
                            name=args.name, nodes=args.nodes, processes_per_node=args.per_node,
                            gpus_per_process=args.gpus_per_process, walltime=args.walltime,
                            queue=args.queue, account=args.account, launcher=args.launcher,
                            scheduler_options=args.options)
    except ValueError as e:
        return _fail(str(e))
    try:
        with _service(args) as js:
            if args.dry_run:
                print(js.render(jd), end="")
                return 0
            job = js.submit(jd)
            if not args.wait:
                print(json.dumps(_as_dict(job)) if args.json else job.native_id)
                return 0
            if not args.json:
                print(job.native_id, flush=True)
            try:
                job.wait(timeout=args.timeout)
            except TimeoutError as e:
                print(f"cohort job: {e}", file=sys.stderr)
                return 124
            if args.json:
                print(json.dumps(_as_dict(job)))
            else:
                print(_line(job).split("\t", 1)[1])
            if job.cached_state is JobState.COMPLETED:
                return 0
            return job.exit_code if job.exit_code not in (None, 0) else 1
    except (JobError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))


def cmd_status(args) -> int:
    rc = 0
    rows = []
    try:
        with _service(args) as js:
            for nid in args.ids:
                try:
                    job = js.attach(nid)
                except JobError as e:
                    rc = _fail(str(e))
                    continue
                rows.append(job)
    except (JobError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps([_as_dict(j) for j in rows], indent=1))
    else:
        for j in rows:
            print(_line(j))
    return rc


def cmd_cancel(args) -> int:
    rc = 0
    try:
        with _service(args) as js:
            for nid in args.ids:
                try:
                    js.attach(nid).cancel()
                except JobError as e:
                    rc = _fail(str(e))
                    continue
                if not args.json:
                    print(f"{nid}\tcancelled")
            if args.json:
                print(json.dumps({"cancelled": args.ids if rc == 0 else []}))
    except (JobError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    return rc


def cmd_list(args) -> int:
    try:
        with _service(args) as js:
            listed = js.list()
    except (JobError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps([_as_dict(j) for j in listed], indent=1))
    else:
        for j in listed:
            print(_line(j))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cohort.jobs.cli job submit ...`` (or without the leading ``job``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="cohort")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_job_parser(sub)
    if argv[:1] != ["job"]:
        argv = ["job", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
