"""Large buffers between processes on one host, through POSIX shared memory.

TCP loopback moves about 1 GB/s here and a message crosses it twice (sender
to controller to receiver). A raw buffer of `THRESHOLD` bytes or more sent to
a peer on the same host is instead written once into a file under /dev/shm
(parallel `pwrite`, no user-space copy) and the message carries its name; the
receiver maps it copy-on-write, so it gets a writable array of its own without
copying, and whoever owns the segment unlinks it.

Peers share a /dev/shm only if they see the same probe file, which the
controller writes with a random token (containers on one host may not share
/dev/shm, so hostnames are not enough).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
THRESHOLD = 1 << 20
_NAME = re.compile(r"^cohort-[0-9a-f]{1,32}-[0-9a-f]{1,32}$")

_prefix: str | None = None  # set by enable() once this process shares the controller's /dev/shm
_writers: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def probe_path(cluster_id: str) -> str:
    return os.path.join(SHM_DIR, f"cohort-{cluster_id}-probe")


def create_probe(cluster_id: str, token: str) -> bool:
    """Controller side: write the probe file other processes look for."""
    if not os.path.isdir(SHM_DIR):
        return False
    try:
        fd = os.open(probe_path(cluster_id), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return True
    except OSError as e:
        log.info("no shared memory transport: %s", e)
        return False


def enable(cluster_id: str | None, token: str | None) -> bool:
    """Turn the transport on in this process if it shares the controller's /dev/shm."""
    global _prefix
    if not cluster_id or not token:
        return False
    try:
        with open(probe_path(cluster_id)) as f:
            same = f.read() == token
    except OSError:
        same = False
    _prefix = f"cohort-{cluster_id}" if same else None
    return same


def enabled() -> bool:
    return _prefix is not None


def sweep(cluster_id: str) -> int:
    """Remove every segment (and the probe) a cluster left behind."""
    n = 0
    start = f"cohort-{cluster_id}-"
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(start):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                n += 1
            except OSError:
                pass
    return n


def _pool() -> ThreadPoolExecutor:
    global _writers
    with _lock:
        if _writers is None:
            _writers = ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2)),
                                          thread_name_prefix="cohort-shm")
        return _writers


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_segment(buf) -> str:
    """Copy `buf` into a new segment; return its name."""
    view = memoryview(buf).cast("B")
    name = f"{_prefix}-{os.urandom(8).hex()}"
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        nbytes = view.nbytes
        pieces = 2 if nbytes >= 8 * THRESHOLD else 1
        step = -(-nbytes // pieces)
        if pieces == 1:
            _pwrite_all(fd, view, 0)
        else:
            futs = [_pool().submit(_pwrite_all, fd, view[i:i + step], i)
                    for i in range(0, nbytes, step)]
            for f in futs:
                f.result()
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    os.close(fd)
    return name


def map_segment(name: str, nbytes: int, unlink_after: bool) -> memoryview:
    """Map a segment copy-on-write; the caller's writes stay private."""
    if not _NAME.match(name):
        raise ValueError(f"not a cohort segment name: {name!r}")
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
        if unlink_after:
            unlink(name)
    return memoryview(mm)


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def offload(bufs: list, stream_idx: set, header: dict) -> list:
    """Move large raw buffers into segments; record them in `header["shm"]`.

    Returns the new buffer list (offloaded ones become empty frames).
    """
    if _prefix is None:
        return bufs
    entries = []
    out = list(bufs)
    for i, b in enumerate(bufs):
        if i in stream_idx:
            continue
        nbytes = memoryview(b).nbytes
        if nbytes < THRESHOLD:
            continue
        try:
            name = write_segment(b)
        except OSError as e:  # /dev/shm full: fall back to the socket
            log.warning("shared memory write failed (%s); sending %d bytes by socket", e, nbytes)
            continue
        entries.append([i, name, nbytes])
        out[i] = b""
    if entries:
        header["shm"] = entries
    return out


def discard(header: dict) -> None:
    """Unlink the segments of a message that will never be read (dropped, undeliverable)."""
    if not header.get("shm_keep"):
        for entry in header.get("shm", ()):
            unlink(entry[1])


def restore(bufs: list, entries, unlink_after: bool = True) -> list:
    """Receiver side: replace placeholder frames by their mapped segments."""
    out = list(bufs)
    for i, name, nbytes in entries:
        out[i] = map_segment(name, nbytes, unlink_after)
    return out

