"""Put and get streams: objects larger than memory, as real binary file objects.

A `PutStream` writes through to its first copy's location in the caller's
chunks, hashing them on the way (fast checksums: piece by piece on this core
while each piece is in the CPU cache; slow ones: on other cores), so memory
stays constant; nothing is visible until `close` commits it, and an exception
inside ``with`` (or a stream dropped without ``close``) aborts it. File-to-file
copies take the fast paths of `cohort.store.fastcopy`.

A `GetStream` is an `io.RawIOBase`: ``read``, ``readinto``, ``seek``, ``tell``.
It reads the object block by block (4 MiB), verifies each block against the
copy record before handing out any of its bytes, and reads ahead while the
caller is busy. A block that fails its checksum (or a copy that vanished) is
read from the next copy instead; the bad copies are healed when the stream
closes.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..errors import CorruptObject, StoreError
from .backend import BlobReader, Location, Missing
from .checksum import BlockHasher, Checksum, hash_pool
from .fastcopy import CHUNK, Windows, copy_hashing, copy_verified, fused, pwrite_all, regular_fd
from .filestore import _kernel_copy

log = logging.getLogger(__name__)

_HASH_ASIDE = 1 << 20  # writes at least this large: hashed in pieces, or on other threads
_CACHE_BLOCKS = 8     # verified blocks a get stream keeps for seeks back (random access)
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def io_pool() -> ThreadPoolExecutor:
    """The process-wide pool for read-ahead and for writing several copies at once."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(16, thread_name_prefix="cohort-store-io")
        return _pool


def _after_fork() -> None:  # a forked child has the pool but none of its threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_after_fork)


class PutStream(io.RawIOBase):
    """A writable binary stream that becomes one object when closed; `oid` names it."""

    mode = "wb"

    def __init__(self, oid: str, primary: Location, algo: str, block: int,
                 finish: Callable[[Checksum, list], None], cancel: Callable[[], None],
                 replicas: list[Location] = ()):
        super().__init__()
        self.oid = oid
        self.name = oid
        self._finish, self._cancel = finish, cancel
        self._replicas = list(replicas)
        self._tee: list = []  # writers of replicas written alongside (file fast path)
        self._hasher = BlockHasher(algo, block)
        self._size = 0
        self._state = "new"
        self._w = primary.writer(oid)
        self._state = "open"

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def committed(self) -> bool:
        return self._state == "committed"

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, b) -> int:
        """Append `b` (any buffer); returns its length."""
        if self._state != "open":
            raise ValueError(f"put stream {self.oid} is {self._state}")
        mv = memoryview(b)
        if not mv.c_contiguous:
            raise ValueError("put stream: buffer is not contiguous")
        mv = mv.cast("B")
        n = len(mv)
        try:
            if n >= _HASH_ASIDE and fused(self._hasher.algo):  # hash each piece, then write it
                writes = [self._w.write, *(w.write for w in self._tee)]
                for k in range(0, n, CHUNK):
                    piece = mv[k:k + CHUNK]
                    self._hasher.update(piece)
                    for w in writes:
                        w(piece)
                self._size += n
                return n
            if n >= _HASH_ASIDE:  # hash (block by block, on other threads) while writing
                pool = hash_pool()
                futs = [pool.submit(job) for job in self._hasher.plan(mv)]
                try:
                    self._w.write(mv)
                finally:
                    for f in futs:
                        f.result()
            else:
                self._hasher.update(mv)
                self._w.write(mv)
            for w in self._tee:
                w.write(mv)
        except BaseException:
            self.abort()
            raise
        self._size += n
        return n

    def writefile(self, f, length: int | None = None) -> int:
        """Append the rest of file `f` (a binary file or a path), at most `length` bytes.

        From a regular file into a file store the bytes go straight from the
        source's page cache into every copy, checksummed on the way (see
        `cohort.store.fastcopy`); the source must not change meanwhile. Returns
        bytes added.
        """
        if isinstance(f, (str, os.PathLike)):
            with open(f, "rb") as fh:
                return self.writefile(fh, length)
        fd = regular_fd(f)
        copy = getattr(self._w, "copy_from_fd", None)
        if fd is None or copy is None:
            return self._writefile_slow(f, length)
        if self._state != "open":
            raise ValueError(f"put stream {self.oid} is {self._state}")
        start = f.tell()
        end = os.fstat(fd).st_size
        if length is not None:
            end = min(end, start + max(0, length))
        if end <= start:
            return 0
        try:
            if (self._size == 0 and not self._tee and self._replicas
                    and all(hasattr(loc, "root") for loc in self._replicas)):
                # file replicas: copy the source into every copy at once (no copy-back)
                self._tee = [loc.writer(self.oid) for loc in self._replicas]
            if fused(self._hasher.algo):  # replicas: kernel copies on the other cores
                futs = [io_pool().submit(w.copy_from_fd, fd, start, end - start)
                        for w in self._tee]
                try:
                    copy_hashing(fd, start, end, self._hasher, [self._w.write])
                finally:
                    for fut in futs:
                        fut.result()
                self._size += end - start
            else:
                self._writefile_kernel(fd, start, end, copy)
        except BaseException:
            self.abort()
            raise
        f.seek(end)
        return end - start

    def _writefile_kernel(self, fd: int, start: int, end: int, copy: Callable) -> None:
        """Kernel copies (copy_file_range) while other cores hash the blocks: for the
        slow checksums."""
        windows = Windows(fd, start, end, io_pool())
        try:
            for pos, n, m in windows:
                with m as mv:
                    jobs = self._hasher.plan(mv)
                    futs = [hash_pool().submit(job) for job in jobs]
                    futs += [io_pool().submit(w.copy_from_fd, fd, pos, n) for w in self._tee]
                    del jobs
                    try:
                        copy(fd, pos, n)
                    finally:
                        for fut in futs:
                            fut.result()
                        del futs
                self._size += n
        finally:
            windows.close()

    def _writefile_slow(self, f, length: int | None) -> int:
        buf = bytearray(8 << 20)
        mv = memoryview(buf)
        total = 0
        while length is None or total < length:
            want = len(buf) if length is None else min(len(buf), length - total)
            n = f.readinto(mv[:want]) if hasattr(f, "readinto") else None
            if n is None:
                chunk = f.read(want)
                if not chunk:
                    break
                self.write(chunk)
                total += len(chunk)
                continue
            if not n:
                break
            self.write(mv[:n])
            total += n
        return total

    def close(self) -> None:
        """Commit: the object becomes visible under `oid` with all its copies."""
        if self._state == "open":
            self._state = "committing"
            try:
                checksum = self._hasher.finish()
                self._w.commit()
                for w in self._tee:
                    w.commit()
                self._finish(checksum, self._replicas if self._tee else [])
            except BaseException:
                self._state = "failed"
                for w in self._tee:
                    w.abort()
                self._cancel()
                raise
            self._state = "committed"
        super().close()

    def abort(self) -> None:
        """Drop what was written; the OID stays unused (a reserved one can be written again)."""
        if self._state in ("open", "new"):
            self._state = "aborted"
            try:
                self._w.abort()
                for w in self._tee:
                    w.abort()
            finally:
                self._cancel()
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self._state == "open":
                log.info("put stream %s aborted by %s", self.oid, exc_type.__name__)
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":
            log.warning("put stream %s was dropped without close(): aborted", self.oid)
            try:
                self.abort()
            except Exception:
                pass
        try:
            super().close()
        except Exception:
            pass


class GetStream(io.RawIOBase):
    """A readable, seekable binary stream over one object, verified block by block."""

    mode = "rb"

    def __init__(self, oid: str, checksum: Checksum, locations: list[Location],
                 verify: bool = True, on_close: Callable[[list], None] | None = None):
        super().__init__()
        self.oid = self.name = oid
        self._cs = checksum
        self._size = checksum.size
        self._block = checksum.block
        self._nblocks = checksum.nblocks
        self._locs = list(locations)
        self._readers: list[BlobReader | None] = [None] * len(self._locs)
        self._bad: dict[int, str] = {}
        self._verify = verify
        self._on_close = on_close
        self._lock = threading.Lock()
        self._pos = 0
        self._cache: dict[int, bytes] = {}
        self._ahead: dict[int, Future] = {}
        self._last = -1
        self._depth = max(1, max((loc.readahead for loc in self._locs), default=1))
        if self._first_good() is None:
            raise CorruptObject(f"object {oid}: no readable copy ({self._why()})")

    # --- io interface -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        self._check()
        mv = memoryview(b).cast("B")
        total = 0
        while total < len(mv) and self._pos < self._size:
            idx = self._pos // self._block
            blk = self._get_block(idx)
            off = self._pos - idx * self._block
            k = min(len(mv) - total, len(blk) - off)
            mv[total:total + k] = blk[off:off + k]
            total += k
            self._pos += k
        return total

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        if size is None or size < 0:
            size = self._size - self._pos
        parts = []
        want = min(size, max(0, self._size - self._pos))
        while want > 0:
            idx = self._pos // self._block
            blk = self._get_block(idx)
            off = self._pos - idx * self._block
            k = min(want, len(blk) - off)
            parts.append(blk if (off == 0 and k == len(blk)) else memoryview(blk)[off:off + k])
            self._pos += k
            want -= k
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]  # a whole block: no copy
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def copyto(self, f) -> int:
        """Write the rest of the object (from the current position) to file `f`
        (a binary file or a path); returns the bytes written.

        From a file store into a regular file the bytes go straight from the
        stored copy's page cache into the file, each block verified on the way
        (see `cohort.store.fastcopy`); a bad block is taken from another copy.
        If a block is bad in every copy, `CorruptObject` is raised and a file
        this call was extending ends where the verified bytes end.
        """
        self._check()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                return self.copyto(fh)
        total = 0
        fd = regular_fd(f, write=True)
        if fd is None or not all(hasattr(loc, "root") for loc in self._locs):
            return total + self._copyto_slow(f)
        self._drop_ahead()  # the blocks go by the fast path from here
        if self._pos % self._block and self._pos < self._size:  # up to a block boundary
            idx, off = divmod(self._pos, self._block)
            blk = self._cache.get(idx)
            head = memoryview(blk if blk is not None else self._load(idx))[off:]
            f.write(head)
            self._pos += len(head)
            total += len(head)
        f.flush()
        at = os.lseek(fd, 0, os.SEEK_CUR)
        extending = os.fstat(fd).st_size <= at
        pos0 = self._pos
        fast = fused(self._cs.algo)
        if self._verify and not fast and not extending:
            return total + self._copyto_slow(f)  # in place: never write unverified bytes
        try:
            if not self._verify:
                self._copyto_kernel(fd, at, check=False)
            elif fast:
                self._copyto_fused(fd, at, verify_first=not extending)
            else:
                self._copyto_kernel(fd, at, check=True)
        except BaseException:
            if extending and self._verify:  # keep only the bytes that verified
                os.ftruncate(fd, at + self._pos - pos0)
            raise
        finally:
            os.lseek(fd, at + self._pos - pos0, os.SEEK_SET)
            f.seek(at + self._pos - pos0)  # resynchronise a buffered file object
        return total + self._pos - pos0

    def _copyto_slow(self, f) -> int:
        total = 0
        while chunk := self.read(self._block):
            f.write(chunk)
            total += len(chunk)
        return total

    def _copy_source(self) -> int:
        i = self._first_good()
        if i is None:
            raise CorruptObject(f"object {self.oid}: no readable copy ({self._why()})")
        return i

    def _bad_block(self, i: int, idx: int) -> None:
        log.warning("object %s: block %d of the copy at %s fails its checksum",
                    self.oid, idx, self._locs[i].url)
        with self._lock:
            self._bad[i] = f"block {idx} corrupt"

    def _copyto_fused(self, fd: int, at: int, verify_first: bool) -> None:
        """Copy and verify on this core, block by block (fast checksums)."""
        pos0 = self._pos
        while self._pos < self._size:
            i = self._copy_source()
            blocks = copy_verified(self._readers[i].fd, fd, self._cs, self._pos, self._size,
                                   at + self._pos - pos0, verify_first)
            try:
                for idx, n, ok in blocks:
                    if not ok:  # that block from a good copy, then go on from that copy
                        self._bad_block(i, idx)
                        data = self._load(idx)
                        pwrite_all(fd, data, at + self._pos - pos0)
                        self._pos += len(data)
                        break
                    self._pos += n
            finally:
                blocks.close()

    def _copyto_kernel(self, fd: int, at: int, check: bool) -> None:
        """Kernel copies (copy_file_range) while other cores verify the blocks from
        the page cache (slow checksums), or without verifying."""
        pos0 = self._pos
        while self._pos < self._size:
            i = self._copy_source()
            src = self._readers[i].fd
            if not check:
                _kernel_copy(src, fd, self._size - self._pos, self._pos)
                self._pos = self._size
                return
            windows = Windows(src, self._pos, self._size, io_pool(),
                              max(1, (64 << 20) // self._block) * self._block)
            try:
                for pos, n, m in windows:
                    first = pos // self._block
                    with m as mv:
                        futs = [io_pool().submit(self._cs.block_ok, first + k,
                                                 mv[k * self._block:(k + 1) * self._block])
                                for k in range(-(-n // self._block))]
                        try:
                            _kernel_copy(src, fd, n, pos)
                        finally:
                            oks = [fut.result() for fut in futs]
                            del futs
                    for k, ok in enumerate(oks):
                        if not ok:  # rewrite that block from a good copy
                            self._pos += k * self._block  # the blocks before it are good
                            self._bad_block(i, first + k)
                            data = self._load(first + k)
                            pwrite_all(fd, data, at + self._pos - pos0)
                            self._pos += len(data)
                            break
                    else:
                        self._pos += n
                    os.lseek(fd, at + self._pos - pos0, os.SEEK_SET)
                    if i in self._bad:
                        break  # go on from another copy
            finally:
                windows.close()

    def close(self) -> None:
        if self.closed:
            return
        self._drop_ahead()
        self._cache.clear()
        for r in self._readers:
            if r is not None:
                r.close()
        super().close()
        if self._bad and self._on_close is not None:
            self._on_close([self._locs[i] for i in self._bad])

    def _drop_ahead(self) -> None:
        """Cancel the read-ahead (and wait for loads already running)."""
        for fut in self._ahead.values():
            fut.cancel()
        for fut in self._ahead.values():
            try:
                fut.result()
            except Exception:
                pass
        self._ahead.clear()

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    # --- blocks -----------------------------------------------------------------------
    def _get_block(self, idx: int) -> bytes:
        blk = self._cache.pop(idx, None)
        if blk is None:
            fut = self._ahead.pop(idx, None)
            blk = fut.result() if fut is not None else self._load(idx)
            if len(self._cache) >= _CACHE_BLOCKS:
                self._cache.pop(next(iter(self._cache)))  # the least recently used
        self._cache[idx] = blk  # (re)inserted last: most recently used
        sequential = idx in (self._last, self._last + 1)
        self._last = idx
        # drop read-ahead that a seek made useless; schedule the next blocks
        for j in [j for j in self._ahead if j <= idx or j > idx + self._depth]:
            self._ahead.pop(j).cancel()
        if sequential:
            for j in range(idx + 1, min(idx + 1 + self._depth, self._nblocks)):
                if j not in self._ahead and j not in self._cache:
                    self._ahead[j] = io_pool().submit(self._load, j)
        return blk

    def _reader_for(self, i: int) -> BlobReader | None:
        with self._lock:
            if i in self._bad:
                return None
            r = self._readers[i]
            if r is None:
                try:
                    r = self._locs[i].reader(self.oid)
                except Missing:
                    self._bad[i] = "missing"
                    return None
                if r.size != self._size:
                    r.close()
                    self._bad[i] = f"size {r.size} instead of {self._size}"
                    return None
                self._readers[i] = r
            return r

    def _first_good(self) -> int | None:
        for i in range(len(self._locs)):
            if self._reader_for(i) is not None:
                return i
        return None

    def _why(self) -> str:
        return "; ".join(f"{self._locs[i].url}: {why}" for i, why in sorted(self._bad.items()))

    def _load(self, idx: int) -> bytes:
        off = idx * self._block
        n = min(self._block, self._size - off)
        error: Exception | None = None
        for i in range(len(self._locs)):
            r = self._reader_for(i)
            if r is None:
                continue
            try:
                data = r.read_range(off, n)
            except Missing:
                with self._lock:
                    self._bad[i] = "missing"
                continue
            except Exception as e:  # transient: try another copy, do not "heal"
                log.warning("object %s: reading %s failed: %s", self.oid, self._locs[i].url, e)
                error = e
                continue
            if len(data) == n and (not self._verify or self._cs.block_ok(idx, data)):
                return data
            log.warning("object %s: block %d of the copy at %s fails its checksum",
                        self.oid, idx, self._locs[i].url)
            with self._lock:
                self._bad[i] = f"block {idx} corrupt"
        if error is not None and len(self._bad) < len(self._locs):
            raise StoreError(f"object {self.oid}: cannot read block {idx}: {error}") from error
        raise CorruptObject(f"object {self.oid}: every copy is bad ({self._why()}); "
                            "run `cohort store fsck` to see what is left")


def run_all(calls: list) -> None:
    """Run the no-argument `calls` (one per copy) at once; raise the first failure."""
    if len(calls) == 1:
        calls[0]()
        return
    futs = [io_pool().submit(c) for c in calls]
    errors = []
    for f in futs:
        try:
            f.result()
        except BaseException as e:
            errors.append(e)
    if errors:
        raise errors[0]
