"""Prompt utility: informativeness of judged sets, difficulty tags, the decaying family
estimate, and curate's generation budget for low-utility families."""
from __future__ import annotations

import pytest

from agents import curate, instantiate
from agents.utility import Budget, FamilyUtility, difficulty, prompt_stats, utility
from schemas import (Candidate, InstantiationSpec, Judged, JudgedSet, Message, ObjectiveSpec, Prompt, Sampling,
                     Score)
from schemas.objectives import CurationSpec, UtilitySpec
from schemas.stats import PromptStats


def jset(verdicts, texts=None, tags=("t",), family=None):
    texts = texts or [f"answer {i}" for i in range(len(verdicts))]
    judged = [Judged(candidate=Candidate(id=f"c{i}", text=t, backend="echo", model="echo",
                                         sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                     scores=[Score(evaluator="math", value=v)], verified=v, score=v)
              for i, (v, t) in enumerate(zip(verdicts, texts))]
    meta = {"family": family} if family else {}
    prompt = Prompt(id="p1", messages=[Message(role="user", content="q")], tags=list(tags), metadata=meta)
    return JudgedSet(id="j", prompt=prompt, objective=ObjectiveSpec(name="o", version=2), judged=judged)


def stats_of(js):
    *_, outcome = instantiate.process(js)
    return prompt_stats(js, outcome.value)


@pytest.mark.parametrize("verdicts,paired,rate,level,value", [
    ([1.0, 1.0, 1.0, 1.0], False, 1.0, "easy", 0.0),   # all correct: nothing to learn
    ([0.0, 0.0, 0.0, 0.0], False, 0.0, "hard", 0.0),   # all wrong
    ([1.0, 0.0, 1.0, 0.0], True, 0.5, "medium", 1.0),  # the most informative set
    ([1.0, 0.0, 0.0, 0.0], True, 0.25, "hard", (1 + 1 + 0.75) / 3),
])
def test_judged_sets_report_how_informative_they_were(verdicts, paired, rate, level, value):
    s = stats_of(jset(verdicts))
    assert (s.paired, s.pass_rate, s.difficulty) == (paired, rate, level)
    assert s.utility == pytest.approx(value, abs=1e-6)
    assert s.objective == "o@2" and s.family == "t" and s.candidates == s.scored == 4 and s.distinct == 4


def test_family_is_curates_label_else_the_tags():
    assert stats_of(jset([1.0, 0.0], family="cluster:p9")).family == "cluster:p9"
    assert stats_of(jset([1.0, 0.0], tags=("b", "a"))).family == "a+b"
    assert stats_of(jset([1.0, 0.0], tags=())).family == "untagged"


def test_difficulty_thresholds_come_from_the_objective_and_records_carry_the_tag():
    spec = InstantiationSpec(easy_pass_rate=0.9, hard_pass_rate=0.1)
    assert [difficulty(r, spec) for r in (None, 0.0, 0.1, 0.5, 0.9, 1.0)] == [None, "hard", "hard", "medium",
                                                                               "easy", "easy"]
    [rec, _] = instantiate.process(jset([1.0, 0.0, 0.0, 0.0]))
    assert rec.value.difficulty == "hard" and rec.value.trl()["difficulty"] == "hard"
    with pytest.raises(ValueError, match="hard_pass_rate"):
        InstantiationSpec(easy_pass_rate=0.2, hard_pass_rate=0.5)


def test_utility_without_a_verifier_is_pair_and_spread():
    assert utility(True, 0.4, None) == pytest.approx(0.7)
    assert utility(False, 0.0, None) == 0.0


def S(pid, value, family="easy", objective="o@1"):
    return PromptStats(prompt_id=pid, objective=objective, family=family, candidates=4, scored=4, distinct=4,
                       spread=0.0, paired=False, utility=value)


def test_family_estimate_decays_counts_each_prompt_once_and_needs_warmup():
    fam, spec = FamilyUtility(), UtilitySpec(budget=0.3, low=0.2, warmup=3, decay=0.5)
    fam.observe(S("p1", 1.0), 0.5)
    fam.observe(S("p1", 1.0), 0.5)  # re-delivered: counted once
    assert fam.estimate("o", "easy") == (1.0, 1)
    fam.observe(S("p2", 0.0), 0.5)
    assert fam.estimate("o", "easy") == (0.5, 2) and not fam.is_low("o", "easy", spec)
    fam.observe(S("p3", 0.0), 0.5)
    assert fam.estimate("o", "easy") == (0.25, 3) and not fam.is_low("o", "easy", spec)
    fam.observe(S("p4", 0.0), 0.5)
    assert fam.is_low("o", "easy", spec)  # 0.125 < 0.2 after 4 >= warmup sets
    fam.observe(S("p5", 1.0, objective="o@2"), 0.5)  # a new version of the objective: the same estimate
    assert fam.estimate("o", "easy") == (pytest.approx(0.5625), 5) and not fam.is_low("o", "easy", spec)
    assert fam.estimate("o", "other") == (None, 0)


def test_family_estimates_are_bounded():
    fam = FamilyUtility(max_families=3)
    for i in range(5):
        fam.observe(S(f"p{i}", 0.5, family=f"f{i}"), 0.5)
    assert len(fam.estimates) == 3 and fam.estimate("o", "f0") == (None, 0)


def test_budget_keeps_low_families_at_their_share_smoothly():
    b = Budget(burst=3.0)
    admitted = {"low": [], "ok": 0}
    for i in range(400):
        low = i % 2 == 0  # half the stream comes from a low-utility family
        if b.admit(low, 0.3):
            if low:
                admitted["low"].append(i)
            else:
                admitted["ok"] += 1
    assert admitted["ok"] == 200  # the others keep all they ask for
    assert b.share() == pytest.approx(0.3, abs=0.01)
    for start in range(0, 400, 40):  # smooth: every stretch of 40 prompts holds about its share
        assert 4 <= sum(start <= i < start + 40 for i in admitted["low"]) <= 10
    # a run of others then a run of low prompts: at most `burst` go through at once
    b = Budget(burst=3.0)
    for _ in range(50):
        b.admit(False, 0.3)
    assert sum(b.admit(True, 0.3) for _ in range(20)) == 3
    assert not Budget().admit(True, 0.0) and Budget().admit(True, 1.0) and Budget().admit(False, 0.0)


def test_curate_samples_a_low_utility_family_down_to_the_budget_and_says_why():
    spec = ObjectiveSpec(name="o", curation=CurationSpec(utility=UtilitySpec(budget=0.25, warmup=2)))
    objs, state = {"o": spec}, curate.CurateState(embedder=None)
    for i in range(3):  # the family "easy" keeps producing uninformative sets; "hard" informative ones
        state.families.observe(S(f"w{i}", 0.0), spec.curation.utility.decay)
        state.families.observe(S(f"v{i}", 1.0, family="hard"), spec.curation.utility.decay)
    topics = {"easy": [], "hard": []}
    for i in range(200):
        tag = "easy" if i % 2 else "hard"
        [e] = curate.process(Prompt(id=f"q{i}", messages=[Message(role="user", content=f"q {i}")], tags=[tag],
                                    objective="o"), objs, "o", state)
        topics[tag].append(e)
    assert all(e.topic.short == "curated" and e.value.prompt.metadata["family"] == "hard" for e in topics["hard"])
    kept = [e for e in topics["easy"] if e.topic.short == "curated"]
    dropped = [e.value for e in topics["easy"] if e.topic.short == "outcomes"]
    assert len(kept) / (len(kept) + 100) == pytest.approx(0.25, abs=0.02)
    assert all(o.status == "dropped" and o.counts == {"low_utility": 1} for o in dropped)
    assert "low-utility family 'easy' (utility 0.00 < 0.2 over 3 judged sets)" in dropped[0].reason
    assert "budget 0.25" in dropped[0].reason
