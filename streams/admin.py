"""Topic creation and the small aiokafka clients the CLI uses (submit, tap, run)."""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.security import kafka_options
from streams.settings import Settings
from streams.topics import MALFORMED, Topic, Topics

logger = logging.getLogger(__name__)


async def create_topics(settings: Settings, topics: Topics) -> list[str]:
    """Create every topic explicitly with its partition count (auto-created topics get the
    broker's default). Existing topics are left as they are. Returns the names created."""
    admin = AIOKafkaAdminClient(client_id="prefstream-admin", **kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t.name, t.partitions, settings.replication, topic_configs=topic_configs(settings, t))
               for t in topics if t.name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in new]
    finally:
        await admin.close()


def topic_configs(settings: Settings, topic: Topic) -> dict[str, str]:
    """A new topic's configs: compaction, and the retention its spec names in the settings."""
    configs = {"cleanup.policy": "compact"} if topic.spec.compacted else {}
    if topic.spec.retention:
        configs["retention.ms"] = str(getattr(settings, topic.spec.retention))
    return configs


def producer(settings: Settings, **overrides) -> AIOKafkaProducer:
    opts = dict(kafka_options(settings), enable_idempotence=settings.enable_idempotence,
                linger_ms=settings.producer_linger_ms, acks="all")
    return AIOKafkaProducer(**{**opts, **overrides})


def isolation(settings: Settings) -> str:
    """What a reader sees: under exactly-once only committed transactions (an aborted
    attempt's outputs never), else everything."""
    return "read_committed" if settings.processing_guarantee == "exactly_once" else "read_uncommitted"


async def reader(settings: Settings, topic_names: list[str]) -> AIOKafkaConsumer:
    """A group-less consumer assigned every partition of the topics, from the beginning.
    Used by the run driver, the objectives registry and `tap`-like readers. Under exactly-once
    it reads committed transactions only (an aborted attempt's outputs are never seen)."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None, isolation_level=isolation(settings))
    await consumer.start()
    tps = []
    for name in topic_names:
        parts = None
        for _ in range(50):
            parts = consumer.partitions_for_topic(name)
            if parts:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        if not parts:
            await consumer.stop()
            raise RuntimeError(f"topic {name} does not exist; create it with `prefstream worker` or `run`")
        tps += [TopicPartition(name, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


async def follow(settings: Settings, topic: Topic, handle: Callable[[Any], Any],
                 after_poll: Callable[[AIOKafkaConsumer, int], Awaitable[None]] | None = None) -> None:
    """Read ``topic`` from the beginning, forever, as the background readers do (objectives,
    human feedback, prompt stats): each message decoded and given to ``handle`` (awaited when
    it returns an awaitable); a malformed one is logged with its position and skipped.
    ``after_poll(consumer, idle)`` runs after every poll, ``idle`` counting the empty 0.5 s
    polls in a row (a reader's "caught up" signal)."""
    consumer = await reader(settings, [topic.name])
    try:
        idle = 0
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                for msg in msgs:
                    try:
                        value = topic.codec.decode(msg.value)
                    except MALFORMED as e:
                        logger.error("bad %s message at %s[%d]@%d: %s", topic.spec.short, msg.topic, msg.partition,
                                     msg.offset, e)
                        continue
                    result = handle(value)
                    if inspect.isawaitable(result):
                        await result
            if after_poll is not None:
                await after_poll(consumer, idle)
    finally:
        await consumer.stop()


async def follow_topics(settings: Settings, sources: list[tuple[Topic, Callable[[Any], Any]]], ready: asyncio.Event,
                        on_ready: Callable[[], None] | None = None) -> None:
    """``follow`` each topic with its own handler, all at once, forever (the objective and
    policy registries: a topic and its history). ``ready`` is set, and ``on_ready()`` called,
    once every reader has caught up with its topic as it was when it started (the end offsets
    then, or ``IDLE_POLLS`` empty polls). One reader failing (a missing topic) stops the others
    and raises its error."""
    caught: set[str] = set()

    def hook(topic: Topic):
        ends: dict = {}

        async def after_poll(consumer: AIOKafkaConsumer, idle: int) -> None:
            if not ends:
                ends.update(await consumer.end_offsets(list(consumer.assignment())))
            if topic.name not in caught and (idle >= IDLE_POLLS or await caught_up(consumer, ends)):
                caught.add(topic.name)
                if len(caught) == len(sources) and not ready.is_set():
                    ready.set()
                    if on_ready is not None:
                        on_ready()

        return after_poll

    tasks = [asyncio.create_task(follow(settings, topic, handle, hook(topic))) for topic, handle in sources]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` is set within ``timeout`` (a follower's ``ready``); no timer when it
    already is, the usual case on every prompt."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


IDLE_POLLS = 4  # empty 0.5 s polls after which a reader takes a topic as read to its end


async def read_all(settings: Settings, sources: list[Topic]) -> list[tuple[Topic, Any, float]]:
    """Every decodable record of ``sources`` as ``(topic, value, time)``, in offset order per
    partition, up to the end offsets seen at the start (or until the broker has nothing
    more for two seconds, where a broker reports an end offset it never serves)."""
    consumer = await reader(settings, [t.name for t in sources])
    by_name = {t.name: t for t in sources}
    out: list[tuple[Topic, Any, float]] = []
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        idle = 0
        while not await caught_up(consumer, ends) and idle < IDLE_POLLS:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                for m in msgs:
                    t = by_name[m.topic]
                    try:
                        out.append((t, t.codec.decode(m.value), m.timestamp / 1000))
                    except MALFORMED as e:
                        logger.error("undecodable record at %s[%d]@%d: %s", m.topic, m.partition, m.offset, e)
    finally:
        await consumer.stop()
    return out


async def caught_up(consumer, ends: dict) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])
