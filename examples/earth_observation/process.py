"""What runs on the engines: one granule in, one result object out.

`process_granule` streams a gzip-compressed HDF5 granule from the object
store, decompresses it on the fly, computes statistics of the pixels inside
a region, writes a small result object (a quicklook and the statistics) back
to the store and catalogs it. It takes only strings, so any engine that can
open the store and the catalog can run it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import tempfile
import time

import numpy as np

#: Where processed granules go in the catalog (``source`` field).
L2_SOURCE = "SYN1_L2_STATS"
#: Top-of-atmosphere reflectance above which a pixel counts as cloud, in both bands.
CLOUD_THRESHOLD = 0.3
#: Quicklooks keep one pixel in QUICKLOOK_STEP along and across track.
QUICKLOOK_STEP = 4


def expand_tie_points(lat: np.ndarray, lon: np.ndarray, step: int) -> np.ndarray:
    """Pixel centres (rows, cols, 3) as unit vectors, from tie points every `step` pixels.

    Interpolating unit vectors instead of degrees stays right across the
    antimeridian (lon 179 -> -179) and near the poles.
    """
    la, lo = np.radians(lat.astype(np.float64)), np.radians(lon.astype(np.float64))
    tie = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)

    def along(a: np.ndarray, axis: int) -> np.ndarray:  # linear, `step` pixels per tie cell
        n = a.shape[axis]
        x = np.arange((n - 1) * step + 1) / step
        i = np.minimum(x.astype(int), n - 2)
        w = (x - i).reshape((-1,) + (1,) * (a.ndim - axis - 1))
        return np.take(a, i, axis) * (1 - w) + np.take(a, i + 1, axis) * w

    v = along(along(tie, 0), 1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def region_mask(region_wkt: str, xyz: np.ndarray) -> np.ndarray:
    """Which pixels lie inside the region: the catalog's own test on the sphere
    (great-circle edges), on the pixels inside the region's lon/lat boxes."""
    from cohort.store.geo import Footprint

    region = Footprint(region_wkt)
    lat = np.degrees(np.arcsin(np.clip(xyz[..., 2], -1, 1)))
    lon = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))
    near = np.zeros(lat.shape, dtype=bool)
    for west, east, south, north in region.boxes:
        near |= (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
    mask = np.zeros(lat.shape, dtype=bool)
    if near.any():
        mask[near] = region.polyset().contains_points(xyz[near])
    return mask


def read_band(ds) -> np.ndarray:
    """A reflectance band as float32, fill values as NaN."""
    raw = ds[()]
    out = raw.astype(np.float32) * np.float32(ds.attrs["scale_factor"])
    out[raw == ds.attrs["_FillValue"]] = np.nan
    return out


def region_stats(green: np.ndarray, nir: np.ndarray, inside: np.ndarray) -> dict:
    """Cloud cover, water fraction and reflectances of the pixels `inside` the region."""
    g, n = green[inside], nir[inside]
    cloud = (g > CLOUD_THRESHOLD) & (n > CLOUD_THRESHOLD)
    clear = ~cloud & np.isfinite(g) & np.isfinite(n)
    ndwi = (g - n) / np.maximum(g + n, 1e-6)           # normalized difference water index
    water, land = clear & (ndwi > 0), clear & (ndwi <= 0)

    def mean(a):
        return round(float(a.mean()), 4) if a.size else None

    return {
        "n_pixels": int(inside.sum()),
        "cloud_fraction": round(float(cloud.mean()), 4) if g.size else None,
        "water_fraction": round(float(water.sum() / clear.sum()), 4) if clear.any() else None,
        "nir_land_mean": mean(n[land]),                # vegetation vigour
        "green_water_mean": mean(g[water]),            # turbidity of the coastal water
        "nir_p90": round(float(np.percentile(n[clear], 90)), 4) if clear.any() else None,
    }


def process_granule(oid: str, store_url: str, catalog_url: str, region_wkt: str,
                    region_name: str) -> dict:
    """Process one stored granule; return its statistics and the result's OID."""
    import h5py

    from cohort import store

    t_start = time.perf_counter()
    s = store.open(store_url)
    filename = s.stat(oid).meta.get("filename", oid)
    # 1. stream the object from the store, gunzip on the fly into a temporary
    #    file (in memory up to 256 MB, on disk beyond), and open it with h5py
    with s.create_get_stream(oid) as raw, gzip.GzipFile(fileobj=raw) as unzipped, \
            tempfile.SpooledTemporaryFile(max_size=256 * 2**20) as h5file:
        shutil.copyfileobj(unzipped, h5file, 1 << 20)
        compressed_bytes, h5_bytes = raw.tell(), h5file.tell()
        h5file.seek(0)
        with h5py.File(h5file, "r") as f:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            green = read_band(f["reflectance/green"])
            nir = read_band(f["reflectance/nir"])
            geo = f["geolocation"]
            xyz = expand_tie_points(geo["latitude"][()], geo["longitude"][()],
                                    int(geo.attrs["tie_point_step"]))

    # 2. the science: which pixels are in the region, and what they show
    inside = region_mask(region_wkt, xyz)
    stats = region_stats(green, nir, inside)
    ql = slice(None, None, QUICKLOOK_STEP)
    quicklook = np.nan_to_num(np.clip(nir[ql, ql] / 0.8 * 255, 0, 255)).astype(np.uint8)

    # 3. the result goes back to the store, with metadata that points at its source
    result_name = filename.replace("_L1C_", "_L2STATS_").replace(".h5.gz", ".npz")
    buf = io.BytesIO()
    np.savez_compressed(buf, quicklook_nir=quicklook, region_mask=inside[ql, ql],
                        stats=np.array(json.dumps(stats)))
    meta = {"kind": "region-stats", "source_oid": oid, "source_filename": filename,
            "region": region_name, "orbit": attrs["orbit"],
            "start_time": attrs["start_time"], "end_time": attrs["end_time"], **stats}
    with s.create_put_stream(meta=meta) as w:
        w.write(buf.getvalue())

    # 4. ... and into the catalog, findable like any other product
    with store.catalog(catalog_url) as cat:
        cat.add(w.oid, filename=result_name, source=L2_SOURCE, version="1.0",
                time=(attrs["start_time"], attrs["end_time"]), orbit=int(attrs["orbit"]),
                footprint=attrs["footprint"], source_oid=oid, region=region_name,
                **{k: v for k, v in stats.items()})
    return {"source_oid": oid, "result_oid": w.oid, "filename": filename,
            "orbit": int(attrs["orbit"]), "start_time": attrs["start_time"], **stats,
            "compressed_mb": compressed_bytes / 1e6, "hdf5_mb": h5_bytes / 1e6,
            "seconds": time.perf_counter() - t_start,
            "engine": f"{socket.gethostname()}:{os.getpid()}"}
