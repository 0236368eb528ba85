"""Late labels for real: a thumbs-down on a production response, given after its pair was
emitted and while the worker was down, flips that pair in the tap's files and in
`load_dataset`; a worker restarted afterwards still has the label."""
from __future__ import annotations

import asyncio
import json
import time

import datasets
import msgspec

from schemas import (EvaluationSpec, EvaluatorSpec, Feedback, GeneratorSpec, InstantiationSpec, JudgedSet, Message,
                     ObjectiveSpec, PreferenceRecord, Prompt, SynthesisSpec, Withdrawn)
from schemas.feedback import feedback_id
from streams.admin import create_topics, producer
from streams.commands.tap.dataset import rows
from streams.commands.tap.formats import get
from agents.objectives import apply, read_all
from streams.commands.objectives.rejudge import select
from streams.commands.run import publish_objective
from streams.commands.tap.follow import tap
from streams.topics import from_settings

N = 3
PRODUCTION = "A long production answer that explains the whole thing in a great many words, " * 3


def objective(human_w: float = 9.0) -> ObjectiveSpec:
    """Two short echo candidates beside the production response: length alone prefers the
    production response; a human thumbs-down (weight 9) outweighs that."""
    return ObjectiveSpec(
        name="lab",
        synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=8)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length", weight=1.0),
                                              EvaluatorSpec(name="human", weight=human_w, params={"wait_s": 10})],
                                  aggregation="weighted_mean", features=[], guards=[]),
        instantiation=InstantiationSpec(min_margin=0.01),
    )


def prompts() -> list[Prompt]:
    return [Prompt(id=f"p-lab-{i}", objective="lab", source="capture",
                   messages=[Message(role="user", content=f"question {i}?")],
                   metadata={"production_response": PRODUCTION, "production_response_id": f"chatcmpl-{i}",
                             "production_model": "prod-model"}) for i in range(N)]


async def _send(settings, topic, items) -> None:
    p = producer(settings)
    await p.start()
    try:
        for key, value in items:
            await p.send_and_wait(topic.name, topic.codec.encode(value), key=key.encode())
    finally:
        await p.stop()


def _wait(settings, topics, shorts, want, timeout=120.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        values = [v for _, v, _ in asyncio.run(read_all(settings, [getattr(topics, s) for s in shorts]))]
        if want(values) or time.monotonic() > deadline:
            return values
        time.sleep(1)


def _pairs(values, objective="lab@1") -> list[PreferenceRecord]:
    return [v for v in values if isinstance(v, PreferenceRecord) and v.objective == objective]


def _tap_all(settings, topics, out, fmt) -> int:
    stop = asyncio.Event()

    async def go():
        task = asyncio.ensure_future(tap(settings, topics, str(out), stop, fmt=fmt))
        await asyncio.sleep(4)  # the whole topic is read within an idle poll or two
        stop.set()
        return await task

    return asyncio.run(go())


def test_thumbs_down_after_the_pair_flips_it_in_the_tap_and_load_dataset(settings, workers, tmp_path):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, objective()))
    first = workers.start(settings)
    asyncio.run(_send(settings, topics.prompts, [(p.id, p) for p in prompts()]))
    values = _wait(settings, topics, ["preferences"], lambda vs: len(_pairs(vs)) >= N)
    before = {r.prompt_id: r for r in _pairs(values)}
    assert len(before) == N, open(first.log_path).read()[-3000:]
    assert all(r.chosen_side.candidate_id == f"chatcmpl-{r.prompt_id[-1]}" for r in before.values())

    fmt, dpo_dir, jsonl_dir = get("trl-dpo"), tmp_path / "dpo", tmp_path / "jsonl"
    assert _tap_all(settings, topics, dpo_dir, fmt) == N and _tap_all(settings, topics, jsonl_dir, None) == N

    first.terminate()
    first.wait(30)
    label = Feedback(id=feedback_id("p-lab-0", "thumbs", 0.0, None, "chatcmpl-0", None, "u1"), prompt_id="p-lab-0",
                     kind="thumbs", value=0.0, response_id="chatcmpl-0", user="u1", created_at=time.time())
    asyncio.run(_send(settings, topics.feedback, [(label.prompt_id, label)]))
    second = workers.start(settings)  # restarted: it consumes the label

    def flipped(vs):
        return any(r.supersedes == before["p-lab-0"].id for r in _pairs(vs))

    values = _wait(settings, topics, ["preferences", "judgments", "labels"], flipped)
    assert flipped(values), open(second.log_path).read()[-3000:]
    [new] = [r for r in _pairs(values) if r.supersedes]
    assert new.prompt_id == "p-lab-0" and new.rejected_side.candidate_id == "chatcmpl-0"  # flipped
    assert [s.value for s in new.rejected_side.scores if s.evaluator == "human"] == [0.0]
    assert not [v for v in values if isinstance(v, Withdrawn)]
    [rescored] = [v for v in values if isinstance(v, JudgedSet) and v.supersedes]
    assert [f.id for f in rescored.late_labels] == [label.id]
    assert [v.id for v in values if isinstance(v, Feedback)] == [label.id]  # kept on `labels`

    # the tap, started again, reads the topic from the start: the superseded pair leaves its files
    assert _tap_all(settings, topics, dpo_dir, fmt) == 1 and _tap_all(settings, topics, jsonl_dir, None) == 1
    live = {before[p].id for p in ("p-lab-1", "p-lab-2")} | {new.id}
    ds = datasets.load_dataset("parquet", data_dir=str(dpo_dir / "data"), split="train")
    assert sorted(ds["id"]) == sorted(live)
    lines = [json.loads(x) for p in (dpo_dir / "jsonl").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(live)
    trl = [json.loads(x) for x in (jsonl_dir / "preferences.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in trl) == sorted(live)
    assert next(x for x in trl if x["id"] == new.id)["supersedes"] == before["p-lab-0"].id
    # the streaming API hands out only live rows too
    assert sorted(r["id"] for r in rows(settings, "trl-dpo", follow=False)) == sorted(live)
    # a replayed label adds nothing (the same re-scored set, the same record ids)
    asyncio.run(_send(settings, topics.feedback, [(label.prompt_id, label)]))

    # a worker restarted after the label still has it: a set judged now counts it
    second.terminate()
    second.wait(30)
    third = workers.start(settings)
    v2 = asyncio.run(apply(settings, topics, objective(human_w=10.0))).spec
    stored = [(c, at) for _, c, at in asyncio.run(read_all(settings, [topics.candidates]))]
    sel = select(stored, v2, "lab@1")
    assert len(sel.new) == N
    asyncio.run(_send(settings, topics.candidates, [(c.prompt.id, c) for c in sel.new]))
    values = _wait(settings, topics, ["preferences"], lambda vs: len(_pairs(vs, "lab@2")) >= N)
    again = {r.prompt_id: r for r in _pairs(values, "lab@2")}
    assert len(again) == N, open(third.log_path).read()[-3000:]
    assert again["p-lab-0"].rejected_side.candidate_id == "chatcmpl-0"
    assert again["p-lab-1"].chosen_side.candidate_id == "chatcmpl-1"
    assert len([r for r in _pairs(values) if r.supersedes]) == 1  # the replayed label made nothing new
    assert msgspec.json.encode(new) == msgspec.json.encode(next(r for r in _pairs(values) if r.supersedes))
