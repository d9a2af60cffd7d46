"""File-backed locations: a folder per root, atomic by temp file + rename.

Writers create ``tmp/<oid>.<random>.part`` in the root (same file system as
``data/``), hold an exclusive ``flock`` on it while writing, and rename it into
``data/<oid[:2]>/<oid>`` on commit. A temp file nobody holds locked was left by
a writer that died; fsck reports it as an orphan. Copies between roots use
``os.copy_file_range`` (a kernel-side copy). ``fsync=True`` makes commits
durable against power loss (at a price); by default the page cache decides.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from ..errors import StoreError
from .backend import BlobReader, BlobWriter, Entry, Location, Missing, data_key

log = logging.getLogger(__name__)


def path_from_url(spec: str) -> Path:
    """A folder from ``file:///abs/path``, ``/abs/path`` or ``relative/path``."""
    if spec.startswith("file:"):
        u = urlparse(spec)
        if u.netloc not in ("", "localhost"):
            raise StoreError(f"file URL {spec!r} names host {u.netloc!r}: use "
                             "file:///absolute/path (three slashes)")
        return Path(unquote(u.path)).expanduser().resolve()
    return Path(spec).expanduser().resolve()


def _mkdir(p: Path) -> None:
    p.mkdir(parents=True, exist_ok=True)


class _Writer(BlobWriter):
    def __init__(self, loc: "FileLocation", final: Path):
        self.loc, self.final = loc, final
        tmpdir = loc.root / "tmp"
        _mkdir(tmpdir)
        self.tmp = tmpdir / f"{final.name}.{secrets.token_hex(6)}.part"
        self.fd = os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, data: memoryview) -> None:
        fd = self.fd
        while len(data):
            n = os.write(fd, data)
            data = data[n:]

    def copy_from_fd(self, src_fd: int, offset: int, n: int) -> None:
        """Append `n` bytes of another file from `offset`, copied inside the kernel."""
        _kernel_copy(src_fd, self.fd, n, offset)

    def commit(self) -> None:
        if self.loc.fsync:
            os.fsync(self.fd)
        try:
            os.rename(self.tmp, self.final)
        except FileNotFoundError:
            _mkdir(self.final.parent)
            os.rename(self.tmp, self.final)
        os.close(self.fd)
        self.fd = -1
        if self.loc.fsync:
            dfd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


class _Reader(BlobReader):
    def __init__(self, path: Path):
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise Missing(str(path)) from None
        self.size = os.fstat(self.fd).st_size

    def read_range(self, offset: int, n: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) < n and offset + len(data) < self.size:  # short read: finish it
            parts = [data]
            got = len(data)
            while got < n:
                more = os.pread(self.fd, n - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileLocation(Location):
    """A folder holding data/, tmp/ and small keys."""

    readahead = 2  # two blocks verified at once, on two cores

    def __init__(self, root: Path, fsync: bool = False):
        self.root = Path(root)
        self.fsync = fsync
        self.url = "file://" + str(self.root)

    def __repr__(self) -> str:
        return f"FileLocation({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FileLocation) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def sub(self, spec: str) -> "FileLocation":
        if "://" in spec and not spec.startswith("file:"):
            raise StoreError(f"root {spec!r} is not a folder: a file:// store keeps its "
                             "copies in folders (absolute, file://, or relative to the store)")
        if spec.startswith("file:") or os.path.isabs(spec) or spec.startswith("~"):
            return FileLocation(path_from_url(spec), self.fsync)
        return FileLocation(self.root / spec, self.fsync)

    # --- small keys -------------------------------------------------------------
    def get_key(self, key: str) -> bytes:
        try:
            with open(self.root / key, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise Missing(key) from None

    def put_key(self, key: str, data: bytes, exclusive: bool = False) -> bool:
        final = self.root / key
        tmpdir = self.root / "tmp"
        _mkdir(tmpdir)
        tmp = tmpdir / f"{final.name}.{secrets.token_hex(6)}.key"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        try:
            for attempt in (0, 1):
                try:
                    if exclusive:
                        try:
                            os.link(tmp, final)  # atomic create-if-absent, content whole
                        except (FileExistsError, FileNotFoundError):
                            raise
                        except OSError:  # no hard links here: exclusive create, then fill
                            fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                            with os.fdopen(fd, "wb") as f:
                                f.write(data)
                    else:
                        os.replace(tmp, final)
                    return True
                except FileExistsError:
                    return False
                except FileNotFoundError:
                    if attempt:
                        raise
                    _mkdir(final.parent)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return False  # not reached

    def delete_key(self, key: str) -> None:
        try:
            os.unlink(self.root / key)
        except FileNotFoundError:
            pass

    def list_keys(self, prefix: str) -> Iterator[str]:
        try:
            with os.scandir(self.root / prefix) as it:
                for e in it:
                    if e.is_file():
                        yield prefix + e.name
        except FileNotFoundError:
            return

    # --- data -------------------------------------------------------------------
    def _path(self, oid: str) -> Path:
        return self.root / data_key(oid)

    def writer(self, oid: str) -> BlobWriter:
        return _Writer(self, self._path(oid))

    def reader(self, oid: str) -> BlobReader:
        return _Reader(self._path(oid))

    def read_data(self, oid: str) -> bytes:
        try:
            with open(self._path(oid), "rb", buffering=0) as f:
                return f.readall()
        except (FileNotFoundError, NotADirectoryError):
            raise Missing(oid) from None

    def data_size(self, oid: str) -> int:
        try:
            return os.stat(self._path(oid)).st_size
        except (FileNotFoundError, NotADirectoryError):
            raise Missing(oid) from None

    def copy_data(self, src: Location, oid: str) -> None:
        w = _Writer(self, self._path(oid))
        try:
            if isinstance(src, FileLocation):
                try:
                    with open(src._path(oid), "rb", buffering=0) as f:
                        _kernel_copy(f.fileno(), w.fd, os.fstat(f.fileno()).st_size, 0)
                except FileNotFoundError:
                    raise Missing(oid) from None
            else:
                r = src.reader(oid)
                try:
                    for off in range(0, r.size, 8 << 20):
                        w.write(memoryview(r.read_range(off, 8 << 20)))
                finally:
                    r.close()
            w.commit()
        except BaseException:
            w.abort()
            raise

    def delete_data(self, oid: str) -> None:
        try:
            os.unlink(self._path(oid))
        except FileNotFoundError:
            pass

    # --- fsck -------------------------------------------------------------------
    def scan(self) -> Iterator[Entry]:
        now = time.time()
        data = self.root / "data"
        try:
            shards = sorted(os.scandir(data), key=lambda e: e.name)
        except FileNotFoundError:
            shards = []
        for shard in shards:
            if not shard.is_dir():
                continue
            with os.scandir(shard.path) as it:
                for e in it:
                    try:
                        age = now - e.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if e.name.endswith(".json"):
                        yield Entry("record", e.name[:-5], e.path, age, handle=e.path)
                    else:
                        yield Entry("data", e.name, e.path, age, handle=e.path)
        try:
            temps = list(os.scandir(self.root / "tmp"))
        except FileNotFoundError:
            temps = []
        for e in temps:
            try:
                age = now - e.stat().st_mtime
            except FileNotFoundError:
                continue
            yield Entry("temp", e.name.split(".")[0], e.path, age,
                        active=_locked(e.path), handle=e.path)

    def remove(self, entry: Entry) -> None:
        try:
            os.unlink(entry.handle)
        except FileNotFoundError:
            pass


def _locked(path: str) -> bool:
    """Whether a live writer holds `path` (an flock we cannot take)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _kernel_copy(src_fd: int, dst_fd: int, size: int, src_offset: int = 0) -> None:
    """Copy `size` bytes of src_fd from `src_offset` to dst_fd at its file position,
    inside the kernel (copy_file_range) where the file systems allow."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, min(size - done, 1 << 30),
                                   src_offset + done)
            if n == 0:
                break
            done += n
    except OSError:  # file systems without copy_file_range: plain read/write
        while done < size:
            chunk = os.pread(src_fd, min(size - done, 8 << 20), src_offset + done)
            if not chunk:
                break
            os.write(dst_fd, chunk)
            done += len(chunk)
    if done != size:
        raise OSError(f"short copy: {done} of {size} bytes")
