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

The evaluators of one set that wait on something outside the worker (model judges, a reward
model, the feedback feed, the code sandbox) run side by side, so a model server is never idle
while another evaluator of the same prompt is being waited for.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping

import msgspec

from agents import adaptive
from agents.evaluators import aggregate_set
from agents.evaluators.base import MODEL_JUDGES, OPINION_KINDS, Evaluator
from agents.evaluators.bias import BiasGauges, model_family
from agents.synthesis.trajectory import parse_action, step_of
from schemas import Candidate, CandidateSet, Judged, JudgedSet, ObjectiveSpec, Score
from schemas.judgments import judged_id
from streams.runtime import Emit, Handler, Rejected
from streams.topics import JUDGMENTS

logger = logging.getLogger(__name__)

STEP_AWARE = ("outcome", "process")  # the verifiers that judge a trajectory step (agents.evaluators.trajectory)


def judge_families(objective: ObjectiveSpec) -> set[str]:
    """The families of the models that judge under this objective (judges, reward model)."""
    spec = objective.evaluation
    out = set()
    for e in spec.evaluators:
        if e.name in MODEL_JUDGES:
            out.add(model_family(spec.judge.model))
        elif e.name == "reward" and e.params.get("model"):
            out.add(model_family(str(e.params["model"])))
    return out


def writer_family(cand: Candidate, by_id: Mapping[str, Candidate]) -> str:
    """The family of the model that wrote ``cand`` (a perturbed copy: its original's)."""
    parent = by_id.get(cand.parent) if cand.parent else None
    return model_family((parent or cand).model)


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


def waits(evaluator: Evaluator) -> bool:
    """Whether scoring waits on something outside this process (a model server, the feedback
    feed, a sandbox): an evaluator says so with ``waits``, else its kind does."""
    return getattr(evaluator, "waits", evaluator.kind in OPINION_KINDS)


async def score_all(cset: CandidateSet, evaluators: list[Evaluator]) -> list[list[Score]]:
    """Each evaluator's scores, in the evaluators' order. Where two or more wait (``waits``),
    those run side by side — a judge and a reward model of one prompt overlap instead of the
    second waiting for the first — and the rest run meanwhile in this task; the first failure
    cancels the others and is raised as it is."""
    def score(e: Evaluator):
        return e.score(cset.prompt, cset.candidates, cset.objective)

    if sum(map(waits, evaluators)) < 2:
        return [await score(e) for e in evaluators]
    tasks = {i: asyncio.ensure_future(score(e)) for i, e in enumerate(evaluators) if waits(e)}
    try:
        inline = {i: await score(e) for i, e in enumerate(evaluators) if i not in tasks}
        await asyncio.gather(*tasks.values())
    except BaseException:
        for t in tasks.values():
            if t.done() and not t.cancelled():
                t.exception()  # retrieved: the error raised is the first one
            t.cancel()
        raise
    return [tasks[i].result() if i in tasks else inline[i] for i in range(len(evaluators))]


def judge_set(cset: CandidateSet, running: list[Evaluator], per_eval: list[list[Score]]) -> list[Judged]:
    """Each candidate with its scores (one per running evaluator) and the ensemble's verdict."""
    spec = cset.objective.evaluation
    per_candidate: list[list[Score]] = [[] for _ in cset.candidates]
    for evaluator, scores in zip(running, per_eval, strict=True):
        for bucket, score, cand in zip(per_candidate, scores, cset.candidates, strict=True):
            bucket.append(step_level(score, cand, evaluator))
    judges = judge_families(cset.objective)
    by_id = {c.id: c for c in cset.candidates}
    judged = []
    for cand, scores, (verified, score) in zip(cset.candidates, per_candidate, aggregate_set(per_candidate, spec)):
        same = writer_family(cand, by_id) in judges if judges else None
        judged.append(Judged(candidate=cand, scores=scores, verified=verified, score=score, same_family=same))
    return judged


async def process(cset: CandidateSet, evaluators: Mapping[str, Evaluator], backends=None) -> list[Emit]:
    """With ``backends``, a set that would make no pair draws more candidates first, where
    its objective allows (``synthesis.max_candidates``, ``agents.adaptive``)."""
    running = []
    for name in names_to_run(cset.objective):
        evaluator = evaluators.get(name)
        if evaluator is None:
            raise Rejected(f"objective {cset.objective.ref} names unknown evaluator {name!r}", cset.prompt.id)
        if evaluator.applies(cset.prompt):
            running.append(evaluator)
    per_eval = await score_all(cset, running)
    # a set `rejudge` re-published is judged as it was generated: no generator is called for it
    grow_with = None if cset.rejudged_from else backends
    cset, per_eval, extra = await adaptive.grow(cset, running, per_eval, grow_with, score_all,
                                                lambda c, p: judge_set(c, running, p))
    out = JudgedSet(id=judged_id(cset.id), prompt=cset.prompt, objective=cset.objective,
                    judged=judge_set(cset, running, per_eval), created_at=time.time(), extra=dict(extra),
                    rejudged_from=judged_id(cset.rejudged_from) if cset.rejudged_from else None)
    return [Emit(JUDGMENTS, cset.prompt.id, out)]


def bind(app, ctx) -> Handler:
    """The handler: candidates → judgments (and the bias gauges)."""
    gauges = BiasGauges(ctx.metrics.registry)

    async def handler(cset: CandidateSet) -> list[Emit]:
        emits = await process(cset, ctx.evaluators, ctx.backends)
        for e in emits:
            if isinstance(e.value, JudgedSet):
                gauges.observe(e.value)
        return emits

    return handler
