"""Named storage policies: how many copies of an object, and where.

A policy is ``{"copies": n, "roots": [...]}``. A root is a folder (file
stores) or a bucket/prefix (S3 stores); a relative root lives under the
store's own root, so one-disk (or one-bucket) setups work without any
configuration. Built in:

=========== ======= =====================
name        copies  roots
=========== ======= =====================
single      1       c0
replicate   2       c0, c1
copy3       3       c0, c1, c2
=========== ======= =====================

Stores add their own in ``store.json`` at the store root, or through
``store.open(url, policies={...})`` (which records new ones in ``store.json``
so every process opening the store's URL knows them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StoreError

DEFAULT_POLICY = "single"
BUILTIN: dict[str, dict] = {
    "single": {"copies": 1},
    "replicate": {"copies": 2},
    "copy3": {"copies": 3},
}


def default_roots(copies: int) -> list[str]:
    """The sub-folders (sub-prefixes) of the store root used when a policy names no roots."""
    return [f"c{i}" for i in range(copies)]


@dataclass(frozen=True)
class Policy:
    """How many copies, on which roots (root specs as configured)."""

    name: str
    copies: int
    roots: tuple[str, ...]

    def to_config(self) -> dict:
        return {"copies": self.copies, "roots": list(self.roots)}


def parse(name: str, spec) -> Policy:
    """Validate one policy definition (a dict, or an int meaning a number of copies)."""
    if not isinstance(name, str) or not name or "/" in name:
        raise StoreError(f"bad policy name {name!r}: use a non-empty name without '/'")
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"copies": spec}
    if not isinstance(spec, dict):
        raise StoreError(f"policy {name!r}: expected {{'copies': n, 'roots': [...]}}, "
                         f"got {spec!r}")
    unknown = set(spec) - {"copies", "roots"}
    if unknown:
        raise StoreError(f"policy {name!r}: unknown setting(s) {sorted(unknown)}; "
                         "a policy has 'copies' and 'roots'")
    roots = spec.get("roots")
    copies = spec.get("copies", len(roots) if roots else None)
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise StoreError(f"policy {name!r}: 'copies' must be a positive integer, got {copies!r}")
    if roots is None:
        roots = default_roots(copies)
    if (not isinstance(roots, (list, tuple)) or not all(isinstance(r, str) and r for r in roots)):
        raise StoreError(f"policy {name!r}: 'roots' must be a list of folder/prefix names")
    if len(roots) != copies:
        raise StoreError(f"policy {name!r}: {copies} copies need {copies} roots, "
                         f"got {len(roots)}: {list(roots)}")
    if len(set(roots)) != len(roots):
        raise StoreError(f"policy {name!r}: the roots must differ (one copy per root): "
                         f"{list(roots)}")
    return Policy(name, copies, tuple(roots))


def resolve(stored: dict | None, given: dict | None) -> tuple[dict[str, Policy], dict]:
    """Built-in + stored (store.json) + given (open()) policies.

    Returns the policies by name and the definitions that are new to the store
    (to be recorded in store.json). A given policy that contradicts a stored or
    built-in one is an error: edit store.json to change a policy.
    """
    out = {n: parse(n, s) for n, s in BUILTIN.items()}
    for n, s in (stored or {}).items():
        out[n] = parse(n, s)
    new: dict = {}
    for n, s in (given or {}).items():
        p = parse(n, s)
        if n in out and out[n] != p:
            where = "built in" if n in BUILTIN and n not in (stored or {}) else "in store.json"
            raise StoreError(f"policy {n!r} is already defined {where} as "
                             f"{out[n].to_config()}; choose another name, or edit the "
                             f"store's store.json to change it")
        if n not in out:
            new[n] = p.to_config()
        out[n] = p
    return out, new


def lookup(policies: dict[str, Policy], name: str | None, default: str) -> Policy:
    """The policy called `name` (the store's default when None)."""
    name = default if name is None else name
    try:
        return policies[name]
    except (KeyError, TypeError):
        raise StoreError(f"unknown storage policy {name!r}; this store knows: "
                         f"{', '.join(sorted(policies))} (define more with "
                         f"store.open(url, policies={{...}}) or in store.json)") from None
