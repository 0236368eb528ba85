"""Shared base for every wire type: frozen, keyword-only, tagged with a versioned tag."""
from __future__ import annotations

import hashlib
import time

import msgspec


# gc=False: messages are trees (nothing on the bus refers back to its parent), so the cyclic
# collector need not track them; decoding a judged set then costs a third of the CPU, and a
# worker holding hundreds of messages in flight is spared long collector scans.


class Wire(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True, gc=False):
    """Base of every message on the bus. Subclasses set ``tag="name.vN"``."""


class Part(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Base of nested (untagged) parts of a message."""


def stable_id(*parts: object, size: int = 16) -> str:
    """A deterministic id: the hash of the parts' msgspec JSON."""
    # the parts' JSON, each followed by a unit separator, hashed in one update
    data = b"\x1f".join(map(_encode, parts)) + b"\x1f" if parts else b""
    return hashlib.sha256(data).hexdigest()[:size]


_encode = msgspec.json.Encoder().encode


def now() -> float:
    return time.time()
