"""The batch runtime's bookkeeping without a broker: what it commits, and how a chunk settles
its outputs (acknowledged, re-sent after a transient failure, or dead-lettered when the broker
will never take one)."""
from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from schemas import Message, Prompt
from streams.batch import StageRunner
from streams.metrics import Metrics
from streams.runtime import Emit, Raw, Stage
from streams.settings import load
from streams.topics import Topics

TP = TopicPartition("ns.prompts", 0)


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def assignment(self):
        return {TP}

    async def commit(self, offsets):
        self.commits.append(dict(offsets))


class _Producer:
    """faust's producer as the runner sees it: ``send`` queues and returns the delivery future;
    ``fail`` maps a topic's short name to what its next send does."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail, self.sent = dict(fail or {}), []

    async def send(self, topic, key, value, partition, timestamp, headers):
        short = topic.split(".", 1)[1]
        exc = self.fail.pop(short, None)
        if isinstance(exc, MessageSizeTooLargeError):
            raise exc  # refused before it was queued
        fut = asyncio.get_running_loop().create_future()
        if exc is not None:
            fut.set_exception(exc)
        else:
            self.sent.append((short, key))
            fut.set_result("ack")
        return fut


class _Channel:
    """A faust topic for ``deliver()``'s re-send; ``refuse`` makes it over the size limit."""

    def __init__(self, name: str, log: list, refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, key, value):
        if self.refuse:
            raise MessageSizeTooLargeError("too big")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result("ack")
        self.log.append((self.name.split(".", 1)[1], key))
        return fut


def _runner(producer: _Producer, refuse: set[str] = frozenset()) -> tuple[StageRunner, list, Metrics]:
    topics, metrics, resent = Topics("ns"), Metrics(), []

    async def handler(p: Prompt) -> list[Emit]:
        return [Emit("curated", p.id, p), Emit("outcomes", p.id, p)] if p.id != "bad" else []

    stage = Stage("curate", topics.prompts, topics, metrics, handler)
    channels = {t.name: _Channel(t.name, resent, t.spec.short in refuse) for t in topics}
    runner = StageRunner(stage, load({}, broker="127.0.0.1:1"), lambda: producer, channels, concurrency=2, window=8)
    runner.consumer = _Consumer()
    return runner, resent, metrics


def _raw(offset: int, pid: str) -> Raw:
    value = Topics("ns").prompts.codec.encode(Prompt(id=pid, messages=[Message(role="user", content="hi")]))
    return Raw(TP.topic, TP.partition, offset, pid.encode(), value)


def test_commits_only_up_to_the_oldest_input_not_done():
    runner, _, _ = _runner(_Producer())
    marks = [[10, True], [11, False], [12, True]]
    runner.pending[TP] = deque(marks)

    async def go():
        await runner.commit()
        marks[1][1] = True
        await runner.commit()
        await runner.commit()  # nothing new is done: no commit

    asyncio.run(go())
    assert runner.consumer.commits == [{TP: 11}, {TP: 13}]
    assert not runner.pending[TP]


def test_a_chunk_marks_each_input_done_once_its_outputs_are_acknowledged_or_re_sent():
    # the first "curated" send fails after queueing (a timeout): deliver() sends it again
    producer = _Producer(fail={"curated": KafkaTimeoutError("batch expired")})
    runner, resent, metrics = _runner(producer)
    marks = [[0, False], [1, False]]

    asyncio.run(runner._chunk([(_raw(0, "a"), marks[0]), (_raw(1, "b"), marks[1])]))
    assert all(done for _, done in marks)
    assert resent == [("curated", b"a")]
    assert producer.sent == [("outcomes", b"a"), ("curated", b"b"), ("outcomes", b"b")]
    assert metrics.messages_out.labels("curate", "curated")._value.get() == 2


def test_an_output_the_broker_never_takes_dead_letters_its_input_and_the_chunk_goes_on():
    producer = _Producer(fail={"curated": MessageSizeTooLargeError("too big")})
    runner, resent, metrics = _runner(producer, refuse={"curated"})
    marks = [[0, False], [1, False]]

    asyncio.run(runner._chunk([(_raw(0, "a"), marks[0]), (_raw(1, "b"), marks[1])]))
    assert all(done for _, done in marks)
    assert ("deadletters", b"a") in resent and producer.sent[-2:] == [("curated", b"b"), ("outcomes", b"b")]
    assert metrics.dead_letters.labels("curate", "prompts", "error")._value.get() == 1
