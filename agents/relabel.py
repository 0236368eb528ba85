"""relabel: a human label that arrives after its set was judged re-scores the set.

feedback ──▶ [relabel] ──▶ labels (compacted, every label for good) + judgments (the re-scored set)

Every label is kept on the compacted ``labels`` topic (key: the labelled id and the labeller),
which the ``human`` evaluator reads at start, so labels outlive the ``feedback`` topic's
retention and a restarted worker. A label is *late* for a judged set when the set was judged
before the label was made and at most the objective's ``evaluation.late_label_days`` before
(the set's first judgment counts; 0 days: never). For each such set — the newest of its
line, a set re-scored before counting as its original — whose objective names the ``human``
evaluator and whose candidates the label speaks about, the label is folded into the
candidate's ``human`` score (the first judgment's, with every late label so far, the newest per
labeller), the ensemble decides again,
and the new judged set goes to ``judgments``: it names the set it supersedes, the labels
folded in since, and the records the old set made. ``instantiate`` then makes the new records,
each naming the one it supersedes (or withdraws an old record with no successor).

No model is called. The new set's id hashes the old set's and the label's, so a replayed
label makes the same set and records (the sinks are idempotent by id), and a label already
folded into the newest set of a line is not folded again.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import msgspec

from agents.evaluators import aggregate_set
from agents.evaluators.human import candidate_keys, label_values
from agents.instantiate import instantiate_steps
from schemas import Feedback, JudgedSet, RecordRef, Score, stable_id
from schemas.objectives import MAX_LATE_LABEL_DAYS
from streams.runtime import Emit, Handler
from streams.topics import JUDGMENTS, LABELS

logger = logging.getLogger(__name__)

DAY = 86400.0
Lookup = Callable[[str, float], Awaitable[list[JudgedSet]]]


def label_key(fb: Feedback) -> str:
    """The ``labels`` topic's key: one label per labelled id and labeller (a new one replaces it)."""
    return f"{fb.candidate_id or fb.response_id}/{fb.user or ''}"


def heads(sets: list[JudgedSet]) -> list[tuple[JudgedSet, JudgedSet]]:
    """The newest set of each line (one not superseded by another found), with the line's
    first set (its first judgment)."""
    by_id = {s.id: s for s in sets}
    replaced = {s.supersedes for s in sets if s.supersedes}
    out = []
    for s in sets:
        if s.id in replaced:
            continue
        first = s
        while first.supersedes in by_id:
            first = by_id[first.supersedes]
        out.append((s, first))
    return out


def _human(first: Score | None, values: list[float]) -> Score:
    """The first judgment's human score (its mean and count) with the late labels' values."""
    n = int(first.raw) if first is not None and first.value is not None and isinstance(first.raw, (int, float)) else 0
    total = (first.value * n if n else 0.0) + sum(values)
    count = n + len(values)
    return Score(evaluator="human", kind="human", value=total / count, raw=float(count),
                 rationale=f"mean of {count} human label(s), {len(values)} late")


def late_values(labels: list[Feedback]) -> dict[str, list[float]]:
    """Labelled id → the late labels' values, the newest per labeller (as the human evaluator
    keeps them: a changed label replaces the old one)."""
    newest: dict[tuple[str, str], float] = {}
    for fb in labels:
        for key, value in label_values(fb):
            newest[(key, f"user:{fb.user}" if fb.user else fb.id)] = value
    out: dict[str, list[float]] = {}
    for (key, _), value in newest.items():
        out.setdefault(key, []).append(value)
    return out


def rescore(jset: JudgedSet, fb: Feedback, first: JudgedSet | None = None) -> JudgedSet | None:
    """``jset`` (the newest set of its line; ``first`` its first judgment) with its human
    scores made again from the first judgment's and every late label so far, ``fb`` included;
    None where ``fb`` speaks about none of its candidates."""
    first = first or jset
    labels = [*jset.late_labels, fb]
    values, said = late_values(labels), dict(label_values(fb))
    firsts = {j.candidate.id: next((s for s in j.scores if s.evaluator == "human"), None) for j in first.judged}
    per_candidate, touched = [], False
    for j in jset.judged:
        keys = candidate_keys(jset.prompt, j.candidate)
        touched = touched or any(k in said for k in keys)
        late = [v for k in keys for v in values.get(k, [])]
        if not late:
            per_candidate.append(list(j.scores))
            continue
        per_candidate.append([s for s in j.scores if s.evaluator != "human"] + [_human(firsts.get(j.candidate.id),
                                                                                          late)])
    if not touched:
        return None
    spec = jset.objective.evaluation
    judged = [msgspec.structs.replace(j, scores=scores, verified=verified, score=score)
              for j, scores, (verified, score) in zip(jset.judged, per_candidate, aggregate_set(per_candidate, spec))]
    made, _, _ = instantiate_steps(jset)
    return msgspec.structs.replace(
        jset, id="j-" + stable_id(jset.id, fb.id), judged=judged, created_at=time.time(), supersedes=jset.id,
        late_labels=labels, superseded_records=[RecordRef(id=r.id, kind=r.kind, step=r.step)
                                                                for r in made])


def is_late(jset: JudgedSet, first_judged: float, fb: Feedback, at: float) -> bool:
    spec = jset.objective.evaluation
    if "human" not in {e.name for e in spec.evaluators} or any(f.id == fb.id for f in jset.late_labels):
        return False
    return first_judged < at <= first_judged + spec.late_label_days * DAY


async def process(fb: Feedback, lookup: Lookup) -> list[Emit]:
    at = fb.created_at or time.time()
    out = [Emit(LABELS, label_key(fb), fb)]
    for jset, first in heads(await lookup(fb.prompt_id, at - MAX_LATE_LABEL_DAYS * DAY)):
        if is_late(jset, first.created_at, fb, at) and (new := rescore(jset, fb, first)) is not None:
            logger.info("late label %s re-scored %s (%s) as %s", fb.id, jset.id, jset.objective.ref, new.id)
            out.append(Emit(JUDGMENTS, fb.prompt_id, new))
    return out


def bind(app, ctx) -> Handler:
    """The handler: feedback → labels + judgments (it runs in the evaluate worker)."""
    from streams.lookup import JudgedLookup

    lookup = JudgedLookup(ctx.settings, ctx.topics.judgments)

    async def handler(fb: Feedback) -> list[Emit]:
        return await process(fb, lookup)

    return handler
