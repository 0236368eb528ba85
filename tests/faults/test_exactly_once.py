"""Exactly-once: faust's transactions (``PREFSTREAM_PROCESSING_GUARANTEE=exactly_once``) on a
broker that has them.

Broker: noida-db's Kafka service (transactions; it never expires a crashed member, so no
worker is killed here: the worker is stopped gracefully and a new one takes over mid-run).
Every stage's outputs and its input offsets commit in one transaction, so a reader that
sees committed messages only finds exactly one outcome per prompt and one message per
record id on the topics themselves, not only at the idempotent tap.

Tansu has no transactions (its InitProducerId fails): there the guarantee is at-least-once
with deterministic ids and idempotent sinks (``test_crash_replay.py``).
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer

from schemas import GeneratorSpec
from streams.admin import create_topics
from streams.broker import EmbeddedBroker
from streams.run import publish_objective
from streams.settings import load
from streams.topics import from_settings
from tests.faults.harness import Ledger, expected_records, math_objective, math_prompts, send_prompts
from tests.faults.services import EchoModel, Noida

pytestmark = pytest.mark.faults

EOS = {"PREFSTREAM_PROCESSING_GUARANTEE": "exactly_once", "PREFSTREAM_LOG_LEVEL": "INFO"}


def test_exactly_once_on_a_transactional_broker_one_message_per_prompt_and_record(tmp_path, workers, namespace):
    n = 300
    with Noida(tmp_path) as broker, EchoModel(tmp_path) as model:
        settings = load({}, broker=broker.address, namespace=namespace, partitions=2, data_dir=str(tmp_path / "data"),
                        metrics_port=0, processing_guarantee="exactly_once")
        topics = from_settings(settings)
        spec = math_objective("eos", GeneratorSpec(backend="openai", model="echo", base_url=model.base_url))
        prompts = math_prompts(n, spec.name, prefix="e")
        asyncio.run(create_topics(settings, topics))
        asyncio.run(publish_objective(settings, topics, spec))
        first = workers.start(settings, **EOS)
        ids = {p.id for p in prompts}

        async def scenario():
            ledger = Ledger(topics, extra=("preferences",))
            def done(lg: Ledger) -> bool:  # every outcome, and every record an outcome names
                listed = {r for outs in lg.outcomes.values() for o in outs for r in o.record_ids}
                return ids <= lg.outcomes.keys() and listed <= {r.id for r in lg.seen["preferences"]}

            follow = asyncio.create_task(ledger.follow(settings, done, 240, committed_only=True))
            await send_prompts(settings, topics, prompts[: n // 2])
            while len(ledger.outcomes) < n // 4 and not follow.done():
                await asyncio.sleep(0.2)
            first.terminate()  # a graceful hand-over mid-run: the new worker's transactions take over
            await asyncio.to_thread(first.wait, 60)
            workers.start(settings, **EOS)
            await send_prompts(settings, topics, prompts[n // 2:])
            return ledger, await follow

        started = time.monotonic()
        try:
            ledger, finished = asyncio.run(scenario())
        finally:
            workers.stop_all()  # while the broker is there: a worker stops fast then
        seconds = time.monotonic() - started
        expected = asyncio.run(expected_records(prompts, spec))
    per_prompt = Counter(o.prompt_id for outs in ledger.outcomes.values() for o in outs)
    records = Counter(r.id for r in ledger.seen["preferences"])
    want = Counter(r for rids in expected.values() for r in rids)
    logs = "".join(open(p.log_path, errors="replace").read() for p in workers.procs)
    print(f"\nexactly-once (noida-db, transactions), {n} prompts, worker handed over at {n // 4} outcomes:")
    print(f"  outcome messages (read_committed)={sum(per_prompt.values())} for {len(per_prompt)} prompts; "
          f"preference messages={sum(records.values())} for {len(records)} ids (expected {len(want)}); "
          f"dead_letters={len(ledger.letters)} seconds={seconds:.0f}")
    assert finished, f"{len(ids - ledger.outcomes.keys())} prompts without a committed outcome"
    assert "transactional producer" in logs, "the workers never started transactional producers"
    assert not ledger.letters, [(d.stage, d.error) for d in ledger.letters[:5]]
    assert set(per_prompt) == ids and max(per_prompt.values()) == 1, per_prompt.most_common(3)
    assert records == want  # on the topic itself: every expected record exactly once


def test_tansu_has_no_transactions(tmp_path):
    """Why exactly_once is not offered on Tansu: a transactional producer cannot start."""

    async def start() -> None:
        prod = AIOKafkaProducer(bootstrap_servers=broker.address, transactional_id="probe", request_timeout_ms=5000)
        try:
            await asyncio.wait_for(prod.start(), 30)
        finally:
            await prod.stop()

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        with pytest.raises(Exception) as err:
            asyncio.run(start())
    print(f"\nTansu transactional producer: {type(err.value).__name__}: {err.value}")
