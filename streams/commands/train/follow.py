"""The preference stream of one objective, from a stored position on.

The trainer keeps its stream position (the next offset of every partition of the preferences
topic) in its own state file, written atomically together with the adapter it belongs to
(``streams.commands.train.state``), rather than in a consumer group: a restart then goes on
from exactly the records the last saved adapter has not seen, whatever the broker committed.

Late labels (``streams.commands.tap.supersede``'s rule, as the tap keeps it): a record that
``supersedes`` another, or a ``Withdrawn`` one, takes the record it names back. Taken back before
it is trained, that record is dropped from the round being gathered and never taken later
(``gone``, kept in the trainer's state); taken back after it was trained, it cannot be untrained:
its id goes to ``late`` for the trainer to count. A replacement pair is taken like any other.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.admin import isolation
from streams.commands.tap.supersede import target
from streams.security import kafka_options
from streams.settings import Settings
from streams.topics import MALFORMED, Topics

logger = logging.getLogger(__name__)


def objective_name(objective: str) -> str:
    """``gsm8k@3`` → ``gsm8k``."""
    return objective.rsplit("@", 1)[0]


class Follower:
    """Reads records of ``objective`` of the ``kinds`` trained on (pairs for DPO, unpaired for
    KTO) from ``offsets`` on (partition → next offset; the start of the topic for a partition not
    named). ``gone``: ids superseded or withdrawn so far, never taken."""

    def __init__(self, settings: Settings, topics: Topics, objective: str, offsets: dict[int, int],
                 keep: Callable[[object], bool] = lambda record: True, gone: Iterable[str] = (),
                 kinds: Iterable[str] = ("pair",)) -> None:
        self.settings, self.objective = settings, objective
        self.topic = topics.preferences
        self.offsets = dict(offsets)
        self.keep = keep  # e.g. the staleness bound (``streams.policies.staleness``): False skips a record
        self.gone: set[str] = set(gone)
        self.kinds = frozenset(kinds)
        self.late: list[str] = []  # ids taken back after they were trained (in ``skip``), as read
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        c = AIOKafkaConsumer(**kafka_options(self.settings), enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", isolation_level=isolation(self.settings))
        await c.start()
        parts = None
        for _ in range(100):
            if parts := c.partitions_for_topic(self.topic.name):
                break
            await c._client.force_metadata_update()
            await _sleep(0.1)
        if not parts:
            await c.stop()
            raise RuntimeError(f"topic {self.topic.name} does not exist; start the pipeline "
                               "(`prefstream run` or `prefstream worker`) first")
        tps = [TopicPartition(self.topic.name, p) for p in sorted(parts)]
        c.assign(tps)
        for tp in tps:
            if tp.partition in self.offsets:
                c.seek(tp, self.offsets[tp.partition])
            else:
                await c.seek_to_beginning(tp)
        self.consumer = c

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def take(self, n: int, skip: set[str], idle_s: float | None = None) -> list:
        """Up to ``n`` new records (of ``kinds``) of the objective (ids in ``skip``, the ones trained already,
        and in ``gone`` passed over), advancing ``self.offsets`` past every message read;
        returns early after ``idle_s`` seconds with nothing new (``None``: waits for ``n``)."""
        out: list = []
        last = time.monotonic()
        while len(out) < n:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=n - len(out))
            got = False
            for tp, msgs in batch.items():
                for msg in msgs:
                    self.offsets[tp.partition] = msg.offset + 1
                    record = self._decode(msg)
                    if record is None:
                        continue
                    if (old := target(record)) is not None:
                        out = self._take_back(old, skip, out)
                    if self._wanted(record, skip, out):
                        out.append(record)
                        got = True
            if got:
                last = time.monotonic()
            elif idle_s is not None and time.monotonic() - last >= idle_s:
                break
        return out

    def _take_back(self, old: str, skip: set[str], out: list) -> list:
        """A late label took ``old`` back: ``out`` without it, and ``old`` gone from now on."""
        if old in self.gone:
            return out
        self.gone.add(old)
        if old in skip:
            self.late.append(old)
        return [r for r in out if r.id != old]

    def _wanted(self, record, skip: set[str], out: list) -> bool:
        if getattr(record, "kind", None) not in self.kinds or record.id in skip or record.id in self.gone:
            return False
        return not any(r.id == record.id for r in out) and self.keep(record)

    def _decode(self, msg):
        """The objective's record at ``msg`` (any kind: a ``Withdrawn`` one too), else None."""
        try:
            record = self.topic.codec.decode(msg.value)
        except MALFORMED as e:
            logger.error("undecodable record at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
            return None
        if objective_name(getattr(record, "objective", "")) != self.objective:
            return None
        return record


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)
