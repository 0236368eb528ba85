"""The batch runtime's producer side: outputs grouped per partition and sent as record batches.

aiokafka's ``send`` costs a future, a partitioner call (murmur2 in Python) and an
accumulator append per message — a fifth of a worker's CPU in the ``bus`` benchmark. Here
a message is appended to its partition's open batch and shares that batch's future; each
partition has one task that hands its batches, in order, to the producer's ``send_batch``
(which waits while the partition's previous batch is still queued, so the next batch
fills meanwhile). The partition is the one aiokafka's default partitioner picks (murmur2
of the key, as Kafka's Java client), so a prompt's messages land where any other producer
would put them.

A batch the broker refuses fails every message in it; the caller re-sends them one by one
(``streams.app.deliver``), which tells a transient failure from a message too large.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

logger = logging.getLogger(__name__)

RECORD_OVERHEAD = 40  # bytes a record adds beyond its key and value (varints, attributes, headers)
BATCH_OVERHEAD = 100  # the batch header (61 bytes) and a margin
HASH_CACHE = 32_768  # keys whose partition hash is remembered (about 3 MB): a prompt id recurs
# once per output of every stage, within the backlog the stages hold between them


def record_size(key: bytes, value: bytes) -> int:
    """The bytes a record takes in a batch (near enough to fit batches and requests)."""
    return len(key) + len(value) + RECORD_OVERHEAD


class _Batch:
    __slots__ = ("records", "size", "future")

    def __init__(self, future: asyncio.Future) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.size = BATCH_OVERHEAD
        self.future = future


class Outbox:
    """``await send(topic, key, value)`` returns the future of the batch the message went
    into: done once the broker acknowledged the batch (or failed with why it did not)."""

    def __init__(self, producer_of: Callable[[], Any], batch_bytes: int) -> None:
        self.producer_of = producer_of  # () -> the started aiokafka producer
        self.batch_bytes = batch_bytes  # the producer's batch size: a batch never outgrows it
        self.queues: dict[tuple[str, int], deque[_Batch]] = {}
        self.flushing: set[tuple[str, int]] = set()
        self.tasks: set[asyncio.Task] = set()
        self._hashes: dict[bytes, int] = {}

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        producer = self.producer_of()
        size = record_size(key, value)
        if size + BATCH_OVERHEAD > self.batch_bytes:  # alone over a batch: the producer's own path,
            return await producer.send(topic, value, key=key)  # with its size check
        partitions = producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            partitions = await producer.partitions_for(topic)  # metadata not fetched yet
        tp = (topic, self.partition(key, len(partitions)))
        queue = self.queues.get(tp)
        if queue is None:
            queue = self.queues[tp] = deque()
        if not queue or queue[-1].size + size > self.batch_bytes:
            queue.append(_Batch(asyncio.get_running_loop().create_future()))
        batch = queue[-1]
        batch.records.append((key, value))
        batch.size += size
        if tp not in self.flushing:
            self.flushing.add(tp)
            task = asyncio.ensure_future(self._flush(producer, tp, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return batch.future

    def partition(self, key: bytes, count: int) -> int:
        """aiokafka's ``DefaultPartitioner`` for a key (partitions are numbered 0..count-1)."""
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= HASH_CACHE:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h % count

    async def _flush(self, producer, tp: tuple[str, int], queue: deque[_Batch]) -> None:
        """Hand the partition's batches to the producer in order until none is left."""
        try:
            while queue:
                batch = queue.popleft()  # from here on new messages open the next batch
                try:
                    acks = []
                    builder = producer.create_batch()
                    for key, value in batch.records:
                        if builder.append(key=key, value=value, timestamp=None) is None:  # full after all
                            acks.append(await self._send(producer, builder, tp))
                            builder = producer.create_batch()
                            builder.append(key=key, value=value, timestamp=None)  # a first record always fits
                    acks.append(await self._send(producer, builder, tp))
                except Exception as exc:  # noqa: BLE001 - the caller re-sends each message
                    logger.warning("batch of %d to %s[%d] not queued (%s); re-sent one by one",
                                   len(batch.records), *tp, exc)
                    batch.future.set_exception(exc)
                    continue
                _settle_when_done(acks, batch.future)
        finally:
            self.flushing.discard(tp)

    @staticmethod
    async def _send(producer, builder, tp: tuple[str, int]) -> asyncio.Future:
        builder.close()  # complete: the producer sends it without lingering for more
        return await producer.send_batch(builder, tp[0], partition=tp[1])


def _settle_when_done(acks: list[asyncio.Future], future: asyncio.Future) -> None:
    """``future`` done once every ack is: with the first failure, else with None."""
    left = [len(acks)]

    def done(ack: asyncio.Future) -> None:
        if future.done():
            return
        if ack.cancelled():
            future.set_exception(KafkaError("the batch's delivery was cancelled"))
        elif ack.exception() is not None:
            future.set_exception(ack.exception())
        else:
            left[0] -= 1
            if not left[0]:
                future.set_result(None)

    for ack in acks:
        ack.add_done_callback(done)
