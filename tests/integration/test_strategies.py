"""Each synthesis strategy through the real broker with a real model: the embedded CPU model
for samples/contrastive/revise/perturb, two llama.cpp servers standing in for two models for
pool (the openai backend), and a model-server outage in the middle of a run."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, ObjectiveSpec,
                     SynthesisSpec)
from streams.admin import reader
from streams.commands.serving.inputs import read_prompts
from streams.commands.run import run
from streams.topics import from_settings
from tests.conftest import settings_env
from agents.backends.llamacpp_server import LlamaServer

pytestmark = pytest.mark.model

STOP = ["\nQuestion:", "\n\n"]


def objective(strategy: str, generators: list[GeneratorSpec], candidates: int = 2) -> ObjectiveSpec:
    return ObjectiveSpec(
        name=f"strat-{strategy}", principles=["The final answer is correct."],
        synthesis=SynthesisSpec(strategy=strategy, candidates=candidates, generators=generators,
                                prompting="completion", stop=STOP, critique_max_tokens=16),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
        instantiation=InstantiationSpec(min_margin=0.5))


def candidate_sets(settings):
    topics = from_settings(settings)

    async def read():
        consumer = await reader(settings, [topics.candidates.name])
        out = []
        try:
            for msgs in (await consumer.getmany(timeout_ms=3000)).values():
                out += [topics.candidates.codec.decode(m.value) for m in msgs]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(read())


def go(settings, tmp_path, spec, prompts):
    summary = run(settings, prompts, spec, tmp_path / spec.name, env=settings_env(settings), progress=False)
    assert summary["prompts"] == len(prompts)
    assert summary["pairs"] + summary["no_pair"] + summary["dead_letters"] == len(prompts)
    return summary, candidate_sets(settings)


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    return list(read_prompts(data_dir / "gsm8k" / "train_first1000.jsonl", limit=2))


LLAMA = GeneratorSpec(backend="llamacpp", model="gemma-3-270m", max_tokens=24, temperature=0.9)


@pytest.mark.parametrize("strategy,intents", [
    ("samples", {None}),
    ("contrastive", {"positive", "negative"}),
    ("revise", {"draft", "revision"}),
    ("perturb", {"original", "perturbed"}),
])
def test_strategy_with_the_embedded_model(settings, tmp_path, gsm8k, strategy, intents):
    summary, sets = go(settings, tmp_path, objective(strategy, [LLAMA]), gsm8k)
    assert summary["dead_letters"] == 0
    assert len(sets) == len(gsm8k)
    for cset in sets:
        assert {c.intent for c in cset.candidates} == intents
        assert all(c.strategy in (strategy, "perturb") for c in cset.candidates)
        if strategy == "revise":
            rev = next(c for c in cset.candidates if c.intent == "revision")
            assert rev.parent and rev.critique
        if strategy == "perturb":
            # the perturbed copy of an answer is never the one a verifier prefers
            assert all(c.parent for c in cset.candidates if c.intent == "perturbed")
    if strategy == "perturb":
        assert summary["pairs"] >= 0


def test_pool_of_two_servers_records_which_model_wrote_each_side(settings, tmp_path, gsm8k, llama_server):
    second = LlamaServer(log_path=tmp_path / "second.log")
    second.start()
    try:
        gens = [GeneratorSpec(backend="openai", model="model-a", base_url=llama_server, max_tokens=24),
                GeneratorSpec(backend="openai", model="model-b", base_url=second.base_url, max_tokens=24)]
        settings = settings.replace(allowed_endpoints=f"{llama_server},{second.base_url}")
        summary, sets = go(settings, tmp_path, objective("pool", gens, candidates=4), gsm8k)
    finally:
        second.stop()
    assert summary["dead_letters"] == 0
    for cset in sets:
        assert sorted(c.model for c in cset.candidates) == ["model-a", "model-a", "model-b", "model-b"]
        assert all(c.backend == "openai" and c.tokens_in > 0 for c in cset.candidates)
        assert any(c.text for c in cset.candidates)


def test_model_server_outage_mid_run_loses_no_prompt(settings, tmp_path, data_dir):
    server = LlamaServer(log_path=tmp_path / "outage.log")
    server.start()
    prompts = list(read_prompts(data_dir / "gsm8k" / "train_first1000.jsonl", limit=8))
    spec = objective("samples", [GeneratorSpec(backend="openai", model="m", base_url=server.base_url,
                                               max_tokens=16)])
    # handed whole to the workers; the stage blocks while the server is away (30 s, then its
    # restart on a busy machine): `run` must wait that out rather than stop at 60 s
    settings = settings.replace(max_inflight=1, allowed_endpoints=server.base_url, breaker_threshold=2,
                                breaker_cooldown_s=1.0, retries=3, block_fail_s=300.0)
    outage = {}

    def take_server_away():
        topics = from_settings(settings)

        async def first_candidates():
            consumer = await reader(settings, [topics.candidates.name])
            try:
                while not any((await consumer.getmany(timeout_ms=500)).values()):
                    pass
            finally:
                await consumer.stop()

        asyncio.run(asyncio.wait_for(first_candidates(), 120))
        server.stop()
        outage["stopped"] = time.monotonic()
        time.sleep(30)
        server.start()
        outage["started"] = time.monotonic()

    t = threading.Thread(target=take_server_away, daemon=True)
    t.start()
    try:
        summary = run(settings, prompts, spec, tmp_path / "out", progress=False)
    finally:
        t.join(200)
        server.stop()
    assert outage.get("stopped") and outage.get("started"), "the outage never happened mid-run"
    assert summary["prompts"] == 8
    assert summary["pairs"] + summary["no_pair"] + summary["dead_letters"] == 8
    assert summary["candidates"] + 2 * summary["dead_letters"] == 16
