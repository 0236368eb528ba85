from agents import instantiate
from schemas import Candidate, Judged, JudgedSet, Message, ObjectiveSpec, Prompt, Sampling, Score
from schemas import InstantiationSpec

PROMPT = Prompt(id="p1", messages=[Message(role="user", content="q")])


def judged(scores, texts=None, margin=0.2):
    texts = texts or [f"text {i}" for i in range(len(scores))]
    js = [Judged(candidate=Candidate(id=f"c{i}", text=t, backend="llamacpp", model=f"m{i}",
                                     sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                 scores=[Score(evaluator="math", value=s)] if s is not None else [], score=s)
          for i, (s, t) in enumerate(zip(scores, texts))]
    obj = ObjectiveSpec(name="o", version=2, instantiation=InstantiationSpec(min_margin=margin))
    return JudgedSet(id="j1", prompt=PROMPT, objective=obj, judged=js)


def test_best_vs_worst_pair_and_outcome():
    rec, out = instantiate.process(judged([0.5, 1.0, 0.0, None]))
    r = rec.value
    assert rec.topic.short == "preferences" and out.topic.short == "outcomes"
    assert r.chosen[0].content == "text 1" and r.rejected[0].content == "text 2"
    assert (r.score_chosen, r.score_rejected, r.margin) == (1.0, 0.0, 1.0)
    assert r.objective == "o@2" and r.chosen_side.model == "m1" and r.rejected_side.model == "m2"
    assert out.value.status == "records" and out.value.record_ids == [r.id]
    line = r.trl()
    assert line["prompt"] == [{"role": "user", "content": "q"}]
    assert line["chosen"] == [{"role": "assistant", "content": "text 1"}]
    assert {"id", "prompt_id", "score_chosen", "score_rejected", "margin", "objective", "model_chosen",
            "model_rejected"} <= set(line)


def test_ids_are_deterministic():
    a = instantiate.process(judged([0.0, 1.0]))[0].value
    b = instantiate.process(judged([0.0, 1.0]))[0].value
    assert a.id == b.id
    c = instantiate.process(judged([1.0, 0.0]))[0].value
    assert c.id != a.id


def test_no_pair_reasons():
    cases = {
        "tie": judged([1.0, 1.0]),
        "below": judged([0.5, 0.6], margin=0.2),
        "only 1": judged([1.0, None]),
        "identical": judged([1.0, 0.0], texts=["same", "same "]),
    }
    for word, js in cases.items():
        [out] = instantiate.process(js)
        assert out.value.status == "no_pair" and word in out.value.reason, (word, out.value.reason)


# --- instantiation choices -------------------------------------------------------------

import msgspec  # noqa: E402
import pytest  # noqa: E402


def spec_judged(scores, texts=None, lengths=None, status="active", **spec):
    """A judged set whose objective's instantiation is ``spec``; ``lengths`` adds a
    "length" heuristic score (raw = the figure) per candidate."""
    texts = texts or [f"text {i}" for i in range(len(scores))]
    js = []
    for i, (s, t) in enumerate(zip(scores, texts)):
        sc = [Score(evaluator="math", value=s)] if s is not None else []
        if lengths:
            sc.append(Score(evaluator="length", value=None, raw=lengths[i], kind="heuristic"))
        js.append(Judged(candidate=Candidate(id=f"c{i}", text=t, backend="echo", model=f"m{i % 2}",
                                             sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                         scores=sc, score=s))
    obj = ObjectiveSpec(name="o", version=3, status=status, instantiation=InstantiationSpec(**spec))
    return JudgedSet(id="j1", prompt=PROMPT, objective=obj, judged=js)


def split(emits):
    *records, outcome = emits
    assert outcome.topic.short == "outcomes"
    return [e.value for e in records], outcome.value, {e.topic.short for e in records}


def test_best_vs_each_pairs_the_best_with_every_candidate_beyond_the_margin():
    records, out, _ = split(instantiate.process(spec_judged([1.0, 0.5, 0.0, 0.9], pairs="best_vs_each")))
    assert [(r.chosen_side.candidate_id, r.rejected_side.candidate_id) for r in records] == [("c0", "c1"), ("c0", "c2")]
    assert all(r.pairing == "best_vs_each" for r in records)
    assert out.counts == {"pairs": 2} and out.record_ids == [r.id for r in records]


@pytest.mark.parametrize("margin,expected", [(0.3, 3), (0.5, 2), (1.0, 1), (1.01, 0)])
def test_all_pairs_keeps_every_pair_at_or_above_the_margin(margin, expected):
    emits = instantiate.process(spec_judged([1.0, 0.7, 0.0], pairs="all_pairs", min_margin=margin))
    records = [e.value for e in emits if e.topic.short == "preferences"]
    assert len(records) == expected
    assert all(r.margin >= margin - 1e-9 and r.score_chosen > r.score_rejected for r in records)


def test_ties_and_identical_texts_never_become_pairs():
    texts = ["a", "b", "a ", "c"]
    records, out, _ = split(instantiate.process(spec_judged([1.0, 1.0, 0.0, 0.0], texts, pairs="all_pairs")))
    got = {(r.chosen_side.candidate_id, r.rejected_side.candidate_id) for r in records}
    assert got == {("c0", "c3"), ("c1", "c2"), ("c1", "c3")}
    for r in records:
        assert r.chosen[0].content.strip() != r.rejected[0].content.strip() and r.margin > 0


def test_no_pair_reasons_name_what_was_skipped():
    [out] = instantiate.process(spec_judged([0.5, 0.5, 0.5], pairs="all_pairs"))
    assert out.value.status == "no_pair" and "3 tie" in out.value.reason
    [out] = instantiate.process(spec_judged([0.5, 0.4], pairs="best_vs_each"))
    assert "below the margin" in out.value.reason
    [out] = instantiate.process(spec_judged([0.5, 0.4], pairs="none"))
    assert out.value.status == "no_pair" and "no records" in out.value.reason


def test_a_margin_equal_to_the_threshold_pairs_despite_float_noise():
    [rec, _] = instantiate.process(spec_judged([1.0, 0.8], min_margin=0.2))
    assert rec.value.margin == pytest.approx(0.2)


def test_length_guard_drops_or_counts_pairs_the_chosen_side_wins_by_length():
    long, short = "x" * 100, "y" * 10
    [out] = instantiate.process(spec_judged([1.0, 0.0], [long, short], length_guard="drop"))
    assert out.value.status == "no_pair" and "length" in out.value.reason
    assert out.value.counts == {"length_dropped": 1}
    rec, out = instantiate.process(spec_judged([1.0, 0.0], [long, short], length_guard="count"))
    assert rec.value.length_flagged and (rec.value.length_chosen, rec.value.length_rejected) == (100, 10)
    assert out.value.counts == {"pairs": 1, "length_flagged": 1}
    rec, _ = instantiate.process(spec_judged([1.0, 0.0], [short, long], length_guard="drop"))
    assert not rec.value.length_flagged  # the shorter side won: nothing to guard against
    rec, _ = instantiate.process(spec_judged([1.0, 0.0], [long, short]))  # guard off
    assert not rec.value.length_flagged


def test_length_guard_uses_the_evaluators_length_figure_where_there_is_one():
    [out] = instantiate.process(spec_judged([1.0, 0.0], ["same size", "same size!"], lengths=[300, 10],
                                            length_guard="drop", length_ratio=2.0))
    assert out.value.counts == {"length_dropped": 1}


def test_kto_labels_by_thresholds_and_reports_the_balance():
    records, out, _ = split(instantiate.process(spec_judged([1.0, 0.5, 0.0, None, 0.9], pairs="none", kto=True,
                                                           kto_desirable=0.8, kto_undesirable=0.2)))
    labels = {r.side.candidate_id: r.label for r in records}
    assert labels == {"c0": True, "c4": True, "c2": False}
    assert all(r.kind == "unpaired" and r.completion[0].content == f"text {r.side.candidate_id[1:]}" for r in records)
    assert out.counts == {"desirable": 2, "undesirable": 1, "kto_between": 1}
    assert out.status == "records" and sorted(out.record_ids) == sorted(r.id for r in records)


def test_kto_gives_one_record_per_distinct_text():
    records, out, _ = split(instantiate.process(spec_judged([1.0, 1.0, 0.0], ["a", "a", "b"], pairs="none", kto=True)))
    assert sorted((r.completion[0].content, r.label) for r in records) == [("a", True), ("b", False)]


def test_ranking_orders_every_distinct_candidate_with_competition_ranks():
    records, _, _ = split(instantiate.process(spec_judged([0.5, 1.0, 0.5, 0.0, 0.5], ["a", "b", "c", "d", "a"],
                                                         pairs="none", ranking=True)))
    [r] = records
    assert [x.side.candidate_id for x in r.ranked] == ["c1", "c0", "c2", "c3"]
    assert [x.rank for x in r.ranked] == [1, 2, 2, 4] and [x.side.score for x in r.ranked] == [1.0, 0.5, 0.5, 0.0]
    [out] = instantiate.process(spec_judged([0.5, 0.5], pairs="none", ranking=True))
    assert out.value.status == "no_pair"  # an all-tied ranking says nothing


def test_rewards_give_each_scored_candidate_its_score():
    records, out, _ = split(instantiate.process(spec_judged([0.25, None, 1.0], pairs="none", rewards=True)))
    assert sorted((r.side.candidate_id, r.reward) for r in records) == [("c0", 0.25), ("c2", 1.0)]
    assert out.counts == {"rewards": 2}


def test_several_instantiations_at_once_list_every_record_in_the_outcome():
    js = spec_judged([1.0, 0.5, 0.0], pairs="all_pairs", kto=True, ranking=True, rewards=True)
    records, out, topics = split(instantiate.process(js))
    kinds = sorted(r.kind for r in records)
    assert kinds == ["pair"] * 3 + ["ranking"] + ["reward"] * 3 + ["unpaired"] * 2
    assert out.record_ids == [r.id for r in records] and len(set(out.record_ids)) == len(records)
    assert out.counts == {"pairs": 3, "desirable": 1, "undesirable": 1, "kto_between": 1, "rankings": 1, "rewards": 3}
    assert topics == {"preferences"}
    again, _, _ = split(instantiate.process(js))
    assert [r.id for r in again] == [r.id for r in records]  # deterministic ids, every kind
    v4 = msgspec.structs.replace(js, objective=msgspec.structs.replace(js.objective, version=4))
    assert not {r.id for r in split(instantiate.process(v4))[0]} & set(out.record_ids)


def test_shadow_objectives_records_go_to_the_shadow_topic():
    _, _, topics = split(instantiate.process(spec_judged([1.0, 0.0], status="shadow", kto=True)))
    assert topics == {"preferences-shadow"}


def test_instantiation_spec_defaults_and_validation():
    spec = InstantiationSpec()
    assert (spec.pairs, spec.min_margin, spec.kto, spec.ranking, spec.rewards, spec.length_guard) == (
        "best_vs_worst", 0.2, False, False, False, "off")
    with pytest.raises(ValueError, match="kto_undesirable"):
        InstantiationSpec(kto_desirable=0.3, kto_undesirable=0.6)
    with pytest.raises(msgspec.ValidationError, match="length_ratio"):
        msgspec.convert({"name": "o", "instantiation": {"length_ratio": 0.5}}, ObjectiveSpec)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "o", "instantiation": {"pairs": "best_of_three"}}, ObjectiveSpec)
