"""examples/earth_observation runs end to end, and what it leaves behind is right.

The example runs as a user runs it (a subprocess, `python .../run.py`), once
on its own cluster with everything defaulted (in this session's temporary
$COHORT_HOME), once more to see that a rerun starts afresh, and once against
the shared test cluster with an explicit store and catalog. Then the store
and the catalog it wrote are opened and checked against the granule files
themselves.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from cohort import store
from cohort.profile import profile_dir

h5py = pytest.importorskip("h5py", reason="the earth observation example needs h5py")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "earth_observation"


def _load_example():
    """The example's run.py (and through it process.py), without leaving its folder
    on sys.path or its plain module names in sys.modules for other tests."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("eo_example_run", EXAMPLE / "run.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("generate", "process"):
            sys.modules.pop(name, None)
    return mod


eo = _load_example()
process = eo.process

JUNE = (datetime(2025, 6, 1, tzinfo=timezone.utc), datetime(2025, 7, 1, tzinfo=timezone.utc))


def run_example(*args: str, timeout: float = 100) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=EXAMPLE.parent.parent)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def granule_pixels_in_region(path: Path) -> int:
    """Pixels of a granule file inside the example's region, from the file's own geolocation."""
    import gzip
    with gzip.open(path, "rb") as z, h5py.File(io.BytesIO(z.read()), "r") as f:
        geo = f["geolocation"]
        xyz = process.expand_tie_points(geo["latitude"][()], geo["longitude"][()],
                                        int(geo.attrs["tie_point_step"]))
    return int(process.region_mask(eo.WADDEN_SEA[1], xyz).sum())


def check_outputs(out: str, s, cat, granules: Path, n_files: int) -> int:
    """Everything the run wrote is consistent; returns the number of hits."""
    l1 = cat.query(source=eo.L1_SOURCE)
    l2 = cat.query(source=process.L2_SOURCE)
    assert len(l1) == n_files == len(list(granules.glob("*.h5.gz")))

    # every granule is in the store, whole, with the file's name in its metadata
    for rec in l1:
        info = s.stat(rec.oid)
        assert info.meta["filename"] == rec.filename
        assert info.size == (granules / rec.filename).stat().st_size
    sample = l1[0]
    assert s.get(sample.oid).data == (granules / sample.filename).read_bytes()

    # the hits are exactly the June granules whose pixels fall in the region
    june = [r for r in l1 if r.start <= JUNE[1] and r.end >= JUNE[0]]
    assert june, "the synthetic archive should have June granules"
    hits = {r.oid for r in cat.query(intersects=eo.WADDEN_SEA[1], time=JUNE,
                                     source=eo.L1_SOURCE)}
    assert hits, "the default archive should have granules over the region in June"
    assert hits <= {r.oid for r in june}
    for r in june:
        inside = granule_pixels_in_region(granules / r.filename)
        if r.oid in hits:
            assert inside > 0, f"{r.filename} was a hit but has no pixel in the region"
        else:
            assert inside == 0, f"{r.filename} has {inside} pixels in the region but no hit"

    # one result per hit, in the store and the catalog, pointing at its source
    assert len(l2) == len(hits)
    assert sorted(r.extra["source_oid"] for r in l2) == sorted(hits)
    by_oid = {r.oid: r for r in l1}
    for rec in l2:
        src = by_oid[rec.extra["source_oid"]]
        obj = s.get(rec.oid)
        meta = obj.meta
        assert meta["source_oid"] == src.oid and meta["source_filename"] == src.filename
        assert meta["region"] == eo.WADDEN_SEA[0] == rec.extra["region"]
        assert (rec.start, rec.end, rec.orbit) == (src.start, src.end, src.orbit)
        with np.load(io.BytesIO(obj.data)) as z:
            stats = json.loads(str(z["stats"]))
            assert z["quicklook_nir"].dtype == np.uint8 and z["quicklook_nir"].ndim == 2
            assert z["region_mask"].shape == z["quicklook_nir"].shape
            assert int(z["region_mask"].sum()) <= stats["n_pixels"]
        assert stats["n_pixels"] == meta["n_pixels"] == rec.extra["n_pixels"]
        assert stats["n_pixels"] == granule_pixels_in_region(granules / src.filename)
        assert 0 <= stats["cloud_fraction"] <= 1
        assert stats["cloud_fraction"] == meta["cloud_fraction"] == rec.extra["cloud_fraction"]
        assert rec.oid in out  # in the summary table

    # nothing else in the store: the granules and their results
    assert len(list(s.ls())) == n_files + len(hits)
    assert f"{len(hits)} result objects written" in out
    return len(hits)


def test_example_runs_from_the_defaults_and_reruns_afresh():
    out = run_example("--n-files", "48")
    work = profile_dir() / "examples" / "earth_observation"
    assert str(work) in out
    with store.open(work / "store") as s, store.catalog(work / "catalog.db") as cat:
        check_outputs(out, s, cat, work / "granules", 48)

    out = run_example("--n-files", "24", "--seed", "3")
    with store.open(work / "store") as s, store.catalog(work / "catalog.db") as cat:
        check_outputs(out, s, cat, work / "granules", 24)


def fresh_postgis_database(server_url: str, name: str = "eo_example") -> str:
    """A new, empty database on the test PostgreSQL server; returns its URL."""
    import psycopg
    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.mark.parametrize("backend", ["sqlite", "postgis"])
def test_example_on_a_running_cluster_with_its_own_store_and_catalog(cluster, tmp_path,
                                                                     request, backend):
    st = tmp_path / "objects"
    if backend == "sqlite":
        catalog_url = f"sqlite://{tmp_path}/cat.db"
    else:  # a password in the URL: the engines must get it too
        catalog_url = fresh_postgis_database(request.getfixturevalue("postgis_url"))
    out = run_example("--n-files", "30", "--connect", str(cluster.connection_file),
                      "--workdir", str(tmp_path / "work"), "--store", f"file://{st}",
                      "--catalog", catalog_url)
    assert "2 engines" in out
    with store.open(f"file://{st}") as s, store.catalog(catalog_url) as cat:
        check_outputs(out, s, cat, tmp_path / "work" / "granules", 30)


@pytest.fixture(scope="session")
def postgis_url(pg_server):
    """The session's PostgreSQL server, checked to have PostGIS."""
    from pg import has_postgis
    if not has_postgis(pg_server.bindir):
        pytest.fail("PostGIS is not installed for this PostgreSQL server: run .ci/run, "
                    "or set COHORT_SKIP_POSTGRES=1")
    return pg_server.url


def test_a_workdir_the_example_did_not_make_is_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    proc = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), "--workdir", str(mine),
                           "--connect", str(tmp_path / "no-cluster.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not made by this example" in proc.stderr
    assert (mine / "thesis.tex").read_text() == "precious"
