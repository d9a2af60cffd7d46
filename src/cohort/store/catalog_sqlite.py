"""The catalog in one SQLite file: an R*Tree for the coarse filter, exact tests on
the sphere in Python.

Tables:

* ``records`` — one row per record: times as integer microseconds since the
  epoch (``t0``, ``t1``), the footprint as WKT and as packed unit vectors
  (``geom``; see `cohort.store.geo.Footprint.packed`), ``extra`` as JSON.
  B-tree indexes on ``oid``, ``t0``, ``(source, orbit)``, ``orbit``.
* ``records_box`` — an R*Tree of 3-D boxes (lon, lat, time in days: days keep
  the three axes commensurate, so the tree splits on space and time alike),
  one or two per footprint (two when it crosses the antimeridian; a polar
  footprint spans every longitude up to lat +-90). Box id = 2 * record id + k.
* ``meta`` — the longest record interval seen, so a time filter without a
  region is a bounded range scan of the ``t0`` index.

A spatial query reads the boxes overlapping the region's boxes and the time
window, joins each to its record row (one pass: every filter in SQL, the
geometry and the columns together), then keeps the exact hits (`PolySet`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

from ..errors import CatalogError
from .catalog_core import Catalog, Query, Record, Row, in_result_order, spatial_mask
from .geo import cap_boxes

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, oid TEXT NOT NULL UNIQUE, filename TEXT, source TEXT,
    version TEXT, t0 INTEGER, t1 INTEGER, orbit INTEGER, footprint TEXT,
    extra TEXT NOT NULL DEFAULT '{}', geom BLOB);
CREATE INDEX IF NOT EXISTS records_t0 ON records (t0);
CREATE INDEX IF NOT EXISTS records_source ON records (source, orbit);
CREATE INDEX IF NOT EXISTS records_orbit ON records (orbit);
CREATE VIRTUAL TABLE IF NOT EXISTS records_box USING rtree (
    id, west, east, south, north, d0, d1);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
_COLS = "r.oid, r.filename, r.source, r.version, r.t0, r.t1, r.orbit, r.footprint, r.extra"
_FAR = 1e37  # time bound (days) of records without a time, in the R*Tree
_DAY = 86400e6  # microseconds; R*Tree time is in days, commensurate with degrees


def where(q: Query, max_span: int | None) -> tuple[list[str], list]:
    """SQL conditions (on table alias r) and parameters for the attribute and time
    filters of `q` (the exact ones; the R*Tree only narrows)."""
    conds: list[str] = []
    params: list = []

    def among(col: str, values: list) -> None:
        if len(values) == 1:
            conds.append(f"{col} = ?")
            params.append(values[0])
        else:
            conds.append(f"{col} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
    for col in ("oid", "filename", "source", "version"):
        values = getattr(q, col)
        if values is not None:
            among(f"r.{col}", values)
    if q.orbit_range is not None:
        conds.append("r.orbit >= ? AND r.orbit < ?")
        params += list(q.orbit_range)
    if q.orbit_in is not None:
        among("r.orbit", q.orbit_in)
    if q.timed:
        conds.append("r.t0 IS NOT NULL")
        if q.t1 is not None:
            conds.append("r.t0 <= ?")
            params.append(q.t1)
        if q.t0 is not None:
            conds.append("r.t1 >= ?")
            params.append(q.t0)
            if max_span is not None and not q.spatial:  # lets the t0 index bound the scan
                conds.append("r.t0 >= ?")
                params.append(q.t0 - max_span)
    for key, values in q.extra.items():
        path = f'$."{key}"'
        alts = []
        for v in values:
            if v is None:
                alts.append("json_type(r.extra, ?) = 'null'")
                params.append(path)
            elif isinstance(v, bool):
                alts.append(f"json_type(r.extra, ?) = '{'true' if v else 'false'}'")
                params.append(path)
            elif isinstance(v, (int, float)):
                alts.append("(json_type(r.extra, ?) IN ('integer', 'real') "
                            "AND json_extract(r.extra, ?) = ?)")
                params += [path, path, v]
            else:
                alts.append("(json_type(r.extra, ?) = 'text' AND json_extract(r.extra, ?) = ?)")
                params += [path, path, v]
        conds.append("(" + " OR ".join(alts or ["0"]) + ")")
    for col in ("oid", "filename", "source", "version"):
        if getattr(q, col) == []:
            conds.append("0")
    if q.orbit_in == []:
        conds.append("0")
    return conds, params


class SqliteCatalog(Catalog):
    """The catalog in an SQLite file (WAL mode: many readers, one writer at a time)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = f"sqlite://{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False,
                                         isolation_level=None)
            c = self._conn
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA cache_size=-65536")
            c.execute("PRAGMA temp_store=MEMORY")
            c.execute("PRAGMA mmap_size=1073741824")  # random reads of big catalogs: no copies
            c.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise CatalogError(f"cannot open the catalog {self.path}: {e}") from e
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CatalogError("the catalog is closed")
        return self._conn

    def _max_span(self, c: sqlite3.Connection) -> int | None:
        row = c.execute("SELECT value FROM meta WHERE key = 'max_span'").fetchone()
        return None if row is None else int(row[0])

    # -- writing --

    def _insert(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._lock:
            c = self._db()
            c.execute("BEGIN IMMEDIATE")
            try:
                self._delete_in(c, [r.oid for r in rows])
                start = (c.execute("SELECT max(id) FROM records").fetchone()[0] or 0) + 1
                recs, boxes, span = [], [], 0
                for i, r in enumerate(rows):
                    rid = start + i
                    wkt = geom = None
                    if r.footprint is not None:
                        geom = r.footprint.packed()
                        wkt = r.footprint.wkt
                        lo = -_FAR if r.t0 is None else r.t0 / _DAY
                        hi = _FAR if r.t1 is None else r.t1 / _DAY
                        for k, (w, e, s, n) in enumerate(r.footprint.boxes):
                            boxes.append((2 * rid + k, w, e, s, n, lo, hi))
                    if r.t0 is not None:
                        span = max(span, r.t1 - r.t0)
                    recs.append((rid, r.oid, r.filename, r.source, r.version, r.t0, r.t1,
                                 r.orbit, wkt, json.dumps(r.extra) if r.extra else "{}", geom))
                c.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)", recs)
                c.executemany("INSERT INTO records_box VALUES (?,?,?,?,?,?,?)", boxes)
                c.execute("INSERT INTO meta VALUES ('max_span', ?) ON CONFLICT (key) DO "
                          "UPDATE SET value = max(value, excluded.value)", (span,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    @staticmethod
    def _delete_in(c: sqlite3.Connection, oids: list[str]) -> int:
        ids = [r[0] for r in c.execute(
            "SELECT id FROM records WHERE oid IN (SELECT value FROM json_each(?))",
            (json.dumps(oids),))]
        if not ids:
            return 0
        boxes = json.dumps([2 * i for i in ids] + [2 * i + 1 for i in ids])
        c.execute("DELETE FROM records_box WHERE id IN (SELECT value FROM json_each(?))",
                  (boxes,))
        c.execute("DELETE FROM records WHERE id IN (SELECT value FROM json_each(?))",
                  (json.dumps(ids),))
        return len(ids)

    def _optimize(self) -> None:
        with self._lock:
            c = self._db()
            try:
                c.execute("ANALYZE")
                c.execute("VACUUM")
            except sqlite3.Error as e:
                raise CatalogError(f"optimizing the catalog {self.path} failed: {e}") from e

    def _delete(self, oids: list[str]) -> int:
        with self._lock:
            c = self._db()
            c.execute("BEGIN IMMEDIATE")
            try:
                n = self._delete_in(c, oids)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return n

    # -- reading --

    def _spatial(self, c: sqlite3.Connection, q: Query, cols: str) -> list[tuple]:
        """Rows (``id, geom, *cols``) of the records matching a spatial query
        exactly, in no particular order."""
        conds, params = where(q, None)
        if q.region is not None:
            boxes = q.region.boxes
        else:
            lat, lon, rad = q.point
            boxes = cap_boxes(lat, lon, rad)
        lo = -_FAR if q.t0 is None else q.t0 / _DAY
        hi = _FAR if q.t1 is None else q.t1 / _DAY
        # CROSS JOIN: the R*Tree drives, whatever other index looks attractive
        sql = (f"SELECT r.id, r.geom{cols} FROM records_box b CROSS JOIN records r "
               "ON r.id = (b.id >> 1) WHERE b.west <= ? AND b.east >= ? AND b.south <= ? "
               "AND b.north >= ? AND b.d0 <= ? AND b.d1 >= ?"
               + "".join(" AND " + x for x in conds))
        cands: dict[int, tuple] = {}
        for w, e, s, n in boxes:
            for row in c.execute(sql, (e, w, n, s, hi, lo, *params)):
                cands[row[0]] = row
        rows = list(cands.values())
        mask = spatial_mask(q, [r[1] for r in rows])
        return [r for r, m in zip(rows, mask) if m]

    def _select(self, q: Query) -> list[Record]:
        with self._lock:
            c = self._db()
            if q.spatial:
                return in_result_order(
                    [Record.from_row(*r[2:]) for r in self._spatial(c, q, ", " + _COLS)], q.limit)
            conds, params = where(q, self._max_span(c))
            sql = f"SELECT {_COLS} FROM records r"
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            sql += " ORDER BY r.t0 IS NULL, r.t0, r.oid"
            if q.limit is not None:
                sql += f" LIMIT {int(q.limit)}"
            return [Record.from_row(*r) for r in c.execute(sql, params)]

    def _count(self, q: Query) -> int:
        with self._lock:
            c = self._db()
            if q.spatial:
                return len(self._spatial(c, q, ""))
            conds, params = where(q, self._max_span(c))
            sql = "SELECT count(*) FROM records r"
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            return c.execute(sql, params).fetchone()[0]
