"""The prompt-utility feedback loop through a real worker on a real broker: instantiate
publishes prompt stats, curate follows them and samples a family whose judged sets keep
tying down to the objective's budget, while the other family keeps all it asks for. And
near-duplicates end as counted `dropped` outcomes in `prefstream run`."""
from __future__ import annotations

import asyncio
import time

import pytest

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec
from schemas.objectives import CurationSpec, DedupSpec, InstantiationSpec, UtilitySpec
from schemas.prompts import Verification
from streams.admin import create_topics, producer, reader
from streams.commands.run import publish_objective, run
from streams.topics import from_settings
from tests.conftest import settings_env

BUDGET = 0.3
WAVE = 10  # prompts per family per wave
OBJ = ObjectiveSpec(
    name="util", version=1,
    synthesis=SynthesisSpec(candidates=3, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=16)]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="regex")], features=[], guards=[]),
    instantiation=InstantiationSpec(min_margin=0.2),
    curation=CurationSpec(utility=UtilitySpec(budget=BUDGET, low=0.2, warmup=3, decay=0.5)),
)


def prompt(wave: int, i: int, family: str) -> Prompt:
    # the echo backend writes "Candidate k (seed s) answers: <question>": every candidate of an
    # "easy" prompt matches "answers" (all correct: a tie), only candidate 0 of a "mixed" one
    # matches "Candidate 0 " (a pair)
    pattern = "answers" if family == "easy" else "Candidate 0 "
    return Prompt(id=f"p-{family}-{wave}-{i}", objective="util", tags=[family], source="test",
                  messages=[Message(role="user", content=f"{family} question {wave}.{i}")],
                  verification=Verification(kind="regex", pattern=pattern))


async def _send(settings, topics, prompts) -> None:
    p = producer(settings)
    await p.start()
    try:
        for pr in prompts:
            await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(pr), key=pr.id.encode())
    finally:
        await p.stop()


async def _drive(settings, topics, waves: int) -> dict[str, list]:
    """Submit wave after wave, each once the previous one has ended; everything read back."""
    names = ["curated", "outcomes", "prompt-stats"]
    consumer = await reader(settings, [getattr(topics, n).name for n in names])
    seen: dict[str, list] = {n: [] for n in names}
    try:
        for w in range(waves):
            batch = [prompt(w, i, fam) for i in range(WAVE) for fam in ("easy", "mixed")]
            await _send(settings, topics, batch)
            want, deadline = {p.id for p in batch}, time.monotonic() + 90
            while not want <= {o.prompt_id for o in seen["outcomes"]}:
                assert time.monotonic() < deadline, f"wave {w} did not end"
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        t = topics.by_name(m.topic)
                        seen[t.spec.short].append(t.codec.decode(m.value))
    finally:
        await consumer.stop()
    return seen


def test_a_family_that_always_ties_falls_to_its_budget_while_the_other_keeps_its_share(settings, workers):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, OBJ))
    worker = workers.start(settings)
    seen = asyncio.run(_drive(settings, topics, waves=5))
    assert worker.poll() is None, open(worker.log_path).read()[-3000:]

    curated = {}  # (wave, family) → curated count
    for c in seen["curated"]:
        _, fam, wave, _ = c.prompt.id.split("-")
        curated[(int(wave), fam)] = curated.get((int(wave), fam), 0) + 1
        assert c.prompt.metadata["family"] == fam
    shares = [curated.get((w, "easy"), 0) / (curated.get((w, "easy"), 0) + curated[(w, "mixed")]) for w in range(5)]
    print("easy share of curated prompts per wave:", [round(s, 3) for s in shares])
    assert shares[0] == 0.5  # warm-up: nothing known yet, every prompt goes through
    assert all(curated[(w, "mixed")] == WAVE for w in range(5))  # the informative family keeps all of it
    # after warm-up and one wave of transition (the estimate turning low, a burst of at most
    # `burst` prompts): down to the floor the objective set, wave after wave, never to 0. A
    # wave's 10 informative prompts earn 10 * 0.3 / 0.7 = 4.3 credits, so a wave lets 4 or 5
    # easy prompts through (as the fraction left over from the wave before, < 1 credit, and the
    # arrival order fall); over the waves the share is the budget
    easy = [curated.get((w, "easy"), 0) for w in range(2, 5)]
    assert all(3 <= n <= 5 for n in easy) and all(BUDGET - 0.1 <= share <= BUDGET + 0.04 for share in shares[2:]), shares
    assert sum(easy) / (sum(easy) + 3 * WAVE) == pytest.approx(BUDGET, abs=0.03), shares

    dropped = [o for o in seen["outcomes"] if o.status == "dropped"]
    assert dropped and all(o.prompt_id.startswith("p-easy-") and o.counts == {"low_utility": 1} for o in dropped)
    assert "low-utility family 'easy'" in dropped[0].reason and f"budget {BUDGET}" in dropped[0].reason
    stats = {s.prompt_id: s for s in seen["prompt-stats"]}
    easy = [s for pid, s in stats.items() if pid.startswith("p-easy-")]
    mixed = [s for pid, s in stats.items() if pid.startswith("p-mixed-")]
    assert easy and all(s.utility == 0.0 and not s.paired and s.difficulty == "easy" for s in easy)
    assert mixed and all(s.paired and s.utility > 0.9 and s.difficulty == "medium" for s in mixed)  # 1 of 3 pass
    # every prompt ended exactly once: as records / no_pair after generation, or dropped by curate
    assert len({o.prompt_id for o in seen["outcomes"]}) == 5 * 2 * WAVE


def test_near_duplicates_end_as_counted_dropped_outcomes_in_run(settings, tmp_path):
    spec = ObjectiveSpec(
        name="dedup", version=1,
        synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=8)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")], features=[], guards=[]),
        curation=CurationSpec(dedup=DedupSpec(mode="near", threshold=0.9)))
    texts = ["How many eggs are in three boxes of twelve eggs?", "how many eggs are in three boxes of twelve eggs ?",
             "How many eggs are in 3 boxes of 12 eggs?", "Name the largest planet of the solar system.",
             "Which planet of the solar system is the largest?", "Write a short poem about rain."]
    prompts = [Prompt(id=f"q{i}", messages=[Message(role="user", content=t)], objective="dedup",
                      verification=Verification(kind="math", answer="36")) for i, t in enumerate(texts)]
    summary = run(settings, prompts, spec, tmp_path / "out", env=settings_env(settings), progress=False)
    assert summary["prompts"] == 6 and summary["dead_letters"] == 0
    assert summary["dropped"] == 3  # q1 (same text as q0), q2 (paraphrase of q0), q4 (of q3)
    assert summary["dropped"] + summary["no_pair"] == 6  # the echo answers never verify: no pairs
