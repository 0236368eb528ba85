"""``streams.admin.follow_topics``, the registries' one follow mechanism, over fake readers:
``ready`` once every topic is read to the end it had at the start (not before), each message
to its topic's handler; one reader failing stops the others and raises its error."""
from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from streams import admin
from streams.settings import load
from streams.topics import from_settings


class FakeReader:
    """One partition of ``values``, one message per poll."""

    def __init__(self, name: str, values: list[bytes]) -> None:
        self.tp, self.at, self.stopped = TopicPartition(name, 0), 0, False
        self.msgs = [SimpleNamespace(topic=name, partition=0, offset=i, value=v) for i, v in enumerate(values)]

    async def getmany(self, timeout_ms: int):
        await asyncio.sleep(0)
        batch = self.msgs[self.at:self.at + 1]
        self.at += len(batch)
        return {self.tp: batch} if batch else {}

    def assignment(self):
        return {self.tp}

    async def end_offsets(self, tps):
        return {self.tp: len(self.msgs)}

    async def position(self, tp):
        return self.at

    async def stop(self) -> None:
        self.stopped = True


def test_ready_once_every_topic_is_read_and_each_message_goes_to_its_handler(monkeypatch):
    topics = from_settings(load({}, broker="127.0.0.1:1", namespace="t"))
    text = SimpleNamespace(decode=bytes.decode)
    a, b = (dataclasses.replace(t, codec=text) for t in (topics.policies, topics.policy_history))
    readers = {a.name: FakeReader(a.name, [b"1", b"2", b"3"]), b.name: FakeReader(b.name, [b"4"])}

    async def reader(settings, names):
        return readers[names[0]]

    monkeypatch.setattr(admin, "reader", reader)
    seen: dict[str, list] = {a.name: [], b.name: []}
    ready_at: list = []

    async def go():
        ready = asyncio.Event()
        task = asyncio.create_task(admin.follow_topics(
            None, [(a, seen[a.name].append), (b, seen[b.name].append)], ready,
            lambda: ready_at.append({k: list(v) for k, v in seen.items()})))
        await asyncio.wait_for(ready.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert ready_at == [{a.name: ["1", "2", "3"], b.name: ["4"]}]  # called once, with everything read
    assert all(r.stopped for r in readers.values())


def test_one_reader_failing_stops_the_others(monkeypatch):
    topics = from_settings(load({}, broker="127.0.0.1:1", namespace="t"))
    a, b = topics.objectives, topics.objective_history
    live = FakeReader(a.name, [])

    async def reader(settings, names):
        if names[0] == b.name:
            await asyncio.sleep(0.05)
            raise RuntimeError(f"topic {b.name} does not exist")
        return live

    monkeypatch.setattr(admin, "reader", reader)
    with pytest.raises(RuntimeError, match="does not exist"):
        asyncio.run(asyncio.wait_for(admin.follow_topics(None, [(a, print), (b, print)], asyncio.Event()), 5))
    assert live.stopped
