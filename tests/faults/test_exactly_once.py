"""Exactly-once (``PREFSTREAM_PROCESSING_GUARANTEE=exactly_once``) on a broker that has
transactions: a stage's per-partition-batch transactions (``streams.txn``).

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
import re
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas import GeneratorSpec
from streams.admin import create_topics
from streams.app import consumer_group
from streams.broker import EmbeddedBroker
from streams.commands.run import publish_objective
from streams.settings import load
from streams.topics import from_settings
from streams.txn import transactional_id
from tests.faults.harness import Ledger, expected_records, math_objective, math_prompts, send_prompts
from tests.faults.services import EchoModel, Noida

pytestmark = pytest.mark.faults

EOS = {"PREFSTREAM_PROCESSING_GUARANTEE": "exactly_once", "PREFSTREAM_LOG_LEVEL": "INFO"}


def prepare(tmp_path, namespace, broker, model, objective: str, n: int):
    """Exactly-once settings on ``broker``, the topics made, an echo math objective published,
    and ``n`` prompts for it (not yet sent)."""
    settings = load({}, broker=broker.address, namespace=namespace, partitions=2, data_dir=str(tmp_path / "data"),
                    metrics_port=0, processing_guarantee="exactly_once", allowed_endpoints=model.base_url)
    topics = from_settings(settings)
    spec = math_objective(objective, GeneratorSpec(backend="openai", model="echo", base_url=model.base_url))
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, spec))
    return settings, topics, spec, math_prompts(n, spec.name, prefix=objective[0])


@pytest.mark.parametrize("change", ["handover", "join"])
def test_exactly_once_on_a_transactional_broker_one_message_per_prompt_and_record(tmp_path, workers, namespace,
                                                                                  change):
    """Transactions per partition batch (``streams.txn``). Mid-run the group changes:
    ``handover``, the worker stops gracefully and a new one takes over; ``join``, a second
    worker joins the running one, which gives up a partition while its batches are in flight."""
    n = 300
    eos = EOS
    # join: model calls of 0.5 s keep the first worker's batches in flight while the group changes
    with Noida(tmp_path) as broker, EchoModel(tmp_path, delay_s=0.5 if change == "join" else 0.0) as model:
        settings, topics, spec, prompts = prepare(tmp_path, namespace, broker, model, "eos", n)
        first = workers.start(settings, **eos)
        assigned = re.compile(rf"curate: assigned \[[^\]]*{re.escape(topics.prompts.name)}\[")
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
            if change == "handover":  # the new worker's transactions take over
                first.terminate()
                await asyncio.to_thread(first.wait, 60)
            joiner = workers.start(settings, **eos)
            if change == "join":  # the rest only once the joiner holds some of the prompts' partitions
                while not assigned.search(open(joiner.log_path, errors="replace").read()):
                    assert joiner.poll() is None and not follow.done(), "the joiner never got a partition"
                    await asyncio.sleep(0.2)
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
    print(f"\nexactly-once (noida-db transactions), {n} prompts, {change} at {n // 4} outcomes:")
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


def test_a_fenced_transaction_is_aborted_and_its_batch_runs_again(tmp_path, workers, namespace):
    """The stages' transactions under a fence: mid-run, another producer starts with
    the transactional id of the worker's curate producer for prompts[0] (what the partition's
    next holder does) and leaves a transaction open with a stray message in `curated`. The
    worker's next transaction there fails, is aborted, and its batch runs again on a new
    producer, whose start aborts the stray transaction: a read_committed reader finds one
    `curated` message and one outcome per prompt, and never the stray message.

    The stray message goes to curated[1], which the prompts[0] producer never writes: noida-db
    keeps listing an aborted transaction in later fetches, so a reader already past it would
    skip the same producer id's next messages in that partition (Apache Kafka lists only the
    aborted transactions a fetch overlaps)."""
    n = 200
    with Noida(tmp_path) as broker, EchoModel(tmp_path) as model:
        settings, topics, spec, prompts = prepare(tmp_path, namespace, broker, model, "fence", n)
        ids = {p.id for p in prompts}
        worker = workers.start(settings, **EOS)
        fenced = transactional_id(consumer_group(settings, "curate"), TopicPartition(topics.prompts.name, 0))

        async def scenario():
            ledger = Ledger(topics, extra=("curated",))
            follow = asyncio.create_task(ledger.follow(settings, lambda lg: ids <= lg.outcomes.keys(), 240,
                                                       committed_only=True))
            await send_prompts(settings, topics, prompts[: n // 2])
            while len(ledger.outcomes) < n // 4 and not follow.done():
                await asyncio.sleep(0.2)
            intruder = AIOKafkaProducer(bootstrap_servers=settings.brokers, transactional_id=fenced)
            await intruder.start()  # fences the worker's producer of prompts[0]
            await intruder.begin_transaction()
            await intruder.send_and_wait(topics.curated.name, b"stray", key=b"stray", partition=1)
            await send_prompts(settings, topics, prompts[n // 2:])  # the stray transaction stays open
            try:
                return ledger, await follow
            finally:
                try:  # fenced in turn by the worker's new producer: nothing to commit or abort
                    await asyncio.wait_for(intruder.stop(), 10)
                except Exception:  # noqa: BLE001
                    pass

        try:
            ledger, finished = asyncio.run(scenario())
        finally:
            workers.stop_all()
    log = open(worker.log_path, errors="replace").read()
    curated = Counter(c.prompt.id for c in ledger.seen["curated"])
    per_prompt = Counter(o.prompt_id for outs in ledger.outcomes.values() for o in outs)
    print(f"\nfenced mid-run: curated={sum(curated.values())} for {len(curated)} prompts, outcomes="
          f"{sum(per_prompt.values())} for {len(per_prompt)}, undecodable={ledger.undecodable}")
    assert finished, f"{len(ids - ledger.outcomes.keys())} prompts without a committed outcome"
    assert "failed (ProducerFenced" in log, "the worker's transaction was never fenced"
    assert ledger.undecodable == 0  # the stray message's transaction was aborted
    assert set(curated) == ids and max(curated.values()) == 1, curated.most_common(3)
    assert set(per_prompt) == ids and max(per_prompt.values()) == 1, per_prompt.most_common(3)
