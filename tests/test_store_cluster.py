"""The object store with a running cluster: Refs travel instead of data.

Engines fetch a `cohort.store.Ref` given as a task argument, pushed, scattered
or mapped over; a result larger than the cluster's threshold is written to
the store by the engine and comes back as a Ref.
"""

from __future__ import annotations

import numpy as np
import pytest

from cohort import store
from cohort.store import Ref


@pytest.fixture
def objs(tmp_path):
    s = store.open(f"file://{tmp_path}/objs")
    yield s
    s.close()


def test_refs_as_arguments_push_scatter_and_map(rc, objs):
    refs = [Ref.to(objs, objs.put(store.Object(data=bytes([i]) * (i + 1)))) for i in range(6)]
    assert rc[0].apply_sync(len, refs[3]) == 4
    assert rc[0].apply_sync(lambda *, blob: blob[:2], blob=refs[5]) == b"\x05\x05"

    dv = rc[:]
    dv.push({"blob": refs[2]}, block=True)
    assert dv.apply_sync(lambda: blob) == [b"\x02" * 3] * 2  # noqa: F821  (pushed name)

    dv.scatter("parts", refs, block=True)
    lens = dv.apply_sync(lambda: [len(p) for p in parts])  # noqa: F821
    assert lens == [[1, 2, 3], [4, 5, 6]]

    lv = rc.load_balanced_view()
    assert lv.map(len, refs, block=True) == [1, 2, 3, 4, 5, 6]


def test_large_results_come_back_as_refs_and_feed_other_tasks(make_cluster, objs):
    cl = make_cluster(n=1, store=objs.url, store_threshold=1_000_000)
    rc = cl.client
    e = rc[0]
    small = e.apply_sync(lambda: np.arange(10))
    assert isinstance(small, np.ndarray)
    ref = e.apply_sync(lambda: np.arange(500_000, dtype=np.float64))   # 4 MB > 1 MB
    assert isinstance(ref, Ref) and ref.codec == "pickle"
    assert ref.size >= 4_000_000 and "ndarray" in repr(ref)
    value = ref.get()
    assert np.array_equal(value, np.arange(500_000, dtype=np.float64))
    assert objs.stat(ref.oid).size >= 4_000_000
    # handed to another task, the engine reads it from the store itself
    assert e.apply_sync(lambda a: float(a.sum()), ref) == float(np.arange(500_000).sum())
    ref.delete()
    with pytest.raises(Exception):
        ref.get()


def test_threshold_zero_keeps_results_inline(make_cluster, objs):
    cl = make_cluster(n=1, store=objs.url, store_threshold=0)
    out = cl.client[0].apply_sync(lambda: np.ones(300_000))
    assert isinstance(out, np.ndarray) and out.sum() == 300_000
    assert list(objs.ls()) == []


def test_a_dangling_ref_fails_the_task_clearly(rc, objs):
    oid = objs.put(b"gone soon")
    ref = Ref.to(objs, oid)
    objs.delete(oid)
    with pytest.raises(Exception) as info:
        rc[0].apply_sync(len, ref)
    assert "ObjectNotFound" in str(info.value) or oid in str(info.value)


def test_engines_writing_and_reading_at_once_lose_nothing(rc, objs):
    url = objs.url

    def write_then_read(i):
        import hashlib
        from cohort import store as st
        s = st.open(url)
        data = hashlib.sha256(str(i).encode()).digest() * (1000 + i)
        oid = s.put(st.Object(data=data, meta={"i": i}), policy="replicate")
        back = s.get(oid)
        return oid, back.data == data and back.meta["i"] == i

    lv = rc.load_balanced_view()
    out = lv.map(write_then_read, range(200), block=True)
    assert all(ok for _, ok in out)
    oids = [oid for oid, _ in out]
    assert len(set(oids)) == 200
    assert {info.oid for info in objs.ls()} == set(oids)
    assert objs.fsck().ok
