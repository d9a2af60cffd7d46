"""Catalog benchmark: ingest and query latency at 10^6 satellite swath footprints,
on SQLite (R*Tree + exact spherical tests) and PostgreSQL + PostGIS.

Run from the repository root (PostGIS: ``.ci/services/postgres.sh``)::

    python bench/bench_catalog.py                 # 10^6 footprints, both backends
    python bench/bench_catalog.py --n 100000 --queries 50 --only sqlite

The footprints are 5-minute granules of ten sun-synchronous satellites over a
year (inclination 98.7 deg, 14.3 orbits a day, swaths 600-2400 km wide): long
quads along the ground tracks, some crossing the antimeridian, some over a
pole. A throwaway PostgreSQL server is started like the tests do (tests/pg.py)
and removed afterwards. Query kinds, `--queries` each, random but the same for
both backends:

* region+month: a coastal region (polygon, ~5 x 4 degrees, 12 vertices) and a
  30-day window;
* within_km+month: footprints within 50 km of a random point, 30-day window;
* source+orbit: one satellite, a day's worth of orbit numbers (no geometry);
* region+month+source: the first, for one satellite.

PostGIS runs twice on the same table: "postgis" decides footprints with
``ST_Intersects``/``ST_DWithin`` on the server, "pg-client" with
``exact="client"`` (GIST candidates, decided in numpy like SQLite).

Prints median and 95th percentile milliseconds per query (records returned
as `Record` objects, i.e. end to end), the mean hits, and ingest times.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from cohort import store  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
YEAR = 365 * 86400.0
SATS = ["MERIS", "OLCI-A", "OLCI-B", "MODIS-T", "MODIS-A", "VIIRS-N", "VIIRS-J",
        "SLSTR-A", "SLSTR-B", "AVHRR"]
INC = math.radians(98.7)
PERIOD = 86400.0 / 14.3           # seconds per orbit
GRANULE = 300.0                   # seconds per granule
R_KM = 6371.0088
EARTH_RATE = 2 * math.pi / 86164.0
COASTS = [(4.0, 53.5), (-74.0, 40.0), (139.8, 35.0), (-9.5, 38.5), (151.2, -33.9),
          (-43.2, -22.9), (18.4, -34.0), (-123.2, 49.0), (103.8, 1.3), (-70.0, -33.5),
          (12.5, 55.7), (-5.5, 36.0), (30.0, 31.3), (72.8, 19.0), (-157.9, 21.3),
          (174.8, -41.3), (-179.5, -16.5), (-150.0, 61.2), (20.0, 70.0), (-68.0, -54.8)]


def _dest(lat, lon, bearing, dist):
    """Points `dist` radians from (lat, lon) along `bearing` (numpy, radians)."""
    la2 = np.arcsin(np.sin(lat) * np.cos(dist) + np.cos(lat) * np.sin(dist) * np.cos(bearing))
    lo2 = lon + np.arctan2(np.sin(bearing) * np.sin(dist) * np.cos(lat),
                           np.cos(dist) - np.sin(lat) * np.sin(la2))
    return la2, (lo2 + np.pi) % (2 * np.pi) - np.pi


def swaths(n: int, seed: int = 1, chunk: int = 20000):
    """`n` granule records (dicts for `Catalog.add_many`), in time order per satellite."""
    rng = np.random.default_rng(seed)
    per_sat = -(-n // len(SATS))
    made = 0
    for s, sat in enumerate(SATS):
        node0 = rng.uniform(-np.pi, np.pi)
        half_w = rng.uniform(300, 1200) / R_KM
        for start in range(0, per_sat, chunk):
            k = np.arange(start, min(per_sat, start + chunk))
            if made + len(k) > n:
                k = k[:n - made]
            if len(k) == 0:
                return
            t = k * (YEAR / per_sat) + s * 17.0
            t_end = t + GRANULE
            pts = []
            for tt in (t, t_end):
                u = 2 * np.pi * (tt / PERIOD)
                lat = np.arcsin(np.sin(INC) * np.sin(u))
                lon = node0 + np.arctan2(np.cos(INC) * np.sin(u), np.cos(u)) - EARTH_RATE * tt
                # heading of the ground track (ignoring Earth rotation for the cross-track)
                u2 = u + 1e-4
                lat2 = np.arcsin(np.sin(INC) * np.sin(u2))
                lon2 = node0 + np.arctan2(np.cos(INC) * np.sin(u2), np.cos(u2)) - EARTH_RATE * tt
                y = np.sin(lon2 - lon) * np.cos(lat2)
                x = np.cos(lat) * np.sin(lat2) - np.sin(lat) * np.cos(lat2) * np.cos(lon2 - lon)
                head = np.arctan2(y, x)
                left = _dest(lat, lon, head - np.pi / 2, half_w)
                right = _dest(lat, lon, head + np.pi / 2, half_w)
                pts.append((left, right))
            (l0, r0), (l1, r1) = pts
            corners = [r0, r1, l1, l0]
            lats = np.degrees(np.stack([c[0] for c in corners], 1))
            lons = np.degrees(np.stack([c[1] for c in corners], 1))
            orbit = (t // PERIOD).astype(int)
            for i in range(len(k)):
                ring = ",".join(f"{lons[i, j]:.5f} {lats[i, j]:.5f}" for j in (0, 1, 2, 3, 0))
                st = T0 + timedelta(seconds=float(t[i]))
                yield {"oid": f"{sat}-{int(k[i]):07d}", "filename": f"{sat}_{int(k[i]):07d}.nc",
                       "source": sat, "version": "1.0", "orbit": int(orbit[i]),
                       "time": (st, st + timedelta(seconds=GRANULE)),
                       "footprint": f"POLYGON(({ring}))"}
            made += len(k)


def coastal_region(rng: random.Random) -> str:
    lon, lat = rng.choice(COASTS)
    lon += rng.uniform(-2, 2)
    lat += rng.uniform(-2, 2)
    pts = []
    for j in range(12):
        a = 2 * math.pi * j / 12
        r = rng.uniform(0.7, 1.0)
        pts.append(((lon + 2.5 * r * math.cos(a) + 180) % 360 - 180,
                    max(-89.0, min(89.0, lat + 2.0 * r * math.sin(a)))))
    pts.append(pts[0])
    return "POLYGON((" + ",".join(f"{x:.4f} {y:.4f}" for x, y in pts) + "))"


def make_queries(nq: int, n: int, seed: int = 2) -> dict[str, list[dict]]:
    rng = random.Random(seed)

    def month():
        t = T0 + timedelta(seconds=rng.uniform(0, YEAR - 30 * 86400))
        return (t, t + timedelta(days=30))
    orbits_per_year = int(YEAR / PERIOD)
    return {
        "region+month": [{"intersects": coastal_region(rng), "time": month()}
                         for _ in range(nq)],
        "within_km+month": [{"within_km": (math.degrees(math.asin(rng.uniform(-1, 1))),
                                           rng.uniform(-180, 180), 50.0), "time": month()}
                            for _ in range(nq)],
        "source+orbit": [{"source": rng.choice(SATS),
                          "orbit": range(o, o + 14)} for o in
                         (rng.randrange(orbits_per_year - 14) for _ in range(nq))],
        "region+month+source": [{"intersects": coastal_region(rng), "time": month(),
                                 "source": rng.choice(SATS)} for _ in range(nq)],
    }


def run_queries(cat, queries, answers: dict | None = None
                ) -> dict[str, tuple[float, float, float]]:
    """Median and p95 ms and mean hits per query kind; `answers[kind]` gets
    each query's oids."""
    out = {}
    for kind, qs in queries.items():
        for q in qs[:3]:
            cat.query(**q)   # warm caches
        times, hits, got = [], [], []
        for q in qs:
            t = time.perf_counter()
            res = cat.query(**q)
            times.append((time.perf_counter() - t) * 1000)
            hits.append(len(res))
            got.append([r.oid for r in res])
        times.sort()
        out[kind] = (statistics.median(times), times[int(0.95 * (len(times) - 1))],
                     statistics.mean(hits))
        if answers is not None:
            answers[kind] = got
    return out


def ingest(cat, n: int) -> float:
    t = time.perf_counter()
    cat.add_many(swaths(n), chunk=50000, progress=sys.stderr.isatty())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="footprints (default 10^6)")
    ap.add_argument("--queries", type=int, default=200, help="queries of each kind")
    ap.add_argument("--only", default="sqlite,postgis", help="backends, comma-separated")
    ap.add_argument("--dir", default=None, help="folder for the SQLite file (default: temp)")
    args = ap.parse_args()
    backends = args.only.split(",")
    queries = make_queries(args.queries, args.n)
    results: dict[str, dict] = {}
    ingest_s: dict[str, float] = {}
    answers: dict[str, dict] = {}
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="cohort-bench-cat-"))
    if "sqlite" in backends:
        path = tmp / "catalog.db"
        for f in tmp.glob("catalog.db*"):
            f.unlink()
        with store.catalog(path) as cat:
            ingest_s["sqlite"] = ingest(cat, args.n)
            print(f"sqlite: {len(cat)} footprints ingested in {ingest_s['sqlite']:.1f} s "
                  f"({os.path.getsize(path) / 1e6:.0f} MB)", flush=True)
            results["sqlite"] = run_queries(cat, queries, answers.setdefault("sqlite", {}))
    if "postgis" in backends:
        from pg import PostgresServer
        # a server sized for the data, as a site would run it
        with PostgresServer(settings={"shared_buffers": "1GB", "work_mem": "64MB"}) as server:
            with store.catalog(server.url) as cat:
                ingest_s["postgis"] = ingest(cat, args.n)
                print(f"postgis: {len(cat)} footprints ingested in {ingest_s['postgis']:.1f} s",
                      flush=True)
                results["postgis"] = run_queries(cat, queries,
                                                 answers.setdefault("postgis", {}))
            with store.catalog(server.url, exact="client") as cat:
                results["pg-client"] = run_queries(cat, queries,
                                                   answers.setdefault("pg-client", {}))
                ingest_s["pg-client"] = ingest_s["postgis"]
    print(f"\ncatalog queries at {args.n:,} footprints, {args.queries} queries per kind "
          "(ms per query, end to end); load average now "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    head = f"{'query':<22}" + "".join(f"{b + ' median':>18}{'p95':>8}{'hits':>6}"
                                       for b in results)
    print(head)
    for kind in queries:
        row = f"{kind:<22}"
        for b in results:
            med, p95, hits = results[b][kind]
            row += f"{med:>18.2f}{p95:>8.2f}{hits:>6.0f}"
        print(row)
    print("ingest (s)".ljust(22) + "".join(f"{ingest_s[b]:>18.1f}{'':>14}" for b in results))
    first = next(iter(answers), None)
    for b in answers:
        differ = [kind for kind in queries if answers[b][kind] != answers[first][kind]]
        if differ:
            print(f"DIFFERENT ANSWERS: {b} and {first} for {', '.join(differ)}")
    if len(answers) > 1:
        print("same hits on every backend for every query" if all(
            answers[b] == answers[first] for b in answers) else "backends DISAGREE")


if __name__ == "__main__":
    main()
