"""Store URLs: from ``file://`` or ``s3://`` (or a plain path) to the store's root location.

Also reads the store's own configuration, ``store.json`` in that root.
"""

from __future__ import annotations

import json

from ..errors import CohortError, StoreError
from .backend import Location, Missing

CONFIG_KEY = "store.json"


def read_config(root: Location) -> dict:
    """The store's store.json as a dict ({} when there is none)."""
    try:
        raw = root.get_key(CONFIG_KEY)
    except Missing:
        return {}
    try:
        cfg = json.loads(raw)
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
        return cfg
    except ValueError as e:
        raise StoreError(f"{root.url}/{CONFIG_KEY} is not valid JSON ({e}): fix or remove "
                         "it") from None


def open_root(url: str, options: dict) -> tuple[Location, str]:
    """The root location for `url` and the canonical URL that reopens it.

    Consumes the backend's own keywords from `options` (S3 settings, fsync).
    """
    if url.startswith("s3:"):
        from .s3store import S3Location, client_for, make_url, parse_url
        bucket, prefix, conn, from_url = parse_url(url, options)
        try:
            root = S3Location(client_for(conn), bucket, prefix)
            root.ensure()
        except CohortError:
            raise
        except Exception as e:
            raise StoreError(f"cannot open S3 store {url} (endpoint "
                             f"{conn.get('endpoint_url', 'AWS')}): {e}") from e
        return root, make_url(bucket, prefix, from_url, conn)
    if url.startswith("file:") or "://" not in url:
        from .filestore import FileLocation, path_from_url
        base, _, query = url.partition("?")
        fsync = options.pop("fsync", None)
        for k, v in (q.split("=", 1) for q in query.split("&") if "=" in q):
            if k != "fsync":
                raise StoreError(f"unknown file store option {k!r} in {url!r}; known: fsync")
            fsync = v.lower() in ("1", "true", "yes") if fsync is None else fsync
        path = path_from_url(base)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store folder {path}: {e}") from e
        root = FileLocation(path, fsync=bool(fsync))
        return root, path.as_uri() + ("?fsync=1" if fsync else "")
    scheme = url.split("://", 1)[0]
    raise StoreError(f"unsupported store URL {url!r} (scheme {scheme!r}): use "
                     "file:///path/to/folder or s3://bucket/prefix")
