"""The tap's superseding rule: a superseded record leaves the sink's files (open shard, or the
committed shard rewritten), is never written back when the topic is read again, and a crash
between remembering and rewriting is repaired on open."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from schemas import Message, PreferenceRecord, Side, Withdrawn
from streams.commands.tap.formats import get
from streams.commands.tap.follow import DatasetSink, JsonlSink, Rotation


def pair(i: int, supersedes: str | None = None) -> PreferenceRecord:
    side = Side(candidate_id=f"c{i}", model="m", score=1.0)
    return PreferenceRecord(id=f"r-{i:04d}", prompt_id=f"p{i}", objective="o@1",
                            prompt=[Message(role="user", content=f"q{i}")],
                            chosen=[Message(role="assistant", content="good")],
                            rejected=[Message(role="assistant", content="bad")], score_chosen=1.0, score_rejected=0.0,
                            margin=1.0, chosen_side=side, rejected_side=side, supersedes=supersedes)


def ids(out) -> list[str]:
    jsonl = [json.loads(x)["id"] for p in sorted((out / "jsonl").glob("*.jsonl")) for x in p.read_text().splitlines()]
    parquet = pq.read_table(out / "data", columns=["id"]).column("id").to_pylist()
    assert sorted(jsonl) == sorted(parquet)
    return sorted(jsonl)


def test_a_superseded_record_leaves_committed_and_open_shards_for_good(tmp_path):
    out = tmp_path / "ds"
    sink = DatasetSink(out, get("trl-dpo"), Rotation(max_bytes=2000, max_seconds=3600))
    for i in range(20):
        sink.write(pair(i))
    sink.commit()
    shards = len(list((out / "jsonl").glob("*.jsonl")))
    assert shards > 2
    assert sink.write(pair(100, supersedes="r-0003"))  # in a committed shard
    sink.write(pair(21))
    assert sink.write(Withdrawn(id="w-1", prompt_id="p21", objective="o@1", supersedes="r-0021")) is False  # open
    sink.close()
    want = sorted({f"r-{i:04d}" for i in range(20)} - {"r-0003"} | {"r-0100"})
    assert ids(out) == want
    # the topic read again from the start: the old records come back and are not written
    sink = DatasetSink(out, get("trl-dpo"))
    assert not any([sink.write(pair(3)), sink.write(pair(21)), sink.write(pair(100, supersedes="r-0003"))])
    sink.close()
    assert ids(out) == want


def test_a_crash_before_the_shard_was_rewritten_is_repaired_on_open(tmp_path):
    out = tmp_path / "ds"
    sink = DatasetSink(out, get("trl-dpo"))
    for i in range(5):
        sink.write(pair(i))
    sink.close()
    (out / ".superseded").write_text("r-0002\n")  # remembered, then killed before the rewrite
    DatasetSink(out, get("trl-dpo")).close()
    assert ids(out) == ["r-0000", "r-0001", "r-0003", "r-0004"]


def test_the_jsonl_sink_drops_a_superseded_pair(tmp_path):
    sink = JsonlSink(tmp_path)
    for i in range(3):
        sink.write(pair(i))
    assert sink.write(pair(9, supersedes="r-0001"))
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r-0000", "r-0002", "r-0009"] and lines[-1]["supersedes"] == "r-0001"
    sink = JsonlSink(tmp_path)
    assert not sink.write(pair(1)) and len(sink) == 3
    sink.close()
    assert (tmp_path / "preferences.jsonl.superseded").read_text() == "r-0001\n"
