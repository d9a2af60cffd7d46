"""Polygons on the sphere, for the catalog's SQLite backend (and its input checks).

Footprints and query regions are polygons in lon/lat degrees (SRID 4326) on a
sphere: every edge is the shorter great-circle arc between its two vertices, as
in PostGIS ``geography``. So an edge from lon 170 to lon -170 crosses the
antimeridian (it is 20 degrees long, not 340), and an edge between two points
on the same parallel bulges poleward.

A ring splits the sphere in two; the polygon is the *smaller* of the two
regions, whichever way the ring runs (the rule PostGIS geography follows for
rings smaller than a hemisphere). Holes are rings too: the region inside an
outer ring and outside its holes. A ring may go around a pole.

The module has two halves:

* `Footprint` — parse WKT (``POLYGON``/``MULTIPOLYGON``), GeoJSON or a bbox;
  validate; orient each ring (interior on the left); lon/lat bounding boxes
  for an R*Tree (two when a polygon crosses the antimeridian, lat reaching
  +-90 with all longitudes when it holds a pole); pack it for storage.
* `contains_point` — the exact point-in-polygon test on the sphere.

`cohort.store.geoset` runs the same tests on many packed footprints at once
with numpy.
"""

from __future__ import annotations

import json
import math
import re
import struct
from array import array
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import CatalogError

#: Mean Earth radius (km) of the sphere distances are measured on: the WGS84
#: mean radius (2a + b) / 3, the sphere PostGIS uses with ``use_spheroid=false``.
EARTH_RADIUS_KM = 6371.0088

#: Tolerance in radians (about 0.6 micrometres on the Earth) under which two
#: things count as touching.
EPS = 1e-13

_DEG = math.pi / 180.0
PACK_MAGIC = 0x2C0407  # ends a packed multi-ring footprint (see Footprint.packed)

LonLat = tuple[float, float]
Ring = list[LonLat]
Polygon = list[Ring]


# --- parsing ----------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_WKT_HEAD = re.compile(r"^\s*(?:SRID\s*=\s*(\d+)\s*;)?\s*(MULTIPOLYGON|POLYGON)\s*(Z|M|ZM)?\s*\(",
                       re.IGNORECASE)
_WKT_RING = re.compile(r"\(([^()]*)\)")


def _wkt_polygons(text: str) -> list[Polygon]:
    m = _WKT_HEAD.match(text)
    if not m:
        raise CatalogError(f"not a POLYGON or MULTIPOLYGON in WKT: {text[:80]!r}")
    if m.group(1) and m.group(1) != "4326":
        raise CatalogError(f"footprints are lon/lat on SRID 4326, not SRID {m.group(1)}")
    kind = m.group(2).upper()
    body = text[m.end() - 1:].strip()
    if body.count("(") != body.count(")"):
        raise CatalogError(f"unbalanced parentheses in WKT: {text[:80]!r}")
    polys: list[Polygon] = []
    depth, current = 0, None
    # walk the parentheses: depth 1 = multipolygon, 2 = polygon, 3 = ring (for MULTI)
    ring_depth = 3 if kind == "MULTIPOLYGON" else 2
    i = 0
    while i < len(body):
        c = body[i]
        if c == "(":
            depth += 1
            if depth == ring_depth - 1:
                current = []
                polys.append(current)
            elif depth == ring_depth:
                j = body.index(")", i)
                current.append(_coords(body[i + 1:j]))
                i = j
                depth -= 1
            elif depth > ring_depth:
                raise CatalogError(f"too deeply nested WKT: {text[:80]!r}")
        elif c == ")":
            depth -= 1
        elif not (c.isspace() or c == ","):
            raise CatalogError(f"unexpected {c!r} in WKT: {text[:80]!r}")
        i += 1
    if kind == "POLYGON" and len(polys) != 1:
        raise CatalogError(f"a WKT POLYGON has one set of rings: {text[:80]!r}")
    return polys


def _coords(text: str) -> Ring:
    out: Ring = []
    for pt in text.split(","):
        nums = pt.split()
        if len(nums) < 2:
            raise CatalogError(f"bad WKT coordinate {pt.strip()!r}")
        try:
            out.append((float(nums[0]), float(nums[1])))
        except ValueError:
            raise CatalogError(f"bad WKT coordinate {pt.strip()!r}") from None
    return out


def _geojson_polygons(obj: dict) -> list[Polygon]:
    kind = obj.get("type")
    if kind == "Feature":
        return _geojson_polygons(obj.get("geometry") or {})
    coords = obj.get("coordinates")
    try:
        if kind == "Polygon":
            return [[[(float(p[0]), float(p[1])) for p in ring] for ring in coords]]
        if kind == "MultiPolygon":
            return [[[(float(p[0]), float(p[1])) for p in ring] for ring in poly]
                    for poly in coords]
    except (TypeError, ValueError, IndexError):
        raise CatalogError(f"bad GeoJSON {kind} coordinates") from None
    raise CatalogError(f"a footprint is a GeoJSON Polygon or MultiPolygon, not {kind!r}")


def bbox_polygon(west: float, south: float, east: float, north: float,
                 step: float = 1.0) -> Polygon:  # noqa: D401
    """The lon/lat box as a polygon: meridians east and west, parallels north and
    south followed with a vertex every `step` degrees. ``west > east`` crosses
    the antimeridian."""
    vals = [float(v) for v in (west, south, east, north)]
    if not all(math.isfinite(v) for v in vals):
        raise CatalogError(f"bbox values must be finite: {(west, south, east, north)}")
    west, south, east, north = vals
    if not -90 <= south < north <= 90:
        raise CatalogError(f"bbox needs -90 <= south < north <= 90, got {south}, {north}")
    width = (east - west) % 360.0 or (360.0 if east != west else 0.0)
    if width <= 0 or width >= 180:
        raise CatalogError("a bbox spans less than 180 degrees of longitude; "
                           "pass a polygon for wider regions")
    n = max(1, math.ceil(width / step))
    lons = [west + width * k / n for k in range(n + 1)]
    ring = [(lo, south) for lo in lons] + [(lo, north) for lo in reversed(lons)]
    return [ring + [ring[0]]]


def parse(value: Any) -> list[Polygon]:
    """Polygons (rings of (lon, lat)) from WKT, GeoJSON (dict or text), an object
    with ``__geo_interface__`` or a bbox ``(west, south, east, north)``."""
    if hasattr(value, "__geo_interface__"):
        value = value.__geo_interface__
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("{"):
            try:
                value = json.loads(s)
            except ValueError as e:
                raise CatalogError(f"bad GeoJSON: {e}") from None
        else:
            return _wkt_polygons(s)
    if isinstance(value, dict):
        return _geojson_polygons(value)
    if isinstance(value, (tuple, list)) and len(value) == 4 and all(
            isinstance(v, (int, float)) for v in value):
        return [bbox_polygon(*value)]
    raise CatalogError(f"cannot read a footprint from {type(value).__name__}: give WKT, "
                       "GeoJSON or a bbox (west, south, east, north)")


# --- vectors ----------------------------------------------------------------

def to_xyz(lon: float, lat: float) -> tuple[float, float, float]:
    """Unit vector of a lon/lat point (degrees)."""
    la, lo = lat * _DEG, lon * _DEG
    c = math.cos(la)
    return (c * math.cos(lo), c * math.sin(lo), math.sin(la))


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _tri_area(a, b, c) -> float:
    """Signed area (steradians) of the small spherical triangle abc (+ when ccw)."""
    num = _dot(a, _cross(b, c))
    den = 1.0 + _dot(a, b) + _dot(b, c) + _dot(c, a)
    return 2.0 * math.atan2(num, den)


def ring_area(xyz: Sequence[tuple[float, float, float]]) -> float:
    """Area (steradians, in [0, 4 pi)) of the region left of the ring."""
    a0 = xyz[0]
    total = 0.0
    for i in range(1, len(xyz) - 1):
        total += _tri_area(a0, xyz[i], xyz[i + 1])
    return total % (4 * math.pi)


def _wrap(lon: float) -> float:
    return lon if -180.0 <= lon <= 180.0 else (lon + 180.0) % 360.0 - 180.0


# --- footprints -------------------------------------------------------------

@dataclass
class _Ring:
    lonlat: list[LonLat]          # as given (lon wrapped), not closed
    xyz: list[tuple[float, float, float]]  # oriented: interior on the left
    poly: int
    hole: bool
    area: float = 0.0             # steradians


class Footprint:
    """A validated polygon or multipolygon on the sphere.

    `wkt` is its normalized text (longitudes in [-180, 180], rings closed),
    `boxes` its lon/lat bounding boxes ``(west, east, south, north)`` (one or
    two; never crossing the antimeridian), `area` in steradians.
    """

    def __init__(self, value: Any):
        polys = parse(value)
        if not polys:
            raise CatalogError("empty footprint")
        self.rings: list[_Ring] = []
        for pi, poly in enumerate(polys):
            if not poly:
                raise CatalogError("a polygon needs at least an outer ring")
            for ri, ring in enumerate(poly):
                self.rings.append(self._ring(ring, pi, ri > 0))
        self.npolys = len(polys)
        self.area = sum((-1 if r.hole else 1) * r.area for r in self.rings)
        self.boxes = _boxes(self)

    @staticmethod
    def _ring(ring: Ring, poly: int, hole: bool) -> _Ring:
        pts: list[LonLat] = []
        xyz: list[tuple[float, float, float]] = []
        for lon, lat in ring:
            if not (math.isfinite(lon) and math.isfinite(lat)):
                raise CatalogError(f"footprint coordinates must be finite: ({lon}, {lat})")
            if not -90.0 <= lat <= 90.0:
                raise CatalogError(f"latitude {lat} is outside [-90, 90] "
                                   "(coordinates are (lon, lat))")
            v = to_xyz(lon, lat)
            if xyz and _near(v, xyz[-1]):
                continue  # repeated vertex (or the closing one)
            pts.append((_wrap(lon), lat))
            xyz.append(v)
        while len(xyz) > 1 and _near(xyz[0], xyz[-1]):
            pts.pop()
            xyz.pop()
        if len(xyz) < 3:
            raise CatalogError("a ring needs at least 3 distinct vertices")
        for i in range(len(xyz)):
            a, b = xyz[i], xyz[(i + 1) % len(xyz)]
            if _dot(a, b) < -1 + 1e-15:
                raise CatalogError(f"an edge joins two antipodal points {pts[i]} and "
                                   f"{pts[(i + 1) % len(pts)]}: its great circle is "
                                   "undefined; add a vertex between them")
        if _self_crossing(xyz):
            raise CatalogError(f"a ring crosses itself: {_ring_text(pts)}")
        area = ring_area(xyz)
        if area > 2 * math.pi:
            xyz = xyz[::-1]
            area = 4 * math.pi - area
        perimeter = sum(math.dist(xyz[i - 1], xyz[i]) for i in range(len(xyz)))
        if area < 1e-12 * perimeter ** 2:
            raise CatalogError("a ring encloses no area (all vertices on one great circle?)")
        return _Ring(pts, xyz, poly, hole, area)

    @property
    def wkt(self) -> str:
        def ring(r: _Ring) -> str:
            pts = r.lonlat + [r.lonlat[0]]
            return "(" + ",".join(f"{lo!r} {la!r}" for lo, la in pts) + ")"
        polys: dict[int, list[str]] = {}
        for r in self.rings:
            polys.setdefault(r.poly, []).append(ring(r))
        if self.npolys == 1:
            return "POLYGON(" + ",".join(polys[0]) + ")"
        return "MULTIPOLYGON(" + ",".join("(" + ",".join(v) + ")" for v in polys.values()) + ")"

    def pack(self) -> tuple[bytes, bytes | None]:
        """(vertices, ring table): the oriented unit vectors as float64 xyz and,
        unless it is one ring, int32 (polygon, hole, vertex count) per ring."""
        coords = array("d")
        for r in self.rings:
            for v in r.xyz:
                coords.extend(v)
        if len(self.rings) == 1:
            return coords.tobytes(), None
        table = array("i")
        for r in self.rings:
            table.extend((r.poly, int(r.hole), len(r.xyz)))
        return coords.tobytes(), table.tobytes()

    def packed(self) -> bytes:
        """`pack` as one blob: the vertices, then (unless it is one ring) the ring
        table and an 8-byte trailer (ring count, `PACK_MAGIC`) — a length that
        is never a multiple of 24. `cohort.store.geoset.PolySet.from_packed`
        reads it."""
        coords, table = self.pack()
        if table is None:
            return coords
        return coords + table + struct.pack("<ii", len(self.rings), PACK_MAGIC)

    def polyset(self):
        """This footprint as a one-member `cohort.store.geoset.PolySet`."""
        from .geoset import PolySet
        blob, table = self.pack()
        return PolySet([blob], [table])


def _ring_text(pts: list[LonLat]) -> str:
    text = ", ".join(f"{lo:g} {la:g}" for lo, la in pts[:6])
    return f"({text}{', ...' if len(pts) > 6 else ''})"


def _self_crossing(xyz) -> bool:
    """Do two non-adjacent edges of the ring cross (strictly)?"""
    n = len(xyz)
    if n < 4:
        return False
    if n > 24:
        from .geoset import ring_self_crossing
        return ring_self_crossing(xyz)
    normals = [_cross(xyz[i], xyz[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        a, b, ab = xyz[i], xyz[(i + 1) % n], normals[i]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing vertex
            c, d, cd = xyz[j], xyz[(j + 1) % n], normals[j]
            acb, bda = -_dot(ab, c), _dot(ab, d)
            if acb * bda <= 0:
                continue
            if acb * -_dot(cd, b) > 0 and acb * _dot(cd, a) > 0:
                return True
    return False


def _near(a, b) -> bool:
    d = (a[0] - b[0], a[1] - b[1], a[2] - b[2])
    return _dot(d, d) < 1e-28


def to_geojson(wkt: str) -> dict:
    """The GeoJSON geometry of a WKT polygon or multipolygon."""
    polys = _wkt_polygons(wkt)
    if len(polys) == 1 and wkt.lstrip().upper().startswith("POLYGON"):
        return {"type": "Polygon", "coordinates": [[list(p) for p in r] for r in polys[0]]}
    return {"type": "MultiPolygon",
            "coordinates": [[[list(p) for p in r] for r in poly] for poly in polys]}


# --- bounding boxes ---------------------------------------------------------

def _edge_lat_extremes(a, b) -> tuple[float, float]:
    """(min z, max z) over the minor arc ab."""
    lo, hi = min(a[2], b[2]), max(a[2], b[2])
    n = _cross(a, b)
    nn = math.sqrt(_dot(n, n))
    if nn < 1e-300:
        return lo, hi
    # z rises leaving a and falls arriving at b -> a maximum inside the arc
    ta_z = n[0] * a[1] - n[1] * a[0]
    tb_z = n[0] * b[1] - n[1] * b[0]
    zext = math.sqrt(max(0.0, 1.0 - (n[2] / nn) ** 2))
    if ta_z > 0 and tb_z < 0:
        hi = max(hi, zext)
    if ta_z < 0 and tb_z > 0:
        lo = min(lo, -zext)
    return lo, hi


def lon_cover(intervals: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The shortest lon interval (start, width) covering all (start, width)
    intervals on the circle; None when they cover it all."""
    ivs = sorted(((s + 180.0) % 360.0, w) for s, w in intervals)
    merged: list[list[float]] = []
    for s, w in ivs:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], s + w)
        else:
            merged.append([s, s + w])
    if not merged:
        return None
    if merged[-1][1] - merged[0][0] >= 360.0:
        # the last may wrap over the first ones
        end = merged[-1][1] - 360.0
        while len(merged) > 1 and merged[0][0] <= end:
            first = merged.pop(0)
            end = max(end, first[1])
            merged[-1][1] = end + 360.0
        if merged[-1][1] - merged[0][0] >= 360.0 and len(merged) == 1:
            return None
    # largest gap between consecutive merged intervals (circularly)
    best_gap, best_i = -1.0, 0
    for i in range(len(merged)):
        nxt = merged[(i + 1) % len(merged)][0] + (360.0 if i + 1 == len(merged) else 0.0)
        gap = nxt - merged[i][1]
        if gap > best_gap:
            best_gap, best_i = gap, i
    if best_gap <= 0:
        return None
    start = merged[(best_i + 1) % len(merged)][0]
    return (start - 180.0, 360.0 - best_gap)


def split_box(start: float, width: float, south: float, north: float,
              pad: float = 1e-9) -> list[tuple[float, float, float, float]]:
    """Boxes (west, east, south, north) for the lon interval [start, start + width],
    split at the antimeridian; padded by `pad` degrees."""
    south, north = max(-90.0, south - pad), min(90.0, north + pad)
    if width >= 360.0 - 2 * pad:
        return [(-180.0, 180.0, south, north)]
    w = start - pad
    e = start + width + pad
    w = (w + 180.0) % 360.0 - 180.0
    e = w + width + 2 * pad
    if e <= 180.0:
        return [(w, e, south, north)]
    return [(w, 180.0, south, north), (-180.0, e - 360.0, south, north)]


def _boxes(fp: Footprint) -> list[tuple[float, float, float, float]]:
    zlo, zhi = 1.0, -1.0
    intervals: list[tuple[float, float]] = []
    winding_by_poly: dict[int, float] = {}
    polar_n = polar_s = False
    for r in fp.rings:
        xyz = r.xyz
        n = len(xyz)
        wind = 0.0
        for i in range(n):
            a, b = xyz[i], xyz[(i + 1) % n]
            lo, hi = _edge_lat_extremes(a, b)
            zlo, zhi = min(zlo, lo), max(zhi, hi)
            if r.hole:
                continue
            la, lb = math.atan2(a[1], a[0]) / _DEG, math.atan2(b[1], b[0]) / _DEG
            d = (lb - la + 180.0) % 360.0 - 180.0
            if abs(a[2]) > 1 - 1e-15 or abs(d) > 180.0 - 1e-9:
                # a vertex on a pole or an edge over one
                polar_n |= a[2] + b[2] > 0
                polar_s |= a[2] + b[2] < 0
            intervals.append((la, d) if d >= 0 else (lb, -d))
            wind += d
        if not r.hole:
            winding_by_poly[r.poly] = wind
    south = math.asin(max(-1.0, min(1.0, zlo))) / _DEG
    north = math.asin(max(-1.0, min(1.0, zhi))) / _DEG
    cover = lon_cover(intervals)
    if polar_n or polar_s or cover is None:
        # the rings reach all longitudes: which poles are inside?
        if polar_n or contains_point(fp, (0.0, 0.0, 1.0)):
            north = 90.0
        if polar_s or contains_point(fp, (0.0, 0.0, -1.0)):
            south = -90.0
        if north == 90.0 or south == -90.0:
            cover = None
    elif cover[1] >= 180.0 or any(abs(w) > 1 for w in winding_by_poly.values()):
        if contains_point(fp, (0.0, 0.0, 1.0)):
            north, cover = 90.0, None
        if contains_point(fp, (0.0, 0.0, -1.0)):
            south, cover = -90.0, None
    if cover is None:
        return [(-180.0, 180.0, max(-90.0, south - 1e-9), min(90.0, north + 1e-9))]
    return split_box(cover[0], cover[1], south, north)


def cap_boxes(lat: float, lon: float, radius: float) -> list[tuple[float, float, float, float]]:
    """Lon/lat boxes around the spherical cap of `radius` radians at (lat, lon)."""
    d = radius / _DEG
    south, north = lat - d, lat + d
    if north >= 90.0 or south <= -90.0 or radius >= math.pi / 2:
        return [(-180.0, 180.0, max(-90.0, south), min(90.0, north))]
    half = math.asin(min(1.0, math.sin(radius) / math.cos(lat * _DEG))) / _DEG
    return split_box(lon - half, 2 * half, south, north, pad=1e-7)


# --- point in polygon (one footprint, pure Python) --------------------------

def contains_point(fp: Footprint, p) -> bool:
    """Is the unit vector `p` in (or on the boundary of) the footprint?"""
    inside: dict[int, bool] = {}
    for r in fp.rings:
        if r.hole:
            continue
        inside[r.poly] = _ring_contains(r.xyz, p)
    for r in fp.rings:
        if r.hole and inside.get(r.poly) and _ring_contains(r.xyz, p, boundary=False):
            inside[r.poly] = False
    return any(inside.values())


def _ring_contains(xyz, p, boundary: bool = True) -> bool:
    n = len(xyz)
    for ref in range(n):
        res = _ring_contains_ref(xyz, p, ref)
        if res is not None:
            return res
    return boundary  # every reference edge was degenerate: p is on the boundary


def _ring_contains_ref(xyz, p, ref: int):
    n = len(xyz)
    a, b = xyz[ref], xyz[(ref + 1) % n]
    m = (a[0] + b[0], a[1] + b[1], a[2] + b[2])
    mm = math.sqrt(_dot(m, m))
    m = (m[0] / mm, m[1] / mm, m[2] / mm)
    nref = _unit(_cross(a, b))
    side = _dot(p, nref)
    pm = _cross(p, m)
    pmn = math.sqrt(_dot(pm, pm))
    if abs(side) < EPS or pmn < EPS:
        return None
    pm = (pm[0] / pmn, pm[1] / pmn, pm[2] / pmn)
    odd = False
    for i in range(n):
        if i == ref:
            continue
        c, d = xyz[i], xyz[(i + 1) % n]
        cd = _unit(_cross(c, d))
        s_c, s_d = _dot(pm, c), _dot(pm, d)
        t_p, t_m = _dot(cd, p), _dot(cd, m)
        if (s_c > EPS and s_d > EPS) or (s_c < -EPS and s_d < -EPS) or \
                (t_p > EPS and t_m > EPS) or (t_p < -EPS and t_m < -EPS):
            continue
        if min(abs(s_c), abs(s_d), abs(t_p), abs(t_m)) < EPS:
            if _touches(p, m, pm, c, d, cd, s_c, s_d, t_p, t_m):
                return None  # the arc runs through a vertex or along an edge
            continue  # the circles meet at an end of one arc, off the other one
        # c, d straddle the circle pm and p, m straddle cd: same crossing point?
        if s_c * t_m > 0:   # (s2's acb * cbd > 0 with a=p, b=m)
            odd = not odd
    return (side > 0) != odd


def _on_arc(q, a, b, n) -> bool:
    """Is q (on the circle of the minor arc ab, unit normal n) within the arc?"""
    return _dot(q, _cross(n, a)) >= -EPS and _dot(q, _cross(b, n)) >= -EPS


def _touches(p, m, pm, c, d, cd, s_c, s_d, t_p, t_m) -> bool:
    """Given that an end of arc pm lies on circle cd or an end of cd on circle
    pm: does that end lie on the other arc?"""
    return ((abs(s_c) < EPS and _on_arc(c, p, m, pm)) or (abs(s_d) < EPS and _on_arc(d, p, m, pm))
            or (abs(t_p) < EPS and _on_arc(p, c, d, cd))
            or (abs(t_m) < EPS and _on_arc(m, c, d, cd)))


def _unit(v):
    n = math.sqrt(_dot(v, v))
    return (v[0] / n, v[1] / n, v[2] / n)
