"""Generated tokens/s against llama.cpp's OpenAI-compatible server, three ways, same run:

- direct:   the server driven by the official async OpenAI client (`openai.AsyncOpenAI`);
- backend:  prefstream's `openai` backend (OpenAIGenerator) alone;
- pipeline: the whole pipeline (broker, curate → synthesize → evaluate → instantiate) with
            that backend, timed from submit to the last outcome, worker warmed up first;

each at concurrency 1, 4 and 16 over the same prompts, sampling and seeds: the direct and
backend runs ask each completion with the seed the pipeline's synthesize stage gives it
(from the prompt id and the objective), so all three generate the same texts. Usage:

    python benchmarks/model.py [--quick]

Prints a table, then one JSON line: {"bench": "model", "pipeline_tok_s", "direct_tok_s", "ratio", ...}
(the headline figures are at concurrency 4).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.backends.base import GenRequest  # noqa: E402
from agents.backends.llamacpp_server import LlamaServer  # noqa: E402
from agents.backends.openai import OpenAIGenerator  # noqa: E402
from agents.synthesis.prompting import render_completion  # noqa: E402
from agents.synthesize import base_seed  # noqa: E402
from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, ObjectiveSpec, Prompt, SynthesisSpec)  # noqa: E402
from streams.admin import create_topics, reader  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from streams.commands.run import drive, publish_objective, start_worker, stop_process  # noqa: E402
from streams.settings import load  # noqa: E402
from streams.commands.tap.follow import JsonlSink  # noqa: E402
from streams.topics import from_settings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train_first1000.jsonl"
MAX_TOKENS, CANDIDATES, TEMPERATURE = 32, 2, 0.8


def spec_for(base_url: str) -> ObjectiveSpec:
    gen = GeneratorSpec(backend="openai", model="gemma-3-270m", base_url=base_url, max_tokens=MAX_TOKENS,
                        temperature=TEMPERATURE)
    return ObjectiveSpec(name="bench-model", synthesis=SynthesisSpec(candidates=CANDIDATES, generators=[gen],
                                                                     prompting="completion", stop=["\nQuestion:"]),
                         evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))


def tagged(prompts: list[Prompt], suffix: str) -> list[Prompt]:
    """Fresh ids per run, so each pipeline run's outcomes (and seeds) are its own."""
    return [msgspec.structs.replace(p, id=f"{p.id}-{suffix}", objective=spec_for("").name) for p in prompts]


def completions(prompts: list[Prompt]) -> list[tuple[str, int]]:
    """Every completion the pipeline asks for these prompts: its text and its seed (the
    synthesize stage's seed for the prompt, plus the candidate's position)."""
    spec = spec_for("")
    return [(render_completion(p, spec.synthesis), base_seed(p.id, spec.ref, spec.synthesis.seed) + k)
            for p in prompts for k in range(CANDIDATES)]


async def direct(base_url: str, jobs: list[tuple[str, int]], conc: int) -> tuple[int, float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    sem = asyncio.Semaphore(conc)

    async def one(text: str, seed: int) -> int:
        async with sem:
            r = await client.completions.create(model="gemma-3-270m", prompt=text, max_tokens=MAX_TOKENS,
                                                temperature=TEMPERATURE, top_p=0.95, seed=seed, stop=["\nQuestion:"])
            return r.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(t, seed) for t, seed in jobs)))
    await client.close()
    return tokens, time.perf_counter() - t0


async def backend(settings, base_url: str, jobs: list[tuple[str, int]], conc: int) -> tuple[int, float]:
    gen = OpenAIGenerator(settings.replace(max_inflight=conc), "gemma-3-270m", base_url)
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(gen.generate(GenRequest(prompt=t, n=1, temperature=TEMPERATURE, top_p=0.95,
                                                          max_tokens=MAX_TOKENS, seed=seed, stop=["\nQuestion:"]))
                                  for t, seed in jobs))
    await gen.close()
    return sum(g.tokens_out for o in outs for g in o), time.perf_counter() - t0


async def candidate_tokens(settings, topics, ids: set[str]) -> tuple[int, set[int]]:
    """Tokens the pipeline generated for ``ids``, and the seeds it asked them with."""
    consumer = await reader(settings, [topics.candidates.name])
    total, seen, seeds = 0, set(), set()
    try:
        while seen != ids:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for msgs in batch.values():
                for m in msgs:
                    c = topics.candidates.codec.decode(m.value)
                    if c.prompt.id in ids and c.prompt.id not in seen:
                        seen.add(c.prompt.id)
                        total += sum(x.tokens_out for x in c.candidates)
                        seeds.update(x.sampling.seed for x in c.candidates)
    finally:
        await consumer.stop()
    return total, seeds


def pipeline(broker: str, base_url: str, measured: list[Prompt], conc: int, work: Path) -> tuple[int, float, set[int]]:
    settings = load({}, broker=broker, namespace=f"benchmodel{conc}", partitions=4, max_inflight=conc,
                    allowed_endpoints=base_url)
    topics = from_settings(settings)
    spec = spec_for(base_url)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, spec))
    worker = start_worker(settings.replace(metrics_port=0, log_level="WARNING"), work / f"worker{conc}.log")
    try:
        sink = JsonlSink(work / f"out{conc}")
        asyncio.run(drive(settings, topics, tagged(measured[:1], "warm"), sink, [worker], progress=False))
        t0 = time.perf_counter()
        asyncio.run(drive(settings, topics, measured, sink, [worker], progress=False))
        wall = time.perf_counter() - t0
        sink.close()
        tokens, seeds = asyncio.run(candidate_tokens(settings, topics, {p.id for p in measured}))
        return tokens, wall, seeds
    finally:
        stop_process(worker)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 prompts instead of 24 (under a minute per row)")
    args = ap.parse_args()
    n = 8 if args.quick else 24
    prompts = list(read_prompts(DATA, limit=n))
    settings = load({})
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        server = LlamaServer(log_path=Path(tmp) / "server.log")
        server.start()
        try:
            asyncio.run(direct(server.base_url, completions(tagged(prompts[:1], "warm")), 1))  # warm the server
            for conc in (1, 4, 16):
                measured = tagged(prompts, f"c{conc}")
                jobs = completions(measured)  # the same texts and seeds the pipeline run asks for
                d = asyncio.run(direct(server.base_url, jobs, conc))
                b = asyncio.run(backend(settings, server.base_url, jobs, conc))
                p = pipeline(broker.address, server.base_url, measured, conc, Path(tmp))
                rows.append({"concurrency": conc, "direct_tok_s": d[0] / d[1], "backend_tok_s": b[0] / b[1],
                             "pipeline_tok_s": p[0] / p[1], "tokens": [d[0], b[0], p[0]],
                             "same_seeds": p[2] == {seed for _, seed in jobs}})
        finally:
            server.stop()
    print(f"{'conc':>4} {'direct tok/s':>13} {'backend tok/s':>14} {'pipeline tok/s':>15} {'pipe/direct':>12}"
          f" {'tokens d/b/p':>16} {'same seeds':>11}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['direct_tok_s']:>13.1f} {r['backend_tok_s']:>14.1f} "
              f"{r['pipeline_tok_s']:>15.1f} {r['pipeline_tok_s'] / r['direct_tok_s']:>12.2f}"
              f" {'/'.join(map(str, r['tokens'])):>16} {str(r['same_seeds']):>11}")
    head = next(r for r in rows if r["concurrency"] == 4)
    print(json.dumps({"bench": "model", "pipeline_tok_s": round(head["pipeline_tok_s"], 1),
                      "direct_tok_s": round(head["direct_tok_s"], 1),
                      "ratio": round(head["pipeline_tok_s"] / head["direct_tok_s"], 3),
                      "backend_tok_s": round(head["backend_tok_s"], 1), "prompts": n, "candidates": CANDIDATES,
                      "rows": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
