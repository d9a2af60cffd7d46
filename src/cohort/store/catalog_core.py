"""The metadata catalog: find stored objects by where, when and what.

    from cohort import store
    cat = store.catalog()                               # SQLite in the profile folder
    cat = store.catalog("postgresql://user:pw@host/db") # PostgreSQL + PostGIS
    cat.add(oid, filename="a.nc", source="MERIS", version="1.0",
            time=(t_start, t_end), orbit=1234,
            footprint="POLYGON((170 -5, -170 -5, -170 5, 170 5, 170 -5))", cloud=0.2)
    cat.query(intersects=region, time=(t0, t1), source="MERIS", orbit=range(1200, 1300))
    cat.query(within_km=(lat, lon, 50))

Footprints are polygons on a sphere (SRID 4326, lon/lat, great-circle edges;
the smaller of the two regions a ring bounds; see `cohort.store.geo`). Times
are UTC (naive datetimes are taken as UTC); a record's time is an instant or
a (start, end) interval. Both backends give the same answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import CatalogError
from .geo import EARTH_RADIUS_KM, Footprint, to_geojson, to_xyz

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)

#: Fields every record has; any other keyword of `Catalog.add` goes to `extra`.
FIELDS = ("oid", "filename", "source", "version", "time", "orbit", "footprint")
#: Keywords no `extra` key may take (they mean something to `Catalog.query`).
RESERVED = frozenset(FIELDS) | {"extra", "intersects", "within_km", "limit", "start", "end"}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- records ----------------------------------------------------------------

class Record:
    """One catalog entry. `start`/`end` are tz-aware UTC datetimes (equal for
    an instant), `footprint` is WKT, `extra` holds the other keywords."""

    __slots__ = ("oid", "filename", "source", "version", "orbit", "footprint", "_t0", "_t1",
                 "_start", "_end", "_extra", "_extra_json")
    _UNSET: Any = object()

    def __init__(self, oid: str, filename: str | None = None, source: str | None = None,
                 version: str | None = None, start: datetime | None = None,
                 end: datetime | None = None, orbit: int | None = None,
                 footprint: str | None = None, extra: dict | None = None):
        self.oid, self.filename, self.source, self.version = oid, filename, source, version
        self.orbit, self.footprint = orbit, footprint
        self._start, self._end = start, end
        self._t0 = self._t1 = None
        self._extra, self._extra_json = (extra if extra is not None else {}), None

    @classmethod
    def from_row(cls, oid: str, filename: str | None, source: str | None,
                 version: str | None, t0: int | None, t1: int | None, orbit: int | None,
                 footprint: str | None, extra_json: str | None) -> "Record":
        """A record from stored values (microsecond times, JSON extra), converted
        on first access."""
        r = cls.__new__(cls)
        r.oid, r.filename, r.source, r.version = oid, filename, source, version
        r.orbit, r.footprint = orbit, footprint
        r._t0, r._t1 = t0, t1
        r._start = r._end = cls._UNSET
        r._extra, r._extra_json = cls._UNSET, extra_json
        return r

    @property
    def start(self) -> datetime | None:
        if self._start is Record._UNSET:
            self._start = from_us(self._t0)
        return self._start

    @property
    def end(self) -> datetime | None:
        if self._end is Record._UNSET:
            self._end = from_us(self._t1)
        return self._end

    @property
    def extra(self) -> dict:
        if self._extra is Record._UNSET:
            j = self._extra_json
            self._extra = json.loads(j) if j and j != "{}" else {}
        return self._extra

    @property
    def time(self) -> datetime | tuple[datetime, datetime] | None:
        """The instant, or the (start, end) pair of an interval."""
        if self.start is None:
            return None
        return self.start if self.end == self.start else (self.start, self.end)

    @property
    def geojson(self) -> dict | None:
        """The footprint as a GeoJSON geometry."""
        return to_geojson(self.footprint) if self.footprint else None

    def _key(self) -> tuple:
        return (self.oid, self.filename, self.source, self.version, self.start, self.end,
                self.orbit, self.footprint, self.extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        names = ("oid", "filename", "source", "version", "start", "end", "orbit", "footprint",
                 "extra")
        return "Record(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, self._key())) + ")"

    def to_dict(self) -> dict:
        """The record as keywords of `Catalog.add` (``extra`` keys inline)."""
        d = {"oid": self.oid, "filename": self.filename, "source": self.source,
             "version": self.version, "time": self.time, "orbit": self.orbit,
             "footprint": self.footprint}
        d.update(self.extra)
        return d


@dataclass
class Row:
    """A record validated for storage (times in microseconds since the epoch)."""

    oid: str
    filename: str | None
    source: str | None
    version: str | None
    t0: int | None
    t1: int | None
    orbit: int | None
    footprint: Footprint | None
    extra: dict


def to_us(value: Any, what: str = "time") -> int:
    """Microseconds since 1970-01-01 UTC of a datetime (naive = UTC), a date, an
    ISO 8601 string or epoch seconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise CatalogError(f"{what}: {value!r} is not an ISO 8601 date/time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return (value - EPOCH) // _US
    if isinstance(value, date):
        return (datetime(value.year, value.month, value.day, tzinfo=timezone.utc) - EPOCH) // _US
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise CatalogError(f"{what}: {value!r} is not a finite number of seconds")
        return round(value * 1_000_000)
    raise CatalogError(f"{what}: expected a datetime, date, ISO 8601 string or epoch "
                       f"seconds, got {type(value).__name__}")


def from_us(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=us)


def interval(value: Any, what: str = "time", open_ends: bool = False
             ) -> tuple[int | None, int | None]:
    """(start, end) microseconds of an instant or a (start, end) pair."""
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise CatalogError(f"{what}: an interval is a (start, end) pair, got {value!r}")
        lo, hi = value
        if not open_ends and (lo is None or hi is None):
            raise CatalogError(f"{what}: a record's interval needs both ends")
        t0 = None if lo is None else to_us(lo, what)
        t1 = None if hi is None else to_us(hi, what)
        if t0 is not None and t1 is not None and t0 > t1:
            raise CatalogError(f"{what}: start {lo} is after end {hi}")
        return t0, t1
    t = to_us(value, what)
    return t, t


def _text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise CatalogError(f"{what} must be a string, got {type(value).__name__}")


def _orbit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numbers
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return int(value)
        except Exception:  # pragma: no cover
            pass
        raise CatalogError(f"orbit must be an integer, got {value!r}")
    return value


def make_row(oid: Any, filename: Any = None, source: Any = None, version: Any = None,
             time: Any = None, orbit: Any = None, footprint: Any = None,
             extra: dict | None = None, **more: Any) -> Row:
    """Validate one record's fields (`more` joins `extra`)."""
    if oid is None or (isinstance(oid, str) and not oid):
        raise CatalogError("a record needs an oid")
    extra = {**(extra or {}), **more}
    for k in extra:
        if not isinstance(k, str) or not _KEY.match(k):
            raise CatalogError(f"extra key {k!r} must be an identifier (letters, digits, _)")
        if k in RESERVED:
            raise CatalogError(f"{k!r} cannot be an extra key: it is a catalog field or "
                               "query keyword")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CatalogError(f"extra values must be JSON (str, number, bool, None, lists, "
                           f"dicts): {e}") from None
    t0, t1 = interval(time)
    fp = None if footprint is None else Footprint(footprint)
    return Row(str(oid), _text(filename, "filename"), _text(source, "source"),
               _text(version, "version"), t0, t1, _orbit(orbit), fp, extra)


# --- queries ----------------------------------------------------------------

_SCALAR = (str, int, float, bool, type(None))


@dataclass
class Query:
    """A validated query; backends turn it into SQL."""

    region: Footprint | None = None
    point: tuple[float, float, float] | None = None   # lat, lon, radius (radians)
    t0: int | None = None
    t1: int | None = None
    timed: bool = False
    oid: list[str] | None = None
    filename: list[str] | None = None
    source: list[str] | None = None
    version: list[str] | None = None
    orbit_range: tuple[int, int] | None = None         # lo <= orbit < hi
    orbit_in: list[int] | None = None
    extra: dict[str, list] = field(default_factory=dict)
    limit: int | None = None

    @property
    def spatial(self) -> bool:
        return self.region is not None or self.point is not None

    @property
    def point_xyz(self) -> tuple[float, float, float]:
        lat, lon, _ = self.point
        return to_xyz(lon, lat)


def _strings(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        if not all(isinstance(v, str) for v in value):
            raise CatalogError(f"{what}: expected strings, got {value!r}")
        return sorted(value)
    raise CatalogError(f"{what}: expected a string or a list of strings, got {value!r}")


def make_query(intersects: Any = None, within_km: Any = None, time: Any = None,
               oid: Any = None, filename: Any = None, source: Any = None,
               version: Any = None, orbit: Any = None, limit: Any = None,
               **extra: Any) -> Query:
    """Validate the keywords of `Catalog.query`."""
    q = Query()
    if intersects is not None:
        q.region = intersects if isinstance(intersects, Footprint) else Footprint(intersects)
    if within_km is not None:
        try:
            lat, lon, km = (float(v) for v in within_km)
        except (TypeError, ValueError):
            raise CatalogError(f"within_km is (lat, lon, km), got {within_km!r}") from None
        if not (math.isfinite(lat) and math.isfinite(lon) and math.isfinite(km)):
            raise CatalogError(f"within_km values must be finite: {within_km!r}")
        if not -90 <= lat <= 90:
            raise CatalogError(f"within_km latitude {lat} is outside [-90, 90]")
        if km < 0:
            raise CatalogError(f"within_km distance must be >= 0, got {km}")
        lon = lon if -180 <= lon <= 180 else (lon + 180) % 360 - 180
        q.point = (lat, lon, min(km / EARTH_RADIUS_KM, math.pi))
    if time is not None:
        q.t0, q.t1 = interval(time, "time", open_ends=True)
        q.timed = True
    q.oid = _strings(oid, "oid")
    q.filename = _strings(filename, "filename")
    q.source = _strings(source, "source")
    q.version = _strings(version, "version")
    if orbit is not None:
        if isinstance(orbit, range) and orbit.step == 1:
            q.orbit_range = (orbit.start, orbit.stop)
        elif isinstance(orbit, (range, list, tuple, set, frozenset)):
            q.orbit_in = sorted({_orbit(v) for v in orbit})
        else:
            q.orbit_in = [_orbit(orbit)]
    for k, v in extra.items():
        if not _KEY.match(k) or k in RESERVED:
            raise CatalogError(f"unknown query keyword {k!r}")
        vals = list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]
        for x in vals:
            if not isinstance(x, _SCALAR) or (isinstance(x, float) and not math.isfinite(x)):
                raise CatalogError(f"{k}: extra keys match str, number, bool or None, "
                                   f"got {x!r}")
        q.extra[k] = vals
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise CatalogError(f"limit must be a non-negative integer, got {limit!r}")
        q.limit = limit
    return q


def spatial_mask(q: Query, blobs: list[bytes]) -> list[bool]:
    """The exact spatial test of `q` on packed footprints (`Footprint.packed`):
    intersects the region and / or within the distance of the point."""
    if not blobs:
        return []
    try:
        from .geoset import PolySet
    except ImportError as e:  # numpy
        raise CatalogError(f"the catalog's exact spatial tests need numpy ({e}): "
                           "pip install numpy") from e
    ps = PolySet.from_packed(blobs)
    mask = None
    if q.region is not None:
        mask = ps.intersects(q.region.polyset())
    if q.point is not None:
        near = ps.distance(q.point_xyz) <= q.point[2] * (1 + 1e-12)
        mask = near if mask is None else mask & near
    return mask.tolist()


def result_order(rec: Record) -> tuple:
    """Results order: start time (none last), then oid (code points, as SQL's
    binary / "C" collation)."""
    return (rec._t0 is None, rec._t0 or 0, rec.oid)


def in_result_order(records: list, limit: int | None) -> list:
    """Records decided outside SQL, sorted as SQL would give them, up to `limit`."""
    records.sort(key=result_order)
    return records if limit is None else records[:limit]


# --- the catalog --------------------------------------------------------------

class Catalog(ABC):
    """A metadata catalog; `catalog` opens one. Thread-safe; close it when done."""

    url: str

    def add(self, oid: Any, *, filename: str | None = None, source: str | None = None,
            version: str | None = None, time: Any = None, orbit: int | None = None,
            footprint: Any = None, **extra: Any) -> None:
        """Add a record (replacing any record with the same oid).

        `time` is a datetime (naive = UTC), an ISO 8601 string or epoch
        seconds, or a (start, end) pair of those; `footprint` is WKT
        (POLYGON/MULTIPOLYGON), GeoJSON (dict or text) or a bbox (west,
        south, east, north); other keywords are JSON values kept in `extra`.
        """
        self._insert([make_row(oid, filename, source, version, time, orbit, footprint,
                               **extra)])

    def add_many(self, records: Iterable[dict | Record], *, chunk: int = 20000,
                 progress: bool = False) -> int:
        """Add many records (dicts of `add` keywords, or `Record`s), replacing
        records with the same oid (the last of an oid wins); returns how many
        were read. SQLite commits every `chunk` records; PostgreSQL loads
        everything in one transaction (COPY, indexes built after the data when
        the table was empty). `progress` shows a bar (tqdm)."""
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(unit="rec", desc="catalog ingest")
        count = [0]

        def batches() -> Iterator[list[Row]]:
            for batch in _batches(records, chunk):
                rows = {}
                for r in batch:
                    d = r.to_dict() if isinstance(r, Record) else r
                    if not isinstance(d, dict):
                        raise CatalogError(f"add_many takes dicts or Records, got {type(d)}")
                    row = make_row(**d)
                    rows[row.oid] = row
                yield list(rows.values())
                count[0] += len(batch)
                if bar is not None:
                    bar.update(len(batch))
                log.debug("catalog: %d records read", count[0])
        try:
            self._insert_batches(batches())
        finally:
            if bar is not None:
                bar.close()
        return count[0]

    def query(self, intersects: Any = None, *, within_km: Any = None, time: Any = None,
              source: Any = None, version: Any = None, orbit: Any = None,
              filename: Any = None, oid: Any = None, limit: int | None = None,
              **extra: Any) -> list[Record]:
        """Records matching every filter given, ordered by start time then oid.

        intersects: a region (WKT, GeoJSON or bbox) the footprint meets (touching counts);
        within_km: (lat, lon, km): footprint within km of the point on a sphere
            of radius `EARTH_RADIUS_KM` (0 when the point is inside);
        time: a datetime (records whose time contains it) or (t0, t1), records
            overlapping [t0, t1]; either end may be None;
        source, version, filename, oid: a string or a list of them;
        orbit: an int, a range (range(a, b) is a <= orbit < b) or a list;
        any other keyword: equality on that extra key (a list means any of).
        """
        return self._select(make_query(intersects, within_km, time, oid, filename, source,
                                       version, orbit, limit, **extra))

    def count(self, intersects: Any = None, **filters: Any) -> int:
        """How many records `query` would return (without `limit`)."""
        filters.pop("limit", None)
        return self._count(make_query(intersects, **filters))

    def __iter__(self) -> Iterator[Record]:
        return iter(self.query())

    def __len__(self) -> int:
        return self._count(Query())

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, str) and self.get(oid) is not None

    def get(self, oid: Any) -> Record | None:
        """The record of `oid`, or None."""
        found = self._select(make_query(oid=str(oid)))
        return found[0] if found else None

    def remove(self, oid: Any) -> bool:
        """Remove the record of `oid`; False when there was none."""
        return self._delete([str(oid)]) > 0

    def optimize(self) -> None:
        """Reorganise the stored records so that queries read less, after many
        `add`s or removals (bulk loads into an empty catalog need not).

        PostgreSQL: rewrites the table in space-time order (month, then
        place) and rebuilds its indexes, holding an exclusive lock meanwhile
        (queries wait); SQLite: refreshes the planner's statistics and
        defragments the file (VACUUM).
        """
        self._optimize()

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # backends implement these
    @abstractmethod
    def _insert(self, rows: list[Row]) -> None:
        ...

    def _insert_batches(self, batches: Iterator[list[Row]]) -> None:
        for rows in batches:
            self._insert(rows)

    @abstractmethod
    def _optimize(self) -> None:
        ...

    @abstractmethod
    def _delete(self, oids: list[str]) -> int:
        ...

    @abstractmethod
    def _select(self, q: Query) -> list[Record]:
        ...

    @abstractmethod
    def _count(self, q: Query) -> int:
        ...


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def catalog(url: str | Path | None = None, *, profile: str | None = None,
            table: str = "cohort_catalog", exact: str = "postgis") -> Catalog:
    """Open (creating if needed) a catalog.

    None: ``catalog.db`` (SQLite) in the profile folder; ``sqlite:///path``
    or a file path: SQLite; ``postgresql://...``: PostgreSQL with PostGIS, in
    `table`, deciding footprints exactly with PostGIS (``exact="postgis"``:
    ``ST_Intersects``/``ST_DWithin`` on the server) or here (``"client"``: the
    GIST index finds candidates, numpy decides them as the SQLite backend
    does — several times faster for queries with many candidates).
    """
    if url is None:
        from ..profile import profile_dir
        url = profile_dir(profile) / "catalog.db"
    url = str(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .catalog_pg import PostgisCatalog
        return PostgisCatalog(url, table=table, exact=exact)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path or path == "/":
            raise CatalogError(f"no file in {url!r}: use sqlite:///path/to/catalog.db")
        path = path[1:] if path.startswith("//") else path
    elif "://" in url:
        raise CatalogError(f"unknown catalog URL {url!r}: use sqlite:///path or "
                           "postgresql://user:pw@host:port/db")
    else:
        path = url
    from .catalog_sqlite import SqliteCatalog
    return SqliteCatalog(path)
