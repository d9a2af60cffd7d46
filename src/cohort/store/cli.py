"""``cohort store`` and ``cohort catalog``: the object store and its catalog from the shell.

    cohort store put swath.h5 --meta source=MERIS      # prints the new OID
    cohort store get OID -o copy.h5                     # or to standard output
    cohort store ls --long | stat OID | rm OID | fsck --repair
    cohort catalog query --bbox 3,51,9,56 --time 2026-06-01/2026-07-01 --source MERIS
    cohort catalog query --within-km 53.5,8.1,50 --json

Both take ``--store URL`` / ``--catalog URL`` (default ``$COHORT_STORE`` /
``$COHORT_CATALOG``, else the profile's file store and SQLite catalog).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime

from ..errors import CohortError

CHUNK = 8 * 2**20


def _fail(msg: str) -> int:
    print(f"cohort: {msg}", file=sys.stderr)
    return 1


def _kv(items) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)   # numbers, true/false, lists stay typed
        except ValueError:
            out[key] = value
    return out


def _open_store(args):
    from . import open as open_store
    return open_store(args.store or None)


def _progress(total: int | None, desc: str):
    """A tqdm bar on a terminal for transfers over 64 MiB; None otherwise."""
    if not sys.stderr.isatty() or (total is not None and total < 64 * 2**20):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)


def _copy(src, dst, total: int | None, desc: str) -> int:
    bar = _progress(total, desc)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    done = 0
    try:
        while True:
            n = src.readinto(view)
            if not n:
                return done
            dst.write(view[:n])
            done += n
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()


# --- store -----------------------------------------------------------------------
def store_put(args) -> int:
    s = _open_store(args)
    meta = _kv(args.meta)
    if args.file == "-":
        src, total = sys.stdin.buffer, None
    else:
        src, total = open(args.file, "rb"), os.path.getsize(args.file)
        meta.setdefault("filename", os.path.basename(args.file))
    with src, s.create_put_stream(policy=args.policy, meta=meta) as w:
        _copy(src, w, total, "put")
    print(w.oid)
    return 0


def store_get(args) -> int:
    s = _open_store(args)
    info = s.stat(args.oid)
    with s.create_get_stream(args.oid) as r:
        if args.output in (None, "-"):
            _copy(r, sys.stdout.buffer, info.size, "get")
            sys.stdout.buffer.flush()
        else:
            tmp = f"{args.output}.part"
            with open(tmp, "wb") as f:
                _copy(r, f, info.size, "get")
            os.replace(tmp, args.output)   # no half file under the asked name
    return 0


def store_rm(args) -> int:
    s = _open_store(args)
    bad = 0
    for oid in args.oids:
        try:
            s.delete(oid)
        except CohortError as e:
            bad += 1
            print(f"cohort: {oid}: {e}", file=sys.stderr)
    return 1 if bad else 0


def _info_dict(info) -> dict:
    return {"oid": info.oid, "size": info.size, "policy": info.policy, "checksum": info.checksum,
            "created": info.created, "copies": list(info.copies), "meta": info.meta}


def store_ls(args) -> int:
    s = _open_store(args)
    infos = sorted(s.ls(), key=lambda i: i.created)
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=1))
        return 0
    for i in infos:
        if args.long:
            when = datetime.fromtimestamp(i.created).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{i.oid}  {i.size:>14,}  {when}  {i.policy:<10} {json.dumps(i.meta)}")
        else:
            print(i.oid)
    if args.long:
        print(f"{len(infos)} objects, {sum(i.size for i in infos):,} bytes in {s.url}",
              file=sys.stderr)
    return 0


def store_stat(args) -> int:
    info = _open_store(args).stat(args.oid)
    d = _info_dict(info)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        for k, v in d.items():
            print(f"{k:>9}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def store_fsck(args) -> int:
    s = _open_store(args)
    t0 = time.monotonic()
    report = s.fsck(repair=args.repair, verify=not args.quick)
    print(report)
    print(f"({time.monotonic() - t0:.1f} s, store {s.url})", file=sys.stderr)
    if report.ok:
        return 0
    if args.repair and not report.lost:
        return 0 if report.repaired else 1
    if not args.repair:
        print("cohort: problems found; `cohort store fsck --repair` fixes what it can",
              file=sys.stderr)
    return 1


# --- catalog ---------------------------------------------------------------------
def _open_catalog(args):
    from .catalog_core import catalog
    return catalog(args.catalog or os.environ.get("COHORT_CATALOG") or None)


def _region(args):
    given = [x for x in (args.intersects, args.bbox) if x]
    if len(given) > 1:
        raise ValueError("give --intersects or --bbox, not both")
    if args.bbox:
        try:
            w, s, e, n = (float(x) for x in args.bbox.split(","))
        except ValueError:
            raise ValueError(f"--bbox {args.bbox!r}: use WEST,SOUTH,EAST,NORTH in degrees") from None
        return (w, s, e, n)
    if args.intersects and args.intersects.startswith("@"):
        with open(args.intersects[1:]) as f:
            return f.read()
    return args.intersects


def _time(text: str | None):
    if not text:
        return None
    if "/" in text:
        a, _, b = text.partition("/")
        return (a or None, b or None)
    return text


def _orbit(text: str | None):
    if not text:
        return None
    if "-" in text.strip("-"):
        a, _, b = text.partition("-")
        return range(int(a), int(b) + 1)
    return int(text)


def _filters(args) -> dict:
    f = {"time": _time(args.time), "source": args.source, "version": args.version,
         "orbit": _orbit(args.orbit), **_kv(args.where)}
    if args.within_km:
        try:
            lat, lon, km = (float(x) for x in args.within_km.split(","))
        except ValueError:
            raise ValueError(f"--within-km {args.within_km!r}: use LAT,LON,KM") from None
        f["within_km"] = (lat, lon, km)
    return {k: v for k, v in f.items() if v is not None}


def catalog_query(args) -> int:
    cat = _open_catalog(args)
    t0 = time.perf_counter()
    recs = cat.query(_region(args), limit=args.limit, **_filters(args))
    ms = (time.perf_counter() - t0) * 1e3
    if args.json:
        print(json.dumps([_record_dict(r) for r in recs], indent=1))
    else:
        for r in recs:
            when = r.start.isoformat(timespec="seconds") if r.start else "-"
            if r.end and r.end != r.start:
                when += "/" + r.end.isoformat(timespec="seconds")
            print(f"{r.oid}  {when:<41} {r.source or '-':<10} orbit {r.orbit if r.orbit is not None else '-':<6} "
                  f"{r.filename or ''}")
    print(f"{len(recs)} record(s) in {ms:.1f} ms", file=sys.stderr)
    return 0


def _record_dict(r) -> dict:
    d = r.to_dict()
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    d["time"] = [iso(r.start), iso(r.end)] if r.end and r.end != r.start else iso(r.start)
    return d


def catalog_add(args) -> int:
    cat = _open_catalog(args)
    footprint = args.footprint
    if footprint and footprint.startswith("@"):
        with open(footprint[1:]) as f:
            footprint = f.read()
    cat.add(args.oid, filename=args.filename, source=args.source, version=args.version,
            time=_time(args.time), orbit=int(args.orbit) if args.orbit else None,
            footprint=footprint, **_kv(args.extra))
    return 0


def catalog_rm(args) -> int:
    cat = _open_catalog(args)
    missing = [oid for oid in args.oids if not cat.remove(oid)]
    for oid in missing:
        print(f"cohort: no catalog record for {oid}", file=sys.stderr)
    return 1 if missing else 0


def catalog_optimize(args) -> int:
    cat = _open_catalog(args)
    n = len(cat)
    print(f"optimizing {cat.url} ({n} records) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        cat.optimize()
    finally:
        cat.close()
    print(f"done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


# --- parsers ---------------------------------------------------------------------
def _wrap(func):
    def run(args) -> int:
        try:
            return func(args)
        except (CohortError, ValueError, OSError) as e:
            return _fail(str(e))
    return run


def _command_group(sub, name: str, help_: str, examples: list, url_flag: str, url_help: str):
    """A top-level command (`cohort store`, `cohort catalog`) and a function that
    adds its sub-commands, each taking the `url_flag` option."""
    top = sub.add_parser(name, help=help_, description=help_,
                         epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    top.set_defaults(func=lambda a: (top.print_help(), 2)[1])
    subs = top.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")

    def command(cmd_name, func, cmd_help):
        p = subs.add_parser(cmd_name, help=cmd_help, description=cmd_help)
        p.add_argument(url_flag, help=url_help)
        p.set_defaults(func=_wrap(func))
        return p
    return command


def add_store_parsers(sub) -> None:
    """Add ``store`` and ``catalog`` with their sub-commands to `sub`."""
    cmd = _command_group(
        sub, "store", "put, get, list and check objects in the object store",
        ["cohort store put data.h5 --meta source=MERIS", "cohort store get OID -o data.h5",
         "cohort store fsck --repair"],
        "--store", "store URL: file:///folder or s3://bucket/prefix "
                   "(default: $COHORT_STORE, else the profile's file store)")
    p = cmd("put", store_put, "store a file (or - for standard input) as a new object; prints its OID")
    p.add_argument("file")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata (repeatable)")
    p.add_argument("--policy", help="replication policy (default: the store's, 'single')")
    p = cmd("get", store_get, "write an object's bytes to a file or standard output")
    p.add_argument("oid")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p = cmd("rm", store_rm, "delete objects (their OIDs are never handed out again)")
    p.add_argument("oids", nargs="+", metavar="OID")
    p = cmd("ls", store_ls, "list the objects")
    p.add_argument("-l", "--long", action="store_true", help="size, time, policy and metadata")
    p.add_argument("--json", action="store_true")
    p = cmd("stat", store_stat, "an object's size, policy, checksum, copies and metadata")
    p.add_argument("oid")
    p.add_argument("--json", action="store_true")
    p = cmd("fsck", store_fsck, "check every copy of every object; exit 1 if something is wrong")
    p.add_argument("--repair", action="store_true", help="heal copies from good ones, remove orphans")
    p.add_argument("--quick", action="store_true", help="check sizes only, do not read the bytes")

    ccmd = _command_group(
        sub, "catalog", "find objects by where, when and what in the metadata catalog",
        ["cohort catalog query --bbox 3,51,9,56 --time 2026-06-01/2026-07-01",
         "cohort catalog query --within-km 53.5,8.1,50 --source MERIS --json"],
        "--catalog", "catalog URL: sqlite:///file.db or postgresql://... "
                     "(default: $COHORT_CATALOG, else the profile's SQLite catalog)")

    def common(p):
        p.add_argument("--time", help="an instant, or START/END (ISO 8601; either end may be empty)")
        p.add_argument("--source")
        p.add_argument("--version")
        p.add_argument("--orbit", help="N or FIRST-LAST")

    p = ccmd("query", catalog_query, "records matching every filter, ordered by time")
    p.add_argument("--intersects", metavar="WKT|GEOJSON|@FILE", help="region the footprint meets")
    p.add_argument("--bbox", metavar="W,S,E,N", help="a lon/lat box (W > E crosses the antimeridian)")
    p.add_argument("--within-km", metavar="LAT,LON,KM", help="footprints within KM of a point")
    common(p)
    p.add_argument("--where", action="append", metavar="KEY=VALUE", help="extra key equals value")
    p.add_argument("--limit", type=int, help="at most this many records")
    p.add_argument("--json", action="store_true")
    p = ccmd("add", catalog_add, "add (or replace) the record of an object")
    p.add_argument("oid")
    p.add_argument("--footprint", metavar="WKT|GEOJSON|@FILE")
    p.add_argument("--filename")
    common(p)
    p.add_argument("--extra", action="append", metavar="KEY=VALUE", help="more keys (repeatable)")
    p = ccmd("rm", catalog_rm, "remove records")
    p.add_argument("oids", nargs="+", metavar="OID")
    ccmd("optimize", catalog_optimize, "reorganise the catalog for faster queries after many "
         "adds (PostgreSQL: rewrites the table in space-time order, locking it meanwhile)")
