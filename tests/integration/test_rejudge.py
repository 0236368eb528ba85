"""`prefstream rejudge` for real: 50 stored candidate sets judged again after an evaluator
weight changed, by a running worker, with no generator call; a second run adds nothing."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, JudgedSet, Message, ObjectiveSpec,
                     Outcome, PreferenceRecord, Prompt, SynthesisSpec)
from streams.admin import create_topics, producer
from streams.broker import free_port
from agents.objectives import apply, read_all
from streams.commands.run import publish_objective
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

N = 50


def weighted(length_w: float, repetition_w: float, version: int = 1) -> ObjectiveSpec:
    """Two echo generators (64 and 8 words) on prompts that repeat themselves: the long
    candidate is longer, the short one repeats less; the weights decide which wins."""
    return ObjectiveSpec(
        name="rj", version=version,
        synthesis=SynthesisSpec(candidates=2, generators=[
            GeneratorSpec(backend="echo", model="echo", max_tokens=64),
            GeneratorSpec(backend="echo", model="echo", max_tokens=8)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length", weight=length_w),
                                              EvaluatorSpec(name="repetition", weight=repetition_w)],
                                  aggregation="weighted_mean", features=[], guards=[]),
        instantiation=InstantiationSpec(min_margin=0.05),
    )


def prompts() -> list[Prompt]:
    return [Prompt(id=f"p-rj-{i:03d}", objective="rj",
                   messages=[Message(role="user", content=f"item {i}: " + "say it again " * 12)]) for i in range(N)]


def generator_calls(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^prefstream_model_requests_total\{[^}]*backend="echo"[^}]*\} (\S+)$', text, re.M))


async def _wait_outcomes(settings, topics, want, timeout=180.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        values = [v for _, v, _ in await read_all(settings, [topics.outcomes, topics.preferences])]
        if want(values) or time.monotonic() > deadline:
            return values
        await asyncio.sleep(1)


def rejudge(settings, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "streams.commands.cli", "rejudge", "--json", "--quiet", "--timeout", "180",
                           *args], cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _score(side, weights: dict[str, float]) -> float:
    values = {s.evaluator: s.value for s in side.scores if s.value is not None}
    return sum(weights[k] * values[k] for k in weights) / sum(weights.values())


def test_rejudge_applies_the_new_weights_without_generating_and_twice_adds_nothing(settings, workers):
    port = free_port()
    settings = settings.replace(metrics_port=port)
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, weighted(1.0, 0.2)))
    worker = workers.start(settings)

    async def submit():
        p = producer(settings)
        await p.start()
        for pr in prompts():
            await p.send(topics.prompts.name, topics.prompts.codec.encode(pr), key=pr.id.encode())
        await p.stop()

    asyncio.run(submit())
    first = asyncio.run(_wait_outcomes(settings, topics, lambda vs: sum(
        isinstance(v, Outcome) and v.objective == "rj@1" for v in vs) >= N))
    assert sum(isinstance(v, Outcome) and v.objective == "rj@1" for v in first) == N, open(worker.log_path).read()[-3000:]
    calls = generator_calls(port)
    assert calls >= N  # the echo generators were called to make the sets

    applied = asyncio.run(apply(settings, topics, weighted(0.2, 1.0)))  # the weights swapped: v2
    assert applied.spec.ref == "rj@2"
    dry = subprocess.run([sys.executable, "-m", "streams.commands.cli", "rejudge", "--objective", "rj@2", "--from", "rj@1",
                          "--dry-run"], cwd=ROOT, env=settings_env(settings), capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0 and f"would re-judge {N} candidate set(s) under rj@2" in dry.stderr, dry.stderr
    stored = len(asyncio.run(read_all(settings, [topics.candidates])))
    assert stored == N  # the dry run published nothing
    summary = rejudge(settings, "--objective", "rj@2", "--from", "rj@1")
    assert (summary["published"], summary["already"], summary["rejudged"]) == (N, 0, N)
    [moved] = summary["compare"]
    assert moved["a"] == "rj@1" and moved["b"] == "rj@2" and moved["both"] == N
    assert moved["reversed"] == N and moved["choice_agreement"] == 0.0  # every choice flipped

    assert generator_calls(port) == calls  # re-judging called no generator
    values = [v for _, v, _ in asyncio.run(read_all(settings, [topics.preferences, topics.judgments]))]
    v2 = [v for v in values if isinstance(v, PreferenceRecord) and v.objective == "rj@2"]
    assert len(v2) == N and len({r.prompt_id for r in v2}) == N
    for r in v2:  # every new record obeys v2: its scores are v2's weighted means, chosen above rejected
        assert r.rejudged_from and r.rejudged_from.startswith("j-")
        w = {"length": 0.2, "repetition": 1.0}
        assert abs(r.score_chosen - _score(r.chosen_side, w)) < 1e-9
        assert abs(r.score_rejected - _score(r.rejected_side, w)) < 1e-9
        assert r.margin >= 0.05 and len(r.chosen[0].content) < len(r.rejected[0].content)
    judged_v2 = [v for v in values if isinstance(v, JudgedSet) and v.objective.ref == "rj@2"]
    assert len(judged_v2) == N and all(j.rejudged_from for j in judged_v2)

    before = {t: len(asyncio.run(read_all(settings, [getattr(topics, t)]))) for t in ("candidates", "preferences")}
    again = rejudge(settings, "--objective", "rj@2", "--from", "rj@1")
    assert (again["published"], again["already"], again["rejudged"]) == (0, N, N)
    after = {t: len(asyncio.run(read_all(settings, [getattr(topics, t)]))) for t in ("candidates", "preferences")}
    assert after == before  # nothing published, nothing made
    assert generator_calls(port) == calls
    assert worker.poll() is None


def test_candidates_topic_is_created_with_its_retention(settings):
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.security import kafka_options

    settings = settings.replace(candidates_retention_ms=-1)
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))

    async def describe():
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        await admin.start()
        try:
            return await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.candidates.name)])
        finally:
            await admin.close()

    [resp] = asyncio.run(describe())
    configs = {c[0]: c[1] for r in resp.resources for c in r[4]}
    assert configs.get("retention.ms") == "-1", configs
