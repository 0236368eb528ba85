"""evaluate: every evaluator the objective names scores every candidate; the ensemble
decides each candidate's score.

candidates ──▶ [evaluate] ──▶ judgments
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

from agents.evaluators import aggregate
from agents.evaluators.base import Evaluator
from schemas import CandidateSet, Judged, JudgedSet, Score
from streams.runtime import Emit, Rejected

logger = logging.getLogger(__name__)


async def process(cset: CandidateSet, evaluators: Mapping[str, Evaluator]) -> list[Emit]:
    spec = cset.objective.evaluation
    per_candidate: list[list[Score]] = [[] for _ in cset.candidates]
    for ev_spec in spec.evaluators:
        evaluator = evaluators.get(ev_spec.name)
        if evaluator is None:
            raise Rejected(f"objective {cset.objective.ref} names unknown evaluator {ev_spec.name!r}",
                           cset.prompt.id)
        if not evaluator.applies(cset.prompt):
            continue
        scores = await evaluator.score(cset.prompt, cset.candidates, cset.objective)
        for bucket, score in zip(per_candidate, scores, strict=True):
            bucket.append(score)
    judged = []
    for cand, scores in zip(cset.candidates, per_candidate):
        verified, score = aggregate(scores, spec)
        judged.append(Judged(candidate=cand, scores=scores, verified=verified, score=score))
    out = JudgedSet(id="j-" + cset.id.removeprefix("s-"), prompt=cset.prompt, objective=cset.objective,
                    judged=judged, created_at=time.time())
    return [Emit("judgments", cset.prompt.id, out)]


def bind(app, ctx) -> None:
    """The faust agent: candidates → judgments."""

    async def handler(cset: CandidateSet) -> list[Emit]:
        return await process(cset, ctx.evaluators)

    ctx.agent(app, "evaluate", ctx.topics.candidates, handler, concurrency=ctx.settings.max_inflight)
