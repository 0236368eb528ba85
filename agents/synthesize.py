"""synthesize: N candidate responses for one prompt, as one message.

curated ──▶ [synthesize] ──▶ candidates

The objective's ``synthesis.strategy`` picks how: ``samples``/``pool`` (N samples shared over
the generators), ``contrastive`` (RLCD: positive vs negative system prompt), ``revise``
(draft → critique → revision), ``perturb`` (a response and a degraded copy of it). A response
captured from production (``metadata.production_response``) joins as model ``production``.
With ``synthesis.branch``, an agent trajectory is continued at a chosen step: candidates are
the next action from the prefix before that step (``branched``).
"""
from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from agents.backends.base import GenRequest, Generation
from agents.synthesis import policies
from agents.synthesis.perturb import perturb
from agents.synthesis.prompting import (chat_messages, contrastive_prompts, critique_prompt, last_user_text,
                                        render_completion, revision_prompt)
from agents.synthesis.trajectory import STEP, branch_steps
from schemas import (Candidate, CandidateSet, Curated, GeneratorSpec, ObjectiveSpec, Prompt, Sampling,
                     SynthesisSpec, stable_id)
from streams.runtime import Emit, Handler, Rejected
from streams.topics import CANDIDATES

logger = logging.getLogger(__name__)

REFERENCE = "reference"


def models(spec: SynthesisSpec) -> list[GeneratorSpec]:
    """The generators that sample (a ``reference`` generator writes no sample)."""
    return [g for g in spec.generators if g.backend != REFERENCE]


def plan(spec: SynthesisSpec, n: int | None = None) -> list[GeneratorSpec]:
    """Which generator writes each of ``n`` candidates: explicit ``count``s first, the rest
    shared out by weight (largest remainder), in a stable order."""
    n = spec.candidates if n is None else n
    out = [g for g in models(spec) if g.count is not None for _ in range(g.count)]
    rest = [g for g in models(spec) if g.count is None]
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


class Writer:
    """Calls the generators for one prompt and turns generations into candidates."""

    def __init__(self, prompt: Prompt, objective: ObjectiveSpec, backends) -> None:
        self.prompt, self.objective, self.backends = prompt, objective, backends
        self.spec = objective.synthesis
        self.seed = base_seed(prompt.id, objective.ref, self.spec.seed)
        self.index = 0
        self.intent: str | None = None  # "step:k": the writer of a branched trajectory's step k

    def request(self, gen: GeneratorSpec, n: int, system: str | None = None, text: str | None = None,
                max_tokens: int | None = None, at: int | None = None) -> GenRequest:
        """The request for ``n`` generations from position ``at`` (default: the next one)."""
        pos = self.index if at is None else at
        common = dict(n=n, temperature=gen.temperature, top_p=gen.top_p, max_tokens=max_tokens or gen.max_tokens,
                      seed=self.seed + pos, stop=list(self.spec.stop))
        if text is not None:
            return GenRequest(prompt=text, **common)
        if self.spec.prompting == "completion":
            return GenRequest(prompt=render_completion(self.prompt, self.spec, system), **common)
        return GenRequest(messages=chat_messages(self.prompt, system), **common)

    def reserve(self, n: int) -> int:
        """The first of ``n`` positions set aside now, so calls made side by side get the
        positions (seeds, candidate ids) they would get one after another."""
        first = self.index
        self.index += n
        return first

    def candidate(self, gen: GeneratorSpec, g: Generation, pos: int, **extra) -> Candidate:
        """A candidate; its id depends on where it was asked for, never on the text, so a
        replay yields the same ids even from a non-deterministic server."""
        seed = g.seed
        ref = self.backends.ref(gen) if isinstance(self.backends, policies.PolicyView) else None
        # a policy's version is part of the id (a fixed model's ids are as they were)
        cid = "c-" + stable_id(self.prompt.id, self.objective.ref, gen.backend, gen.model, pos, seed,
                               extra.get("intent"), *([ref] if ref else []))
        return Candidate(id=cid, text=g.text, backend=gen.backend, model=gen.model, strategy=self.spec.strategy,
                         sampling=Sampling(temperature=gen.temperature, top_p=gen.top_p,
                                           max_tokens=gen.max_tokens, seed=seed),
                         finish_reason=g.finish_reason, tokens_in=g.tokens_in, tokens_out=g.tokens_out,
                         latency_s=g.latency_s, policy=ref, **extra)

    async def samples(self, n: int, system: str | None = None, intent: str | None = None) -> list[Candidate]:
        planned = plan(self.spec, n)
        jobs = []
        for gen in models(self.spec):
            k = sum(1 for g in planned if g is gen)
            if k:
                first = self.reserve(k)
                jobs.append((gen, first, self.request(gen, k, system, at=first)))
        if len(jobs) == 1:  # the usual case: no task to gather one call
            (gen, _, req), = jobs
            results = [await self.backends.get(gen).generate(req)]
        else:
            results = await asyncio.gather(*(self.backends.get(g).generate(r) for g, _, r in jobs))
        return [self.candidate(gen, g, first + i, intent=intent or self.intent)
                for (gen, first, _), gens in zip(jobs, results) for i, g in enumerate(gens)]


async def contrastive(w: Writer) -> list[Candidate]:
    pos, neg = contrastive_prompts(w.spec, w.objective.principles)
    n_pos = max(1, w.spec.candidates // 2)
    n_neg = max(1, w.spec.candidates - n_pos)
    good, bad = await asyncio.gather(w.samples(n_pos, pos, "positive"), w.samples(n_neg, neg, "negative"))
    return good + bad


async def revise(w: Writer) -> list[Candidate]:
    """Drafts, then per draft a critique and a revision. The drafts' chains run side by side;
    chain ``i`` has positions ``first + 2i`` (critique) and ``first + 2i + 1`` (revision)."""
    drafts = await w.samples(max(1, w.spec.candidates // 2), intent="draft")
    principles = w.objective.principles or ["The response is correct, helpful and follows the instructions."]
    question, gen = last_user_text(w.prompt), models(w.spec)[0]
    model, first = w.backends.get(gen), w.reserve(2 * len(drafts))

    async def chain(i: int, draft: Candidate) -> Candidate:
        principle = principles[(w.seed + i) % len(principles)]
        [crit] = await model.generate(w.request(gen, 1, text=critique_prompt(question, draft.text, principle),
                                                max_tokens=w.spec.critique_max_tokens, at=first + 2 * i))
        pos = first + 2 * i + 1
        [rev] = await model.generate(w.request(gen, 1, text=revision_prompt(question, draft.text, crit.text), at=pos))
        return w.candidate(gen, rev, pos, intent="revision", parent=draft.id,
                           critique=f"[{principle}] {crit.text.strip()}")

    return drafts + list(await asyncio.gather(*(chain(i, d) for i, d in enumerate(drafts))))


async def perturbed(w: Writer) -> list[Candidate]:
    originals = await w.samples(max(1, w.spec.candidates // 2), intent="original")
    out = list(originals)
    for c in originals:
        hit = perturb(c.text, w.prompt, list(w.spec.perturbations))
        if hit is None:
            continue
        name, text = hit
        out.append(Candidate(id="c-" + stable_id(c.id, name), text=text, backend="perturb", model=f"perturb:{name}",
                             sampling=c.sampling, strategy="perturb", intent="perturbed", parent=c.id,
                             policy=c.policy))
    return out


async def samples(w: Writer) -> list[Candidate]:
    return await w.samples(w.spec.candidates)


STRATEGIES = {"samples": samples, "pool": samples, "contrastive": contrastive, "revise": revise,
              "perturb": perturbed}


async def branched(w: Writer) -> list[Candidate]:
    """Agent trajectories (``synthesis.branch``, the samples/pool strategy): at each branch
    step k, the candidates are the next assistant action from the prefix ``messages[:k]`` (a
    tool call or a final answer), each with ``intent="step:k"``. The steps are asked side by
    side; step i has the positions (seeds, candidate ids) it had one after another, the block
    ``i * len(plan(spec))`` on."""
    full = w.prompt
    steps = branch_steps(full.messages, w.spec.branch)
    if not steps:
        raise Rejected(f"synthesis.branch {w.spec.branch!r}: the trajectory has no turn after a user turn to "
                       "branch at", full.id)
    block = len(plan(w.spec))
    writers = []
    for step in steps:
        at = Writer(msgspec.structs.replace(full, messages=full.messages[:step]), w.objective, w.backends)
        at.index, at.intent = w.reserve(block), f"{STEP}{step}"
        writers.append(at)
    per_step = await asyncio.gather(*(samples(at) for at in writers))
    return [c for cands in per_step for c in cands]


def production_candidate(prompt: Prompt) -> Candidate | None:
    text = prompt.metadata.get("production_response")
    if not isinstance(text, str) or not text:
        return None
    # the proxy's response id, so human feedback on that response (Feedback.response_id) finds it
    cid = str(prompt.metadata.get("production_response_id") or "c-" + stable_id(prompt.id, "production", text))
    return Candidate(id=cid, text=text, backend="production",
                     model=str(prompt.metadata.get("production_model") or "production"), strategy="production",
                     sampling=Sampling(temperature=-1, top_p=-1, max_tokens=-1), intent="production",
                     off_policy=True)


def reference_text(prompt: Prompt) -> str | None:
    """The prompt's reference answer: ``metadata.reference`` (a GSM8K line's worked solution),
    else a math verification's ``answer`` (a plain ``answer`` field). A production response
    with positive feedback is a reference too, but it is in the set already (``production``)."""
    ref = prompt.metadata.get("reference")
    if isinstance(ref, str) and ref.strip():
        return ref
    v = prompt.verification
    if v is not None and v.kind == "math" and v.answer:
        return f"The answer is {v.answer}.\n#### {v.answer}"
    return None


def reference_candidate(prompt: Prompt, objective: ObjectiveSpec) -> Candidate | None:
    """The reference answer as an off-policy candidate (``model: reference``), where the
    objective names a ``reference`` generator and the prompt carries one."""
    gen = next((g for g in objective.synthesis.generators if g.backend == REFERENCE), None)
    text = reference_text(prompt) if gen is not None else None
    if text is None:
        return None
    return Candidate(id="c-" + stable_id(prompt.id, objective.ref, REFERENCE, text), text=text, backend=REFERENCE,
                     model=REFERENCE, strategy=REFERENCE, intent=REFERENCE, off_policy=True,
                     sampling=Sampling(temperature=-1, top_p=-1, max_tokens=-1))


async def process(curated: Curated, backends) -> list[Emit]:
    prompt, objective = curated.prompt, curated.objective
    branch = objective.synthesis.branch != "off"
    strategy = branched if branch else STRATEGIES[objective.synthesis.strategy]
    candidates = await strategy(Writer(prompt, objective, await policies.bind(objective.synthesis, backends)))
    extra = [] if branch else [production_candidate(prompt), reference_candidate(prompt, objective)]
    candidates += [c for c in extra if c is not None]
    cset = CandidateSet(id="s-" + stable_id(prompt.id, objective.ref, [c.id for c in candidates]),
                        prompt=prompt, objective=objective, candidates=candidates, created_at=time.time())
    return [Emit(CANDIDATES, prompt.id, cset)]


def sampled_count(candidates: list[Candidate]) -> int:
    """How many positions the samples of a set hold (candidates written by a generator)."""
    return sum(1 for c in candidates if not c.off_policy and c.intent is None)


async def more(cset: CandidateSet, backends, n: int) -> list[Candidate]:
    """``n`` more samples for a samples/pool set, at the positions after those it holds: the
    same seeds and candidate ids on every replay (adaptive sampling, ``agents.adaptive``)."""
    w = Writer(cset.prompt, cset.objective, await policies.bind(cset.objective.synthesis, backends,
                                                                policies.pins(cset)))
    w.index = sampled_count(cset.candidates)
    return await w.samples(n)


def bind(app, ctx) -> Handler:
    """The handler: curated → candidates; the concurrency bounds prompts in flight."""

    async def handler(curated: Curated) -> list[Emit]:
        return await process(curated, ctx.backends)

    return handler
