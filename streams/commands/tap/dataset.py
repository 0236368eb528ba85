"""Stream preference records from the topic into a trainer while the pipeline runs.

    from streams.commands.tap.dataset import iterable_dataset, rows
    for row in rows(settings, "trl-dpo", idle_timeout_s=30):   # a plain iterator of dicts
        ...
    ds = iterable_dataset(settings, "trl-kto")                  # a datasets.IterableDataset

Records are read from the start of the topic, each record id once (the bus delivers at
least once), and — with ``follow`` — as they arrive, until ``idle_timeout_s`` passes with
none (``None``: forever). A background thread owns the Kafka consumer; a bounded queue
between it and the caller holds the consumer back when the trainer is slower.

Superseded records (a late label re-scored their set; ``streams.commands.tap.supersede``): records are held
back until the reader has caught up with the topic (an idle second), and those superseded by
then are never handed out. A record superseded later, after it was handed out, is followed by
its successor, whose ``supersedes`` field (column) names it: a trainer following the stream
drops the row it names (a ``Withdrawn`` record, which names one with no successor, has no row in
any format; ``records()`` hands it out when ``kinds`` is None).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Iterator

import msgspec

from streams.admin import reader
from streams.commands.tap.formats import get
from streams.settings import Settings
from streams.topics import Topics, from_settings

logger = logging.getLogger(__name__)

_END = object()
CAUGHT_UP_S = 1.0  # an idle second: what was on the topic at the start has been read


class _Reader(threading.Thread):
    """Decodes the topic into ``self.out`` until ``self.halt`` is set."""

    def __init__(self, settings: Settings, topic, maxsize: int, policies=None, topics: Topics | None = None) -> None:
        super().__init__(daemon=True, name="prefstream-dataset-reader")
        self.settings, self.topic = settings, topic
        self.policies, self.topics = policies, topics  # a PolicyRegistry this thread keeps current
        self.out: queue.Queue = queue.Queue(maxsize)
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.ready = threading.Event()  # the consumer is assigned: idle time counts from here

    def run(self) -> None:
        try:
            asyncio.run(self._read())
        except BaseException as e:  # handed to the caller's thread
            self.error = e
        finally:
            self._put(_END)

    def _put(self, item) -> bool:
        while not self.halt.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    async def _read(self) -> None:
        follow = None
        if self.policies is not None:  # caught up before any record is judged against it
            follow = asyncio.create_task(self.policies.follow(self.settings, self.topics))
            ready = asyncio.create_task(self.policies.ready.wait())
            await asyncio.wait([follow, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if follow.done():
                follow.result()
        consumer = await reader(self.settings, [self.topic.name])
        self.ready.set()
        try:
            while not self.halt.is_set():
                for msgs in (await consumer.getmany(timeout_ms=200, max_records=500)).values():
                    for msg in msgs:
                        try:
                            value = self.topic.codec.decode(msg.value)
                        except msgspec.DecodeError as e:
                            logger.error("undecodable record at %s[%d]@%d: %s", msg.topic, msg.partition,
                                         msg.offset, e)
                            continue
                        if not self._put(value):
                            return
        finally:
            await consumer.stop()
            if follow is not None:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)


def records(settings: Settings, kinds: tuple[str, ...] | None = None, follow: bool = True,
            idle_timeout_s: float | None = None, topics: Topics | None = None, shadow: bool = False,
            maxsize: int = 1000, max_policy_lag: int | None = None, stats: dict | None = None,
            metrics=None) -> Iterator:
    """Preference records (``PreferenceRecord``, ``UnpairedRecord``, …) from the topic, each
    id once. Without ``follow`` it stops at the first idle second; with it, after
    ``idle_timeout_s`` idle seconds (``None``: never). ``max_policy_lag``: records more than
    that many versions behind their policy's newest are skipped (``streams.policies.staleness``), and
    counted in ``stats`` (``skipped_stale``, ``skipped_by_policy``) as they are, and on ``metrics``'
    ``prefstream_policy_stale_skipped_total`` (a ``streams.metrics.Metrics`` the caller serves)."""
    from streams.policies.registry import PolicyRegistry
    from streams.policies.staleness import from_registry

    topics = topics or from_settings(settings)
    topic = topics.preferences_shadow if shadow else topics.preferences
    limit = idle_timeout_s if follow else 1.0
    registry = PolicyRegistry() if max_policy_lag is not None else None
    bound = from_registry(max_policy_lag, registry, metrics)
    worker = _Reader(settings, topic, maxsize, registry, topics)
    worker.start()
    inner = _records(worker, kinds, limit)
    try:
        for record in inner:
            if bound.keep(record):
                yield record
            elif stats is not None:
                stats.update(bound.summary())
    finally:
        inner.close()  # stops the reader thread
        if bound.skipped:
            logger.info("skipped %d records more than %d versions behind their policy's newest: %s",
                        bound.skipped, max_policy_lag, dict(bound.by_policy))


def _records(worker: _Reader, kinds: tuple[str, ...] | None, limit: float | None) -> Iterator:
    seen: set[str] = set()
    backlog: dict[str, object] | None = {}  # what was on the topic at the start, until caught up
    gone: set[str] = set()  # superseded ids
    last = time.monotonic()
    try:
        while True:
            try:
                item = worker.out.get(timeout=0.2)
            except queue.Empty:
                if not worker.ready.is_set():
                    last = time.monotonic()
                elif backlog is not None and time.monotonic() - last >= CAUGHT_UP_S:
                    yield from (r for r in backlog.values() if r.id not in gone)
                    backlog = None
                elif limit is not None and time.monotonic() - last >= limit:
                    return
                continue
            if item is _END:
                if worker.error is not None:
                    raise worker.error
                yield from (r for r in (backlog or {}).values() if r.id not in gone)
                return
            last = time.monotonic()
            if (old := getattr(item, "supersedes", None)) is not None:
                gone.add(old)
                if backlog is not None:
                    backlog.pop(old, None)
            if item.id in seen or item.id in gone or (kinds is not None and item.kind not in kinds):
                continue
            seen.add(item.id)
            if backlog is not None:
                backlog[item.id] = item
            else:
                yield item
    finally:
        worker.halt.set()
        worker.join(10)


def rows(settings: Settings, format: str, style: str = "conversational", **kw) -> Iterator[dict]:
    """The rows of one training format (``streams.commands.tap.formats``), as the tap writes them."""
    fmt = get(format, style)
    for record in records(settings, kinds=(fmt.kind,), **kw):
        yield fmt.row(record)


def _generate(settings: Settings, format: str, style: str, kw: dict) -> Iterator[dict]:
    yield from rows(settings, format, style, **kw)


def iterable_dataset(settings: Settings, format: str, style: str = "conversational", **kw):
    """A ``datasets.IterableDataset`` over :func:`rows`, typed with the format's features."""
    from datasets import IterableDataset

    fmt = get(format, style)
    return IterableDataset.from_generator(_generate, features=fmt.features(),
                                          gen_kwargs={"settings": settings, "format": format, "style": style,
                                                      "kw": kw})
