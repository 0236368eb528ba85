"""What is on the bus now: per topic its offsets and the records of the last minute, lag per
consumer group, dead letters with their newest reasons, the objectives in force, the newest
version of each policy, and the stages blocked by their environment (from the workers' ``health`` topic).

End offsets. A broker's ListOffsets(latest) answer is the *reported* end. Tansu reports the
first offset of a partition's last record batch plus one instead of the offset after its last
record (a 7-record batch at offsets 3..9 is reported as end 4, not 10). So the end used here is
*read*: fetch from the reported end - 1 to the last record and take its offset + 1 (on Apache
Kafka the two agree). Both are shown; lag is counted from the read end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from schemas import ObjectiveSpec
from streams.admin import isolation
from streams.security import kafka_options
from streams.settings import Settings
from streams.topics import MALFORMED, Topics

END_NOTE = ("end = offset after the last record, read from the broker; reported_end = the broker's "
            "ListOffsets answer (Tansu reports the start of the last batch + 1, so it can be lower); "
            "records = end - begin (a compacted topic can hold fewer)")
WINDOW_S = 60.0
FETCH_DEADLINE_S = 30.0


@dataclass
class Ends:
    begin: int
    reported: int
    end: int
    last_timestamp: int | None = None  # ms, of the last record


async def open_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less consumer; ``ConnectionError`` naming the fix when the broker is unreachable."""
    c = AIOKafkaConsumer(**kafka_options(settings), group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=100, client_id="prefstream-status",
                         isolation_level=isolation(settings))
    try:
        await c.start()
    except KafkaConnectionError as e:
        await c.stop()
        raise ConnectionError(f"cannot reach the broker at {settings.broker} ({e}); check PREFSTREAM_BROKER") from None
    return c


async def partitions(consumer: AIOKafkaConsumer, names: list[str]) -> list[TopicPartition]:
    await consumer._client.force_metadata_update()
    return [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]


async def read_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, Ends]:
    """Begin, reported end and read end of each partition (see the module docstring).
    Assigns ``tps`` to the consumer; call it once per consumer."""
    consumer.assign(tps)
    begin = await consumer.beginning_offsets(tps)
    reported = await consumer.end_offsets(tps)
    ends = {tp: Ends(begin[tp], reported[tp], reported[tp]) for tp in tps}
    pending = {tp: _now_ms() for tp in tps if reported[tp] > begin[tp]}  # tp -> when it last moved
    for tp in pending:
        consumer.seek(tp, reported[tp] - 1)
    deadline = time.monotonic() + FETCH_DEADLINE_S
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker did not answer fetches for {sorted(map(str, pending))}")
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp in list(pending):
            msgs = batch.get(tp)
            if msgs:
                e = ends[tp]
                e.end, e.last_timestamp = max(e.end, msgs[-1].offset + 1), msgs[-1].timestamp
                pending[tp] = _now_ms()
            elif _answered_since(consumer, tp, pending[tp]):
                del pending[tp]  # a fetch after the last record came back empty: that was the end
    return ends


def _now_ms() -> int:
    return int(time.time() * 1000)


def _answered_since(consumer: AIOKafkaConsumer, tp: TopicPartition, since_ms: int) -> bool:
    """Whether a fetch at the partition's current position came back after ``since_ms``
    (aiokafka drops answers for any other position)."""
    return (consumer.last_poll_timestamp(tp) or 0) > since_ms


async def read_all(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, Ends]) -> AsyncIterator[Any]:
    """Every record from begin to the read end of each partition. The partitions must be
    assigned already (``read_ends`` does it): assigning twice leaves aiokafka's group-less
    consumer waiting for a committed offset, and its stop() then hangs."""
    todo = {tp for tp, e in ends.items() if e.end > e.begin}
    for tp in todo:
        consumer.seek(tp, ends[tp].begin)
    deadline = time.monotonic() + FETCH_DEADLINE_S
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=300)
        if any(batch.values()):
            deadline = time.monotonic() + FETCH_DEADLINE_S
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no records from {sorted(map(str, todo))} for {FETCH_DEADLINE_S}s")
        for tp, msgs in batch.items():
            for m in msgs:
                if m.offset < ends[tp].end:
                    yield m
        for tp in list(todo):
            if await consumer.position(tp) >= ends[tp].end:
                todo.discard(tp)


async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> tuple[int, int] | None:
    """(offset, timestamp) of the first record at or after ``offset``; None if there is none."""
    consumer.seek(tp, offset)
    sought, deadline = _now_ms(), time.monotonic() + FETCH_DEADLINE_S
    while time.monotonic() < deadline:
        msgs = (await consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp)
        if msgs:
            return msgs[0].offset, msgs[0].timestamp
        if _answered_since(consumer, tp, sought):
            return None
    raise TimeoutError(f"the broker did not answer a fetch of {tp} at offset {offset}")


async def records_since(consumer: AIOKafkaConsumer, tp: TopicPartition, e: Ends, since_ms: int) -> int:
    """Records whose timestamp is at or after ``since_ms``: a binary search over offsets
    (timestamps are taken as non-decreasing within a partition)."""
    if e.end <= e.begin or e.last_timestamp is None or e.last_timestamp < since_ms:
        return 0
    lo, hi = e.begin, e.end - 1  # the record at hi is known to be recent
    while lo < hi:
        mid = (lo + hi) // 2
        found = await _timestamp_at(consumer, tp, mid)
        if found is None or found[1] >= since_ms:
            hi = mid
        else:
            lo = found[0] + 1
    return e.end - lo


async def group_lags(settings: Settings, tps: list[TopicPartition], ends: dict[TopicPartition, Ends]) -> list[dict]:
    """Consumer groups with offsets committed on these partitions, and their lag per topic."""
    admin = AIOKafkaAdminClient(**kafka_options(settings), client_id="prefstream-status")
    await admin.start()
    out = []
    try:
        for group, _ in sorted(await admin.list_consumer_groups()):
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {tp: o.offset for tp, o in offsets.items() if o.offset >= 0}
            if not committed:
                continue
            out.append({"group": group, **await _describe(admin, group),
                        "topics": _lag_per_topic(committed, ends)})
    finally:
        await admin.close()
    for g in out:
        g["lag"] = sum(t["lag"] for t in g["topics"].values())
    return out


async def _describe(admin: AIOKafkaAdminClient, group: str) -> dict:
    try:
        [resp] = await admin.describe_consumer_groups([group])
        [g] = resp.groups
        return {"state": g[2], "members": len(g[5])}
    except Exception:  # noqa: BLE001 - the state is extra; lag is what matters
        return {"state": "unknown", "members": None}


def _lag_per_topic(committed: dict[TopicPartition, int], ends: dict[TopicPartition, Ends]) -> dict[str, dict]:
    topics: dict[str, dict] = {}
    for topic in sorted({tp.topic for tp in committed}):
        row = {"committed": 0, "end": 0, "lag": 0, "uncommitted_partitions": 0}
        for tp, e in ends.items():
            if tp.topic != topic:
                continue
            pos = committed.get(tp)
            if pos is None:  # read from the beginning when it is assigned (auto_offset_reset=earliest)
                row["uncommitted_partitions"] += 1
            row["committed"] += pos if pos is not None else e.begin
            row["end"] += e.end
            row["lag"] += max(0, e.end - (pos if pos is not None else e.begin))
        topics[topic] = row
    return topics


def newest_objectives(specs: list[ObjectiveSpec]) -> list[dict]:
    """The newest version of each objective (the compacted topic's meaning)."""
    newest: dict[str, ObjectiveSpec] = {}
    for s in specs:
        if s.name not in newest or s.version >= newest[s.name].version:
            newest[s.name] = s
    return [{"name": s.name, "version": s.version, "ref": s.ref, "status": s.status,
             "generators": sorted({f"{g.backend}:{g.model}" for g in s.synthesis.generators}),
             "evaluators": [e.name for e in s.evaluation.evaluators]}
            for s in sorted(newest.values(), key=lambda s: s.name)]


def dead_letter_summary(letters: list[tuple[Any, Any]], newest: int) -> dict:
    """``letters``: (record, DeadLetter) pairs in any order."""
    by_reason: dict[str, int] = {}
    for _, d in letters:
        key = f"{d.stage} {d.error_type}"
        by_reason[key] = by_reason.get(key, 0) + 1
    recent = sorted(letters, key=lambda rd: (rd[1].created_at, rd[0].timestamp), reverse=True)[:newest]
    return {"count": len(letters), "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
            "newest": [{"ref": f"{r.partition}:{r.offset}", "stage": d.stage, "error_type": d.error_type,
                        "error": d.error[:300], "topic": d.topic, "partition": d.partition, "offset": d.offset,
                        "prompt_id": d.prompt_id, "created_at": d.created_at} for r, d in recent]}


async def collect(settings: Settings, topics: Topics, newest: int = 5, window_s: float = WINDOW_S) -> dict:
    """Everything ``prefstream status`` shows, as one JSON-able dict."""
    now = time.time()
    consumer = await open_consumer(settings)
    try:
        names = [t.name for t in topics]
        tps = await partitions(consumer, names)
        missing = sorted(set(names) - {tp.topic for tp in tps})
        ends = await read_ends(consumer, tps)
        since_ms = int((now - window_s) * 1000)
        rows = []
        for t in topics:
            parts = [tp for tp in tps if tp.topic == t.name]
            recent = sum([await records_since(consumer, tp, ends[tp], since_ms) for tp in parts])
            rows.append({
                "topic": t.name, "short": t.spec.short, "partitions": len(parts),
                "records": sum(ends[tp].end - ends[tp].begin for tp in parts),
                "end": sum(ends[tp].end for tp in parts), "reported_end": sum(ends[tp].reported for tp in parts),
                "last_minute": recent, "per_s": round(recent / window_s, 3),
                "per_partition": [{"partition": tp.partition, "begin": ends[tp].begin, "end": ends[tp].end,
                                   "reported_end": ends[tp].reported} for tp in parts],
            })
        letters = await _decoded(consumer, topics.deadletters, ends)
        specs = [s for _, s in await _decoded(consumer, topics.objectives, ends)]
        health = [h for _, h in await _decoded(consumer, topics.health, ends)]
    finally:
        await consumer.stop()
    from streams.commands.reports.policies import policy_status
    return {"broker": settings.broker, "namespace": topics.namespace, "at": now, "window_s": window_s,
            "end_offsets": END_NOTE, "missing_topics": missing, "topics": rows,
            "groups": await group_lags(settings, tps, ends),
            "deadletters": dead_letter_summary(letters, newest), "objectives": newest_objectives(specs),
            "policies": await policy_status(settings, topics, missing), "stages": stage_health(health, now)}


def pipeline_rows(status: dict, pipeline, settings: Settings) -> list[dict]:
    """The pipeline table with what the bus says about each stage now: its consumer group's
    members and lag on its input, and whether a live worker reports it blocked."""
    from streams.app import consumer_group

    groups = {g["group"]: g for g in status["groups"]}
    blocked = {b["stage"] for b in status["stages"]["blocked"]}
    rows = []
    for row, decl in zip(pipeline.table(), pipeline.stages):
        g = groups.get(consumer_group(settings, decl.name), {})
        lag = g.get("topics", {}).get(f"{status['namespace']}.{decl.input.short}", {}).get("lag")
        rows.append({**row, "group": consumer_group(settings, decl.name), "members": g.get("members"),
                     "lag": lag, "blocked": decl.name in blocked})
    return rows


def stage_health(entries: list, now: float) -> dict:
    """Each live worker's stages from the ``health`` topic (newest per worker and stage; a
    worker silent for ``STALE_S`` is taken as gone): how many run, and each blocked one with
    its reason, detail and fix."""
    from streams.health import STALE_S

    newest: dict[str, Any] = {}
    for h in entries:
        if h.key not in newest or h.updated_at >= newest[h.key].updated_at:
            newest[h.key] = h
    live = [h for h in newest.values() if now - h.updated_at <= STALE_S]
    blocked = [{"worker": h.worker, "stage": h.stage, "reason": h.reason, "detail": h.detail, "fix": h.fix,
                "since": h.since, "for_s": round(now - h.since, 1) if h.since else None}
               for h in sorted(live, key=lambda h: (h.stage, h.worker)) if h.blocked]
    return {"workers": len({h.worker for h in live}), "running": sum(1 for h in live if not h.blocked),
            "blocked": blocked}


async def _decoded(consumer: AIOKafkaConsumer, topic, ends: dict[TopicPartition, Ends]) -> list[tuple[Any, Any]]:
    mine = {tp: e for tp, e in ends.items() if tp.topic == topic.name}
    out = []
    async for rec in read_all(consumer, mine):
        try:
            out.append((rec, topic.codec.decode(rec.value)))
        except MALFORMED:
            continue  # not ours to judge here; counted in the topic's records
    return out
