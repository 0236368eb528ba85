"""Find a prompt's judged sets on the ``judgments`` topic, for a late label (``agents.relabel``).

Every stage output is keyed by prompt id, so all of one prompt's judged sets are in one
partition: the one Kafka's default partitioner (murmur2) gives its key. The lookup reads that
partition from the first offset at or after ``since`` (the broker's time index; from the start
where the broker has none) to its end, and keeps the prompt's sets. Nothing is held between
lookups: a worker restarted, or another worker, finds the same sets.
"""
from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from schemas import JudgedSet
from streams.admin import isolation
from streams.security import kafka_options
from streams.settings import Settings
from streams.topics import MALFORMED, Topic

logger = logging.getLogger(__name__)

IDLE_POLLS = 4  # empty 0.5 s polls after which the partition counts as read (a wrong end offset)


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class JudgedLookup:
    """``await lookup(prompt_id, since)`` → the prompt's judged sets, in offset order."""

    def __init__(self, settings: Settings, topic: Topic) -> None:
        self.settings, self.topic = settings, topic

    async def __call__(self, prompt_id: str, since: float) -> list[JudgedSet]:
        tp = TopicPartition(self.topic.name, partition_of(prompt_id, self.topic.partitions))
        consumer = AIOKafkaConsumer(**kafka_options(self.settings), enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest", isolation_level=isolation(self.settings))
        await consumer.start()
        try:
            consumer.assign([tp])
            await self._seek(consumer, tp, since)
            end = (await consumer.end_offsets([tp]))[tp]
            return await self._read(consumer, tp, end, prompt_id)
        finally:
            await consumer.stop()

    async def _seek(self, consumer: AIOKafkaConsumer, tp: TopicPartition, since: float) -> None:
        try:
            found = (await consumer.offsets_for_times({tp: max(0, int(since * 1000))})).get(tp)
        except Exception as e:  # noqa: BLE001 - a broker without a time index: read it all
            logger.debug("no time index on %s (%s): reading from the start", tp, e)
            await consumer.seek_to_beginning(tp)
            return
        if found is not None:
            consumer.seek(tp, found.offset)
        else:  # nothing written since then
            await consumer.seek_to_end(tp)

    async def _read(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, prompt_id: str) -> list:
        out, idle = [], 0
        key = prompt_id.encode()
        while await consumer.position(tp) < end and idle < IDLE_POLLS:
            batch = await consumer.getmany(tp, timeout_ms=500)
            idle = 0 if batch else idle + 1
            for msg in batch.get(tp, []):
                if msg.key != key:
                    continue
                try:
                    out.append(self.topic.codec.decode(msg.value))
                except MALFORMED as e:
                    logger.error("undecodable judged set at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
        return out
