"""Helpers that run on engines; importable there without the client's machinery."""

from __future__ import annotations


def map_chunk(f, *chunks) -> list:
    """One engine's share of a `map`; store references among the items are fetched here."""
    from .store.ref import Ref, resolve
    if any(Ref in map(type, c) for c in chunks):
        chunks = [[resolve(x) for x in c] for c in chunks]
    return [f(*xs) for xs in zip(*chunks)]
