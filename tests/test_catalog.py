"""The metadata catalog (cohort.store.catalog_core): one suite run against SQLite and
against a real PostgreSQL + PostGIS server (tests/pg.py), plus a test that
loads the same random footprints — antimeridian and polar ones included — into
both and asserts identical answers to many random queries."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from cohort import store
from cohort.errors import CatalogError
from cohort.store.catalog_pg import PostgisCatalog

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SQUARE = "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"
SWATH_AM = "POLYGON((170 -5, -170 -5, -170 5, 170 5, 170 -5))"
NORTH_CAP = "POLYGON((0 80, 90 80, 180 80, -90 80, 0 80))"


# --- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="session")
def postgis_url(pg_server):
    """The session's PostgreSQL server, checked to have PostGIS."""
    from pg import has_postgis
    if not has_postgis(pg_server.bindir):
        pytest.fail("PostGIS is not installed for this PostgreSQL server: run "
                    ".ci/services/postgres.sh (Debian package postgresql-NN-postgis-3), or "
                    "set COHORT_SKIP_POSTGRES=1")
    return pg_server.url


def _fresh_pg(url: str, table: str = "cohort_catalog", exact: str = "postgis"):
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_meta")
    return store.catalog(url, table=table, exact=exact)


@pytest.fixture(params=["sqlite", "postgis", "postgis-client"])
def cat(request, tmp_path):
    """An empty catalog on each backend (PostGIS deciding footprints on the
    server, or in numpy here)."""
    if request.param == "sqlite":
        c = store.catalog(f"sqlite://{tmp_path}/cat.db")
    else:
        c = _fresh_pg(request.getfixturevalue("postgis_url"),
                      exact="client" if request.param == "postgis-client" else "postgis")
    yield c
    c.close()


def oids(records):
    return [r.oid for r in records]


# --- records ------------------------------------------------------------------

def test_add_get_roundtrip(cat):
    cat.add("o1", filename="a.nc", source="MERIS", version="1.0", time=T0, orbit=1234,
            footprint=SWATH_AM, cloud=0.25, tag="x", flags=[1, 2], ok=True)
    r = cat.get("o1")
    assert (r.oid, r.filename, r.source, r.version, r.orbit) == ("o1", "a.nc", "MERIS", "1.0",
                                                                  1234)
    assert r.start == r.end == T0 and r.start.tzinfo is not None and r.time == T0
    assert r.start.utcoffset() == timedelta(0)
    assert r.extra == {"cloud": 0.25, "tag": "x", "flags": [1, 2], "ok": True}
    assert r.footprint == "POLYGON((170.0 -5.0,-170.0 -5.0,-170.0 5.0,170.0 5.0,170.0 -5.0))"
    assert r.geojson["type"] == "Polygon"
    assert cat.get("nope") is None and "o1" in cat and "nope" not in cat
    # naive = UTC, intervals, ISO strings, epoch seconds, microseconds kept
    t1 = T0 + timedelta(minutes=5, microseconds=7)
    cat.add("o2", time=(datetime(2026, 1, 1), t1))
    cat.add("o3", time="2026-01-01T01:00:00+01:00")
    cat.add("o4", time=T0.timestamp() + 0.5)
    assert cat.get("o2").time == (T0, t1)
    assert cat.get("o3").time == T0
    assert cat.get("o4").time == T0 + timedelta(seconds=0.5)
    assert cat.get("o2").to_dict()["time"] == (T0, t1)
    assert len(cat) == 4
    assert cat.get("o1") == cat.get("o1") != cat.get("o2")
    assert repr(cat.get("o4")).startswith("Record(oid='o4', filename=None")
    assert cat.get("o4").extra == {} and cat.get("o4").footprint is None


def test_add_replaces_and_remove(cat):
    cat.add("o1", source="A", footprint=SQUARE, time=T0)
    cat.add("o1", source="B", footprint=SWATH_AM, time=T0)
    assert len(cat) == 1 and cat.get("o1").source == "B"
    assert oids(cat.query(intersects=(171, -1, 172, 1))) == ["o1"]
    assert oids(cat.query(intersects=(4, 4, 5, 5))) == []
    assert cat.remove("o1") is True and cat.remove("o1") is False
    assert len(cat) == 0 and cat.query(intersects=(171, -1, 172, 1)) == []


def test_add_many_dicts_records_and_duplicates(cat):
    recs = [{"oid": f"r{i}", "time": T0 + timedelta(hours=i), "orbit": i,
             "footprint": (i, 0, i + 1, 1), "n": i} for i in range(50)]
    recs.append({"oid": "r0", "source": "last", "time": T0})   # the last of an oid wins
    assert cat.add_many(recs, chunk=16) == 51
    assert len(cat) == 50 and cat.get("r0").source == "last"
    copy = [r for r in cat.query(orbit=range(10, 20))]
    assert oids(copy) == [f"r{i}" for i in range(10, 20)]
    cat.add_many([r for r in copy[:3]] + [{**copy[3].to_dict(), "oid": "new"}])
    assert len(cat) == 51 and cat.get("new").extra == {"n": 13}


def test_add_many_refuses_a_bad_batch_whole(cat):
    recs = [{"oid": f"r{i}", "footprint": (i, 0, i + 1, 1)} for i in range(20)]
    recs.insert(10, {"oid": "bad", "footprint": "POLYGON((0 0, 1 1))"})
    with pytest.raises(CatalogError):
        cat.add_many(recs)
    assert len(cat) == 0
    with pytest.raises(CatalogError):
        cat.add_many([42])


# --- space ----------------------------------------------------------------------

def _three(cat):
    cat.add("square", footprint=SQUARE, time=T0)
    cat.add("swath", footprint=SWATH_AM, time=T0)
    cat.add("cap", footprint=NORTH_CAP, time=T0)
    cat.add("nofp", time=T0)


def test_intersects_across_the_antimeridian(cat):
    _three(cat)
    east = "POLYGON((-175 -1, -172 -1, -172 1, -175 1, -175 -1))"
    assert oids(cat.query(intersects=east)) == ["swath"]
    assert oids(cat.query(intersects=(172, -1, 175, 1))) == ["swath"]
    assert oids(cat.query(intersects=(179, -1, -179, 1))) == ["swath"]      # a box over 180
    assert oids(cat.query(intersects=(-160, -1, -150, 1))) == []
    geo = {"type": "Polygon", "coordinates": [[[178, 4], [182, 4], [182, 20], [178, 20],
                                                [178, 4]]]}
    assert oids(cat.query(intersects=geo)) == ["swath"]


def test_intersects_near_and_over_the_pole(cat):
    _three(cat)
    over = "POLYGON((10 70, 12 70, -171 70, -169 70, 10 70))"   # a thin swath over the pole
    assert oids(cat.query(intersects=over)) == ["cap"]
    tiny = "POLYGON((33 89, 34 89, 34 89.1, 33 89.1, 33 89))"
    assert oids(cat.query(intersects=tiny)) == ["cap"]
    # the cap's edge (90 80)-(180 80) is a great circle: at lon 100 it is at lat 81.35
    assert oids(cat.query(intersects=(100, 82, 110, 83))) == ["cap"]
    assert oids(cat.query(intersects=(100, 80.5, 101, 81))) == []


def test_touching_counts_missing_does_not(cat):
    _three(cat)
    assert oids(cat.query(intersects="POLYGON((10 0, 20 0, 20 10, 10 10, 10 0))")) == \
        ["square"]
    assert oids(cat.query(intersects="POLYGON((10 -10, 20 -10, 10 0, 10 -10))")) == ["square"]
    assert oids(cat.query(intersects="POLYGON((10.001 0, 20 0, 20 10, 10.001 10, 10.001 0))")) \
        == []
    assert oids(cat.query(intersects="POLYGON((4 4, 6 4, 6 6, 4 6, 4 4))")) == ["square"]
    assert oids(cat.query(intersects="POLYGON((-1 -1, 11 -1, 11 11, -1 11, -1 -1))")) == \
        ["square"]


def test_within_km_near_the_pole_and_across_the_dateline(cat):
    _three(cat)
    assert oids(cat.query(within_km=(90, 0, 1))) == ["cap"]
    assert oids(cat.query(within_km=(89.99, -123, 0))) == ["cap"]
    # 10 degrees south of the cap's vertex (0, 80): 1111.95 km on the sphere
    d = math.radians(10) * 6371.0088
    assert oids(cat.query(within_km=(70, 0, d + 0.01))) == ["cap"]
    assert oids(cat.query(within_km=(70, 0, d - 0.01))) == []
    # across 180: from lon -179 lat 0 the swath (inside) and from lon 179 lat 7
    assert oids(cat.query(within_km=(0, -179, 0))) == ["swath"]
    top = math.degrees(math.atan(math.tan(math.radians(5)) / math.cos(math.radians(10))))
    d = math.radians(7 - top) * 6371.0088
    assert oids(cat.query(within_km=(7, 180, d + 0.01))) == ["swath"]
    assert oids(cat.query(within_km=(7, -180, d - 0.01))) == []
    assert cat.count(within_km=(5, 5, 10)) == 1


def test_multipolygons_and_holes(cat):
    cat.add("holed", footprint="POLYGON((0 0, 10 0, 10 10, 0 10, 0 0),(2 2, 8 2, 8 8, 2 8, 2 2))")
    cat.add("multi", footprint="MULTIPOLYGON(((20 0, 21 0, 21 1, 20 1, 20 0)),"
                               "((179 50, -179 50, -179 51, 179 51, 179 50)))")
    assert oids(cat.query(intersects=(4, 4, 6, 6))) == []
    assert oids(cat.query(intersects=(1, 4, 3, 6))) == ["holed"]
    assert oids(cat.query(intersects=(-179.5, 50.2, -179.2, 50.4))) == ["multi"]
    # (5, 5) is in the hole, 3 degrees (~332 km) from its edges
    assert oids(cat.query(within_km=(5, 5, 340))) == ["holed"]
    assert oids(cat.query(within_km=(5, 5, 320))) == []


def test_optimize_keeps_every_record_and_answer(cat):
    for month in (11, 3, 7, 1):  # added out of time order, one by one
        for k in range(5):
            cat.add(f"m{month:02d}-{k}", time=datetime(2026, month, 2 + k, tzinfo=timezone.utc),
                    footprint=(10 * k, 0, 10 * k + 5, 5), source="OLCI", band=k)
    region = "POLYGON((12 1, 33 1, 33 3, 12 3, 12 1))"
    before = [r.to_dict() for r in cat.query(intersects=region)]
    cat.optimize()
    assert len(cat) == 20
    assert [r.to_dict() for r in cat.query(intersects=region)] == before and len(before) == 12
    assert oids(cat.query(time=datetime(2026, 3, 3, tzinfo=timezone.utc))) == ["m03-1"]
    cat.add("later", footprint=(0, 0, 1, 1))  # still writable
    assert cat.get("later") is not None
    if isinstance(cat, PostgisCatalog):  # rows now lie in month order on disk
        stored = [r[0] for r in cat._db().execute(
            "SELECT oid FROM cohort_catalog WHERE oid <> 'later' ORDER BY ctid")]
        assert [o[1:3] for o in stored] == sorted(o[1:3] for o in stored)


def test_gnomonic_faces_and_straight_great_circles():
    """The PostGIS backend decides `intersects` on gnomonic projections: each
    footprint gets the cube face whose hemisphere holds it best, and a
    great-circle arc there projects to the straight segment between its ends."""
    from cohort.store.catalog_pg import _CMIN, _faces, _gnomonic
    from cohort.store.geo import Footprint, to_xyz
    assert _faces(Footprint(SQUARE))[0] == 0                  # +x: lon 0, lat 0
    assert _faces(Footprint(SWATH_AM)) == [3]                 # -x: over the antimeridian
    assert _faces(Footprint(NORTH_CAP)) == [2]                # +z: around the pole
    assert _faces(Footprint("POLYGON((0 -5, 50 -5, 100 -5, 100 5, 50 5, 0 5, 0 -5))")) == []
    multi = Footprint("MULTIPOLYGON(((0 0, 1 0, 1 1, 0 0)),((0 2, 1 2, 1 3, 0 3, 0 2),"
                      "(0.2 2.2, 0.8 2.2, 0.8 2.8, 0.2 2.2)))")
    wkb = bytes.fromhex(_gnomonic(multi, 0))
    assert wkb[:9] == bytes.fromhex("01" "06000000" "02000000")   # a 2-polygon MULTIPOLYGON
    rng = random.Random(5)
    worst = 0.0
    for _ in range(2000):
        a = to_xyz(rng.uniform(-180, 180), math.degrees(math.asin(rng.uniform(-1, 1))))
        b = to_xyz(rng.uniform(-180, 180), math.degrees(math.asin(rng.uniform(-1, 1))))
        w = rng.random()
        m = tuple((1 - w) * p + w * q for p, q in zip(a, b))
        k = max(range(6), key=lambda f: min(v[f % 3] * (1 if f < 3 else -1) for v in (a, b)))
        if min(v[k % 3] * (1 if k < 3 else -1) for v in (a, b)) < _CMIN:
            continue
        i, j = (k % 3 + 1) % 3, (k % 3 + 2) % 3
        (ax, ay), (bx, by), (mx, my) = ((v[i] / v[k % 3], v[j] / v[k % 3]) for v in (a, b, m))
        # m on the arc projects onto the segment: collinear and between the ends
        cross = (bx - ax) * (my - ay) - (by - ay) * (mx - ax)
        worst = max(worst, abs(cross) / math.hypot(bx - ax, by - ay))
        assert min(ax, bx) - 1e-12 <= mx <= max(ax, bx) + 1e-12
    assert worst < 1e-12


# --- time and attributes ------------------------------------------------------

def test_time_filters(cat):
    day = timedelta(days=1)
    cat.add("inst", time=T0 + 5 * day, footprint=SQUARE)
    cat.add("span", time=(T0, T0 + 10 * day), footprint=SQUARE)
    cat.add("late", time=(T0 + 20 * day, T0 + 21 * day), footprint=SQUARE)
    cat.add("never", footprint=SQUARE)
    assert oids(cat.query()) == ["span", "inst", "late", "never"]    # by start, then oid
    assert oids(cat.query(time=T0 + 5 * day)) == ["span", "inst"]
    assert oids(cat.query(time=(T0 + 6 * day, T0 + 20 * day))) == ["span", "late"]
    assert oids(cat.query(time=(T0 + 10 * day, None))) == ["span", "late"]
    assert oids(cat.query(time=(None, T0 - day))) == []
    assert oids(cat.query(time=(T0 + 11 * day, T0 + 19 * day))) == []
    region = (1, 1, 2, 2)
    assert oids(cat.query(intersects=region, time=(T0 + 6 * day, T0 + 20 * day))) == \
        ["span", "late"]
    assert oids(cat.query(intersects=region, time=T0 + 5 * day)) == ["span", "inst"]
    assert cat.count(intersects=region, time=(None, None)) == 3
    assert oids(cat.query(intersects=region, limit=2)) == ["span", "inst"]
    assert oids(cat.query(limit=1)) == ["span"] and cat.query(limit=0) == []


def test_attribute_filters(cat):
    for i in range(10):
        cat.add(f"o{i}", source="MERIS" if i % 2 else "OLCI", version=f"{i % 3}",
                orbit=1200 + 20 * i, time=T0 + timedelta(hours=i), footprint=SQUARE,
                cloud=i / 10, tag="even" if i % 2 == 0 else "odd", ok=bool(i % 2),
                n=i if i < 9 else None)
    assert oids(cat.query(source="MERIS")) == ["o1", "o3", "o5", "o7", "o9"]
    assert oids(cat.query(source=["OLCI", "X"], version="0")) == ["o0", "o6"]
    assert oids(cat.query(orbit=range(1200, 1300))) == ["o0", "o1", "o2", "o3", "o4"]
    assert oids(cat.query(orbit=1220)) == ["o1"]
    assert oids(cat.query(orbit=[1220, 1240, 7])) == ["o1", "o2"]
    assert oids(cat.query(orbit=range(1200, 1300, 40))) == ["o0", "o2", "o4"]
    assert oids(cat.query(cloud=0.3)) == ["o3"]
    assert oids(cat.query(tag="even", source="OLCI")) == oids(cat.query(source="OLCI"))
    assert oids(cat.query(ok=True)) == ["o1", "o3", "o5", "o7", "o9"]
    assert oids(cat.query(n=1)) == ["o1"]                           # 1 is not True
    assert oids(cat.query(n=None)) == ["o9"]
    assert oids(cat.query(n=[2, 4.0])) == ["o2", "o4"]
    assert cat.query(tag="none") == [] and cat.query(source=[]) == []
    assert oids(cat.query(oid=["o2", "o3"])) == ["o2", "o3"]
    assert cat.count(intersects=(1, 1, 2, 2), source="MERIS", orbit=range(1200, 1300)) == 2
    assert oids(cat.query(intersects=(1, 1, 2, 2), tag="odd", limit=2)) == ["o1", "o3"]


@pytest.mark.parametrize("kw", [
    {"footprint": "POLYGON((0 0, 1 1))"}, {"footprint": "POLYGON((0 0, 1 0, 1 91, 0 0))"},
    {"time": "yesterday"}, {"time": (T0, T0 - timedelta(seconds=1))}, {"time": (T0, None)},
    {"time": object()}, {"orbit": "12"}, {"orbit": 1.5}, {"source": 3}, {"intersects": 1},
    {"limit": 1}, {"within_km": 5}, {"bad key": 1}, {"blob": object()},
    {"v": float("nan")},
])
def test_bad_records_raise_catalog_error(cat, kw):
    with pytest.raises(CatalogError):
        cat.add("x", **kw)
    assert len(cat) == 0


@pytest.mark.parametrize("kw", [
    {"intersects": "POLYGON((0 0, 1 1))"}, {"intersects": (0, 0, 0, 0)},
    {"within_km": (0, 0)}, {"within_km": (95, 0, 1)}, {"within_km": (0, 0, -1)},
    {"time": (T0, T0 - timedelta(seconds=1))}, {"time": "later"}, {"orbit": "x"},
    {"source": 1}, {"limit": -1}, {"tag": object()}, {"tag": [{"a": 1}]}, {"in-valid": 1},
])
def test_bad_queries_raise_catalog_error(cat, kw):
    with pytest.raises(CatalogError):
        cat.query(**kw)


def test_default_catalog_lives_in_the_profile_folder(cohort_home):
    from cohort.profile import profile_dir
    with store.catalog() as c:
        c.add("x", footprint=SQUARE)
        assert (profile_dir() / "catalog.db").exists()
        assert c.url.endswith("catalog.db")
    with pytest.raises(CatalogError):
        store.catalog("ftp://host/x")


def test_store_catalog_opens_a_catalog_whatever_was_imported_first(tmp_path):
    import subprocess
    import sys
    code = ("import cohort.store.catalog_core\nfrom cohort import store\n"
            f"c = store.catalog({str(tmp_path / 'c.db')!r})\nprint(type(c).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "SqliteCatalog", out.stderr


def test_catalog_reopens_with_its_records(tmp_path):
    with store.catalog(tmp_path / "c.db") as c:
        c.add("x", footprint=SWATH_AM, time=T0)
    with store.catalog(f"sqlite://{tmp_path}/c.db") as c:
        assert oids(c.query(intersects=(179, -1, -179, 1), time=T0)) == ["x"]


# --- the two backends agree ------------------------------------------------------

def _dest(lat, lon, bearing, dist):
    """The point `dist` radians from (lat, lon) along `bearing` (all degrees but dist)."""
    la, lo, b = map(math.radians, (lat, lon, bearing))
    la2 = math.asin(math.sin(la) * math.cos(dist) + math.cos(la) * math.sin(dist) * math.cos(b))
    lo2 = lo + math.atan2(math.sin(b) * math.sin(dist) * math.cos(la),
                          math.cos(dist) - math.sin(la) * math.sin(la2))
    return (math.degrees(lo2) + 180) % 360 - 180, math.degrees(la2)


def random_polygon(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.08:     # a cap around a pole
        sign = rng.choice((1, -1))
        lat = sign * rng.uniform(60, 88)
        n = rng.randint(3, 8)
        off = rng.uniform(0, 360)
        pts = [((off + k * 360 / n + rng.uniform(-10, 10) + 180) % 360 - 180, lat
                + rng.uniform(-1, 1)) for k in range(n)]
    else:               # a swath-like quad, anywhere (over the antimeridian and poles too)
        if kind < 0.25:
            lat, lon = rng.uniform(-85, 85), rng.choice((rng.uniform(170, 180),
                                                         rng.uniform(-180, -170)))
        elif kind < 0.4:
            lat, lon = rng.choice((1, -1)) * rng.uniform(70, 89), rng.uniform(-180, 180)
        else:
            lat, lon = math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)
        size = 10 ** rng.uniform(-3, -0.7)       # 0.06 to 11 degrees (radians here)
        theta = math.degrees(math.atan(1 / rng.uniform(1, 8)))   # a long thin quad
        heading = rng.uniform(0, 360)
        pts = [_dest(lat, lon, heading + a, size) for a in (theta, 180 - theta, 180 + theta,
                                                           360 - theta)]
    pts.append(pts[0])
    return "POLYGON((" + ",".join(f"{lo!r} {la!r}" for lo, la in pts) + "))"


def test_sqlite_and_postgis_agree_on_random_footprints(tmp_path, postgis_url):
    rng = random.Random(20261130)
    year = 365 * 86400
    recs = []
    for i in range(3000):
        start = T0 + timedelta(seconds=rng.uniform(0, year))
        dur = timedelta(seconds=rng.choice((0, rng.uniform(0, 3600))))
        recs.append({"oid": f"f{i:05d}", "footprint": random_polygon(rng),
                     "time": (start, start + dur), "orbit": rng.randint(0, 5000),
                     "source": rng.choice(("MERIS", "OLCI", "MODIS"))})
    lite = store.catalog(tmp_path / "agree.db")
    pg = _fresh_pg(postgis_url)
    pgc = store.catalog(postgis_url, exact="client")   # the same table, decided in numpy
    try:
        lite.add_many(recs)
        pg.add_many(recs)
        assert len(lite) == len(pg) == 3000
        checked = hits = 0
        asked = []
        for k in range(300):
            q: dict = {}
            r = rng.random()
            if r < 0.45:
                q["intersects"] = random_polygon(rng)
            elif r < 0.8:
                lon = rng.choice((rng.uniform(-180, 180), rng.choice((179.9, -179.9, 180))))
                lat = rng.choice((math.degrees(math.asin(rng.uniform(-1, 1))),
                                  rng.uniform(80, 90), rng.uniform(-90, -80)))
                q["within_km"] = (lat, lon, 10 ** rng.uniform(0, 3.3))
            else:
                w, s = rng.uniform(-180, 180), rng.uniform(-89, 80)
                q["intersects"] = (w, s, (w + rng.uniform(0.5, 60) + 180) % 360 - 180,
                                   min(90, s + rng.uniform(0.5, 30)))
            if k % 50 == 7:   # a big region: a ring of 400 vertices
                lat0, lon0 = rng.uniform(-70, 70), rng.uniform(-180, 180)
                rad = math.radians(rng.uniform(1, 20))
                ring = [_dest(lat0, lon0, 360 * j / 400, rad * rng.uniform(0.8, 1))
                        for j in range(400)]
                q = {"intersects": "POLYGON((" + ",".join(
                    f"{lo!r} {la!r}" for lo, la in ring + ring[:1]) + "))"}
            if rng.random() < 0.5:
                t = T0 + timedelta(seconds=rng.uniform(0, year))
                q["time"] = (t, t + timedelta(days=rng.uniform(0, 90)))
            if rng.random() < 0.2:
                q["source"] = rng.choice(("MERIS", "OLCI"))
            if rng.random() < 0.2:
                lo = rng.randint(0, 4000)
                q["orbit"] = range(lo, lo + 1500)
            asked.append(q)
            a, b = oids(lite.query(**q)), oids(pg.query(**q))
            assert a == b, f"query {k} {q}: sqlite-only {sorted(set(a) - set(b))}, " \
                           f"postgis-only {sorted(set(b) - set(a))}"
            assert oids(pgc.query(**q)) == a, f"query {k} {q}: postgis client-side exact"
            if k % 10 == 0:
                assert lite.count(**q) == pg.count(**q) == pgc.count(**q) == len(a)
            checked += 1
            hits += len(a)
        assert hits > 300   # the queries were not all empty
        import psycopg
        with psycopg.connect(postgis_url, autocommit=True) as conn:
            # most footprints are decided in a gnomonic plane; the rest (and rows
            # stored before those columns existed) by ST_Intersects on geography
            planar = conn.execute("SELECT count(*) FROM cohort_catalog "
                                  "WHERE face IS NOT NULL").fetchone()[0]
            assert planar > 2500
            conn.execute("UPDATE cohort_catalog SET face = NULL, gnomonic = NULL "
                         "WHERE id % 3 = 0")
        for q in asked[:100]:
            assert oids(pg.query(**q)) == oids(lite.query(**q)), f"without faces: {q}"
        pg.optimize()
        lite.optimize()
        for q in asked[:100]:
            assert oids(pg.query(**q)) == oids(lite.query(**q)), f"after optimize: {q}"
        for q in ({"time": (T0, T0 + timedelta(days=30))}, {"source": "OLCI"},
                  {"orbit": range(100, 900), "time": (T0 + timedelta(days=100), None)}):
            assert oids(lite.query(**q)) == oids(pg.query(**q))
    finally:
        lite.close()
        pg.close()
        pgc.close()
