"""Each agent's faust binding in a real worker process against a real broker: a malformed
message on any input topic becomes a dead letter with its reason, and the agent goes on
with the next message."""
from __future__ import annotations

import asyncio
import time

import msgspec

from schemas import (Candidate, CandidateSet, Curated, EvaluationSpec, EvaluatorSpec, GeneratorSpec, Judged,
                     JudgedSet, Message, ObjectiveSpec, Prompt, Sampling, Score, SynthesisSpec, Verification)
from streams.admin import create_topics, producer, reader
from streams.commands.run import publish_objective
from streams.topics import from_settings

OBJ = ObjectiveSpec(
    name="echo", version=1,
    synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo")]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
)
PROMPT = Prompt(id="p-ok", messages=[Message(role="user", content="What is 2+3?")], objective="echo",
                verification=Verification(kind="math", answer="5"))


def _cand(i: int, text: str) -> Candidate:
    return Candidate(id=f"c{i}", text=text, backend="echo", model="echo",
                     sampling=Sampling(temperature=1, top_p=1, max_tokens=8))


async def _collect(settings, topics, names, want, timeout=90.0):
    """Read ``names`` from the start until ``want(seen)`` holds or the deadline passes."""
    consumer = await reader(settings, [getattr(topics, n).name for n in names])
    seen: dict[str, list] = {n: [] for n in names}
    deadline = time.monotonic() + timeout
    try:
        while not want(seen) and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    t = topics.by_name(m.topic)
                    try:
                        seen[t.spec.short].append(t.codec.decode(m.value))
                    except msgspec.DecodeError:
                        pass  # the malformed inputs this test sends itself
    finally:
        await consumer.stop()
    return seen


def test_malformed_input_on_every_topic_is_dead_lettered_and_the_agents_keep_going(settings, workers):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, OBJ))
    worker = workers.start(settings)
    bad = {
        "prompts": b"\xff\xfenot json at all",
        "curated": b'{"type":"curated.v1","prompt":{"type":"prompt.v1","id":7}}',
        "candidates": b'{"type":"prompt.v1","id":"x","messages":[]}',
        "judgments": b"[1, 2, 3]",
    }
    judged = JudgedSet(id="j-direct", prompt=Prompt(id="p-direct", messages=PROMPT.messages), objective=OBJ,
                       judged=[Judged(candidate=_cand(0, "5"), scores=[Score(evaluator="math", value=1.0)], score=1.0),
                               Judged(candidate=_cand(1, "7"), scores=[Score(evaluator="math", value=0.0)], score=0.0)])
    cset = CandidateSet(id="s-direct", prompt=Prompt(id="p-cands", messages=PROMPT.messages,
                                                     verification=PROMPT.verification),
                        objective=OBJ, candidates=[_cand(0, "#### 5"), _cand(1, "#### 6")])
    curated = Curated(prompt=Prompt(id="p-cur", messages=PROMPT.messages), objective=OBJ)
    good = [("prompts", PROMPT), ("curated", curated), ("candidates", cset), ("judgments", judged)]

    async def send_all():
        p = producer(settings)
        await p.start()
        try:
            for short, value in bad.items():
                await p.send_and_wait(getattr(topics, short).name, value, key=b"bad-" + short.encode())
            for short, value in good:
                t = getattr(topics, short)
                await p.send_and_wait(t.name, t.codec.encode(value), key=b"good")
        finally:
            await p.stop()

    asyncio.run(send_all())

    def want(seen):
        return (len(seen["deadletters"]) >= 4
                and {"p-ok", "p-cur", "p-direct", "p-cands"} <= {o.prompt_id for o in seen["outcomes"]}
                and "p-cands" in {j.prompt.id for j in seen["judgments"]})

    seen = asyncio.run(_collect(settings, topics, ["deadletters", "outcomes", "judgments", "preferences"], want))
    assert worker.poll() is None, open(worker.log_path).read()[-3000:]
    letters = {d.topic.rsplit(".", 1)[1]: d for d in seen["deadletters"]}
    assert set(letters) == set(bad), seen["deadletters"]
    for short, raw in bad.items():
        d = letters[short]
        assert d.original == raw and d.error and d.error_type
        assert d.key == "bad-" + short
    assert letters["curated"].path == "$.prompt.id"
    assert letters["candidates"].stage == "evaluate" and "candidates.v1" in letters["candidates"].error
    # after each bad message the agent processed the next good one
    outcomes = {o.prompt_id: o for o in seen["outcomes"]}
    assert outcomes["p-direct"].status == "records"
    assert sorted(r.prompt_id for r in seen["preferences"]) == ["p-cands", "p-direct"]
    assert outcomes["p-ok"].objective == "echo@1" and outcomes["p-ok"].candidates == 2
    judged_cands = next(j for j in seen["judgments"] if j.prompt.id == "p-cands")
    assert [j.score for j in judged_cands.judged] == [1.0, 0.0]


def test_unknown_objective_is_dead_lettered_with_the_fix(settings, workers):
    settings = settings.replace(objective_wait_s=1.0)
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, OBJ))  # objectives exist, just not the one named
    workers.start(settings, agents="curate", PREFSTREAM_OBJECTIVE_WAIT_S="1")

    async def send():
        p = producer(settings)
        await p.start()
        pr = Prompt(id="p-x", messages=PROMPT.messages, objective="missing")
        await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(pr), key=b"p-x")
        await p.stop()

    asyncio.run(send())
    seen = asyncio.run(_collect(settings, topics, ["deadletters"], lambda s: s["deadletters"]))
    [d] = seen["deadletters"]
    assert d.prompt_id == "p-x" and d.stage == "curate" and "unknown objective 'missing'" in d.error


def test_worker_refuses_unknown_agent_names(settings, workers):
    proc = workers.start(settings, agents="bogus")
    assert proc.wait(60) != 0
    assert "unknown agents" in open(proc.log_path).read()


def test_worker_refuses_an_unknown_phone_region_with_the_fix(settings, workers):
    proc = workers.start(settings, agents="curate", PREFSTREAM_PII_PHONE_REGIONS="US,UK")
    assert proc.wait(60) != 0
    log = open(proc.log_path).read()
    assert "PREFSTREAM_PII_PHONE_REGIONS" in log and "GB" in log, log[-2000:]
