"""synthesize: N candidate responses for one prompt, as one message.

curated ──▶ [synthesize] ──▶ candidates
"""
from __future__ import annotations

import asyncio
import logging
import time

from agents.backends.base import GenRequest
from schemas import Candidate, CandidateSet, Curated, GeneratorSpec, Prompt, Sampling, SynthesisSpec, stable_id
from streams.runtime import Emit

logger = logging.getLogger(__name__)


def render_completion(prompt: Prompt, spec: SynthesisSpec) -> str:
    """Few-shot completion text for base models: ``Question: …\\nAnswer:``."""
    shots = "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in spec.few_shot)
    turns = [m for m in prompt.messages if m.role in ("system", "user")]
    system = "\n".join(m.content or "" for m in turns if m.role == "system")
    question = next((m.content or "" for m in reversed(turns) if m.role == "user"), "")
    head = f"{system}\n\n" if system else ""
    return f"{head}{shots}Question: {question}\nAnswer:"


def plan(spec: SynthesisSpec) -> list[GeneratorSpec]:
    """Which generator writes each of the N candidates: explicit ``count``s first, the rest
    shared out by weight (largest remainder), in a stable order."""
    n = spec.candidates
    fixed = [(g, g.count) for g in spec.generators if g.count is not None]
    out = [g for g, c in fixed for _ in range(c)]
    rest = [g for g in spec.generators if g.count is None]
    left = max(0, n - len(out))
    total = sum(g.weight for g in rest)
    if rest and left:
        shares = [left * g.weight / total if total > 0 else left / len(rest) for g in rest]
        counts = [int(s) for s in shares]
        order = sorted(range(len(rest)), key=lambda i: shares[i] - counts[i], reverse=True)
        for i in order[: left - sum(counts)]:
            counts[i] += 1
        out += [g for g, c in zip(rest, counts) for _ in range(c)]
    return out[:n] if rest else out


def base_seed(prompt_id: str, objective_ref: str, seed: int) -> int:
    return (int(stable_id(prompt_id, objective_ref), 16) + seed) % (2**31 - 1024)


def request_for(prompt: Prompt, spec: SynthesisSpec, gen: GeneratorSpec, n: int, seed: int) -> GenRequest:
    common = dict(n=n, temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens, seed=seed,
                  stop=list(spec.stop))
    if spec.prompting == "completion":
        return GenRequest(prompt=render_completion(prompt, spec), **common)
    return GenRequest(messages=list(prompt.messages), **common)


async def process(curated: Curated, backends) -> list[Emit]:
    prompt, objective = curated.prompt, curated.objective
    spec = objective.synthesis
    seed0 = base_seed(prompt.id, objective.ref, spec.seed)
    planned = plan(spec)
    jobs, offset = [], 0
    for gen in spec.generators:
        n = sum(1 for g in planned if g is gen)
        if n:
            jobs.append((gen, offset, request_for(prompt, spec, gen, n, seed0 + offset)))
            offset += n
    results = await asyncio.gather(*(_generate(backends, gen, req) for gen, _, req in jobs))
    candidates = []
    for (gen, first, req), generations in zip(jobs, results):
        for i, g in enumerate(generations):
            seed = g.seed if g.seed is not None else req.seed + i
            candidates.append(Candidate(
                id="c-" + stable_id(prompt.id, objective.ref, gen.backend, gen.model, first + i, seed),
                text=g.text, backend=gen.backend, model=gen.model, strategy=spec.strategy,
                sampling=Sampling(temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens,
                                  seed=seed),
                finish_reason=g.finish_reason, tokens_in=g.tokens_in, tokens_out=g.tokens_out,
                latency_s=g.latency_s,
            ))
    cset = CandidateSet(id="s-" + stable_id(prompt.id, objective.ref, [c.id for c in candidates]),
                        prompt=prompt, objective=objective, candidates=candidates, created_at=time.time())
    return [Emit("candidates", prompt.id, cset)]


async def _generate(backends, gen: GeneratorSpec, req: GenRequest):
    generator = backends.get(gen)
    return await generator.generate(req)


def bind(app, ctx) -> None:
    """The faust agent: curated → candidates; concurrency bounds prompts in flight."""

    async def handler(curated: Curated) -> list[Emit]:
        return await process(curated, ctx.backends)

    ctx.agent(app, "synthesize", ctx.topics.curated, handler, concurrency=ctx.settings.max_inflight)
