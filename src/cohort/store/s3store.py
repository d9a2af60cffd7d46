"""S3 locations: a bucket + prefix on any S3-compatible service, through boto3.

Small objects are one PUT; streams become multipart uploads (8 MiB parts,
growing after every 1,000 parts so 10,000 parts reach past 700 GB), uploaded by
a few threads while the caller keeps writing, completed on commit and aborted on
error, so nothing half-written is ever visible. Reads are ranged GETs. Copies
between locations are server-side copies. Exclusive small keys (OID claims) use
``If-None-Match: *``.

Connection settings come from `open` keywords, the URL's query string
(``?endpoint_url=http://host:port&region=...``) or the environment
(``COHORT_S3_ENDPOINT``, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlparse

from ..errors import StoreError
from .backend import BlobReader, BlobWriter, Entry, Location, Missing, data_key

log = logging.getLogger(__name__)

PART = 8 << 20
MAX_PART = 512 << 20
IN_FLIGHT = 4
# option name -> accepted spellings (URL query or open() keyword)
OPTIONS = {
    "endpoint_url": ("endpoint_url", "endpoint"),
    "region_name": ("region_name", "region"),
    "aws_access_key_id": ("aws_access_key_id", "access_key", "access_key_id"),
    "aws_secret_access_key": ("aws_secret_access_key", "secret_key", "secret_access_key"),
    "aws_session_token": ("aws_session_token", "session_token"),
    "profile_name": ("profile_name", "profile"),
    "addressing_style": ("addressing_style",),
}
SECRET = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")

_io_lock = threading.Lock()
_io: ThreadPoolExecutor | None = None
_clients: dict = {}


def io_pool() -> ThreadPoolExecutor:
    global _io
    with _io_lock:
        if _io is None:
            _io = ThreadPoolExecutor(16, thread_name_prefix="cohort-store-s3")
        return _io


def _after_fork() -> None:  # threads and connections do not survive fork()
    global _io
    _io = None
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork)


def _code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _missing(e: Exception) -> bool:
    return _code(e) in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


def parse_url(url: str, options: dict) -> tuple[str, str, dict, dict]:
    """(bucket, prefix, connection settings, settings that came from the URL)."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise StoreError(f"bad S3 store URL {url!r}: use s3://bucket/prefix")
    bucket, prefix = u.netloc, u.path.strip("/")
    query = dict(parse_qsl(u.query))
    conn: dict = {}
    from_url: dict = {}
    for source, is_url in ((query, True), (options, False)):
        for key in list(source):
            for name, spellings in OPTIONS.items():
                if key in spellings:
                    conn[name] = source.pop(key)
                    if is_url:
                        from_url[name] = conn[name]
                    break
    if query:
        raise StoreError(f"unknown S3 option(s) in {url!r}: {sorted(query)}; known: "
                         f"{sorted(s for v in OPTIONS.values() for s in v)}")
    if "endpoint_url" not in conn:
        env = os.environ.get("COHORT_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if env:
            conn["endpoint_url"] = env
    return bucket, prefix, conn, from_url


def make_url(bucket: str, prefix: str, from_url: dict, conn: dict) -> str:
    """A URL that reopens the store: endpoint and region kept, secrets only if given in the URL."""
    q = {k: v for k, v in conn.items() if k not in SECRET}
    q.update({k: v for k, v in from_url.items() if k in SECRET})
    url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return url + ("?" + urlencode(sorted(q.items())) if q else "")


def client_for(conn: dict):
    """A (cached) boto3 client for these settings."""
    key = tuple(sorted(conn.items()))
    c = _clients.get(key)
    if c is None:
        import boto3
        from botocore.config import Config
        conn = dict(conn)
        style = conn.pop("addressing_style", "path" if conn.get("endpoint_url") else "auto")
        profile = conn.pop("profile_name", None)
        region = conn.pop("region_name", None) or os.environ.get("AWS_DEFAULT_REGION") \
            or os.environ.get("AWS_REGION") or "us-east-1"
        cfg = Config(s3={"addressing_style": style}, signature_version="s3v4",
                     retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required")
        session = boto3.session.Session(profile_name=profile)
        c = session.client("s3", region_name=region, config=cfg, **conn)
        _clients[key] = c
    return c


class _Writer(BlobWriter):
    def __init__(self, loc: "S3Location", key: str):
        self.loc, self.key = loc, key
        self.c = loc.client
        self.buf = bytearray()  # grows to a part as data comes (small objects stay small)
        self.fill = 0
        self.upload_id: str | None = None
        self.parts: list[Future] = []
        self.done = False

    def _part_size(self) -> int:
        return min(PART << (len(self.parts) // 1000), MAX_PART)

    def write(self, data: memoryview) -> None:
        while len(data):
            if self.fill + len(data) > len(self.buf) and len(self.buf) < self._part_size():
                want = min(self._part_size(), max(2 * len(self.buf), self.fill + len(data)))
                self.buf.extend(bytes(want - len(self.buf)))
            take = min(len(self.buf) - self.fill, len(data))
            self.buf[self.fill:self.fill + take] = data[:take]
            self.fill += take
            data = data[take:]
            if self.fill == len(self.buf) == self._part_size():
                self._send(self.buf)
                self.buf = bytearray(self._part_size())
                self.fill = 0

    def _send(self, body) -> None:
        if self.upload_id is None:
            r = self.c.create_multipart_upload(Bucket=self.loc.bucket, Key=self.key)
            self.upload_id = r["UploadId"]
        # keep at most IN_FLIGHT parts in memory
        pending = [f for f in self.parts if not f.done()]
        if len(pending) >= IN_FLIGHT:
            pending[0].result()
        for f in self.parts:
            if f.done() and f.exception():
                raise f.exception()
        n = len(self.parts) + 1
        self.parts.append(io_pool().submit(self._upload, n, body))

    def _upload(self, n: int, body) -> dict:
        r = self.c.upload_part(Bucket=self.loc.bucket, Key=self.key, UploadId=self.upload_id,
                               PartNumber=n, Body=body)
        return {"PartNumber": n, "ETag": r["ETag"]}

    def commit(self) -> None:
        if self.upload_id is None:
            self.c.put_object(Bucket=self.loc.bucket, Key=self.key, Body=bytes(self.buf[:self.fill]))
        else:
            if self.fill:
                self._send(bytes(self.buf[:self.fill]))
            parts = [f.result() for f in self.parts]
            self.c.complete_multipart_upload(Bucket=self.loc.bucket, Key=self.key,
                                             UploadId=self.upload_id,
                                             MultipartUpload={"Parts": parts})
        self.done = True
        self.buf = bytearray()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.buf = bytearray()
        for f in self.parts:
            f.cancel()
        for f in self.parts:
            try:
                f.result()
            except Exception:
                pass
        if self.upload_id is not None:
            try:
                self.c.abort_multipart_upload(Bucket=self.loc.bucket, Key=self.key,
                                              UploadId=self.upload_id)
            except Exception as e:  # fsck finds it later
                log.warning("could not abort multipart upload of %s: %s", self.key, e)


class _Reader(BlobReader):
    def __init__(self, loc: "S3Location", key: str):
        self.loc, self.key = loc, key
        self.size = loc._head(key)

    def read_range(self, offset: int, n: int) -> bytes:
        if n <= 0 or offset >= self.size:
            return b""
        try:
            r = self.loc.client.get_object(Bucket=self.loc.bucket, Key=self.key,
                                           Range=f"bytes={offset}-{offset + n - 1}")
        except Exception as e:
            if _missing(e):
                raise Missing(self.key) from None
            raise
        return r["Body"].read()


class S3Location(Location):
    """A bucket + prefix."""

    readahead = 4

    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._ensured = False

    def __repr__(self) -> str:
        return f"S3Location({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Location) and (other.bucket, other.prefix) == (
            self.bucket, self.prefix)

    def __hash__(self) -> int:
        return hash((self.bucket, self.prefix))

    def key(self, k: str) -> str:
        return f"{self.prefix}/{k}" if self.prefix else k

    def sub(self, spec: str) -> "S3Location":
        if spec.startswith("s3://"):
            u = urlparse(spec)
            return S3Location(self.client, u.netloc, u.path)
        if "://" in spec or spec.startswith("/"):
            raise StoreError(f"root {spec!r} is not a bucket/prefix: an s3:// store keeps "
                             "its copies under s3://bucket/prefix roots or sub-prefixes")
        return S3Location(self.client, self.bucket, self.key(spec))

    def ensure(self) -> None:
        """Create the bucket if it does not exist (once per location object)."""
        if self._ensured:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if _code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
                log.info("created bucket %s", self.bucket)
            except Exception as e2:
                if _code(e2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._ensured = True

    def _head(self, key: str) -> int:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except Exception as e:
            if _missing(e):
                raise Missing(key) from None
            raise

    # --- small keys -------------------------------------------------------------
    def get_key(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except Exception as e:
            if _missing(e):
                raise Missing(key) from None
            raise

    def put_key(self, key: str, data: bytes, exclusive: bool = False) -> bool:
        kw = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, **kw)
            return True
        except Exception as e:
            if exclusive and _code(e) in ("PreconditionFailed", "412",
                                          "ConditionalRequestConflict"):
                return False
            raise

    def delete_key(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        full = self.key(prefix)
        cut = len(self.key(""))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full)
        try:
            for page in pages:
                for o in page.get("Contents", ()):
                    yield o["Key"][cut:]
        except Exception as e:
            if _code(e) == "NoSuchBucket":
                return
            raise

    # --- data -------------------------------------------------------------------
    def writer(self, oid: str) -> BlobWriter:
        return _Writer(self, self.key(data_key(oid)))

    def reader(self, oid: str) -> BlobReader:
        return _Reader(self, self.key(data_key(oid)))

    def put_data(self, oid: str, data: memoryview) -> None:
        if len(data) <= PART:  # one PUT, no part buffer
            self.client.put_object(Bucket=self.bucket, Key=self.key(data_key(oid)),
                                   Body=bytes(data))
        else:
            super().put_data(oid, data)

    def read_data(self, oid: str) -> bytes:
        return self.get_key(data_key(oid))

    def data_size(self, oid: str) -> int:
        return self._head(self.key(data_key(oid)))

    def copy_data(self, src: Location, oid: str) -> None:
        if isinstance(src, S3Location):
            from boto3.s3.transfer import TransferConfig
            try:
                self.client.copy({"Bucket": src.bucket, "Key": src.key(data_key(oid))},
                                 self.bucket, self.key(data_key(oid)),
                                 Config=TransferConfig(multipart_threshold=1 << 30,
                                                       multipart_chunksize=256 << 20))
            except Exception as e:
                if _missing(e):
                    raise Missing(oid) from None
                raise
            return
        r = src.reader(oid)
        w = self.writer(oid)
        try:
            for off in range(0, r.size, PART):
                w.write(memoryview(r.read_range(off, PART)))
            w.commit()
        except BaseException:
            w.abort()
            raise
        finally:
            r.close()

    def delete_data(self, oid: str) -> None:
        self.delete_key(data_key(oid))

    # --- fsck -------------------------------------------------------------------
    def scan(self) -> Iterator[Entry]:
        now = time.time()
        cut = len(self.key(""))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key("data/"))
        for page in pages:
            for o in page.get("Contents", ()):
                name = o["Key"][cut:]
                base = name.rsplit("/", 1)[-1]
                age = now - o["LastModified"].timestamp()
                if base.endswith(".json"):
                    yield Entry("record", base[:-5], self.url + "/" + name, age, handle=o["Key"])
                else:
                    yield Entry("data", base, self.url + "/" + name, age, handle=o["Key"])
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.key("data/"))
        for page in pages:
            for u in page.get("Uploads", ()):
                base = u["Key"].rsplit("/", 1)[-1]
                yield Entry("upload", base, f"s3://{self.bucket}/{u['Key']} (upload "
                            f"{u['UploadId'][:12]})", now - u["Initiated"].timestamp(),
                            handle=(u["Key"], u["UploadId"]))

    def remove(self, entry: Entry) -> None:
        if entry.kind == "upload":
            key, upload_id = entry.handle
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        else:
            self.client.delete_object(Bucket=self.bucket, Key=entry.handle)
