"""Helpers that run on engines; importable there without the client's machinery."""

from __future__ import annotations


def map_chunk(f, *chunks) -> list:
    """One engine's share of a `map`."""
    return [f(*xs) for xs in zip(*chunks)]
