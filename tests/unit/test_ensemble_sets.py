"""The ensemble over a whole candidate set: normalisation, rank aggregation, guards, and the
defaults that keep heuristics out of the sums."""
from __future__ import annotations

import pytest

from agents.evaluators.ensemble import aggregate, aggregate_set, spread, validate
from schemas import EvaluationSpec, EvaluatorSpec, Score


def s(name: str, value: float | None, kind: str = "judge") -> Score:
    return Score(evaluator=name, value=value, kind=kind)


def spec(aggregation="weighted_mean", normalise=None, guards=("injection",), **weights) -> EvaluationSpec:
    return EvaluationSpec(aggregation=aggregation, normalise=normalise or {}, guards=list(guards),
                          evaluators=[EvaluatorSpec(name=n, weight=w) for n, w in weights.items()])


def test_features_weigh_nothing_unless_named():
    scores = [s("judge", 0.2), s("length", 1.0, "feature")]
    assert aggregate(scores, spec(judge=1.0)) == (None, 0.2)
    assert aggregate(scores, spec(judge=1.0, length=1.0))[1] == pytest.approx(0.6)


def test_a_guard_vetoes_even_a_perfect_score():
    flagged = [s("judge", 1.0), s("injection", 0.0, "guard")]
    clean = [s("judge", 0.3), s("injection", 1.0, "guard")]
    results = aggregate_set([flagged, clean], spec(judge=1.0))
    assert results == [(None, 0.0), (None, 0.3)]
    assert aggregate_set([flagged, clean], spec(judge=1.0, guards=()))[0] == (None, 1.0)
    for mode in ("borda", "reciprocal_rank", "verifiers_first"):
        assert aggregate_set([flagged, clean], spec(mode, judge=1.0))[0][1] == 0.0


def test_spread():
    assert spread([1.0, 3.0, None, 2.0], "minmax") == [0.0, 1.0, None, 0.5]
    assert spread([5.0, 5.0], "minmax") == [0.5, 0.5]
    z = spread([1.0, 2.0, 3.0], "zscore")
    assert z[1] == 0.5 and z[0] < 0.5 < z[2] and z[0] == pytest.approx(1 - z[2])
    assert spread([0.1, 0.9, 0.9], "rank") == [0.0, 0.75, 0.75]
    assert spread([0.3, None], "none") == [0.3, None]


def test_normalisation_lets_a_narrow_evaluator_count_as_much_as_a_wide_one():
    # the reward model barely separates (0.50 vs 0.52) while the judge is emphatic the other way
    a = [s("reward", 0.52, "reward"), s("judge", 0.0)]
    b = [s("reward", 0.50, "reward"), s("judge", 0.1)]
    plain = aggregate_set([a, b], spec(reward=1.0, judge=1.0))
    assert plain[1][1] > plain[0][1]
    spread_out = aggregate_set([a, b], spec(normalise={"reward": "minmax", "judge": "minmax"}, reward=1.0, judge=1.0))
    assert spread_out[0][1] == spread_out[1][1] == 0.5
    # the records keep the evaluator's own values: normalisation works on copies
    assert a[0].value == 0.52


def test_borda_and_reciprocal_rank():
    sets = [[s("judge", 0.9), s("reward", 0.1, "reward")],
            [s("judge", 0.5), s("reward", 0.9, "reward")],
            [s("judge", 0.1), s("reward", 0.5, "reward")]]
    borda = [score for _, score in aggregate_set(sets, spec("borda", judge=1.0, reward=1.0))]
    assert borda == [pytest.approx(0.5), pytest.approx(0.75), pytest.approx(0.25)]
    rr = [score for _, score in aggregate_set(sets, spec("reciprocal_rank", judge=1.0, reward=1.0))]
    assert rr == [pytest.approx((1 + 1 / 3) / 2), pytest.approx((1 / 2 + 1) / 2), pytest.approx((1 / 3 + 1 / 2) / 2)]
    weighted = [score for _, score in aggregate_set(sets, spec("borda", judge=3.0, reward=1.0))]
    assert weighted[0] == max(weighted)


def test_rank_aggregation_skips_unscored_and_keeps_verified():
    sets = [[s("math", 1.0, "verifier"), s("judge", None)], [s("math", 0.0, "verifier"), s("judge", 0.7)]]
    results = aggregate_set(sets, spec("borda", math=1.0, judge=1.0))
    assert results[0] == (1.0, 1.0) and results[1] == (0.0, 0.0)


def test_validate_knows_every_evaluator_and_aggregation():
    validate(spec("borda", code=1.0, pairwise=1.0, human=0.5, regex=1.0, json_schema=1.0))
    with pytest.raises(ValueError, match="unknown aggregation"):
        validate(EvaluationSpec(aggregation="median"))  # type: ignore[arg-type]
