"""Polygons on the sphere (cohort.store.geo, cohort.store.geoset): parsing, ring
orientation, bounding boxes, and the exact intersects / contains / distance
tests on known cases — antimeridian swaths, polar caps, tiny polygons,
touching versus missing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cohort.errors import CatalogError
from cohort.store.geo import (EARTH_RADIUS_KM, Footprint, bbox_polygon, cap_boxes,
                              contains_point, lon_cover, parse, ring_area, to_geojson, to_xyz)
from cohort.store.geoset import PolySet

SQUARE = "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"
SWATH_AM = "POLYGON((170 -5, -170 -5, -170 5, 170 5, 170 -5))"       # crosses 180
NORTH_CAP = "POLYGON((0 80, 90 80, 180 80, -90 80, 0 80))"            # holds the N pole
SOUTH_TRI = "POLYGON((0 -80, 120 -80, -120 -80, 0 -80))"              # holds the S pole


def pset(*wkts):
    return PolySet(*zip(*[Footprint(w).pack() for w in wkts]))


def km(d_rad):
    return d_rad * EARTH_RADIUS_KM


# --- parsing and normalization ----------------------------------------------

def test_wkt_geojson_bbox_and_geo_interface_parse_alike():
    a = Footprint(SQUARE)
    b = Footprint({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10],
                                                        [0, 0]]]})
    c = Footprint('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
                  '[[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}}')

    class Shape:
        __geo_interface__ = {"type": "Polygon",
                             "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    d = Footprint(Shape())
    assert a.wkt == b.wkt == c.wkt == d.wkt == \
        "POLYGON((0.0 0.0,10.0 0.0,10.0 10.0,0.0 10.0,0.0 0.0))"
    assert Footprint("srid=4326;polygon ((0 0,10 0,10 10,0 10,0 0))").wkt == a.wkt
    assert to_geojson(a.wkt)["type"] == "Polygon"
    m = Footprint("MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))")
    assert m.npolys == 2 and to_geojson(m.wkt)["type"] == "MultiPolygon"
    assert Footprint(m.wkt).wkt == m.wkt
    box = Footprint((170, -5, -170, 5))   # west > east: crosses the antimeridian
    assert len(box.boxes) == 2


def test_unclosed_rings_duplicates_and_wrapped_longitudes_are_normalized():
    f = Footprint("POLYGON((170 -5, 190 -5, 190 -5, 190 5, 170 5))")
    assert f.wkt == "POLYGON((170.0 -5.0,-170.0 -5.0,-170.0 5.0,170.0 5.0,170.0 -5.0))"
    assert Footprint(SWATH_AM).boxes == f.boxes


@pytest.mark.parametrize("bad", [
    "POINT(1 2)", "POLYGON((0 0, 1 1))", "POLYGON((0 0, 10 0, 10 95, 0 0))",
    "POLYGON((0 0, 1 0, 2 0, 0 0))",                    # no area: one great circle
    "POLYGON((0 80, 180 80, 180 70, 0 70, 0 80))",      # no area: along meridians 0/180
    "POLYGON((0 0, 180 0, 90 10, 0 0))",                # antipodal edge
    "POLYGON((0 0, 10 0, 10 x, 0 0))", "POLYGON((0 0, 10 0, 10 10, 0 0)",
    "POLYGON((0 0, 10 0, nan 10, 0 0))", "SRID=3857;POLYGON((0 0,1 0,1 1,0 0))",
    {"type": "Point", "coordinates": [0, 0]}, '{"type": "Polygon"', 42, (0, 0, 0, 0),
    (0, 10, 200, 0),
])
def test_bad_footprints_raise_catalog_error(bad):
    with pytest.raises(CatalogError):
        Footprint(bad)


def test_ring_orientation_does_not_matter_smaller_region_wins():
    cw = Footprint("POLYGON((0 0, 0 10, 10 10, 10 0, 0 0))")
    ccw = Footprint(SQUARE)
    assert cw.area == pytest.approx(ccw.area) and cw.area < 0.05
    for cap in (NORTH_CAP, "POLYGON((0 80, -90 80, 180 80, 90 80, 0 80))"):
        f = Footprint(cap)
        assert contains_point(f, (0, 0, 1)) and not contains_point(f, (0, 0, -1))
        assert f.area < 0.2
    s = Footprint(SOUTH_TRI)
    assert contains_point(s, (0, 0, -1)) and not contains_point(s, (0, 0, 1))
    assert ring_area(s.rings[0].xyz) < 2 * math.pi


def test_area_of_an_octant():
    f = Footprint("POLYGON((0 0, 90 0, 0 90, 0 0))")
    assert f.area == pytest.approx(4 * math.pi / 8)


# --- bounding boxes -------------------------------------------------------------

def test_boxes_bulge_poleward_and_split_at_the_antimeridian():
    (w, e, s, n), = Footprint(SQUARE).boxes
    assert w <= 0 and e >= 10 and s <= 0 and 10.03 < n < 10.05   # great-circle top edge
    boxes = sorted(Footprint(SWATH_AM).boxes)
    assert boxes[0][0] == -180 and boxes[0][1] >= -170
    assert boxes[1][0] <= 170 and boxes[1][1] == 180


def test_boxes_of_polar_polygons_reach_the_pole_at_every_longitude():
    (w, e, s, n), = Footprint(NORTH_CAP).boxes
    assert (w, e, n) == (-180, 180, 90) and 79.9 < s <= 80
    (w, e, s, n), = Footprint(SOUTH_TRI).boxes
    assert (w, e, s) == (-180, 180, -90) and -80 <= n < -79.9
    # a swath passing near (not over) the pole: wide in lon, not reaching 90
    near = Footprint("POLYGON((-10 80, 160 85, 165 84, -10 80))")
    assert not contains_point(near, (0, 0, 1))
    (w, e, s, n), = near.boxes
    assert (w, e) == pytest.approx((-10, 165)) and 89.6 < n < 89.7 and 79.9 < s <= 80
    # an edge over the pole reaches it, and only that pole
    (w, e, s, n), = Footprint("POLYGON((10 70, 12 70, -171 70, -169 70, 10 70))").boxes
    assert (w, e, n) == (-180, 180, 90) and 69.9 < s <= 70


def test_lon_cover_and_cap_boxes():
    assert lon_cover([(170, 20)]) == (170, 20)
    assert lon_cover([(-10, 20), (100, 10)]) == (-10, 120)
    assert lon_cover([(0, 120), (120, 120), (240, 120)]) is None
    # intervals on both sides of 180, some wrapping over it
    assert lon_cover([(177.5, 5), (177.5, 7), (-175.5, 5), (-177, 6.5)]) == \
        pytest.approx((177.5, 12))
    assert lon_cover([(170, 20), (-175, 10), (-10, 5)]) == (170, 185)
    assert len(cap_boxes(0, 179.9, 50 / EARTH_RADIUS_KM)) == 2
    (w, e, s, n), = cap_boxes(89.9, 0, 50 / EARTH_RADIUS_KM)
    assert (w, e, n) == (-180, 180, 90)
    (w, e, s, n), = cap_boxes(60, 10, 111.19 / EARTH_RADIUS_KM)
    assert s == pytest.approx(59, abs=1e-3) and e - w == pytest.approx(4, abs=0.01)


def test_bbox_polygon_follows_parallels():
    ring = bbox_polygon(0, 50, 10, 60)[0]
    assert len(ring) == 2 * 11 + 1 and ring[0] == ring[-1]
    assert parse((0, 50, 10, 60)) == [bbox_polygon(0, 50, 10, 60)]


# --- exact tests ------------------------------------------------------------------

def test_contains_across_the_antimeridian_and_at_poles():
    ps = pset(SQUARE, SWATH_AM, NORTH_CAP, SOUTH_TRI)
    assert ps.contains(to_xyz(5, 5)).tolist() == [True, False, False, False]
    assert ps.contains(to_xyz(180, 0)).tolist() == [False, True, False, False]
    assert ps.contains(to_xyz(-175, 4.9)).tolist() == [False, True, False, False]
    assert ps.contains(to_xyz(0, 0)).tolist() == [True, False, False, False]   # a corner
    assert ps.contains((0, 0, 1.0)).tolist() == [False, False, True, False]
    assert ps.contains(to_xyz(123, 89.99)).tolist() == [False, False, True, False]
    assert ps.contains((0, 0, -1.0)).tolist() == [False, False, False, True]
    # the great-circle edge between (0,80) and (90,80) bulges north: 80.5 at lon 45 is out
    assert not ps.contains(to_xyz(45, 81))[2] and ps.contains(to_xyz(45, 85))[2]


def test_holes_and_multipolygons():
    ps = pset("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0),(2 2, 8 2, 8 8, 2 8, 2 2))",
              "MULTIPOLYGON(((0 0,1 0,1 1,0 1,0 0)),((50 50,51 50,51 51,50 51,50 50)))")
    assert ps.contains(to_xyz(5, 5)).tolist() == [False, False]
    assert ps.contains(to_xyz(1, 5)).tolist() == [True, False]
    assert ps.contains(to_xyz(50.5, 50.5)).tolist() == [False, True]
    inner = Footprint("POLYGON((4 4, 6 4, 6 6, 4 6, 4 4))").polyset()
    assert ps.intersects(inner).tolist() == [False, False]
    big = Footprint("POLYGON((45 45, 60 45, 60 60, 45 60, 45 45))").polyset()
    assert ps.intersects(big).tolist() == [False, True]


def test_intersects_touching_versus_missing():
    ps = pset(SQUARE)
    touch_edge = Footprint("POLYGON((10 0, 20 0, 20 10, 10 10, 10 0))").polyset()
    touch_corner = Footprint("POLYGON((10 -10, 20 -10, 10 0, 10 -10))").polyset()
    miss = Footprint("POLYGON((10.001 0, 20 0, 20 10, 10.001 10, 10.001 0))").polyset()
    inside = Footprint("POLYGON((4 4, 6 4, 6 6, 4 6, 4 4))").polyset()
    around = Footprint("POLYGON((-1 -1, 11 -1, 11 11, -1 11, -1 -1))").polyset()
    crossing = Footprint("POLYGON((5 -5, 6 -5, 6 15, 5 15, 5 -5))").polyset()
    assert ps.intersects(touch_edge)[0] and ps.intersects(touch_corner)[0]
    assert not ps.intersects(miss)[0]
    assert ps.intersects(inside)[0] and ps.intersects(around)[0] and ps.intersects(crossing)[0]


def test_intersects_antimeridian_swaths_and_polar_regions():
    ps = pset(SWATH_AM, NORTH_CAP, SQUARE)
    east = Footprint("POLYGON((-175 -1, -172 -1, -172 1, -175 1, -175 -1))").polyset()
    west = Footprint("POLYGON((172 -1, 175 -1, 175 1, 172 1, 172 -1))").polyset()
    far = Footprint("POLYGON((-160 -1, -150 -1, -150 1, -160 1, -160 -1))").polyset()
    assert ps.intersects(east).tolist() == [True, False, False]
    assert ps.intersects(west).tolist() == [True, False, False]
    assert ps.intersects(far).tolist() == [False, False, False]
    # a thin swath over the pole from lon 10 to lon -170 meets the cap
    over = Footprint("POLYGON((10 70, 12 70, -171 70, -169 70, 10 70))").polyset()
    assert ps.intersects(over).tolist() == [False, True, False]
    # a small region near the pole inside the cap: no edges cross
    tiny = Footprint("POLYGON((33 89, 34 89, 34 89.1, 33 89.1, 33 89))").polyset()
    assert ps.intersects(tiny).tolist() == [False, True, False]


def test_tiny_polygons():
    d = 1e-6  # about 11 cm
    f = f"POLYGON((5 5, {5 + d} 5, {5 + d} {5 + d}, 5 {5 + d}, 5 5))"
    ps = pset(f)
    assert ps.contains(to_xyz(5 + d / 2, 5 + d / 2))[0]
    assert not ps.contains(to_xyz(5 + 3 * d, 5 + d / 2))[0]
    q = Footprint("POLYGON((4 4, 6 4, 6 6, 4 6, 4 4))").polyset()
    assert ps.intersects(q)[0]
    assert km(ps.distance(to_xyz(5, 5 + 1))[0]) == pytest.approx(111.195, abs=0.01)


def test_distance_near_the_pole_and_across_the_dateline():
    ps = pset(NORTH_CAP, SWATH_AM, SQUARE)
    d = km(ps.distance((0, 0, 1.0)))
    assert d[0] == 0
    # north of the swath's top edge at lon 180, where that great-circle edge peaks
    top = math.degrees(math.atan(math.tan(math.radians(5)) / math.cos(math.radians(10))))
    for lon in (180, -180):
        d = km(ps.distance(to_xyz(lon, 20)))
        assert d[1] == pytest.approx(math.radians(20 - top) * EARTH_RADIUS_KM, rel=1e-9)
    # from lat 70 at lon 0 to the cap's vertex (0, 80): 10 degrees
    d = km(ps.distance(to_xyz(0, 70)))
    assert d[0] == pytest.approx(10 * math.pi / 180 * EARTH_RADIUS_KM, rel=1e-9)
    # perpendicular to an edge: the midpoint of edge (0,0)-(10,0) seen from (5,-1)
    d = km(ps.distance(to_xyz(5, -1)))
    assert d[2] == pytest.approx(math.pi / 180 * EARTH_RADIUS_KM, rel=1e-3)


def test_polyset_matches_pure_python_containment_on_random_points():
    rng = np.random.default_rng(7)
    wkts = [SQUARE, SWATH_AM, NORTH_CAP, SOUTH_TRI,
            "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0),(2 2, 8 2, 8 8, 2 8, 2 2))"]
    fps = [Footprint(w) for w in wkts]
    ps = PolySet(*zip(*[f.pack() for f in fps]))
    pts = rng.normal(size=(300, 3))
    pts /= np.linalg.norm(pts, axis=1)[:, None]
    pts[:100] = [to_xyz(lo, la) for lo, la in zip(rng.uniform(-180, 180, 100),
                                                  rng.uniform(-10, 15, 100))]
    for p in pts:
        got = ps.contains(p).tolist()
        want = [contains_point(f, tuple(p)) for f in fps]
        assert got == want
    for i, f in enumerate(fps):
        one = f.polyset()
        assert one.contains_points(pts).tolist() == [contains_point(f, tuple(p)) for p in pts]
