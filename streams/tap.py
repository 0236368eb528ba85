"""The tap: preference records from the topic into files a trainer reads.

Idempotent: a record id already in the file is never written again, also across restarts
(the ids already written are read back on open), so at-least-once delivery yields each
record once at the sink.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from schemas import PreferenceRecord
from streams.admin import reader
from streams.settings import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)


class JsonlSink:
    """``DIR/preferences.jsonl`` in TRL's conversational preference format."""

    def __init__(self, out_dir: str | os.PathLike, name: str = "preferences.jsonl") -> None:
        self.path = Path(out_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seen: set[str] = set()
        if self.path.exists():
            self.seen = self._read_ids()
        self._f = self.path.open("a", encoding="utf-8")

    def _read_ids(self) -> set[str]:
        ids = set()
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError):
                    logger.warning("%s: skipping a partial line (an earlier crash mid-write)", self.path)
        return ids

    def write(self, record: PreferenceRecord) -> bool:
        if record.id in self.seen:
            return False
        self._f.write(json.dumps(record.trl(), ensure_ascii=False) + "\n")
        self.seen.add(record.id)
        return True

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __len__(self) -> int:
        return len(self.seen)


async def tap(settings: Settings, topics: Topics, out_dir: str, stop: asyncio.Event | None = None) -> int:
    """Follow the preferences topic into ``out_dir`` until ``stop`` is set. Returns the
    number of records written by this call."""
    sink = JsonlSink(out_dir)
    codec = topics.preferences.codec
    consumer = await reader(settings, [topics.preferences.name])
    written = 0
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    written += sink.write(codec.decode(msg.value))
            if batch:
                sink.flush()
    finally:
        sink.close()
        await consumer.stop()
    return written
