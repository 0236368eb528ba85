"""Late labels: which judged sets a label re-scores, what the new set says, and the records
instantiate makes from it (each naming the one it supersedes)."""
from __future__ import annotations

import asyncio
import time

import msgspec

from agents.instantiate import process as instantiate
from agents.relabel import label_key, process
from schemas import (Candidate, EvaluationSpec, EvaluatorSpec, Feedback, InstantiationSpec, Judged, JudgedSet, Message, ObjectiveSpec,
                     PreferenceRecord, Prompt, Sampling, Score, Withdrawn)
from agents.evaluators import aggregate_set

DAY = 86400.0


def spec(days: float = 7.0, human: bool = True) -> ObjectiveSpec:
    evaluators = [EvaluatorSpec(name="length", weight=1.0)] + ([EvaluatorSpec(name="human", weight=9.0)] if human else [])
    return ObjectiveSpec(name="o", evaluation=EvaluationSpec(evaluators=evaluators, aggregation="weighted_mean",
                                                             features=[], guards=[], late_label_days=days),
                         instantiation=InstantiationSpec(min_margin=0.01))


def judged_set(objective: ObjectiveSpec, at: float) -> JudgedSet:
    texts = {"c-long": "a long answer " * 10, "c-short": "a shorter answer, medium"}
    per = [[Score(evaluator="length", value=len(t) / 140, kind="feature"),
            Score(evaluator="human", value=None, kind="human", error="no_feedback")] for t in texts.values()]
    agg = aggregate_set(per, objective.evaluation)
    judged = [Judged(candidate=Candidate(id=cid, text=t, backend="echo", model="echo",
                                         sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                     scores=s, score=score, verified=v) for (cid, t), s, (v, score) in zip(texts.items(), per, agg)]
    return JudgedSet(id="j-1", prompt=Prompt(id="p1", messages=[Message(role="user", content="q")]),
                     objective=objective, judged=judged, created_at=at)


def down(cid: str = "c-long", at: float | None = None, fid: str = "f-1") -> Feedback:
    return Feedback(id=fid, prompt_id="p1", kind="thumbs", value=0.0, candidate_id=cid, user="u",
                    created_at=at or time.time())


def run(fb: Feedback, sets: list[JudgedSet]):
    async def lookup(pid, since):
        assert pid == fb.prompt_id
        return [s for s in sets if s.created_at >= since or s.supersedes]

    return asyncio.run(process(fb, lookup))


def test_a_late_label_rescores_the_set_and_its_pair_flips_and_supersedes():
    old = judged_set(spec(), time.time() - DAY)
    [first_pair] = [e.value for e in instantiate(old) if isinstance(e.value, PreferenceRecord)]
    assert first_pair.chosen_side.candidate_id == "c-long"
    emits = run(down(), [old])
    assert [(e.topic.short, e.key) for e in emits] == [("labels", "c-long/u"), ("judgments", "p1")]
    new = emits[1].value
    assert new.supersedes == "j-1" and [f.id for f in new.late_labels] == ["f-1"]
    assert [r.id for r in new.superseded_records] == [first_pair.id]
    [pair] = [e.value for e in instantiate(new) if isinstance(e.value, PreferenceRecord)]
    assert pair.chosen_side.candidate_id == "c-short" and pair.supersedes == first_pair.id
    assert pair.id != first_pair.id
    again = run(down(), [old])[1].value  # a replay: the same set, the same records
    assert again.id == new.id and instantiate(again)[0].value.id == pair.id


def test_labels_that_are_not_late_or_do_not_count_rescore_nothing():
    now = time.time()
    assert len(run(down(at=now - 10), [judged_set(spec(), now)])) == 1  # given before the set was judged
    assert len(run(down(at=now), [judged_set(spec(days=1), now - 2 * DAY)])) == 1  # past the window
    assert len(run(down(at=now), [judged_set(spec(days=0), now - 10)])) == 1  # late labels off
    assert len(run(down(at=now), [judged_set(spec(human=False), now - 10)])) == 1  # no human evaluator
    assert len(run(down(cid="c-other", at=now), [judged_set(spec(), now - 10)])) == 1  # another candidate
    assert label_key(down()) == "c-long/u"


def test_a_second_label_rescores_the_newest_set_of_the_line_and_a_replay_nothing():
    old = judged_set(spec(), time.time() - DAY)
    s1 = run(down(), [old])[1].value
    assert len(run(down(), [old, s1])) == 1  # the same label again: already in the newest set
    up = Feedback(id="f-2", prompt_id="p1", kind="thumbs", value=1.0, candidate_id="c-long", user="v",
                  created_at=time.time())
    [_, e] = run(up, [old, s1])
    s2 = e.value
    assert s2.supersedes == s1.id and [f.id for f in s2.late_labels] == ["f-1", "f-2"]
    human = next(s for j in s2.judged if j.candidate.id == "c-long" for s in j.scores if s.evaluator == "human")
    assert human.value == 0.5 and human.raw == 2.0  # both labels counted, each once
    changed = Feedback(id="f-3", prompt_id="p1", kind="thumbs", value=1.0, candidate_id="c-long", user="u",
                       created_at=time.time())  # u changes their mind: the newest of u's labels counts
    s3 = run(changed, [old, s1, s2])[1].value
    human = next(s for j in s3.judged if j.candidate.id == "c-long" for s in j.scores if s.evaluator == "human")
    assert human.value == 1.0 and human.raw == 2.0 and s3.supersedes == s2.id


def test_a_record_with_no_successor_is_withdrawn():
    old = judged_set(spec(), time.time() - DAY)
    [first_pair] = [e.value for e in instantiate(old) if isinstance(e.value, PreferenceRecord)]
    new = run(down(), [old])[1].value
    # the re-scored set ties (as if both were thumbed down): it makes no pair
    tied = msgspec.structs.replace(new, judged=[msgspec.structs.replace(j, score=0.5) for j in new.judged])
    out = [e.value for e in instantiate(tied)]
    [w] = [v for v in out if isinstance(v, Withdrawn)]
    assert w.supersedes == first_pair.id and not [v for v in out if isinstance(v, PreferenceRecord)]
