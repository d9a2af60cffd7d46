"""`cohort store` and `cohort catalog` from the shell (real processes, file store, SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def cli(tmp_path):
    env = dict(os.environ, COHORT_STORE=f"file://{tmp_path}/objs",
               COHORT_CATALOG=f"sqlite:///{tmp_path}/cat.db")

    def run(*args, input=None):
        return subprocess.run([sys.executable, "-m", "cohort", *args], env=env, input=input,
                              capture_output=True, timeout=60)
    return run


def test_store_put_get_ls_stat_rm_fsck(cli, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    r = cli("store", "put", str(src), "--meta", "source=MERIS", "--meta", "orbit=12")
    assert r.returncode == 0, r.stderr
    oid = r.stdout.decode().strip()
    assert len(oid) == 32
    piped = cli("store", "put", "-", input=b"from stdin")
    assert piped.returncode == 0, piped.stderr
    oid2 = piped.stdout.decode().strip()

    assert cli("store", "get", oid2).stdout == b"from stdin"
    out = tmp_path / "out.bin"
    assert cli("store", "get", oid, "-o", str(out)).returncode == 0
    assert out.read_bytes() == data

    listing = json.loads(cli("store", "ls", "--json").stdout)
    assert {o["oid"] for o in listing} == {oid, oid2}
    stat = json.loads(cli("store", "stat", oid, "--json").stdout)
    assert stat["size"] == 300_000 and stat["meta"] == {"source": "MERIS", "orbit": 12,
                                                        "filename": "in.bin"}
    assert cli("store", "fsck").returncode == 0

    assert cli("store", "rm", oid).returncode == 0
    gone = cli("store", "get", oid)
    assert gone.returncode == 1 and oid in gone.stderr.decode()
    assert cli("store", "ls").stdout.decode().split() == [oid2]


def test_fsck_reports_then_repairs_a_damaged_copy(cli, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 100_000)
    oid = cli("store", "put", str(src), "--policy", "replicate").stdout.decode().strip()
    copies = [p for p in (tmp_path / "objs").rglob("*") if p.is_file() and oid in p.name
              and not p.name.endswith(".json")]
    assert copies, "the object has files on disk"
    victim = max(copies, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"y" * victim.stat().st_size)
    bad = cli("store", "fsck")
    assert bad.returncode == 1 and b"corrupt" in bad.stdout
    assert cli("store", "fsck", "--repair").returncode == 0
    assert cli("store", "fsck").returncode == 0
    assert cli("store", "get", oid).stdout == b"x" * 100_000


def test_catalog_add_query_rm(cli):
    fp = "POLYGON((170 10, -170 10, -170 20, 170 20, 170 10))"  # across the antimeridian
    r = cli("catalog", "add", "a" * 32, "--footprint", fp, "--time",
            "2026-06-03T10:00/2026-06-03T10:05", "--source", "MERIS", "--orbit", "1234",
            "--extra", "cloud=0.2")
    assert r.returncode == 0, r.stderr
    cli("catalog", "add", "b" * 32, "--footprint", "POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))",
        "--time", "2026-07-01T00:00", "--source", "OLCI", "--orbit", "99")

    def oids(*args):
        r = cli("catalog", "query", "--json", *args)
        assert r.returncode == 0, r.stderr
        return [rec["oid"] for rec in json.loads(r.stdout)]

    assert oids("--bbox", "175,12,178,14") == ["a" * 32]
    assert oids("--bbox", "178,12,-178,14") == ["a" * 32]         # W > E: across the line
    assert oids("--within-km", "15,179.9,50") == ["a" * 32]
    assert oids("--time", "2026-06-30/2026-07-02") == ["b" * 32]
    assert oids("--orbit", "1200-1300", "--source", "MERIS") == ["a" * 32]
    assert oids("--where", "cloud=0.2") == ["a" * 32]
    assert sorted(oids()) == ["a" * 32, "b" * 32]
    rec = json.loads(cli("catalog", "query", "--json", "--source", "MERIS").stdout)[0]
    assert rec["time"] == ["2026-06-03T10:00:00+00:00", "2026-06-03T10:05:00+00:00"]

    bad = cli("catalog", "query", "--bbox", "1,2,3")
    assert bad.returncode == 1 and b"WEST,SOUTH,EAST,NORTH" in bad.stderr
    assert cli("catalog", "rm", "a" * 32).returncode == 0
    assert cli("catalog", "rm", "a" * 32).returncode == 1
    assert oids() == ["b" * 32]
    r = cli("catalog", "optimize")
    assert r.returncode == 0 and b"1 records" in r.stderr, r.stderr
    assert oids() == ["b" * 32]


def test_help_answers(cli):
    for args in (("store", "--help"), ("catalog", "query", "--help"), ("store", "fsck", "--help")):
        r = cli(*args)
        assert r.returncode == 0 and b"usage:" in r.stdout
