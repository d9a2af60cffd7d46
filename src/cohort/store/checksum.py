"""Block checksums: what every stored copy carries so a reader can trust it.

An object is cut into fixed-size blocks (4 MiB by default) and each block gets
its own digest: XXH3-128 by default (the xxhash package, ~7 GB/s a core here,
so verifying costs little beside copying), else CRC-32 (zlib, ~1.8 GB/s: the
check S3 itself offers against corruption), or sha256 / blake2b truncated to
128 bits for stores that want a cryptographic hash (``checksum="sha256"``,
~1.1 GB/s). Per-block digests let a get stream verify each
block before handing out its bytes (also after a seek), let big objects be
hashed on several cores at once, and let a reader switch to another copy in the
middle of an object. The object's overall ``digest`` is the sha256 of the
algorithm name, block size and the concatenated block digests; two copies are
the same object exactly when their digests agree.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

try:
    import xxhash
except ImportError:  # pragma: no cover - a dependency; CRC-32 serves without it
    xxhash = None

BLOCK = 4 << 20
ALGOS = ("sha256", "blake2b", "crc32", "xxh3")
DEFAULT_ALGO = "xxh3" if xxhash is not None else "crc32"
_PARALLEL_MIN = 2 * BLOCK  # in-memory data this large is hashed on several threads


class _CRC32:
    """zlib.crc32 behind the hashlib interface."""

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


def _new(algo: str):
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "blake2b":
        return hashlib.blake2b(digest_size=16)
    if algo == "crc32":
        return _CRC32()
    if algo == "xxh3":
        if xxhash is None:
            raise ValueError("checksum 'xxh3' needs the xxhash package (pip install xxhash)")
        return xxhash.xxh3_128()
    raise ValueError(f"unknown checksum algorithm {algo!r}; choose one of {', '.join(ALGOS)}")


def new_hasher(algo: str):
    """A fresh hashlib-style object (``update``, ``digest``) for `algo`; a block's
    stored digest is ``digest()[:digest_size(algo)]``."""
    return _new(algo)


def digest_size(algo: str) -> int:
    """Bytes stored per block for `algo`."""
    return 4 if algo == "crc32" else 16


def block_digest(algo: str, data) -> bytes:
    """The stored digest of one block."""
    h = _new(algo)
    h.update(data)
    return h.digest()[:digest_size(algo)]


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def hash_pool() -> ThreadPoolExecutor:
    """The process-wide thread pool that hashes (hashlib and zlib release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)),
                                       thread_name_prefix="cohort-store-hash")
        return _pool


def _after_fork() -> None:  # a forked child has the pool but none of its threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True)
class Checksum:
    """The block digests of one object's bytes."""

    algo: str
    block: int
    size: int
    blocks: bytes  # concatenated per-block digests

    @property
    def nblocks(self) -> int:
        return -(-self.size // self.block)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(f"{self.algo}:{self.block}:{self.size}:".encode())
        h.update(self.blocks)
        return f"{self.algo}-blocks:{h.hexdigest()}"

    def expected(self, index: int) -> bytes:
        n = digest_size(self.algo)
        return self.blocks[index * n:(index + 1) * n]

    def block_size(self, index: int) -> int:
        """The length of block `index` (the last one may be short)."""
        return self.block if index < self.nblocks - 1 else self.size - index * self.block

    def block_ok(self, index: int, data) -> bool:
        """Whether `data` is block `index` as written."""
        return (len(data) == self.block_size(index)
                and block_digest(self.algo, data) == self.expected(index))

    def matches(self, data) -> bool:
        """Whether `data` is the whole object as written (hashed in parallel when large)."""
        mv = memoryview(data).cast("B")
        if len(mv) != self.size:
            return False
        return compute(mv, self.algo, self.block).blocks == self.blocks

    def to_record(self) -> dict:
        return {"algo": self.algo, "block": self.block, "size": self.size,
                "digest": self.digest, "blocks": base64.b64encode(self.blocks).decode()}

    @classmethod
    def from_record(cls, d: dict) -> "Checksum":
        return cls(d["algo"], int(d["block"]), int(d["size"]), base64.b64decode(d["blocks"]))


def compute(data, algo: str = DEFAULT_ALGO, block: int = BLOCK) -> Checksum:
    """The checksum of an in-memory buffer."""
    mv = memoryview(data).cast("B")
    starts = range(0, len(mv), block)
    if len(mv) >= _PARALLEL_MIN:
        digests = hash_pool().map(lambda i: block_digest(algo, mv[i:i + block]), starts)
    else:
        digests = (block_digest(algo, mv[i:i + block]) for i in starts)
    return Checksum(algo, block, len(mv), b"".join(digests))


class BlockHasher:
    """Incremental block checksum of a stream of writes of any sizes."""

    def __init__(self, algo: str = DEFAULT_ALGO, block: int = BLOCK):
        _new(algo)  # validates
        self.algo, self.block = algo, block
        self._h = _new(algo)
        self._fill = 0
        self._size = 0
        self._digests: list[bytes] = []

    def update(self, data) -> None:
        mv = memoryview(data).cast("B")
        n = len(mv)
        self._size += n
        if self._fill + n < self.block:  # within the current block (the usual case)
            self._h.update(mv)
            self._fill += n
            return
        while len(mv):
            take = min(len(mv), self.block - self._fill)
            self._h.update(mv[:take])
            self._fill += take
            mv = mv[take:]
            if self._fill == self.block:
                self._digests.append(self._h.digest()[:digest_size(self.algo)])
                self._h = _new(self.algo)
                self._fill = 0

    def plan(self, data) -> list:
        """The update by `data` as independent jobs: run them all (at once, on several
        threads, in any order) before the next `plan`/`update`/`finish`."""
        mv = memoryview(data).cast("B")
        self._size += len(mv)
        block, n = self.block, digest_size(self.algo)
        jobs = []
        digests = self._digests
        if self._fill and len(mv):  # complete the current block
            take = min(len(mv), block - self._fill)
            h, part = self._h, mv[:take]
            self._fill += take
            mv = mv[take:]
            if self._fill == block:
                slot = len(digests)
                digests.append(b"")

                def head(h=h, part=part, slot=slot):
                    h.update(part)
                    digests[slot] = h.digest()[:n]
                jobs.append(head)
                self._h, self._fill = _new(self.algo), 0
            else:
                jobs.append(lambda h=h, part=part: h.update(part))
        while len(mv) >= block:  # whole blocks: independent
            slot = len(digests)
            digests.append(b"")

            def whole(part=mv[:block], slot=slot):
                digests[slot] = block_digest(self.algo, part)
            jobs.append(whole)
            mv = mv[block:]
        if len(mv):  # start the next block
            h = self._h
            self._fill = len(mv)
            jobs.append(lambda h=h, part=mv: h.update(part))
        return jobs

    def finish(self) -> Checksum:
        if self._fill:
            self._digests.append(self._h.digest()[:digest_size(self.algo)])
            self._fill = 0
            self._h = _new(self.algo)
        return Checksum(self.algo, self.block, self._size, b"".join(self._digests))
