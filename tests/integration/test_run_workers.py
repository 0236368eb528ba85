"""Several workers in one group (``PREFSTREAM_WORKERS`` / ``--workers``): each stage's
partitions are shared out among them, every prompt ends once, and each worker has its own
log, data directory and metrics port."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import create_topics
from agents.pipeline import WORKERS
from streams.app import consumer_group
from streams.commands.run import RunError, drive, publish_objective, start_workers, stop_processes
from streams.commands.tap.follow import JsonlSink
from streams.topics import from_settings

ECHO = ObjectiveSpec(
    name="workers-echo",
    synthesis=SynthesisSpec(candidates=4, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=2)]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))


def prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p-w-{i}", objective=ECHO.name, source="test",
                   messages=[Message(role="user", content=f"Pick the right one, case {i}.")],
                   verification=Verification(kind="math", answer=str(i % 5)))
            for i in range(n)]


async def members(settings) -> dict[str, int]:
    """Members of each stage's consumer group now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    try:
        out = {}
        for agent in WORKERS:
            [resp] = await admin.describe_consumer_groups([consumer_group(settings, agent)])
            [g] = resp.groups
            out[agent] = len(g[5]) if g[2] == "Stable" else 0
        return out
    finally:
        await admin.close()


def test_two_workers_share_every_stage_and_each_prompt_ends_once(settings, tmp_path):
    s = settings.replace(workers=2, group=f"g-{settings.namespace}", metrics_port=0)  # 2 partitions
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    asyncio.run(publish_objective(s, topics, ECHO))
    workers = start_workers(s, tmp_path)  # the group set in code reaches both workers
    try:
        deadline, seen = time.monotonic() + 120, {}
        while time.monotonic() < deadline:  # until both are members of each stage's group
            for w in workers:
                assert w.poll() is None, open(w.log_path).read()[-3000:]
            seen = asyncio.run(members(s))
            if all(n == 2 for n in seen.values()):
                break
            time.sleep(0.5)
        assert all(n == 2 for n in seen.values()), f"members per stage: {seen}"
        batch = prompts(20)
        sink = JsonlSink(tmp_path / "out")
        try:
            ledger = asyncio.run(asyncio.wait_for(drive(s, topics, batch, sink, workers, progress=False), 180))
        finally:
            sink.close()
    finally:
        stop_processes(workers)
    assert ledger.done() == len(batch) and not ledger.dead
    assert set(ledger.outcomes) == {p.id for p in batch}
    assert [w.log_path.name for w in workers] == ["worker.log", "worker-1.log"]
    assert (tmp_path / "worker-data").is_dir() and (tmp_path / "worker-1-data").is_dir()


def test_more_workers_than_partitions_is_refused_with_the_fix(settings, tmp_path):
    with pytest.raises(RunError, match="raise the partitions or lower --workers"):
        start_workers(settings.replace(workers=3), tmp_path)
    assert not list(tmp_path.glob("worker*.log"))  # nothing was started
