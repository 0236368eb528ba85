"""evaluate: every evaluator the objective names scores every candidate; the ensemble
decides each candidate's score.

candidates ──▶ [evaluate] ──▶ judgments

Besides the evaluators it weighs, the objective's ``features`` (heuristics, weight 0 unless
named) and ``guards`` (which veto) are scored on every candidate. Each judged candidate says
whether a model judge of the same family as its writer judged it (``same_family``), and the
worker's bias gauges (``agents.evaluators.bias``) follow every judged set.

Agent trajectories branched at a step (``synthesis.branch``): the ``outcome`` verifier judges
the final outcome the candidate step leads to (outcome-level), ``process`` the step itself
(process-level); verifiers of final answers skip candidates that are tool calls.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

import msgspec

from agents.evaluators import aggregate_set
from agents.evaluators.base import Evaluator
from agents.evaluators.bias import BiasGauges, family
from agents.trajectory import parse_action, step_of
from schemas import Candidate, CandidateSet, Judged, JudgedSet, ObjectiveSpec, Score
from streams.runtime import Emit, Rejected

logger = logging.getLogger(__name__)

MODEL_JUDGES = ("judge", "pairwise")
STEP_AWARE = ("outcome", "process")  # the verifiers that judge a trajectory step (agents.evaluators.trajectory)


def judge_families(objective: ObjectiveSpec) -> set[str]:
    """The families of the models that judge under this objective (judges, reward model)."""
    spec = objective.evaluation
    out = set()
    for e in spec.evaluators:
        if e.name in MODEL_JUDGES:
            out.add(family(spec.judge.model))
        elif e.name == "reward" and e.params.get("model"):
            out.add(family(str(e.params["model"])))
    return out


def writer_family(cand: Candidate, by_id: Mapping[str, Candidate]) -> str:
    """The family of the model that wrote ``cand`` (a perturbed copy: its original's)."""
    parent = by_id.get(cand.parent) if cand.parent else None
    return family((parent or cand).model)


def step_level(score: Score, cand: Candidate, evaluator: Evaluator) -> Score:
    """Trajectories: a candidate that is a tool call at a branch step is no final answer, so
    a verifier of final answers (math, ifeval, code, ...) does not score it; the
    trajectory-aware verifiers do (``outcome``: rolled forward to a verified answer,
    ``process``: the step itself). Model judges, features and guards see its text as is."""
    if (evaluator.kind != "verifier" or evaluator.name in STEP_AWARE or step_of(cand) is None
            or not parse_action(cand.text).is_call or score.value is None):
        return score
    return msgspec.structs.replace(score, value=None, raw=None,
                                   error="a tool call, not a final answer: judged by outcome/process")


def names_to_run(objective: ObjectiveSpec) -> list[str]:
    spec = objective.evaluation
    return list(dict.fromkeys([e.name for e in spec.evaluators] + list(spec.features) + list(spec.guards)))


async def process(cset: CandidateSet, evaluators: Mapping[str, Evaluator]) -> list[Emit]:
    spec = cset.objective.evaluation
    per_candidate: list[list[Score]] = [[] for _ in cset.candidates]
    for name in names_to_run(cset.objective):
        evaluator = evaluators.get(name)
        if evaluator is None:
            raise Rejected(f"objective {cset.objective.ref} names unknown evaluator {name!r}", cset.prompt.id)
        if not evaluator.applies(cset.prompt):
            continue
        scores = await evaluator.score(cset.prompt, cset.candidates, cset.objective)
        for bucket, score, cand in zip(per_candidate, scores, cset.candidates, strict=True):
            bucket.append(step_level(score, cand, evaluator))
    judges = judge_families(cset.objective)
    by_id = {c.id: c for c in cset.candidates}
    judged = []
    for cand, scores, (verified, score) in zip(cset.candidates, per_candidate, aggregate_set(per_candidate, spec)):
        same = writer_family(cand, by_id) in judges if judges else None
        judged.append(Judged(candidate=cand, scores=scores, verified=verified, score=score, same_family=same))
    out = JudgedSet(id="j-" + cset.id.removeprefix("s-"), prompt=cset.prompt, objective=cset.objective,
                    judged=judged, created_at=time.time())
    return [Emit("judgments", cset.prompt.id, out)]


def bind(app, ctx) -> None:
    """The faust agent: candidates → judgments (and the bias gauges)."""
    gauges = BiasGauges(ctx.metrics.registry)

    async def handler(cset: CandidateSet) -> list[Emit]:
        emits = await process(cset, ctx.evaluators)
        for e in emits:
            if isinstance(e.value, JudgedSet):
                gauges.observe(e.value)
        return emits

    ctx.agent(app, "evaluate", ctx.topics.candidates, handler, concurrency=ctx.settings.max_inflight)
