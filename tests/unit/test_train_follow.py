"""The trainer's stream reader: one objective's pairs (any version), from a stored position;
the position advances past every message read, kept or not; ids trained already, other
objectives, unpaired records and records the staleness bound rejects are passed over; records a late
label took back (superseded, withdrawn) are dropped, or counted where they were trained already."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from schemas import Message, Side, UnpairedRecord, Withdrawn
from streams.commands.train.follow import Follower
from streams.settings import load
from streams.policies.staleness import Staleness
from streams.topics import from_settings
from tests.integration.test_tap import pair


class FakeConsumer:
    """Hands out the messages of one partition, a few per poll."""

    def __init__(self, topic: str, values: list[bytes], per_poll: int = 3) -> None:
        self.tp = TopicPartition(topic, 0)
        self.msgs = [SimpleNamespace(topic=topic, partition=0, offset=i, value=v) for i, v in enumerate(values)]
        self.per_poll, self.at = per_poll, 0

    async def getmany(self, timeout_ms: int, max_records: int):
        batch = self.msgs[self.at:self.at + min(self.per_poll, max_records)]
        self.at += len(batch)
        return {self.tp: batch} if batch else {}


def unpaired(i: int) -> UnpairedRecord:
    return UnpairedRecord(id=f"u{i}", prompt_id="p", objective="math@1", prompt=[Message(role="user", content="q")],
                          completion=[Message(role="assistant", content="a")], label=True,
                          side=Side(candidate_id="c", model="m", score=1.0))


def with_policy(record, version: int):
    import msgspec

    side = msgspec.structs.replace(record.chosen_side, policy=f"tutor@{version}")
    return msgspec.structs.replace(record, chosen_side=side, rejected_side=side)


def follower(values: list, keep=lambda r: True) -> Follower:
    settings = load({}, broker="127.0.0.1:1", namespace="t")
    topics = from_settings(settings)
    f = Follower(settings, topics, "math", {}, keep=keep)
    f.consumer = FakeConsumer(f.topic.name, [f.topic.codec.encode(v) for v in values])
    return f


def test_takes_the_objectives_pairs_and_advances_past_everything_read():
    records = [pair(0, "math@1"), pair(1, "other@1"), unpaired(2), pair(3, "math@2"), pair(4, "math@2"),
               pair(5, "math@2")]
    f = follower(records)
    got = asyncio.run(f.take(2, skip={"r-pair-000003"}))
    assert [r.id for r in got] == ["r-pair-000000", "r-pair-000004"]
    assert f.offsets == {0: 5}  # the next message to read: the one after the last taken
    rest = asyncio.run(f.take(5, skip=set(), idle_s=0.2))
    assert [r.id for r in rest] == ["r-pair-000005"] and f.offsets == {0: 6}


def test_staleness_bound_skips_pairs_of_old_versions():
    bound = Staleness(1, lambda name: 3 if name == "tutor" else None)
    records = [with_policy(pair(0, "math@1"), 1), with_policy(pair(1, "math@1"), 2), pair(2, "math@1")]
    got = asyncio.run(follower(records, keep=bound.keep).take(3, skip=set(), idle_s=0.2))
    assert [r.id for r in got] == ["r-pair-000001", "r-pair-000002"]  # v1 is 2 behind v3; no policy: kept
    assert bound.skipped == 1


def withdrawn(i: int, objective: str = "math@1") -> Withdrawn:
    return Withdrawn(id=f"w{i}", prompt_id="p", objective=objective, supersedes=f"r-pair-{i:06d}")


def replacing(i: int, old: int, objective: str = "math@1"):
    import msgspec

    return msgspec.structs.replace(pair(i, objective), supersedes=f"r-pair-{old:06d}")


def test_a_record_taken_back_before_training_is_dropped_from_the_round_and_never_taken():
    records = [pair(0, "math@1"), pair(1, "math@1"), withdrawn(0), replacing(2, old=1), pair(3, "math@1")]
    f = follower(records)
    got = asyncio.run(f.take(3, skip=set(), idle_s=0.2))
    # 0 withdrawn, 1 replaced by 2 (a replacement is trained like any other)
    assert [r.id for r in got] == ["r-pair-000002", "r-pair-000003"]
    assert f.gone == {"r-pair-000000", "r-pair-000001"} and f.late == [] and f.offsets == {0: 5}
    # read again (a restart from an older position, another partition read first): still skipped
    again = follower([pair(0, "math@1"), pair(1, "math@1"), pair(4, "math@1")])
    again.gone = set(f.gone)
    assert [r.id for r in asyncio.run(again.take(3, skip=set(), idle_s=0.2))] == ["r-pair-000004"]


def test_a_record_taken_back_after_training_is_counted_once():
    records = [withdrawn(0), replacing(5, old=1), withdrawn(0), withdrawn(7, "other@1"), pair(2, "math@1")]
    f = follower(records)
    got = asyncio.run(f.take(3, skip={"r-pair-000000", "r-pair-000001"}, idle_s=0.2))
    assert [r.id for r in got] == ["r-pair-000005", "r-pair-000002"]
    assert f.late == ["r-pair-000000", "r-pair-000001"]  # the second withdrawal of 0 is not counted again
    assert f.gone == {"r-pair-000000", "r-pair-000001"}  # another objective's withdrawal is not ours


def test_a_stale_replacement_still_takes_its_record_back():
    bound = Staleness(0, lambda name: 3 if name == "tutor" else None)
    records = [pair(0, "math@1"), with_policy(replacing(1, old=0), 1)]
    f = follower(records, keep=bound.keep)
    assert asyncio.run(f.take(2, skip=set(), idle_s=0.2)) == [] and f.gone == {"r-pair-000000"}
    assert bound.skipped == 1
