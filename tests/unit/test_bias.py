"""Bias figures: measured where there is something to measure, null where not."""
from __future__ import annotations

import statistics

import pytest
from prometheus_client import CollectorRegistry

from agents.evaluators.bias import BiasGauges, BiasTracker, model_family
from schemas import Candidate, Judged, JudgedSet, Message, ObjectiveSpec, PreferenceRecord, Prompt, Sampling, Score
from schemas.judgments import Comparison
from schemas.preferences import Side

OBJ = ObjectiveSpec(name="o")
P = Prompt(id="p", messages=[Message(role="user", content="q")])


def cand(i: str, text: str) -> Candidate:
    return Candidate(id=i, text=text, backend="x", model="gemma-3-270m",
                     sampling=Sampling(temperature=0, top_p=1, max_tokens=1))


def judged(i: str, text: str, score: float | None, scores: list[Score], same: bool | None = None) -> Judged:
    return Judged(candidate=cand(i, text), scores=scores, score=score, same_family=same)


@pytest.mark.parametrize("model,expected", [
    ("gemma-3-270m", "gemma"), ("google/gemma-2-9b-it", "gemma"), ("Qwen/Qwen2.5-7B-Instruct", "qwen"),
    ("meta-llama/Llama-3.1-8B", "llama"), ("Meta-Llama-3-8B-Instruct", "llama"), ("gpt-4o-mini", "gpt"),
    ("/models/gemma-3-270m-it-Q4_K_M.gguf", "gemma"), ("mistralai/Mistral-7B-v0.3", "mistral"),
])
def test_family(model, expected):
    assert model_family(model) == expected


def test_nothing_to_measure_is_null_not_zero():
    t = BiasTracker()
    f = t.figures()
    assert {k: f[k] for k in f if k != "evaluators"} == dict.fromkeys(
        ["swap_consistency", "length_diff_mean", "length_margin_corr", "tie_rate", "parse_failure_rate",
         "same_family_rate"])
    assert f["evaluators"] == {}
    # a verifier-only set: swap, parse failures and family have nothing to measure
    t.add(JudgedSet(id="j1", prompt=P, objective=OBJ, judged=[
        judged("a", "aaaa", 1.0, [Score(evaluator="math", value=1.0)]),
        judged("b", "bb", 0.0, [Score(evaluator="math", value=0.0)])]))
    f = t.figures()
    assert f["swap_consistency"] is None and f["parse_failure_rate"] is None and f["same_family_rate"] is None
    assert f["tie_rate"] == 0.0 and f["length_diff_mean"] == 2.0
    assert f["length_margin_corr"] is None  # one pair has no correlation
    assert f["evaluators"]["math"] == {"count": 2, "mean": 0.5, "stdev": pytest.approx(0.70710678)}


def test_judge_figures_swaps_ties_parse_failures_and_family():
    t = BiasTracker()
    ca = [Comparison(other="b", outcome=0.5, first="this", second="other", consistent=False),
          Comparison(other="c", outcome=1.0, first="this", second="this", consistent=True)]
    cb = [Comparison(other="a", outcome=0.5, first="this", second="other", consistent=False)]
    cc = [Comparison(other="a", outcome=0.0, first="other", second="other", consistent=True)]
    t.add(JudgedSet(id="j1", prompt=P, objective=OBJ, judged=[
        judged("a", "x" * 10, 0.5, [Score(evaluator="pairwise", kind="judge", value=0.75, comparisons=ca),
                                    Score(evaluator="judge", kind="judge", value=None, error="parse_failure")], True),
        judged("b", "x" * 4, 0.5, [Score(evaluator="pairwise", kind="judge", value=0.5, comparisons=cb),
                                   Score(evaluator="judge", kind="judge", value=0.5)], True),
        judged("c", "x", 0.0, [Score(evaluator="pairwise", kind="judge", value=0.0, comparisons=cc),
                               Score(evaluator="judge", kind="judge", value=None, error="timeout")], False)]))
    f = t.figures()
    assert f["swap_consistency"] == 0.5  # a-b inconsistent, a-c consistent; each pair once
    assert f["tie_rate"] == pytest.approx(1 / 3)  # a=b of (a,b), (a,c), (b,c)
    assert f["parse_failure_rate"] == pytest.approx(1 / 5)  # 3 pairwise + 2 judge readable-or-failed
    assert f["same_family_rate"] == pytest.approx(2 / 3)
    assert f["length_diff_mean"] == 9.0  # best (a, 10 chars; first of the ties) vs worst (c, 1)
    t.add(JudgedSet(id="j1", prompt=P, objective=OBJ, judged=[]))  # a replay counts once
    assert t.figures() == f


def test_records_decide_the_length_figures():
    t = BiasTracker()

    def pair(i, chosen, rejected, margin):
        side = Side(candidate_id="c", model="m", score=1.0)
        return PreferenceRecord(id=i, prompt_id="p", objective="o@1", prompt=P.messages,
                                chosen=[Message(role="assistant", content=chosen)],
                                rejected=[Message(role="assistant", content=rejected)],
                                score_chosen=1.0, score_rejected=1.0 - margin, margin=margin,
                                chosen_side=side, rejected_side=side)

    f = t.figures([pair("r1", "xxxx", "x", 0.2), pair("r2", "xxxxxxx", "x", 0.9), pair("r3", "x", "xx", 0.1)])
    assert f["length_diff_mean"] == pytest.approx((3 + 6 - 1) / 3)
    assert f["length_margin_corr"] == pytest.approx(statistics.correlation([3, 6, -1], [0.2, 0.9, 0.1]))


def test_gauges_follow_figures_and_drop_nulls():
    reg = CollectorRegistry()
    g = BiasGauges(reg)
    g.observe(JudgedSet(id="j1", prompt=P, objective=OBJ, judged=[
        judged("a", "aaaa", 1.0, [Score(evaluator="math", value=1.0)]),
        judged("b", "bb", 1.0, [Score(evaluator="math", value=1.0)])]))
    assert reg.get_sample_value("prefstream_bias", {"objective": "o", "figure": "tie_rate"}) == 1.0
    assert reg.get_sample_value("prefstream_bias", {"objective": "o", "figure": "swap_consistency"}) is None
    assert reg.get_sample_value("prefstream_evaluator_score_mean", {"objective": "o", "evaluator": "math"}) == 1.0
