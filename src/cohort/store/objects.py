"""The object store: objects by OID, kept in named copy policies, verified and healed.

    from cohort import store
    s = store.open()                                   # file store in the profile folder
    oid = s.put(store.Object(data=b"...", meta={"date": "2026-11-30"}), policy="replicate")
    s.get(oid).data
    with s.create_put_stream(meta={"kind": "swath"}) as w:
        w.write(chunk)
    with s.create_get_stream(w.oid) as r:
        r.seek(100); r.read(10)

How it works: an OID is 128 random bits (32 hex digits), unique by
construction in every process. Each copy of an object is a data blob plus a
small JSON record (size, meta, policy, block checksums, the list of copies)
written *after* the data, so an object is visible only once whole. ``get``
verifies the bytes it returns and heals missing or corrupt copies from a good
one. ``delete`` leaves a tombstone so a reserved OID can never be written
again. See docs/store.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import CohortError, CorruptObject, ObjectExists, ObjectNotFound, StoreError
from . import policies as _pol
from .backend import Location, Missing
from .checksum import ALGOS, BLOCK, DEFAULT_ALGO, Checksum, compute
from .streams import GetStream, PutStream, run_all
from .urls import CONFIG_KEY, open_root, read_config

log = logging.getLogger(__name__)

_OID = re.compile(r"^[0-9a-f]{32}$")

__all__ = ["Object", "ObjectInfo", "ObjectStore", "open", "new_oid"]


def new_oid() -> str:
    """A fresh OID: 128 random bits as 32 hex digits (never handed out twice)."""
    return secrets.token_hex(16)


@dataclass
class Object:
    """An object's bytes (`data`: bytes or any buffer, e.g. a numpy array) and `meta` (JSON)."""

    data: Any = b""
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` and `ls` tell about an object without reading its bytes."""

    oid: str
    size: int
    meta: dict
    policy: str
    checksum: str
    created: float
    copies: tuple[str, ...]


def _guard(fn):
    """Turn backend failures (OSError, botocore errors) into StoreError."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except (CohortError, ValueError, TypeError):
            raise
        except Exception as e:
            if isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
                    "botocore", "boto3", "s3transfer", "urllib3"):
                raise StoreError(f"{fn.__name__} on {self.url} failed: {e}") from e
            raise
    return wrapper


def _buffer(data) -> memoryview:
    if isinstance(data, str):
        raise TypeError("object data must be bytes or a buffer, not str (encode it first)")
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(f"object data must be bytes or a buffer, not {type(data).__name__}") \
            from None
    if not mv.c_contiguous:
        raise ValueError("object data must be a contiguous buffer")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _check_meta(meta) -> dict:
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be JSON-serialisable: {e}") from None


class ObjectStore:
    """A store: a root location (config, reservations, tombstones) plus policy roots."""

    def __init__(self, url: str, root: Location, policies: dict[str, _pol.Policy],
                 default_policy: str = _pol.DEFAULT_POLICY, checksum: str = DEFAULT_ALGO,
                 block: int = BLOCK):
        self._url = url
        self.root = root
        self._policies = policies
        self.default_policy = _pol.lookup(policies, default_policy, default_policy).name
        self.checksum = checksum
        self.block = block
        self._locs: dict[str, Location] = {}
        order = list(policies[self.default_policy].roots)
        for name in sorted(policies):
            order += [r for r in policies[name].roots if r not in order]
        self._probe = order

    def __repr__(self) -> str:
        return f"<ObjectStore {self._url}>"

    def __reduce__(self):
        return (open, (self._url,))  # a store sent to an engine reopens there by URL

    def __enter__(self) -> "ObjectStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release today; here so stores can be used in ``with``."""

    @property
    def url(self) -> str:
        """A URL that reopens this store in another process (``store.open(s.url)``)."""
        return self._url

    @property
    def policies(self) -> dict[str, dict]:
        """The known policies: name -> {"copies": n, "roots": [...]}."""
        return {n: p.to_config() for n, p in sorted(self._policies.items())}

    # --- locations ------------------------------------------------------------------
    def _loc(self, spec: str) -> Location:
        loc = self._locs.get(spec)
        if loc is None:
            loc = self._locs[spec] = self.root.sub(spec)
        return loc

    def _policy(self, name: str | None) -> _pol.Policy:
        return _pol.lookup(self._policies, name, self.default_policy)

    def _record(self, oid: str, policy: _pol.Policy, cs: Checksum, meta: dict) -> dict:
        return {"v": 1, "oid": oid, "size": cs.size, "meta": meta, "policy": policy.name,
                "copies": list(policy.roots), "created": time.time(),
                "checksum": cs.to_record()}

    def _find(self, oid: str) -> tuple[dict, str]:
        if not isinstance(oid, str) or not _OID.match(oid):
            raise ObjectNotFound(f"{oid!r} is not an OID (32 hex digits)")
        for spec in self._probe:
            rec = self._loc(spec).read_record(oid)
            if rec and not rec.get("corrupt"):
                return rec, spec
        raise ObjectNotFound(f"no object {oid} in {self._url} (never written, deleted, "
                             "or only reserved)")

    def _tombstoned(self, oid: str) -> bool:
        try:
            return json.loads(self.root.get_key(f"oids/{oid}")).get("state") == "deleted"
        except Missing:
            return False
        except ValueError:
            return True  # unreadable: err on the side of "gone"

    # --- writing ------------------------------------------------------------------------
    def _write(self, oid: str, policy: _pol.Policy, data: memoryview, meta: dict) -> None:
        cs = compute(data, self.checksum, self.block)
        rec = self._record(oid, policy, cs, meta)
        locs = [self._loc(r) for r in policy.roots]

        def copy(loc: Location):
            def run():
                loc.ensure()
                loc.put_data(oid, data)
            return run
        try:
            run_all([copy(loc) for loc in locs])
            run_all([functools.partial(loc.write_record, oid, rec) for loc in locs])
        except BaseException:
            self._scrub(oid, locs)
            raise

    def _scrub(self, oid: str, locs: list[Location]) -> None:
        for loc in locs:
            for drop in (loc.delete_record, loc.delete_data):
                try:
                    drop(oid)
                except Exception as e:
                    log.warning("could not remove %s from %s: %s", oid, loc.url, e)

    @_guard
    def put(self, obj: Object | Any, policy: str | None = None, meta: dict | None = None) -> str:
        """Store an `Object` (or plain bytes/buffer with `meta`) under a new OID; return it."""
        data, meta = (obj.data, obj.meta if meta is None else meta) if isinstance(obj, Object) \
            else (obj, meta)
        pol = self._policy(policy)
        oid = new_oid()
        self._write(oid, pol, _buffer(data), _check_meta(meta))
        return oid

    @_guard
    def reserve(self, policy: str | None = None) -> str:
        """A new OID for a later `putoid` (or ``create_put_stream(oid=...)``) under `policy`."""
        pol = self._policy(policy)
        oid = new_oid()
        body = json.dumps({"policy": pol.name, "created": time.time()}).encode()
        if not self.root.put_key(f"reserved/{oid}", body, exclusive=True):
            raise StoreError(f"OID collision reserving {oid}")  # 2**-128: a broken RNG
        return oid

    def _claim(self, oid: str, policy: str | None = None) -> _pol.Policy:
        """Take a reserved OID for writing, once; returns its policy."""
        if not isinstance(oid, str) or not _OID.match(oid):
            raise StoreError(f"{oid!r} is not an OID (32 hex digits): get one from reserve()")
        try:
            res = json.loads(self.root.get_key(f"reserved/{oid}"))
        except Missing:
            res = None
        if res is None:
            if self._tombstoned(oid) or self.exists(oid):
                raise ObjectExists(f"OID {oid} has already been written (or deleted) in "
                                   f"{self._url}: each reserved OID is written once; reserve "
                                   "a new one")
            raise StoreError(f"OID {oid} was not reserved in {self._url}: get one from "
                             "reserve() first")
        pol = self._policy(res.get("policy"))
        if policy is not None and policy != pol.name:
            raise StoreError(f"OID {oid} was reserved with policy {pol.name!r}, not {policy!r}")
        claim = json.dumps({"state": "written", "time": time.time()}).encode()
        if not self.root.put_key(f"oids/{oid}", claim, exclusive=True):
            raise ObjectExists(f"OID {oid} has already been written (or deleted) in "
                               f"{self._url}: each reserved OID is written once; reserve a "
                               "new one")
        return pol

    @_guard
    def putoid(self, obj: Object | Any, oid: str, meta: dict | None = None) -> None:
        """Write `obj` under a reserved `oid`. A second putoid on it raises ObjectExists."""
        data, meta = (obj.data, obj.meta if meta is None else meta) if isinstance(obj, Object) \
            else (obj, meta)
        mv, meta = _buffer(data), _check_meta(meta)
        pol = self._claim(oid)
        try:
            self._write(oid, pol, mv, meta)
        except BaseException:
            self.root.delete_key(f"oids/{oid}")  # the reservation stays: try again
            raise
        self.root.delete_key(f"reserved/{oid}")

    @_guard
    def create_put_stream(self, policy: str | None = None, meta: dict | None = None,
                          oid: str | None = None) -> PutStream:
        """A writable binary stream that becomes a new object on close (its OID: ``w.oid``).

        Pass a reserved `oid` to write that one. An exception inside ``with``
        aborts the stream and nothing is stored.
        """
        meta = _check_meta(meta)
        reserved = oid is not None
        if reserved:
            pol = self._claim(oid, policy)
        else:
            pol = self._policy(policy)
            oid = new_oid()
        locs = [self._loc(r) for r in pol.roots]
        claimed = [False]

        def finish(cs: Checksum, done: list[Location]) -> None:
            rec = self._record(oid, pol, cs, meta)
            try:
                todo = [loc for loc in locs[1:] if loc not in done]
                if todo:
                    run_all([functools.partial(loc.copy_data, locs[0], oid) for loc in todo])
                run_all([functools.partial(loc.write_record, oid, rec) for loc in locs])
            except BaseException:
                self._scrub(oid, locs)
                raise
            claimed[0] = True
            if reserved:
                self.root.delete_key(f"reserved/{oid}")

        def cancel() -> None:
            if reserved and not claimed[0]:
                self.root.delete_key(f"oids/{oid}")

        try:
            for loc in locs:
                loc.ensure()
            return PutStream(oid, locs[0], self.checksum, self.block, finish, cancel,
                             replicas=locs[1:])
        except BaseException:
            cancel()
            raise

    def put_file(self, f, policy: str | None = None, meta: dict | None = None) -> str:
        """Store a file's bytes (a path or a binary file, from its position) as a new object."""
        with self.create_put_stream(policy=policy, meta=meta) as w:
            w.writefile(f)
        return w.oid

    def get_file(self, oid: str, f) -> int:
        """Write an object's bytes (verified) to `f`, a path or a binary file; returns the size."""
        with self.create_get_stream(oid) as r:
            return r.copyto(f)

    # --- reading ------------------------------------------------------------------------
    @_guard
    def get(self, oid: str) -> Object:
        """The object (bytes verified against its checksum; bad copies healed)."""
        rec, found = self._find(oid)
        cs = Checksum.from_record(rec["checksum"])
        specs = list(rec["copies"])
        bad: list[Location] = []
        data = good = None
        for spec in specs:
            loc = self._loc(spec)
            try:
                raw = loc.read_data(oid)
            except Missing:
                log.warning("object %s: copy at %s is missing", oid, loc.url)
                bad.append(loc)
                continue
            if not cs.matches(raw):
                log.warning("object %s: copy at %s fails its checksum", oid, loc.url)
                bad.append(loc)
                continue
            data, good = raw, loc
            break
        if good is None:
            raise CorruptObject(f"object {oid}: every copy is missing or corrupt "
                                f"({', '.join(self._loc(s).url for s in specs)}); run "
                                "`cohort store fsck` to see what is left")
        for spec in specs:  # cheap presence check of the other copies
            loc = self._loc(spec)
            if loc in bad:
                continue
            r = rec if spec == found else loc.read_record(oid)
            if not r or r.get("corrupt"):
                bad.append(loc)
                continue
            if loc is not good:
                try:
                    if loc.data_size(oid) != cs.size:
                        bad.append(loc)
                except Missing:
                    bad.append(loc)
        if bad:
            self._heal(oid, rec, bad, good)
        return Object(data=data, meta=rec.get("meta", {}))

    @_guard
    def create_get_stream(self, oid: str, verify: bool = True) -> GetStream:
        """A readable, seekable binary file object over the object's bytes.

        Every block is verified before its bytes are returned (``verify=False``
        skips the checksums); a bad block is read from another copy and the bad
        copy is healed when the stream closes.
        """
        rec, _ = self._find(oid)
        cs = Checksum.from_record(rec["checksum"])
        locs = [self._loc(s) for s in rec["copies"]]
        return GetStream(oid, cs, locs, verify=verify,
                         on_close=lambda bad: self._heal(oid, rec, bad))

    @_guard
    def stat(self, oid: str) -> ObjectInfo:
        """Size, meta, policy, checksum and copies of an object (its bytes are not read)."""
        return self._info(self._find(oid)[0])

    def _info(self, rec: dict) -> ObjectInfo:
        return ObjectInfo(oid=rec["oid"], size=int(rec["size"]), meta=rec.get("meta", {}),
                          policy=rec.get("policy", ""),
                          checksum=rec["checksum"].get("digest", ""),
                          created=float(rec.get("created", 0.0)),
                          copies=tuple(self._loc(s).url for s in rec["copies"]))

    @_guard
    def exists(self, oid: str) -> bool:
        """Whether an object with this OID is stored (visible)."""
        try:
            self._find(oid)
            return True
        except ObjectNotFound:
            return False

    __contains__ = exists

    def ls(self) -> Iterator[ObjectInfo]:
        """Every stored object's `ObjectInfo` (one small record read per object)."""
        seen: set[str] = set()
        for spec in self._probe:
            loc = self._loc(spec)
            try:
                entries = [e for e in loc.scan() if e.kind == "record"]
            except Exception as e:
                raise StoreError(f"ls on {loc.url} failed: {e}") from e
            for e in entries:
                if e.oid in seen or not _OID.match(e.oid or ""):
                    continue
                seen.add(e.oid)
                rec = loc.read_record(e.oid)
                if rec and not rec.get("corrupt"):
                    yield self._info(rec)

    # --- deleting -----------------------------------------------------------------------
    @_guard
    def delete(self, oid: str) -> None:
        """Remove the object and all its copies; its OID is never written again."""
        tomb = json.dumps({"state": "deleted", "time": time.time()}).encode()
        try:
            rec, _ = self._find(oid)
        except ObjectNotFound:
            try:  # a reserved OID that was never written: cancel the reservation
                self.root.get_key(f"reserved/{oid}")
            except Missing:
                raise ObjectNotFound(f"no object {oid} in {self._url}") from None
            self.root.put_key(f"oids/{oid}", tomb)
            self.root.delete_key(f"reserved/{oid}")
            return
        self.root.put_key(f"oids/{oid}", tomb)
        locs = [self._loc(s) for s in rec["copies"]]
        for loc in locs:
            loc.delete_record(oid)
        for loc in locs:
            loc.delete_data(oid)

    # --- healing ------------------------------------------------------------------------
    def _verify_copy(self, loc: Location, oid: str, cs: Checksum) -> bool:
        """Whether `loc` holds a whole, correct copy (reads it all)."""
        try:
            r = loc.reader(oid)
        except Missing:
            return False
        try:
            if r.size != cs.size:
                return False
            for i in range(cs.nblocks):
                if not cs.block_ok(i, r.read_range(i * cs.block, cs.block)):
                    return False
            return True
        except Missing:
            return False
        finally:
            r.close()

    def _heal(self, oid: str, rec: dict, bad: list[Location],
              source: Location | None = None) -> list[Location]:
        """Rewrite the `bad` copies from a good one; returns the copies healed."""
        if not bad:
            return []
        if self._tombstoned(oid):
            log.info("object %s was deleted: not healing %s", oid, [b.url for b in bad])
            return []
        cs = Checksum.from_record(rec["checksum"])
        if source is None:
            for spec in rec["copies"]:
                loc = self._loc(spec)
                if loc not in bad and self._verify_copy(loc, oid, cs):
                    source = loc
                    break
        if source is None:
            log.error("object %s: no good copy to heal %s from", oid, [b.url for b in bad])
            return []
        healed = []
        for loc in bad:
            try:
                loc.ensure()
                if loc != source:  # else only its record was missing
                    loc.copy_data(source, oid)
                loc.write_record(oid, rec)
                healed.append(loc)
                log.warning("object %s: healed the copy at %s from %s", oid, loc.url,
                            source.url)
            except Exception as e:
                log.error("object %s: could not heal the copy at %s: %s", oid, loc.url, e)
        return healed

    @_guard
    def fsck(self, repair: bool = False, verify: bool = True, grace: float = 600.0):
        """Check every object's copies; report (and with `repair`, fix) what is wrong.

        Returns an `FsckReport`: missing and corrupt copies, lost objects (no
        good copy), orphans (half-written temp files and uploads, data without a
        record, leftovers of deletions). `verify` reads and checks every copy's
        bytes; orphans younger than `grace` seconds may be writes in progress and
        are left alone (file stores see live writers through their locks).
        """
        from .fsck import run_fsck
        return run_fsck(self, repair=repair, verify=verify, grace=grace)


def open(url: str | os.PathLike | None = None, **options) -> ObjectStore:
    """Open (creating if needed) the store at `url`.

    `url`: ``file:///folder`` (or a plain path), ``s3://bucket/prefix`` (S3
    settings in the query string, keywords or the environment: endpoint_url,
    region, access_key, secret_key). Default: ``$COHORT_STORE``, else the
    folder ``store`` in the profile folder. Keywords: ``policies={name: {"copies":
    n, "roots": [...]}}`` (recorded in the store's store.json), ``default_policy``,
    ``checksum`` ("xxh3", "crc32", "sha256" or "blake2b", for new objects), ``fsync``
    (file stores).
    """
    if url is None:
        url = os.environ.get("COHORT_STORE")
        if not url:
            from ..profile import profile_dir
            url = str(profile_dir() / "store")
    url = os.fspath(url) if isinstance(url, (os.PathLike, Path)) else url
    if not isinstance(url, str) or not url:
        raise StoreError(f"bad store URL {url!r}: use file:///folder or s3://bucket/prefix")
    given = options.pop("policies", None)
    default_policy = options.pop("default_policy", None)
    checksum = options.pop("checksum", None)
    root, canonical = open_root(url, options)
    if options:
        raise StoreError(f"unknown store option(s) {sorted(options)} for {canonical}")
    try:
        cfg = read_config(root)
    except CohortError:
        raise
    except Exception as e:
        raise StoreError(f"cannot open store {canonical}: {e}") from e
    pols, new = _pol.resolve(cfg.get("policies"), given)
    if new or not cfg:
        try:
            fresh = read_config(root)  # read-modify-write, as late as possible
            fresh.setdefault("version", 1)
            fresh.setdefault("policies", {}).update(new)
            root.put_key(CONFIG_KEY, json.dumps(fresh, indent=1, sort_keys=True).encode())
        except Exception as e:
            if new:  # other processes would not know these policies
                raise StoreError(f"cannot record policies {sorted(new)} in {canonical}/"
                                 f"{CONFIG_KEY}: {e}") from e
            log.warning("could not write %s/%s (read-only?): %s", canonical, CONFIG_KEY, e)
    algo = checksum or cfg.get("checksum") or DEFAULT_ALGO
    if algo not in ALGOS:
        raise StoreError(f"unknown checksum {algo!r}: choose one of {', '.join(ALGOS)}")
    default = default_policy or cfg.get("default_policy") or _pol.DEFAULT_POLICY
    return ObjectStore(canonical, root, pols, default, algo)
