"""The batch runtime's bookkeeping without a broker: what it commits, how its workers share
the records taken and settle their outputs (acknowledged, re-sent after a transient failure, or dead-lettered when the broker
will never take one), and how the outbox batches them per partition."""
from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from schemas import Message, Prompt
from streams.batch import StageRunner
from streams.outbox import BATCH_OVERHEAD, RECORD_OVERHEAD, Outbox
from streams.metrics import Metrics
from streams.runtime import Emit, Raw, Stage
from streams.settings import load
from streams.topics import CURATED, OUTCOMES, Topics

TP = TopicPartition("ns.prompts", 0)


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def assignment(self):
        return {TP}

    async def commit(self, offsets):
        self.commits.append(dict(offsets))


class _Builder:
    """aiokafka's ``BatchBuilder`` as the outbox uses it; ``room`` records fit."""

    def __init__(self, room: int = 1000) -> None:
        self.records, self.room, self.closed = [], room, False

    def close(self) -> None:
        self.closed = True

    def append(self, *, key, value, timestamp):
        assert not self.closed, "appended to after it was handed over"
        if self.records and len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


class _Cluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic):
        return set(range(self.partitions))


class _Client:
    def __init__(self, partitions: int) -> None:
        self.cluster = _Cluster(partitions)


class _Producer:
    """The aiokafka producer as the runner's outbox sees it: ``send_batch`` queues a batch and
    returns its delivery future, ``send`` one message; ``fail`` maps a topic's short name to
    what its next batch (or message) does."""

    def __init__(self, fail: dict[str, Exception] | None = None, partitions: int = 1, room: int = 1000) -> None:
        self.fail, self.sent, self.batches = dict(fail or {}), [], []
        self.client, self.room = _Client(partitions), room

    def create_batch(self) -> _Builder:
        return _Builder(self.room)

    def _outcome(self, short: str, keys: list[bytes]) -> asyncio.Future:
        exc = self.fail.pop(short, None)
        if isinstance(exc, MessageSizeTooLargeError):
            raise exc  # refused before it was queued
        fut = asyncio.get_running_loop().create_future()
        if exc is not None:
            fut.set_exception(exc)
        else:
            self.sent += [(short, key) for key in keys]
            fut.set_result("ack")
        return fut

    async def send_batch(self, batch: _Builder, topic: str, *, partition: int):
        assert batch.closed, "a batch is handed over complete"
        self.batches.append((topic.split(".", 1)[1], partition, [k for k, _ in batch.records]))
        return self._outcome(topic.split(".", 1)[1], [k for k, _ in batch.records])

    async def send(self, topic, value, key):
        return self._outcome(topic.split(".", 1)[1], [key])


class _Channel:
    """A faust topic for ``deliver()``'s re-send; a value over ``limit`` bytes is over the size limit."""

    def __init__(self, name: str, log: list, limit: int | None = None) -> None:
        self.name, self.log, self.limit = name, log, limit

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, key, value):
        if self.limit is not None and len(value) > self.limit:
            raise MessageSizeTooLargeError("too big")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result("ack")
        self.log.append((self.name.split(".", 1)[1], key))
        return fut


def _runner(producer: _Producer, limit: int | None = None) -> tuple[StageRunner, list, Metrics]:
    """A runner whose handler emits each prompt to curated and outcomes; with ``limit``, a
    batch holds ``limit`` bytes and the broker refuses a message over that (a dead letter
    aside: the real one keeps at most 256 KB of the original)."""
    topics, metrics, resent = Topics("ns"), Metrics(), []

    async def handler(p: Prompt) -> list[Emit]:
        return [Emit(CURATED, p.id, p), Emit(OUTCOMES, p.id, p)] if p.id != "bad" else []

    stage = Stage("curate", topics.prompts, topics, metrics, handler)
    channels = {t.name: _Channel(t.name, resent, None if t.spec.short == "deadletters" else limit) for t in topics}
    settings = load({}, broker="127.0.0.1:1", **({"producer_batch_bytes": limit} if limit else {}))
    runner = StageRunner(stage, settings, Outbox(lambda: producer, settings.producer_batch_bytes), channels,
                         concurrency=2, window=8)
    runner.consumer = _Consumer()
    return runner, resent, metrics


def _raw(offset: int, pid: str, content: str = "hi") -> Raw:
    value = Topics("ns").prompts.codec.encode(Prompt(id=pid, messages=[Message(role="user", content=content)]))
    return Raw(TP.topic, TP.partition, offset, pid.encode(), value)


def _run(runner: StageRunner, records: list) -> None:
    async def go():
        runner.take(records)
        await asyncio.wait_for(runner.idle.wait(), 10)

    asyncio.run(go())


def test_a_slow_input_holds_one_worker_while_the_others_take_the_rest():
    # concurrency 2: "slow" waits until "b" and "c" are done, so it completes only if the
    # second worker takes both of them while the first is held (no fixed share per worker)
    producer = _Producer()
    runner, _, _ = _runner(producer)
    others_done = None

    async def handler(p: Prompt) -> list[Emit]:
        if p.id == "slow":
            await others_done.wait()
        return [Emit(CURATED, p.id, p)]

    runner.stage.handler = handler
    marks = {pid: [i, False] for i, pid in enumerate(("slow", "b", "c"))}

    async def go():
        nonlocal others_done
        others_done = asyncio.Event()
        runner.take([(_raw(m[0], pid), m) for pid, m in marks.items()])
        assert len(runner.tasks) == 2
        async def others():
            while not (marks["b"][1] and marks["c"][1]):
                await asyncio.sleep(0)

        await asyncio.wait_for(others(), 10)
        assert not marks["slow"][1]
        others_done.set()
        await asyncio.wait_for(runner.idle.wait(), 10)

    asyncio.run(go())
    assert all(done for _, done in marks.values()) and runner.inflight == 0 and not runner.tasks
    assert [k for _, k in producer.sent] == [b"b", b"c", b"slow"]


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


def test_each_input_is_done_once_its_outputs_are_acknowledged_or_re_sent():
    # the first "curated" batch fails after queueing (a timeout): deliver() sends each of its
    # messages again; the outcomes batch went through
    producer = _Producer(fail={"curated": KafkaTimeoutError("batch expired")})
    runner, resent, metrics = _runner(producer)
    marks = [[0, False], [1, False]]

    _run(runner, [(_raw(0, "a"), marks[0]), (_raw(1, "b"), marks[1])])
    assert all(done for _, done in marks)
    assert producer.batches == [("curated", 0, [b"a", b"b"]), ("outcomes", 0, [b"a", b"b"])]
    assert resent == [("curated", b"a"), ("curated", b"b")]
    assert producer.sent == [("outcomes", b"a"), ("outcomes", b"b")]
    assert metrics.sample("prefstream_messages_out_total", agent="curate", topic="curated") == 2


def test_an_output_the_broker_never_takes_dead_letters_its_input_and_the_rest_goes_on():
    # "a" is over a batch: it goes alone, through the producer's own send, which refuses it
    producer = _Producer(fail={"curated": MessageSizeTooLargeError("too big")})
    runner, resent, metrics = _runner(producer, limit=1000)
    marks = [[0, False], [1, False]]

    _run(runner, [(_raw(0, "a", "x" * 2000), marks[0]), (_raw(1, "b"), marks[1])])
    assert all(done for _, done in marks)
    assert ("deadletters", b"a") in resent and ("curated", b"b") in producer.sent
    assert ("outcomes", b"b") in producer.sent and ("curated", b"a") not in producer.sent + resent
    assert metrics.sample("prefstream_dead_letters_total", agent="curate", topic="prompts", outcome="error") == 1


def test_the_outbox_puts_a_key_where_aiokafkas_partitioner_does_and_keeps_each_partitions_order():
    producer = _Producer(partitions=4)
    outbox = Outbox(lambda: producer, batch_bytes=256 * 1024)
    keys = [f"p-{i}".encode() for i in range(40)]

    async def go():
        futures = [await outbox.send("ns.curated", k, b"v") for k in keys]
        await asyncio.gather(*futures)

    asyncio.run(go())
    expected = {}
    for k in keys:
        expected.setdefault(DefaultPartitioner()(k, [0, 1, 2, 3], [0, 1, 2, 3]), []).append(k)
    assert {p: ks for _, p, ks in producer.batches} == expected  # one batch per partition, in send order
    assert len(producer.batches) == len(expected) > 1


def test_the_outbox_opens_a_new_batch_when_one_is_full_and_a_refused_batch_fails_only_its_messages():
    producer = _Producer(fail={"curated": KafkaTimeoutError("expired")})
    outbox = Outbox(lambda: producer, batch_bytes=BATCH_OVERHEAD + 3 * (RECORD_OVERHEAD + 3))

    async def go():
        futures = [await outbox.send("ns.curated", f"k{i}".encode(), b"v") for i in range(5)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(go())
    assert producer.batches == [("curated", 0, [b"k0", b"k1", b"k2"]), ("curated", 0, [b"k3", b"k4"])]
    assert [isinstance(r, KafkaTimeoutError) for r in results] == [True, True, True, False, False]
    assert producer.sent == [("curated", b"k3"), ("curated", b"k4")]
