"""The catalog in PostgreSQL with PostGIS (psycopg 3).

One table (default ``cohort_catalog``): footprints as ``geography`` (SRID 4326,
polygon or multipolygon), times as ``timestamptz``, ``extra`` as ``jsonb``.
Indexes: GIST on ``(geog, tstzrange(t0, t1, '[]'))`` — space and time in one
index —, B-trees on ``oid`` (unique), ``t0``, ``(source, orbit)``, ``(orbit, source)``, and
GIN on ``extra``. Intersections are ``ST_Intersects(geography, geography)``;
distances ``ST_DWithin(..., use_spheroid => false)``: on the sphere of radius
6371.0088 km, like the SQLite backend. With ``exact="client"`` the GIST
index's box tests pick candidates and numpy decides them (`spatial_mask`, the
SQLite backend's exact test, kept beside in ``geom``): PostGIS's geography
predicates cost tens of microseconds a row, which dominates queries with
hundreds of candidates. The database needs the PostGIS
extension (``CREATE EXTENSION postgis``, done here when the user may).

With ``exact="postgis"`` an ``intersects`` query mostly avoids the geography
test too: each footprint is also kept (``face``, ``gnomonic``) as a planar
``geometry`` in the gnomonic projection onto the cube face whose hemisphere
holds it best. A gnomonic projection maps great circles to straight lines,
so a spherical polygon inside the hemisphere becomes exactly the planar
polygon through its projected vertices, and two footprints in one face's
hemisphere meet on the sphere exactly when their projections meet in the
plane: GEOS's prepared ``ST_Intersects`` on geometry (a few microseconds a
row) decides. Only what the plane cannot decide robustly goes to
``ST_Intersects(geography)``: candidates whose boundary comes within
`_MARGIN` of the region's (touching, or closer than rounding), footprints
too large for one face (or stored before these columns existed), and
regions that fit no candidate's face. Before the polygon test, a
point-in-polygon test of one point deep inside the region (or of the query
point, for ``within_km``) confirms most hits without GEOS.

Rows are stored in space-time order (month, then a geohash of the footprint's
centre) by a bulk load into an empty table and by `optimize`, which helps the
GIST index and the heap reads of a region-and-month query.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading

from ..errors import CatalogError
from .catalog_core import (Catalog, Query, Record, Row, from_us, in_result_order,
                           spatial_mask)
from .geo import EARTH_RADIUS_KM, Footprint, to_xyz

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
# Space-time order of the rows, used when a bulk load fills an empty table and
# by `optimize`: the month of t0, then a geohash of the footprint's centre (a
# Z-order curve). A region and a month then read neighbouring heap pages, and
# the GIST index built over rows in that order prunes better: at 10^6
# footprints its candidate scan for a coastal region and a month took 3.5-4.4
# ms against 5.1-5.6 in load (oid) order.
_SPACE_TIME_ORDER = (
    "date_trunc('month', t0), ST_GeoHash(ST_MakePoint("
    "greatest(-180.0, least(180.0, ST_X(ST_Centroid(geog)::geometry))), "
    "greatest(-90.0, least(90.0, ST_Y(ST_Centroid(geog)::geometry)))), 8)")
_SECONDARY_INDEXES = ("geog_time", "t0", "source", "orbit", "extra")
_COLS = ("oid, filename, source, version, t0, t1, orbit, footprint, geog, geom, extra, face, "
         "gnomonic")
# what a query returns: times as microseconds since 2000 (`_PgRecord`), extra as text
# (both decoded lazily by `Record`)
# (an empty extra comes back as NULL: converting '{}' to text for each of 674
# rows cost 0.5 ms of a 10 ms query)
_OUT = ("oid, filename, source, version, t0, t1, orbit, footprint, "
        "NULLIF(extra, '{}'::jsonb)::text")

# A footprint (or region) has a gnomonic projection onto face f (axis k = f % 3,
# sign + for f < 3) when every vertex v has sign * v[k] >= _CMIN: within 78.5
# degrees of the face's centre, where the projection stretches distances at
# most 1 / _CMIN**2 = 25 times (and never shrinks them). Edges and interiors
# then lie in the hemisphere too (a great-circle arc shorter than pi between
# two points of an open hemisphere stays in it; a ring in it bounds its
# smaller side there).
_CMIN = 0.2
# Planar distance under which the projections' answer is not trusted: a
# candidate whose boundary comes this close to the region's (4e-9 to 1e-7
# radians on the sphere: 2.5 cm to 0.6 m on the ground) goes to the
# geography test. Rounding errors in the projected coordinates are ~1e-15.
_MARGIN = 1e-7


def _faces(fp: Footprint) -> list[int]:
    """The cube faces (0-2: +x, +y, +z; 3-5: -x, -y, -z) whose hemisphere holds
    `fp` with margin `_CMIN`, the most central first."""
    return _faces_of(v for r in fp.rings for v in r.xyz)


def _faces_of(points) -> list[int]:
    """`_faces` of a set of unit vectors."""
    lo = [2.0, 2.0, 2.0]
    hi = [-2.0, -2.0, -2.0]
    for v in points:
        for k in (0, 1, 2):
            c = v[k]
            if c < lo[k]:
                lo[k] = c
            if c > hi[k]:
                hi[k] = c
    margins = [(lo[k], k) for k in (0, 1, 2)] + [(-hi[k], k + 3) for k in (0, 1, 2)]
    return [f for m, f in sorted(margins, reverse=True) if m >= _CMIN]


def _gnomonic(fp: Footprint, face: int) -> str:
    """`fp` projected from the Earth's centre onto the plane tangent at the
    centre of `face` (x = +-1, ...), as hex WKB (a planar geometry, SRID 0)."""
    k = face % 3
    i, j = (k + 1) % 3, (k + 2) % 3
    polys: dict[int, list[bytes]] = {}
    for r in fp.rings:
        pts = r.xyz
        ring = [struct.pack("<I", len(pts) + 1)]
        for v in pts:
            ring.append(struct.pack("<dd", v[i] / v[k], v[j] / v[k]))
        ring.append(ring[1])
        polys.setdefault(r.poly, []).append(b"".join(ring))
    wkb = [b"\x01" + struct.pack("<II", 3, len(rings)) + b"".join(rings)
           for rings in polys.values()]
    if len(wkb) == 1:
        return wkb[0].hex()
    return (b"\x01" + struct.pack("<II", 6, len(wkb)) + b"".join(wkb)).hex()


def _by_face(whens: list[str], otherwise: str) -> str:
    """A test chosen by each row's face (``WHEN f THEN ...`` arms), `otherwise` else."""
    return f"CASE face {' '.join(whens)} ELSE {otherwise} END" if whens else otherwise


def _gnomonic_point(v, face: int) -> str:
    """The unit vector `v` projected like `_gnomonic`, as hex WKB (a POINT)."""
    k = face % 3
    i, j = (k + 1) % 3, (k + 2) % 3
    return (b"\x01" + struct.pack("<Idd", 1, v[i] / v[k], v[j] / v[k])).hex()


_SINCE_2000 = 946_684_800_000_000  # microseconds from 1970 to PostgreSQL's epoch, 2000-01-01 UTC


class _PgRecord(Record):
    """A record whose stored times count microseconds from 2000-01-01 UTC:
    binary timestamptz read as a plain int8 (in C), so nothing is converted
    per row on either side for times that may never be read."""

    __slots__ = ()

    @property
    def start(self):
        if self._start is Record._UNSET:
            self._start = None if self._t0 is None else from_us(self._t0 + _SINCE_2000)
        return self._start

    @property
    def end(self):
        if self._end is Record._UNSET:
            self._end = None if self._t1 is None else from_us(self._t1 + _SINCE_2000)
        return self._end


class PostgisCatalog(Catalog):
    """The catalog in a PostgreSQL database with PostGIS."""

    def __init__(self, url: str, table: str = "cohort_catalog", exact: str = "postgis"):
        try:
            import psycopg
        except ImportError:
            raise CatalogError("a PostgreSQL catalog needs psycopg 3: "
                               "pip install 'psycopg[binary]'") from None
        self._psycopg = psycopg
        if not _IDENT.match(table):
            raise CatalogError(f"bad table name {table!r}")
        if exact not in ("postgis", "client"):
            raise CatalogError(f"exact is 'postgis' or 'client', not {exact!r}")
        self.exact = exact
        self.t = table
        self.url = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute("SET TIME ZONE 'UTC'")
            self._setup()
        except psycopg.Error as e:
            raise CatalogError(f"cannot open the catalog at {self.url}: {e}") from e
        self._lock = threading.RLock()

    def _setup(self) -> None:
        c, t = self._conn, self.t
        have = c.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone()
        if not have:
            try:
                c.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except self._psycopg.Error as e:
                raise CatalogError(
                    "the database lacks PostGIS and this user cannot add it: ask its owner "
                    f"to run CREATE EXTENSION postgis (Debian: apt install postgis): {e}") from e
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (t,))
            c.execute(f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    id bigserial PRIMARY KEY, oid text NOT NULL UNIQUE, filename text,
                    source text, version text, t0 timestamptz, t1 timestamptz, orbit bigint,
                    footprint text, geog geography(Geometry, 4326), geom bytea,
                    extra jsonb NOT NULL DEFAULT '{{}}', face smallint, gnomonic geometry,
                    CHECK (t0 <= t1))""")
            c.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS geom bytea, "
                      "ADD COLUMN IF NOT EXISTS face smallint, "
                      "ADD COLUMN IF NOT EXISTS gnomonic geometry")
            c.execute(f"CREATE TABLE IF NOT EXISTS {t}_meta (key text PRIMARY KEY, "
                      "value bigint)")
            self._indexes(c)

    def _indexes(self, c) -> None:
        t = self.t
        c.execute(f"CREATE INDEX IF NOT EXISTS {t}_geog_time ON {t} "
                  "USING gist (geog, tstzrange(t0, t1, '[]'))")
        c.execute(f"CREATE INDEX IF NOT EXISTS {t}_t0 ON {t} (t0)")
        c.execute(f"CREATE INDEX IF NOT EXISTS {t}_source ON {t} (source, orbit)")
        # (orbit, source), not (orbit): in space-time order the planner favours
        # an orbit range over (source, orbit), and then fetched 10x the rows
        c.execute(f"CREATE INDEX IF NOT EXISTS {t}_orbit ON {t} (orbit, source)")
        c.execute(f"CREATE INDEX IF NOT EXISTS {t}_extra ON {t} USING gin (extra jsonb_path_ops)")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _cursor(self):
        """A binary cursor that reads timestamptz as int8: microseconds since
        2000 (`_PgRecord`)."""
        from psycopg.types.numeric import Int8BinaryLoader
        cur = self._db().cursor(binary=True)
        cur.adapters.register_loader("timestamptz", Int8BinaryLoader)
        return cur

    def _db(self):
        if self._conn is None:
            raise CatalogError("the catalog is closed")
        return self._conn

    # -- writing --

    _UPSERT = """ON CONFLICT (oid) DO UPDATE SET filename = EXCLUDED.filename,
        source = EXCLUDED.source, version = EXCLUDED.version, t0 = EXCLUDED.t0,
        t1 = EXCLUDED.t1, orbit = EXCLUDED.orbit, footprint = EXCLUDED.footprint,
        geog = EXCLUDED.geog, geom = EXCLUDED.geom, extra = EXCLUDED.extra,
        face = EXCLUDED.face, gnomonic = EXCLUDED.gnomonic"""

    @staticmethod
    def _values(r: Row) -> tuple:
        fp = r.footprint
        if fp is None:
            return (r.oid, r.filename, r.source, r.version, from_us(r.t0), from_us(r.t1),
                    r.orbit, None, None, None, json.dumps(r.extra), None, None)
        wkt = fp.wkt
        faces = _faces(fp)
        face = faces[0] if faces else None
        return (r.oid, r.filename, r.source, r.version, from_us(r.t0), from_us(r.t1), r.orbit,
                wkt, wkt, fp.packed(), json.dumps(r.extra), face,
                None if face is None else _gnomonic(fp, face))

    def _update_span(self, c, span: int) -> None:
        c.execute(f"INSERT INTO {self.t}_meta VALUES ('max_span', %s) ON CONFLICT (key) "
                  f"DO UPDATE SET value = greatest({self.t}_meta.value, EXCLUDED.value)",
                  (span,))

    def _insert(self, rows: list[Row]) -> None:
        """A few records: INSERT ... ON CONFLICT, one transaction."""
        if not rows:
            return
        span = max((r.t1 - r.t0 for r in rows if r.t0 is not None), default=0)
        with self._lock:
            c = self._db()
            try:
                with c.transaction():
                    c.cursor().executemany(
                        f"INSERT INTO {self.t} ({_COLS}) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s::geography, %s, %s::jsonb, %s, "
                        "%s::geometry) "
                        + self._UPSERT, [self._values(r) for r in rows])
                    self._update_span(c, span)
            except self._psycopg.Error as e:
                raise CatalogError(f"the catalog refused the records: {e}") from e

    def _insert_batches(self, batches) -> None:
        """Many records: COPY into a staging table, then one INSERT ... SELECT
        (the last of each oid), in one transaction; into an empty table, the
        indexes are dropped first and built after the data."""
        t = self.t
        cols = _COLS
        with self._lock:
            c = self._db()
            try:
                with c.transaction():
                    c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (t,))
                    empty = c.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {t})").fetchone()[0]
                    c.execute(f"""CREATE TEMP TABLE {t}_load (seq bigserial, oid text,
                        filename text, source text, version text, t0 timestamptz,
                        t1 timestamptz, orbit bigint, footprint text, geog geography,
                        geom bytea, extra jsonb, face smallint, gnomonic geometry)
                        ON COMMIT DROP""")
                    span = 0
                    with c.cursor().copy(f"COPY {t}_load ({cols}) FROM STDIN") as cp:
                        for rows in batches:
                            for r in rows:
                                cp.write_row(self._values(r))
                                if r.t0 is not None and r.t1 - r.t0 > span:
                                    span = r.t1 - r.t0
                    if empty:
                        self._drop_indexes(c)
                    log.info("catalog: loading the staged records into %s", t)
                    latest = (f"SELECT DISTINCT ON (oid) {cols} FROM {t}_load "
                              "ORDER BY oid, seq DESC")
                    if empty:  # nothing to merge with: store them in space-time order
                        latest = f"SELECT * FROM ({latest}) s ORDER BY {_SPACE_TIME_ORDER}"
                    c.execute(f"INSERT INTO {t} ({cols}) {latest} " + self._UPSERT)
                    self._update_span(c, span)
                    if empty:
                        self._build_indexes(c)
                c.execute(f"ANALYZE {t}")
            except self._psycopg.Error as e:
                raise CatalogError(f"the catalog refused the records: {e}") from e

    def _drop_indexes(self, c) -> None:
        for ix in _SECONDARY_INDEXES:
            c.execute(f"DROP INDEX IF EXISTS {self.t}_{ix}")

    def _build_indexes(self, c) -> None:
        log.info("catalog: building the indexes of %s", self.t)
        c.execute("SET LOCAL maintenance_work_mem = '512MB'")
        self._indexes(c)

    def _optimize(self) -> None:
        """Rewrite the table in space-time order and rebuild its indexes."""
        t = self.t
        with self._lock:
            c = self._db()
            try:
                with c.transaction():
                    c.execute(f"LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE")
                    c.execute(f"CREATE TEMP TABLE {t}_sorted ON COMMIT DROP AS "
                              f"SELECT * FROM {t} ORDER BY {_SPACE_TIME_ORDER}")
                    self._drop_indexes(c)
                    c.execute(f"TRUNCATE {t}")
                    c.execute(f"INSERT INTO {t} SELECT * FROM {t}_sorted "
                              f"ORDER BY {_SPACE_TIME_ORDER}")
                    self._build_indexes(c)
                c.execute(f"ANALYZE {t}")
            except self._psycopg.Error as e:
                raise CatalogError(f"optimizing the catalog failed: {e}") from e

    def _delete(self, oids: list[str]) -> int:
        with self._lock:
            cur = self._db().execute(f"DELETE FROM {self.t} WHERE oid = ANY(%s)", (oids,))
            return cur.rowcount

    # -- reading --

    def _where(self, q: Query) -> tuple[list[str], list]:
        """SQL conditions and parameters; in "client" mode the spatial ones are
        only the GIST index's box tests (candidates for `spatial_mask`)."""
        conds: list[str] = []
        params: list = []
        client = self.exact == "client"
        if q.region is not None:
            region = q.region.wkt
            conds.append("geog && ST_GeogFromText(%s)")
            params.append(region)
            if not client:
                # decided in the plane where a face holds both (module docstring);
                # the buffers are constants, computed once when the query is planned
                exact = "ST_Intersects(geog, ST_GeogFromText(%s))"
                whens = []
                for f in _faces(q.region):
                    g = _gnomonic(q.region, f)
                    inner = f"ST_Buffer(%s::geometry, {-_MARGIN!r}, 'quad_segs=2')"
                    whens.append(
                        f"WHEN {f} THEN ST_Intersects(gnomonic, ST_PointOnSurface({inner})) "
                        f"OR ST_Intersects(gnomonic, {inner}) OR (ST_Intersects(gnomonic, "
                        f"ST_Buffer(%s::geometry, {2 * _MARGIN!r}, 'quad_segs=2')) "
                        f"AND {exact})")
                    params += [g, g, g, region]
                conds.append(_by_face(whens, exact))
                params.append(region)
        if q.point is not None:
            lat, lon, rad = q.point
            point = "ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography"
            metres = rad * EARTH_RADIUS_KM * 1000.0
            p = to_xyz(lon, lat)
            faces = [] if client or rad < 1e-9 else _faces_of([p])
            if client or faces:  # the index condition ST_DWithin brings, spelt out
                conds.append(f"geog && _ST_Expand({point}, %s)")
                params += [lon, lat, metres]
            if not client:
                # a footprint holding the point (in the plane of a face whose
                # hemisphere holds both) is within any distance of it: a rounding
                # error there is ~1e-15, far below `rad`; the rest is measured
                exact = f"ST_DWithin(geog, {point}, %s, false)"
                whens = []
                for f in faces:
                    whens.append(f"WHEN {f} THEN ST_Intersects(gnomonic, %s::geometry) "
                                 f"OR {exact}")
                    params += [_gnomonic_point(p, f), lon, lat, metres]
                conds.append(_by_face(whens, exact))
                params += [lon, lat, metres]
        if q.timed:
            lo, hi = from_us(q.t0), from_us(q.t1)
            conds.append("t0 IS NOT NULL")
            if q.spatial:  # the GIST index holds the time range too
                conds.append("tstzrange(t0, t1, '[]') && tstzrange(%s, %s, '[]')")
                params += [lo, hi]
            if hi is not None:
                conds.append("t0 <= %s")
                params.append(hi)
            if lo is not None:
                conds.append("t1 >= %s")
                params.append(lo)
                if not q.spatial:
                    span = self._db().execute(
                        f"SELECT value FROM {self.t}_meta WHERE key = 'max_span'").fetchone()
                    if span is not None:
                        conds.append("t0 >= %s")
                        params.append(from_us(q.t0 - int(span[0])))
        for col in ("oid", "filename", "source", "version"):
            values = getattr(q, col)
            if values is not None:
                conds.append(f"{col} = ANY(%s)")
                params.append(values)
        if q.orbit_range is not None:
            conds.append("orbit >= %s AND orbit < %s")
            params += list(q.orbit_range)
        if q.orbit_in is not None:
            conds.append("orbit = ANY(%s)")
            params.append(q.orbit_in)
        for key, values in q.extra.items():
            alts = []
            for v in values:
                alts.append("extra @> %s::jsonb")
                params.append(json.dumps({key: v}))
            conds.append("(" + " OR ".join(alts or ["false"]) + ")")
        return conds, params

    @staticmethod
    def _prepare(q: Query) -> bool | None:
        """Never a prepared statement for a region: its plan must see the region
        as a constant, so that the buffers around it (`_where`) are computed
        once, not once a row as a generic plan would (psycopg prepares a
        statement after a few runs)."""
        return False if q.region is not None else None

    def _client_exact(self, q: Query, cols: str) -> list[tuple]:
        """Rows (``geom, *cols``) of the GIST candidates that `spatial_mask` keeps."""
        conds, params = self._where(q)
        sql = f"SELECT geom{cols} FROM {self.t} WHERE " + " AND ".join(conds)
        try:
            rows = self._cursor().execute(sql, params).fetchall()
        except self._psycopg.Error as e:
            raise CatalogError(f"catalog query failed: {e}") from e
        mask = spatial_mask(q, [r[0] for r in rows])
        return [r for r, m in zip(rows, mask) if m]

    def _select(self, q: Query) -> list[Record]:
        with self._lock:
            if q.spatial and self.exact == "client":
                return in_result_order(
                    [_PgRecord.from_row(*r[1:]) for r in self._client_exact(q, ", " + _OUT)], q.limit)
            conds, params = self._where(q)
            sql = f"SELECT {_OUT} FROM {self.t}"
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            sql += ' ORDER BY t0 NULLS LAST, oid COLLATE "C"'
            if q.limit is not None:
                sql += f" LIMIT {int(q.limit)}"
            try:
                rows = self._cursor().execute(
                    sql, params, prepare=self._prepare(q)).fetchall()
            except self._psycopg.Error as e:
                raise CatalogError(f"catalog query failed: {e}") from e
        return [_PgRecord.from_row(*r) for r in rows]

    def _count(self, q: Query) -> int:
        with self._lock:
            if q.spatial and self.exact == "client":
                return len(self._client_exact(q, ""))
            conds, params = self._where(q)
            sql = f"SELECT count(*) FROM {self.t}"
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            try:
                return self._db().execute(sql, params, prepare=self._prepare(q)).fetchone()[0]
            except self._psycopg.Error as e:
                raise CatalogError(f"catalog query failed: {e}") from e
