"""Synthetic satellite swath files: a year of 5-minute granules from one
sun-synchronous imager, written as gzip-compressed HDF5 (``*.h5.gz``).

    python examples/earth_observation/generate.py --n-files 20 --out /tmp/granules

Each file looks like a small Level-1C product:

    /                         attrs: platform, instrument, orbit, start_time, end_time
                                     (ISO 8601, UTC), footprint (WKT, lon/lat), level
    /reflectance/green        uint16 (241, 121), reflectance = value * scale_factor
    /reflectance/nir          uint16 (241, 121)  (near infrared)
    /geolocation/latitude     float32 (31, 16): tie points every 8 pixels
    /geolocation/longitude    float32 (31, 16)

The orbit is a simple model of a polar, sun-synchronous satellite (98.6 deg
inclination, 100.6 min period, descending over the equator at 10:30 local
time). Only the daylight (descending) half of each orbit is imaged. Half the
granules are passes over the study area (the German Bight and Wadden Sea),
as in an archive staged for a coastal study; the rest are anywhere on Earth,
with deliberate shares crossing the antimeridian and reaching past 85 deg
latitude, where footprints need spherical geometry to be found correctly.

The scene is synthetic but has structure: a fixed land/sea pattern (the same
on every pass, so statistics of one place agree between dates), vegetation
bright in the near infrared, and clouds that differ on every pass.

Only numpy and h5py are needed; nothing here imports cohort.
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

# --- the orbit --------------------------------------------------------------------

PLATFORM, INSTRUMENT = "SynSat-1", "SYNI"   # a made-up satellite and imager
INCLINATION = math.radians(98.6)
PERIOD_S = 100.6 * 60.0                     # ~14.3 orbits a day
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)   # orbit FIRST_ORBIT starts here
FIRST_ORBIT = 30_000
DESCENDING_LOCAL_TIME_H = 10.5              # sun-synchronous: 10:30 at the descending node

# --- a granule ----------------------------------------------------------------------

ROWS, COLS, TIE = 241, 121, 8               # pixels along and across track; tie-point step
SWATH_HALF = math.radians(7.0)              # ~1,560 km wide swath
GRANULE_ARC = math.radians(18.0)            # ~5 minutes of flight, ~2,000 km along track
SCALE = 1e-4                                # reflectance = uint16 * SCALE
FILL = 65535

#: Where the "study area" passes are aimed (the German Bight, off the Wadden Sea).
FOCUS_LAT, FOCUS_LON = 54.2, 7.0


def _orbit_start(k: int) -> float:
    """Seconds since EPOCH at which orbit index k crosses the ascending node."""
    return k * PERIOD_S


def track_xyz(k: int, u: np.ndarray) -> np.ndarray:
    """Earth-fixed unit vectors of the sub-satellite point on orbit index `k`
    at argument of latitude `u` (radians from the ascending node)."""
    t_node = _orbit_start(k)
    hours = (t_node % 86400.0) / 3600.0
    # local time at the ascending node is 12 h from the descending one
    lon_node = math.radians(15.0 * (DESCENDING_LOCAL_TIME_H + 12.0 - hours))
    lat = np.arcsin(math.sin(INCLINATION) * np.sin(u))
    # longitude in the orbit plane, minus the Earth's turn since the node (one
    # turn per solar day relative to a sun-synchronous orbit plane)
    lon = (lon_node + np.arctan2(math.cos(INCLINATION) * np.sin(u), np.cos(u))
           - 2 * math.pi * (u / (2 * math.pi)) * PERIOD_S / 86400.0)
    return lonlat_to_xyz(lon, lat)


def lonlat_to_xyz(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) from lon/lat in radians."""
    cl = np.cos(lat)
    return np.stack([cl * np.cos(lon), cl * np.sin(lon), np.sin(lat)], axis=-1)


def xyz_to_lonlat_deg(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in degrees, lon in [-180, 180], from unit vectors (..., 3)."""
    lat = np.degrees(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    return lon, lat


def swath_xyz(k: int, u_center: float, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Pixel centres (rows, cols, 3) of the granule of orbit `k` centred on `u_center`:
    rows follow the track, columns run across it from left to right."""
    u = u_center + np.linspace(-GRANULE_ARC / 2, GRANULE_ARC / 2, rows)
    p = track_xyz(k, u)
    ahead = track_xyz(k, u + 1e-4)
    left = np.cross(p, ahead - p)                     # perpendicular to the track
    left /= np.linalg.norm(left, axis=-1, keepdims=True)
    d = np.linspace(SWATH_HALF, -SWATH_HALF, cols)    # angular distance across track
    return (np.cos(d)[None, :, None] * p[:, None, :]
            + np.sin(d)[None, :, None] * left[:, None, :])


def footprint_wkt(pixels: np.ndarray, samples: int = 13) -> str:
    """The granule's outline as a WKT polygon (lon/lat), from its edge pixels:
    down the left edge, back up the right one. Edges are great-circle arcs
    between the samples, as catalogs on the sphere (PostGIS geography) read them."""
    idx = np.linspace(0, pixels.shape[0] - 1, samples).round().astype(int)
    ring = np.concatenate([pixels[idx, 0], pixels[idx[::-1], -1]])
    lon, lat = xyz_to_lonlat_deg(ring)
    pts = [f"{a:.4f} {b:.4f}" for a, b in zip(lon, lat)]
    return "POLYGON((" + ", ".join(pts + pts[:1]) + "))"


# --- the scene -------------------------------------------------------------------------

def _waves(rng: np.random.Generator, n: int, k_lo: float, k_hi: float):
    """n random plane waves on the sphere: wave vectors, phases and amplitudes."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = rng.uniform(k_lo, k_hi, n)
    return dirs * k[:, None], rng.uniform(0, 2 * math.pi, n), 1.0 / k


def _field(xyz: np.ndarray, waves) -> np.ndarray:
    kv, phase, amp = waves
    x = xyz.astype(np.float32) @ kv.T.astype(np.float32) + phase.astype(np.float32)
    return np.cos(x, out=x) @ amp.astype(np.float32)


# The same planet every time: a third land, and a coast across the study area.
_LAND, _LAND_LEVEL = _waves(np.random.default_rng(133), 24, 3.0, 60.0), 0.058
_VEG = _waves(np.random.default_rng(7), 8, 20.0, 120.0)


def reflectance(xyz: np.ndarray, cloudiness: float, rng: np.random.Generator):
    """Green and near-infrared top-of-atmosphere reflectance of a scene."""
    land = _field(xyz, _LAND) > _LAND_LEVEL
    veg = np.clip(0.5 + 2.0 * _field(xyz, _VEG), 0.0, 1.0)        # 0 bare .. 1 dense
    green = np.where(land, 0.07 + 0.03 * (1 - veg), 0.045)
    nir = np.where(land, 0.15 + 0.25 * veg, 0.012)
    clouds = _field(xyz, _waves(rng, 12, 15.0, 90.0))             # new clouds on every pass
    thick = np.clip((clouds - np.quantile(clouds, 1.0 - cloudiness)) / 0.02 + 0.5, 0.0, 1.0)
    green = (1 - thick) * green + thick * 0.72
    nir = (1 - thick) * nir + thick * 0.68
    noise = rng.normal(0.0, 0.004, size=(2,) + green.shape)
    return np.clip(green + noise[0], 0, 1), np.clip(nir + noise[1], 0, 1)


# --- picking granules ---------------------------------------------------------------------

@dataclass
class Granule:
    kind: str          # "study-area", "anywhere", "polar", "antimeridian"
    k: int             # orbit index since EPOCH
    u_center: float    # argument of latitude of the granule's centre (radians)
    seed: int

    @property
    def orbit(self) -> int:
        return FIRST_ORBIT + self.k

    @property
    def times(self) -> tuple[datetime, datetime]:
        t0 = _orbit_start(self.k) + (self.u_center - GRANULE_ARC / 2) / (2 * math.pi) * PERIOD_S
        t1 = t0 + GRANULE_ARC / (2 * math.pi) * PERIOD_S
        return EPOCH + timedelta(seconds=t0), EPOCH + timedelta(seconds=t1)


def _orbits_of_day(day: float) -> range:
    """The 15 orbits starting on or after `day` (days since EPOCH): all longitudes."""
    first = math.ceil(day * 86400 / PERIOD_S)
    return range(first, first + 15)


def _wrap_deg(d):
    return (d + 180.0) % 360.0 - 180.0


def _study_area_pass(day: float, rng) -> tuple[int, float]:
    """The day's daylight pass whose track comes closest to the study area."""
    u = math.pi - math.asin(math.sin(math.radians(FOCUS_LAT)) / math.sin(INCLINATION))
    best = min(_orbits_of_day(day), key=lambda k: abs(_wrap_deg(
        xyz_to_lonlat_deg(track_xyz(k, np.array(u)))[0] - FOCUS_LON)))
    return best, u + rng.uniform(-0.3, 0.3) * GRANULE_ARC


def _antimeridian_pass(day: float, rng) -> tuple[int, float]:
    """A daylight granule whose track crosses longitude 180."""
    u = np.radians(np.arange(100.0, 260.0, 0.25))
    for k in rng.permutation(list(_orbits_of_day(day))):
        lon, _ = xyz_to_lonlat_deg(track_xyz(int(k), u))
        east = lon > 0
        flips = np.flatnonzero((east[:-1] != east[1:]) & (np.abs(lon[:-1]) > 90))
        if len(flips):
            return int(k), float(u[flips[0]]) + rng.uniform(-0.3, 0.3) * GRANULE_ARC
    raise RuntimeError("no orbit that day crosses the antimeridian")  # never, in practice


def plan(n_files: int, year_days: float = 365.0, seed: int = 0) -> list[Granule]:
    """Which granules to make: every other one a study-area pass (dates spread
    evenly over the year), the others anywhere, over a pole, or across 180 deg."""
    rng = np.random.default_rng(seed)
    n_focus = (n_files + 1) // 2
    out = []
    for i in range(n_files):
        if i % 2 == 0:
            kind = "study-area"
            day = (i // 2 + rng.uniform(0.1, 0.9)) * year_days / n_focus
            k, u = _study_area_pass(day, rng)
        else:
            kind = ("anywhere", "polar", "antimeridian")[(i // 2) % 3]
            day = rng.uniform(0, year_days - 1)
            if kind == "anywhere":
                k = int(rng.choice(list(_orbits_of_day(day))))
                u = math.radians(rng.uniform(100.0, 260.0))
            elif kind == "polar":   # the north or south end of the daylight half
                k = int(rng.choice(list(_orbits_of_day(day))))
                u = math.radians(rng.choice([90.0, 270.0]) + rng.uniform(-3.0, 3.0))
            else:
                k, u = _antimeridian_pass(day, rng)
        out.append(Granule(kind, k, u, seed=int(rng.integers(2**31))))
    return out


# --- writing a file -------------------------------------------------------------------------

def filename(g: Granule) -> str:
    t0, t1 = g.times
    return (f"SYN1_L1C_{t0:%Y%m%dT%H%M%S}_{t1:%Y%m%dT%H%M%S}_O{g.orbit:06d}.h5.gz")


def granule_bytes(g: Granule, compresslevel: int = 6) -> bytes:
    """One granule as a gzip-compressed HDF5 file (bytes)."""
    import h5py

    rng = np.random.default_rng(g.seed)
    xyz = swath_xyz(g.k, g.u_center)
    green, nir = reflectance(xyz, cloudiness=float(rng.uniform(0.05, 0.8)), rng=rng)
    tie_lon, tie_lat = xyz_to_lonlat_deg(xyz[::TIE, ::TIE])
    t0, t1 = g.times
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs.update({
            "platform": PLATFORM, "instrument": INSTRUMENT, "level": "L1C",
            "orbit": g.orbit, "start_time": t0.isoformat(), "end_time": t1.isoformat(),
            "footprint": footprint_wkt(xyz), "granule_kind": g.kind,
        })
        for name, band, wl in (("green", green, 560), ("nir", nir, 865)):
            ds = f.create_dataset(f"reflectance/{name}",
                                  data=np.round(band / SCALE).astype(np.uint16))
            ds.attrs.update({"scale_factor": SCALE, "_FillValue": FILL,
                             "wavelength_nm": wl, "units": "1"})
        geo = f.create_group("geolocation")
        geo.attrs["tie_point_step"] = TIE
        geo.create_dataset("latitude", data=tie_lat.astype(np.float32))
        geo.create_dataset("longitude", data=tie_lon.astype(np.float32))
    return gzip.compress(buf.getvalue(), compresslevel=compresslevel, mtime=0)


def write_granule(g: Granule, out: str | os.PathLike) -> tuple[str, int]:
    """Write one granule into folder `out`; returns its path and size in bytes."""
    path = Path(out) / filename(g)
    data = granule_bytes(g)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)   # a file is either whole or absent
    return str(path), len(data)


def generate(out: str | os.PathLike, n_files: int, seed: int = 0,
             progress=None) -> list[Path]:
    """Write `n_files` granules into folder `out`; returns their paths.
    `progress(i, n, path)` is called after each file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    granules = plan(n_files, seed=seed)
    for i, g in enumerate(granules):
        path = Path(write_granule(g, out)[0])
        paths.append(path)
        if progress:
            progress(i + 1, len(granules), path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-files", type=int, default=20)
    ap.add_argument("--out", default="granules", help="folder to write into")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = time.perf_counter()
    paths = generate(args.out, args.n_files, args.seed)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.1f} MB in {args.out} "
          f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
