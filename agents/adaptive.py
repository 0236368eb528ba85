"""Adaptive sampling: a judged set that would make no pair draws more candidates.

A samples/pool set whose candidates tie, or part by less than the objective's margin, asks
the generators for ``synthesis.candidates`` more, at the positions after those it holds (so
the same seeds and candidate ids on every replay), scores only the new ones (a set-level
evaluator such as ``pairwise`` rescores the grown set), and asks again until a pair
qualifies or the set holds ``synthesis.max_candidates`` samples.

It runs inside the evaluate stage, on the one message being processed: no new topic, no
round counter on the wire, and a crash before the commit replays the whole loop with the
same ids.

A set whose model judges disagree about its would-be pair (no verifier decides it; one
evaluator prefers the chosen side and another the rejected, or ``pairwise`` was inconsistent
between orders) gets one more reading: the pointwise judge asks again in its other form
(per principle where it asked for one score, and back), and the two readings are averaged.

What it cost is counted on the judged set (``JudgedSet.extra``) and lands in the prompt's
outcome counts: ``extra_rounds``, ``extra_candidates``, ``extra_judge_calls``,
``extra_readings``.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Awaitable, Callable

import msgspec

from agents.instantiate import rank, select_pairs
from agents.synthesize import more, sampled_count
from schemas import CandidateSet, Judged, JudgedSet, Score

log = logging.getLogger(__name__)

SET_LEVEL = frozenset({"pairwise"})  # evaluators whose score for one candidate depends on the others
MODEL_KINDS = frozenset({"judge", "reward"})

Scorer = Callable[[CandidateSet, list], Awaitable[list[list[Score]]]]
Judge = Callable[[CandidateSet, list[list[Score]]], list[Judged]]


def budget(cset: CandidateSet) -> int:
    """How many more samples the set may draw (0: adaptive sampling is off for it)."""
    spec = cset.objective.synthesis
    if spec.max_candidates is None or spec.strategy not in ("samples", "pool") or spec.branch != "off":
        return 0
    return max(0, spec.max_candidates - sampled_count(cset.candidates))


def pairs(cset: CandidateSet, judged: list[Judged]) -> bool:
    """Whether instantiate would make a pair of these judged candidates (or pairs are off)."""
    if cset.objective.instantiation.pairs == "none":
        return True
    jset = JudgedSet(id="", prompt=cset.prompt, objective=cset.objective, judged=judged)
    kept, _, _ = select_pairs(jset, rank(judged))
    return bool(kept)


async def grow(cset: CandidateSet, running: list, per_eval: list[list[Score]], backends, score: Scorer,
               judge: Judge) -> tuple[CandidateSet, list[list[Score]], Counter]:
    """More candidates until the set pairs or its budget is spent, then one more reading
    where the judges disagree: the grown set, each evaluator's scores over it, and what the
    extra calls cost."""
    extra: Counter = Counter()
    while backends is not None and (left := budget(cset)) and not pairs(cset, judge(cset, per_eval)):
        new = await more(cset, backends, min(cset.objective.synthesis.candidates, left))
        if not new:
            break
        grown = msgspec.structs.replace(cset, candidates=[*cset.candidates, *new])
        point = [i for i, e in enumerate(running) if e.name not in SET_LEVEL]
        fresh = await score(msgspec.structs.replace(cset, candidates=new), [running[i] for i in point])
        again = await score(grown, [e for e in running if e.name in SET_LEVEL])
        fresh_by, again_by = dict(zip(point, fresh)), iter(again)
        per_eval = [per_eval[i] + fresh_by[i] if i in fresh_by else next(again_by) for i in range(len(running))]
        extra["extra_rounds"] += 1
        extra["extra_candidates"] += len(new)
        extra["extra_judge_calls"] += sum(len(new) if e.name not in SET_LEVEL else len(grown.candidates)
                                          for e in running if e.kind in MODEL_KINDS)
        cset = grown
    if backends is not None:
        per_eval = await reread(cset, running, per_eval, judge, extra)
    if extra:
        log.info("prompt %s: %d more candidates in %d rounds", cset.prompt.id, extra["extra_candidates"],
                 extra["extra_rounds"])
    return cset, per_eval, extra


def _by(j: Judged, name: str) -> Score | None:
    return next((s for s in j.scores if s.evaluator == name), None)


def disputed(judged: list[Judged], running: list) -> bool:
    """Whether the model judges disagree about the best-vs-worst pair no verifier decides."""
    ranked = rank(judged)
    if len(ranked) < 2 or ranked[0].verified is not None or ranked[-1].verified is not None:
        return False
    a, b = ranked[0], ranked[-1]
    leans = set()
    for e in running:
        if e.kind not in MODEL_KINDS:
            continue
        sa, sb = _by(a, e.name), _by(b, e.name)
        if sa is None or sb is None or sa.value is None or sb.value is None:
            continue
        if False in (sa.swap_consistent, sb.swap_consistent):
            return True
        if sa.value != sb.value:
            leans.add(sa.value > sb.value)
    return len(leans) > 1


def average(first: Score, second: Score) -> Score:
    values = [s.value for s in (first, second) if s.value is not None]
    if not values:
        return first
    return msgspec.structs.replace(first, value=sum(values) / len(values), error=None,
                                   rationale=f"{first.rationale} | again: {second.rationale}"[:300])


async def reread(cset: CandidateSet, running: list, per_eval: list[list[Score]], judge: Judge,
                 extra: Counter) -> list[list[Score]]:
    """One more reading by the pointwise judge, in its other form, where the judges disagree."""
    at = next((i for i, e in enumerate(running) if e.name == "judge"), None)
    if at is None or not cset.objective.evaluation.reread_disputed or not disputed(judge(cset, per_eval), running):
        return per_eval
    spec = cset.objective.evaluation
    other = msgspec.structs.replace(cset.objective, evaluation=msgspec.structs.replace(
        spec, judge=msgspec.structs.replace(spec.judge, per_principle=not spec.judge.per_principle)))
    again = await running[at].score(cset.prompt, cset.candidates, other)
    extra["extra_readings"] += 1
    extra["extra_judge_calls"] += len(cset.candidates)
    return [[average(a, b) for a, b in zip(per_eval[i], again)] if i == at else per_eval[i]
            for i in range(len(running))]
