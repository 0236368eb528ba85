"""The batch runtime under exactly-once: a partition's batch of outputs and its input offset
commit in one broker transaction.

Like ``streams.batch``, each stage has a consumer of its own (group ``<group>.<stage>``,
reading committed messages only) and takes records in batches. Each input partition it
holds gets a transactional producer of its own, its id made of the group, the topic and the
partition: whoever holds the partition next starts a producer with the same id, which fences
this one and aborts its open transaction (the per-partition pattern faust uses; aiokafka has
no group-generation fencing). Per partition, one batch at a time:

    take the batch (the partition is paused meanwhile) → every record through the stage,
    at most ``concurrency`` at once across the stage → begin → send each output in order →
    the offset after the batch, added to the transaction → commit

A transaction that fails is aborted and the partition is sought back to the batch's first
offset, so the batch runs again (its ids are deterministic, and a ``read_committed`` reader
never sees an aborted attempt's outputs). A fenced producer means the partition moved to
another worker: its records are that worker's now. An output the broker would refuse for its
size dead-letters its input inside the same transaction.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streams.app import consumer_group
from streams.batch import DRAIN_S, ConsumingStage
from streams.outbox import record_size
from streams.runtime import Out, Raw, Stage, Undeliverable
from streams.security import kafka_options
from streams.settings import Settings

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # the producers' max_request_size (aiokafka's default)


def transactional_id(group: str, tp: TopicPartition) -> str:
    """The same for every holder of the partition in the stage's group, so the next fences the last."""
    return f"{group}.{tp.topic}-{tp.partition}"


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class _TransactionsFollowPartitions(ConsumerRebalanceListener):
    def __init__(self, runner: "TxnStageRunner") -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.runner.release(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.runner.acquire(set(assigned))
        logger.info("%s: assigned %s (exactly-once)", self.runner.stage.name,
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class TxnStageRunner(ConsumingStage):
    """Exactly once: per input partition, a batch's outputs and its offset in one transaction."""

    consumer_options = {"isolation_level": "read_committed"}  # never an aborted attempt's outputs

    def __init__(self, stage: Stage, settings: Settings, concurrency: int, window: int, **kwargs) -> None:
        super().__init__(stage, settings, concurrency, window, **kwargs)
        self.group = consumer_group(settings, stage.name)
        self.slots = asyncio.Semaphore(concurrency)  # records in the stage at once, all partitions
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.starting = asyncio.Lock()
        self.busy: dict[TopicPartition, asyncio.Task] = {}  # the partition's batch, until committed

    @property
    def label(self) -> str:
        return f"prefstream.{self.stage.name} (exactly-once)"

    def transactional_id(self, tp: TopicPartition) -> str:
        return transactional_id(self.group, tp)

    def listener(self) -> ConsumerRebalanceListener:
        return _TransactionsFollowPartitions(self)

    async def settle(self) -> None:
        await self.release(set(self.producers) | set(self.busy))

    async def acquire(self, assigned: set[TopicPartition]) -> None:
        """A transactional producer per newly assigned partition; starting it fences the
        partition's previous holder and aborts what that one left open. (The rebalance
        listener and a batch that finds its producer gone both come here: one at a time.)"""
        s = self.settings
        async with self.starting:
            for tp in sorted(assigned):
                if tp in self.producers:
                    continue
                producer = AIOKafkaProducer(
                    **kafka_options(s), transactional_id=self.transactional_id(tp), enable_idempotence=True,
                    acks="all", linger_ms=s.producer_linger_ms, max_batch_size=s.producer_batch_bytes,
                    max_request_size=MAX_REQUEST_BYTES)
                try:
                    await producer.start()
                except BaseException:
                    await self._close(producer)
                    raise
                self.producers[tp] = producer
                logger.info("%s: transactional producer %s started", self.stage.name, self.transactional_id(tp))

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Let the revoked partitions' batches commit (a bounded time; one still running is
        cancelled and its transaction never commits), then stop their producers."""
        running = [self.busy[tp] for tp in revoked if tp in self.busy]
        if running:
            done, pending = await asyncio.wait(running, timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("%s: %d partition batches still running after %.0fs; the partitions' next "
                               "holder runs them again", self.stage.name, len(pending), DRAIN_S)
                await asyncio.wait(pending)
        for tp in revoked:
            producer = self.producers.pop(tp, None)
            if producer is not None:
                await self._close(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except Exception as exc:  # noqa: BLE001 - a fenced or broken producer: nothing left to keep
            logger.debug("%s: producer stop: %s", self.stage.name, exc)

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        while not self.stopping:
            held = consumer.assignment()
            room = 0 if self.stage.blocked else self.window - self.inflight
            busy = held & self.busy.keys()
            if room <= 0:
                consumer.pause(*held)
            else:
                consumer.pause(*busy)
                consumer.resume(*(consumer.paused() - busy))
            batches = await self.fetch(room)
            for tp, records in batches.items():
                if not records or tp in self.busy:  # (a paused partition returns none)
                    continue
                raws = [Raw(r.topic, r.partition, r.offset, r.key, r.value) for r in records]
                self._count(len(raws))
                task = asyncio.ensure_future(self._batch(tp, raws))
                self.busy[tp] = task
                task.add_done_callback(lambda t, tp=tp, n=len(raws): self._finished(tp, t, n))

    def _count(self, n: int) -> None:
        self.inflight += n
        self.gauge.set(self.inflight)

    def _finished(self, tp: TopicPartition, task: asyncio.Task, n: int) -> None:
        if self.busy.get(tp) is task:
            del self.busy[tp]
        self._count(-n)

    async def _batch(self, tp: TopicPartition, raws: list[Raw]) -> None:
        outs: list[list[Out]] = [[] for _ in raws]
        queue = iter(range(len(raws)))

        async def work() -> None:
            for i in queue:
                async with self.slots:
                    outs[i] = self._fit(raws[i], await self.stage.outputs_when_ready(raws[i]))

        try:
            await asyncio.gather(*(work() for _ in range(min(self.concurrency, len(raws)))))
            await self._commit(tp, raws, [o for each in outs for o in each])
        except Exception:  # noqa: BLE001 - never committed: the batch runs again
            logger.exception("%s: the batch %s[%d]@%d-%d failed outside the stage; it runs again",
                             self.stage.name, tp.topic, tp.partition, raws[0].offset, raws[-1].offset)
            self._rewind(tp, raws[0].offset)

    def _fit(self, raw: Raw, outs: list[Out]) -> list[Out]:
        """The outputs, or the input's dead letter where one is over the request size."""
        for out in outs:
            size = record_size(out.key, out.value)
            if size > MAX_REQUEST_BYTES:
                return [self.stage.letter(raw, Undeliverable(
                    f"an output to {out.topic.name} of {size} bytes is over the producer's {MAX_REQUEST_BYTES}"))]
        return outs

    async def _commit(self, tp: TopicPartition, raws: list[Raw], outs: list[Out]) -> None:
        producer = await self._producer(tp)
        if producer is None:  # revoked meanwhile: the next holder runs the batch
            return
        sent: list[asyncio.Future] = []
        try:
            async with producer.transaction():
                for out in outs:
                    sent.append(await producer.send(out.topic.name, out.value, key=out.key))
                await producer.send_offsets_to_transaction({tp: raws[-1].offset + 1}, self.group)
        except KafkaError as exc:
            for fut in sent:  # they fail with the transaction: the error is the one above
                fut.add_done_callback(_retrieved)  # ProducerFenced too: the partition moved to another worker
            logger.warning("%s: the transaction of %s[%d]@%d-%d failed (%s: %s); it runs again where the "
                           "partition is held", self.stage.name, tp.topic, tp.partition, raws[0].offset,
                           raws[-1].offset, type(exc).__name__, exc)
            await self._drop(tp, producer)
            self._rewind(tp, raws[0].offset)
            return
        for out in outs:
            self.stage.sent(out)

    async def _producer(self, tp: TopicPartition) -> AIOKafkaProducer | None:
        """The partition's producer; made anew where a failure dropped it; None once revoked."""
        if tp not in self.producers and tp in self.consumer.assignment() and not self.stopping:
            await self.acquire({tp})
        return self.producers.get(tp)

    async def _drop(self, tp: TopicPartition, producer: AIOKafkaProducer) -> None:
        """After a failed transaction the producer goes; the partition's next batch starts a
        new one with the same id, which aborts whatever the old one left open."""
        if self.producers.get(tp) is producer:
            del self.producers[tp]
        await self._close(producer)

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (while it is held here)."""
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)
