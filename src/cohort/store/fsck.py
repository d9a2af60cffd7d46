"""fsck: check every copy of every object in a store, report, and repair.

Found and (with ``repair=True``) fixed:

* missing copies (no data or no record where the policy put one) and corrupt
  copies (wrong size, or bytes failing the block checksums): rewritten from a
  good copy;
* lost objects (no good copy left): reported only — nothing to repair from;
* orphans: half-written temp files and S3 multipart uploads that no live
  writer owns, and data blobs with no record anywhere: removed;
* leftovers of deletions (copies of a tombstoned OID): removed.

Things younger than ``grace`` seconds may belong to a write in progress and are
left alone (a file store's live writers hold locks on their temp files, so
theirs are recognised at any age).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backend import Missing
from .checksum import Checksum

if TYPE_CHECKING:
    from .objects import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    """What fsck found (and repaired). `ok` is True when it found nothing wrong."""

    objects: int = 0
    copies: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)   # (oid, location url)
    corrupt: list[tuple[str, str]] = field(default_factory=list)   # (oid, location url)
    lost: list[str] = field(default_factory=list)                  # oids with no good copy
    orphans: list[str] = field(default_factory=list)               # paths / keys / uploads
    deleted: list[str] = field(default_factory=list)               # tombstoned oids still present
    repaired: list[str] = field(default_factory=list)              # what was fixed
    verified: bool = True

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.lost or self.orphans or self.deleted)

    def __str__(self) -> str:
        lines = [f"{self.objects} objects, {self.copies} copies checked"
                 f"{'' if self.verified else ' (sizes only, bytes not verified)'}"]
        for title, items in (("missing copy", self.missing), ("corrupt copy", self.corrupt)):
            lines += [f"{title}: {oid} at {url}" for oid, url in items]
        lines += [f"LOST (no good copy): {oid}" for oid in self.lost]
        lines += [f"orphan: {o}" for o in self.orphans]
        lines += [f"deleted object still present: {oid}" for oid in self.deleted]
        lines += [f"repaired: {r}" for r in self.repaired]
        lines.append("ok" if self.ok else "problems found" + (
            "" if self.repaired or not (self.missing or self.corrupt or self.orphans)
            else " (run with repair to fix)"))
        return "\n".join(lines)


def run_fsck(store: "ObjectStore", repair: bool = False, verify: bool = True,
             grace: float = 600.0) -> FsckReport:
    """See `ObjectStore.fsck`."""
    rep = FsckReport(verified=verify)
    locs = {spec: store._loc(spec) for spec in store._probe}
    records: dict[str, set[str]] = defaultdict(set)
    datas: dict[str, dict] = defaultdict(dict)
    for spec, loc in locs.items():
        for e in loc.scan():
            if e.kind == "record":
                records[e.oid].add(spec)
            elif e.kind == "data":
                datas[e.oid][spec] = e
            elif not e.active and (e.age >= grace or (e.kind == "temp" and e.age >= 1.0
                                                       and e.name.endswith(".part"))):
                rep.orphans.append(e.name)
                if repair:
                    loc.remove(e)
                    rep.repaired.append(f"removed orphan {e.name}")

    for oid in sorted(records):
        rep.objects += 1
        rec = None
        for spec in sorted(records[oid]):
            r = locs[spec].read_record(oid) if spec in locs else None
            if r and not r.get("corrupt"):
                rec = r
                break
        if rec is None:
            rep.lost.append(oid)
            continue
        if store._tombstoned(oid):
            rep.deleted.append(oid)
            if repair:
                store._scrub(oid, [store._loc(s) for s in set(rec["copies"]) | records[oid]])
                rep.repaired.append(f"finished deleting {oid}")
            continue
        cs = Checksum.from_record(rec["checksum"])
        bad, good = [], None
        for spec in rec["copies"]:
            loc = store._loc(spec)
            rep.copies += 1
            r = loc.read_record(oid) if spec in records[oid] else None
            try:
                size = loc.data_size(oid)
            except Missing:
                size = None
            if not r or r.get("corrupt") or size is None:
                rep.missing.append((oid, loc.url))
                bad.append(loc)
            elif size != cs.size or (verify and not store._verify_copy(loc, oid, cs)):
                rep.corrupt.append((oid, loc.url))
                bad.append(loc)
            elif good is None:
                good = loc
        if bad and good is None:
            rep.lost.append(oid)
        elif bad and repair:
            for loc in store._heal(oid, rec, bad, good if verify else None):
                rep.repaired.append(f"rewrote the copy of {oid} at {loc.url}")

    for oid in sorted(set(datas) - set(records)):
        for spec, e in sorted(datas[oid].items()):
            if e.age < grace:
                continue
            rep.orphans.append(e.name)
            if repair:
                locs[spec].remove(e)
                rep.repaired.append(f"removed orphan {e.name}")
    log.info("fsck of %s: %s", store.url, "ok" if rep.ok else "problems found")
    return rep
