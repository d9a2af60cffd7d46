"""The object store (cohort.store): one suite, run against file:// and a real S3 (radosgw).

The S3 server is Ceph's radosgw, started once per session by tests/s3.py (it
checks signatures and implements multipart uploads). Without its binaries the
S3 tests fail, saying how to install them, unless COHORT_SKIP_S3=1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import signal
import time
import uuid

import pytest

from cohort import store
from cohort.errors import CorruptObject, ObjectExists, ObjectNotFound, StoreError
from cohort.store.backend import data_key, record_key

from s3 import rgw, rgw_server  # noqa: F401  (fixtures)

MiB = 1 << 20


# --- fixtures ---------------------------------------------------------------------------
class Backend:
    """How a test reaches behind the store's back (to corrupt or inspect copies)."""

    def __init__(self, kind: str, url: str, root, rgw=None, bucket=None, prefix=None):
        self.kind, self.url, self.root, self.rgw = kind, url, root, rgw
        self.bucket, self.prefix = bucket, prefix

    def _key(self, root: str, key: str) -> str:
        return f"{self.prefix}/{root}/{key}"

    def read(self, root: str, key: str) -> bytes:
        if self.kind == "file":
            return (self.root / root / key).read_bytes()
        return self.rgw.client().get_object(Bucket=self.bucket,
                                            Key=self._key(root, key))["Body"].read()

    def write(self, root: str, key: str, data: bytes) -> None:
        if self.kind == "file":
            (self.root / root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / root / key).write_bytes(data)
        else:
            self.rgw.client().put_object(Bucket=self.bucket, Key=self._key(root, key), Body=data)

    def remove(self, root: str, key: str) -> None:
        if self.kind == "file":
            (self.root / root / key).unlink()
        else:
            self.rgw.client().delete_object(Bucket=self.bucket, Key=self._key(root, key))

    def exists(self, root: str, key: str) -> bool:
        try:
            self.read(root, key)
            return True
        except Exception:
            return False


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path):
    if request.param == "file":
        yield Backend("file", f"file://{tmp_path}/store", tmp_path / "store")
    else:
        gw = request.getfixturevalue("rgw")
        bucket = "cohort-test"
        prefix = "t-" + uuid.uuid4().hex[:10]
        yield Backend("s3", f"s3://{bucket}/{prefix}", None, gw, bucket, prefix)


@pytest.fixture
def s(backend):
    return store.open(backend.url)


# --- round trips ------------------------------------------------------------------------
def test_put_get_roundtrip_and_meta(s):
    oid = s.put(store.Object(data=b"hello world", meta={"date": "2026-11-30", "n": [1, 2]}))
    assert len(oid) == 32 and int(oid, 16) >= 0
    obj = s.get(oid)
    assert obj.data == b"hello world"
    assert obj.meta == {"date": "2026-11-30", "n": [1, 2]}
    info = s.stat(oid)
    assert (info.oid, info.size, info.policy, info.meta["n"]) == (oid, 11, "single", [1, 2])
    assert oid in s and s.exists(oid)


def test_put_accepts_buffers(s):
    np = pytest.importorskip("numpy")
    arr = np.arange(1000, dtype=np.float64)
    oid = s.put(arr, meta={"dtype": "float64"})
    back = np.frombuffer(s.get(oid).data, dtype=np.float64)
    assert np.array_equal(back, arr)
    oid2 = s.put(store.Object(data=memoryview(b"abc")[1:]))
    assert s.get(oid2).data == b"bc"
    oid3 = s.put(bytearray(b""))
    assert s.get(oid3).data == b"" and s.stat(oid3).size == 0
    with pytest.raises(TypeError):
        s.put("text is not bytes")
    with pytest.raises(ValueError):
        s.put(b"x", meta={"bad": object()})


def test_policies_make_copies_where_configured(s, backend):
    for policy, n in (("single", 1), ("replicate", 2), ("copy3", 3)):
        oid = s.put(b"copies " + policy.encode(), policy=policy)
        info = s.stat(oid)
        assert info.policy == policy and len(info.copies) == n
        for i in range(3):
            assert backend.exists(f"c{i}", data_key(oid)) == (i < n), (policy, i)
            assert backend.exists(f"c{i}", record_key(oid)) == (i < n), (policy, i)


def test_custom_policy_recorded_for_other_processes(backend):
    s = store.open(backend.url, policies={"archive": {"copies": 2, "roots": ["arch-a", "arch-b"]}})
    oid = s.put(b"archived", policy="archive")
    assert backend.exists("arch-a", data_key(oid)) and backend.exists("arch-b", data_key(oid))
    again = store.open(s.url)  # what an engine does: no policies given
    assert again.policies["archive"] == {"copies": 2, "roots": ["arch-a", "arch-b"]}
    assert again.get(oid).data == b"archived"
    with pytest.raises(StoreError, match="already defined"):
        store.open(backend.url, policies={"archive": {"copies": 1}})
    with pytest.raises(StoreError, match="already defined"):
        store.open(backend.url, policies={"replicate": 3})


def test_unknown_policy_names_the_known_ones(s):
    with pytest.raises(StoreError, match=r"unknown storage policy 'nope'.*copy3.*replicate.*single"):
        s.put(b"x", policy="nope")
    with pytest.raises(StoreError, match="unknown storage policy"):
        s.reserve(policy="nope")
    with pytest.raises(StoreError, match="unknown storage policy"):
        s.create_put_stream(policy="nope")


def test_bad_policy_definitions(tmp_path):
    for bad in ({"copies": 0}, {"copies": 2, "roots": ["a"]}, {"roots": ["a", "a"]},
                {"copies": 1, "where": "x"}, "two"):
        with pytest.raises(StoreError):
            store.open(f"file://{tmp_path}/s", policies={"p": bad})


def test_bad_urls(tmp_path):
    with pytest.raises(StoreError, match="unsupported store URL"):
        store.open("ftp://host/objs")
    with pytest.raises(StoreError, match="three slashes"):
        store.open("file://somehost/objs")
    with pytest.raises(StoreError, match="s3://bucket"):
        store.open("s3:///no-bucket")
    with pytest.raises(StoreError, match="unknown S3 option"):
        store.open("s3://bucket/p?colour=blue")
    with pytest.raises(StoreError, match="unknown store option"):
        store.open(f"file://{tmp_path}/s", colour="blue")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "store.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.open(str(tmp_path / "broken"))


def test_default_store_is_in_the_profile_folder(cohort_home, monkeypatch):
    monkeypatch.delenv("COHORT_STORE", raising=False)
    from cohort.profile import profile_dir
    s = store.open()
    assert s.url == "file://" + str(profile_dir() / "store")
    oid = s.put(b"default")
    assert (profile_dir() / "store" / "c0" / data_key(oid)).exists()


def test_url_reopens_the_same_store(s):
    oid = s.put(b"find me", meta={"x": 1})
    other = store.open(s.url)
    assert other.url == s.url
    assert other.get(oid).data == b"find me"


# --- delete, reserve, putoid ------------------------------------------------------------------
def test_delete_and_oid_never_reused(s):
    oid = s.put(b"short-lived", policy="replicate")
    s.delete(oid)
    with pytest.raises(ObjectNotFound):
        s.get(oid)
    with pytest.raises(ObjectNotFound):
        s.stat(oid)
    with pytest.raises(ObjectNotFound):
        s.delete(oid)
    assert oid not in s
    assert oid not in {i.oid for i in s.ls()}
    # a deleted OID can never be written again
    with pytest.raises(ObjectExists):
        s.putoid(b"resurrect", oid)
    oids = {s.put(b"x") for _ in range(50)}
    assert len(oids) == 50 and oid not in oids


def test_reserve_putoid_once(s):
    oid = s.reserve(policy="copy3")
    with pytest.raises(ObjectNotFound):
        s.get(oid)  # reserved, not written
    s.putoid(store.Object(data=b"later", meta={"k": 1}), oid)
    assert s.get(oid).data == b"later" and s.stat(oid).policy == "copy3"
    with pytest.raises(ObjectExists):
        s.putoid(b"again", oid)
    assert s.get(oid).data == b"later"
    with pytest.raises(StoreError, match="not reserved"):
        s.putoid(b"x", "0" * 32)
    with pytest.raises(StoreError, match="not an OID"):
        s.putoid(b"x", "../etc/passwd")
    plain = s.put(b"plain")
    with pytest.raises(ObjectExists):
        s.putoid(b"x", plain)


def test_deleting_a_reservation_burns_it(s):
    oid = s.reserve()
    s.delete(oid)
    with pytest.raises(ObjectExists):
        s.putoid(b"x", oid)


def test_reserved_stream(s):
    oid = s.reserve(policy="replicate")
    with s.create_put_stream(oid=oid, meta={"m": 1}) as w:
        w.write(b"streamed into a reservation")
    assert w.oid == oid and s.get(oid).data == b"streamed into a reservation"
    with pytest.raises(ObjectExists):
        s.create_put_stream(oid=oid)


def test_failed_reserved_stream_can_be_retried(s):
    oid = s.reserve()
    with pytest.raises(RuntimeError):
        with s.create_put_stream(oid=oid) as w:
            w.write(b"half")
            raise RuntimeError("interrupted")
    with pytest.raises(ObjectNotFound):
        s.get(oid)
    s.putoid(b"whole", oid)
    assert s.get(oid).data == b"whole"


# --- streams ------------------------------------------------------------------------------
def _payload(n: int, seed: int = 0) -> bytes:
    """Compressible but not trivial bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    words = [block[i:] + block[:i] for i in range(0, 64, 8)]
    out = bytearray()
    i = 0
    while len(out) < n:
        out += words[i % len(words)]
        i += 1
    return bytes(out[:n])


def test_stream_gzip_seek_tell(s):
    raw = os.urandom(6 * MiB) + _payload(3 * MiB + 123)
    gz = gzip.compress(raw, compresslevel=1)
    assert len(gz) > 6 * MiB  # more than one block
    with s.create_put_stream(policy="replicate", meta={"format": "gzip"}) as w:
        for i in range(0, len(gz), 100_000):
            assert w.write(gz[i:i + 100_000]) == len(gz[i:i + 100_000])
        assert w.tell() == len(gz)
    oid = w.oid
    assert s.stat(oid).size == len(gz) and s.stat(oid).meta == {"format": "gzip"}
    with s.create_get_stream(oid) as r:
        assert isinstance(r, io.IOBase) and isinstance(r, io.RawIOBase)
        assert r.readable() and r.seekable() and not r.writable()
        assert gzip.GzipFile(fileobj=r).read() == raw
        assert r.tell() == len(gz)
        assert r.seek(0) == 0 and r.read(10) == gz[:10] and r.tell() == 10
        assert r.seek(-5, io.SEEK_END) == len(gz) - 5 and r.read() == gz[-5:]
        pos = 4 * MiB - 3  # across a block boundary
        r.seek(pos)
        assert r.read(6) == gz[pos:pos + 6]
        r.seek(10, io.SEEK_CUR)
        assert r.tell() == pos + 16 and r.read(4) == gz[pos + 16:pos + 20]
        buf = bytearray(1000)
        r.seek(100)
        assert r.readinto(buf) == 1000 and bytes(buf) == gz[100:1100]
        r.seek(len(gz) + 10)
        assert r.read(5) == b"" and r.readinto(buf) == 0
        with pytest.raises(ValueError):
            r.seek(-1)
    with pytest.raises(ValueError):
        r.read(1)
    with s.create_get_stream(oid) as r:  # a buffered reader on top, as open() would
        assert io.BufferedReader(r, 1 << 16).read() == gz
    with s.create_get_stream(oid) as r:
        assert r.read() == gz


def test_interrupted_put_stream_leaves_nothing_visible(s, backend):
    before = {i.oid for i in s.ls()}
    with pytest.raises(KeyError):
        with s.create_put_stream(policy="replicate") as w:
            w.write(_payload(9 * MiB, 1))  # more than one S3 part
            raise KeyError("boom")
    oid = w.oid
    assert oid not in s
    with pytest.raises(ObjectNotFound):
        s.get(oid)
    assert {i.oid for i in s.ls()} == before
    for root in ("c0", "c1"):
        assert not backend.exists(root, data_key(oid))
    w2 = s.create_put_stream()
    w2.write(b"never closed")
    oid2 = w2.oid
    w2.abort()
    assert oid2 not in s
    report = s.fsck(grace=0)
    assert report.ok, str(report)  # aborted uploads/temp files were cleaned up


def test_put_stream_accepts_buffers(s):
    np = pytest.importorskip("numpy")
    arr = np.arange(300_000, dtype=np.int64)
    with s.create_put_stream() as w:
        w.write(arr)
        w.write(memoryview(b"tail"))
    assert s.get(w.oid).data == arr.tobytes() + b"tail"


def _killed_writer(url: str, q) -> None:
    s = store.open(url)
    w = s.create_put_stream()
    w.write(b"x" * (9 * MiB))
    q.put(w.oid)
    time.sleep(60)


def test_killed_writer_leaves_an_orphan_that_fsck_removes(s, backend):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_killed_writer, args=(s.url, q))
    p.start()
    try:
        oid = q.get(timeout=60)
        live = s.fsck(grace=0)
        if backend.kind == "file":  # a live writer's temp file is locked: not an orphan
            assert live.orphans == []
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert oid not in s
    report = s.fsck(grace=0)
    assert len(report.orphans) == 1 and oid in report.orphans[0]
    assert not report.ok
    fixed = s.fsck(repair=True, grace=0)
    assert fixed.repaired and s.fsck(grace=0).ok


# --- checksums and healing -------------------------------------------------------------------
def _corrupt(backend, root: str, oid: str, at: int = 7) -> None:
    data = bytearray(backend.read(root, data_key(oid)))
    data[at] ^= 0xFF
    backend.write(root, data_key(oid), bytes(data))


def test_get_heals_a_corrupt_copy(s, backend, caplog):
    data = _payload(100_000, 2)
    oid = s.put(data, policy="replicate")
    _corrupt(backend, "c0", oid)
    caplog.set_level("WARNING", logger="cohort.store")
    assert s.get(oid).data == data
    assert "fails its checksum" in caplog.text and "healed" in caplog.text
    assert backend.read("c0", data_key(oid)) == data  # healed on disk / in the bucket


def test_get_heals_a_missing_copy(s, backend):
    oid = s.put(b"two copies", policy="replicate")
    backend.remove("c1", data_key(oid))
    backend.remove("c1", record_key(oid))
    assert s.get(oid).data == b"two copies"
    assert backend.read("c1", data_key(oid)) == b"two copies"
    assert json.loads(backend.read("c1", record_key(oid)))["oid"] == oid
    backend.remove("c0", record_key(oid))  # the copy get finds first
    assert s.get(oid).data == b"two copies"
    assert backend.exists("c0", record_key(oid))


def test_get_stream_switches_copy_and_heals(s, backend):
    data = _payload(10 * MiB, 3)
    with s.create_put_stream(policy="replicate") as w:
        w.write(data)
    _corrupt(backend, "c0", w.oid, at=5 * MiB)  # the second block
    with s.create_get_stream(w.oid) as r:
        assert r.read() == data
    assert backend.read("c0", data_key(w.oid)) == data
    with s.create_get_stream(w.oid) as r:  # verified after seeks too
        _corrupt(backend, "c1", w.oid, at=9 * MiB)
        r.seek(9 * MiB)
        assert r.read(100) == data[9 * MiB:9 * MiB + 100]


def test_all_copies_corrupt_raises(s, backend):
    data = _payload(50_000, 4)
    oid = s.put(data, policy="replicate")
    _corrupt(backend, "c0", oid)
    _corrupt(backend, "c1", oid, at=99)
    with pytest.raises(CorruptObject):
        s.get(oid)
    with pytest.raises(CorruptObject):
        with s.create_get_stream(oid) as r:
            r.read()
    with s.create_get_stream(oid, verify=False) as r:  # asked not to check
        assert len(r.read()) == len(data)
    report = s.fsck(repair=True)
    assert report.lost == [oid] and not report.ok


def test_fsck_reports_and_repairs(s, backend):
    good = s.put(b"fine", policy="replicate")
    corrupt = s.put(_payload(20_000, 5), policy="copy3")
    missing = s.put(b"lose one", policy="replicate")
    _corrupt(backend, "c2", corrupt)
    backend.remove("c0", data_key(missing))
    backend.write("c0", data_key("f" * 32), b"no record anywhere")  # orphan data
    report = s.fsck(grace=0)
    assert not report.ok
    assert report.objects == 3 and report.copies == 7
    assert [o for o, _ in report.corrupt] == [corrupt]
    assert [o for o, _ in report.missing] == [missing]
    assert len(report.orphans) == 1 and "f" * 32 in report.orphans[0]
    assert good not in str(report)
    assert s.fsck(grace=3600).orphans == []  # too young to be judged
    fixed = s.fsck(repair=True, grace=0)
    assert len(fixed.repaired) == 3, str(fixed)
    again = s.fsck(grace=0)
    assert again.ok, str(again)
    assert backend.exists("c0", data_key(missing))
    assert not backend.exists("c0", data_key("f" * 32))


def test_fsck_finishes_interrupted_deletes(s, backend):
    oid = s.put(b"delete me", policy="replicate")
    s.root.put_key(f"oids/{oid}", json.dumps({"state": "deleted"}).encode())  # crashed delete
    report = s.fsck()
    assert report.deleted == [oid]
    s.fsck(repair=True)
    assert oid not in s and s.fsck().ok


# --- concurrency -----------------------------------------------------------------------------
def _worker(url: str, wid: int, n: int, q) -> None:
    s = store.open(url)
    mine = []
    for i in range(n):
        data = f"worker {wid} item {i} ".encode() * (1 + i % 7)
        if i % 5 == 0:
            with s.create_put_stream(policy="replicate", meta={"w": wid, "i": i}) as w:
                w.write(data)
            oid = w.oid
        else:
            oid = s.put(store.Object(data=data, meta={"w": wid, "i": i}), policy="replicate")
        mine.append((oid, data))
        # read back something written earlier, by anyone
        back = s.get(mine[i // 2][0])
        assert back.data == mine[i // 2][1]
    q.put([(o, d.hex()) for o, d in mine])


def test_concurrent_writers_and_readers_lose_nothing(s):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    n_workers, n = 4, 15
    procs = [ctx.Process(target=_worker, args=(s.url, w, n, q)) for w in range(n_workers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    written = {o: bytes.fromhex(d) for r in results for o, d in r}
    assert len(written) == n_workers * n  # every OID distinct
    for oid, data in written.items():
        assert s.get(oid).data == data
    listed = {i.oid for i in s.ls()}
    assert set(written) <= listed
    assert s.fsck(grace=0).ok


def test_two_processes_race_for_one_reservation(s):
    oid = s.reserve()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race_putoid, args=(s.url, oid, k, q)) for k in range(3)]
    for p in procs:
        p.start()
    outcomes = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert [o for o in outcomes if o.startswith("ok")].__len__() == 1, outcomes
    assert sum(o == "exists" for o in outcomes) == 2, outcomes
    winner = [o for o in outcomes if o.startswith("ok")][0][3:]
    assert s.get(oid).data == f"writer {winner}".encode()


def _race_putoid(url: str, oid: str, k: int, q) -> None:
    s = store.open(url)
    try:
        s.putoid(f"writer {k}".encode(), oid)
        q.put(f"ok {k}")
    except ObjectExists:
        q.put("exists")
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put(f"error {e!r}")


def test_large_stream_is_multipart_and_verified(s, backend):
    """110 MiB through a put stream (S3: a real multipart upload) and back, chunk by chunk."""
    base = _payload(MiB, 7)
    h = hashlib.sha256()
    with s.create_put_stream(meta={"size": "110 MiB"}) as w:
        for i in range(110):
            chunk = i.to_bytes(4, "big") + base[4:]  # every chunk differs: catches reordering
            h.update(chunk)
            w.write(chunk)
    assert s.stat(w.oid).size == 110 * MiB
    if backend.kind == "s3":
        head = backend.rgw.client().head_object(
            Bucket=backend.bucket, Key=f"{backend.prefix}/c0/{data_key(w.oid)}")
        assert head["ContentLength"] == 110 * MiB
        assert "-" in head["ETag"], head["ETag"]  # "<md5>-<parts>": a multipart upload
    back = hashlib.sha256()
    with s.create_get_stream(w.oid) as r:
        buf = bytearray(3 * MiB + 17)  # not aligned with blocks
        while n := r.readinto(buf):
            back.update(memoryview(buf)[:n])
    assert back.hexdigest() == h.hexdigest()


def test_file_fast_paths(s, backend, tmp_path):
    """writefile/copyto (kernel copies on file stores) give the same bytes as read/write."""
    data = os.urandom(9 * MiB + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    oid = s.put_file(src, policy="replicate", meta={"name": "src.bin"})
    assert s.get(oid).data == data and s.stat(oid).meta == {"name": "src.bin"}
    assert backend.read("c1", data_key(oid)) == data  # the second copy too
    with open(src, "rb") as f, s.create_put_stream(policy="copy3") as w3:
        w3.writefile(f, length=MiB)
        w3.write(b"+")
        w3.writefile(f)
    assert all(backend.read(f"c{i}", data_key(w3.oid)) == data[:MiB] + b"+" + data[MiB:]
               for i in range(3))
    assert s.fsck().ok
    with open(src, "rb") as f, s.create_put_stream() as w:
        f.seek(10)
        w.write(b"head")
        assert w.writefile(f, length=5 * MiB) == 5 * MiB
        assert w.writefile(f) == len(data) - 10 - 5 * MiB
        w.writefile(io.BytesIO(b"tail"))  # not an OS file: the plain path
    want = b"head" + data[10:] + b"tail"
    assert s.get(w.oid).data == want
    out = tmp_path / "out.bin"
    assert s.get_file(w.oid, out) == len(want) and out.read_bytes() == want
    with s.create_get_stream(w.oid) as r, open(out, "wb") as f:
        f.write(b"<")
        r.seek(4 * MiB + 1)  # mid-block
        assert r.copyto(f) == len(want) - 4 * MiB - 1
        f.write(b">")
    assert out.read_bytes() == b"<" + want[4 * MiB + 1:] + b">"
    _corrupt(backend, "c0", oid, at=6 * MiB)
    assert s.get_file(oid, out) == len(data) and out.read_bytes() == data
    assert backend.read("c0", data_key(oid)) == data  # healed when the stream closed
    buf = io.BytesIO()
    with s.create_get_stream(oid) as r:
        r.copyto(buf)
    assert buf.getvalue() == data


@pytest.fixture(params=["xxh3", "crc32", "sha256"])
def fs(request, tmp_path):
    """A file store: xxh3/crc32 take the one-core copy-and-hash path, sha256 the kernel copy."""
    return store.open(f"file://{tmp_path}/fstore", checksum=request.param)


@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 13 * MiB + 7])
def test_fast_paths_are_bit_exact(fs, tmp_path, size):
    data = os.urandom(size)
    src, out = tmp_path / "src.bin", tmp_path / "out.bin"
    src.write_bytes(data)
    for policy in ("single", "replicate"):
        oid = fs.put_file(src, policy=policy)
        assert fs.get(oid).data == data
        assert fs.get_file(oid, out) == size and out.read_bytes() == data
        for verify in (True, False):
            with fs.create_get_stream(oid, verify=verify) as r, open(out, "wb") as f:
                f.write(b"<")
                r.seek(min(size, 3))
                assert r.copyto(f) == size - min(size, 3)
                f.write(b">")
            assert out.read_bytes() == b"<" + data[3:] + b">"
    assert fs.fsck().ok


def _flip(fs, root: str, oid: str, at: int) -> None:
    with open(fs.root.root / root / data_key(oid), "r+b") as f:  # in place: the mapped inode
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_fast_copyto_heals_a_corrupt_block(fs, tmp_path, caplog):
    data = os.urandom(13 * MiB)
    oid = fs.put(data, policy="replicate")
    _flip(fs, "c0", oid, 5 * MiB + 3)  # block 1 of the first copy
    caplog.set_level("WARNING", logger="cohort.store")
    out = tmp_path / "out.bin"
    assert fs.get_file(oid, out) == len(data) and out.read_bytes() == data
    assert "block 1" in caplog.text and "healed" in caplog.text
    assert (fs.root.root / "c0" / data_key(oid)).read_bytes() == data
    _flip(fs, "c0", oid, 9 * MiB)  # block 2 now; copy in place into a bigger file
    out.write_bytes(b"x" * (20 * MiB))
    with fs.create_get_stream(oid) as r, open(out, "r+b") as f:
        assert r.copyto(f) == len(data)
    assert out.read_bytes() == data + b"x" * (7 * MiB)
    assert fs.fsck().ok


def test_fast_copyto_raises_on_corruption_and_leaves_no_complete_file(fs, tmp_path):
    data = os.urandom(13 * MiB)
    oid = fs.put(data)  # one copy: nothing to heal from
    _flip(fs, "c0", oid, 9 * MiB + 1)  # block 2
    out = tmp_path / "out.bin"
    with pytest.raises(CorruptObject):
        fs.get_file(oid, out)
    assert out.read_bytes() == data[:8 * MiB]  # the verified blocks, nothing after
    with fs.create_get_stream(oid) as r, open(out, "wb") as f:
        f.write(b"head")
        r.seek(1)
        with pytest.raises(CorruptObject):
            r.copyto(f)
    assert out.read_bytes() == b"head" + data[1:8 * MiB]
    out.write_bytes(b"y" * (20 * MiB))  # in place: old bytes stay, no corrupt byte lands
    with fs.create_get_stream(oid) as r, open(out, "r+b") as f:
        with pytest.raises(CorruptObject):
            r.copyto(f)
    assert out.read_bytes() == data[:8 * MiB] + b"y" * (12 * MiB)
    with fs.create_get_stream(oid, verify=False) as r, open(out, "wb") as f:
        r.copyto(f)  # unverified: the bytes as stored
    assert out.stat().st_size == len(data)


def test_fast_paths_fall_back_for_non_files(fs, tmp_path):
    data = os.urandom(9 * MiB + 11)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    oid = fs.put_file(src)
    buf = io.BytesIO()
    with fs.create_get_stream(oid) as r:
        assert r.copyto(buf) == len(data)
    assert buf.getvalue() == data
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with fs.create_get_stream(oid) as r, open(out, "ab") as f:  # appends ignore offsets
        r.copyto(f)
    assert out.read_bytes() == b"old" + data
    rfd, wfd = os.pipe()
    got = bytearray()

    def drain():
        with os.fdopen(rfd, "rb") as p:
            while chunk := p.read(MiB):
                got.extend(chunk)
    import threading
    t = threading.Thread(target=drain)
    t.start()
    with fs.create_get_stream(oid) as r, os.fdopen(wfd, "wb") as p:
        r.copyto(p)
    t.join()
    assert bytes(got) == data
    with fs.create_put_stream() as w:
        w.writefile(io.BytesIO(data))
    assert fs.get(w.oid).data == data
    rfd, wfd = os.pipe()
    feeder = threading.Thread(target=lambda: os.fdopen(wfd, "wb").write(data[:3 * MiB]))
    feeder.start()
    with os.fdopen(rfd, "rb") as p, fs.create_put_stream() as w:
        w.writefile(p)
    feeder.join()
    assert fs.get(w.oid).data == data[:3 * MiB]


def test_failed_fast_put_leaves_nothing(fs, tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(9 * MiB))
    from cohort.store import filestore

    def broken(self, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(filestore._Writer, "write", broken)
    monkeypatch.setattr(filestore._Writer, "copy_from_fd", lambda *a: broken(None, None))
    with pytest.raises(OSError, match="No space"):
        fs.put_file(src, policy="replicate")
    assert list(fs.ls()) == []
    assert not list((fs.root.root / "c0" / "tmp").iterdir())


def test_store_pickles_as_its_url(s):
    import pickle
    oid = s.put(b"pickled")
    again = pickle.loads(pickle.dumps(s))
    assert again.url == s.url and again.get(oid).data == b"pickled"


def test_policy_on_other_disks_or_buckets(backend, tmp_path):
    if backend.kind == "file":
        roots = [str(tmp_path / "disk1" / "objs"), f"file://{tmp_path}/disk2/objs"]
    else:
        tag = uuid.uuid4().hex[:8]
        roots = [f"s3://cohort-site-a/{tag}", f"s3://cohort-site-b-{tag}/objs"]  # b: created
    s = store.open(backend.url, policies={"far": {"copies": 2, "roots": roots}})
    oid = s.put(b"far away", policy="far")
    info = s.stat(oid)
    assert info.copies == tuple(r if r.startswith(("s3:", "file:")) else "file://" + r
                                for r in roots)
    if backend.kind == "file":
        assert (tmp_path / "disk1" / "objs" / data_key(oid)).read_bytes() == b"far away"
        (tmp_path / "disk1" / "objs" / data_key(oid)).write_bytes(b"far awaX")
    else:
        c = backend.rgw.client()
        key = f"{tag}/{data_key(oid)}"
        assert c.get_object(Bucket="cohort-site-a", Key=key)["Body"].read() == b"far away"
        c.put_object(Bucket="cohort-site-a", Key=key, Body=b"far awaX")
    assert store.open(s.url).get(oid).data == b"far away"  # found and healed via store.json
    assert s.fsck().ok


def test_s3_wrong_credentials_are_refused(rgw):
    with pytest.raises(StoreError, match="cannot open S3 store"):
        store.open("s3://cohort-test/creds", secret_key="not-the-secret")
    s = store.open(f"s3://cohort-test/creds?access_key={rgw.access_key}"
                   f"&secret_key={rgw.secret_key}&endpoint_url={rgw.endpoint}")
    assert "secret_access_key=" in s.url  # keys written into the URL stay in it
    s2 = store.open("s3://cohort-test/creds", access_key=rgw.access_key,
                    secret_key=rgw.secret_key)
    assert "secret" not in s2.url and "endpoint_url=" in s2.url  # keys given as keywords do not
    assert s2.get(s.put(b"signed")).data == b"signed"


@pytest.mark.parametrize("algo", ["sha256", "blake2b", "crc32", "xxh3"])
def test_checksum_algorithms_detect_corruption(backend, algo):
    s = store.open(backend.url, checksum=algo)
    data = _payload(5 * MiB, 8)
    oid = s.put(data, policy="replicate")
    assert s.stat(oid).checksum.startswith(f"{algo}-blocks:")
    _corrupt(backend, "c1", oid, at=4 * MiB + 1)
    _corrupt(backend, "c0", oid, at=4 * MiB + 2)  # both copies bad in the same block
    with pytest.raises(CorruptObject):
        s.get(oid)
    with s.create_get_stream(oid) as r:  # the first block is fine in both
        assert r.read(4 * MiB) == data[:4 * MiB]
        with pytest.raises(CorruptObject):
            r.read(1)
    other = store.open(s.url)  # objects carry their algorithm; the reader's default differs
    oid2 = s.put(data)
    assert other.get(oid2).data == data
    with pytest.raises(StoreError, match="unknown checksum"):
        store.open(backend.url, checksum="md5")


def test_random_access_zip_through_a_get_stream(s):
    """zipfile seeks all over the stream: the central directory at the end, members inside."""
    import zipfile
    members = {f"m{i}.bin": os.urandom(300_000 + i * 777_777) for i in range(12)}
    with s.create_put_stream(meta={"format": "zip"}) as w:
        with zipfile.ZipFile(w, "w", compression=zipfile.ZIP_STORED) as z:
            for name, data in members.items():
                z.writestr(name, data)
    assert s.stat(w.oid).size > 8 * MiB
    with s.create_get_stream(w.oid) as r:
        with zipfile.ZipFile(r) as z:
            assert sorted(z.namelist()) == sorted(members)
            for name in sorted(members, reverse=True):
                assert z.read(name) == members[name]


def test_a_source_file_cut_short_during_a_put_raises_and_stores_nothing(tmp_path):
    """The caller's file is read, not mapped: if it ends early the put fails
    with an OSError saying so (a mapped file cut short would kill the process)."""
    from cohort.store.checksum import BlockHasher
    from cohort.store.fastcopy import copy_hashing
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    written = []
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="ended at byte 300000"):
            copy_hashing(fd, 0, 400_000, BlockHasher("xxh3", 1 << 20), [written.append])
        assert sum(len(p) for p in written) == 300_000
    finally:
        os.close(fd)
    # through a put stream: the file is cut while it is being stored
    s = store.open(f"file://{tmp_path / 'store'}")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    with open(big, "rb") as f:
        w = s.create_put_stream()
        real_write = w._w.write

        def cut_after_first_piece(piece):
            real_write(piece)
            os.truncate(big, 1 << 20)
        w._w.write = cut_after_first_piece
        with pytest.raises(OSError, match="changed while it was being stored"):
            w.writefile(f)
    assert list(s.ls()) == []
