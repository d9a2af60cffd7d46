"""The object store and its metadata catalog.

    from cohort import store
    s = store.open()                          # file-backed, in the profile folder
    oid = s.put(store.Object(data=b"...", meta={"date": "2026-11-30"}))
    s.get(oid).data
    cat = store.catalog()                     # SQLite beside it; "postgresql://..." for PostGIS
    cat.add(oid, time=..., footprint="POLYGON((...))", source="MERIS")
    cat.query(intersects=region, time=(t0, t1))

This package stands alone: it imports nothing from cohort's client,
controller or engine. Names are imported on first use, so ``import
cohort.store`` stays cheap for engines that never touch it.
"""

from __future__ import annotations

import importlib

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    "Object": ".objects", "ObjectStore": ".objects", "open": ".objects",
    "Catalog": ".catalog_core", "catalog": ".catalog_core",
    "Ref": ".ref",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cohort.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
