"""The tap: preference records from the topic into files a trainer reads.

Two sinks, both idempotent by record id, also across restarts:

* ``JsonlSink``: ``DIR/preferences.jsonl``, the pairs in TRL's conversational format
  (``prefstream tap`` and ``run`` with no ``--format``). The ids written are read back on open;
  a torn last line (a crash mid-write) is cut off first.
* ``DatasetSink`` (``streams.commands.tap.shards``): one training format as committed JSONL + Parquet
  shards and a dataset card (``prefstream tap --format``, ``run --format``).

The tap reads the topic from the start on every start and skips the ids its sink holds, so
at-least-once delivery and restarts after a crash still yield each record once. A record that
names one it ``supersedes`` (a late label re-scored its set; ``streams.commands.tap.supersede``) drops that
one from the files for good; a ``Withdrawn`` record only drops it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path


from streams.admin import reader
from streams.commands.tap.formats import Format
from streams.settings import Settings
from streams.commands.tap.shards import DatasetSink, Rotation
from streams.commands.tap.supersede import SupersededIds, replace_lines, target
from streams.topics import MALFORMED, Topics

__all__ = ["DatasetSink", "JsonlSink", "Rotation", "Sinks", "open_sinks", "tap"]

logger = logging.getLogger(__name__)


def _line_id(line: bytes) -> str | None:
    try:
        return json.loads(line)["id"]
    except (ValueError, KeyError, TypeError):
        return None


class JsonlSink:
    """``DIR/preferences.jsonl`` in TRL's conversational preference format (pairs only)."""

    def __init__(self, out_dir: str | os.PathLike, name: str = "preferences.jsonl") -> None:
        self.path = Path(out_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.superseded = SupersededIds(self.path.with_name(name + ".superseded"))
        if self.path.exists():  # a crash between remembering a dropped id and rewriting the file
            replace_lines(self.path, self.superseded.ids, _line_id)
        self.seen: set[str] = self._read_ids() if self.path.exists() else set()
        self._f = self.path.open("a", encoding="utf-8")
        self._dirty = False

    def _read_ids(self) -> set[str]:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a crash mid-write left a torn line: cut it off
            logger.warning("%s: dropping a partial last line (an earlier crash mid-write)", self.path)
            data = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as f:
                f.truncate(len(data))
        ids = set()
        for line in data.splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError):
                logger.warning("%s: skipping an unreadable line", self.path)
        return ids

    def write(self, record) -> bool:
        if (old := target(record)) is not None:
            self.drop(old)
        if getattr(record, "kind", "pair") != "pair" or record.id in self.seen or record.id in self.superseded:
            return False
        self._f.write(json.dumps(record.trl(), ensure_ascii=False) + "\n")
        self.seen.add(record.id)
        self._dirty = True
        return True

    def drop(self, rid: str) -> None:
        """A superseded record leaves the file (rewritten whole: supersedes are rare) for good."""
        if rid in self.superseded:
            return
        self.superseded.add(rid)
        if rid in self.seen:
            self._dirty = True
            self.flush()
            self._f.close()
            replace_lines(self.path, {rid}, _line_id)
            self._f = self.path.open("a", encoding="utf-8")
            self.seen.discard(rid)

    def flush(self) -> None:
        if self._dirty:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._dirty = False

    def close(self) -> None:
        self._dirty = True
        self.flush()
        self._f.close()
        self.superseded.close()

    def __len__(self) -> int:
        return len(self.seen)


class Sinks:
    """Several sinks fed the same records."""

    def __init__(self, sinks: list) -> None:
        self.sinks = sinks

    def write(self, record) -> bool:
        return any([s.write(record) for s in self.sinks])

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


async def tap(settings: Settings, topics: Topics, out_dir: str, stop: asyncio.Event | None = None,
              fmt: Format | None = None, rotation: Rotation = Rotation(), limit: int | None = None,
              max_policy_lag: int | None = None, stats: dict | None = None, metrics=None) -> int:
    """Follow the preferences topic into ``out_dir`` until ``stop`` is set (or ``limit`` new
    records are written): ``preferences.jsonl`` with no ``fmt``, else ``fmt``'s shards. Returns
    the number of records written by this call. ``max_policy_lag``: records more than that many
    versions behind their policy's newest are skipped (``streams.policies.staleness``); ``stats`` gets
    the counts (``skipped_stale``, ``skipped_by_policy``), and ``metrics`` (a ``streams.metrics.Metrics``)
    ``prefstream_policy_stale_skipped_total``."""
    from streams.policies.staleness import following

    async with following(settings, topics, max_policy_lag, metrics=metrics) as bound:
        written = await _tap(settings, topics, out_dir, stop, fmt, rotation, limit, bound)
    if stats is not None:
        stats.update(bound.summary())
    return written


async def _tap(settings, topics, out_dir, stop, fmt, rotation, limit, bound) -> int:
    name = topics.preferences.name
    sink = JsonlSink(out_dir) if fmt is None else DatasetSink(out_dir, fmt, rotation, topic=name)
    kind = "pair" if fmt is None else fmt.kind
    codec = topics.preferences.codec
    consumer = await reader(settings, [name])
    written = 0
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set() and (limit is None or written < limit):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for msgs in batch.values():
                for msg in msgs:
                    try:
                        record = codec.decode(msg.value)
                    except MALFORMED as e:
                        logger.error("undecodable record at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
                        continue
                    if getattr(record, "kind", None) == kind and not bound.keep(record):
                        if (old := target(record)) is not None:  # what it replaces goes all the same
                            sink.drop(old)
                        continue
                    written += sink.write(record)
            sink.flush()
    finally:
        sink.close()
        await consumer.stop()
    return written


def open_sinks(out_dir: str | os.PathLike, formats: list[str], style: str = "conversational",
               rotation: Rotation = Rotation()) -> Sinks:
    """``prefstream run``'s sinks: ``DIR/preferences.jsonl`` and each format in ``DIR/<format>/``."""
    from streams.commands.tap.formats import get

    fmts = [get(name, style) for name in dict.fromkeys(formats)]
    return Sinks([JsonlSink(out_dir)] + [DatasetSink(Path(out_dir) / f.name, f, rotation) for f in fmts])
