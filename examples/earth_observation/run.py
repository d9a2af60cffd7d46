"""Earth observation on cohort: from swath files to per-region statistics.

    python examples/earth_observation/run.py                 # its own 2-engine cluster
    python examples/earth_observation/run.py --connect       # a cluster started with `cohort start`

1. generate synthetic satellite granules (gzip-compressed HDF5), in parallel on the engines;
2. ingest them: each file streamed into the object store, its footprint, time
   and orbit (read from the file itself) added to the catalog;
3. query the catalog for the granules over a coastal region in one month;
4. process those granules in parallel on the engines: each task streams its
   object from the store, decompresses it on the fly, computes statistics of
   the region's pixels, and writes a result object back to the store and the catalog;
5. print a summary.

Everything lands in a fresh folder (default: examples/earth_observation in the
profile folder, emptied on each run); see README.md.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cloudpickle

import cohort
from cohort import store

import generate
import process

# The engines cannot import this folder's modules: ship their functions by value.
cloudpickle.register_pickle_by_value(generate)
cloudpickle.register_pickle_by_value(process)

L1_SOURCE = "SYN1_L1C"
#: The German Bight and the Wadden Sea, from Den Helder to the Danish border (lon lat).
WADDEN_SEA = ("German Bight / Wadden Sea",
              "POLYGON((4.6 52.9, 6.9 53.3, 8.6 53.4, 9.0 54.0, 8.7 55.4, 8.0 55.6, "
              "6.5 54.6, 4.6 53.7, 4.6 52.9))")
#: A thin strip along longitude 180 (its edges are meridians, i.e. great circles).
ANTIMERIDIAN = "POLYGON((179.99 -89, -179.99 -89, -179.99 89, 179.99 89, 179.99 -89))"
MARKER = ".cohort-eo-example"   # marks a work folder this script may empty


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n-files", type=int, default=120,
                    help="granules to generate (half of them pass over the region)")
    ap.add_argument("--engines", type=int, default=2, help="engines of the local cluster")
    ap.add_argument("--connect", nargs="?", const="", metavar="CONNECTION_FILE",
                    help="use a running cluster (default: the profile's) instead of "
                         "starting one; engines must see --workdir and the store")
    ap.add_argument("--workdir", help="folder for the granule files (and the default store "
                    "and catalog); default: examples/earth_observation in the profile "
                    "folder. Emptied first if an earlier run made it")
    ap.add_argument("--store", help="object store URL (file:///... or s3://...); "
                    "default: WORKDIR/store")
    ap.add_argument("--catalog", help="catalog URL (sqlite:///... or postgresql://...); "
                    "default: WORKDIR/catalog.db")
    ap.add_argument("--month", default="2025-06", help="YYYY-MM to look at")
    ap.add_argument("--region", default=WADDEN_SEA[1],
                    help="region to look at: WKT or GeoJSON polygon (lon/lat)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    args = ap.parse_args(argv)
    args.region_name = WADDEN_SEA[0] if args.region == WADDEN_SEA[1] else "region"
    return args


def month_range(month: str) -> tuple[datetime, datetime]:
    """The first and last microsecond of a YYYY-MM month, UTC."""
    t0 = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    t1 = t0.replace(year=t0.year + t0.month // 12, month=t0.month % 12 + 1)
    return t0, t1 - timedelta(microseconds=1)


def fresh_workdir(path: str | None) -> Path:
    """The work folder, emptied if an earlier run of this script made it."""
    if path is None:
        from cohort.profile import profile_dir
        work = profile_dir() / "examples" / "earth_observation"
    else:
        work = Path(path).expanduser().resolve()
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            sys.exit(f"{work} is not empty and was not made by this example: "
                     "choose another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by examples/earth_observation/run.py; emptied on rerun\n")
    return work


def say(step: str, text: str) -> None:
    print(f"{step:>2} {text}", flush=True)


def harvest(path: Path) -> dict:
    """Catalog fields from a granule file's own attributes (h5py reads them
    through the gzip stream, decompressing only the start of the file)."""
    import h5py
    with gzip.open(path, "rb") as z, h5py.File(z, "r") as f:
        a = dict(f.attrs)
    return {"filename": path.name, "source": L1_SOURCE, "version": "1.0",
            "time": (a["start_time"], a["end_time"]), "orbit": int(a["orbit"]),
            "footprint": a["footprint"], "platform": a["platform"],
            "kind": a["granule_kind"]}


def ingest(paths: list[Path], s, cat) -> list[dict]:
    """Stream each file into the store and catalog it; returns the catalog records."""
    records, nbytes, t = [], 0, time.perf_counter()
    for i, path in enumerate(paths, 1):
        rec = harvest(path)
        meta = {"filename": path.name, "content_type": "application/x-hdf5",
                "content_encoding": "gzip", "orbit": rec["orbit"],
                "start_time": rec["time"][0], "end_time": rec["time"][1]}
        with open(path, "rb") as f, s.create_put_stream(meta=meta) as w:
            shutil.copyfileobj(f, w, 1 << 20)     # larger than memory would be fine too
        nbytes += path.stat().st_size
        records.append({"oid": w.oid, **rec})
        if i % max(1, len(paths) // 5) == 0 or i == len(paths):
            say("", f"   ingested {i:4d}/{len(paths)} files, {nbytes / 1e6:6.1f} MB "
                    f"({time.perf_counter() - t:.1f} s)")
    cat.add_many(records)                           # one transaction per 20,000 records
    return records


def table(rows: list[dict]) -> str:
    def pct(v):
        return "   -" if v is None else f"{100 * v:3.0f}%"

    def num(v):
        return "    -" if v is None else f"{v:.3f}"

    lines = ["start (UTC)       orbit   pixels  cloud  water  NIR land  green water  result oid",
             "----------------  ------  ------  -----  -----  --------  -----------  " + "-" * 32]
    for r in sorted(rows, key=lambda r: r["start_time"]):
        lines.append(f"{r['start_time'][:16].replace('T', ' ')}  {r['orbit']:6d}  "
                     f"{r['n_pixels']:6d}  {pct(r['cloud_fraction']):>5}  "
                     f"{pct(r['water_fraction']):>5}  {num(r['nir_land_mean']):>8}  "
                     f"{num(r['green_water_mean']):>11}  {r['result_oid']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, rc, work: Path) -> int:
    s = store.open(args.store or str(work / "store"))
    cat = store.catalog(args.catalog or str(work / "catalog.db"))
    lv = rc.load_balanced_view()
    say("", f"{len(rc.ids)} engines; store {s.url}; catalog {cat.url}")
    timings = {}

    # 1. generate the archive: one task per file
    t = time.perf_counter()
    granules = generate.plan(args.n_files, seed=args.seed)
    out = work / "granules"
    out.mkdir()
    made = lv.map(generate.write_granule, granules, [str(out)] * len(granules),
                  progress=False, block=True)
    paths = sorted(Path(p) for p, _ in made)
    timings["generate"] = time.perf_counter() - t
    say("1.", f"generated {len(paths)} granules, {sum(n for _, n in made) / 1e6:.1f} MB "
              f"of gzip-compressed HDF5, in {out}")

    # 2. ingest: store + catalog
    t = time.perf_counter()
    say("2.", "ingest into the store and the catalog:")
    ingest(paths, s, cat)
    timings["ingest"] = time.perf_counter() - t

    # 3. query: where and when
    t = time.perf_counter()
    t0, t1 = month_range(args.month)
    in_month = cat.count(time=(t0, t1), source=L1_SOURCE)
    hits = cat.query(intersects=args.region, time=(t0, t1), source=L1_SOURCE)
    timings["query"] = time.perf_counter() - t
    say("3.", f"{args.region_name}, {args.month}: {len(hits)} of the {in_month} granules of "
              f"the month ({cat.count(source=L1_SOURCE)} in the catalog) intersect the region")
    for h in hits:
        say("", f"   {h.filename}  orbit {h.orbit}")
    polar = sum(cat.count(within_km=(lat, 0.0, 1000), source=L1_SOURCE) for lat in (90, -90))
    dateline = cat.count(intersects=ANTIMERIDIAN, source=L1_SOURCE)
    say("", f"   (footprints live on the sphere: over the year, {polar} granules come within "
            f"1,000 km of a pole and {dateline} cross the antimeridian)")
    if not hits:
        say("", "nothing to process: try more --n-files or another --month")
        return 0

    # 4. process the hits in parallel: stream, decompress, compute, write back
    t = time.perf_counter()
    say("4.", f"processing {len(hits)} granules on the engines:")
    # the catalog URL as given: `cat.url` hides a PostgreSQL password
    task = functools.partial(process.process_granule, store_url=s.url,
                             catalog_url=args.catalog or cat.url,
                             region_wkt=args.region, region_name=args.region_name)
    results = []
    for r in lv.map(task, [h.oid for h in hits], chunksize=1, ordered=False, progress=False):
        results.append(r)
        say("", f"   {r['filename']}: {r['compressed_mb']:.2f} MB streamed -> "
                f"{r['hdf5_mb']:.2f} MB HDF5, {r['seconds']:.2f} s on {r['engine']}")
    timings["process"] = time.perf_counter() - t

    # 5. summary
    say("5.", f"statistics of {args.region_name} per granule, {args.month} "
              f"(cloud: both bands > {process.CLOUD_THRESHOLD}; water: NDWI > 0 of clear pixels)")
    print(table(results))
    stored = cat.count(source=process.L2_SOURCE, time=(t0, t1), intersects=args.region)
    print(f"\n{len(results)} result objects written to {s.url} and cataloged as "
          f"source={process.L2_SOURCE!r} ({stored} found in {cat.url}).")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print("\nLook at them again:\n"
          f"    from cohort import store\n"
          f"    cat = store.catalog({cat.url!r})\n"
          f"    s = store.open({s.url!r})\n"
          f"    for rec in cat.query(source={process.L2_SOURCE!r}):\n"
          f"        print(rec.filename, s.stat(rec.oid).meta['cloud_fraction'])")
    cat.close()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import h5py  # noqa: F401  (the engines need it too)
    except ImportError:
        sys.exit("this example needs h5py: pip install h5py")
    work = fresh_workdir(args.workdir)
    if args.connect is not None:
        with cohort.Client(args.connect or None) as rc:
            return run(args, rc, work)
    with cohort.Cluster(n=args.engines) as rc:
        rc.wait_for_engines(args.engines, timeout=60)
        return run(args, rc, work)


if __name__ == "__main__":
    sys.exit(main())
