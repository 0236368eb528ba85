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
    assert rec.topic == "preferences" and out.topic == "outcomes"
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
