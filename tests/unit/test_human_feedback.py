"""Human labels: the bounded feedback store and the `human` evaluator."""
from __future__ import annotations

import asyncio

from agents.evaluators.human import FeedbackStore, HumanEvaluator
from schemas import Candidate, Feedback, Message, ObjectiveSpec, Prompt, Sampling

PROMPT = Prompt(id="p1", messages=[Message(role="user", content="hi")],
                metadata={"production_response_id": "chatcmpl-9"})


def fb(i: str, kind: str, value: float, cand: str | None = None, other: str | None = None,
       response: str | None = None) -> Feedback:
    return Feedback(id=i, prompt_id="p1", kind=kind, value=value, candidate_id=cand, other_id=other,
                    response_id=response)


def cand(i: str, intent: str | None = None) -> Candidate:
    return Candidate(id=i, text="x", backend="x", model="x", intent=intent,
                     sampling=Sampling(temperature=0, top_p=1, max_tokens=1))


def scores(store, cands):
    return asyncio.run(HumanEvaluator(store).score(PROMPT, cands, ObjectiveSpec(name="o")))


def test_thumbs_scores_and_ab_become_values_per_id():
    store = FeedbackStore()
    for f in [fb("f1", "thumbs", 1, "a"), fb("f2", "thumbs", 0, "a"), fb("f3", "score", 0.75, "b"),
              fb("f4", "ab", 1, "b", other="c")]:
        store.add(f)
    a, b, c, d = scores(store, [cand("a"), cand("b"), cand("c"), cand("d")])
    assert (a.value, a.raw) == (0.5, 2.0)
    assert b.value == (0.75 + 1.0) / 2
    assert c.value == 0.0
    assert d.value is None and d.error == "no_feedback"
    assert a.kind == "human" and a.evaluator == "human"


def test_a_replayed_label_counts_once():
    store = FeedbackStore()
    for _ in range(3):
        store.add(fb("f1", "thumbs", 1, "a"))
    store.add(fb("f2", "thumbs", 0, "a"))
    [a] = scores(store, [cand("a")])
    assert a.value == 0.5 and a.raw == 2.0


def test_production_response_labels_reach_the_production_candidate_only():
    store = FeedbackStore()
    store.add(fb("f1", "thumbs", 1, response="chatcmpl-9"))
    prod, sampled = scores(store, [cand("c-prod", intent="production"), cand("c-s")])
    assert prod.value == 1.0 and sampled.value is None


def test_store_is_bounded_in_ids_and_labels():
    store = FeedbackStore(max_ids=3, max_labels=2)
    for i in range(5):
        store.add(fb(f"f{i}", "thumbs", 1, f"id{i}"))
    assert len(store) == 3 and store.labels("id0") == [] and store.labels("id4") == [1.0]
    for i, v in enumerate([1, 0, 0]):
        store.add(fb(f"g{i}", "thumbs", v, "id4"))
    assert store.labels("id4") == [0.0, 0.0]  # the newest two
