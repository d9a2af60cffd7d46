"""What a storage location must do: the small interface the file and S3 backends implement.

A `Location` is one root (a folder, or an S3 bucket + prefix). It holds

* data blobs, ``data/<oid[:2]>/<oid>``, written through a `BlobWriter` that
  makes them appear whole or not at all (temp file + rename, or a multipart
  upload completed at the end);
* copy records, ``data/<oid[:2]>/<oid>.json``: the small JSON that makes a copy
  visible (size, meta, policy, checksum), written after the data;
* small keys (the store root's ``store.json``, reservations, OID claims and
  tombstones), optionally written exclusively (create-if-absent).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Iterator


class Missing(Exception):
    """Internal: the blob or key is not there."""


def data_key(oid: str) -> str:
    return f"data/{oid[:2]}/{oid}"


def record_key(oid: str) -> str:
    return f"data/{oid[:2]}/{oid}.json"


@dataclass
class Entry:
    """Something found by `Location.scan` (for fsck)."""

    kind: str          # "data", "record", "temp" (half-written file) or "upload" (S3 multipart)
    oid: str | None
    name: str          # key or path, for reports
    age: float         # seconds since last modified
    active: bool = False  # a temp file a live writer still holds
    handle: object = None


class BlobWriter(abc.ABC):
    """Writes one data blob; nothing is visible before `commit`."""

    @abc.abstractmethod
    def write(self, data: memoryview) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the blob appear, whole, at its final key."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop everything written; safe to call twice."""


class BlobReader(abc.ABC):
    """Reads byte ranges of one data blob (thread-safe)."""

    size: int

    @abc.abstractmethod
    def read_range(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None:
        pass


class Location(abc.ABC):
    """One root holding data blobs, copy records and small keys."""

    url: str
    readahead = 1  # blocks a get stream reads ahead of the caller

    def ensure(self) -> None:
        """Make sure the location can be written to (e.g. its bucket exists)."""

    # --- small keys -----------------------------------------------------------
    @abc.abstractmethod
    def get_key(self, key: str) -> bytes:
        """The key's bytes; raises Missing."""

    @abc.abstractmethod
    def put_key(self, key: str, data: bytes, exclusive: bool = False) -> bool:
        """Write a small key atomically; with `exclusive`, only if absent (returns False if not)."""

    @abc.abstractmethod
    def delete_key(self, key: str) -> None:
        """Remove a key; absent is fine."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix` (a folder-like prefix ending in '/')."""

    # --- data blobs -------------------------------------------------------------
    @abc.abstractmethod
    def writer(self, oid: str) -> BlobWriter: ...

    @abc.abstractmethod
    def reader(self, oid: str) -> BlobReader:
        """Raises Missing."""

    @abc.abstractmethod
    def read_data(self, oid: str) -> bytes:
        """The whole blob; raises Missing."""

    @abc.abstractmethod
    def data_size(self, oid: str) -> int:
        """The blob's size; raises Missing."""

    @abc.abstractmethod
    def copy_data(self, src: "Location", oid: str) -> None:
        """Copy `src`'s blob of `oid` here (atomically, as a writer would)."""

    @abc.abstractmethod
    def delete_data(self, oid: str) -> None: ...

    @abc.abstractmethod
    def scan(self) -> Iterator[Entry]:
        """Everything under data/ plus half-written temps and uploads."""

    @abc.abstractmethod
    def remove(self, entry: Entry) -> None:
        """Remove what `scan` found (an orphan)."""

    @abc.abstractmethod
    def sub(self, spec: str) -> "Location":
        """The location a policy root names, relative to this one unless absolute."""

    def put_data(self, oid: str, data: memoryview) -> None:
        w = self.writer(oid)
        try:
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise

    # --- copy records ---------------------------------------------------------------
    def read_record(self, oid: str) -> dict | None:
        try:
            return json.loads(self.get_key(record_key(oid)))
        except Missing:
            return None
        except ValueError:
            return {"corrupt": True}

    def write_record(self, oid: str, record: dict) -> None:
        self.put_key(record_key(oid), json.dumps(record, separators=(",", ":")).encode())

    def delete_record(self, oid: str) -> None:
        self.delete_key(record_key(oid))

    def close(self) -> None:
        pass
