"""The batch runtime: a stage consumes its topic in batches and produces without waiting.

faust hands a stage one event at a time through its conductor, stream and actor machinery
(most of its CPU per message is event-loop dispatch), and a handler that
waits for its outputs' acknowledgement holds an actor for a whole producer linger. This
runtime keeps faust as the worker (lifecycle, signals, its producer, the other tasks) and
gives each stage its own consumer in the group ``<group>.<stage>``:

- ``getmany`` takes up to ``room`` records at once (``room`` = the window less what is in
  flight) into a queue; at most ``concurrency`` workers take them one at a time;
- outputs go, without waiting, into per-partition record batches (``streams.outbox``) sent
  on the aiokafka producer faust holds; a record is done once every output is
  acknowledged (a transient failure is re-sent with back-off by ``deliver``; one the broker
  will never take dead-letters the input);
- a partition's offset is committed up to its oldest record not yet done, every
  ``COMMIT_EVERY_S``, on a rebalance and on stop: at least once, as the faust path;
- with the window full, the assigned partitions are paused and ``getmany`` keeps being
  called, so the member stays in its group while the backlog waits in the broker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from streams.app import consumer_group, deliver
from streams.outbox import Outbox
from streams.runtime import Out, Raw, Stage, Undeliverable
from streams.security import kafka_options
from streams.settings import Settings

logger = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.5
MAX_UNACKED = 64  # a worker's records whose outputs are sent, not yet acknowledged, at most
FETCH_BYTES = 256 * 1024
DRAIN_S = 10.0  # on stop or revoke: how long in-flight records may take to finish


def _acknowledged(queued: list) -> bool:
    return all(isinstance(fut, BaseException) or fut.done() for _, fut in queued)


def stage_consumer(settings: Settings, stage: str, **options) -> AIOKafkaConsumer:
    """A stage's own consumer in its own group, committing by hand."""
    session_ms = int(settings.session_timeout_s * 1000)
    return AIOKafkaConsumer(
        **kafka_options(settings), group_id=consumer_group(settings, stage), client_id=f"prefstream-{stage}",
        enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(1000, session_ms // 5),
        # what one fetch may bring per partition: a few hundred messages, not aiokafka's 1 MB
        # (a worker's memory holds this per partition of each stage, on top of the window)
        max_partition_fetch_bytes=FETCH_BYTES, **options)


class _DrainOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: "StageRunner") -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.runner.drain()
        await self.runner.commit()
        for tp in revoked:
            self.runner.pending.pop(tp, None)

    async def on_partitions_assigned(self, assigned) -> None:
        logger.info("%s: assigned %s", self.runner.stage.name, sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class ConsumingStage(Service):
    """A stage over its topic with a consumer of its own, started and stopped with the app: the
    fetch loop, the rebalance listener and what is settled at stop are the runtime's."""

    consumer_options: dict[str, Any] = {}

    def __init__(self, stage: Stage, settings: Settings, concurrency: int, window: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage, self.settings = stage, settings
        self.concurrency = concurrency
        self.window = max(window, concurrency)
        self.inflight = 0
        self.gauge = stage.metrics.child(stage.metrics.in_flight, stage.name)  # inputs taken, not yet done
        self.consumer: AIOKafkaConsumer | None = None
        self.fetching: asyncio.Future | None = None  # the fetch loop
        self.stopping = False

    def listener(self) -> ConsumerRebalanceListener:
        raise NotImplementedError

    async def _fetch_loop(self) -> None:
        raise NotImplementedError

    async def settle(self) -> None:
        """At stop, after the last fetch: finish or give back what is held."""
        raise NotImplementedError

    async def fetch(self, room: int) -> dict:
        """Up to ``room`` records from the partitions not paused (none after 200 ms idle, or
        after a failed fetch, which is logged and tried again on the next call)."""
        try:
            return await self.consumer.getmany(timeout_ms=200, max_records=max(1, room))
        except KafkaError as exc:
            logger.warning("%s: fetch failed (%s); retrying", self.stage.name, exc)
            await asyncio.sleep(0.5)
            return {}

    async def on_start(self) -> None:
        self.consumer = stage_consumer(self.settings, self.stage.name, **self.consumer_options)
        await self.consumer.start()
        self.consumer.subscribe([self.stage.source.name], listener=self.listener())
        self.fetching = self.add_future(self._fetch_loop())

    async def on_stop(self) -> None:
        self.stopping = True
        if self.consumer is None:
            return
        if self.fetching is not None:  # it sees `stopping` within one getmany (200 ms)
            await asyncio.wait({self.fetching}, timeout=5.0)
        await self.settle()
        await self.consumer.stop()


class StageRunner(ConsumingStage):
    """At least once: a partition's offset is committed up to its oldest input whose outputs
    are not all acknowledged."""

    def __init__(self, stage: Stage, settings: Settings, outbox: Outbox, channels: dict[str, Any],
                 concurrency: int, window: int, **kwargs) -> None:
        super().__init__(stage, settings, concurrency, window, **kwargs)
        self.channels = channels
        self.outbox = outbox  # the worker's, shared by its stages
        self.todo: deque[tuple[Raw, list]] = deque()  # taken, not yet started
        self.idle = asyncio.Event()
        self.idle.set()
        # per partition, in fetch order: [offset, done] for every record not yet committed
        self.pending: dict[TopicPartition, deque[list]] = {}
        self.tasks: set[asyncio.Task] = set()  # the workers (at most ``concurrency``)

    @property
    def label(self) -> str:
        return f"prefstream.{self.stage.name}"

    def listener(self) -> ConsumerRebalanceListener:
        return _DrainOnRevoke(self)

    async def settle(self) -> None:
        await self.drain()
        await self.commit()
        for t in list(self.tasks):
            t.cancel()

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        last_commit = time.monotonic()
        while not self.stopping:
            # blocked by its environment: take nothing new (the backlog waits in the broker)
            room = 0 if self.stage.blocked else self.window - self.inflight
            if room <= 0:
                consumer.pause(*consumer.assignment())
            elif consumer.paused():
                consumer.resume(*consumer.paused())
            batches = await self.fetch(room)
            taken = []
            for tp, records in batches.items():
                queue = self.pending.setdefault(tp, deque())
                for r in records:
                    mark = [r.offset, False]
                    queue.append(mark)
                    taken.append((r.timestamp, Raw(r.topic, r.partition, r.offset, r.key, r.value), mark))
            if len(batches) > 1:  # partitions interleaved as the records arrived (stable within one)
                taken.sort(key=lambda t: t[0])
            self.take([(raw, mark) for _, raw, mark in taken])
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await self.commit()
                last_commit = time.monotonic()

    def take(self, records: list[tuple[Raw, list]]) -> None:
        """Queue records and start workers for them, at most ``concurrency`` in all. A worker
        takes one record at a time from the shared queue, so no slot idles while a record
        waits (a slow model call holds one worker, not a fixed share of the batch), and a
        cheap stage still costs no task per record."""
        if not records:
            return
        self.todo.extend(records)
        self.inflight += len(records)
        self.gauge.set(self.inflight)
        self.idle.clear()
        self._spawn()

    def _spawn(self) -> None:
        for _ in range(min(self.concurrency - len(self.tasks), len(self.todo))):
            task = asyncio.ensure_future(self._work())
            self.tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.gauge.set(self.inflight)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: a worker failed outside the stage (its records are not committed; they are "
                         "retried after a restart or rebalance)", self.stage.name, exc_info=task.exception())
        if self.todo and not task.cancelled():  # queued while this worker was settling its last
            self._spawn()  # records (a worker cancelled on stop is not replaced)

    async def _work(self) -> None:
        """Until the queue is empty: a record's outputs are sent without waiting; it is done
        once they are acknowledged, checked as later records go (at most ``MAX_UNACKED``
        waiting). A record leaves ``unsettled`` only once it is done."""
        send, unsettled = self.outbox.send, deque()
        try:
            while self.todo:
                raw, mark = self.todo.popleft()
                queued: list = []
                unsettled.append((raw, mark, queued))
                for out in await self.stage.outputs_when_ready(raw):
                    try:
                        queued.append((out, await send(out.topic.name, out.key, out.value)))
                    except Exception as exc:  # noqa: BLE001 - refused before it was queued: settled below
                        queued.append((out, exc))
                while unsettled and (len(unsettled) > MAX_UNACKED or _acknowledged(unsettled[0][2])):
                    await self._done(*unsettled[0])
                    unsettled.popleft()
            while unsettled:
                await self._done(*unsettled[0])
                unsettled.popleft()
        finally:
            self._release(len(unsettled))  # a failed or cancelled worker's records: not in flight, not done

    async def _done(self, raw: Raw, mark: list, queued: list) -> None:
        await self._settle(raw, queued)
        mark[1] = True
        self._release(1)

    def _release(self, n: int) -> None:
        self.inflight -= n
        if self.inflight == 0:
            self.gauge.set(0)
            self.idle.set()

    async def _settle(self, raw: Raw, queued: list) -> None:
        """Wait for the acknowledgement of each output of ``raw``; re-send what failed."""
        for out, fut in queued:
            try:
                if isinstance(fut, BaseException):
                    raise fut
                await fut
            except Exception:  # noqa: BLE001 - deliver() re-sends (transient) or says Undeliverable
                try:
                    await self._deliver(out)
                except Undeliverable as err:
                    await self._deliver(self.stage.letter(raw, err))
                    return
            self.stage.sent(out)

    async def _deliver(self, out: Out) -> None:
        await deliver(self.channels[out.topic.name], out.key, out.value)

    async def drain(self) -> None:
        """Wait (a bounded time) until every record taken is done or failed."""
        try:
            await asyncio.wait_for(self.idle.wait(), DRAIN_S)
        except asyncio.TimeoutError:
            logger.warning("%s: %d records still in flight after %.0fs; they will be redelivered",
                           self.stage.name, self.inflight, DRAIN_S)

    async def commit(self) -> None:
        """Commit each partition up to its oldest record not yet done."""
        offsets = {}
        assigned = self.consumer.assignment() if self.consumer else set()
        for tp, queue in self.pending.items():
            last = None
            while queue and queue[0][1]:
                last = queue.popleft()[0]
            if last is not None and tp in assigned:
                offsets[tp] = last + 1
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: the new owner replays from the last commit
            logger.warning("%s: commit failed (%s); those records will be redelivered", self.stage.name, exc)
