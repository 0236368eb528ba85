"""Shared base for every wire type: frozen, keyword-only, tagged with a versioned tag."""
from __future__ import annotations

import hashlib
import time

import msgspec


class Wire(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of every message on the bus. Subclasses set ``tag="name.vN"``."""


class Part(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of nested (untagged) parts of a message."""


def stable_id(*parts: object, size: int = 16) -> str:
    """A deterministic id: the hash of the parts' msgspec JSON."""
    h = hashlib.sha256()
    for p in parts:
        h.update(msgspec.json.encode(p))
        h.update(b"\x1f")
    return h.hexdigest()[:size]


def now() -> float:
    return time.time()
