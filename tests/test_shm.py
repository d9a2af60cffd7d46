"""The shared-memory transport's segments and their pool, against the real /dev/shm.

No cluster here: the module is switched on for a made-up cluster id, and each
test maps what it writes the way a receiving process would.
"""

from __future__ import annotations

import gc
import os
import uuid

import numpy as np
import pytest

from cohort.wire import shm

pytestmark = pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="no /dev/shm")

MB = 1 << 20


@pytest.fixture
def enabled():
    """The transport on for a cluster of its own; everything it left is swept after."""
    cid, token = uuid.uuid4().hex[:12], uuid.uuid4().hex
    assert shm.create_probe(cid, token)
    saved = shm._prefix
    assert shm.enable(cid, token)
    try:
        yield cid
    finally:
        gc.collect()
        shm._prefix = saved
        shm.sweep(cid)


def files(cid: str, kind: str = "") -> list[str]:
    names = [n for n in os.listdir(shm.SHM_DIR) if n.startswith(f"cohort-{cid}-")]
    names = [n for n in names if not n.endswith("-probe")]
    if kind == "pool":
        return [n for n in names if "-pool-" in n]
    if kind == "live":
        return [n for n in names if "-pool-" not in n]
    return names


def inode(name: str) -> int:
    return os.stat(os.path.join(shm.SHM_DIR, name)).st_ino


def receive(data: np.ndarray, owned: bool = True) -> np.ndarray:
    """Write `data` as a sender would and map it as a receiver would."""
    name = shm.write_segment(data)
    return np.frombuffer(shm.map_segment(name, data.nbytes, owned), dtype=data.dtype)


def test_last_mapping_gone_pools_the_segment_and_the_next_write_reuses_its_pages(enabled):
    a = np.arange(2 * MB // 8, dtype=np.float64)
    got = receive(a)
    assert np.array_equal(got, a)
    (live,) = files(enabled, "live")
    ino = inode(live)
    assert files(enabled, "pool") == []
    del got
    gc.collect()
    assert files(enabled, "live") == []
    (pooled,) = files(enabled, "pool")
    assert inode(pooled) == ino

    b = np.full(2 * MB // 8, 7.0)
    name = shm.write_segment(b)
    assert inode(name) == ino and files(enabled, "pool") == []
    assert np.array_equal(np.frombuffer(shm.map_segment(name, b.nbytes, True)), b)


def test_a_larger_pooled_segment_is_cut_to_the_new_size(enabled):
    got = receive(np.ones(3 * MB // 8))
    del got
    gc.collect()
    small = np.arange(2 * MB // 8, dtype=np.float64)
    name = shm.write_segment(small)
    assert os.stat(os.path.join(shm.SHM_DIR, name)).st_size == small.nbytes
    assert np.array_equal(np.frombuffer(shm.map_segment(name, small.nbytes, True)), small)


def test_a_segment_another_mapping_still_sees_is_never_pooled(enabled):
    """Two receivers of one message: the first to let go must not hand the pages out."""
    a = np.arange(2 * MB // 8, dtype=np.float64)
    name = shm.write_segment(a)
    first = np.frombuffer(shm.map_segment(name, a.nbytes, owned=False))
    second = np.frombuffer(shm.map_segment(name, a.nbytes, owned=False))
    shm.unlink(name)  # the sender lets go once both answered
    del first
    gc.collect()
    assert files(enabled, "pool") == []
    shm.unlink(shm.write_segment(np.zeros(2 * MB // 8)))  # a writer now gets fresh pages
    assert np.array_equal(second, a)
    del second
    gc.collect()
    assert len(files(enabled, "pool")) == 1


def test_memory_sent_on_unchanged_is_not_pooled_while_the_message_is_in_flight(enabled):
    a = np.arange(2 * MB // 8, dtype=np.float64)
    got = receive(a)
    onward = shm.relink(got)  # sent back unmodified: a new name for the same pages
    assert onward is not None
    del got
    gc.collect()
    assert files(enabled, "pool") == []
    back = np.frombuffer(shm.map_segment(onward, a.nbytes, True))
    shm.write_segment(np.zeros(2 * MB // 8))
    assert np.array_equal(back, a)


def test_pool_keeps_at_most_pool_files_segments(enabled):
    held = [receive(np.full(MB // 8, float(i))) for i in range(shm.POOL_FILES + 2)]
    del held
    gc.collect()
    assert len(files(enabled, "pool")) == shm.POOL_FILES
    assert files(enabled, "live") == []


def test_small_or_oversized_pooled_segments_are_not_reused(enabled):
    got = receive(np.ones(9 * MB // 8))
    del got
    gc.collect()
    (pooled,) = files(enabled, "pool")
    name = shm.write_segment(np.ones(2 * MB // 8))  # 9 MB > 4 × 2 MB: not worth cutting down
    assert inode(name) != inode(pooled)
    shm.unlink(name)


def test_trim_pool_unlinks_idle_segments(enabled):
    got = receive(np.ones(MB // 8))
    del got
    gc.collect()
    assert shm.trim_pool(idle=60) == 0 and len(files(enabled, "pool")) == 1
    assert shm.trim_pool(idle=0) == 1 and files(enabled) == []


def test_a_vanished_segment_is_an_error_not_a_crash(enabled):
    with pytest.raises(FileNotFoundError):
        shm.map_segment(f"cohort-{enabled}-{'0' * 16}", MB, True)
    with pytest.raises(ValueError, match="not a cohort segment"):
        shm.map_segment(f"cohort-{enabled}-pool-100000-{'0' * 16}", MB, True)


def _child_drops_and_exits(arr, done):
    del arr
    gc.collect()
    import atexit
    atexit._run_exitfuncs()  # what a normal interpreter exit would run
    done.set()


def _child_holds(arr, dropped, result):
    dropped.wait(30)  # the parent let go of its copy and wrote again meanwhile
    result.put(float(arr.sum()))


def test_a_forked_child_that_exits_leaves_the_parents_segment_alone(enabled):
    import multiprocessing as mp
    fork = mp.get_context("fork")
    got = receive(np.ones(2 * MB // 8))
    done = fork.Event()
    p = fork.Process(target=_child_drops_and_exits, args=(got, done))
    p.start()
    p.join(30)
    assert done.is_set() and p.exitcode == 0
    assert files(enabled, "pool") == []
    shm.unlink(shm.write_segment(np.full(2 * MB // 8, 9.0)))
    assert np.all(got == 1.0)


def test_a_segment_a_forked_child_still_maps_is_not_pooled(enabled):
    import multiprocessing as mp
    fork = mp.get_context("fork")
    got = receive(np.ones(2 * MB // 8))
    dropped, result = fork.Event(), fork.Queue()
    p = fork.Process(target=_child_holds, args=(got, dropped, result))
    p.start()
    del got
    gc.collect()
    assert files(enabled, "pool") == []  # the child may still read those pages
    shm.unlink(shm.write_segment(np.full(2 * MB // 8, 9.0)))
    dropped.set()
    assert result.get(timeout=30) == 2 * MB // 8
    p.join(30)


def test_a_full_dev_shm_empties_the_pool_and_tries_once_more(enabled, monkeypatch):
    import errno
    got = receive(np.ones(MB // 8))
    del got
    gc.collect()
    assert len(files(enabled, "pool")) == 1
    real, calls = shm._write_segment, []

    def full_while_pooled(buf):
        calls.append(1)
        if files(enabled, "pool"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(buf)
    monkeypatch.setattr(shm, "_write_segment", full_while_pooled)
    name = shm.write_segment(np.zeros(4 * MB // 8))  # a size the pool cannot serve
    assert len(calls) == 2 and files(enabled, "pool") == []
    shm.unlink(name)
