"""instantiate: turn a judged candidate set into preference records, and say how the
prompt ended.

judgments ──▶ [instantiate] ──▶ preferences + outcomes
"""
from __future__ import annotations

import logging
import time

from schemas import Judged, JudgedSet, Message, Outcome, PreferenceRecord, Side, stable_id
from streams.runtime import Emit

logger = logging.getLogger(__name__)


def rank(judged: list[Judged]) -> list[Judged]:
    """Scored candidates, best first; equal scores keep a stable, id-based order."""
    scored = [j for j in judged if j.score is not None]
    return sorted(scored, key=lambda j: (-j.score, j.candidate.id))


def best_vs_worst(jset: JudgedSet) -> tuple[Judged, Judged] | str:
    """The pair, or the reason there is none."""
    ranked = rank(jset.judged)
    if len(ranked) < 2:
        return f"only {len(ranked)} of {len(jset.judged)} candidates were scored"
    best, worst = ranked[0], ranked[-1]
    margin = best.score - worst.score
    min_margin = jset.objective.instantiation.min_margin
    if margin <= 0:
        return "all scored candidates tie"
    if margin < min_margin:
        return f"best-worst margin {margin:.3f} is below the objective's {min_margin}"
    if best.candidate.text.strip() == worst.candidate.text.strip():
        return "chosen and rejected texts are identical"
    return best, worst


def _side(j: Judged) -> Side:
    return Side(candidate_id=j.candidate.id, model=j.candidate.model, score=j.score, scores=j.scores)


def pair_record(jset: JudgedSet, chosen: Judged, rejected: Judged) -> PreferenceRecord:
    ref = jset.objective.ref
    return PreferenceRecord(
        id="r-" + stable_id(jset.prompt.id, ref, "pair", chosen.candidate.id, rejected.candidate.id),
        prompt_id=jset.prompt.id, objective=ref, prompt=list(jset.prompt.messages),
        chosen=[Message(role="assistant", content=chosen.candidate.text)],
        rejected=[Message(role="assistant", content=rejected.candidate.text)],
        score_chosen=chosen.score, score_rejected=rejected.score,
        margin=round(chosen.score - rejected.score, 6),
        chosen_side=_side(chosen), rejected_side=_side(rejected), source=jset.prompt.source,
        created_at=time.time(),
    )


def process(jset: JudgedSet) -> list[Emit]:
    ref, pid = jset.objective.ref, jset.prompt.id
    result = best_vs_worst(jset)
    if isinstance(result, str):
        outcome = Outcome(prompt_id=pid, objective=ref, status="no_pair", candidates=len(jset.judged),
                          reason=result, created_at=time.time())
        return [Emit("outcomes", pid, outcome)]
    record = pair_record(jset, *result)
    outcome = Outcome(prompt_id=pid, objective=ref, status="records", record_ids=[record.id],
                      candidates=len(jset.judged), created_at=time.time())
    return [Emit("preferences", pid, record), Emit("outcomes", pid, outcome)]


def bind(app, ctx) -> None:
    """The faust agent: judgments → preferences + outcomes."""

    async def handler(jset: JudgedSet) -> list[Emit]:
        return process(jset)

    ctx.agent(app, "instantiate", ctx.topics.judgments, handler)
