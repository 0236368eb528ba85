"""The ensemble: one candidate's scores from every evaluator → (verified, score).

Weights come from the objective's ``evaluation.evaluators`` by name (an evaluator not
listed weighs 1.0; weight 0 keeps its score on record but out of the sums). A score with
``value=None`` (could not be scored) never counts.

* ``verifiers_first``: where any verifier scored, ``score`` is the verifiers' weighted mean,
  so a candidate that fails verification never outranks one that passes; elsewhere
  ``score`` is the judges' weighted mean.
* ``weighted_mean``: ``score`` is one weighted mean over every evaluator that scored.

``verified`` is the verifiers' weighted mean in both, ``None`` where no verifier scored.
"""
from __future__ import annotations

from schemas import EvaluationSpec, Score

KNOWN = frozenset({"math", "ifeval", "judge"})
AGGREGATIONS = frozenset({"verifiers_first", "weighted_mean"})


def weights(spec: EvaluationSpec) -> dict[str, float]:
    return {e.name: e.weight for e in spec.evaluators}


def weighted_mean(scores: list[Score], w: dict[str, float]) -> float | None:
    """Weighted mean of the scored values; ``None`` where nothing scored with weight > 0."""
    pairs = [(s.value, w.get(s.evaluator, 1.0)) for s in scores if s.value is not None]
    total = sum(wt for _, wt in pairs if wt > 0)
    if total <= 0:
        return None
    return sum(v * wt for v, wt in pairs if wt > 0) / total


def aggregate(scores: list[Score], spec: EvaluationSpec) -> tuple[float | None, float | None]:
    """``(verified, score)`` for one candidate under the objective's evaluation spec."""
    w = weights(spec)
    verified = weighted_mean([s for s in scores if s.kind == "verifier"], w)
    if spec.aggregation == "weighted_mean":
        return verified, weighted_mean(scores, w)
    if verified is not None:
        return verified, verified
    return None, weighted_mean([s for s in scores if s.kind == "judge"], w)


def validate(spec: EvaluationSpec) -> None:
    """Raise ``ValueError`` for a spec that cannot rank anything: an unknown evaluator or
    aggregation, a negative weight, or weights summing to <= 0."""
    unknown = sorted({e.name for e in spec.evaluators} - KNOWN)
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; known: {sorted(KNOWN)}")
    if spec.aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {spec.aggregation!r}")
    negative = [e.name for e in spec.evaluators if e.weight < 0]
    if negative:
        raise ValueError(f"negative weight for {negative}")
    if sum(e.weight for e in spec.evaluators) <= 0:
        raise ValueError("evaluator weights sum to <= 0: nothing would count")
