"""The ensemble: every evaluator's scores for a candidate set → each candidate's
``(verified, score)``.

Weights come from the objective's ``evaluation.evaluators`` by name. An evaluator not listed
weighs 1.0, except features (heuristics) and guards, which weigh 0 unless listed; weight 0
keeps a score on record but out of the sums. A score with ``value=None`` (could not be
scored) never counts.

Before aggregation, ``evaluation.normalise`` can spread an evaluator's values within the set
(``minmax``, ``zscore``, ``rank``; see ``schemas.objectives.EvaluationSpec``).

* ``verifiers_first``: where any verifier scored, ``score`` is the verifiers' weighted mean,
  so a candidate that fails verification never outranks one that passes; elsewhere the
  weighted mean of the model judges, reward models and human labels.
* ``weighted_mean``: one weighted mean over every evaluator that scored.
* ``borda`` / ``reciprocal_rank``: every weighted evaluator ranks the candidates it scored;
  ``score`` is the weighted mean of a candidate's Borda points (the share of the others it
  beats, a tie half) or of 1/rank (rank 1 best, ties share the better rank).

``verified`` is the verifiers' weighted mean in every mode, ``None`` where no verifier scored.
Guards (``evaluation.guards``) veto: a candidate a guard scores below 0.5 gets ``score`` 0
(also where nothing else could score it: the guard's verdict is a verdict).
"""
from __future__ import annotations

import math
import statistics
from typing import get_args

import msgspec

from agents.evaluators.base import OPINION_KINDS
from schemas import EvaluationSpec, Score
from schemas.objectives import EvaluatorName

KNOWN = frozenset(get_args(EvaluatorName))
AGGREGATIONS = frozenset({"verifiers_first", "weighted_mean", "borda", "reciprocal_rank"})
UNWEIGHTED_KINDS = frozenset({"feature", "guard"})  # weigh 0 unless the objective lists them
GUARD_THRESHOLD = 0.5

Result = tuple[float | None, float | None]


def weights(spec: EvaluationSpec) -> dict[str, float]:
    return {e.name: e.weight for e in spec.evaluators}


def weight_of(s: Score, w: dict[str, float]) -> float:
    return w.get(s.evaluator, 0.0 if s.kind in UNWEIGHTED_KINDS else 1.0)


def weighted_mean(scores: list[Score], w: dict[str, float]) -> float | None:
    """Weighted mean of the scored values; ``None`` where nothing scored with weight > 0."""
    pairs = [(s.value, weight_of(s, w)) for s in scores if s.value is not None]
    total = sum(wt for _, wt in pairs if wt > 0)
    if total <= 0:
        return None
    return sum(v * wt for v, wt in pairs if wt > 0) / total


def vetoed(scores: list[Score], spec: EvaluationSpec) -> bool:
    guards = set(spec.guards)
    return any(s.evaluator in guards and s.value is not None and s.value < GUARD_THRESHOLD
               for s in scores)


def aggregate(scores: list[Score], spec: EvaluationSpec) -> Result:
    """``(verified, score)`` for one candidate under a value-based aggregation (rank
    aggregations need the whole set: :func:`aggregate_set`)."""
    w = weights(spec)
    verified = weighted_mean([s for s in scores if s.kind == "verifier"], w)
    if spec.aggregation == "verifiers_first":
        score = verified if verified is not None else weighted_mean(
            [s for s in scores if s.kind in OPINION_KINDS], w)
    else:
        score = weighted_mean(scores, w)
    return verified, 0.0 if vetoed(scores, spec) else score


def spread(values: list[float | None], how: str) -> list[float | None]:
    """An evaluator's values over one set, normalised ``how``; ``None`` stays ``None``."""
    known = [v for v in values if v is not None]
    if how == "none" or not known:
        return values
    lo, hi = min(known), max(known)
    if hi == lo:
        return [None if v is None else 0.5 for v in values]
    if how == "minmax":
        return [None if v is None else (v - lo) / (hi - lo) for v in values]
    if how == "zscore":
        mean, sd = statistics.fmean(known), statistics.pstdev(known)
        return [None if v is None else 1 / (1 + math.exp(-(v - mean) / sd)) for v in values]
    return [None if v is None else borda(v, known) for v in values]  # rank


def borda(v: float, others_and_self: list[float]) -> float:
    """The share of the other values ``v`` beats, ties counting half."""
    n = len(others_and_self) - 1
    if n <= 0:
        return 0.5
    beats = sum(1 for o in others_and_self if o < v)
    ties = sum(1 for o in others_and_self if o == v) - 1
    return (beats + 0.5 * ties) / n


def normalised(per_candidate: list[list[Score]], spec: EvaluationSpec) -> list[list[Score]]:
    """The scores with ``spec.normalise`` applied per evaluator across the set."""
    out = [list(scores) for scores in per_candidate]
    for name, how in spec.normalise.items():
        where = [(i, k) for i, scores in enumerate(out) for k, s in enumerate(scores) if s.evaluator == name]
        values = spread([out[i][k].value for i, k in where], how)
        for (i, k), v in zip(where, values):
            out[i][k] = msgspec.structs.replace(out[i][k], value=v)
    return out


def _rank_points(per_candidate: list[list[Score]], w: dict[str, float], how: str) -> list[float | None]:
    names = {s.evaluator for scores in per_candidate for s in scores}
    sums, totals = [0.0] * len(per_candidate), [0.0] * len(per_candidate)
    for name in names:
        mine = [next((s for s in scores if s.evaluator == name), None) for scores in per_candidate]
        known = [s.value for s in mine if s is not None and s.value is not None]
        if len(known) < 2:
            continue  # one scored candidate ranks nothing
        for i, s in enumerate(mine):
            if s is None or s.value is None or weight_of(s, w) <= 0:
                continue
            better = sum(1 for v in known if v > s.value)
            points = borda(s.value, known) if how == "borda" else 1.0 / (1 + better)
            sums[i] += weight_of(s, w) * points
            totals[i] += weight_of(s, w)
    return [s / t if t > 0 else None for s, t in zip(sums, totals)]


def aggregate_set(per_candidate: list[list[Score]], spec: EvaluationSpec) -> list[Result]:
    """``(verified, score)`` for every candidate of one set, in order."""
    w = weights(spec)
    scaled = normalised(per_candidate, spec)
    if spec.aggregation not in ("borda", "reciprocal_rank"):
        return [aggregate(scores, spec) for scores in scaled]
    ranked = _rank_points(scaled, w, spec.aggregation)
    out = []
    for scores, score in zip(scaled, ranked):
        verified = weighted_mean([s for s in scores if s.kind == "verifier"], w)
        out.append((verified, 0.0 if vetoed(scores, spec) else score))
    return out


def validate(spec: EvaluationSpec) -> None:
    """Raise ``ValueError`` for a spec that cannot rank anything: an unknown evaluator or
    aggregation, a negative weight, weights summing to <= 0, or a reward model with no server."""
    named = {e.name for e in spec.evaluators} | set(spec.features) | set(spec.guards) | set(spec.normalise)
    unknown = sorted(named - KNOWN)
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; known: {sorted(KNOWN)}")
    if spec.aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {spec.aggregation!r}")
    negative = [e.name for e in spec.evaluators if e.weight < 0]
    if negative:
        raise ValueError(f"negative weight for {negative}")
    if sum(e.weight for e in spec.evaluators) <= 0:
        raise ValueError("evaluator weights sum to <= 0: nothing would count")
    from agents.evaluators import code, reward

    for e in spec.evaluators:
        checker = {"reward": reward.check_params, "code": code.check_params}.get(e.name)
        problems = checker(dict(e.params)) if checker else []
        if problems:
            raise ValueError("; ".join(problems))
