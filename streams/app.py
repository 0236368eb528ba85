"""The worker: one process runs the stages of the pipeline table it is asked for, over the
namespace's topics. It knows the table's shape (``streams.runtime.Pipeline``), not the stages:
the commands hand it ``agents.pipeline.PIPELINE``."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from faust.app.base import BootStrategy
from faust.exceptions import ProducerSendError

from streams.broker import free_port
from streams.health import Health, publish_health
from streams.metrics import Metrics
from streams.runtime import Stage, Undeliverable
from streams.security import faust_credentials
from streams.settings import Settings
from streams.topics import Topic, Topics, from_settings

logger = logging.getLogger(__name__)

MAX_RETRY_S = 5.0


async def deliver(channel: faust.TopicT, key: bytes, value: bytes) -> None:
    """Send one output and wait until the broker has acknowledged it.

    faust's ``send`` only enqueues; awaiting the delivery future here means a handler
    returns, and faust may commit its input's offset, only once every output is stored.
    A transient failure (broker down, leader moving, timeout) is retried with back-off for
    as long as it lasts: the partition waits and its offset stays uncommitted. A message the
    broker will never take (too large) raises ``Undeliverable`` (the input is dead-lettered).
    """
    delay, failures = 0.1, 0
    while True:
        try:
            await (await channel.send(key=key, value=value))
            return
        except (KafkaError, ProducerSendError) as exc:
            cause = exc.__cause__ if isinstance(exc, ProducerSendError) and exc.__cause__ else exc
            if isinstance(cause, (MessageSizeTooLargeError, RecordListTooLargeError)):
                raise Undeliverable(f"a {len(value)}-byte message to {channel.get_topic_name()} is over "
                                    f"the producer's or the broker's size limit: {cause}") from exc
            failures += 1
            logger.warning("send to %s failed (%s), retry %d in %.1fs", channel.get_topic_name(), cause,
                           failures, delay)
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_S, delay * 2)


@dataclass
class Context:
    """What the stage bindings share inside one worker. The runtime fills the first part; the
    pipeline's ``setup`` the models, evaluators and objectives its stages use."""

    settings: Settings
    topics: Topics
    metrics: Metrics
    objectives: Any = None  # agents.objectives.registry.ObjectiveRegistry
    backends: Any = None
    evaluators: Any = None
    channels: dict[str, faust.TopicT] = field(default_factory=dict)
    health: Any = None  # streams.health.Health: the stages blocked by their environment
    outbox: Any = None  # the batch runtime's (streams.outbox.Outbox), made with the first stage
    policies: Any = None  # streams.policy_registry.PolicyRegistry: the versions of every policy

    def bind(self, app: faust.App, decl: StageDecl) -> None:
        """One row of the pipeline table: its handler on its input topic, with its concurrency."""
        handler = decl.bind(app, self)
        self.agent(app, decl.name, self.topics.of(decl.input), handler,
                   concurrency=getattr(self.settings, decl.concurrency), outputs=decl.outputs)

    def agent(self, app: faust.App, name: str, source: Topic, handler, concurrency: int = 1,
              outputs=None) -> None:
        """Bind ``handler`` on ``source``: a ``StageRunner`` taking batches with a consumer of its
        own, its outputs sent on faust's producer; under exactly-once a ``TxnStageRunner`` with
        transactional producers of its own."""
        if not self.channels:  # for re-sends (``deliver``) of outputs whose batch failed
            self.channels.update({
                t.name: app.topic(t.name, key_type=bytes, value_type=bytes, value_serializer="raw",
                                  key_serializer="raw", partitions=t.partitions)
                for t in self.topics
            })
        stage = Stage(name, source, self.topics, self.metrics, self.metrics.instrument(handler), self.health, outputs)
        window = max(self.settings.batch_max_records, 2 * concurrency)
        if self.settings.processing_guarantee == "exactly_once":  # transactions of its own per partition
            from streams.txn import TxnStageRunner

            app.service(TxnStageRunner(stage, self.settings, concurrency, window))
            return
        from streams.batch import StageRunner

        if self.outbox is None:  # one per worker: its stages share the batches and the partition hashes
            from streams.outbox import Outbox

            # on the aiokafka producer faust's producer holds (started with the app)
            self.outbox = Outbox(lambda: app.producer._ensure_producer(), self.settings.producer_batch_bytes)
        app.service(StageRunner(stage, self.settings, self.outbox, self.channels, concurrency, window))


class _BatchBoot(BootStrategy):
    enable_kafka_consumer = False  # each stage's StageRunner has a consumer of its own


class BatchApp(faust.App):
    """The worker: faust without its shared consumer and conductor (each stage consumes with
    its own). faust still gives the worker its lifecycle (start, stop, signals), the producer
    the stages send on, and the app's background tasks (objectives, health)."""

    BootStrategy = _BatchBoot


def consumer_group(settings: Settings, agent: str) -> str:
    """The consumer group an agent reads its topic in: its own (so a stage rebalances alone)."""
    return f"{settings.group_id}.{agent}"


def build_app(settings: Settings, pipeline: Pipeline, workers: tuple[str, ...] | None = None) -> faust.App:
    """A worker running the stages of ``workers`` (all of the pipeline's by default)."""
    stages = pipeline.of(pipeline.workers if workers is None else workers)
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    app = BatchApp(
        settings.group_id,
        broker=settings.faust_broker,
        broker_credentials=faust_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(data_dir / "faust"),
        web_enabled=False,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.web_port or free_port(),
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        consumer_auto_offset_reset="earliest",
        producer_linger=settings.producer_linger_ms / 1000,
        producer_acks=-1,
        producer_max_batch_size=settings.producer_batch_bytes,
        # bounded in-flight work: an agent's buffer holds a few messages beyond its
        # concurrency; when it is full faust pauses the partition instead of buffering more
        stream_buffer_maxsize=max(4, 2 * settings.max_inflight),
        # under exactly-once the stages make their own transactions (streams.txn); faust's
        # producer, which they do not use then, stays plain
        processing_guarantee="at_least_once",
    )
    ctx = Context(settings, from_settings(settings), Metrics())
    ctx.health = Health(ctx.metrics.registry)

    @app.task
    async def health() -> None:
        await publish_health(settings, ctx.topics, ctx.health)

    pipeline.setup(app, ctx, tuple(dict.fromkeys(s.runs_in for s in stages)))
    for decl in stages:
        ctx.bind(app, decl)
    ctx.metrics.serve(settings.metrics_port, settings.metrics_host, ctx.health)
    app.prefstream = ctx  # for tests and the CLI
    return app

