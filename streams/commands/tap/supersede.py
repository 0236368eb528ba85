"""Superseded records at the tap: a late label re-scores a judged set, and each record it
makes names the one it replaces (``supersedes``; a ``Withdrawn`` names one with no successor).

The rule the sinks and the dataset API keep: **a trainer never gets a superseded record as a
live row.** The tap drops it from its files (it rewrites the one bounded shard holding it,
atomically) and remembers its id in an append-only, fsynced list beside the files, so reading
the topic again from the start (every tap start) never writes it back.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def target(record) -> str | None:
    """The id ``record`` supersedes, if any."""
    return getattr(record, "supersedes", None)


class SupersededIds:
    """The ids dropped so far, kept in ``path`` (one a line, each write fsynced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[str] = set()
        if path.exists():
            data = path.read_bytes()
            self.ids = {line.decode() for line in data.splitlines() if line.strip()}
        self._f = None

    def __contains__(self, rid: str) -> bool:
        return rid in self.ids

    def add(self, rid: str) -> None:
        if self._f is None:
            self._f = self.path.open("ab")
        self._f.write(rid.encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.ids.add(rid)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def replace_lines(path: Path, drop: set[str], id_of) -> int:
    """Rewrite ``path`` without the lines whose id is in ``drop`` (under a temporary name,
    fsynced, renamed over it); returns the lines dropped."""
    lines = path.read_bytes().splitlines()
    kept = [line for line in lines if id_of(line) not in drop]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(b"".join(line + b"\n" for line in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)
