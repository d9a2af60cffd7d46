"""Large buffers between processes on one host, through POSIX shared memory.

TCP loopback moves about 1 GB/s here and a message crosses it twice (sender
to controller to receiver). A raw buffer of `THRESHOLD` bytes or more sent to
a peer on the same host is instead written once into a file under /dev/shm
(`pwrite`, no user-space copy) and the message carries its name; the receiver
maps it copy-on-write, so it gets a writable array of its own without copying.
Memory that arrived that way and was not written since is sent on by hard
link, without writing it again (checked page by page in /proc/self/pagemap).

Filling fresh tmpfs pages costs about 60 % more than rewriting pages that
exist (the kernel allocates and zeroes each one), so a segment nobody maps any
more is not unlinked but renamed into a small *pool*; the next writer on this
host renames it out again and writes over its pages. A segment is pooled only
by the last process that maps it: every mapping keeps a name of its own linked
while it lives, so a link count of one means no other process can still see
those pages. Idle pooled segments are unlinked after `POOL_IDLE` seconds.

Peers share a /dev/shm only if they see the same probe file, which the
controller writes with a random token (containers on one host may not share
/dev/shm, so hostnames are not enough).
"""

from __future__ import annotations

import array
import atexit
import ctypes
import errno
import logging
import mmap
import os
import re
import sys
import time
import weakref

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
THRESHOLD = 1 << 20
_NAME = re.compile(r"^cohort-[0-9a-f]{1,32}-[0-9a-f]{1,32}$")
POOL_FILES = 4             # pooled segments kept at most, per cluster and host
POOL_BYTES = 1 << 30       # and their total size at most
POOL_IDLE = 10.0           # seconds a pooled segment waits for a writer before it is unlinked
_POOL = "-pool-"           # cohort-<cluster>-pool-<size hex>-<random hex>: never mapped by name

_prefix: str | None = None  # set by enable() once this process shares the controller's /dev/shm


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


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_segment(buf) -> str:
    """Copy `buf` into a segment (a pooled one if it fits, else a new one); return its name."""
    try:
        return _write_segment(buf)
    except OSError as e:
        if e.errno != errno.ENOSPC or not trim_pool(idle=0):
            raise
        return _write_segment(buf)  # the pool held the space this needs


def _write_segment(buf) -> str:
    view = memoryview(buf).cast("B")
    name = f"{_prefix}-{os.urandom(8).hex()}"
    path = os.path.join(SHM_DIR, name)
    reused = _take_pooled(view.nbytes, path)
    flags = os.O_WRONLY if reused is not None else os.O_CREAT | os.O_EXCL | os.O_WRONLY
    fd = os.open(path, flags, 0o600)
    try:  # one pwrite: parallel writers measured no faster (tmpfs page allocation bounds it)
        _pwrite_all(fd, view, 0)
        if reused is not None and reused > view.nbytes:
            os.ftruncate(fd, view.nbytes)
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    os.close(fd)
    return name


def _pooled() -> list[tuple[int, str]]:
    """(size, name) of this cluster's pooled segments."""
    start = f"{_prefix}{_POOL}"
    out = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return out
    for n in names:
        if n.startswith(start):
            try:
                out.append((int(n[len(start):].split("-", 1)[0], 16), n))
            except ValueError:
                pass
    return out


def _take_pooled(nbytes: int, path: str) -> int | None:
    """Rename a pooled segment worth rewriting to `path`; its size, or None if none fits.

    The smallest that holds `nbytes` is taken; failing that, the largest that
    holds at least half (the write extends it). Rename is atomic, so two
    writers never get the same one.
    """
    pool = _pooled()
    if not pool:
        return None
    fits = sorted(p for p in pool if p[0] >= nbytes)
    smaller = sorted((p for p in pool if nbytes // 2 <= p[0] < nbytes), reverse=True)
    for size, n in fits[:1] + smaller[:1]:
        if size > 4 * nbytes:
            continue  # truncating most of it away would cost what it saves
        try:
            os.rename(os.path.join(SHM_DIR, n), path)
            return size
        except FileNotFoundError:  # another writer took it
            continue
    return None


def _pool_or_unlink(name: str) -> None:
    """The last mapping of segment `name` is gone: pool it if nobody else can see it."""
    path = os.path.join(SHM_DIR, name)
    try:
        st = os.stat(path)
    except OSError:
        return
    if st.st_nlink == 1 and st.st_size >= THRESHOLD and _prefix is not None:
        pool = _pooled()
        if len(pool) < POOL_FILES and sum(p[0] for p in pool) + st.st_size <= POOL_BYTES:
            dest = f"{_prefix}{_POOL}{st.st_size:x}-{os.urandom(8).hex()}"
            try:
                os.rename(path, os.path.join(SHM_DIR, dest))
                return
            except OSError:
                pass
    unlink(name)


def trim_pool(idle: float = POOL_IDLE) -> int:
    """Unlink pooled segments no writer took for `idle` seconds; how many went."""
    if _prefix is None:
        return 0
    n = 0
    for _, name in _pooled():
        path = os.path.join(SHM_DIR, name)
        try:
            if time.time() - os.stat(path).st_ctime >= idle:  # a rename sets ctime
                os.unlink(path)
                n += 1
        except OSError:
            pass
    return n


class _Mapping(mmap.mmap):
    """A mapped segment (a subclass only so that it can be weakly referenced)."""


# id(mapping) -> (name kept linked, address, nbytes): segments this process mapped.
# Sending such memory on, unmodified, needs no copy: a hard link to the same
# file is enough (sending an array straight back after a push is common).
_kept: dict[int, tuple[str, int, int]] = {}


def map_segment(name: str, nbytes: int, owned: bool) -> memoryview:
    """Map a segment copy-on-write; the caller's writes stay private.

    The mapping gets a name of its own, linked until the mapping is
    garbage-collected, so the link count always counts the processes that can
    still see the pages (plus messages in flight). An `owned` segment (this
    process is its only receiver) loses the sender's name at once; otherwise
    the sender unlinks it whenever it likes.
    """
    if not _NAME.match(name):
        raise ValueError(f"not a cohort segment name: {name!r}")
    path = os.path.join(SHM_DIR, name)
    kept = f"{name.rsplit('-', 1)[0]}-{os.urandom(8).hex()}"
    kept_path = os.path.join(SHM_DIR, kept)
    try:
        os.link(path, kept_path)
    except FileNotFoundError:
        raise
    except OSError:  # no name of our own (no hard links here?): a private copy keeps pooling safe
        view = _read_copy(path, nbytes)
        if owned:
            unlink(name)
        return view
    try:
        fd = os.open(kept_path, os.O_RDONLY)
        try:
            mm = _Mapping(fd, nbytes, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
    except BaseException:
        unlink(kept)
        raise
    if owned:
        unlink(name)
    address = ctypes.addressof(ctypes.c_char.from_buffer(mm))  # ACCESS_COPY is writable
    _kept[id(mm)] = (kept, address, nbytes)
    fin = weakref.finalize(mm, _forget, id(mm), kept)
    fin.atexit = False  # `_at_exit` unlinks instead: other threads may still read it
    _finalizers[id(mm)] = fin
    return memoryview(mm)


def _read_copy(path: str, nbytes: int) -> memoryview:
    data = bytearray(nbytes)
    view = memoryview(data)
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise ValueError(f"segment {os.path.basename(path)} is shorter than {nbytes} bytes")
            got += n
    return view


def _forget(key: int, name: str) -> None:
    _kept.pop(key, None)
    _finalizers.pop(key, None)
    if name in _forked_with:  # a forked child may map it still, without a name
        _forked_with.discard(name)
        unlink(name)
    else:
        _pool_or_unlink(name)


# A forked child inherits this process's mappings but adds no link for them,
# so the link count no longer counts everyone who sees the pages: such
# segments are never pooled, and the child leaves the names to the parent.
_finalizers: dict[int, weakref.finalize] = {}
_forked_with: set[str] = set()


def _before_fork() -> None:
    _forked_with.update(v[0] for v in _kept.values())


def _after_fork_in_child() -> None:
    for fin in _finalizers.values():
        fin.detach()
    _finalizers.clear()
    _kept.clear()
    _forked_with.clear()


def _at_exit() -> None:
    """Unlink (never pool) the names of mappings still alive at exit."""
    for name, _, _ in list(_kept.values()):
        unlink(name)
    _kept.clear()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
atexit.register(_at_exit)


def _backing(buf) -> tuple[str, int, int] | None:
    """The kept segment whose whole mapping `buf` is, if any."""
    o = buf.obj if isinstance(buf, memoryview) else buf
    for _ in range(8):
        if isinstance(o, _Mapping):
            return _kept.get(id(o))
        nxt = getattr(o, "base", None)
        if nxt is None and isinstance(o, memoryview):
            nxt = o.obj
        if nxt is None or nxt is o:
            return None
        o = nxt
    return None


_PAGE = mmap.PAGESIZE
_PRESENT, _FILE_OR_SHARED = 1 << 63, 1 << 61


def _untouched(address: int, nbytes: int) -> bool:
    """True if no page of this private mapping was written (none is anonymous now)."""
    first, last = address // _PAGE, (address + nbytes - 1) // _PAGE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            raw = f.read((last - first + 1) * 8)
    except OSError:
        return False
    entries = array.array("Q")
    entries.frombytes(raw)
    if sys.byteorder != "little":
        entries.byteswap()
    mask = _PRESENT | _FILE_OR_SHARED | (1 << 62)  # swapped pages count as written
    return all(e & mask != _PRESENT for e in entries) and len(entries) == last - first + 1


def relink(buf) -> str | None:
    """A new name for the segment `buf` was received in, if unmodified; None otherwise."""
    if not _kept:
        return None
    info = _backing(buf)
    if info is None:
        return None
    name, address, nbytes = info
    view = memoryview(buf)
    if view.nbytes != nbytes:
        return None
    try:
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) != address:
            return None
    except (TypeError, ValueError):
        return None
    if not _untouched(address, nbytes):
        return None
    new = f"{_prefix}-{os.urandom(8).hex()}"
    try:
        os.link(os.path.join(SHM_DIR, name), os.path.join(SHM_DIR, new))
    except OSError:
        return None
    return new


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
            name = relink(b) or write_segment(b)
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


def restore(bufs: list, entries, owned: bool = True) -> list:
    """Receiver side: replace placeholder frames by their mapped segments."""
    out = list(bufs)
    for i, name, nbytes in entries:
        out[i] = map_segment(name, nbytes, owned)
    return out

