"""The ensemble: weights, aggregation modes, and spec validation."""
from __future__ import annotations

import pytest

from agents.evaluators import aggregate
from agents.evaluators.ensemble import validate
from schemas import EvaluationSpec, EvaluatorSpec, Score


def _v(name: str, value: float | None) -> Score:
    return Score(evaluator=name, value=value, kind="verifier",
                 error=None if value is not None else "x")


def _j(value: float | None) -> Score:
    return Score(evaluator="judge", value=value, kind="judge",
                 error=None if value is not None else "parse_failure")


def _spec(aggregation: str = "verifiers_first", **weights: float) -> EvaluationSpec:
    return EvaluationSpec(aggregation=aggregation,
                          evaluators=[EvaluatorSpec(name=n, weight=w) for n, w in weights.items()])


def test_verifiers_first_failing_verification_never_outranks_passing():
    spec = _spec(math=1.0, judge=5.0)
    passing = aggregate([_v("math", 1.0), _j(0.0)], spec)
    failing = aggregate([_v("math", 0.0), _j(1.0)], spec)
    assert passing == (1.0, 1.0) and failing == (0.0, 0.0)
    assert passing[1] > failing[1]


def test_verifiers_first_uses_weighted_mean_of_verifiers():
    verified, score = aggregate([_v("math", 1.0), _v("ifeval", 0.5), _j(0.0)],
                                _spec(math=3.0, ifeval=1.0, judge=1.0))
    assert verified == pytest.approx((3 * 1.0 + 0.5) / 4) and score == verified


def test_verifiers_first_falls_back_to_judges_when_no_verifier_scored():
    verified, score = aggregate([_v("math", None), _j(0.25)], _spec(math=1.0, judge=1.0))
    assert verified is None and score == 0.25


def test_nothing_scored_gives_none():
    assert aggregate([_v("math", None), _j(None)], _spec(math=1.0, judge=1.0)) == (None, None)
    assert aggregate([], EvaluationSpec()) == (None, None)


def test_weighted_mean_over_all_evaluators():
    verified, score = aggregate([_v("math", 1.0), _j(0.5)],
                                _spec("weighted_mean", math=1.0, judge=3.0))
    assert verified == 1.0
    assert score == pytest.approx((1.0 + 3 * 0.5) / 4)


def test_weight_zero_is_recorded_but_not_counted():
    scores = [_v("math", 0.0), _v("ifeval", 1.0), _j(0.2)]
    verified, score = aggregate(scores, _spec(math=0.0, ifeval=1.0, judge=1.0))
    assert verified == 1.0 and score == 1.0
    verified, score = aggregate(scores, _spec("weighted_mean", math=0.0, ifeval=1.0, judge=1.0))
    assert score == pytest.approx(0.6)


def test_zero_weight_verifier_alone_does_not_gate():
    verified, score = aggregate([_v("math", 0.0), _j(0.8)], _spec(math=0.0, judge=1.0))
    assert verified is None and score == pytest.approx(0.8)


def test_missing_weight_defaults_to_one():
    verified, score = aggregate([_v("math", 1.0), _v("ifeval", 0.0)], _spec(math=3.0))
    assert verified == pytest.approx(0.75)


def test_validate_accepts_default_and_rejects_bad_specs():
    validate(EvaluationSpec())
    with pytest.raises(ValueError):
        validate(_spec(math=0.0, judge=0.0))
    with pytest.raises(ValueError):
        validate(EvaluationSpec(evaluators=[]))
    with pytest.raises(ValueError):
        validate(_spec(math=-1.0, judge=2.0))
    unknown = EvaluatorSpec(name="rouge")  # type: ignore[arg-type]  # msgspec checks on decode only
    with pytest.raises(ValueError, match="unknown"):
        validate(EvaluationSpec(evaluators=[EvaluatorSpec(name="math"), unknown]))
